"""The yardsticks: PCK of transferred keypoints, bootstrap intervals, and box IoU.

Pure tensor functions; the protocol around them (which pairs, which images) is in
:mod:`congealing.evaluation`.

PCK@alpha
---------
A transferred keypoint is *correct* when it lies within ``alpha * L`` of the target's ground-truth
keypoint, ``L`` being the threshold length of the target (here ``max(h, w)`` of the target's
bounding box). Published codes disagree on the boundary: Neural Congealing counts ``d <= alpha * L``,
SpaceJAM ``d / L < alpha``. This library uses **``<=``** everywhere (:data:`INCLUSIVE`); the two
only differ for keypoints at exactly the threshold distance, which for real-valued predictions is a
measure-zero event, but it matters for predictions on an integer grid and for synthetic tests.

>>> target = torch.zeros(1, 2, 2)
>>> pred = torch.tensor([[[3.0, 4.0], [0.0, 6.0]]])       # distances 5 and 6
>>> pck(pred, target, torch.ones(1, 2, dtype=torch.bool), torch.tensor([50.0]), alpha=0.1)
0.5
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "INCLUSIVE", "correct_keypoints", "pck", "pck_per_pair", "pck_per_part", "pair_bootstrap_ci",
    "box_iou", "mask_to_box",
]

#: PCK counts a keypoint at exactly ``alpha * L`` as correct (``<=``, as Neural Congealing's code).
INCLUSIVE = True


def correct_keypoints(pred: torch.Tensor, target: torch.Tensor, threshold_lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Which predictions are within ``alpha * L`` of their targets: bool ``(P, K)``.

    The distance is Euclidean, in pixels; the boundary counts as correct (``<=``, :data:`INCLUSIVE`).
    Taught in Chapter 3, "5. The yardstick: keypoint transfer and PCK", through
    :func:`congealing.evaluation.evaluate_transfer`.

    Args:
        pred: transferred keypoints ``(P, K, 2)``, pixel ``(x, y)`` (``P`` pairs, ``K`` keypoints).
        target: ground-truth keypoints ``(P, K, 2)``, pixel ``(x, y)``.
        threshold_lengths: one ``L`` per pair ``(P,)`` (the target's), or a single number.
        alpha: the PCK threshold as a fraction of ``L`` (e.g. 0.1).

    Returns:
        ``(P, K)`` bool, true where ``|pred - target| <= alpha * L``.

    Raises:
        ValueError: ``pred`` and ``target`` differ in shape or are not ``(..., 2)``.

    Example:
        >>> correct_keypoints(torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]), torch.zeros(1, 2, 2), torch.tensor([10.0]), 0.1)
        tensor([[ True, False]])
    """
    if pred.shape != target.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred and target must both be (P, K, 2); got {tuple(pred.shape)} and {tuple(target.shape)}")
    lengths = torch.as_tensor(threshold_lengths, dtype=pred.dtype, device=pred.device)
    lengths = lengths.reshape(-1, 1) if lengths.ndim else lengths
    distance = (pred - target).norm(dim=-1)
    threshold = alpha * lengths
    return distance <= threshold if INCLUSIVE else distance < threshold


def pck(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, threshold_lengths: torch.Tensor, alpha: float) -> float:
    """Pooled PCK: correct visible keypoints over visible keypoints, all pairs together.

    The papers' pooling; the book's headline is the mean over pairs (:func:`pck_per_pair`). Taught in
    Chapter 3, "5. The yardstick: keypoint transfer and PCK" (and its second exercise, "Pooled or per
    pair?").

    Args:
        pred: transferred keypoints ``(P, K, 2)``, pixel ``(x, y)``.
        target: ground-truth keypoints ``(P, K, 2)``, pixel ``(x, y)``.
        visible: ``(P, K)`` bool, the keypoints that count (visible in both images).
        threshold_lengths: one ``L`` per pair ``(P,)`` (the target's), or a single number.
        alpha: the PCK threshold as a fraction of ``L``.

    Returns:
        the fraction in ``[0, 1]`` as a float; NaN when no keypoint counts.

    Raises:
        ValueError: ``pred`` and ``target`` differ in shape or are not ``(..., 2)``.

    Example:
        >>> pred = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
        >>> pck(pred, torch.zeros(1, 2, 2), torch.tensor([[True, False]]), torch.tensor([10.0]), 0.1)
        1.0
    """
    correct = correct_keypoints(pred, target, threshold_lengths, alpha)
    visible = visible.bool()
    total = int(visible.sum())
    return float((correct & visible).sum()) / total if total else math.nan


