"""How well an alignment worked, as the ``congeal align`` report scores it: each image's agreement
with the rest of the set, in pixels (:func:`agreement`) and in descriptors
(:func:`descriptor_agreement`), and the maps that weigh them carried into the aligned frame
(:func:`to_aligned_frame`). Chapter 7, "Align your own photos", "What came out";
:func:`congealing.report.write_alignment` calls them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import warps

__all__ = ["agreement", "descriptor_agreement", "to_aligned_frame"]


def agreement(images: torch.Tensor, weights: torch.Tensor | None = None, side: int = 64) -> torch.Tensor:
    """How much each image agrees with the rest of the set: ``(N,)`` weighted Pearson correlations.

    Image ``n`` ``(C, H, W)`` is compared with the mean of the other images, pixel by pixel, over
    all channels, weighting each pixel by ``weights[n]`` times the mean weight of the others (so
    pixels outside an image or outside its object mask do not count). Everything is first resized
    (area) to ``side`` x ``side``. 1 means the image is the mean of the others up to brightness and
    contrast; 0 means no relation. A set that aligned well agrees more after alignment than before.
    The report's verdict and ``per_image`` agreement (Chapter 7, "Align your own photos", "What came
    out").

    Args:
        images: ``(N, C, H, W)``.
        weights: ``(N, 1, H, W)`` in ``[0, 1]``, or None (all ones).
        side: the side the images and weights are resized to first.

    Returns:
        ``(N,)`` correlations in ``[-1, 1]``, rounded to 6 decimals; all NaN when ``N < 2``.

    Example:
        >>> import torch
        >>> from congealing.report_scores import agreement
        >>> _ = torch.manual_seed(0)
        >>> same = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1)
        >>> agreement(same).tolist()
        [1.0, 1.0, 1.0]
    """
    images = images.detach().float().cpu()
    N = images.shape[0]
    weights = torch.ones_like(images[:, :1]) if weights is None else weights.detach().float().cpu()
    if N < 2:
        return torch.full((N,), float("nan"))
    if images.shape[-1] != side or images.shape[-2] != side:
        images = F.interpolate(images, size=(side, side), mode="area")
    if weights.shape[-1] != side or weights.shape[-2] != side:
        weights = F.interpolate(weights, size=(side, side), mode="area")
    total_weighted, total_weight = (weights * images).sum(0), weights.sum(0)
    others_weight = total_weight - weights
    others = (total_weighted - weights * images) / others_weight.clamp_min(1e-6)
    pixel_weight = (weights * others_weight / (N - 1)).expand_as(images)

    def mean(values):
        return (pixel_weight * values).sum((1, 2, 3)) / pixel_weight.sum((1, 2, 3)).clamp_min(1e-12)

    centred = images - mean(images)[:, None, None, None]
    centred_others = others - mean(others)[:, None, None, None]
    spread = (mean(centred**2) * mean(centred_others**2)).sqrt()
    return (mean(centred * centred_others) / spread.clamp_min(1e-12)).clamp(-1, 1).round(decimals=6)


def descriptor_agreement(descriptors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """How much each image's features agree with the rest of the set: ``(N,)`` mean cosine similarity.

    At every location, image ``n``'s unit descriptor is compared with the normalised weighted mean of
    the other images' unit descriptors there (cosine similarity); the similarities are averaged with
    weight ``weights[n]`` times the others' mean weight (their object masks, zero outside an image).
    The report's verdict and ``per_image`` descriptor agreement (Chapter 7, "Align your own photos",
    "What came out").

    Args:
        descriptors: ``(N, D, h, w)`` (normalised here).
        weights: ``(N, 1, h, w)`` in ``[0, 1]``, or None (all ones).

    Returns:
        ``(N,)`` mean cosine similarities in ``[-1, 1]``, rounded to 5 decimals; all NaN when ``N < 2``.

    Example:
        >>> import torch
        >>> from congealing.report_scores import descriptor_agreement
        >>> _ = torch.manual_seed(0)
        >>> same = torch.randn(1, 8, 4, 4).expand(3, -1, -1, -1)
        >>> descriptor_agreement(same).tolist()
        [1.0, 1.0, 1.0]
    """
    unit = F.normalize(descriptors.detach().float().cpu(), dim=1)
    N = unit.shape[0]
    weights = torch.ones_like(unit[:, :1]) if weights is None else weights.detach().float().cpu()
    if N < 2:
        return torch.full((N,), float("nan"))
    others_weight = weights.sum(0) - weights
    others = F.normalize((weights * unit).sum(0) - weights * unit, dim=1)
    similarity = (unit * others).sum(1, keepdim=True)
    pixel_weight = weights * others_weight / (N - 1)
    return ((pixel_weight * similarity).sum((1, 2, 3)) / pixel_weight.sum((1, 2, 3)).clamp_min(1e-12)).clamp(-1, 1).round(decimals=5)


def to_aligned_frame(maps: torch.Tensor, transforms: torch.Tensor | None, grids: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """Carry per-image maps (e.g. masks) into the aligned frame at ``size`` x ``size``.

    With ``transforms`` the maps are warped by :func:`congealing.warps.warp_image`; else with
    ``grids`` (bilinearly resized to ``size`` first if needed) by
    :func:`congealing.warps.warp_by_grid`. An aligned pixel that reads from outside its image gets 0.
    :func:`congealing.report.write_alignment` weighs the agreement after alignment with it (Chapter 7, "Align your own
    photos", "What came out").

    Args:
        maps: ``(N, C, H, W)``.
        transforms: ``(N, 3, 3)`` input -> aligned, normalised coordinates, or None.
        grids: ``(N, h, w, 2)`` sampling grids, aligned -> input, or None (used only without
            ``transforms``).
        size: the side of the aligned frame in pixels.

    Returns:
        ``(N, C, size, size)`` on the CPU, or None if neither ``transforms`` nor ``grids`` is given.

    Example:
        >>> import torch
        >>> from congealing import warps
        >>> from congealing.report_scores import to_aligned_frame
        >>> to_aligned_frame(torch.ones(2, 1, 8, 8), warps.identity(2), None, 4).shape
        torch.Size([2, 1, 4, 4])
    """
    maps = maps.detach().float().cpu()
    if transforms is not None:
        return warps.warp_image(maps, transforms.detach().float().cpu(), size=(size, size))
    if grids is not None:
        grid = grids.detach().float().cpu()
        if grid.shape[1:3] != (size, size):
            grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        return warps.warp_by_grid(maps, grid)
    return None
