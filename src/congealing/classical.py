"""Classical congealing: joint alignment of a set of images with no network and no labels.

Taught in Chapter 2, "Classical congealing"; run through the common fit protocol in Chapter 7,
"One protocol, every method".

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
:func:`congeal` runs any of the three by name; :func:`fit` returns a
:class:`congealing.alignment.Alignment` like every other method.

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
#: The three methods, as :func:`congeal` and :data:`CONFIGS` name them.
METHOD_NAMES = ("entropy", "lsq", "ic-lsq")


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class EntropyConfig(runtime.ModeConfig):
    """Settings of entropy congealing (:func:`congeal_entropy`, Learned-Miller 2006).

    A frozen :class:`congealing.runtime.ModeConfig`: ``EntropyConfig.for_mode()`` gives the settings of
    the current mode. Each iteration tries ``+step`` and ``-step`` for every parameter of every image
    and keeps the best of the three, as in the paper. Taught in Chapter 2, "The algorithm"; grey
    levels for natural images in "Not just digits: faces".

    Attributes:
        iterations: coordinate-descent sweeps (quick mode: 40 instead of 100; the set converges in
            about that many on MNIST).
        steps: step sizes of the six affine parameters: translation in *pixels* (converted to
            normalised units per image size), rotation in radians, log-scale, log-aspect and shear as
            plain numbers. The values are ours (about one pixel of motion at the digit's edge), not
            the paper's.
        shrink: factor applied to all steps whenever an iteration lowers the total entropy by less
            than ``stall`` (relative), so the last iterations refine instead of oscillating between
            two neighbours.
        stall: the relative entropy decrease below which the steps shrink.
        min_step_fraction: the steps never shrink below this fraction of their start.
        bins: grey levels of the pixel stack (:func:`soft_bins`); 2 is the paper's binary setting,
            natural greyscale images want more.
        prior: pseudo-count added to every bin, so no probability is zero.

    Example:
        >>> EntropyConfig.for_mode("quick").iterations, EntropyConfig().bins
        (40, 2)
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
    """Settings of least-squares congealing (:func:`congeal_lsq`, Cox et al. 2008).

    A frozen :class:`congealing.runtime.ModeConfig`. Taught in Chapter 2, "Least-squares congealing";
    ``blur`` in its Exercises.

    Attributes:
        iterations: Gauss-Newton iterations (quick mode: 30 instead of 60).
        damping: the Levenberg term added to each image's Gauss-Newton Hessian, relative to its trace,
            so blank images (zero Hessian) stay where they are instead of producing NaN.
        max_step: bound on each update's parameter norm: one Gauss-Newton step far outside its basin
            would otherwise throw a digit out of the frame.
        blur: Gaussian sigma in pixels applied to the images that are fitted (residuals and
            Jacobians; the returned aligned set is not blurred); 0 is the paper's setting.

    Example:
        >>> LSQConfig.for_mode("quick").iterations, LSQConfig().iterations
        (30, 60)
    """

    QUICK: ClassVar[dict] = {"iterations": 30}
    iterations: int = 60
    damping: float = 1e-3
    max_step: float = 0.1
    blur: float = 0.0


@dataclass(frozen=True)
class ICLSQConfig(LSQConfig):
    """Settings of inverse-compositional least-squares congealing (:func:`congeal_ic_lsq`, Cox et al. 2009).

    Those of :class:`LSQConfig`, plus one. Taught in Chapter 2, "Inverse compositional".

    Attributes:
        mask_outside: leave out of an image's residual (and Hessian) the pixels its warp reads from
            *outside* that image, so a digit pushed half out of the frame is not dragged toward the
            empty border.

    Example:
        >>> ICLSQConfig().mask_outside, ICLSQConfig().damping == LSQConfig().damping
        (True, True)
    """

    mask_outside: bool = True


#: Each method's config type (:func:`method_of` reads a config's method from it).
CONFIGS = {"entropy": EntropyConfig, "lsq": LSQConfig, "ic-lsq": ICLSQConfig}


# ----------------------------------------------------------------------------- results


@dataclass
class CongealResult:
    """What :func:`congeal_entropy`, :func:`congeal_lsq` and :func:`congeal_ic_lsq` return.

    :func:`fit` wraps it in a :class:`congealing.alignment.Alignment` (``state["result"]``). Its
    history draws Chapter 2's curves and frames ("The algorithm", "Watching it happen", "Inverse
    compositional").

    Attributes:
        method: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.
        transforms: ``(N, 3, 3)`` input -> aligned frame.
        aligned: the aligned images ``(N, C, H, W)``.
        atlas: the mean aligned image ``(C, H, W)``.
        history: one entry per iteration *plus the start*: ``objective`` (the method's loss: total
            pixel-stack entropy in bits, or mean squared difference to the others), ``seconds``
            (wall time of that iteration, 0 for the start), ``atlas`` (list of ``(C, H, W)`` means)
            and ``transforms`` (list of ``(N, 3, 3)``), so any iteration's aligned stack can be
            rebuilt.
        config: the config the run used.
        funnel: the :class:`Funnel` of an entropy run, None for the least-squares methods.

    Example:
        >>> digits = torch.zeros(3, 1, 8, 8); digits[:, :, 2:6, 3:5] = 1.0
        >>> result = congeal_lsq(digits, LSQConfig(iterations=2))
        >>> result.iterations, len(result.history["transforms"]), result.funnel is None
        (2, 3, True)
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
        """The number of iterations run (the history's length less the start)."""
        return len(self.history["objective"]) - 1

    @property
    def seconds_per_iteration(self) -> float:
        """Mean wall time of one iteration in seconds (the start excluded)."""
        return sum(self.history["seconds"]) / max(self.iterations, 1)


@dataclass
class Funnel:
    """The sequence of pixel-stack distributions of an entropy congealing run (the "image funnel").

    :func:`funnel_align` replays it on new images. Taught in Chapter 2, "The image funnel".

    Attributes:
        log_probs: ``(T, K, H, W)`` log-probability of each of the ``K`` grey-level bins at every
            pixel, as the stack stood at the start of each of the ``T`` iterations.
        steps: ``(T, 6)`` the parameter steps used in that iteration (normalised units).
        bins: ``K``.

    Example:
        >>> digits = torch.zeros(4, 1, 8, 8); digits[:, :, 2:6, 3:5] = 1.0
        >>> funnel = congeal_entropy(digits, EntropyConfig(iterations=1)).funnel
        >>> funnel.log_probs.shape, funnel.steps.shape, funnel.bins
        (torch.Size([1, 2, 8, 8]), torch.Size([1, 6]), 2)
    """

    log_probs: torch.Tensor
    steps: torch.Tensor
    bins: int


# ----------------------------------------------------------------------------- input checks


def as_image_stack(images) -> torch.Tensor:
    """Check and stack a set of images into one ``(N, C, H, W)`` float tensor.

    A single blank image among others is accepted: it gives no gradient and no entropy change, so it
    simply follows the set's re-centring. Every method of this module (and :func:`fit`) calls it
    first; no chapter section is about it.

    Args:
        images: a ``(N, C, H, W)`` tensor or a sequence of ``(C, H, W)`` tensors; ``uint8`` pixels
            are scaled to ``[0, 1]``.

    Returns:
        the stack ``(N, C, H, W)``, floating point.

    Raises:
        ValueError: fewer than two images, images of different sizes or channel counts, a tensor
            that is not 4-D, NaN/inf pixels, or a set in which every image is constant (all black,
            say); the message says what to do.

    Example:
        >>> as_image_stack([torch.zeros(1, 8, 8), torch.eye(8)[None]]).shape
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
    """The six affine generators ``(6, 3, 3)`` of :func:`congealing.warps.lie_basis`.

    The parameters of every classical method; Chapter 2, "The algorithm" names them.

    Args:
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the generators ``(6, 3, 3)``: x/y translation, rotation, log-scale, log-aspect, shear.

    Example:
        >>> affine_generators()[3]                          # isotropic scale
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 0.]])
    """
    return warps.lie_basis(dtype, device)[:AFFINE_DIM]


def recentre(transforms: torch.Tensor) -> torch.Tensor:
    """Remove the set's mean transform: ``T_i <- mean(T)^-1 T_i``, so the new mean is the identity.

    For affine matrices the mean is linear, so this is exact: the set can neither drift nor shrink
    as a whole (the degenerate solution of every congealing objective is to shrink all images to a
    point, where they agree trivially). Taught in Chapter 2, "The algorithm" (step 3) and
    "Least-squares congealing".

    Args:
        transforms: affine transforms ``(N, 3, 3)``.

    Returns:
        the re-centred transforms ``(N, 3, 3)``.

    Example:
        >>> T = warps.exp(torch.tensor([[0.3, 0.0, 0.0, 0.2, 0.0, 0.0], [0.1, 0.0, 0.0, 0.2, 0.0, 0.0]]), "affine")
        >>> torch.allclose(recentre(T).mean(0), torch.eye(3), atol=1e-6)
        True
    """
    return warps.compose(warps.invert(transforms.mean(0, keepdim=True)).expand_as(transforms), transforms)


def generator_fields(size: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
    """Velocity of every pixel under each affine generator, in normalised units.

    The ``dW/dxi`` of Chapter 2, "Least-squares congealing": multiplied by an image's gradient it
    gives the Jacobian (:func:`steepest_descent_images`).

    Args:
        size: ``(H, W)`` of the images.
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the fields ``(6, H, W, 2)``: ``(dx, dy)`` of every pixel centre under each generator.

    Example:
        >>> generator_fields((2, 2))[0, 0, 0].tolist()     # translate x moves every pixel along x
        [1.0, 0.0]
    """
    grid = warps.identity_grid(size, 1, dtype, device)[0]
    homogeneous = torch.cat([grid, torch.ones_like(grid[..., :1])], dim=-1)
    return torch.einsum("kij,hwj->khwi", affine_generators(dtype, device), homogeneous)[..., :2]


def image_gradient(images: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient of images per *normalised* unit (replicate padding at the border).

    Used by the least-squares methods (Chapter 2, "Least-squares congealing").

    Args:
        images: ``(N, C, H, W)``.

    Returns:
        the gradient ``(N, C, H, W, 2)``: ``(d/dx, d/dy)``.

    Example:
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
    """Separable Gaussian blur (replicate padding), the identity for ``sigma <= 0``.

    What :attr:`LSQConfig.blur` applies; Chapter 2's Exercises try it.

    Args:
        images: ``(N, C, H, W)``.
        sigma: standard deviation in pixels; the kernel reaches ``ceil(3 sigma)`` pixels each way.

    Returns:
        the blurred images ``(N, C, H, W)``.

    Example:
        >>> dot = torch.zeros(1, 1, 9, 9); dot[0, 0, 4, 4] = 1.0    # the kernel fits inside: no mass lost
        >>> round(gaussian_blur(dot, 1.0).sum().item(), 4), gaussian_blur(dot, 0.0) is dot
        (1.0, True)
    """
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
    """Jacobians of images w.r.t. the six affine generators: ``grad I . v_k`` at every pixel.

    The ``J_i`` of Chapter 2, "Least-squares congealing" (and the shared ``J`` of "Inverse
    compositional").

    Args:
        images: ``(N, C, H, W)``.
        fields: the generators' velocity fields ``(6, H, W, 2)`` (:func:`generator_fields`).

    Returns:
        the Jacobians ``(N, C*H*W, 6)``.

    Example:
        >>> ramp = torch.arange(4.0).repeat(4, 1)[None, None]
        >>> J = steepest_descent_images(ramp, generator_fields((4, 4)))
        >>> J.shape, J[0, 5].tolist()[:2]                   # pixel (1, 1): only translate x changes it
        (torch.Size([1, 16, 6]), [2.0, 0.0])
    """
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


# ----------------------------------------------------------------------------- least squares


def _leave_one_out_sq_error(aligned: torch.Tensor) -> float:
    # Mean over images and pixels of (A_i - mean of the others)^2: the LSC objective up to a constant.
    N = aligned.shape[0]
    others = (aligned.sum(0, keepdim=True) - aligned) / (N - 1)
    return float(((aligned - others) ** 2).mean())


def congeal_lsq(images, config: LSQConfig | None = None, progress=None) -> CongealResult:
    """Least-squares congealing (Cox et al. 2008), any channel count.

    The objective is the sum of squared differences between every pair of aligned images; for
    image ``i`` with the others fixed it is (up to a constant) ``|A_i - M_{-i}|^2``, the distance to
    the mean of the others. One Gauss-Newton step per image per iteration, all images at once:
    ``J_i`` is the gradient of the *warped* image ``A_i`` times the generators' velocity fields,
    ``delta_i = (J_i^T J_i)^-1 J_i^T (M_{-i} - A_i)``, composed as ``T_i <- exp(-delta_i) T_i``
    (the forward update: ``J_i`` and the ``6 x 6`` Hessian are recomputed for every image at every
    iteration). Then the set is re-centred (:func:`recentre`). Taught in Chapter 2, "Least-squares
    congealing".

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]`` (or a sequence, see :func:`as_image_stack`).
        config: an :class:`LSQConfig` (default: ``LSQConfig.for_mode()``).
        progress: ``progress(done, total)`` after every iteration, or None.

    Returns:
        a :class:`CongealResult` whose ``objective`` history is the mean squared difference of every
        aligned image to the mean of the others.

    Raises:
        ValueError: :func:`as_image_stack` refuses the set.
        FloatingPointError: a Gauss-Newton update is not finite.

    Example:
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> congeal_lsq(digits, LSQConfig(iterations=2)).transforms.shape
        torch.Size([4, 3, 3])
    """
    config = config or LSQConfig.for_mode()
    return _least_squares(as_image_stack(images), config, inverse_compositional=False, progress=progress)


def congeal_ic_lsq(images, config: ICLSQConfig | None = None, progress=None) -> CongealResult:
    """Inverse-compositional least-squares congealing (Cox et al. 2009), any channel count.

    The roles flip: instead of warping image ``i`` toward the mean, the *mean* ``M`` is warped by a
    small ``exp(delta)`` toward image ``i``: ``M(exp(delta) x) ~ A_i(x)``, so the Jacobian ``J`` is
    the mean's gradient times the velocity fields, one ``(C*H*W, 6)`` matrix for the whole set,
    and the Hessian is a sum of precomputed per-pixel ``6 x 6`` outer products ``J J^T``, masked per
    image by the pixels it actually covers. The inverse of the template warp then updates the
    image: ``T_i <- exp(delta_i) T_i``. The residual to the mean of the *others* is
    ``A_i - M_{-i} = N/(N-1) (A_i - M)``, so the full mean serves as the shared template. Taught in
    Chapter 2, "Inverse compositional".

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]`` (or a sequence, see :func:`as_image_stack`).
        config: an :class:`ICLSQConfig` (default: ``ICLSQConfig.for_mode()``).
        progress: ``progress(done, total)`` after every iteration, or None.

    Returns:
        a :class:`CongealResult`, ``objective`` as for :func:`congeal_lsq`.

    Raises:
        ValueError: :func:`as_image_stack` refuses the set.
        FloatingPointError: a Gauss-Newton update is not finite.

    Example:
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> congeal_ic_lsq(digits, ICLSQConfig(iterations=2)).method
        'ic-lsq'
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
    """Run one classical method by name.

    :func:`congealing.evaluation.evaluate_on_digits` runs it for every row of Chapter 2, "The
    comparison table".

    Args:
        images: ``(N, C, H, W)`` (or a sequence, see :func:`as_image_stack`); greyscale for
            ``"entropy"``.
        method: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"`` (:data:`METHOD_NAMES`).
        config: the method's config (default: its ``for_mode()``).
        progress: ``progress(done, total)`` after every iteration, or None.

    Returns:
        the method's :class:`CongealResult`.

    Raises:
        ValueError: ``method`` is unknown, or the method refuses the images or config.

    Example:
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> congeal(digits, "lsq", LSQConfig(iterations=1)).iterations
        1
    """
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHOD_NAMES}")
    run = {"entropy": congeal_entropy, "lsq": congeal_lsq, "ic-lsq": congeal_ic_lsq}[method]
    return run(images, config or CONFIGS[method].for_mode(), progress=progress)


