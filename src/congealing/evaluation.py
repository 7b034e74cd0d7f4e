"""The CUB keypoint-transfer protocol (Chapters 3-5, 7), as functions of typed arguments.

:func:`evaluate_cub` (``congeal eval --dataset cub``) takes an :class:`EvalRequest` and returns a
JSON-ready record (``congeal eval`` prints its ``"table"`` and writes the rest with ``--json``). The
methods it can evaluate are :data:`CUB_METHODS`: the two baselines and every method whose
:mod:`congealing.registry` entry says how to prepare a class for it (:func:`fit_on_cub`). The
MNIST ground-truth protocol of Chapter 2 is :mod:`congealing.mnist`; the lego benchmarks of
Chapters 6 and 7 are :mod:`congealing.lego`; the readers of the recorded quick-mode sweeps that
Chapters 4 and 5 show are :mod:`congealing.sweeps`.

One protocol for every method
-----------------------------
An aligner is judged by a :data:`TransferFn`: ``transfer(src, tgt, points)`` carries pixel points
``(K, 2)`` of image ``src`` to image ``tgt``. A joint aligner does it through its canonical frame
(image A -> canonical space -> image B): every method's ``fit`` returns a
:class:`congealing.alignment.Alignment`, whose :meth:`~congealing.alignment.Alignment.transfer` is
one (:func:`congealing.alignment.transfer_via_transforms` for a 3x3 transform per image,
:func:`congealing.alignment.transfer_via_grids` for dense sampling grids). Baselines that never
build a canonical frame (:func:`identity_transfer`, :func:`nn_transfer`) implement the same
signature directly.

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

import math
import resource
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import metrics, registry, runtime, warps
from .data import cub_box_masks, load_cub_class
from .errors import UsageError
from .features import Backbone, cosegment, extract_descriptors, load_backbone, pca_project

__all__ = [
    "TransferFn", "CUB_MIRROR", "DEFAULT_CLASSES", "EvalRequest",
    "identity_transfer", "nn_transfer", "descriptor_similarity",
    "descriptor_transfer", "masked_descriptor_transfer", "windowed_descriptor_transfer", "keypoint_similarities",
    "threshold_lengths", "transfer_all_pairs", "evaluate_transfer", "pck_per_image", "evaluate_cub", "merge_cub_records", "peak_memory_mb", "format_cub_table",
    "fit_on_cub", "CUB_METHODS",
]

#: ``transfer(src_index, tgt_index, points)``: ``points`` ``(K, 2)`` pixel ``(x, y)`` in image ``src``
#: -> ``(K, 2)`` predicted pixel ``(x, y)`` in image ``tgt``. A transfer may carry an attribute
#: ``flipped`` (``(N,)`` bool): images its aligner mirrored.
TransferFn = Callable[[int, int, torch.Tensor], torch.Tensor]

#: Left/right permutation of CUB's 15 parts (eyes 6<->10, legs 7<->11, wings 8<->12; 0-based).
CUB_MIRROR = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)

#: Classes evaluated when ``--classes`` is not given.
DEFAULT_CLASSES = (1, 2, 3)


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate: the arguments of :func:`evaluate_cub` and
    :func:`congealing.mnist.evaluate_mnist` (``congeal eval`` builds one from its flags).

    Attributes:
        method: a key of :data:`CUB_METHODS` (CUB) or of :data:`congealing.mnist.MNIST_METHODS` (MNIST).
        classes: class ids (CUB 1-200, default :data:`DEFAULT_CLASSES`; MNIST digits 0-9, default
            all), or None.
        mode: ``"quick"`` or ``"full"`` (None: :func:`congealing.runtime.get_mode`).
        seed: the seed of the method's config (and of the bootstrap).
        device: a name or :class:`torch.device` (None: the best available).
        backbone: a :func:`congealing.features.load_backbone` name (None: its default).
        data: the data folder (None: ``$CONGEAL_DATA``, else the download cache).

    Example:
        >>> EvalRequest("nn", classes=(1,)).mode is None
        True
    """

    method: str
    classes: tuple[int, ...] | None = None
    mode: str | None = None
    seed: int = 0
    device: str | torch.device | None = None
    backbone: str | None = None
    data: str | Path | None = None


