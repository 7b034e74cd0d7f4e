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

import html
import json
import math
import shutil
import sys
import urllib.parse
from pathlib import Path

import torch
import torch.nn.functional as F

from . import report_folder, warps
from .widgets import to_png

__all__ = [
    "write_alignment", "export_grids", "descriptor_agreement", "output_keys", "demo_edit", "centre_disk", "agreement", "to_aligned_frame",
    "browser_mappings", "describe_transforms", "describe_grids", "describe_pose", "field_documentation", "FIELD_DOCS",
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
      :func:`descriptor_agreement` before and after, and sorts by it.
    * ``method_scores``: a per-image term of it, ``{"name", "values": (N,), "better", "doc"}``.
    * ``coordinate_maps`` ``(nocs (N, 3, S, S), mask (N, 1, S, S))`` and ``poses`` (one dict per
      image with ``azimuth_deg``, ``elevation_deg``, ``fov_deg``): the 3-D method's mappings.

    Besides the images, the folder holds ``mappings.js`` (the mappings the page's click-to-match
    reads; format in :func:`browser_mappings`) and ``summary.json`` with a ``fields`` entry that
    documents every field.
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
    outputs = {name: {title: f"{folder}/{key}.png" for title, (folder, _) in columns.items()} for name, key in zip(names, keys)}
    info = {"method": method, "mode": mode, "images": list(names), "outputs": outputs, "atlas": atlas_files, **(summary or {})}
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
    page = _html(method, mode, list(names), keys, columns, thumbnails, atlas_files, verdict_files, verdict, per_image, info, planar)
    (staging / "index.html").write_text(page)
    return report_folder.publish(staging, out)


class AlignProgress:
    """The progress bar of ``congeal align`` on stderr: drawn as soon as it is made, then showing
    the current stage and how many of its steps are done.

    ``step(done, total, note="")`` fits any per-iteration callback; ``write`` prints a line above
    the bar; ``close`` ends it.

    >>> import io
    >>> bar = AlignProgress("lsq", file=io.StringIO()); bar.stage("aligning", 10); bar.step(3, 10); bar.close()
    """

    def __init__(self, method: str, file=None):
        from tqdm.auto import tqdm

        self.method = method
        self.bar = tqdm(total=1, desc=f"congeal align {method}: starting", file=file or sys.stderr, dynamic_ncols=True, mininterval=0.25, bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")
        self.bar.refresh()

    def stage(self, name: str, total: int = 1) -> None:
        self.bar.set_description_str(f"congeal align {self.method}: {name}", refresh=False)
        self.bar.reset(total=max(1, total))
        self.bar.refresh()

    def step(self, done: int, total: int | None = None, note: str = "") -> None:
        if total is not None and total != self.bar.total:
            self.bar.total = max(1, total)
        self.bar.n = done
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.bar.fp)

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.close()


def output_keys(names: list[str]) -> list[str]:
    """One unique, file-system-safe output name per input file name (extension kept in the name).

    Names that differ only in case (``x.JPG``, ``x.jpg``) are numbered, so the outputs stay distinct
    on case-insensitive file systems too.

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
    ``region`` ``(H, W)`` (where it is > 0.5), e.g. the atlas's foreground.

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
    object sits when a method has no mask of it."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    return ((axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2).float()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_") or "view"


def _url(path: str) -> str:
    """A relative file path as an attribute-safe URL (``#``, ``?``, spaces and quotes encoded)."""
    return html.escape(urllib.parse.quote(path), quote=True)




# ----------------------------------------------------------------------------- how well it worked


def agreement(images: torch.Tensor, weights: torch.Tensor | None = None, side: int = 64) -> torch.Tensor:
    """How much each image agrees with the rest of the set: ``(N,)`` weighted Pearson correlations.

    Image ``n`` ``(C, H, W)`` is compared with the mean of the other images, pixel by pixel, over
    all channels, weighting each pixel by ``weights[n]`` times the mean weight of the others (so
    pixels outside an image or outside its object mask do not count). Everything is first resized
    to ``side`` pixels. 1 means the image is the mean of the others up to brightness and contrast;
    0 means no relation. A set that aligned well agrees more after alignment than before.
    ``weights`` ``(N, 1, H, W)`` in ``[0, 1]``; default all ones.

    >>> same = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1)
    >>> agreement(same).tolist()
    [1.0, 1.0, 1.0]
    """
    images = images.detach().float().cpu()
    N = images.shape[0]
    weights = torch.ones_like(images[:, :1]) if weights is None else weights.detach().float().cpu()
    if N < 2:
        return torch.full((N,), float("nan"))
    if images.shape[-1] != side or images.shape[-2] != side:
        images = F.interpolate(images, size=(side, side), mode="area")
    if weights.shape[-1] != side or weights.shape[-2] != side:
        weights = F.interpolate(weights, size=(side, side), mode="area")
    total_weighted, total_weight = (weights * images).sum(0), weights.sum(0)
    others_weight = total_weight - weights
    others = (total_weighted - weights * images) / others_weight.clamp_min(1e-6)
    pixel_weight = (weights * others_weight / (N - 1)).expand_as(images)

    def mean(values):
        return (pixel_weight * values).sum((1, 2, 3)) / pixel_weight.sum((1, 2, 3)).clamp_min(1e-12)

    centred = images - mean(images)[:, None, None, None]
    centred_others = others - mean(others)[:, None, None, None]
    spread = (mean(centred**2) * mean(centred_others**2)).sqrt()
    return (mean(centred * centred_others) / spread.clamp_min(1e-12)).clamp(-1, 1).round(decimals=6)


def descriptor_agreement(descriptors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """How much each image's features agree with the rest of the set: ``(N,)`` mean cosine similarity.

    At every location, image ``n``'s descriptor ``(D,)`` is compared with the mean of the other
    images' unit descriptors there (cosine similarity); the similarities are averaged with weight
    ``weights[n]`` times the others' mean weight (their object masks, zero outside an image).
    ``descriptors`` ``(N, D, h, w)`` (normalised here), ``weights`` ``(N, 1, h, w)``, default ones.

    >>> same = torch.randn(1, 8, 4, 4).expand(3, -1, -1, -1)
    >>> descriptor_agreement(same).tolist()
    [1.0, 1.0, 1.0]
    """
    unit = F.normalize(descriptors.detach().float().cpu(), dim=1)
    N = unit.shape[0]
    weights = torch.ones_like(unit[:, :1]) if weights is None else weights.detach().float().cpu()
    if N < 2:
        return torch.full((N,), float("nan"))
    others_weight = weights.sum(0) - weights
    others = F.normalize((weights * unit).sum(0) - weights * unit, dim=1)
    similarity = (unit * others).sum(1, keepdim=True)
    pixel_weight = weights * others_weight / (N - 1)
    return ((pixel_weight * similarity).sum((1, 2, 3)) / pixel_weight.sum((1, 2, 3)).clamp_min(1e-12)).clamp(-1, 1).round(decimals=5)


def to_aligned_frame(maps: torch.Tensor, transforms: torch.Tensor | None, grids: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """Carry per-image maps ``(N, C, H, W)`` (e.g. masks) into the aligned frame at ``size`` x ``size``,
    by transforms ``(N, 3, 3)`` (input -> aligned) or sampling grids ``(N, h, w, 2)`` (aligned ->
    input); zero where an aligned pixel reads from outside its image. None if neither is given.

    >>> to_aligned_frame(torch.ones(2, 1, 8, 8), warps.identity(2), None, 4).shape
    torch.Size([2, 1, 4, 4])
    """
    maps = maps.detach().float().cpu()
    if transforms is not None:
        return warps.warp_image(maps, transforms.detach().float().cpu(), size=(size, size))
    if grids is not None:
        grid = grids.detach().float().cpu()
        if grid.shape[1:3] != (size, size):
            grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        return warps.warp_by_grid(maps, grid)
    return None


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


# ----------------------------------------------------------------------------- transforms in words


def describe_transforms(transforms: torch.Tensor) -> list[dict]:
    """Each transform ``(N, 3, 3)`` (input -> aligned, normalised coordinates, ``x`` right, ``y``
    down) as numbers and words: mirrored or not, rotation in degrees (positive = clockwise on
    screen), scale (the square root of the area change, at the image centre for a homography),
    stretch (the ratio of the singular values), shift of the image centre in fractions of the side
    (positive = right / down) and whether it has perspective.

    >>> describe_transforms(warps.exp(torch.tensor([[0.2, 0.0]]), "translation"))[0]["words"]
    'moved 10% right'
    """
    rows = []
    for T in transforms.detach().double().cpu():
        T = T / T[2, 2]
        shift, perspective = T[:2, 2], T[2, :2]
        jacobian = T[:2, :2] - shift[:, None] * perspective[None, :]
        mirrored = bool(torch.linalg.det(jacobian) < 0)
        rotation_part = jacobian @ torch.diag(torch.tensor([-1.0, 1.0], dtype=jacobian.dtype)) if mirrored else jacobian
        angle = math.degrees(math.atan2(float(rotation_part[1, 0] - rotation_part[0, 1]), float(rotation_part[0, 0] + rotation_part[1, 1])))
        singular = torch.linalg.svdvals(jacobian)
        scale = math.sqrt(abs(float(torch.linalg.det(jacobian))))
        stretch = float(singular[0] / singular[1].clamp_min(1e-12))
        row = {
            "mirrored": mirrored, "rotation_deg": round(angle, 2), "scale": round(scale, 4), "stretch": round(stretch, 4),
            "shift_x": round(float(shift[0]) / 2, 4), "shift_y": round(float(shift[1]) / 2, 4),
            "perspective": bool(perspective.abs().max() > 1e-3),
        }
        row["words"] = _words(row)
        rows.append(row)
    return rows


def _words(row: dict) -> str:
    parts = ["mirrored"] if row["mirrored"] else []
    if abs(row["rotation_deg"]) >= 1:
        parts.append(f"turned {abs(row['rotation_deg']):.0f}° {'clockwise' if row['rotation_deg'] > 0 else 'anticlockwise'}")
    if row["scale"] >= 1.02 or row["scale"] <= 0.98:
        parts.append(f"{'enlarged' if row['scale'] > 1 else 'shrunk'} ×{row['scale']:.2f}")
    if row["stretch"] >= 1.05:
        parts.append(f"stretched ×{row['stretch']:.2f} along one direction")
    moves = []
    if abs(row["shift_x"]) >= 0.01:
        moves.append(f"{abs(row['shift_x']):.0%} {'right' if row['shift_x'] > 0 else 'left'}")
    if abs(row["shift_y"]) >= 0.01:
        moves.append(f"{abs(row['shift_y']):.0%} {'down' if row['shift_y'] > 0 else 'up'}")
    if moves:
        parts.append("moved " + ", ".join(moves))
    if row.get("perspective"):
        parts.append("with perspective")
    if row.get("nonrigid", 0) >= 0.01:
        parts.append(f"plus a local warp of {row['nonrigid']:.0%} of the side (RMS)")
    return ", ".join(parts) or "left as it was"


def describe_grids(grids: torch.Tensor) -> list[dict]:
    """Each sampling grid ``(N, h, w, 2)`` (aligned -> input) as its least-squares affine part,
    described like :func:`describe_transforms` (input -> aligned), plus ``nonrigid``: the RMS
    distance between the grid and that affine map, in fractions of the side.

    >>> describe_grids(warps.identity_grid((4, 4), 1) * 0.5)[0]["words"]
    'enlarged ×2.00'
    """
    N, h, w, _ = grids.shape
    atlas = warps.identity_grid((h, w), 1, torch.float64).reshape(-1, 2)
    design = torch.cat([atlas, torch.ones_like(atlas[:, :1])], dim=1)  # (h*w, 3)
    rows = []
    for grid in grids.detach().double().cpu().reshape(N, -1, 2):
        solution = torch.linalg.lstsq(design, grid).solution  # (3, 2): grid ~ design @ solution
        affine = torch.eye(3, dtype=torch.float64)
        affine[:2] = solution.T
        residual = float(((design @ solution - grid) ** 2).sum(1).mean().sqrt()) / 2
        row = describe_transforms(torch.linalg.inv(affine)[None])[0]
        row["nonrigid"] = round(residual, 4)
        row["words"] = _words(row)
        rows.append(row)
    return rows


def describe_pose(pose: dict) -> str:
    """A 3-D camera in words.

    >>> describe_pose({"azimuth_deg": 30.4, "elevation_deg": 12.0, "fov_deg": 40.0})
    'seen from azimuth 30°, elevation 12°, field of view 40°'
    """
    return f"seen from azimuth {pose['azimuth_deg']:.0f}°, elevation {pose['elevation_deg']:.0f}°, field of view {pose['fov_deg']:.0f}°"


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

    * ``kind: "transforms"``: ``transforms``, one row-major 3x3 matrix per image, input -> aligned
      frame. A point moves from image ``i`` to ``j`` as ``T_j^-1 T_i p``
      (:func:`congealing.alignment.transfer_via_transforms`).
    * ``kind: "grids"``: ``grids``, per image a flat ``[x, y, x, y, ...]`` list of an ``h`` x ``w``
      sampling grid (aligned frame -> input, rows top to bottom), bilinearly downsampled to at
      most ``side``. A point goes to the aligned frame through the nearest grid value and on to
      image ``j`` by bilinear sampling of ``j``'s grid (:func:`congealing.alignment.transfer_via_grids`
      on the exported grids).
    * ``kind: "nocs"``: ``nocs``, per image a flat ``h`` x ``w`` x 3 list of canonical 3-D
      coordinates (nearest-neighbour downsampled) and ``mask`` (1 where a pixel has one). A point
      reads its coordinate at the nearest cell; its match in image ``j`` is the centre of the cell
      of ``j`` whose coordinate is nearest (:func:`congealing.congeal3d.transfer_points`).
    * ``kind: "none"``: no mapping; clicking marks nothing.

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
    """Sampling grids ``(N, h, w, 2)`` as the page gets them: bilinearly downsampled to at most
    ``side`` x ``side`` (unchanged if already that small), rounded to 5 decimals as in ``mappings.js``.

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
    "the masks: higher is better; congealing.report.agreement); agreement_before (the same for the inputs); descriptor_agreement and "
    "descriptor_agreement_before (mean cosine similarity, in [-1, 1], of the image's deep descriptors with the mean of the others' at the "
    "same place, inside the masks: higher is better; congealing.report.descriptor_agreement); method_score (see "
    "method_score_doc); transform (input -> aligned frame: rotation_deg positive = clockwise on screen, scale = square root of the "
    "area change, stretch = ratio of singular values, shift_x / shift_y = where the image centre moves, in fractions of the side, "
    "positive = right / down, perspective, nonrigid = RMS of a dense warp beyond its affine part in fractions of the side, words); "
    "pose (3-D: camera azimuth_deg, elevation_deg, fov_deg, c2w, words)",
    "method_score_name": "what per_image.method_score is",
    "method_score_doc": "how per_image.method_score is computed",
    "method_score_better": "whether a higher or a lower per_image.method_score is better",
    "fields": "this documentation",
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
    """A description of every top-level field of ``summary`` (from :data:`FIELD_DOCS`, then
    ``extra``); a field with no description is an error, so a new field cannot go undocumented.

    >>> field_documentation({"method": "lsq"})
    {'method': 'the alignment method (congeal align --method)'}
    """
    known = {**FIELD_DOCS, **(extra or {})}
    missing = [key for key in summary if key not in known]
    if missing:
        raise KeyError(f"summary.json fields without documentation: {missing}; add them to report.FIELD_DOCS or pass field_docs")
    return {key: known[key] for key in summary}


# ----------------------------------------------------------------------------- the page

METHOD_TITLES = {
    "entropy": "entropy congealing (Learned-Miller 2006)",
    "lsq": "least-squares congealing (Cox et al. 2008)",
    "ic-lsq": "inverse-compositional least-squares congealing (Cox et al. 2009)",
    "neural": "Neural Congealing (Ofri-Amar et al. 2023)",
    "spacejam": "SpaceJAM (Barel et al. 2024)",
    "congeal3d": "3-D congealing (Zhang et al. 2024)",
}


def _img(path: str, alt: str, cls: str = "") -> str:
    return f'<img src="{_url(path)}" alt="{html.escape(alt)}" loading="lazy" decoding="async"{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>'


def _html(method, mode, names, keys, columns, thumbnails, atlas_files, verdict_files, verdict, per_image, summary, planar) -> str:
    esc = html.escape
    title = METHOD_TITLES.get(method, method)
    count = len(names)
    status = verdict.get("status", "unclear")
    sentences = "".join(f"<p>{esc(s)}</p>" for s in verdict["sentences"] if s)
    warnings = "".join(f'<p class="warning">{esc(w)}</p>' for w in verdict["warnings"])
    means = "".join(f'<figure><img src="{_url(f)}" alt="{esc(v)}"><figcaption>{esc(v)}</figcaption></figure>' for v, f in verdict_files.items())
    mean_note = (
        "<p class=note>Congealing moves every image into one common frame. If it worked, the mean of the aligned images "
        "(right) shows a sharper object than the mean of the inputs (left).</p>" if verdict_files else ""
    )
    mirrored = sum(row["mirrored"] for row in per_image)
    mirrored_note = f"<p>{mirrored} of {count} images were mirrored (flipped left-right) to match the others.</p>" if mirrored else ""
    has_score = any("agreement" in row or "method_score" in row for row in per_image)
    score_key = next((key for key in ("descriptor_agreement", "agreement") if any(key in row for row in per_image)), "method_score")
    score_help = {
        "descriptor_agreement": "descriptor agreement with the other aligned images (higher is better)",
        "agreement": "colour agreement with the other aligned images (higher is better)",
    }.get(score_key, esc(summary.get("method_score_name", "the method's per-image score")))
    higher_is_better = score_key != "method_score" or summary.get("method_score_better", "higher") == "higher"
    extras = [t for t in columns if t not in ("input", "aligned", "mask")]
    aligned_title = "aligned" if planar else "the shape rendered at its camera"
    other_view = "aligned" if planar else "render"
    head = ["#", "image", "score" if has_score else "", f"input ↔ {aligned_title} (click to match points)", "object mask" if "mask" in columns else None, aligned_title, *extras, "how it was moved" if planar else "camera"]
    header = "".join(f"<th>{esc(h)}</th>" for h in head if h is not None)
    rows = []
    for n, (name, key, row) in enumerate(zip(names, keys, per_image)):
        src = {t: f"{thumbnails[t]}/{key}.png" for t in columns}
        score = row.get(score_key)
        score_cell = ""
        if has_score:
            before = f'<br><small title="before alignment">was {row[score_key + "_before"]:.2f}</small>' if score_key + "_before" in row else ""
            score_cell = f'<td class="score">{score:.2f}{before}</td>' if score is not None else "<td></td>"
        view = (
            f'<div class="pic" data-index="{n}" data-frame="input">{_img(src["input"], f"{name} input", "view")}</div>'
            f'<button type="button" class="toggle" data-input="{_url(src["input"])}" data-aligned="{_url(src["aligned"])}" data-label="{other_view}">show {other_view}</button>'
        )
        cells = [f"<td>{n + 1}</td>", f'<td class="name">{esc(name)}{" <span class=flag>mirrored</span>" if row["mirrored"] else ""}</td>', score_cell, f"<td>{view}</td>"]
        if "mask" in columns:
            cells.append(f'<td><div class="pic" data-index="{n}" data-frame="input">{_img(src["mask"], f"{name} mask")}</div></td>')
        cells.append(f'<td><div class="pic" data-index="{n}" data-frame="aligned">{_img(src["aligned"], f"{name} aligned")}</div></td>')
        cells += [f"<td>{_img(src[t], f'{name} {t}')}</td>" for t in extras]
        words = row.get("transform", {}).get("words") or row.get("pose", {}).get("words") or ""
        cells.append(f'<td class="words">{esc(words)}</td>')
        sort_value = "" if score is None else f"{score:.6f}"
        rows.append(f'<tr data-order="{n}" data-name="{esc(name.lower())}" data-score="{sort_value}">{"".join(cells)}</tr>')
    scores = [row.get(score_key) for row in per_image]
    if any(score is not None for score in scores):  # worst-aligned first, already in the HTML (re-sorting 200 rows in JS costs the page 0.3 s)
        worst_first = sorted(range(count), key=lambda n: (scores[n] is None, (scores[n] or 0.0) * (1 if higher_is_better else -1), n))
        rows = [rows[n] for n in worst_first]
    atlases = "".join(f'<figure><img src="{_url(f)}" alt="atlas {esc(v)}"><figcaption>{esc(v)}</figcaption></figure>' for v, f in atlas_files.items())
    facts = "".join(
        f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in summary.items() if not isinstance(v, (list, dict)) and not k.startswith("method_score") and k not in ("method", "mode")
    )
    frame_note = (
        "Click a point on an input (or an aligned image): a coloured marker appears at the corresponding point of every other "
        "image, computed from the method's mappings. Each click adds a point in a new colour."
        if planar
        else "Click a point on an input: a coloured marker appears at the point with the same 3-D canonical coordinate on every other image."
    )
    usage = _usage(method, planar)
    mask_note = (
        "The <b>object mask</b> column shows in full colour the pixels the method treated as the object (the rest is dimmed)." if "mask" in columns
        else "This method uses every pixel of each image (it has no object mask), background included."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>congeal align: {esc(method)}, {count} images</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="report.css"></head>
<body>
<h1>Joint alignment of {count} images with {esc(title)}</h1>
<section class="verdict {esc(status)}" id="verdict">
<h2>Did it work?</h2>
<p class="headline">{esc(verdict.get("headline", ""))}</p>
<div class="means">{means}</div>{mean_note}
{sentences}{mirrored_note}{warnings}
</section>
<section id="images">
<h2>Every image</h2>
<p class="note">{esc(frame_note)} <b>Score</b>: {score_help}; the table starts with the worst-aligned images.
{mask_note} {"“How it was moved” describes the transform that takes the input into the common frame." if planar else "“Camera” is where the method placed the camera that sees the canonical shape as the image shows the object."}</p>
<div class="controls">
<button type="button" id="clear-points">clear points</button>
<button type="button" id="show-all-aligned">show all aligned</button>
<button type="button" id="show-all-inputs">show all inputs</button>
<label>order: <select id="order">
<option value="worst">worst-aligned first</option><option value="best">best-aligned first</option>
<option value="name">by name</option><option value="input">input order</option></select></label>
<span id="status" aria-live="polite"></span>
</div>
<table id="table" data-score-better="{"higher" if higher_is_better else "lower"}">
<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>
</section>
<section id="atlas"><h2>Atlas</h2>
<p class="note">The atlas is the common frame every image was aligned to{", shown as the mean of the aligned images and the method's other views" if planar else ": the canonical 3-D shape, rendered from three sides"}.</p>
{atlases}</section>
<section id="use"><h2>How to use the result</h2>{usage}
<p>Run details (every field, with units, is documented in <a href="summary.json">summary.json</a> under <code>fields</code>):</p>
<ul class="facts"><li><b>mode</b>: {esc(mode)}</li>{facts}</ul>
</section>
<script src="mappings.js"></script>
<script src="report.js"></script>
</body></html>
"""


def _usage(method: str, planar: bool) -> str:
    """How to carry points or edits with the exported mappings, in Python."""
    if not planar:
        code = (
            "import json\n"
            "summary = json.load(open('OUT/summary.json'))\n"
            "for row in summary['per_image']:\n"
            "    print(row['name'], row['pose']['c2w'])   # camera-to-world 4x4, per image"
        )
        text = "Each image's camera in the canonical shape's frame is in summary.json (<code>per_image[k].pose</code>)."
    elif method == "neural":
        code = (
            "import torch\n"
            "from congealing.alignment import transfer_via_grids\n"
            "m = torch.load('OUT/mappings.pt', weights_only=True)      # m['grids']: (N, h, w, 2), aligned -> input\n"
            "transfer = transfer_via_grids(m['grids'], size=256)       # size: the side of your images\n"
            "transfer(0, 1, torch.tensor([[120.0, 80.0]]))            # pixel (x, y) of image 0 -> image 1"
        )
        text = "<code>mappings.pt</code> holds a sampling grid per image (aligned frame -> input, normalised coordinates)."
    else:
        code = (
            "import torch\n"
            "from congealing.alignment import transfer_via_transforms\n"
            "m = torch.load('OUT/mappings.pt', weights_only=True)      # m['transforms']: (N, 3, 3), input -> aligned\n"
            "transfer = transfer_via_transforms(m['transforms'], size=256)  # size: the side of your images\n"
            "transfer(0, 1, torch.tensor([[120.0, 80.0]]))            # pixel (x, y) of image 0 -> image 1"
        )
        text = "<code>mappings.pt</code> holds one 3x3 transform per image (input -> aligned frame, normalised coordinates [-1, 1])."
    return f"<p>{text} To carry points from one image to another:</p><pre>{html.escape(code)}</pre>"
