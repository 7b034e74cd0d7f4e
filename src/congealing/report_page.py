"""What a person reads in a ``congeal align`` report: the page (``index.html``, :func:`page_html`)
and every transform in words (:func:`describe_transforms`, :func:`describe_grids`,
:func:`describe_pose`), which ``summary.json`` also carries. :mod:`congealing.report` writes the
folder, its pictures and numbers, and calls in here.
"""
from __future__ import annotations

import html
import math
import urllib.parse

import torch

from . import warps

__all__ = ["METHOD_TITLES", "page_html", "describe_transforms", "describe_grids", "describe_pose"]


def _url(path: str) -> str:
    """A relative file path as an attribute-safe URL (``#``, ``?``, spaces and quotes encoded)."""
    return html.escape(urllib.parse.quote(path), quote=True)


# ----------------------------------------------------------------------------- transforms in words


def describe_transforms(transforms: torch.Tensor) -> list[dict]:
    """Each transform as numbers and words, for the report's rows and ``summary.json``.

    A transform (input -> aligned, normalised coordinates, ``x`` right, ``y`` down; divided by its
    ``[2, 2]`` entry) is described by its Jacobian at the image centre: mirrored or not, rotation in
    degrees (positive = clockwise on screen), scale (the square root of the area change), stretch (the
    ratio of the singular values), shift of the image centre in fractions of the side (positive =
    right / down) and whether it has perspective. Chapter 7, "Align your own photos", "What came out".

    Args:
        transforms: ``(N, 3, 3)``.

    Returns:
        one dict per transform: ``mirrored``, ``rotation_deg``, ``scale``, ``stretch``, ``shift_x``,
        ``shift_y``, ``perspective`` and ``words`` (the same in a short sentence).

    Example:
        >>> import torch
        >>> from congealing import warps
        >>> from congealing.report_page import describe_transforms
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
    """Each sampling grid as its least-squares affine part, plus how far it departs from it.

    The affine fit (aligned -> input) is inverted and described like :func:`describe_transforms`
    (input -> aligned); ``nonrigid`` is the RMS distance between the grid and that affine map, in
    fractions of the side. Chapter 7, "Align your own photos", "What came out".

    Args:
        grids: ``(N, h, w, 2)``, aligned -> input, normalised coordinates.

    Returns:
        one dict per grid: the fields of :func:`describe_transforms` and ``nonrigid``, with
        ``words`` naming the local warp when ``nonrigid`` is at least 1 %.

    Example:
        >>> from congealing import warps
        >>> from congealing.report_page import describe_grids
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
    """A 3-D camera in words, for the 3-D method's report rows and ``summary.json``.

    Args:
        pose: a dict with ``azimuth_deg``, ``elevation_deg`` and ``fov_deg`` (other keys ignored).

    Returns:
        e.g. ``"seen from azimuth 30°, elevation 12°, field of view 40°"`` (whole degrees).

    Raises:
        KeyError: one of the three angles is missing.

    Example:
        >>> from congealing.report_page import describe_pose
        >>> describe_pose({"azimuth_deg": 30.4, "elevation_deg": 12.0, "fov_deg": 40.0})
        'seen from azimuth 30°, elevation 12°, field of view 40°'
    """
    return f"seen from azimuth {pose['azimuth_deg']:.0f}°, elevation {pose['elevation_deg']:.0f}°, field of view {pose['fov_deg']:.0f}°"


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


def page_html(method, mode, names, keys, columns, thumbnails, atlas_files, verdict_files, verdict, per_image, summary, planar) -> str:
    """The report's ``index.html``: the verdict, one row per image (worst first), the atlas and how
    to use the mappings. Every path is relative to the report folder; the page loads
    ``mappings.js``, ``report.js`` and ``report.css`` from there (no network).

    Args:
        method: the registry name of the method (titled by :data:`METHOD_TITLES`).
        mode: ``"quick"`` or ``"full"``.
        names: the input file names ``(N,)``; keys: their output file stems.
        columns: column title -> ``(folder, images)``; ``"input"`` and ``"aligned"`` always,
            ``"mask"`` and extra columns if present.
        thumbnails: column title -> the folder the page shows (full-size or ``thumbs/``).
        atlas_files: atlas view name -> PNG file; verdict_files: caption -> PNG shown beside the verdict.
        verdict: ``{"headline", "status", "sentences", "warnings", ...}`` (report's verdict).
        per_image: one dict per image (``name``, ``key``, ``mirrored``, scores, ``transform``/``pose``).
        summary: what ``summary.json`` holds (for the run's settings and timings).
        planar: True for the 2-D methods (one shared aligned frame), False for 3-D congealing.

    Returns:
        the HTML text.
    """
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
