"""Sampling grids: images warped by a transform or by a dense grid, grids inverted, edits painted.

A sampling grid ``(B, H, W, 2)`` holds, for every output pixel, the normalised input coordinate to
read (the backward map of ``F.grid_sample``, ``align_corners=False``). :func:`warp_image` builds
one from a transform (Chapter 1, "1.4 Warping points and images agree"); a dense warp is a grid
itself, and :func:`invert_grid` inverts one by nearest neighbours (Chapter 1, "1.5 Dense warps:
flows and sampling grids"); :func:`propagate_edit` and :func:`splat_edit` paint an edit drawn once
in the aligned frame onto every image (Chapter 4, "Edit propagation"). The conventions are those of
:mod:`congealing.warps`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .transforms import invert, normalized_to_pixel, transform_points

__all__ = [
    "identity_grid", "sampling_grid", "warp_image", "warp_by_grid", "flow_to_grid", "grid_points",
    "resize", "resize_grid", "propagate_edit", "splat_edit", "invert_grid_points", "invert_grid",
]


def identity_grid(size: tuple[int, int], batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """The sampling grid ``(B, H, W, 2)`` of the identity: every pixel centre's normalised ``(x, y)``.

    ``warp_by_grid(image, identity_grid(image.shape[-2:]))`` returns the image unchanged. Taught in
    Chapter 1, "1.1 Where is a pixel?".

    Args:
        size: the grid's ``(H, W)``.
        batch: ``B``, the number of copies.
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the grid ``(B, H, W, 2)``; ``grid[b, i, j]`` is pixel ``(j, i)``'s normalised ``(x, y)``.

    Example:
        >>> identity_grid((2, 2))
        tensor([[[[-0.5000, -0.5000],
                  [ 0.5000, -0.5000]],
        <BLANKLINE>
                 [[-0.5000,  0.5000],
                  [ 0.5000,  0.5000]]]])
    """
    H, W = size
    xs = (2.0 * torch.arange(W, dtype=dtype, device=device) + 1.0) / W - 1.0
    ys = (2.0 * torch.arange(H, dtype=dtype, device=device) + 1.0) / H - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return grid.expand(batch, H, W, 2).clone()


def sampling_grid(T: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid ``(B, H, W, 2)`` that warps an image by ``T``: ``T^-1`` at every output pixel.

    Without gradients and for affine ``T`` it is built by ``F.affine_grid`` (same grid, one fused
    call); otherwise by :func:`transform_points` on :func:`identity_grid`, so perspective entries get
    gradients. No chapter calls it directly: it is the grid behind :func:`warp_image` (Chapter 1, "1.4
    Warping points and images agree").

    Args:
        T: transforms ``(B, 3, 3)`` (input frame -> output frame).
        size: the output ``(H, W)``.

    Returns:
        the backward map ``(B, H, W, 2)``: for every output pixel, the normalised input ``(x, y)``.

    Example:
        >>> from congealing.warps import exp
        >>> sampling_grid(exp(torch.tensor([[0.5, 0.0]]), "translation"), (2, 2))
        tensor([[[[-1.0000, -0.5000],
                  [ 0.0000, -0.5000]],
        <BLANKLINE>
                 [[-1.0000,  0.5000],
                  [ 0.0000,  0.5000]]]])
    """
    B = T.shape[0]
    inverse = invert(T)
    if not (torch.is_grad_enabled() and T.requires_grad) and inverse[:, 2, :2].abs().max() <= 1e-7:
        # Affine and no gradient wanted: torch builds the same grid in one fused call (classical
        # congealing warps a whole set many times per iteration). With gradients we keep the general
        # path, so a homography's perspective entries get gradients even while they are zero.
        return F.affine_grid(inverse[:, :2], [B, 1, *size], align_corners=False)
    grid = identity_grid(size, B, T.dtype, T.device).reshape(B, -1, 2)
    return transform_points(inverse, grid).reshape(B, *size, 2)


