"""Entropy congealing (Learned-Miller, TPAMI 2006) and the image funnel that aligns new images with
what it learned (Chapter 2, "Entropy congealing" and "The image funnel").
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from .. import warps
from .configs import AFFINE_DIM, CongealResult, EntropyConfig, Funnel
from .common import _history_start, _record, as_image_stack

__all__ = ["soft_bins", "pixel_stack_entropy", "warp_affine", "congeal_entropy", "funnel_align"]


# ----------------------------------------------------------------------------- entropy congealing


def soft_bins(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Linear soft binning of grey values in ``[0, 1]`` into ``K`` bins.

    Each value splits between its two nearest bin centres ``0, 1/(K-1), ..., 1``; with ``K = 2`` a
    grey value ``v`` is ``v`` parts "on" and ``1 - v`` parts "off" (values outside ``[0, 1]`` are
    clamped). Taught in Chapter 2, "The pixel-stack entropy".

    Args:
        images: greyscale ``(N, 1, H, W)``.
        bins: ``K >= 2``.

    Returns:
        the bin weights ``(N, K, H, W)``, summing to 1 over ``K``.

    Example:
        >>> soft_bins(torch.tensor([[[[0.25]]]]), 2).flatten().tolist()
        [0.75, 0.25]
        >>> soft_bins(torch.tensor([[[[0.25]]]]), 3).flatten().tolist()
        [0.5, 0.5, 0.0]
    """
    if bins == 2:  # the common binary case, without the scatter
        value = images.clamp(0.0, 1.0)
        return torch.cat([1.0 - value, value], dim=1)
    position = images.clamp(0.0, 1.0) * (bins - 1)
    lower = position.floor().clamp(max=bins - 2)
    upper_weight = position - lower
    index = lower.long()
    weights = torch.zeros(images.shape[0], bins, *images.shape[-2:], dtype=images.dtype, device=images.device)
    weights.scatter_(1, index, 1.0 - upper_weight)
    return weights.scatter_add_(1, index + 1, upper_weight)


def pixel_stack_entropy(images: torch.Tensor, bins: int = 2) -> torch.Tensor:
    """Entropy in bits of every pixel stack of a greyscale set.

    A pixel stack is the ``N`` values one pixel takes across the set; its distribution over
    :func:`soft_bins` is the mean of the images' bin weights. Taught in Chapter 2, "The pixel-stack
    entropy"; its sum is entropy congealing's objective.

    Args:
        images: greyscale ``(N, 1, H, W)`` in ``[0, 1]``.
        bins: grey levels ``K``.

    Returns:
        the entropy of every pixel stack ``(H, W)``, in bits.

    Example:
        >>> stack = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1, 1)   # a fair coin at this pixel
        >>> pixel_stack_entropy(stack).item()
        1.0
    """
    p = soft_bins(images, bins).mean(0)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(0)


