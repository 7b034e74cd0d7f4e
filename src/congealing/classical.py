"""Classical congealing: joint alignment of a set of images with no network and no labels.

Three methods, one call signature (a stack ``(N, C, H, W)`` in, a :class:`CongealResult` out):

* :func:`congeal_entropy`: Learned-Miller's entropy congealing ("Data driven image models through
  continuous joint alignment", TPAMI 2006). Coordinate descent over each image's affine parameters
  to lower the summed entropy of the *pixel stacks* (the values one pixel takes across the set).
* :func:`congeal_lsq`: least-squares congealing (Cox, Sridharan, Lucey, Cohn, CVPR 2008):
  Gauss-Newton on the sum of squared differences of every image to the others.
* :func:`congeal_ic_lsq`: the inverse-compositional form (same authors, ICCV 2009): the Jacobian
  and per-pixel Hessian terms come from the one shared mean image, so they are computed once per
  iteration for the whole set instead of once per image.

The sequence of pixel-stack distributions learned by entropy congealing is an *image funnel*
(:class:`Funnel`, :func:`funnel_align`) that aligns new images one at a time, with no set around.

Conventions follow :mod:`congealing.warps`: transforms ``(N, 3, 3)`` map each input image to the
common (aligned) frame, normalised coordinates, ``aligned = warp_image(images, transforms)``. The
six affine generators of :func:`congealing.warps.lie_basis` are the parameters (x/y translation,
rotation, log-scale, log-aspect, shear). The paper uses seven (two translations, rotation, two
log-scales, two shears), one more than the affine group has; these six span the same transforms.

All per-image updates are batched over the whole set (one ``grid_sample`` call per candidate warp),
so the cost of an iteration grows linearly in ``N``.

>>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
>>> result = congeal_lsq(digits, LSQConfig(iterations=2))
>>> result.aligned.shape, result.transforms.shape, len(result.history["objective"])
(torch.Size([4, 1, 16, 16]), torch.Size([4, 3, 3]), 3)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from . import runtime, warps
from .alignment import Alignment
from .losses import check_finite

__all__ = [
    "AFFINE_DIM", "METHOD_NAMES", "EntropyConfig", "LSQConfig", "ICLSQConfig", "CONFIGS",
    "CongealResult", "Funnel", "as_image_stack", "affine_generators", "recentre",
    "generator_fields", "image_gradient", "gaussian_blur", "steepest_descent_images", "soft_bins",
    "pixel_stack_entropy", "warp_affine", "congeal_entropy", "funnel_align", "congeal_lsq",
    "congeal_ic_lsq", "congeal", "method_of", "fit",
]

#: Number of affine parameters (the first six generators of :func:`congealing.warps.lie_basis`).
AFFINE_DIM = warps.GROUP_DIMS["affine"]
METHOD_NAMES = ("entropy", "lsq", "ic-lsq")


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class EntropyConfig(runtime.ModeConfig):
    """Entropy congealing settings (Learned-Miller 2006).

    ``steps`` are the coordinate-descent step sizes of the six affine parameters: translation in
    *pixels* (converted to normalised units per image size), rotation in radians, log-scale,
    log-aspect and shear as plain numbers. Each iteration tries ``+step`` and ``-step`` for every
    parameter of every image and keeps the best of the three, as in the paper. The step values are
    ours (about one pixel of motion at the digit's edge), not the paper's. ``shrink`` multiplies
    all steps whenever an iteration lowers the total entropy by less than ``stall`` (relative),
    down to ``min_step_fraction`` of the start, so the last iterations refine instead of
    oscillating between two neighbours.
    ``bins`` is the number of grey levels of the pixel stack: 2 is the paper's binary setting
    (a grey value ``v`` counts as ``v`` ones and ``1 - v`` zeros); natural greyscale images want
    more. ``prior`` is the pseudo-count added to every bin so no probability is zero.

    Quick mode: 40 iterations instead of 100; the set converges in about that many on MNIST.
    """

    QUICK: ClassVar[dict] = {"iterations": 40}
    iterations: int = 100
    steps: tuple = (1.0, 1.0, 0.04, 0.03, 0.03, 0.03)
    shrink: float = 0.5
    stall: float = 1e-3
    min_step_fraction: float = 0.05
    bins: int = 2
    prior: float = 1.0


@dataclass(frozen=True)
class LSQConfig(runtime.ModeConfig):
    """Least-squares congealing settings (Cox et al. 2008).

    ``damping`` is the Levenberg term added to each image's Gauss-Newton Hessian, relative to its
    trace, so blank images (zero Hessian) stay where they are instead of producing NaN.
    ``max_step`` bounds each update's parameter norm: one Gauss-Newton step far outside its basin
    would otherwise throw a digit out of the frame. ``blur`` (pixels, Gaussian sigma) smooths the
    images that are fitted (residuals and Jacobians; the returned aligned set is not blurred); 0 is
    the paper's setting.

    Quick mode: 30 iterations instead of 60.
    """

    QUICK: ClassVar[dict] = {"iterations": 30}
    iterations: int = 60
    damping: float = 1e-3
    max_step: float = 0.1
    blur: float = 0.0


@dataclass(frozen=True)
class ICLSQConfig(LSQConfig):
    """Inverse-compositional least-squares congealing settings (Cox et al. 2009).

    As :class:`LSQConfig`; additionally pixels that an image's warp reads from *outside* that image
    are left out of its residual (``mask_outside``), which is what keeps a digit pushed half out of
    the frame from dragging the fit toward the empty border.
    """

    mask_outside: bool = True


CONFIGS = {"entropy": EntropyConfig, "lsq": LSQConfig, "ic-lsq": ICLSQConfig}


# ----------------------------------------------------------------------------- results


@dataclass
class CongealResult:
    """What every method returns.

    ``transforms`` ``(N, 3, 3)`` input -> aligned frame; ``aligned`` ``(N, C, H, W)``; ``atlas``
    ``(C, H, W)`` the mean aligned image. ``history`` holds one entry per iteration *plus the
    start*: ``objective`` (the method's loss: total pixel-stack entropy in bits, or mean squared
    difference to the others), ``seconds`` (wall time of that iteration, 0 for the start),
    ``atlas`` (list of ``(C, H, W)`` means) and ``transforms`` (list of ``(N, 3, 3)``), so any
    iteration's aligned stack can be rebuilt. ``funnel`` is set by entropy congealing.
    """

    method: str
    transforms: torch.Tensor
    aligned: torch.Tensor
    atlas: torch.Tensor
    history: dict
    config: object
    funnel: "Funnel | None" = None

    @property
    def iterations(self) -> int:
        return len(self.history["objective"]) - 1

    @property
    def seconds_per_iteration(self) -> float:
        return sum(self.history["seconds"]) / max(self.iterations, 1)


@dataclass
class Funnel:
    """The sequence of pixel-stack distributions of an entropy congealing run (the "image funnel").

    ``log_probs`` ``(T, K, H, W)``: log-probability of each of the ``K`` grey-level bins at every
    pixel, as the stack stood at the start of each iteration; ``steps`` ``(T, 6)`` the parameter
    steps used in that iteration (normalised units). :func:`funnel_align` replays them on new images.
    """

    log_probs: torch.Tensor
    steps: torch.Tensor
    bins: int


# ----------------------------------------------------------------------------- input checks


def as_image_stack(images) -> torch.Tensor:
    """Check and stack a set of images: a ``(N, C, H, W)`` tensor or a sequence of ``(C, H, W)``.

    Raises ``ValueError`` for fewer than two images, images of different sizes or channel counts,
    NaN/inf pixels, and a set in which every image is constant (all black, say), saying what to do.
    A single blank image among others is accepted: it gives no gradient and no entropy change, so
    it simply follows the set's re-centring. ``uint8`` images are scaled to ``[0, 1]``.

    >>> as_image_stack([torch.rand(1, 8, 8), torch.rand(1, 8, 8)]).shape
    torch.Size([2, 1, 8, 8])
    """
    if isinstance(images, torch.Tensor):
        stack = images
        if stack.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(stack.shape)}; add a channel axis with images[:, None] for (N, H, W)")
    else:
        images = list(images)
        shapes = [tuple(image.shape) for image in images]
        if any(len(shape) != 3 for shape in shapes):
            raise ValueError(f"expected a sequence of (C, H, W) images, got shapes {sorted(set(shapes))}")
        if len(set(shapes)) > 1:
            counts = {shape: shapes.count(shape) for shape in set(shapes)}
            raise ValueError(
                f"images of different sizes {counts}: congealing compares pixel stacks, so every image needs the "
                "same (C, H, W); resize them first, e.g. with congealing.data.to_square or load_image_folder(size=...)"
            )
        stack = torch.stack(images) if images else torch.zeros(0, 1, 1, 1)
    if stack.shape[0] < 2:
        raise ValueError(f"congealing aligns a set to itself and needs at least 2 images, got {stack.shape[0]}")
    if not torch.is_floating_point(stack):
        stack = stack.float() / 255.0 if stack.dtype == torch.uint8 else stack.float()
    if not torch.isfinite(stack).all():
        bad = (~torch.isfinite(stack)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"images {bad[:10]}{'...' if len(bad) > 10 else ''} contain NaN or inf pixels; fix or drop them")
    flat = stack.flatten(1)
    if (flat.amax(1) - flat.amin(1)).max() <= 0:
        raise ValueError("every image is constant (e.g. all black): there is nothing to align")
    return stack


# ----------------------------------------------------------------------------- shared pieces


def affine_generators(dtype=torch.float32, device=None) -> torch.Tensor:
    """The six affine generators ``(6, 3, 3)`` of :func:`congealing.warps.lie_basis`."""
    return warps.lie_basis(dtype, device)[:AFFINE_DIM]


def recentre(transforms: torch.Tensor) -> torch.Tensor:
    """Remove the set's mean transform: ``T_i <- mean(T)^-1 T_i`` so the new mean is the identity.

    For affine matrices the mean is linear, so this is exact: the set can neither drift nor shrink
    as a whole (the degenerate solution of every congealing objective is to shrink all images to a
    point, where they agree trivially).

    >>> T = warps.exp(torch.tensor([[0.3, 0.0, 0.0, 0.2, 0.0, 0.0], [0.1, 0.0, 0.0, 0.2, 0.0, 0.0]]), "affine")
    >>> torch.allclose(recentre(T).mean(0), torch.eye(3), atol=1e-6)
    True
    """
    return warps.compose(warps.invert(transforms.mean(0, keepdim=True)).expand_as(transforms), transforms)


def generator_fields(size: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
    """Velocity of every pixel under each affine generator ``(6, H, W, 2)`` (normalised units)."""
    grid = warps.identity_grid(size, 1, dtype, device)[0]
    homogeneous = torch.cat([grid, torch.ones_like(grid[..., :1])], dim=-1)
    return torch.einsum("kij,hwj->khwi", affine_generators(dtype, device), homogeneous)[..., :2]


def image_gradient(images: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient ``(N, C, H, W, 2)`` (d/dx, d/dy) per *normalised* unit.

    >>> ramp = torch.arange(4.0).repeat(4, 1)[None, None]     # +1 per pixel along x
    >>> image_gradient(ramp)[0, 0, 1, 1].tolist()             # 1 pixel = 2/W = 0.5 normalised units
    [2.0, 0.0]
    """
    H, W = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * (W / 4.0)
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * (H / 4.0)
    return torch.stack([dx, dy], dim=-1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with ``sigma`` in pixels (identity for 0)."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    C = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def steepest_descent_images(images: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """Jacobians ``(N, C*H*W, 6)`` of images w.r.t. the six generators: ``grad I . v_k``."""
    gradient = image_gradient(images)  # (N, C, H, W, 2)
    J = torch.einsum("nchwd,khwd->nchwk", gradient, fields)
    return J.reshape(images.shape[0], -1, AFFINE_DIM)


def _solve_damped(hessian: torch.Tensor, rhs: torch.Tensor, damping: float, max_step: float) -> torch.Tensor:
    # Levenberg damping relative to each Hessian's scale; images with (near) zero Hessian get no update.
    scale = hessian.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(AFFINE_DIM, dtype=hessian.dtype, device=hessian.device)
    delta = torch.linalg.solve(hessian + damping * scale[:, None, None] * eye, rhs[..., None])[..., 0]
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * (max_step / norm.clamp_min(max_step))


def _history_start(objective: float, transforms: torch.Tensor, atlas: torch.Tensor) -> dict:
    return {"objective": [objective], "seconds": [0.0], "atlas": [atlas.clone()], "transforms": [transforms.clone()]}


def _record(history: dict, objective: float, seconds: float, transforms: torch.Tensor, atlas: torch.Tensor) -> None:
    history["objective"].append(objective)
    history["seconds"].append(seconds)
    history["atlas"].append(atlas.clone())
    history["transforms"].append(transforms.clone())


# ----------------------------------------------------------------------------- entropy congealing


def soft_bins(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Linear soft binning of grey values in ``[0, 1]``: ``(N, 1, H, W)`` -> ``(N, K, H, W)`` weights.

    Each value splits between its two nearest bin centres ``0, 1/(K-1), ..., 1``; with ``K = 2`` a
    grey value ``v`` is ``v`` parts "on" and ``1 - v`` parts "off".

    >>> soft_bins(torch.tensor([[[[0.25]]]]), 2).flatten().tolist()
    [0.75, 0.25]
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
    """Entropy in bits of every pixel stack ``(H, W)`` of a greyscale set ``(N, 1, H, W)``.

    >>> stack = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1, 1)   # a fair coin at this pixel
    >>> pixel_stack_entropy(stack).item()
    1.0
    """
    p = soft_bins(images, bins).mean(0)
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(0)


def warp_affine(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Warp ``(N, C, H, W)`` images by the affine transforms of ``(N, 6)`` algebra parameters."""
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
    """Entropy congealing of a greyscale set ``(N, 1, H, W)`` in ``[0, 1]`` (Learned-Miller 2006).

    Each iteration: (1) build every pixel stack's grey-level distribution from the current aligned
    set; (2) for every image, coordinate descent over its six affine parameters against that
    distribution *with the image itself left out* (so an image is not attracted to its own
    imprint, which matters for small sets); (3) subtract the mean parameter vector, the paper's
    re-centring that keeps the set from drifting or shrinking.

    The paper updates images one after another, each against the stack as the previous updates left
    it. Here all images take their step against the same stack (a Jacobi sweep instead of a
    Gauss-Seidel one): with steps of about a pixel each image's move changes any pixel-stack
    distribution by at most ``1/N``, so the two agree up to that, and the batched form is one
    ``grid_sample`` per candidate for the whole set. It also makes the funnel exact: a new image
    replays precisely the updates the training images made (:func:`funnel_align`).

    Returns a :class:`CongealResult` whose ``objective`` history is the total pixel-stack entropy
    in bits (sum over pixels of :func:`pixel_stack_entropy`).
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
    """Align new greyscale images ``(M, 1, H, W)`` with a learned funnel, each on its own.

    Every image walks down the funnel: at iteration ``t`` it does the same coordinate-descent sweep
    the training images did, against the stored distribution of iteration ``t``. The images do not
    interact, so aligning them together or one at a time gives the same result. Returns
    ``(transforms (M, 3, 3), aligned (M, 1, H, W))``.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"funnel_align expects greyscale images (M, 1, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != tuple(funnel.log_probs.shape[-2:]):
        raise ValueError(f"the funnel was learned on {tuple(funnel.log_probs.shape[-2:])} images, got {tuple(images.shape[-2:])}")
    params = torch.zeros(images.shape[0], AFFINE_DIM, dtype=images.dtype, device=images.device)
    for log_probs, steps in zip(funnel.log_probs, funnel.steps):
        params, _ = _coordinate_descent(images, params, log_probs[None], steps, funnel.bins)
    return warps.exp(params, "affine"), warp_affine(images, params)


# ----------------------------------------------------------------------------- least squares


def _leave_one_out_sq_error(aligned: torch.Tensor) -> float:
    # Mean over images and pixels of (A_i - mean of the others)^2: the LSC objective up to a constant.
    N = aligned.shape[0]
    others = (aligned.sum(0, keepdim=True) - aligned) / (N - 1)
    return float(((aligned - others) ** 2).mean())


def congeal_lsq(images, config: LSQConfig | None = None, progress=None) -> CongealResult:
    """Least-squares congealing of ``(N, C, H, W)`` images (Cox et al. 2008), any channel count.

    The objective is the sum of squared differences between every pair of aligned images; for
    image ``i`` with the others fixed it is (up to a constant) ``|A_i - M_{-i}|^2``, the distance to
    the mean of the others. One Gauss-Newton step per image per iteration, all images at once:
    ``J_i`` is the gradient of the *warped* image ``A_i`` times the generators' velocity fields,
    ``delta_i = (J_i^T J_i)^-1 J_i^T (M_{-i} - A_i)``, composed as ``T_i <- exp(-delta_i) T_i``
    (the forward update: ``J_i`` and the ``6 x 6`` Hessian are recomputed for every image at every
    iteration). Then the set is re-centred (:func:`recentre`).
    """
    config = config or LSQConfig.for_mode()
    return _least_squares(as_image_stack(images), config, inverse_compositional=False, progress=progress)


def congeal_ic_lsq(images, config: ICLSQConfig | None = None, progress=None) -> CongealResult:
    """Inverse-compositional least-squares congealing of ``(N, C, H, W)`` images (Cox et al. 2009).

    The roles flip: instead of warping image ``i`` toward the mean, the *mean* ``M`` is warped by a
    small ``exp(delta)`` toward image ``i``: ``M(exp(delta) x) ~ A_i(x)``, so the Jacobian ``J`` is
    the mean's gradient times the velocity fields, one ``(C*H*W, 6)`` matrix for the whole set,
    and the Hessian is a sum of precomputed per-pixel ``6 x 6`` outer products ``J J^T``, masked per
    image by the pixels it actually covers. The inverse of the template warp then updates the
    image: ``T_i <- exp(delta_i) T_i``. The residual to the mean of the *others* is
    ``A_i - M_{-i} = N/(N-1) (A_i - M)``, so the full mean serves as the shared template.
    """
    config = config or ICLSQConfig.for_mode()
    return _least_squares(as_image_stack(images), config, inverse_compositional=True, progress=progress)


def _check_step(delta: torch.Tensor, method: str, iteration: int, residual: torch.Tensor, hessian: torch.Tensor) -> None:
    check_finite(delta, f"{method}: non-finite warp update in the Gauss-Newton step of iteration {iteration}",
                 {"residual": residual.pow(2).mean(), "hessian trace": hessian.diagonal(dim1=1, dim2=2).sum(1).max()},
                 "lower max_step or raise damping, or check the inputs")


def _least_squares(images: torch.Tensor, config: LSQConfig, inverse_compositional: bool, progress=None) -> CongealResult:
    N, C, H, W = images.shape
    method = "ic-lsq" if inverse_compositional else "lsq"
    fields = generator_fields((H, W), images.dtype, images.device)
    smooth = gaussian_blur(images, config.blur)
    ones = torch.ones(N, 1, H, W, dtype=images.dtype, device=images.device)
    transforms = warps.identity(N, images.dtype, images.device)
    aligned = images.clone()
    history = _history_start(_leave_one_out_sq_error(aligned), transforms, aligned.mean(0))
    for iteration in range(config.iterations):
        start = time.perf_counter()
        warped = warps.warp_image(smooth, transforms)
        if inverse_compositional:
            template = warped.mean(0, keepdim=True)
            J = steepest_descent_images(template, fields)[0]  # (P, 6), shared by all images
            outer = J[:, :, None] * J[:, None, :]  # (P, 6, 6), the precomputable Hessian terms
            if getattr(config, "mask_outside", False):
                covered = (warps.warp_image(ones, transforms) > 0.999).to(images.dtype)
                weight = covered.expand(N, C, H, W).reshape(N, -1)
            else:
                weight = torch.ones(N, C * H * W, dtype=images.dtype, device=images.device)
            residual = (warped - template).reshape(N, -1) * (N / (N - 1)) * weight
            hessian = torch.einsum("np,pij->nij", weight, outer)
            delta = _solve_damped(hessian, residual @ J, config.damping, config.max_step)
            _check_step(delta, method, iteration, residual, hessian)
            transforms = warps.compose(warps.exp(delta, "affine"), transforms)
        else:
            others = (warped.sum(0, keepdim=True) - warped) / (N - 1)
            J = steepest_descent_images(warped, fields)  # (N, P, 6), one per image
            residual = (others - warped).reshape(N, -1)
            hessian = J.transpose(1, 2) @ J
            delta = _solve_damped(hessian, torch.einsum("npk,np->nk", J, residual), config.damping, config.max_step)
            _check_step(delta, method, iteration, residual, hessian)
            transforms = warps.compose(warps.exp(-delta, "affine"), transforms)
        transforms = recentre(transforms)
        aligned = warps.warp_image(images, transforms)
        _record(history, _leave_one_out_sq_error(aligned), time.perf_counter() - start, transforms, aligned.mean(0))
        if progress is not None:
            progress(iteration + 1, config.iterations)
    return CongealResult(method, transforms, aligned, aligned.mean(0), history, config)


# ----------------------------------------------------------------------------- one entry point


def congeal(images, method: str = "entropy", config=None, progress=None) -> CongealResult:
    """Run ``method`` (``"entropy"``, ``"lsq"`` or ``"ic-lsq"``) with ``config`` (default: its ``for_mode()``);
    ``progress(done, total)`` is called after every iteration."""
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHOD_NAMES}")
    run = {"entropy": congeal_entropy, "lsq": congeal_lsq, "ic-lsq": congeal_ic_lsq}[method]
    return run(images, config or CONFIGS[method].for_mode(), progress=progress)