def pck_per_pair(correct: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """PCK of each pair ``(P,)``: correct visible keypoints over visible keypoints, pair by pair.

    Its mean is the book's PCK and its values feed :func:`pair_bootstrap_ci`; used by
    :func:`congealing.evaluation.evaluate_transfer` for Chapter 3, "5. The yardstick: keypoint
    transfer and PCK".

    Args:
        correct: ``(P, K)`` bool, from :func:`correct_keypoints`.
        visible: ``(P, K)`` bool, the keypoints that count.

    Returns:
        ``(P,)`` float in ``[0, 1]``; NaN for pairs with no visible keypoint.

    Example:
        >>> pck_per_pair(torch.tensor([[True, False], [True, True]]), torch.tensor([[True, True], [False, False]]))
        tensor([0.5000,    nan])
    """
    visible = visible.bool()
    counts = visible.sum(dim=1).float()
    hits = (correct.bool() & visible).sum(dim=1).float()
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, math.nan))


def pck_per_part(correct: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """PCK of each keypoint index ``(K,)``, pooled over pairs.

    Used by :func:`congealing.evaluation.evaluate_transfer` for the per-part bar chart of Chapter 3,
    "The baseline every paper reports: nearest neighbours".

    Args:
        correct: ``(P, K)`` bool, from :func:`correct_keypoints`.
        visible: ``(P, K)`` bool, the keypoints that count.

    Returns:
        ``(K,)`` float in ``[0, 1]``; NaN for a part never visible in both images.

    Example:
        >>> pck_per_part(torch.tensor([[True, False], [False, False]]), torch.tensor([[True, True], [True, False]]))
        tensor([0.5000, 0.0000])
    """
    visible = visible.bool()
    counts = visible.sum(dim=0).float()
    hits = (correct.bool() & visible).sum(dim=0).float()
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, math.nan))


