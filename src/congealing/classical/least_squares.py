"""Least-squares congealing (Cox et al., CVPR 2008) and its inverse-compositional form (ICCV 2009)
(Chapter 2, "Least-squares congealing").

>>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
>>> result = congeal_lsq(digits, LSQConfig(iterations=2))
>>> result.aligned.shape, result.transforms.shape, len(result.history["objective"])
(torch.Size([4, 1, 16, 16]), torch.Size([4, 3, 3]), 3)
"""
from __future__ import annotations

import time

import torch

from .. import warps
from ..losses import check_finite
from .configs import CongealResult, ICLSQConfig, LSQConfig
from .common import _history_start, _record, _solve_damped, as_image_stack, gaussian_blur, generator_fields, recentre, steepest_descent_images

__all__ = ["congeal_lsq", "congeal_ic_lsq"]


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
