"""Canonical coordinate maps (Algorithm 1, line 9): every pixel to a point of the canonical frame,
and correspondence and edits through it.

Taught in Chapter 6: the maps and the transfer in "Canonical coordinates and correspondence", the
edits and the filtering in "Edits and pose-aware filtering".

>>> huber_tv(torch.zeros(1, 2, 4, 4), 0.01).item()     # a constant field is perfectly smooth
0.0
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import warps
from ..features import extract_descriptors, load_backbone
from ..losses import check_finite, masked_mean, rigidity_loss
from .cameras import camera_angles
from .config import Congeal3DConfig
from .field import render, VoxelField
from .poses import check_masks

__all__ = [
    "CoordinateMaps", "huber_tv", "fit_coordinate_maps", "transfer_points", "propagate_nocs_edit", "stripes_edit",
    "filter_by_pose",
]


@dataclass
class CoordinateMaps:
    """Per-image maps into the canonical frame, at the images' resolution ``S``.

    What :func:`fit_coordinate_maps` returns; :func:`transfer_points` and
    :func:`propagate_nocs_edit` read it. Chapter 6, "Canonical coordinates and correspondence".

    Attributes:
        nocs: ``(N, 3, S, S)``: ``Phi_fwd``, every input pixel's canonical coordinate in ``[0, 1]^3``
            (0 outside ``mask``).
        mask: ``(N, 1, S, S)``: the pixels that have one (the input's foreground).
        warp: ``(N, S, S, 2)``: the fitted 2-D warp ``u -> u~`` into each image's render
            (normalised coordinates).
        renders: ``rgb``/``nocs``/``mask`` of the canonical shape at each image's camera.
        loss: the objective at every step.
        seconds: wall time of the fit.

    Example:
        >>> maps = CoordinateMaps(torch.zeros(2, 3, 4, 4), torch.ones(2, 1, 4, 4), torch.zeros(2, 4, 4, 2), {}, [])
        >>> maps.nocs.shape, maps.seconds
        (torch.Size([2, 3, 4, 4]), 0.0)
    """

    nocs: torch.Tensor
    mask: torch.Tensor
    warp: torch.Tensor
    renders: dict
    loss: list
    seconds: float = 0.0


def huber_tv(offsets: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber total variation of a 2-channel field: robust smoothness that still allows edges.

    The sum of the mean Huber losses of the horizontal and vertical differences. One of the maps'
    smoothness terms (Appendix B; Chapter 6, "Canonical coordinates and correspondence").

    Args:
        offsets: the field ``(B, 2, h, w)``.
        delta: the Huber threshold: quadratic below, linear above.

    Returns:
        the loss, a scalar tensor.

    Example:
        >>> huber_tv(torch.zeros(1, 2, 4, 4), 0.01).item()
        0.0
        >>> ramp = torch.arange(4.0).expand(1, 2, 4, 4)                # steps of 1 along x, far above delta
        >>> round(huber_tv(ramp, 0.01).item(), 6)                       # mean of delta (|d| - delta / 2) over dx
        0.00995
    """
    dx = offsets[..., :, 1:] - offsets[..., :, :-1]
    dy = offsets[..., 1:, :] - offsets[..., :-1, :]
    return F.huber_loss(dx, torch.zeros_like(dx), delta=delta) + F.huber_loss(dy, torch.zeros_like(dy), delta=delta)


def fit_coordinate_maps(field: VoxelField, images: torch.Tensor, masks: torch.Tensor, c2w: torch.Tensor, fov: torch.Tensor, config: Congeal3DConfig, backbone=None, progress=None) -> CoordinateMaps:
    """Alg. 1, line 9: the warp of Eq. 10 from each input to its render, then the NOCS lookup (Eq. 11).

    The canonical shape is rendered at each refined camera. A warp ``u~(u) = u + o(u)`` (an offset
    field ``o`` on a ``mapping_size`` grid, bilinearly upsampled) is fitted with AdamW at
    ``mapping_lr`` to minimise, over the input's foreground: the cosine distance between the
    input's descriptor at ``u`` and the render's at ``u~`` (the semantic term), plus
    ``lambda_l2 |u~ - u|^2`` in ``[0, 1]`` coordinates (stay close to the pose's answer), plus the
    smoothness of Appendix B: rigidity (:func:`congealing.losses.rigidity_loss`) at ``global_delta``
    and at 1 pixel, and Huber total variation (:func:`huber_tv`). ``Phi_fwd(u)`` is the render's
    NOCS value at ``u~``; foreground pixels the render misses take the nearest covered pixel's
    value. Taught in Chapter 6, "Canonical coordinates and correspondence".

    Args:
        field: the canonical :class:`VoxelField` (its box set).
        images: the inputs ``(N, 3, S, S)``.
        masks: their masks ``(N, 1, S, S)``.
        c2w: their refined cameras ``(N, 4, 4)``.
        fov: their field of view in radians ``(N,)``.
        config: a :class:`Congeal3DConfig` (the ``mapping_*`` and ``lambda_*`` settings).
        backbone: a :class:`congealing.features.Backbone`, a backbone name, or None (the default one).
        progress: ``progress(iterable, desc=...)`` wrapping the steps (e.g. tqdm), or None.

    Returns:
        the :class:`CoordinateMaps` (on the CPU).

    Raises:
        InputError: an input has no usable mask.
        FloatingPointError: the loss is not finite (the message names the step).
    """
    check_masks(masks)
    start = time.perf_counter()
    backbone = load_backbone(backbone) if backbone is None or isinstance(backbone, str) else backbone
    N, size, m, device = images.shape[0], images.shape[-1], config.mapping_size, field.density.device
    with torch.no_grad():
        renders = {k: [] for k in ("rgb", "nocs", "mask")}
        for i in range(0, N, 8):
            out = render(field, c2w[i : i + 8].to(device), fov[i : i + 8].to(device), size, config.samples_per_ray)
            for k in renders:
                renders[k].append(out[k].cpu())
        renders = {k: torch.cat(v) for k, v in renders.items()}
    masked_inputs = images * masks + (1 - masks)  # the same white background as the renders
    input_keys = extract_descriptors(masked_inputs, backbone, grid=m, input_size=config.crop_size, cache=False)
    render_keys = extract_descriptors(renders["rgb"], backbone, grid=m, input_size=config.crop_size, cache=False)
    foreground = (F.interpolate(masks, size=(m, m), mode="area") > 0.5).float().to(device)
    input_keys, render_keys = input_keys.to(device), render_keys.to(device)
    identity = warps.identity_grid((m, m), N, device=device)  # (N, m, m, 2)
    offsets = torch.zeros(N, 2, m, m, device=device, requires_grad=True)
    optimiser = torch.optim.AdamW([offsets], lr=config.mapping_lr)
    losses = []
    steps = range(config.mapping_steps) if progress is None else progress(range(config.mapping_steps), desc="maps")
    for step in steps:
        grid = identity + offsets.permute(0, 2, 3, 1)
        warped_keys = F.grid_sample(render_keys, grid, mode="bilinear", padding_mode="border", align_corners=False)
        semantic = masked_mean(1.0 - (warped_keys * input_keys).sum(dim=1, keepdim=True), foreground)
        closeness = masked_mean((0.5 * offsets).pow(2).sum(dim=1, keepdim=True), foreground)  # [0, 1] units
        smooth = (
            config.lambda_rigid_global * rigidity_loss(grid, foreground[:, 0], config.global_delta)
            + config.lambda_rigid_local * rigidity_loss(grid, foreground[:, 0], 1)
            + config.lambda_tv * huber_tv(offsets, config.huber_delta)
        )
        loss = semantic + config.lambda_l2 * closeness + smooth
        check_finite(loss, f"coordinate-map fitting diverged at step {step}", {"semantic": semantic, "smooth": smooth})
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        full_offsets = F.interpolate(offsets.detach().cpu(), size=(size, size), mode="bilinear", align_corners=False)
        warp = warps.identity_grid((size, size), N) + full_offsets.permute(0, 2, 3, 1)
        nocs = F.grid_sample(renders["nocs"] * renders["mask"], warp, mode="bilinear", padding_mode="border", align_corners=False)
        covered = F.grid_sample(renders["mask"], warp, mode="bilinear", padding_mode="zeros", align_corners=False)
        nocs = _fill_from_nearest(nocs / covered.clamp_min(1e-6), covered > 0.5)
        valid = (masks > 0.5).float()
    return CoordinateMaps(nocs * valid, valid, warp, renders, losses, time.perf_counter() - start)


def _fill_from_nearest(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Give every pixel of ``values`` ``(N, C, H, W)`` where ``known`` ``(N, 1, H, W)`` is False the
    value of the nearest known pixel: the input's silhouette is never exactly the render's, and a
    foreground pixel the render misses still needs a canonical coordinate."""
    from scipy.ndimage import distance_transform_edt

    filled = values.clone()
    for i in range(values.shape[0]):
        known_i = known[i, 0].cpu().numpy()
        if known_i.all() or not known_i.any():
            continue
        _, (rows, cols) = distance_transform_edt(~known_i, return_indices=True)
        filled[i] = values[i][:, torch.from_numpy(rows), torch.from_numpy(cols)]
    return filled


def transfer_points(maps: CoordinateMaps, source: int, target: int, points: torch.Tensor) -> torch.Tensor:
    """Image-to-image correspondence through the canonical frame: ``Phi_rev_target(Phi_fwd_source(x))``.

    ``Phi_fwd`` is read from the source's NOCS map at the nearest pixel (interpolating would blend
    coordinates across depth edges); ``Phi_rev`` (Eqs. 12-13) is the target's foreground pixel whose
    canonical coordinate is nearest. Taught in Chapter 6, "Canonical coordinates and
    correspondence".

    Args:
        maps: the :class:`CoordinateMaps`.
        source: index of the image the points are in.
        target: index of the image to transfer them to.
        points: pixel ``(x, y)`` ``(K, 2)`` in image ``source``.

    Returns:
        pixel ``(x, y)`` ``(K, 2)`` in image ``target`` (integer pixel centres), dtype of ``points``.

    Example:
        >>> u = torch.linspace(0, 1, 4)
        >>> nocs = torch.stack([u.expand(4, 4), u[:, None].expand(4, 4), torch.zeros(4, 4)])  # x, y, 0
        >>> maps = CoordinateMaps(torch.stack([nocs, nocs.flip(-1)]), torch.ones(2, 1, 4, 4), None, {}, [])
        >>> transfer_points(maps, 0, 1, torch.tensor([[0.0, 2.0]]))    # image 1 is image 0 mirrored
        tensor([[3., 2.]])
    """
    size = maps.nocs.shape[-1]
    if points.shape[0] == 0:
        return points.clone()
    normalised = warps.pixel_to_normalized(points.float()[None], (size, size))
    canonical = F.grid_sample(maps.nocs[source : source + 1], normalised[:, :, None], mode="nearest", align_corners=False)[0, :, :, 0].T  # (K, 3)
    valid = maps.mask[target, 0].flatten() > 0.5
    candidates = maps.nocs[target].flatten(1).T  # (S*S, 3)
    distance = torch.cdist(canonical, candidates)
    distance[:, ~valid] = float("inf")
    best = distance.argmin(dim=1)
    return torch.stack([best % size, best // size], dim=1).to(points.dtype)


def propagate_nocs_edit(maps: CoordinateMaps, images: torch.Tensor, paint) -> torch.Tensor:
    """Paint every image through its canonical coordinates.

    The edit is defined once, in the canonical frame (e.g. "stripes along the shape's x axis"),
    and lands on the same part of the object in every image; it is alpha-composited over the
    foreground only. Taught in Chapter 6, "Edits and pose-aware filtering".

    Args:
        maps: the :class:`CoordinateMaps`.
        images: the inputs ``(N, 3, S, S)``.
        paint: ``paint(nocs (M, 3)) -> rgba (M, 4)`` in ``[0, 1]``, e.g. :func:`stripes_edit`.

    Returns:
        the edited images ``(N, 3, S, S)``.

    Example:
        >>> maps = CoordinateMaps(torch.zeros(1, 3, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]), None, {}, [])
        >>> red = lambda nocs: torch.tensor([1.0, 0.0, 0.0, 1.0]).expand(nocs.shape[0], 4)
        >>> propagate_nocs_edit(maps, torch.zeros(1, 3, 2, 2), red)[0, 0]     # only the foreground pixel
        tensor([[1., 0.],
                [0., 0.]])
    """
    N, _, S, _ = images.shape
    flat = maps.nocs.permute(0, 2, 3, 1).reshape(-1, 3)
    rgba = paint(flat).reshape(N, S, S, 4).permute(0, 3, 1, 2)
    alpha = rgba[:, 3:] * maps.mask
    return images * (1 - alpha) + rgba[:, :3] * alpha


def stripes_edit(axis: int = 0, stripes: int = 5, colour=(0.9, 0.1, 0.6)):
    """A canonical-frame texture for :func:`propagate_nocs_edit`: coloured stripes across one NOCS axis.

    Chapter 6, "Edits and pose-aware filtering".

    Args:
        axis: the NOCS axis (0, 1 or 2) the stripes cross.
        stripes: the number of painted stripes along the axis (as many gaps between them).
        colour: the stripes' RGB in ``[0, 1]``.

    Returns:
        ``paint(nocs (M, 3)) -> rgba (M, 4)``: ``colour`` with alpha 0.8 on a stripe, 0 between.

    Example:
        >>> paint = stripes_edit(axis=0, stripes=1)
        >>> paint(torch.tensor([[0.25, 0.5, 0.5], [0.75, 0.5, 0.5]]))[:, 3]   # first half painted
        tensor([0.8000, 0.0000])
    """
    colour = torch.tensor(colour)

    def paint(nocs: torch.Tensor) -> torch.Tensor:
        on = (torch.floor(nocs[:, axis] * 2 * stripes) % 2 == 0).float()[:, None]
        return torch.cat([colour.to(nocs.device).expand(nocs.shape[0], 3), 0.8 * on], dim=1)

    return paint


def filter_by_pose(c2w: torch.Tensor, azimuth_range=(-90.0, 90.0), elevation_range=(-90.0, 90.0)) -> torch.Tensor:
    """Pose-aware filtering: the cameras whose azimuth and elevation fall in the given ranges.

    Taught in Chapter 6, "Edits and pose-aware filtering".

    Args:
        c2w: cameras ``(N, 4, 4)``.
        azimuth_range: ``(low, high)`` degrees, inclusive (see
            :func:`congealing.congeal3d.camera_angles`).
        elevation_range: ``(low, high)`` degrees, inclusive.

    Returns:
        the indices ``(M,)`` of the cameras kept, ascending.

    Example:
        >>> from congealing.congeal3d import spherical_cameras
        >>> cams = spherical_cameras(torch.tensor([0.0, 120.0, -45.0]), torch.zeros(3), 4.0)
        >>> filter_by_pose(cams, azimuth_range=(-90.0, 90.0))
        tensor([0, 2])
    """
    azimuth, elevation = camera_angles(c2w)
    keep = (azimuth >= azimuth_range[0]) & (azimuth <= azimuth_range[1]) & (elevation >= elevation_range[0]) & (elevation <= elevation_range[1])
    return torch.nonzero(keep).flatten()