# ----------------------------------------------------------------------------- transfers


def identity_transfer(cub, backbone=None, mode=None, seed=0, device=None) -> TransferFn:
    """The do-nothing baseline: a keypoint is predicted at the same pixel in the target (Chapter 3,
    "5. The yardstick: keypoint transfer and PCK").

    Args:
        cub: the class (unused; the signature of every :data:`CUB_METHODS` entry).
        backbone: unused.
        mode: unused.
        seed: unused.
        device: unused.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)``, a copy of ``points``.

    Example:
        >>> identity_transfer(None)(0, 1, torch.tensor([[3.0, 4.0]]))
        tensor([[3., 4.]])
    """
    return lambda src, tgt, points: points.clone()


def nn_transfer(cub, backbone=None, mode=None, seed=0, device=None, grid: int = 64) -> TransferFn:
    """The baseline every paper reports: nearest-neighbour matching of descriptors (Chapter 3, "The
    baseline every paper reports: nearest neighbours").

    For each source keypoint, its descriptor (bilinearly read from the source's ``grid`` x ``grid``
    map) is compared by cosine similarity with every location of the target; the similarity map is
    upsampled bilinearly to the image size and its argmax is the prediction (so predictions are
    not quantised to the descriptor grid): :func:`descriptor_transfer` on
    :func:`congealing.features.extract_descriptors` (cached on disk).

    Args:
        cub: a :class:`congealing.data.CUBSet` (or any set with square ``images`` ``(N, 3, S, S)``).
        backbone: a :class:`congealing.features.Backbone` or a name (None: the default one).
        mode: unused (the signature of every :data:`CUB_METHODS` entry).
        seed: unused.
        device: where to load the backbone if it is not loaded yet.
        grid: the side of the descriptor grid.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` in pixels of ``cub.images``.
    """
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device)
    descriptors = extract_descriptors(cub.images, backbone, grid=grid)
    size = cub.images.shape[-1]
    return descriptor_transfer(descriptors, size)


def descriptor_similarity(descriptors: torch.Tensor, src: int, tgt: int, points: torch.Tensor, size: int) -> torch.Tensor:
    """Cosine similarity of the descriptors at source points with every pixel of the target (Chapter 3,
    "3. Similarity inspector").

    Each query descriptor is read bilinearly from the source's map and renormalised; the
    similarity map is upsampled bilinearly to the image size, so its argmax is not quantised to the
    descriptor grid.

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        src: index of the image the points are in.
        tgt: index of the image to compare with.
        points: ``(K, 2)`` pixel ``(x, y)`` in image ``src``.
        size: the images' side in pixels.

    Returns:
        ``(K, size, size)`` cosine similarities.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
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
    """Nearest-neighbour transfer on unit descriptors: the argmax of :func:`descriptor_similarity` over
    the whole target (Chapter 3, "The baseline every paper reports: nearest neighbours").

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` in image ``tgt``.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> descriptor_transfer(torch.cat([d[:1], d[:1]]), 4)(0, 1, torch.tensor([[1.0, 2.0]]))
        tensor([[1., 2.]])
    """

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        return _argmax_points(descriptor_similarity(descriptors, src, tgt, points, size)).to(points.dtype)

    return transfer


def masked_descriptor_transfer(descriptors: torch.Tensor, size: int, masks: torch.Tensor) -> TransferFn:
    """Nearest-neighbour transfer that searches only inside the target's mask (Chapter 3, Exercises).

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.
        masks: ``(N, 1, m, m)`` (e.g. co-segmentations on the descriptor grid, or boxes), resized to
            the image size (nearest) and thresholded at 0.5; an empty mask restricts nothing.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` inside the target's mask.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> masks = torch.zeros(2, 1, 4, 4); masks[1, 0, :, 2:] = 1  # target: right half only
        >>> bool((masked_descriptor_transfer(d, 4, masks)(0, 1, torch.tensor([[0.0, 0.0], [1.0, 3.0]]))[:, 0] >= 2).all())
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
    prediction: an aligner (``guide``) gives the rough place, descriptors the exact one (Chapter 7,
    Exercises).

    The result carries the guide's ``flipped`` attribute, if any, so mirrored pairs swap parts as
    the guide's do. A keypoint whose window holds no pixel is searched over the whole target.

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.
        guide: a :data:`TransferFn` whose predictions centre the windows.
        radius: the window's radius in pixels.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` in image ``tgt``.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> corner = lambda src, tgt, points: torch.zeros_like(points)  # guide: always the top-left pixel
        >>> out = windowed_descriptor_transfer(d, 8, corner, radius=2)(0, 1, torch.tensor([[5.0, 6.0], [1.0, 7.0]]))
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


