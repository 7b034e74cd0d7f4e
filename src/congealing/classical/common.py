"""The pieces the three classical methods share (Chapter 2, "Classical congealing"): the input
check, the affine generators and their flow fields, image gradients and blur, and the damped
Gauss-Newton step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import warps
from ..errors import InputError
from .configs import AFFINE_DIM

__all__ = ["as_image_stack", "affine_generators", "recentre", "generator_fields", "image_gradient", "gaussian_blur", "steepest_descent_images"]


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
        InputError (a ValueError): fewer than two images, images of different sizes or channel counts, a tensor
            that is not 4-D, NaN/inf pixels, or a set in which every image is constant (all black,
            say); the message says what to do.

    Example:
        >>> as_image_stack([torch.zeros(1, 8, 8), torch.eye(8)[None]]).shape
        torch.Size([2, 1, 8, 8])
    """
    if isinstance(images, torch.Tensor):
        stack = images
        if stack.ndim != 4:
            raise InputError(f"expected images of shape (N, C, H, W), got {tuple(stack.shape)}; add a channel axis with images[:, None] for (N, H, W)")
    else:
        images = list(images)
        shapes = [tuple(image.shape) for image in images]
        if any(len(shape) != 3 for shape in shapes):
            raise InputError(f"expected a sequence of (C, H, W) images, got shapes {sorted(set(shapes))}")
        if len(set(shapes)) > 1:
            counts = {shape: shapes.count(shape) for shape in set(shapes)}
            raise InputError(
                f"images of different sizes {counts}: congealing compares pixel stacks, so every image needs the "
                "same (C, H, W); resize them first, e.g. with congealing.data.to_square or load_image_folder(size=...)"
            )
        stack = torch.stack(images) if images else torch.zeros(0, 1, 1, 1)
    if stack.shape[0] < 2:
        raise InputError(f"congealing aligns a set to itself and needs at least 2 images, got {stack.shape[0]}")
    if not torch.is_floating_point(stack):
        stack = stack.float() / 255.0 if stack.dtype == torch.uint8 else stack.float()
    if not torch.isfinite(stack).all():
        bad = (~torch.isfinite(stack)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputError(f"images {bad[:10]}{'...' if len(bad) > 10 else ''} contain NaN or inf pixels; fix or drop them")
    flat = stack.flatten(1)
    if (flat.amax(1) - flat.amin(1)).max() <= 0:
        raise InputError("every image is constant (e.g. all black): there is nothing to align")
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
