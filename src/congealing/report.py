"""What ``congeal align`` writes: one folder layout for every method.

::

    OUT/
      index.html        inputs, aligned images and atlas side by side (opens without a server)
      summary.json      method, mode, names, timings and method-specific numbers
      mappings.pt       per-image transforms (N, 3, 3) and/or sampling grids (N, H, W, 2);
                        torch.load(path, weights_only=True)
      atlas.png         the atlas (mean aligned image); atlas_<name>.png for any other atlas views
      inputs/KEY.png    the inputs as the method saw them (square)
      aligned/KEY.png   each input warped into the common frame

``KEY`` is the input's file name with its extension folded in (``bird.jpg`` -> ``bird_jpg``), so
two inputs never share an output name; ``summary.json`` maps every input to its outputs.

The folder is written next to ``OUT`` first and moved into place at the end, so an interrupted run
never leaves a half-written report; an existing ``OUT`` is replaced only if it is an earlier report,
and files a user added to it are kept (:mod:`congealing.report_folder`).
"""
from __future__ import annotations

import html
import json
import shutil
import urllib.parse
from pathlib import Path

import torch

from . import report_folder
from .widgets import to_png


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
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a report folder (layout above). ``atlas`` maps a view name (``"mean"`` first) to a
    ``(C, H, W)`` image; ``extra_images`` maps a column title to ``(N, C, H, W)`` images shown in
    the report beside the aligned ones (e.g. an edit propagated to every image); ``extra_files`` maps
    a file name in the report to a file copied there (e.g. the training checkpoint)."""
    out = report_folder.check_output_folder(out)
    if len(names) != inputs.shape[0] or aligned.shape[0] != inputs.shape[0]:
        raise ValueError(f"{len(names)} names, {inputs.shape[0]} inputs and {aligned.shape[0]} aligned images")
    staging = report_folder.begin(out)
    for filename, source in (extra_files or {}).items():
        shutil.copyfile(source, staging / filename)
    columns = {"input": ("inputs", inputs), "aligned": ("aligned", aligned)}
    for title, images in (extra_images or {}).items():
        columns[title] = (_slug(title), images)
    keys = output_keys(list(names))
    for folder, images in columns.values():
        (staging / folder).mkdir(parents=True)
        for key, image in zip(keys, images):
            (staging / folder / f"{key}.png").write_bytes(to_png(image))
    atlas_files = {}
    for index, (view, image) in enumerate(atlas.items()):
        filename = "atlas.png" if index == 0 else f"atlas_{_slug(view)}.png"
        (staging / filename).write_bytes(to_png(image))
        atlas_files[view] = filename
    mappings = {"names": list(names), "method": method}
    if transforms is not None:
        mappings["transforms"] = transforms.detach().cpu().float()
    if grids is not None:
        mappings["grids"] = grids.detach().cpu().float()
    torch.save(mappings, staging / "mappings.pt")
    outputs = {name: {title: f"{folder}/{key}.png" for title, (folder, _) in columns.items()} for name, key in zip(names, keys)}
    info = {"method": method, "mode": mode, "images": list(names), "outputs": outputs, "atlas": atlas_files, **(summary or {})}
    (staging / "summary.json").write_text(json.dumps(info, indent=2))
    (staging / "index.html").write_text(_html(method, mode, list(names), keys, columns, atlas_files, summary or {}))
    return report_folder.publish(staging, out)


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


def _html(method, mode, names, keys, columns, atlas_files, summary) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title in columns)
    rows = []
    for name, key in zip(names, keys):
        cells = "".join(f'<td><img src="{_url(f"{folder}/{key}.png")}" alt="{html.escape(name)} {html.escape(title)}"></td>' for title, (folder, _) in columns.items())
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    atlases = "".join(f'<figure><img src="{_url(f)}" alt="atlas {html.escape(v)}"><figcaption>{html.escape(v)}</figcaption></figure>' for v, f in atlas_files.items())
    facts = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in summary.items() if not isinstance(v, (list, dict)))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>congeal align: {html.escape(method)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} img{{width:128px;image-rendering:auto}}
figure{{display:inline-block;margin:0 1em 1em 0}} figure img{{width:192px}} td,th{{padding:2px 4px}}</style></head>
<body><h1>Joint alignment: {html.escape(method)}</h1>
<p>{len(names)} images, {html.escape(mode)} mode.</p><ul>{facts}</ul>
<h2>Atlas</h2>{atlases}
<h2>Images</h2><table><tr><th>image</th>{head}</tr>{''.join(rows)}</table></body></html>
"""