def keypoint_similarities(cub, iterations: int = 10) -> torch.Tensor:
    """Per-image similarities ``(N, 3, 3)`` (image -> a common frame) fitted to the CUB keypoints.

    An oracle: the best one can do with one similarity per image, judged by the ground truth (Chapter
    5, "What the loss prefers"). Generalised Procrustes: every image's visible keypoints, in
    normalised coordinates, are fitted (:func:`congealing.warps.fit_similarity`) to a reference
    shape, the first image's at first, then the mean of the fitted shapes (centred and of fixed
    size), ``iterations`` times. Each image is fitted as it is and mirrored (``x -> -x``, left and
    right parts swapped by :data:`CUB_MIRROR`) and keeps the better fit; a mirrored image's
    transform has a negative determinant, as :func:`congealing.alignment.transfer_via_transforms`
    expects. An image sharing fewer than 3 keypoints with the reference keeps the identity.

    Args:
        cub: a :class:`congealing.data.CUBSet` with CUB's 15 parts (``keypoints``, ``visible``, ``images``).
        iterations: rounds of fitting and re-averaging.

    Returns:
        ``(N, 3, 3)`` float32 transforms.
    """
    size = tuple(cub.images.shape[-2:])
    points = warps.pixel_to_normalized(cub.keypoints[..., :2].double(), size)
    visible = (cub.visible > 0).double()
    mirror = torch.tensor(CUB_MIRROR)  # an involution: the part that part k becomes in the mirror
    flipped_points, flipped_visible = points[:, mirror] * torch.tensor([-1.0, 1.0], dtype=torch.float64), visible[:, mirror]
    flip = warps.hflip(True, 1, torch.float64)[0]
    reference, ref_visible = points[0], visible[0]
    transforms = warps.identity(len(points), torch.float64)
    for _ in range(iterations):
        fitted, weights = points.clone(), torch.zeros_like(visible)
        for n in range(len(points)):
            best = None
            for mirrored in (False, True):
                p, v = (flipped_points[n], flipped_visible[n]) if mirrored else (points[n], visible[n])
                w = v * ref_visible
                if w.sum() < 3:
                    continue
                S = warps.fit_similarity(p, reference, w)
                moved = warps.transform_points(S[None], p[None])[0]
                residual = float((w * (moved - reference).pow(2).sum(1)).sum() / w.sum())
                if best is None or residual < best[0]:
                    best = (residual, S @ flip if mirrored else S, moved, v)
            if best is not None:
                transforms[n], fitted[n], weights[n] = best[1:]
        ref_visible = (weights.sum(0) > 0).double()
        reference = (weights[..., None] * fitted).sum(0) / weights.sum(0).clamp_min(1)[:, None]
        reference = (reference - (ref_visible[:, None] * reference).sum(0) / ref_visible.sum()) * ref_visible[:, None]
        reference = reference / reference.norm().clamp_min(1e-12)  # a fixed size: the fit cannot shrink the set
    return transforms.float()