def warp_image(
    image: torch.Tensor,
    T: torch.Tensor,
    size: tuple[int, int] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Warp images, feature maps or masks ``(B, C, H, W)`` by transforms ``T`` ``(B, 3, 3)``.

    Samples the input at ``T^-1(p)`` for every output pixel ``p`` (:func:`sampling_grid`, then
    :func:`warp_by_grid`). Use ``mode="nearest"`` for label masks. Differentiable in both ``image``
    and ``T``. Taught in Chapter 1, "1.4 Warping points and images agree".

    Args:
        image: images, feature maps or masks ``(B, C, H, W)``, floating point.
        T: transforms ``(B, 3, 3)``, one per image.
        size: the output ``(H, W)`` (default: the input's).
        mode: ``grid_sample`` interpolation: ``"bilinear"``, ``"nearest"`` or ``"bicubic"``.
        padding_mode: ``grid_sample`` padding: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        the warped images ``(B, C, *size)``, dtype of ``image``.

    Raises:
        ValueError: ``image`` is not 4-D, or the batch sizes of ``image`` and ``T`` differ.

    Example:
        >>> img = torch.zeros(1, 1, 5, 5); img[0, 0, 2, 2] = 1.0
        >>> from congealing.warps import exp
        >>> shifted = warp_image(img, exp(torch.tensor([[0.4, 0.0]]), "translation"))  # 0.4 = one pixel
        >>> shifted[0, 0, 2].tolist()
        [0.0, 0.0, 0.0, 1.0, 0.0]
    """
    _check_image(image)
    if T.shape[0] != image.shape[0]:
        raise ValueError(f"{image.shape[0]} images but {T.shape[0]} transforms")
    grid = sampling_grid(T.to(image.dtype), size or tuple(image.shape[-2:]))
    return warp_by_grid(image, grid, mode=mode, padding_mode=padding_mode)


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(image.shape)}")


def warp_by_grid(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` ``(B, C, H, W)`` at ``grid`` ``(B, h, w, 2)``: the dense (flow-field) warp.

    ``F.grid_sample`` with ``align_corners=False``. Taught in Chapter 1, "1.5 Dense warps: flows and
    sampling grids"; Neural Congealing's warps in Chapter 4, "Training".

    Args:
        image: images, feature maps or masks ``(B, C, H, W)``, floating point.
        grid: sampling grids ``(B, h, w, 2)``: normalised input ``(x, y)`` per output pixel.
        mode: ``grid_sample`` interpolation: ``"bilinear"``, ``"nearest"`` or ``"bicubic"``.
        padding_mode: ``grid_sample`` padding: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        the warped images ``(B, C, h, w)``.

    Raises:
        ValueError: ``image`` is not 4-D.

    Example:
        >>> img = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> warp_by_grid(img, identity_grid((2, 2)).flip(2))   # mirror left-right
        tensor([[[[1., 0.],
                  [3., 2.]]]])
    """
    _check_image(image)
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """A displacement field ``(B, 2, H, W)`` (normalised units) to a sampling grid ``(B, H, W, 2)``.

    The grid is :func:`identity_grid` plus the flow. Taught in Chapter 1, "1.5 Dense warps: flows
    and sampling grids".

    Args:
        flow: displacements ``(B, 2, H, W)``, channel 0 = x, channel 1 = y, in normalised units.

    Returns:
        the sampling grid ``(B, H, W, 2)``.

    Example:
        >>> torch.equal(flow_to_grid(torch.zeros(1, 2, 3, 4)), identity_grid((3, 4)))
        True
    """
    B, _, H, W = flow.shape
    return identity_grid((H, W), B, flow.dtype, flow.device) + flow.permute(0, 2, 3, 1)


def grid_points(points: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Map normalised points ``(B, N, 2)`` of the *output* frame to the input image through ``grid``.

    Bilinear lookup of the grid at each point (border padding outside it). Taught in Chapter 1,
    "1.5 Dense warps: flows and sampling grids".

    Args:
        points: normalised ``(x, y)`` points ``(B, N, 2)`` in the grid's output frame.
        grid: sampling grids ``(B, h, w, 2)``.

    Returns:
        the normalised input-image points ``(B, N, 2)`` they read from.

    Example:
        >>> mirror = identity_grid((4, 4)).flip(2)
        >>> grid_points(torch.tensor([[[0.25, 0.25]]]), mirror)
        tensor([[[-0.2500,  0.2500]]])
    """
    sampled = warp_by_grid(grid.permute(0, 3, 1, 2), points[:, :, None, :], padding_mode="border")
    return sampled[..., 0].permute(0, 2, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, size, size)``: bilinear, antialiased when shrinking.

    No chapter calls it directly; Neural Congealing's input pipeline (:mod:`congealing.neural`) and
    the ``congeal align`` report (:mod:`congealing.align`) use it, and so does :func:`splat_edit`.

    Args:
        images: images, feature maps or masks ``(B, C, H, W)``, floating point.
        size: the side of the square output.

    Returns:
        the resized tensor ``(B, C, size, size)``.

    Example:
        >>> resize(torch.ones(1, 3, 8, 8), 4).shape
        torch.Size([1, 3, 4, 4])
    """
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_grid(grids: torch.Tensor, size: int) -> torch.Tensor:
    """Resample sampling grids ``(B, h, w, 2)`` to ``(B, size, size, 2)`` (bilinear).

    The same warp at another output resolution (up to the outermost half pixel, where bilinear
    resampling clamps). No chapter calls it directly; :meth:`congealing.alignment.Alignment.warp` and
    Neural Congealing (:mod:`congealing.neural`) use it.

    Args:
        grids: sampling grids ``(B, h, w, 2)``.
        size: the side of the square output grid.

    Returns:
        the resampled grids ``(B, size, size, 2)``.

    Example:
        >>> up = resize_grid(identity_grid((4, 4)), 8)
        >>> up.shape, torch.allclose(up[:, 2:-2, 2:-2], identity_grid((8, 8))[:, 2:-2, 2:-2])
        (torch.Size([1, 8, 8, 2]), True)
    """
    return F.interpolate(grids.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def propagate_edit(images: torch.Tensor, T: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """Paint an RGBA ``edit`` ``(4, h, w)``, drawn once in the aligned frame, onto every image.

    ``images`` ``(B, 3, H, W)`` were aligned by ``T`` ``(B, 3, 3)``; the edit reaches image ``n``
    through ``T_n^-1`` and is alpha-composited. This is edit propagation for every transform-based
    aligner (Chapters 2 and 5); dense grids use :func:`splat_edit`. No chapter calls it directly:
    :meth:`congealing.alignment.Alignment.propagate_edit` does, for the ``congeal align`` report.

    Args:
        images: the unaligned images ``(B, 3, H, W)``, values in ``[0, 1]``.
        T: the aligning transforms ``(B, 3, 3)`` (image frame -> aligned frame).
        edit: RGBA edit ``(4, h, w)`` in the aligned frame; alpha (channel 3) in ``[0, 1]``.

    Returns:
        the edited images ``(B, 3, H, W)``.

    Example:
        >>> edit = torch.zeros(4, 4, 4); edit[:, 1, 1] = 1.0          # one opaque white pixel
        >>> from congealing.warps import identity
        >>> out = propagate_edit(torch.zeros(1, 3, 4, 4), identity(1), edit)
        >>> out[0, :, 1, 1].tolist(), float(out.sum())
        ([1.0, 1.0, 1.0], 3.0)
    """
    B = images.shape[0]
    painted = warp_image(edit.to(images).expand(B, -1, -1, -1), invert(T), size=images.shape[-2:])
    alpha = painted[:, 3:].clamp(0, 1)
    return images * (1 - alpha) + painted[:, :3] * alpha


@torch.no_grad()
def splat_edit(images: torch.Tensor, grids: torch.Tensor, edit: torch.Tensor, oversample: int = 2) -> torch.Tensor:
    """Paint an RGBA ``edit`` drawn once in the output frame of sampling ``grids`` onto every image.

    Every edit pixel (resampled at ``oversample`` x the image size, so no holes appear) is sent to
    each image through its grid (a backward-map lookup: no inversion needed) and splatted
    bilinearly: colour = weighted mean, alpha = sum(w * a) / max(sum(w), 1) (the official Neural
    Congealing splat's normalisation), then composited over the image. Runs without gradients.
    Taught in Chapter 4, "Edit propagation".

    Args:
        images: the unaligned images ``(B, 3, H, W)``, values in ``[0, 1]``.
        grids: sampling grids ``(B, g, g, 2)`` (aligned frame -> image, normalised).
        edit: RGBA edit ``(4, h, w)`` in the grids' output frame; alpha (channel 3) in ``[0, 1]``.
        oversample: the edit is resampled to ``oversample * max(H, W)`` pixels a side.

    Returns:
        the edited images ``(B, 3, H, W)``.

    Raises:
        ValueError: ``edit`` is not ``(4, h, w)``.

    Example:
        >>> edit = torch.zeros(4, 4, 4); edit[:, 1, 1] = 1.0          # one opaque white pixel
        >>> out = splat_edit(torch.zeros(1, 3, 4, 4), identity_grid((4, 4)), edit, oversample=1)
        >>> out[0, :, 1, 1].tolist(), float(out.sum())
        ([1.0, 1.0, 1.0], 3.0)
    """
    if edit.ndim != 3 or edit.shape[0] != 4:
        raise ValueError(f"edit must be an RGBA image (4, h, w), got {tuple(edit.shape)}")
    B, _, H, W = images.shape
    size = oversample * max(H, W)
    edit = resize(edit[None].float().to(images.device), size)[0]
    points = identity_grid((size, size), 1, images.dtype, images.device)  # (1, s, s, 2) output-frame coordinates
    colours = edit.reshape(4, -1)
    keep = colours[3] > 1e-3
    colours, points = colours[:, keep], points.reshape(1, -1, 2)[:, keep]
    out = []
    for n in range(B):
        xy = normalized_to_pixel(grid_points(points, grids[n : n + 1]), (H, W))[0]  # (P, 2)
        acc = torch.zeros(5, H * W, dtype=images.dtype, device=images.device)
        x0, y0 = xy[:, 0].floor(), xy[:, 1].floor()
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                w = (1 - (xy[:, 0] - xi).abs()) * (1 - (xy[:, 1] - yi).abs())
                ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H) & (w > 0)
                index = (yi[ok] * W + xi[ok]).long()
                weighted = w[ok] * colours[:, ok]  # (4, P): w*rgb, w*alpha
                acc.index_add_(1, index, torch.cat([weighted, w[ok][None]]))
        weight = acc[4]
        rgb = acc[:3] / (acc[3:4] + 1e-8)
        alpha = (acc[3] / weight.clamp_min(1.0)).clamp(0, 1)
        edited = images[n].reshape(3, -1) * (1 - alpha) + rgb * alpha
        out.append(edited.reshape(3, H, W))
    return torch.stack(out)


def invert_grid_points(points: torch.Tensor, grid: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Map normalised points ``(B, N, 2)`` of the *input* image to the output frame of ``grid``.

    A sampling grid only says where each output pixel reads from; the inverse is taken by nearest
    neighbours: the output pixel whose grid value lies closest to each point. Points that no output
    pixel reads from come back at the closest one that does. Taught in Chapter 1, "1.5 Dense warps:
    flows and sampling grids".

    Args:
        points: normalised ``(x, y)`` points ``(B, N, 2)`` in the input image.
        grid: sampling grids ``(B, h, w, 2)``.
        chunk: points per distance computation (bounds memory at ``chunk * h * w`` distances).

    Returns:
        the points ``(B, N, 2)`` in the output frame, snapped to output pixel centres.

    Example:
        >>> mirror = identity_grid((4, 4)).flip(2)
        >>> invert_grid_points(torch.tensor([[[-0.25, 0.25]]]), mirror)
        tensor([[[0.2500, 0.2500]]])
    """
    B, h, w, _ = grid.shape
    flat = grid.reshape(B, h * w, 2)
    out_coords = identity_grid((h, w), 1, grid.dtype, grid.device).reshape(1, h * w, 2).expand(B, -1, -1)
    result = []
    for start in range(0, points.shape[1], chunk):
        nearest = torch.cdist(points[:, start : start + chunk].to(grid.dtype), flat).argmin(dim=-1)
        result.append(torch.gather(out_coords, 1, nearest[..., None].expand(-1, -1, 2)))
    return torch.cat(result, dim=1)


def invert_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The nearest-neighbour inverse ``(B, H, W, 2)`` of a sampling grid, for an input of ``size``.

    :func:`invert_grid_points` at every pixel centre of the input. Used in Chapter 1, "1.5 Dense
    warps: flows and sampling grids".

    Args:
        grid: sampling grids ``(B, h, w, 2)``.
        size: the input image's ``(H, W)``.

    Returns:
        the inverse grids ``(B, H, W, 2)``: for every input pixel, the normalised output ``(x, y)``.

    Example:
        >>> mirror = identity_grid((4, 4)).flip(2)
        >>> torch.equal(invert_grid(mirror, (4, 4)), mirror)     # a mirror is its own inverse
        True
    """
    B = grid.shape[0]
    pixels = identity_grid(size, B, grid.dtype, grid.device).reshape(B, -1, 2)
    return invert_grid_points(pixels, grid).reshape(B, *size, 2)