def method_of(config) -> str:
    """The method a config belongs to: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.

    >>> method_of(ICLSQConfig()), method_of(LSQConfig())
    ('ic-lsq', 'lsq')
    """
    for name, config_type in CONFIGS.items():
        if type(config) is config_type:
            return name
    raise ValueError(f"not a classical congealing config: {type(config).__name__}; use one of {[c.__name__ for c in CONFIGS.values()]}")


def fit(images, config, *, masks=None, backbone=None, device=None, callback=None) -> Alignment:
    """Classical congealing behind the common protocol (:mod:`congealing.alignment`; Chapter 7, "One protocol, every method").

    Args:
        images: ``(N, C, H, W)`` (or a sequence of ``(C, H, W)``), see :func:`as_image_stack`.
        config: an :class:`EntropyConfig`, :class:`LSQConfig` or :class:`ICLSQConfig`; its type
            selects the method.
        masks: not used (the classical methods align pixels; mask the images first if needed).
        backbone: not used.
        device: where to run (None: where ``images`` are).
        callback: ``callback(done, total)`` after every iteration.

    Returns:
        an :class:`congealing.alignment.Alignment` with ``transforms`` ``(N, 3, 3)`` (input ->
        aligned), ``atlas["mean"]``, one history entry per iteration (``objective``, ``seconds``;
        the start first) and ``state["result"]``, the full :class:`CongealResult`.

    >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
    >>> alignment = fit(digits, LSQConfig(iterations=2))
    >>> alignment.method, alignment.transforms.shape, len(alignment.history)
    ('lsq', torch.Size([4, 3, 3]), 3)
    """
    method = method_of(config)
    stack = as_image_stack(images)
    if device is not None:
        stack = stack.to(device)
    result = congeal(stack, method, config, progress=callback)
    history = [{"iteration": i, "objective": objective, "seconds": seconds}
               for i, (objective, seconds) in enumerate(zip(result.history["objective"], result.history["seconds"]))]
    return Alignment(
        method=method, size=tuple(stack.shape[-2:]), transforms=result.transforms, atlas={"mean": result.atlas},
        history=history, seconds=float(sum(result.history["seconds"])), parameters=AFFINE_DIM * len(stack),
        state={"result": result, "config": config},
    )