def threshold_lengths(boxes: torch.Tensor) -> torch.Tensor:
    """The PCK length of each target: ``max(h, w)`` of its box (Chapter 3, "5. The yardstick:
    keypoint transfer and PCK").

    Args:
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` in pixels.

    Returns:
        ``(N,)`` lengths in pixels.

    Example:
        >>> threshold_lengths(torch.tensor([[10.0, 20.0, 110.0, 70.0]]))
        tensor([100.])
    """
    return torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def transfer_all_pairs(transfer: TransferFn, cub) -> dict:
    """Run ``transfer`` on every ordered pair of ``cub``'s images, on keypoints visible in both (the
    pairs of the CUB protocol above; Chapter 3, "5. The yardstick: keypoint transfer and PCK").

    If ``transfer.flipped`` says exactly one image of a pair was mirrored, source part ``k`` is
    compared with target part ``CUB_MIRROR[k]``, and visibility is taken after that swap.

    Args:
        transfer: a :data:`TransferFn` (with ``flipped`` ``(N,)`` if the aligner mirrors images).
        cub: a set with ``keypoints`` ``(N, K, 2)`` and ``visible`` ``(N, K)`` (a
            :class:`congealing.data.CUBSet`, or :class:`congealing.lego.KeypointSet`).

    Returns:
        ``pairs`` ``(P, 2)`` long, ``pred`` and ``target`` ``(P, K, 2)`` and ``visible`` ``(P, K)``;
        ``pred`` is 0 where not visible.

    Raises:
        ValueError: a mirrored pair in a set whose parts are not CUB's 15.

    Example:
        >>> from types import SimpleNamespace
        >>> birds = SimpleNamespace(keypoints=torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]), visible=torch.ones(2, 1, dtype=torch.bool))
        >>> out = transfer_all_pairs(identity_transfer(birds), birds)
        >>> out["pairs"].tolist(), out["pred"][0].tolist(), out["target"][0].tolist()
        ([[0, 1], [1, 0]], [[1.0, 2.0]], [[3.0, 4.0]])
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


def _scored_pairs(result: dict, lengths: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, per_pair)`` for :func:`transfer_all_pairs`' ``result``: which keypoints land within
    ``alpha * lengths`` of their target ``(P, K)``, and each pair's PCK over its visible ones ``(P,)``."""
    correct = metrics.correct_keypoints(result["pred"], result["target"], lengths, alpha)
    return correct, metrics.pck_per_pair(correct, result["visible"])


def evaluate_transfer(transfer: TransferFn, cub, alphas=(0.1, 0.05), n_boot: int = 1000, seed: int = 0) -> dict:
    """PCK of ``transfer`` on all ordered pairs of a :class:`congealing.data.CUBSet` (the protocol
    above; Chapter 3, "5. The yardstick: keypoint transfer and PCK").

    Args:
        transfer: a :data:`TransferFn`.
        cub: the class (``images``, ``keypoints``, ``visible``, ``boxes``, ``part_names``).
        alphas: the PCK thresholds, as fractions of the target box's ``max(h, w)``.
        n_boot: bootstrap resamples of the images for the 95 % intervals.
        seed: the bootstrap's seed.

    Returns:
        a JSON-ready dict: for each ``alpha`` (keys ``"0.1"``, ...) under ``"pck"``: ``mean`` (over
        pairs), ``ci95`` (bootstrap over images), ``pooled``; under ``"pck_image"``: the same with
        the papers' image-side threshold; ``per_part`` (pooled, box threshold); ``n_pairs``,
        ``n_keypoints`` (visible in both images, summed over pairs), ``n_images``.
    """
    result = transfer_all_pairs(transfer, cub)
    pairs, visible = result["pairs"], result["visible"]
    box_lengths = threshold_lengths(cub.boxes)[pairs[:, 1]]
    image_lengths = torch.full_like(box_lengths, float(max(cub.images.shape[-2:])))
    out = {"n_images": len(cub), "n_pairs": int(pairs.shape[0]), "n_keypoints": int(visible.sum()), "pck": {}, "pck_image": {}, "per_part": {}}
    for alpha in alphas:
        key = f"{alpha:g}"
        for name, lengths in (("pck", box_lengths), ("pck_image", image_lengths)):
            correct, per_pair = _scored_pairs(result, lengths, alpha)
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