def warp_affine(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Warp images by the affine transforms of their Lie-algebra parameters.

    ``warp_image(images, exp(params))`` (:mod:`congealing.warps`); Chapter 2, "The algorithm".

    Args:
        images: ``(N, C, H, W)``.
        params: affine algebra parameters ``(N, 6)``.

    Returns:
        the warped images ``(N, C, H, W)``.

    Raises:
        FloatingPointError: ``params`` holds NaN or inf.

    Example:
        >>> image = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(warp_affine(image, torch.zeros(1, 6)), image, atol=1e-6)
        True
    """
    return warps.warp_image(images, warps.exp(params, "affine").to(images.dtype))


def _entropy_costs(weights: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    # Negative log-likelihood of each image under its pixel-stack model: (N,) nats.
    return -(weights * log_probs).flatten(1).sum(1)


def _step_vector(steps: Sequence[float], size: tuple[int, int], dtype, device) -> torch.Tensor:
    H, W = size
    pixel = 2.0 / max(H, W)  # one pixel in normalised units
    s = torch.tensor(steps, dtype=dtype, device=device)
    return torch.cat([s[:2] * pixel, s[2:]])


def _coordinate_descent(images, params, log_probs, steps, bins):
    """One sweep of coordinate descent over the six parameters for every image at once.

    For parameter ``k`` each image tries ``params +/- steps[k] e_k`` and keeps whichever of the three
    values has the lowest cost under ``log_probs`` (``(N or 1, K, H, W)``); ties keep the current
    value. Returns the new parameters ``(N, 6)`` and their costs ``(N,)``.
    """
    warp = lambda p: soft_bins(warp_affine(images, p), bins)  # noqa: E731
    cost = _entropy_costs(warp(params), log_probs)
    for k in range(AFFINE_DIM):
        if steps[k] == 0:
            continue
        offset = torch.zeros_like(params)
        offset[:, k] = steps[k]
        plus = _entropy_costs(warp(params + offset), log_probs)
        minus = _entropy_costs(warp(params - offset), log_probs)
        best = torch.stack([cost, plus, minus], 1).argmin(1)
        params = torch.where((best == 1)[:, None], params + offset, torch.where((best == 2)[:, None], params - offset, params))
        cost = torch.stack([cost, plus, minus], 1).gather(1, best[:, None])[:, 0]
    return params, cost


def congeal_entropy(images, config: EntropyConfig | None = None, progress=None) -> CongealResult:
    """Entropy congealing of a greyscale set (Learned-Miller 2006).

    Each iteration: (1) build every pixel stack's grey-level distribution from the current aligned
    set; (2) for every image, coordinate descent over its six affine parameters against that
    distribution *with the image itself left out* (so an image is not attracted to its own
    imprint, which matters for small sets); (3) subtract the mean parameter vector, the paper's
    re-centring that keeps the set from drifting or shrinking. All images take their step against
    the same stack (a Jacobi sweep), so a new image replays exactly the training images' updates
    (:func:`funnel_align`). Steps shrink when the entropy stalls (:class:`EntropyConfig`). Taught in
    Chapter 2, "The algorithm".

    Args:
        images: greyscale ``(N, 1, H, W)`` in ``[0, 1]`` (or a sequence, see :func:`as_image_stack`).
        config: an :class:`EntropyConfig` (default: ``EntropyConfig.for_mode()``).
        progress: ``progress(done, total)`` after every iteration, or None.

    Returns:
        a :class:`CongealResult` whose ``objective`` history is the total pixel-stack entropy in bits
        (the sum over pixels of :func:`pixel_stack_entropy`) and whose ``funnel`` is set.

    Raises:
        ValueError: ``images`` has more than one channel, ``config.steps`` is not six finite,
            non-negative numbers, or :func:`as_image_stack` refuses the set.

    Example:
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> digits[1] = torch.roll(digits[1], 1, dims=-1)         # one bar a pixel to the right
        >>> result = congeal_entropy(digits, EntropyConfig(iterations=1))
        >>> round(result.history["objective"][0], 2)             # 16 pixels where 1 of 4 differs: 16 H(1/4)
        12.98
        >>> result.aligned.shape, result.funnel.log_probs.shape
        (torch.Size([4, 1, 16, 16]), torch.Size([1, 2, 16, 16]))
    """
    config = config or EntropyConfig.for_mode()
    images = as_image_stack(images)
    if len(config.steps) != AFFINE_DIM or not all(math.isfinite(step) and step >= 0 for step in config.steps):
        raise ValueError(f"EntropyConfig.steps must be {AFFINE_DIM} finite, non-negative numbers, got {config.steps}")
    if images.shape[1] != 1:
        raise ValueError(f"entropy congealing works on greyscale images (N, 1, H, W); got {images.shape[1]} channels (average them first)")
    N, _, H, W = images.shape
    K = config.bins
    steps = _step_vector(config.steps, (H, W), images.dtype, images.device)
    min_steps = steps * config.min_step_fraction
    params = torch.zeros(N, AFFINE_DIM, dtype=images.dtype, device=images.device)
    transforms = warps.exp(params, "affine")
    aligned = images.clone()
    history = _history_start(float(pixel_stack_entropy(aligned, K).sum()), transforms, aligned.mean(0))
    funnel_log_probs, funnel_steps = [], []
    for iteration in range(config.iterations):
        start = time.perf_counter()
        weights = soft_bins(aligned, K)
        totals = weights.sum(0, keepdim=True)
        leave_one_out = torch.log((totals - weights + config.prior) / (N - 1 + K * config.prior))
        funnel_log_probs.append(torch.log((totals[0] + config.prior) / (N + K * config.prior)))
        funnel_steps.append(steps.clone())
        # A Jacobi sweep: every image steps against the same stack, where the paper updates one image
        # after another (Gauss-Seidel). With steps of about a pixel an image's move changes any stack
        # distribution by at most 1/N, so the two agree up to that; the batched form is one grid_sample
        # per candidate for the whole set, and the funnel replays it exactly.
        params, _ = _coordinate_descent(images, params, leave_one_out, steps, K)
        params = params - params.mean(0, keepdim=True)
        transforms = warps.exp(params, "affine")
        aligned = warp_affine(images, params)
        entropy = float(pixel_stack_entropy(aligned, K).sum())
        previous = history["objective"][-1]
        if previous - entropy < config.stall * abs(previous):
            steps = torch.maximum(steps * config.shrink, min_steps)
        _record(history, entropy, time.perf_counter() - start, transforms, aligned.mean(0))
        if progress is not None:
            progress(iteration + 1, config.iterations)
    funnel = Funnel(torch.stack(funnel_log_probs), torch.stack(funnel_steps), K)
    return CongealResult("entropy", transforms, aligned, aligned.mean(0), history, config, funnel)


def funnel_align(funnel: Funnel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align new greyscale images with a learned funnel, each on its own.

    Every image walks down the funnel: at iteration ``t`` it does the same coordinate-descent sweep
    the training images did, against the stored distribution of iteration ``t``. The images do not
    interact, so aligning them together or one at a time gives the same result. Taught in Chapter 2,
    "The image funnel".

    Args:
        funnel: the :class:`Funnel` of a :func:`congeal_entropy` run.
        images: greyscale ``(M, 1, H, W)`` at the funnel's ``(H, W)``.

    Returns:
        ``(transforms (M, 3, 3), aligned (M, 1, H, W))``.

    Raises:
        ValueError: ``images`` is not ``(M, 1, H, W)`` or not the size the funnel was learned on.

    Example:
        >>> digits = torch.zeros(4, 1, 8, 8); digits[:, :, 2:6, 3:5] = 1.0
        >>> funnel = congeal_entropy(digits, EntropyConfig(iterations=1)).funnel
        >>> transforms, aligned = funnel_align(funnel, digits[:1])
        >>> transforms.shape, aligned.shape
        (torch.Size([1, 3, 3]), torch.Size([1, 1, 8, 8]))
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"funnel_align expects greyscale images (M, 1, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != tuple(funnel.log_probs.shape[-2:]):
        raise ValueError(f"the funnel was learned on {tuple(funnel.log_probs.shape[-2:])} images, got {tuple(images.shape[-2:])}")
    params = torch.zeros(images.shape[0], AFFINE_DIM, dtype=images.dtype, device=images.device)
    for log_probs, steps in zip(funnel.log_probs, funnel.steps):
        params, _ = _coordinate_descent(images, params, log_probs[None], steps, funnel.bins)
    return warps.exp(params, "affine"), warp_affine(images, params)