def pair_bootstrap_ci(
    values: torch.Tensor, pairs: torch.Tensor, n_images: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-pair ``values`` ``(P,)``, resampling *images*.

    Pairs that share an image are not independent, so resampling pairs would give too narrow an
    interval. Each replicate draws ``n_images`` images with replacement; image ``i`` drawn ``c_i``
    times gives pair ``(i, j)`` the weight ``c_i * c_j``, and the replicate is the weighted mean of
    the values. NaN values (pairs with nothing to score) are skipped, and so are replicates whose
    images form no scored pair. Deterministic for a given ``seed``. Taught in Chapter 3, "5. The
    yardstick: keypoint transfer and PCK"; its intervals are the ``ci95`` of every table from there
    on (through :func:`congealing.evaluation.evaluate_transfer`).

    Args:
        values: per-pair scores ``(P,)``, e.g. from :func:`pck_per_pair`; NaN = not scored.
        pairs: ``(P, 2)`` long, the ``(source, target)`` image indices of each pair.
        n_images: the number of images the pairs index into.
        n_boot: the number of bootstrap replicates; 0 skips the bootstrap.
        seed: seed of the CPU generator that draws the images.
        level: the interval's coverage, e.g. 0.95.

    Returns:
        ``(low, high)`` floats; ``(nan, nan)`` when ``n_boot == 0`` or no value is scored.

    Raises:
        ValueError: ``values`` is not ``(P,)`` or ``pairs`` not ``(P, 2)``.

    Example:
        >>> pairs = torch.tensor([[0, 1], [1, 0], [0, 2], [2, 0], [1, 2], [2, 1]])
        >>> pair_bootstrap_ci(torch.ones(6), pairs, 3)
        (1.0, 1.0)
    """
    if values.ndim != 1 or pairs.shape != (values.shape[0], 2):
        raise ValueError(f"values must be (P,) and pairs (P, 2); got {tuple(values.shape)} and {tuple(pairs.shape)}")
    keep = ~torch.isnan(values)
    values, pairs = values[keep].double().cpu(), pairs[keep].cpu()  # the draws come from a CPU generator
    if values.numel() == 0 or n_boot == 0:
        return math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n_images, (n_boot, n_images), generator=generator)
    counts = torch.zeros(n_boot, n_images, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    weights = counts[:, pairs[:, 0]] * counts[:, pairs[:, 1]]  # (n_boot, P)
    total = weights.sum(dim=1)
    means = (weights @ values) / total.clamp(min=1e-12)
    means = means[total > 0]  # a replicate whose images form no scored pair says nothing
    low, high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return low, high


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching boxes ``(N, 4)`` ``(x0, y0, x1, y1)`` (continuous coordinates): ``(N,)``.

    Box ``n`` of ``a`` is compared with box ``n`` of ``b`` (not all pairs). Used in Chapter 3, "4.
    Saliency and co-segmentation masks", to score masks against the ground-truth boxes.

    Args:
        a: boxes ``(N, 4)``, ``(x0, y0, x1, y1)``.
        b: boxes ``(N, 4)``, same convention.

    Returns:
        ``(N,)`` IoU in ``[0, 1]``; 0 where the union is empty.

    Raises:
        ValueError: ``a`` and ``b`` differ in shape or are not ``(N, 4)``.

    Example:
        >>> box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
        tensor([0.3333])
    """
    if a.shape != b.shape or a.shape[-1] != 4:
        raise ValueError(f"boxes must both be (N, 4); got {tuple(a.shape)} and {tuple(b.shape)}")
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = width * height
    area = lambda box: (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def mask_to_box(masks: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The bounding box ``(N, 4)`` of each mask ``(N, 1, h, w)`` (> 0.5), in pixels of a ``size`` image.

    Boxes follow the pixel-centre convention of :mod:`congealing.warps`: a mask cell covering
    image pixels ``a .. b`` gives ``x0 = a``, ``x1 = b``. With ``size`` (default ``w``) a coarse mask
    is measured in the pixels of the image it was computed from. Used in Chapter 3, "4. Saliency and
    co-segmentation masks".

    Args:
        masks: masks ``(N, 1, h, w)``; a cell is on where its value is above 0.5.
        size: the width of the image the masks cover (default ``w``); the scale is ``size / w``.

    Returns:
        boxes ``(N, 4)`` ``(x0, y0, x1, y1)`` float; an empty mask gives a zero box.

    Example:
        >>> m = torch.zeros(1, 1, 4, 4); m[0, 0, 1:3, 2] = 1
        >>> mask_to_box(m, size=8)
        tensor([[4., 2., 5., 5.]])
    """
    N, _, h, w = masks.shape
    scale = (size or w) / w
    on = masks[:, 0] > 0.5
    rows, cols = on.any(dim=2), on.any(dim=1)  # (N, h), (N, w)
    index_h = torch.arange(h, dtype=torch.float32, device=masks.device)
    index_w = torch.arange(w, dtype=torch.float32, device=masks.device)
    big = float(max(h, w))
    x0 = torch.where(cols, index_w, big).amin(dim=1)
    x1 = torch.where(cols, index_w, -1.0).amax(dim=1)
    y0 = torch.where(rows, index_h, big).amin(dim=1)
    y1 = torch.where(rows, index_h, -1.0).amax(dim=1)
    boxes = torch.stack([x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1], dim=1)
    return torch.where(on.flatten(1).any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