def pck_per_image(transfer: TransferFn, cub, alpha: float = 0.1) -> torch.Tensor:
    """Each image's PCK: the mean per-pair PCK over the ordered pairs it belongs to, as source or
    as target (the protocol of :func:`evaluate_transfer`, box threshold). It shows *which* images
    an aligner fails on (Chapter 5, "Which birds it fails on").

    Args:
        transfer: a :data:`TransferFn`.
        cub: a set with ``keypoints`` ``(N, K, 2)``, ``visible`` ``(N, K)`` and ``boxes`` ``(N, 4)``.
        alpha: the PCK threshold, as a fraction of the target box's ``max(h, w)``.

    Returns:
        ``(N,)`` float in ``[0, 1]``; NaN for an image none of whose pairs has a visible keypoint.

    Example:
        >>> from types import SimpleNamespace
        >>> birds = SimpleNamespace(keypoints=torch.zeros(3, 1, 2), visible=torch.ones(3, 1, dtype=torch.bool),
        ...                         boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1))
        >>> lost = lambda src, tgt, points: points + 5.0 * (2 in (src, tgt))  # wrong whenever image 2 is involved
        >>> pck_per_image(lost, birds).tolist()  # image 0: pairs with 1 right, pairs with 2 wrong
        [0.5, 0.5, 0.0]
    """
    result = transfer_all_pairs(transfer, cub)
    pairs = result["pairs"]
    _, per_pair = _scored_pairs(result, threshold_lengths(cub.boxes)[pairs[:, 1]], alpha)
    images = torch.arange(cub.visible.shape[0])
    member = (pairs[:, :1] == images) | (pairs[:, 1:] == images)  # (P, N): pair p involves image n
    return torch.nanmean(torch.where(member, per_pair[:, None], torch.full_like(per_pair[:, None], math.nan)), dim=0)


def evaluate_cub(request: EvalRequest, on_partial: Callable[[dict], None] | None = None) -> dict:
    """``congeal eval --dataset cub``: PCK of ``request.method`` on each class of ``request.classes``
    (Chapter 3, "The same from the command line"; Chapter 7, "CUB-200-2011").

    Every class is fitted on its own (:data:`CUB_METHODS`) and scored by :func:`evaluate_transfer`
    with ``request.seed``.

    Args:
        request: what to evaluate (:class:`EvalRequest`).
        on_partial: called after each class but the last with the record so far, so finished
            classes survive a later failure; or None.

    Returns:
        the JSON-ready record: the settings, ``classes`` (one :func:`evaluate_transfer` result per
        class, with ``class_id``, ``class_name``, ``seconds`` and ``trainable_parameters``), their
        ``mean``, ``peak_rss_mb`` and a ``"table"`` string (:func:`format_cub_table`).

    Raises:
        UsageError: ``request.method`` is not in :data:`CUB_METHODS`.
    """
    if request.method not in CUB_METHODS:
        raise UsageError(f"congeal eval: unknown method {request.method!r} for cub; available: {', '.join(CUB_METHODS)}")
    classes = tuple(request.classes) if request.classes else DEFAULT_CLASSES
    mode = runtime.get_mode(request.mode)
    device = runtime.get_device(request.device)
    backbone = load_backbone(request.backbone, device)
    fit = CUB_METHODS[request.method]
    rows = []
    for class_id in classes:
        cub = load_cub_class(class_id, split="test", size=256, root=request.data)
        start = time.perf_counter()
        transfer = fit(cub, backbone, mode, request.seed, device)
        result = evaluate_transfer(transfer, cub, seed=request.seed)
        result.update(class_id=class_id, class_name=cub.class_name, seconds=round(time.perf_counter() - start, 2),
                      trainable_parameters=getattr(transfer, "parameters", 0))
        rows.append(result)
        if on_partial is not None and len(rows) < len(classes):
            on_partial(_cub_record(request, rows, backbone, mode, device))
    return _cub_record(request, rows, backbone, mode, device)


def _cub_record(request: EvalRequest, rows: list[dict], backbone, mode: str, device) -> dict:
    """The JSON-ready record of :func:`evaluate_cub` for the classes in ``rows``."""
    out = {
        "dataset": "cub",
        "method": request.method,
        "backbone": backbone.name,
        "backbone_title": backbone.title,
        "mode": mode,
        "device": str(device),
        "seed": request.seed,
        "protocol": "test split, 256 px box crops, all ordered pairs, keypoints visible in both, d <= alpha * max(h, w) of the target box",
        "classes": rows,
        "mean": _cub_mean(rows),
    }
    out["peak_rss_mb"] = peak_memory_mb(device)
    out["table"] = format_cub_table(out)
    return out


