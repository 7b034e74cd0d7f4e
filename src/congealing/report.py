"""What ``congeal align`` writes: one folder layout for every method.

::

    OUT/
      index.html        the page (opens from disk, no server, no network): a verdict first (mean of the
                        inputs next to the mean of the aligned images, agreement before -> after, the
                        method's objective, warnings), then every image with its mask, score, mirror
                        flag and transform in words (worst first), click-to-match correspondences,
                        input <-> aligned toggles; then the atlas and how to use the mappings
      summary.json      method, mode, names, timings, method-specific numbers, ``verdict``,
                        ``per_image`` and ``fields`` (what every field means: units, directions)
      mappings.pt       per-image transforms (N, 3, 3) and/or sampling grids (N, H, W, 2);
                        torch.load(path, weights_only=True)
      mappings.js       the same mappings, compact, for the page (:func:`browser_mappings`)
      report.js/.css    the page's script and style (package data, no CDN)
      atlas.png         the atlas (mean aligned image); atlas_<name>.png for any other atlas views
      mean_inputs.png   the mean of the inputs; mean_aligned.png: of the aligned images (2-D methods)
      inputs/KEY.png    the inputs as the method saw them (square)
      aligned/KEY.png   each input warped into the common frame
      masks/KEY.png     each input dimmed outside the method's object mask (if the method has one)
      thumbs/...        smaller copies the page shows when the images are larger than THUMBNAIL

``KEY`` is the input's file name with its extension folded in (``bird.jpg`` -> ``bird_jpg``), so
two inputs never share an output name; ``summary.json`` maps every input to its outputs.

The folder is written next to ``OUT`` first and moved into place at the end, so an interrupted run
never leaves a half-written report; an existing ``OUT`` is replaced only if it is an earlier report,
and files a user added to it are kept (:mod:`congealing.report_folder`).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import report_folder
from .report_page import describe_grids, describe_pose, describe_transforms, page_html
from .report_scores import agreement, descriptor_agreement, to_aligned_frame
from .widgets import to_png

__all__ = [
    "write_alignment", "export_grids", "output_keys", "demo_edit", "centre_disk",
    "browser_mappings", "field_documentation", "FIELD_DOCS",
    "AlignProgress",
]

#: Images wider than this are shown through a thumbnail (``thumbs/``); the full-size PNGs stay.
THUMBNAIL = 256
#: The side of the downsampled grids and coordinate maps the page's click-to-match reads.
BROWSER_GRID = 32


def write_alignment(
    out,
    *,
    method: str,
    names: list[str],
    inputs: torch.Tensor,
    aligned: torch.Tensor,
    atlas: dict[str, torch.Tensor],
    mode: str,
    transforms: torch.Tensor | None = None,
    grids: torch.Tensor | None = None,
    summary: dict | None = None,
    extra_images: dict[str, torch.Tensor] | None = None,
    masks: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    flipped: torch.Tensor | None = None,
    objective: dict | None = None,
    method_scores: dict | None = None,
    coordinate_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    poses: list[dict] | None = None,
    field_docs: dict[str, str] | None = None,
    descriptors: torch.Tensor | None = None,
    extra_files: dict[str, Path] | None = None,
    left_out: list[str] | None = None,
) -> Path:
    """Write a report folder (layout above). ``atlas`` maps a view name (``"mean"`` first) to a
    ``(C, H, W)`` image; ``extra_images`` maps a column title to ``(N, C, H, W)`` images shown in
    the report beside the aligned ones (e.g. an edit propagated to every image); ``extra_files`` maps
    a file name in the report to a file copied there (e.g. the training checkpoint).

    What makes the page readable (all optional):

    * ``masks`` ``(N, 1, H, W)``: what the method treated as the object, in each input's frame
      (``None``: the whole image; ``valid`` ``(N, 1, H, W)`` then excludes the padding).
    * ``flipped`` ``(N,)`` bool: images the method mirrored (default: transforms with a negative
      determinant).
    * ``objective``: the method's own objective, ``{"name", "before", "after", "better": "lower" |
      "higher", "doc"}``.
    * ``descriptors`` ``(N, D, h, w)``: unit descriptors of the inputs (e.g.
      :func:`congealing.features.extract_descriptors`); the verdict then also reports
      :func:`congealing.report_scores.descriptor_agreement` before and after, and sorts by it.
    * ``method_scores``: a per-image term of it, ``{"name", "values": (N,), "better", "doc"}``.
    * ``coordinate_maps`` ``(nocs (N, 3, S, S), mask (N, 1, S, S))`` and ``poses`` (one dict per
      image with ``azimuth_deg``, ``elevation_deg``, ``fov_deg``): the 3-D method's mappings.
    * ``left_out``: files of the input folder the run did not use, each ``"name: why"``
      (``congeal align --skip-unreadable``, :attr:`congealing.data.ImageSet.skipped`); the page
      warns about them and ``summary.json`` lists them, so the report says which photos it lacks.

    Besides the images, the folder holds ``mappings.js`` (the mappings the page's click-to-match
    reads; format in :func:`browser_mappings`) and ``summary.json`` with a ``fields`` entry that
    documents every field. Chapter 7, "Align your own photos", "What came out" reads one.

    Args:
        out: the report folder (new, empty, or an earlier report).
        method, names, inputs ``(N, C, S, S)``, aligned ``(N, C, s, s)``, atlas, mode: as above.
        transforms: ``(N, 3, 3)`` image -> atlas (2-D) or ``(N, 4, 4)`` cameras (3-D), or None.
        grids: ``(N, h, w, 2)`` atlas -> image sampling grids, or None.
        summary: extra ``summary.json`` fields (each documented in :data:`FIELD_DOCS` or ``field_docs``).
        the others: optional, as listed above.

    Returns:
        the report folder's path.

    Raises:
        ValueError: ``names``, ``inputs`` and ``aligned`` do not hold the same number of images.
        KeyError: a ``summary`` field has no documentation.
        OutputFolderError: ``out`` holds files congeal did not write (:mod:`congealing.report_folder`).
    """
    out = report_folder.check_output_folder(out)
    count = inputs.shape[0]
    if len(names) != count or aligned.shape[0] != count:
        raise ValueError(f"{len(names)} names, {count} inputs and {aligned.shape[0]} aligned images")
    size = inputs.shape[-1]
    inputs, aligned = inputs.detach().float().cpu(), aligned.detach().float().cpu()
    transforms = None if transforms is None else transforms.detach().cpu().float()
    grids = None if grids is None else grids.detach().cpu().float()
    if flipped is None:
        flipped = torch.linalg.det(transforms[:, :2, :2]) < 0 if transforms is not None and transforms.shape[-1] == 3 else torch.zeros(count, dtype=torch.bool)
    flipped = torch.as_tensor(flipped).bool().cpu()
    planar = coordinate_maps is None  # 2-D methods share one aligned frame; congeal3d does not
    frame_transforms = transforms if planar and transforms is not None and transforms.shape[-1] == 3 else None
    object_masks = None if masks is None else _resize(masks, size)
    weights = object_masks if object_masks is not None else (_resize(valid, size) if valid is not None else torch.ones(count, 1, size, size))
    quality = None
    if planar:
        aligned_weights = to_aligned_frame(weights, frame_transforms, grids, aligned.shape[-1])
        quality = {
            "before": agreement(inputs, weights),
            "after": agreement(aligned, aligned_weights) if aligned_weights is not None else None,
        }
        if descriptors is not None and aligned_weights is not None:
            descriptors = descriptors.detach().float().cpu()
            side = descriptors.shape[-1]
            quality["descriptors_before"] = descriptor_agreement(descriptors, _resize(weights, side))
            quality["descriptors_after"] = descriptor_agreement(
                to_aligned_frame(descriptors, frame_transforms, grids, side), to_aligned_frame(weights, frame_transforms, grids, side)
            )
    staging = report_folder.begin(out)
    for filename, source in (extra_files or {}).items():
        shutil.copyfile(source, staging / filename)
    columns = {"input": ("inputs", inputs), "aligned": ("aligned", aligned)}
    if object_masks is not None:
        columns["mask"] = ("masks", inputs * (0.2 + 0.8 * object_masks))  # the object in colour, the rest dimmed
    for title, images in (extra_images or {}).items():
        columns[title] = (_slug(title), images)
    keys = output_keys(list(names))
    thumbnails = {}
    for title, (folder, images) in columns.items():
        (staging / folder).mkdir(parents=True)
        if images.shape[-1] > THUMBNAIL:
            (staging / "thumbs" / folder).mkdir(parents=True)
        for key, image in zip(keys, images):
            (staging / folder / f"{key}.png").write_bytes(to_png(image))
            if images.shape[-1] > THUMBNAIL:
                (staging / "thumbs" / folder / f"{key}.png").write_bytes(to_png(image, THUMBNAIL))
        thumbnails[title] = f"thumbs/{folder}" if images.shape[-1] > THUMBNAIL else folder
    atlas_files = {}
    for index, (view, image) in enumerate(atlas.items()):
        filename = "atlas.png" if index == 0 else f"atlas_{_slug(view)}.png"
        (staging / filename).write_bytes(to_png(image))
        atlas_files[view] = filename
    verdict_files = {}
    if planar:
        (staging / "mean_inputs.png").write_bytes(to_png(inputs.mean(0)))
        (staging / "mean_aligned.png").write_bytes(to_png(aligned.mean(0)))
        verdict_files = {"mean of the inputs": "mean_inputs.png", "mean of the aligned images": "mean_aligned.png"}
    mappings = {"names": list(names), "method": method}
    if transforms is not None:
        mappings["transforms"] = transforms
    if grids is not None:
        mappings["grids"] = grids
    torch.save(mappings, staging / "mappings.pt")
    browser = browser_mappings(size, transforms=frame_transforms, grids=grids, coordinate_maps=coordinate_maps, flipped=flipped)
    (staging / "mappings.js").write_text("window.CONGEAL_MAPPINGS = " + json.dumps(browser, separators=(",", ":")) + ";\n")
    moves = describe_transforms(frame_transforms) if frame_transforms is not None else (describe_grids(grids) if grids is not None else None)
    per_image = []
    for n, (name, key) in enumerate(zip(names, keys)):
        row = {"name": name, "key": key, "mirrored": bool(flipped[n])}
        if quality is not None and quality["after"] is not None:
            row["agreement"] = round(float(quality["after"][n]), 4)
            row["agreement_before"] = round(float(quality["before"][n]), 4)
        if quality is not None and "descriptors_after" in quality:
            row["descriptor_agreement"] = round(float(quality["descriptors_after"][n]), 4)
            row["descriptor_agreement_before"] = round(float(quality["descriptors_before"][n]), 4)
        if method_scores is not None:
            row["method_score"] = round(float(method_scores["values"][n]), 6)
        if moves is not None:
            row["transform"] = moves[n]
        if poses is not None:
            row["pose"] = {k: v for k, v in poses[n].items() if k != "image"}
            row["pose"]["words"] = describe_pose(poses[n])
        per_image.append(row)
    verdict = _verdict(quality, objective, method_scores, count, mode, method, masked=object_masks is not None)
    _warn_if_squeezed(verdict, [row.get("transform") for row in per_image], list(names))
    _warn_if_left_out(verdict, left_out or [])
    outputs = {name: {title: f"{folder}/{key}.png" for title, (folder, _) in columns.items()} for name, key in zip(names, keys)}
    info = {"method": method, "mode": mode, "images": list(names), "outputs": outputs, "atlas": atlas_files, **(summary or {})}
    if left_out:
        info["left_out"] = list(left_out)
    if method_scores is not None:
        info["method_score_name"] = method_scores["name"]
        info["method_score_doc"] = method_scores.get("doc", "")
        info["method_score_better"] = method_scores["better"]
    info["verdict"] = verdict
    info["per_image"] = per_image
    info["fields"] = field_documentation({**info, "fields": None}, field_docs)
    (staging / "summary.json").write_text(json.dumps(info, indent=2))
    for asset in ("report.js", "report.css"):
        (staging / asset).write_text((Path(__file__).with_name("report_assets") / asset).read_text())
    page = page_html(method, mode, list(names), keys, columns, thumbnails, atlas_files, verdict_files, verdict, per_image, info, planar)
    (staging / "index.html").write_text(page)
    return report_folder.publish(staging, out)


class AlignProgress:
    """The progress of ``congeal align`` on stderr: drawn as soon as it is made, then showing the
    current stage and how many of its steps are done.

    On a terminal it is one tqdm bar, redrawn in place. Anywhere else (a log file, ``nohup``, a
    pipe, CI) a redrawn bar would leave every redraw in the file, so it writes plain lines
    instead: one per stage, one per tenth of a stage's steps, and the total time at the end.
    ``interactive`` says which; ``congeal align --method congeal3d`` shows its inner bars only
    when it is True (:func:`congealing.congeal3d.progress_bars`).

    ``step(done, total, note="")`` fits any per-iteration callback; ``write`` prints a line above
    the bar; ``close`` ends it.

    >>> import io
    >>> log = io.StringIO()  # not a terminal: plain lines
    >>> bar = AlignProgress("lsq", file=log)
    >>> bar.stage("aligning", 200)
    >>> for done in range(1, 201):
    ...     bar.step(done)
    >>> bar.close()
    >>> lines = log.getvalue().splitlines()
    >>> len(lines), lines[2], lines[-2]
    (13, 'congeal align lsq: aligning 20/200', 'congeal align lsq: aligning 200/200')
    """

    def __init__(self, method: str, file=None):
        from tqdm.auto import tqdm

        self.method = method
        self.file = file or sys.stderr
        self.interactive = bool(getattr(self.file, "isatty", lambda: False)())
        self.name, self.total, self.tenths, self.started = "starting", 1, 0, time.perf_counter()
        if self.interactive:
            self.bar = tqdm(total=1, desc=f"congeal align {method}: starting", file=self.file, dynamic_ncols=True, mininterval=0.25, bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")
            self.bar.refresh()
        else:
            self.write(f"congeal align {method}: starting")

    def stage(self, name: str, total: int = 1) -> None:
        self.name, self.total, self.tenths = name, max(1, total), 0
        if not self.interactive:
            self.write(f"congeal align {self.method}: {name}")
            return
        self.bar.set_description_str(f"congeal align {self.method}: {name}", refresh=False)
        self.bar.reset(total=self.total)
        self.bar.refresh()

    def step(self, done: int, total: int | None = None, note: str = "") -> None:
        if total is not None:
            self.total = max(1, total)
        if not self.interactive:
            tenths = min(10, 10 * done // self.total)
            if tenths > self.tenths:  # at most ten lines a stage
                self.tenths = tenths
                self.write(f"congeal align {self.method}: {self.name} {done}/{self.total}" + (f" ({note})" if note else ""))
            return
        if self.total != self.bar.total:
            self.bar.total = self.total
        self.bar.n = done
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()

    def write(self, line: str) -> None:
        if self.interactive:
            self.bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def close(self) -> None:
        if not self.interactive:
            self.write(f"congeal align {self.method}: done in {time.perf_counter() - self.started:.0f} s")
            return
        self.bar.n = self.bar.total
        self.bar.close()


def output_keys(names: list[str]) -> list[str]:
    """One unique, file-system-safe output name per input file name (extension kept in the name).

    Names that differ only in case (``x.JPG``, ``x.jpg``) are numbered, so the outputs stay distinct
    on case-insensitive file systems too. Chapter 7, "Align your own photos", "What came out".

    Args:
        names: the input file names, in order.

    Returns:
        one key per name, in the same order (``summary.json``'s ``outputs`` maps names to them).

    Example:
        >>> output_keys(["a.jpg", "a.png", "x.JPG", "x.jpg"])
        ['a_jpg', 'a_png', 'x_jpg', 'x_jpg-2']
    """
    keys, seen = [], set()
    for name in names:
        path = Path(name)
        stem = path.stem.replace("/", "_").replace("\\", "_") or "image"
        base = stem + ("_" + path.suffix[1:].lower() if path.suffix else "")
        key, number = base, 1
        while key.lower() in seen:
            number += 1
            key = f"{base}-{number}"
        seen.add(key.lower())
        keys.append(key)
    return keys


def demo_edit(region: torch.Tensor) -> torch.Tensor:
    """The default edit of ``congeal align``: an RGBA image ``(4, H, W)`` of coloured stripes over
    ``region`` ``(H, W)`` (where it is > 0.5), e.g. the atlas's foreground. :func:`congealing.align.align`
    draws it on the atlas and propagates it to every image (Chapter 4, "Edit propagation").

    Args:
        region: ``(H, W)``, where the stripes go (> 0.5); stripes are ``H // 16`` rows wide.

    Returns:
        RGBA ``(4, H, W)``: red/blue stripes, alpha 0.7 inside ``region`` and 0 outside.

    Example:
        >>> demo_edit(torch.ones(32, 32))[3].unique().tolist()
        [0.699999988079071]
        >>> demo_edit(torch.ones(32, 32)).shape
        torch.Size([4, 32, 32])
    """
    H, W = region.shape
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    stripes = ((rows // max(1, H // 16)) % 2 == 0).float()
    rgb = torch.stack([stripes, 0.3 * torch.ones_like(stripes), 1 - stripes])
    return torch.cat([rgb, (0.7 * (region.float().cpu() > 0.5))[None]])


def centre_disk(size: int, radius: float = 0.35) -> torch.Tensor:
    """A ``(size, size)`` disk of ``radius`` (fraction of the side) at the centre: where a congealed
    object sits when a method has no mask of it (the demo edit's region for the pixel methods).

    Args:
        size: the side in pixels.
        radius: the disk's radius as a fraction of the side.

    Returns:
        ``(size, size)`` float, 1 inside the disk (pixel centres within ``radius``), 0 outside.

    Example:
        >>> centre_disk(4, 0.25).int().tolist()
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    return ((axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2).float()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_") or "view"


def _trend(before: float, after: float) -> str:
    """``"up"`` / ``"down"`` when an agreement in ``[-1, 1]`` closed / opened at least 10 % of its
    remaining gap to 1, else ``"same"``.

    >>> _trend(0.5, 0.6), _trend(0.9, 0.88), _trend(0.9, 0.905)
    ('up', 'down', 'same')
    """
    gain = _gain(before, after)
    return "up" if gain >= 0.1 else "down" if gain <= -0.1 else "same"


def _gain(before: float, after: float) -> float:
    """The share of the gap to 1 that an agreement closed (negative: opened)."""
    return (after - before) / max(1.0 - before, 1e-6)


def _verdict(quality, objective, method_scores, count, mode, method, masked: bool = True) -> dict:
    """The report's first paragraph: a headline, the numbers behind it and warnings."""
    verdict = {"sentences": [], "warnings": []}
    where = "inside the object masks" if masked else "over the pixels that come from the photos (not the padding, nor what moved in from outside)"
    if quality is not None and quality["after"] is not None:
        semantic = "descriptors_after" in quality
        before, after = float(quality["before"].mean()), float(quality["after"].mean())
        verdict["agreement_before"], verdict["agreement_after"] = round(before, 4), round(after, 4)
        if semantic:
            verdict["descriptor_agreement_before"] = round(float(quality["descriptors_before"].mean()), 4)
            verdict["descriptor_agreement_after"] = round(float(quality["descriptors_after"].mean()), 4)
        measures = [(before, after)]
        if semantic:
            measures.append((verdict["descriptor_agreement_before"], verdict["descriptor_agreement_after"]))
        trends = {_trend(b, a) for b, a in measures}
        if trends == {"up"} or trends == {"up", "same"}:
            strength = "clearly" if all(_gain(b, a) >= 0.25 for b, a in measures) else "somewhat"
            verdict["headline"], verdict["status"] = f"The alignment made the set {strength} more consistent.", "good"
        elif trends == {"down"} or trends == {"down", "same"}:
            verdict["headline"], verdict["status"] = "The alignment made the set less consistent: it probably failed.", "bad"
        elif trends == {"same"}:
            verdict["headline"], verdict["status"] = "The alignment changed the set only a little.", "unclear"
        else:
            verdict["headline"], verdict["status"] = "Unclear: the images agree more in one measure and less in the other.", "unclear"
        if semantic:
            judged_before, judged_after = measures[1]
            change = judged_after - judged_before
            verdict["sentences"].append(
                f"Descriptor agreement {'rose' if change >= 0 else 'fell'} from {judged_before:.2f} to {judged_after:.2f}: the mean cosine "
                "similarity between each image's deep features and the average features of the others at the same place of the common "
                f"frame, {where} (1 = the same parts everywhere; it does not depend on the method)."
            )
        verdict["sentences"].append(
            f"Colour agreement {'rose' if after >= before else 'fell'} from {before:.2f} to {after:.2f}: the mean correlation of each image "
            f"with the average of the others, {where} (1 = identical, 0 = unrelated; photos of one kind of object "
            "in different colours or light agree little even when aligned)."
        )
    elif method_scores is not None:
        values = torch.as_tensor(method_scores["values"]).float()
        verdict["headline"] = f"Mean {method_scores['name']}: {float(values.mean()):.2f} ({method_scores['better']} is better)."
        verdict["status"] = "good" if method_scores["better"] == "higher" and float(values.mean()) >= 0.7 else "unclear"
        doc = method_scores.get("doc", "")
        verdict["sentences"].append(f"{method_scores['name'][:1].upper()}{method_scores['name'][1:]}: {doc}." if doc else "")
    else:
        verdict["headline"] = "No score of the alignment is available for this method."
        verdict["status"] = "unclear"
    if objective is not None and objective.get("before") is not None:
        verdict["objective"] = {k: objective[k] for k in ("name", "before", "after", "better") if k in objective}
        verdict["sentences"].append(
            f"The method's own objective, {objective['name']}, went from {objective['before']:.4g} to {objective['after']:.4g} "
            f"({objective['better']} is better): it shows the optimiser made progress, not that the correspondences are right."
        )
    if count < 8:
        verdict["warnings"].append(
            f"Only {count} images: the scores on this page are noisy, and an atlas made from so few images rests on very few examples. Alignments are more reliable with a few dozen images."
        )
    if mode == "quick" and method in ("neural", "spacejam", "congeal3d"):
        verdict["warnings"].append(
            "Quick mode: training ran for a small fraction of the published schedule so that it fits a CPU in minutes. "
            "If the result looks weak, rerun with --mode full (hours; a GPU helps)."
        )
    if verdict.get("status") == "bad":
        verdict["warnings"].append("The images agree less after alignment than before: do not trust these correspondences.")
    return verdict


#: A transform that changes an image's area by more than this factor (either way), or stretches it
#: by more than :data:`SQUEEZE_STRETCH`, is "squeezed": the degenerate way to lower a congealing
#: objective (Chapter 2) rather than a match.
SQUEEZE_SCALE = 1.5
SQUEEZE_STRETCH = 2.0


def _warn_if_squeezed(verdict: dict, moves: list, names: list[str]) -> None:
    """Warn when images were shrunk, enlarged or stretched strongly; with a third of the set or
    more, a "good" verdict becomes "unclear" (agreement can rise because images were squeezed)."""
    squeezed = [
        name for name, move in zip(names, moves)
        if move is not None and "scale" in move
        and (move["scale"] > SQUEEZE_SCALE or move["scale"] < 1 / SQUEEZE_SCALE or move.get("stretch", 1.0) > SQUEEZE_STRETCH)
    ]
    if not squeezed:
        return
    verdict["squeezed"] = squeezed
    listing = ", ".join(squeezed[:5]) + (" ..." if len(squeezed) > 5 else "")
    verdict["warnings"].append(
        f"{len(squeezed)} of {len(names)} images were shrunk, enlarged or stretched strongly ({listing}): a congealing objective "
        "can be lowered by squeezing images instead of matching them. Look at the aligned column before trusting the correspondences."
    )
    if verdict.get("status") == "good" and 3 * len(squeezed) >= len(names):
        verdict["status"] = "unclear"
        verdict["headline"] = "Unclear: the images agree more, but many were squeezed to get there."


def _warn_if_left_out(verdict: dict, left_out: list[str]) -> None:
    """Warn that files of the folder are not in the report (each ``"name: why"``)."""
    if not left_out:
        return
    names = [entry.split(": ", 1)[0] for entry in left_out]
    listing = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    verdict["warnings"].append(
        f"{len(names)} file(s) of the folder could not be used and are not in this report ({listing}); "
        "summary.json lists each with its reason (left_out)."
    )


# ----------------------------------------------------------------------------- mappings for the browser


def browser_mappings(
    size: int,
    *,
    transforms: torch.Tensor | None = None,
    grids: torch.Tensor | None = None,
    coordinate_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    flipped: torch.Tensor | None = None,
    side: int = BROWSER_GRID,
) -> dict:
    """The mappings the page's click-to-match reads (``OUT/mappings.js``), as plain JSON.

    Points are normalised ``(x, y)`` in ``[-1, 1]`` (pixel ``p`` of an ``S``-pixel image is
    ``(2 p + 1) / S - 1``; ``x`` right, ``y`` down), the convention of :mod:`congealing.warps`.
    The first of ``coordinate_maps``, ``transforms``, ``grids`` that is given decides ``kind``:

    * ``kind: "transforms"``: ``transforms``, one row-major 3x3 matrix per image, input -> aligned
      frame. A point moves from image ``i`` to ``j`` as ``T_j^-1 T_i p``
      (:func:`congealing.alignment.transfer_via_transforms`).
    * ``kind: "grids"``: ``grids``, per image a flat ``[x, y, x, y, ...]`` list of an ``h`` x ``w``
      sampling grid (aligned frame -> input, rows top to bottom), bilinearly downsampled to at
      most ``side`` (:func:`export_grids`). A point goes to the aligned frame through the nearest grid
      value and on to image ``j`` by bilinear sampling of ``j``'s grid
      (:func:`congealing.alignment.transfer_via_grids` on the exported grids).
    * ``kind: "nocs"``: ``nocs``, per image a flat ``h`` x ``w`` x 3 list of canonical 3-D
      coordinates (nearest-neighbour downsampled) and ``mask`` (1 where a pixel has one). A point
      reads its coordinate at the nearest cell; its match in image ``j`` is the centre of the cell
      of ``j`` whose coordinate is nearest (:func:`congealing.congeal3d.transfer_points`).
    * ``kind: "none"``: no mapping; clicking marks nothing.

    Chapter 7, "Align your own photos", "What came out" (:func:`write_alignment` writes it).

    Args:
        size: the side ``S`` of the report's images in pixels.
        transforms: ``(N, 3, 3)`` input -> aligned frame, or None.
        grids: ``(N, h, w, 2)`` aligned frame -> input, or None.
        coordinate_maps: ``(nocs (N, 3, h, w), mask (N, 1, h, w))`` of the 3-D method, or None.
        flipped: ``(N,)`` bool, the images the method mirrored (listed as ``flipped``), or None.
        side: the largest side of the exported grids and coordinate maps.

    Returns:
        a JSON-ready dict: ``size``, ``convention``, ``kind``, ``flipped`` (if given) and the
        mapping of that kind (with ``h`` and ``w`` for grids and coordinate maps).

    Example:
        >>> import torch
        >>> from congealing.report import browser_mappings
        >>> browser_mappings(64, transforms=torch.eye(3)[None])["transforms"]
        [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]]
    """
    out = {"size": int(size), "convention": "normalised (x, y) in [-1, 1], x right, y down; pixel p -> (2p+1)/S - 1"}
    if flipped is not None:
        out["flipped"] = [bool(f) for f in torch.as_tensor(flipped).tolist()]
    if coordinate_maps is not None:
        nocs, mask = (m.detach().float().cpu() for m in coordinate_maps)
        if nocs.shape[-1] > side:
            nocs = F.interpolate(nocs, size=(side, side), mode="nearest")
            mask = F.interpolate(mask, size=(side, side), mode="nearest")
        out.update(kind="nocs", h=nocs.shape[-2], w=nocs.shape[-1])
        out["nocs"] = [[round(v, 4) for v in image.permute(1, 2, 0).reshape(-1).tolist()] for image in nocs]
        out["mask"] = [[int(v > 0.5) for v in image.reshape(-1).tolist()] for image in mask]
    elif transforms is not None:
        out.update(kind="transforms", transforms=[[round(v, 7) for v in T.reshape(-1).tolist()] for T in transforms.detach().double().cpu()])
    elif grids is not None:
        grid = export_grids(grids, side)
        out.update(kind="grids", h=grid.shape[1], w=grid.shape[2])
        out["grids"] = [[round(v, 5) for v in g.reshape(-1).tolist()] for g in grid]
    else:
        out["kind"] = "none"
    return out


def export_grids(grids: torch.Tensor, side: int = BROWSER_GRID) -> torch.Tensor:
    """Sampling grids as the page gets them: downsampled to at most ``side`` and rounded.

    Grids larger than ``side`` in either direction are bilinearly (antialiased) downsampled to at most
    ``side`` x ``side``; smaller ones are kept. Values are rounded to 5 decimals as in ``mappings.js``
    (:func:`browser_mappings`).

    Args:
        grids: ``(N, h, w, 2)``, aligned frame -> input, normalised coordinates.
        side: the largest side kept.

    Returns:
        ``(N, min(h, side), min(w, side), 2)`` float on the CPU.

    Example:
        >>> from congealing import warps
        >>> from congealing.report import export_grids
        >>> export_grids(warps.identity_grid((64, 64), 1), 32).shape
        torch.Size([1, 32, 32, 2])
    """
    grid = grids.detach().float().cpu()
    if grid.shape[1] > side or grid.shape[2] > side:
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(min(side, grid.shape[1]), min(side, grid.shape[2])), mode="bilinear", align_corners=False, antialias=True).permute(0, 2, 3, 1)
    return (grid.double() * 1e5).round().float() / 1e5


def _resize(maps: torch.Tensor, size: int) -> torch.Tensor:
    maps = maps.detach().float().cpu()
    return maps if maps.shape[-1] == size and maps.shape[-2] == size else F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------- summary.json, documented

#: What every field of ``summary.json`` means (units; direction of each transform).
FIELD_DOCS: dict[str, str] = {
    "method": "the alignment method (congeal align --method)",
    "mode": "quick (CPU settings, minutes) or full (published settings)",
    "images": "the input file names, in the order every per-image list uses",
    "outputs": "for each input file name: the report's PNG of each column (input, aligned, mask = the input dimmed outside its object mask, edit, ...), relative paths",
    "atlas": "atlas view name -> PNG file; the first is the mean aligned image",
    "verdict": "the page's first paragraph: headline, status (good / unclear / bad), agreement_before and agreement_after "
    "(mean of per_image agreement, inputs vs aligned images; higher is better), descriptor_agreement_before / _after (the same for "
    "per_image descriptor_agreement, when descriptors were given), objective (the method's own, see per method), warnings, squeezed "
    "(the images whose transform changed their area more than 1.5x either way or stretched them more than 2x, if any)",
    "per_image": "one entry per input, in input order: name; key (output file stem); mirrored (bool: the method flipped the image "
    "left-right); agreement (weighted correlation, in [-1, 1], of the aligned image with the mean of the other aligned images inside "
    "the masks: higher is better; congealing.report_scores.agreement); agreement_before (the same for the inputs); descriptor_agreement and "
    "descriptor_agreement_before (mean cosine similarity, in [-1, 1], of the image's deep descriptors with the mean of the others' at the "
    "same place, inside the masks: higher is better; congealing.report_scores.descriptor_agreement); method_score (see "
    "method_score_doc); transform (input -> aligned frame: rotation_deg positive = clockwise on screen, scale = square root of the "
    "area change, stretch = ratio of singular values, shift_x / shift_y = where the image centre moves, in fractions of the side, "
    "positive = right / down, perspective, nonrigid = RMS of a dense warp beyond its affine part in fractions of the side, words); "
    "pose (3-D: camera azimuth_deg, elevation_deg, fov_deg, c2w, words)",
    "method_score_name": "what per_image.method_score is",
    "method_score_doc": "how per_image.method_score is computed",
    "method_score_better": "whether a higher or a lower per_image.method_score is better",
    "fields": "this documentation",
    "left_out": "files of the input folder the run did not use, each 'name: why' (congeal align --skip-unreadable); absent when every file was used",
    # every 2-D method (congealing.align)
    "seconds": "wall-clock seconds of the alignment (dict: per stage)",
    "trainable_parameters": "number of fitted parameters (networks and atlas; 6 per image for an affine transform each)",
    "flipped": "how many images the method mirrored (which ones: per_image.mirrored)",
    "objective_before": "the method's objective at the start (entropy: total pixel-stack entropy in bits; lsq / ic-lsq: squared error "
    "to the mean image; neural: keys cosine loss of the first epoch; spacejam: mean training loss of the first joint epoch); lower is better",
    "objective_after": "the same objective at the end; lower is better",
    "config": "the settings the method ran with (its config dataclass)",
    # pixel methods (entropy, lsq, ic-lsq)
    "iterations": "optimiser iterations run",
    "working_size": "side in pixels of the images the transforms were estimated on (they act on normalised coordinates, so apply at any size)",
    # feature methods (neural, spacejam)
    "backbone": "the feature extractor the descriptors came from",
    "masks": "where the object masks came from: given (alpha channel) or co-segmentation",
    # congeal3d
    "shape": "the canonical shape checkpoint used",
    "poses": "one camera per image: c2w (4x4 camera-to-world matrix, OpenGL: camera looks along -z), fov_deg, azimuth_deg, elevation_deg",
}


def field_documentation(summary: dict, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A description of every top-level field of ``summary``, for ``summary.json``'s ``fields``.

    Descriptions come from :data:`FIELD_DOCS`, then ``extra`` (which wins); a field with no
    description is an error, so a new field cannot go undocumented. Chapter 7, "Align your own
    photos", "What came out" reads ``summary.json``.

    Args:
        summary: the ``summary.json`` dict (only its keys are read).
        extra: field name -> description for method-specific fields, or None.

    Returns:
        field name -> description, for every key of ``summary`` in its order.

    Raises:
        KeyError: a field of ``summary`` has no description.

    Example:
        >>> from congealing.report import field_documentation
        >>> field_documentation({"method": "lsq"})
        {'method': 'the alignment method (congeal align --method)'}
    """
    known = {**FIELD_DOCS, **(extra or {})}
    missing = [key for key in summary if key not in known]
    if missing:
        raise KeyError(f"summary.json fields without documentation: {missing}; add them to report.FIELD_DOCS or pass field_docs")
    return {key: known[key] for key in summary}
