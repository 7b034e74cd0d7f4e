"""Keypoint transfer through any aligner, and the CUB PCK protocol every chapter reports.

One protocol for every method
-----------------------------
An aligner is judged by a :data:`TransferFn`: ``transfer(src, tgt, points)`` carries pixel points
``(K, 2)`` of image ``src`` to image ``tgt``. A joint aligner does it through its canonical frame
(image A -> canonical space -> image B): :func:`transfer_via_transforms` for methods that give a
3x3 transform per image (classical congealing, SpaceJAM), :func:`transfer_via_grids` for dense
sampling grids (Neural Congealing, the 3D chapter). Baselines that never build a canonical frame
(:func:`identity_transfer`, :func:`nn_transfer`) implement the same signature directly.

The CUB protocol (:func:`evaluate_transfer`)
--------------------------------------------
* Images: one CUB class's test split, cropped around the padded, squared box and resized to 256
  (:func:`congealing.data.load_cub_class`).
* Pairs: all ordered pairs ``(i, j)``, ``i != j``, as both official codes do.
* Keypoints: those visible in both images.
* Correct: within ``alpha * max(h, w)`` of the *target's bounding box*, ``<=``
  (:mod:`congealing.metrics`). The published CUB codes use the image side (256 px) instead; on
  these crops the box is ~10 % smaller, so their threshold is ~10 % looser. Both are reported:
  ``pck`` (box threshold, this book's headline) and ``pck_image`` (``alpha * 256``, comparable
  with the papers' CUB tables).
* Mirrors: if an aligner flips exactly one of the two images, left and right parts swap names
  (``CUB_MIRROR``), as in both official codes; visibility is taken after the swap.
* Reported: the mean of per-pair PCK (each pair weighs the same) with an image-resampling
  bootstrap 95 % interval, the pooled PCK (every keypoint weighs the same, the papers' number),
  PCK per part, and the numbers of pairs and keypoints.
"""
from __future__ import annotations

import importlib
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from . import metrics, warps
from .errors import UsageError

#: ``transfer(src_index, tgt_index, points)``: ``points`` ``(K, 2)`` pixel ``(x, y)`` in image ``src``
#: -> ``(K, 2)`` predicted pixel ``(x, y)`` in image ``tgt``. A transfer may carry an attribute
#: ``flipped`` (``(N,)`` bool): images its aligner mirrored.
TransferFn = Callable[[int, int, torch.Tensor], torch.Tensor]

#: Left/right permutation of CUB's 15 parts (eyes 6<->10, legs 7<->11, wings 8<->12; 0-based).
CUB_MIRROR = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)

#: ``congeal eval --method NAME`` -> ``"module:function"``, where
#: ``function(cub, backbone, mode, seed, device) -> TransferFn``. Modules are imported only when used.
ALIGNERS: dict[str, str] = {
    "identity": "congealing.eval:identity_transfer",
    "nn": "congealing.eval:nn_transfer",
    "lsq": "congealing.classical:fit_transfer_lsq",
    "ic-lsq": "congealing.classical:fit_transfer",
    "neural": "congealing.neural:fit_transfer",
    "spacejam": "congealing.spacejam:fit_transfer",
}

#: Classes evaluated when ``--classes`` is not given.
DEFAULT_CLASSES = (1, 2, 3)


# ----------------------------------------------------------------------------- transfers


def transfer_via_transforms(transforms: torch.Tensor, size: int) -> TransferFn:
    """Transfer through a canonical frame given by transforms ``(N, 3, 3)`` (input -> aligned).

    Closed form: ``p_tgt = T_tgt^-1 (T_src p_src)`` in normalised coordinates of ``size`` x ``size``
    images. Transforms with a negative determinant are mirrors; the returned function's
    ``flipped`` attribute says which images they are.

    >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.25, 0.0]]), "translation")  # image 1 is shifted by 1/8 of its width
    >>> transfer_via_transforms(T, 16)(0, 1, torch.tensor([[8.0, 8.0]]))
    tensor([[6., 8.]])
    """
    if transforms.ndim != 3 or transforms.shape[1:] != (3, 3):
        raise ValueError(f"transforms must be (N, 3, 3), got {tuple(transforms.shape)}")
    transforms = transforms.detach().cpu().double()
    inverses = warps.invert(transforms)

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        normalised = warps.pixel_to_normalized(points.double()[None], (size, size))
        canonical = warps.transform_points(transforms[src : src + 1], normalised)
        mapped = warps.transform_points(inverses[tgt : tgt + 1], canonical)
        return warps.normalized_to_pixel(mapped, (size, size))[0].to(points.dtype)

    transfer.flipped = torch.linalg.det(transforms[:, :2, :2]) < 0
    return transfer