def _cub_mean(rows: list[dict]) -> dict:
    """The ``mean`` of a CUB record: each score averaged over the classes in ``rows``."""
    mean = {f"pck@{a}": float(sum(r["pck"][a]["mean"] for r in rows) / len(rows)) for a in ("0.1", "0.05")}
    mean.update({f"pck_image@{a}": float(sum(r["pck_image"][a]["pooled"] for r in rows) / len(rows)) for a in ("0.1", "0.05")})
    return mean


#: The fields of a CUB record that say what was run; records merged by :func:`merge_cub_records` must agree on them.
_CUB_SETTINGS = ("dataset", "method", "backbone", "backbone_title", "mode", "device", "seed", "protocol")


def merge_cub_records(records: list[dict]) -> dict:
    """One :func:`evaluate_cub` record made of several, each of the same run on other classes.

    Chapter 7 ("CUB-200-2011") trains each class of the two learned methods in its own process, so
    that two processes keep both cores busy; this puts their records back together. Every class is
    fitted on its own with the same seed (:func:`evaluate_cub`), so the classes are the same whether
    they ran in one process or in several.

    Args:
        records: JSON records of ``congeal eval --dataset cub`` that agree on the method and every
            setting (backbone, mode, device, seed, protocol) and share no class.

    Returns:
        the record with every class in the order given, their ``mean``, the largest ``peak_rss_mb``
        (each process's own peak; one class is what a process needed) and ``provenance``: the list
        of the records' provenances.

    Raises:
        ValueError: ``records`` is empty, disagrees on a setting, repeats a class or holds an
            unfinished record (``"complete": false``).

    Example:
        >>> row = lambda c, p: {"class_id": c, "pck": {a: {"mean": p} for a in ("0.1", "0.05")},
        ...                     "pck_image": {a: {"pooled": p} for a in ("0.1", "0.05")}}
        >>> part = lambda c, p: {"dataset": "cub", "method": "nn", "seed": 0, "classes": [row(c, p)], "peak_rss_mb": 100.0 * c}
        >>> merged = merge_cub_records([part(1, 0.5), part(2, 0.25)])
        >>> [c["class_id"] for c in merged["classes"]], merged["mean"]["pck@0.1"], merged["peak_rss_mb"]
        ([1, 2], 0.375, 200.0)
    """
    if not records:
        raise ValueError("merge_cub_records needs at least one record")
    first = records[0]
    for record in records:
        if record.get("complete") is False:
            raise ValueError(f"a record of classes {[c['class_id'] for c in record['classes']]} is unfinished: rerun its command")
        differing = [key for key in _CUB_SETTINGS if record.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"records of different runs cannot be merged: they differ in {', '.join(differing)}")
    rows = [row for record in records for row in record["classes"]]
    ids = [row["class_id"] for row in rows]
    if len(set(ids)) < len(ids):
        raise ValueError(f"records to merge repeat a class: {sorted(ids)}")
    out = {key: first[key] for key in _CUB_SETTINGS if key in first}
    out.update(classes=rows, mean=_cub_mean(rows))
    out["peak_rss_mb"] = max(record["peak_rss_mb"] for record in records)
    out["provenance"] = [record.get("provenance") for record in records]
    return out


