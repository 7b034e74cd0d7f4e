"""The CUB protocol that judges a keypoint transfer, and the keypoints' own best similarities.

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

import torch

from .. import metrics, warps
from .transfers import TransferFn

__all__ = ["CUB_MIRROR", "keypoint_similarities", "threshold_lengths", "transfer_all_pairs", "evaluate_transfer", "pck_per_image"]

#: Left/right permutation of CUB's 15 parts (eyes 6<->10, legs 7<->11, wings 8<->12; 0-based).
CUB_MIRROR = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)


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
        >>> from congealing.evaluation import identity_transfer
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