def transfer_via_grids(grids: torch.Tensor, size: int, flipped: torch.Tensor | None = None) -> TransferFn:
    """Transfer through dense sampling grids ``(N, h, w, 2)`` (atlas -> image, the warps.py convention).

    A source point goes to the atlas by the nearest-neighbour inverse of its grid
    (:func:`congealing.warps.invert_grid_points`, so it lands on an atlas pixel centre), and from the
    atlas to the target by sampling the target's grid (:func:`congealing.warps.grid_points`).
    ``flipped`` ``(N,)`` marks images the aligner mirrored (if its grids include a flip).

    >>> grid = warps.identity_grid((8, 8), 2)
    >>> transfer_via_grids(grid, 8)(0, 1, torch.tensor([[2.0, 5.0]]))
    tensor([[2., 5.]])
    """
    if grids.ndim != 4 or grids.shape[-1] != 2:
        raise ValueError(f"grids must be (N, h, w, 2), got {tuple(grids.shape)}")
    grids = grids.detach().cpu().float()

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        normalised = warps.pixel_to_normalized(points.float()[None], (size, size))
        atlas = warps.invert_grid_points(normalised, grids[src : src + 1])
        mapped = warps.grid_points(atlas, grids[tgt : tgt + 1])
        return warps.normalized_to_pixel(mapped, (size, size))[0].to(points.dtype)

    transfer.flipped = torch.zeros(grids.shape[0], dtype=torch.bool) if flipped is None else flipped.bool().cpu()
    return transfer


def identity_transfer(cub, backbone=None, mode=None, seed=0, device=None) -> TransferFn:
    """The do-nothing baseline: a keypoint is predicted at the same pixel in the target."""
    return lambda src, tgt, points: points.clone()


def nn_transfer(cub, backbone=None, mode=None, seed=0, device=None, grid: int = 64) -> TransferFn:
    """The baseline every paper reports: nearest-neighbour matching of descriptors.

    For each source keypoint, its descriptor (bilinearly read from the source's ``grid`` x ``grid``
    map) is compared by cosine similarity with every location of the target; the similarity map is
    upsampled bilinearly to the image size and its argmax is the prediction (so predictions are
    not quantised to the descriptor grid). Descriptors come from
    :func:`congealing.features.extract_descriptors` (cached on disk).
    """
    from .features import Backbone, extract_descriptors, load_backbone

    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device)
    descriptors = extract_descriptors(cub.images, backbone, grid=grid)
    size = cub.images.shape[-1]
    return descriptor_transfer(descriptors, size)


def descriptor_similarity(descriptors: torch.Tensor, src: int, tgt: int, points: torch.Tensor, size: int) -> torch.Tensor:
    """Cosine similarity ``(K, size, size)`` of the descriptors at pixel points ``(K, 2)`` of image
    ``src`` with every pixel of image ``tgt``, for unit descriptors ``(N, D, h, w)`` of ``size`` x
    ``size`` images.

    Each query descriptor is read bilinearly from the source's map and renormalised; the
    similarity map is upsampled bilinearly to the image size, so its argmax is not quantised to the
    descriptor grid.

    >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4), dim=1)
    >>> descriptor_similarity(d, 0, 1, torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 4).shape
    torch.Size([2, 4, 4])
    """
    N, D, h, w = descriptors.shape
    normalised = warps.pixel_to_normalized(points.float()[None], (size, size))  # (1, K, 2)
    query = F.grid_sample(descriptors[src : src + 1], normalised[:, :, None], mode="bilinear", align_corners=False)
    query = F.normalize(query[0, :, :, 0].T, dim=1)  # (K, D)
    similarity = (query @ descriptors[tgt].reshape(D, h * w)).reshape(1, -1, h, w)
    if (h, w) != (size, size):
        similarity = F.interpolate(similarity, size=(size, size), mode="bilinear", align_corners=False)
    return similarity[0]