def peak_memory_mb(device=None) -> float:
    """Peak memory of this process so far, in MB: resident set size on a CPU, allocated memory on a
    CUDA device (whichever is larger). Run one method per process to measure that method; the
    records of ``congeal eval`` carry it (Chapter 7, "Accuracy against time").

    Args:
        device: the device the method ran on (None: the CPU only).

    Returns:
        megabytes, rounded to 0.1.

    Example:
        >>> peak_memory_mb() > 0
        True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if device is not None and torch.device(device).type == "cuda":
        rss = max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return round(rss, 1)


def format_cub_table(results: dict) -> str:
    """A plain-text table of :func:`evaluate_cub`'s record (percentages), which ``congeal eval`` prints.

    Args:
        results: the record (``method``, ``backbone``, ``mode``, ``classes``, ``mean``).

    Returns:
        the table, one line per class, then the mean and a legend.
    """
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


# ----------------------------------------------------------------------------- the methods on CUB


def fit_on_cub(method: str, cub, backbone=None, mode: str | None = None, seed: int = 0, device=None) -> TransferFn:
    """``congeal eval --dataset cub --method NAME``: fit a registered method on one CUB class the way
    its registry entry says (:class:`congealing.registry.CubSetup`), and return its keypoint transfer.

    ``"pca-maps"`` inputs: the class's descriptors on a 64 x 64 grid, co-segmented
    (:func:`congealing.features.cosegment`), projected on their top 3 principal components fitted on
    the foreground (:func:`congealing.features.pca_project`), background set to 0; the transforms
    fitted on them act on normalised coordinates, so they move the class's images. ``"images"``
    inputs: the 256-px crops, with the masks the entry names. The config is
    ``for_mode(mode, seed=seed, **overrides)`` (no seed for a config without one).

    Args:
        method: a registry name whose entry has a ``cub`` setup.
        cub: a :class:`congealing.data.CUBSet` (one class).
        backbone: a :class:`congealing.features.Backbone` or a name (None: the default one).
        mode: ``"quick"`` or ``"full"`` (None: :func:`congealing.runtime.get_mode`).
        seed: the config's seed (and the co-segmentation's).
        device: where to fit (None: the best available).

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` in the class's 256-px frame, with ``flipped``
        and ``parameters`` (:meth:`congealing.alignment.Alignment.transfer`).

    Raises:
        UsageError: ``method`` is not registered or not benchmarked on CUB.
    """
    entry = registry.get(method)
    setup = entry.cub
    if setup is None:
        raise UsageError(f"congeal eval: {method} is not benchmarked on cub; choose one of {', '.join(CUB_METHODS)}")
    if setup.inputs == "pca-maps":
        runtime.seed_everything(seed)  # the randomised PCA below draws from the global generator
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device)
    seeded = {"seed": seed} if "seed" in {f.name for f in fields(entry.config)} else {}
    config = entry.config.for_mode(mode, **seeded, **setup.overrides_for(runtime.get_mode(mode)))
    if setup.inputs == "pca-maps":
        descriptors = extract_descriptors(cub.images, backbone, grid=64)
        masks = cosegment(descriptors, seed=seed)
        maps, _, _ = pca_project(descriptors, 3, masks)
        alignment = entry.fit(maps * masks, config, backbone=backbone, device=device)
        return replace(alignment, size=tuple(cub.images.shape[-2:])).transfer()
    masks = {"boxes": lambda: cub_box_masks(cub), "cosegment": lambda: cosegment(extract_descriptors(cub.images, backbone, grid=64), seed=seed),
             None: lambda: None}[setup.masks]()
    return entry.fit(cub.images, config, masks=masks, backbone=backbone, device=device).transfer()


def _registered_on_cub(name: str) -> Callable[..., TransferFn]:
    """:func:`fit_on_cub` for the method ``name``, with the baselines' signature."""

    def fit(cub, backbone=None, mode: str | None = None, seed: int = 0, device=None) -> TransferFn:
        return fit_on_cub(name, cub, backbone, mode, seed, device)

    fit.__name__ = fit.__qualname__ = f"{name.replace('-', '_')}_on_cub"
    fit.__doc__ = f"``congeal eval --dataset cub --method {name}``: :func:`fit_on_cub` of {name}."
    return fit


#: The registry of ``congeal eval --dataset cub --method NAME``: ``NAME -> fit``, where
#: ``fit(cub, backbone, mode, seed, device) -> TransferFn`` trains on one class and returns its
#: keypoint transfer (with an optional ``parameters`` attribute: trainable parameters). The two
#: baselines, then every registered method with a CUB setup (:func:`fit_on_cub`).
CUB_METHODS: dict[str, Callable[..., TransferFn]] = {
    "identity": identity_transfer,
    "nn": nn_transfer,
    **{name: _registered_on_cub(name) for name in registry.names(on_cub=True)},
}