def method_of(config) -> str:
    """The method a config belongs to: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.

    The exact type decides (an :class:`ICLSQConfig` is not an :class:`LSQConfig` here). :func:`fit`
    uses it; Chapter 7, "One protocol, every method".

    Args:
        config: an :class:`EntropyConfig`, :class:`LSQConfig` or :class:`ICLSQConfig`.

    Returns:
        the method's name, a key of :data:`CONFIGS`.

    Raises:
        ValueError: ``config`` is of any other type.

    Example:
        >>> method_of(ICLSQConfig()), method_of(LSQConfig())
        ('ic-lsq', 'lsq')
    """
    for name, config_type in CONFIGS.items():
        if type(config) is config_type:
            return name
    raise ValueError(f"not a classical congealing config: {type(config).__name__}; use one of {[c.__name__ for c in CONFIGS.values()]}")


def fit(images, config, *, masks=None, backbone=None, device=None, callback=None) -> Alignment:
    """Classical congealing behind the common fit protocol (:mod:`congealing.alignment`).

    Runs :func:`congeal` with the method ``config`` selects; :mod:`congealing.registry` lists it for
    all three methods. Taught in Chapter 7, "One protocol, every method".

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

    Raises:
        ValueError: ``config`` is not a classical config, or the method refuses the images.

    Example:
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