def _argmax_points(similarity: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel ``(x, y)`` ``(K, 2)`` of the largest similarity ``(K, S, S)`` per keypoint, searched only
    where ``allowed`` ``(K, S, S)`` is True (everywhere for a keypoint with nothing allowed)."""
    size = similarity.shape[-1]
    if allowed is not None:
        allowed = allowed | ~allowed.flatten(1).any(dim=1)[:, None, None]
        similarity = similarity.masked_fill(~allowed, -float("inf"))
    best = similarity.flatten(1).argmax(dim=1)
    return torch.stack([best % size, best // size], dim=1)


def descriptor_transfer(descriptors: torch.Tensor, size: int) -> TransferFn:
    """Nearest-neighbour transfer on unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images:
    the argmax of :func:`descriptor_similarity` over the whole target.

    >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4), dim=1)
    >>> descriptor_transfer(torch.cat([d[:1], d[:1]]), 4)(0, 1, torch.tensor([[1.0, 2.0]]))
    tensor([[1., 2.]])
    """

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        return _argmax_points(descriptor_similarity(descriptors, src, tgt, points, size)).to(points.dtype)

    return transfer


def masked_descriptor_transfer(descriptors: torch.Tensor, size: int, masks: torch.Tensor) -> TransferFn:
    """Nearest-neighbour transfer that searches only inside the target's mask.

    ``masks`` ``(N, 1, m, m)`` (e.g. co-segmentations on the descriptor grid, or boxes) are resized
    to the image size (nearest) and thresholded at 0.5; an empty mask restricts nothing.

    >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4), dim=1)
    >>> masks = torch.zeros(2, 1, 4, 4); masks[1, 0, :, 2:] = 1  # target: right half only
    >>> bool((masked_descriptor_transfer(d, 4, masks)(0, 1, torch.rand(5, 2) * 3)[:, 0] >= 2).all())
    True
    """
    inside = F.interpolate(masks.float(), size=(size, size), mode="nearest")[:, 0] > 0.5  # (N, S, S)

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        similarity = descriptor_similarity(descriptors, src, tgt, points, size)
        return _argmax_points(similarity, inside[tgt].expand_as(similarity)).to(points.dtype)

    return transfer


def windowed_descriptor_transfer(descriptors: torch.Tensor, size: int, guide: TransferFn, radius: float) -> TransferFn:
    """Nearest-neighbour transfer that searches only within ``radius`` pixels of another transfer's
    prediction: an aligner (``guide``) gives the rough place, descriptors the exact one.

    The result carries the guide's ``flipped`` attribute, if any, so mirrored pairs swap parts as
    the guide's do. A keypoint whose window holds no pixel is searched over the whole target.

    >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 8, 8), dim=1)
    >>> corner = lambda src, tgt, points: torch.zeros_like(points)  # guide: always the top-left pixel
    >>> out = windowed_descriptor_transfer(d, 8, corner, radius=2)(0, 1, torch.rand(4, 2) * 7)
    >>> bool((out.norm(dim=1) <= 2).all())
    True
    """
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        guess = guide(src, tgt, points).float()
        near = (xs[None] - guess[:, 0, None, None]) ** 2 + (ys[None] - guess[:, 1, None, None]) ** 2 <= radius**2
        return _argmax_points(descriptor_similarity(descriptors, src, tgt, points, size), near).to(points.dtype)

    if hasattr(guide, "flipped"):
        transfer.flipped = guide.flipped
    return transfer


# ----------------------------------------------------------------------------- the protocol


def threshold_lengths(boxes: torch.Tensor) -> torch.Tensor:
    """``max(h, w)`` of boxes ``(N, 4)`` ``(x0, y0, x1, y1)``: ``(N,)``, the PCK length of each target.

    >>> threshold_lengths(torch.tensor([[10.0, 20.0, 110.0, 70.0]]))
    tensor([100.])
    """
    return torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def transfer_all_pairs(transfer: TransferFn, cub) -> dict:
    """Run ``transfer`` on every ordered pair of ``cub``'s images, on keypoints visible in both.

    Returns ``pairs`` ``(P, 2)`` long, ``pred`` and ``target`` ``(P, K, 2)`` and ``visible``
    ``(P, K)`` (after the mirror relabelling of flipped pairs); ``pred`` is 0 where not visible.
    """
    N, K = cub.visible.shape
    flipped = getattr(transfer, "flipped", None)
    mirror = torch.tensor(CUB_MIRROR) if K == len(CUB_MIRROR) else None
    pairs, preds, targets, visibles = [], [], [], []
    for src in range(N):
        for tgt in range(N):
            if src == tgt:
                continue
            order = torch.arange(K)
            if flipped is not None and bool(flipped[src]) != bool(flipped[tgt]):
                if mirror is None:
                    raise ValueError("a mirrored pair needs a left/right permutation of the parts (CUB_MIRROR has 15)")
                order = mirror  # source part k is compared with target part mirror[k]
            target = cub.keypoints[tgt][order]
            visible = cub.visible[src] & cub.visible[tgt][order]
            pred = torch.zeros(K, 2)
            if visible.any():
                pred[visible] = transfer(src, tgt, cub.keypoints[src][visible]).float()
            pairs.append((src, tgt))
            preds.append(pred)
            targets.append(target)
            visibles.append(visible)
    return {"pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), "pred": torch.stack(preds), "target": torch.stack(targets), "visible": torch.stack(visibles)}


def evaluate_transfer(transfer: TransferFn, cub, alphas=(0.1, 0.05), n_boot: int = 1000, seed: int = 0) -> dict:
    """PCK of ``transfer`` on all ordered pairs of a :class:`congealing.data.CUBSet` (protocol above).

    Returns a JSON-ready dict: for each ``alpha`` (keys ``"0.1"``, ...) under ``"pck"``:
    ``mean`` (over pairs), ``ci95`` (bootstrap over images), ``pooled``; under ``"pck_image"``:
    the same with the papers' image-side threshold; ``per_part`` (pooled, box threshold);
    ``n_pairs``, ``n_keypoints`` (visible in both images, summed over pairs), ``n_images``.
    """
    result = transfer_all_pairs(transfer, cub)
    pairs, visible = result["pairs"], result["visible"]
    box_lengths = threshold_lengths(cub.boxes)[pairs[:, 1]]
    image_lengths = torch.full_like(box_lengths, float(max(cub.images.shape[-2:])))
    out = {"n_images": len(cub), "n_pairs": int(pairs.shape[0]), "n_keypoints": int(visible.sum()), "pck": {}, "pck_image": {}, "per_part": {}}
    for alpha in alphas:
        key = f"{alpha:g}"
        for name, lengths in (("pck", box_lengths), ("pck_image", image_lengths)):
            correct = metrics.correct_keypoints(result["pred"], result["target"], lengths, alpha)
            per_pair = metrics.pck_per_pair(correct, visible)
            low, high = metrics.pair_bootstrap_ci(per_pair, pairs, len(cub), n_boot=n_boot, seed=seed)
            out[name][key] = {
                "mean": float(torch.nanmean(per_pair)),
                "ci95": [low, high],
                "pooled": metrics.pck(result["pred"], result["target"], visible, lengths, alpha),
            }
            if name == "pck":
                parts = metrics.pck_per_part(correct, visible)
                out["per_part"][key] = {part: (None if math.isnan(v) else float(v)) for part, v in zip(cub.part_names, parts.tolist())}
    return out


def _resolve(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def evaluate_cub(args, on_partial: Callable[[dict], None] | None = None) -> dict:
    """``congeal eval --dataset cub``: PCK of ``args.method`` on each class in ``args.classes``.

    ``args`` needs ``classes`` (comma-separated ids, default 1,2,3), ``method`` (a key of
    :data:`ALIGNERS`), ``mode``, ``seed``, ``device`` and ``backbone``. Returns the JSON-ready
    results (per class and their mean) plus a ``"table"`` string. ``on_partial(results)`` is called
    after each class but the last with the results so far, so finished classes survive a later failure.
    """
    from . import runtime
    from .data import load_cub_class
    from .features import load_backbone

    if args.method not in ALIGNERS:
        raise UsageError(f"congeal eval: unknown method {args.method!r} for cub; available: {', '.join(ALIGNERS)}")
    classes = DEFAULT_CLASSES if not args.classes else tuple(int(c) for c in str(args.classes).split(","))
    mode = runtime.get_mode(getattr(args, "mode", None))
    device = runtime.get_device(getattr(args, "device", None))
    backbone = load_backbone(getattr(args, "backbone", None), device)
    fit = _resolve(ALIGNERS[args.method])
    rows = []
    for class_id in classes:
        cub = load_cub_class(class_id, split="test", size=256)
        start = time.perf_counter()
        transfer = fit(cub, backbone, mode, args.seed, device)
        result = evaluate_transfer(transfer, cub, seed=args.seed)
        result.update(class_id=class_id, class_name=cub.class_name, seconds=round(time.perf_counter() - start, 2),
                      trainable_parameters=getattr(transfer, "parameters", 0))
        rows.append(result)
        if on_partial is not None and len(rows) < len(classes):
            on_partial(_cub_record(args, rows, backbone, mode, device))
    return _cub_record(args, rows, backbone, mode, device)


def _cub_record(args, rows: list[dict], backbone, mode: str, device) -> dict:
    """The JSON-ready record of :func:`evaluate_cub` for the classes in ``rows``."""
    mean = {f"pck@{a}": float(sum(r["pck"][a]["mean"] for r in rows) / len(rows)) for a in ("0.1", "0.05")}
    mean.update({f"pck_image@{a}": float(sum(r["pck_image"][a]["pooled"] for r in rows) / len(rows)) for a in ("0.1", "0.05")})
    out = {
        "dataset": "cub",
        "method": args.method,
        "backbone": backbone.name,
        "backbone_title": backbone.title,
        "mode": mode,
        "device": str(device),
        "seed": args.seed,
        "protocol": "test split, 256 px box crops, all ordered pairs, keypoints visible in both, d <= alpha * max(h, w) of the target box",
        "classes": rows,
        "mean": mean,
    }
    out["peak_rss_mb"] = peak_memory_mb(device)
    out["table"] = format_table(out)
    return out


def peak_memory_mb(device=None) -> float:
    """Peak memory of this process so far, in MB: resident set size on a CPU, allocated memory on
    a CUDA device (whichever is larger). Run one method per process to measure that method."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if device is not None and torch.device(device).type == "cuda":
        rss = max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return round(rss, 1)


def format_table(results: dict) -> str:
    """A plain-text table of :func:`evaluate_cub`'s results (percentages)."""
    head = f"{'class':<32} {'PCK@0.1':>16} {'PCK@0.05':>16} {'img@0.1':>8} {'pairs':>6} {'kps':>6} {'s':>7}"
    lines = [f"CUB PCK, method {results['method']}, backbone {results['backbone']}, {results['mode']} mode", head]
    for r in results["classes"]:
        cells = []
        for a in ("0.1", "0.05"):
            low, high = r["pck"][a]["ci95"]
            cells.append(f"{100 * r['pck'][a]['mean']:5.1f} [{100 * low:4.1f},{100 * high:4.1f}]")
        name = f"{r['class_id']:03d} {r['class_name']}"[:32]
        lines.append(f"{name:<32} {cells[0]:>16} {cells[1]:>16} {100 * r['pck_image']['0.1']['pooled']:8.1f} {r['n_pairs']:>6} {r['n_keypoints']:>6} {r['seconds']:>7.1f}")
    m = results["mean"]
    lines.append(f"{'mean':<32} {100 * m['pck@0.1']:>16.1f} {100 * m['pck@0.05']:>16.1f} {100 * m['pck_image@0.1']:8.1f}")
    lines.append("PCK: mean over pairs [bootstrap 95% CI], threshold alpha*max(h,w) of the target box; img: pooled, alpha*256 (the papers' CUB threshold)")
    return "\n".join(lines)

