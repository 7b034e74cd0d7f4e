"""Pose search (Algorithm 1, lines 4-7), IoU pose refinement (line 8), and how far cameras are
from the truth (Procrustes-aligned and frame-free errors).

Taught in Chapter 6: the search in "Pose search", the refinement and the Procrustes-aligned errors
in "Pose refinement", the frame-free errors in "From lego to a hand-held capture". Cameras follow
:mod:`congealing.congeal3d.cameras`.

>>> candidate_cameras(Congeal3DConfig.for_mode("quick"))["fov"].shape    # 3 fields of view x 16 x 16
torch.Size([768])
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import warps
from ..errors import InputError
from ..features import extract_descriptors, load_backbone
from ..losses import check_finite
from ..metrics import mask_to_box
from .cameras import camera_rays, focal_length, rotation_angle_deg, se3_exp, spherical_cameras
from .config import Congeal3DConfig
from .field import render, render_rays, soft_iou, VoxelField

__all__ = [
    "check_masks", "square_boxes", "crop_to_boxes", "candidate_cameras", "semantic_distance", "place_camera",
    "render_candidates", "search_poses", "refine_poses", "similarity_procrustes", "relative_pose_errors", "pose_errors",
]


def check_masks(masks: torch.Tensor, names=None) -> None:
    """Stop if an image has no usable foreground mask (fewer than 4 pixels above 0.5).

    3-D congealing needs every object's silhouette; :func:`search_poses`, :func:`refine_poses` and
    :func:`congealing.congeal3d.fit_coordinate_maps` call it first. No chapter section is about it.

    Args:
        masks: masks ``(N, 1, S, S)``.
        names: the images' names for the message (default: their indices).

    Raises:
        InputError: some mask is (almost) empty; the message names the images.

    Example:
        >>> check_masks(torch.ones(2, 1, 4, 4))
        >>> check_masks(torch.zeros(1, 1, 4, 4), names=["empty.png"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        congealing.errors.InputError: no usable foreground mask for image(s) empty.png: ...
    """
    empty = [i for i in range(masks.shape[0]) if float((masks[i] > 0.5).sum()) < 4]
    if empty:
        labels = [names[i] if names else str(i) for i in empty]
        raise InputError(f"no usable foreground mask for image(s) {', '.join(labels)}: 3-D congealing needs the object's silhouette (give RGBA images whose alpha marks the object)")


def square_boxes(masks: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Square boxes around each mask's bounding box, enlarged by ``margin`` of the side on every edge.

    The search compares crops to these boxes (Chapter 6, "Pose search").

    Args:
        masks: masks ``(N, 1, H, W)``.
        margin: the fraction of the side added on every edge.

    Returns:
        the boxes ``(N, 3)``: ``(centre x, centre y, side)`` in pixels.

    Example:
        >>> m = torch.zeros(1, 1, 8, 8); m[0, 0, 2:4, 1:7] = 1
        >>> square_boxes(m, margin=0.0)
        tensor([[3.5000, 2.5000, 6.0000]])
    """
    box = mask_to_box(masks)
    centre = 0.5 * (box[:, :2] + box[:, 2:])
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) + 1.0
    return torch.cat([centre, (side * (1 + 2 * margin))[:, None]], dim=1)


def crop_to_boxes(images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, size: int, background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop images and masks to square boxes, resized to ``size``; outside the mask, ``background``.

    So an input's own background never enters the comparison, as with the paper's segmented inputs.
    Chapter 6, "Pose search".

    Args:
        images: ``(N, C, H, W)``.
        masks: ``(N, 1, H, W)``.
        boxes: ``(N, 3)`` from :func:`square_boxes`.
        size: side of the crops in pixels.
        background: the grey level outside the mask.

    Returns:
        ``(crops (N, C, size, size), crop_masks (N, 1, size, size))``.

    Example:
        >>> images, masks = torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8)
        >>> crops, crop_masks = crop_to_boxes(images, masks, square_boxes(masks, margin=0.0), 4)
        >>> crops.shape, float(crop_masks.min())
        (torch.Size([1, 3, 4, 4]), 1.0)
    """
    N, _, H, W = images.shape
    scale = boxes[:, 2] / W  # a box side relative to the image width, in normalised units
    offset = warps.pixel_to_normalized(boxes[:, None, :2], (H, W))[:, 0]
    boxes = boxes.to(images.device)
    theta = torch.zeros(N, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale * W / H
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, (N, 1, size, size), align_corners=False)
    sampled = F.grid_sample(torch.cat([images * masks, masks], dim=1), grid, mode="bilinear", align_corners=False)
    crop_mask = sampled[:, -1:]
    return sampled[:, :-1] + background * (1 - crop_mask), crop_mask


def candidate_cameras(config: Congeal3DConfig) -> dict:
    """The search grid of Alg. 1: every field of view x azimuth x elevation, at a fixed radius.

    Azimuths are the centres of ``search_azimuths`` equal bins of [-180, 180) degrees and
    elevations of ``search_elevations`` bins of [-90, 90] (bin centres avoid the poles, where the
    camera's roll is undefined). Chapter 6, "Pose search".

    Args:
        config: a :class:`Congeal3DConfig` (``search_fovs_deg``, ``search_azimuths``,
            ``search_elevations``, ``camera_radius``).

    Returns:
        ``c2w`` ``(C, 4, 4)``, ``fov`` ``(C,)`` radians, ``azimuth`` and ``elevation`` ``(C,)``
        degrees, with ``C`` = fields of view x azimuths x elevations.

    Example:
        >>> candidate_cameras(Congeal3DConfig())["c2w"].shape
        torch.Size([768, 4, 4])
    """
    azimuths = -180.0 + (torch.arange(config.search_azimuths) + 0.5) * 360.0 / config.search_azimuths
    elevations = -90.0 + (torch.arange(config.search_elevations) + 0.5) * 180.0 / config.search_elevations
    fov, az, el = torch.meshgrid(torch.tensor(config.search_fovs_deg), azimuths, elevations, indexing="ij")
    fov, az, el = fov.reshape(-1), az.reshape(-1), el.reshape(-1)
    return {"c2w": spherical_cameras(az, el, config.camera_radius), "fov": torch.deg2rad(fov), "azimuth": az, "elevation": el}


def semantic_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's Eqs. 6-7: mean per-pixel cosine distance between unit descriptor maps.

    Taught in Chapter 6, "Pose search".

    Args:
        a: unit descriptors ``(N, D, h, w)`` (e.g. the inputs').
        b: unit descriptors ``(C, D, h, w)`` (e.g. the candidate renders').

    Returns:
        the distances ``(N, C)``, clamped at 0.

    Example:
        >>> d = F.normalize(torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> bool(torch.allclose(semantic_distance(d, d).diagonal(), torch.zeros(2), atol=1e-6))
        True
    """
    N, D, h, w = a.shape
    similarity = torch.einsum("ndp,cdp->nc", a.reshape(N, D, h * w), b.reshape(b.shape[0], D, h * w)) / (h * w)
    return (1.0 - similarity).clamp_min(0.0)


def place_camera(c2w: torch.Tensor, fov: torch.Tensor, render_boxes: torch.Tensor, render_size: int, target_boxes: torch.Tensor, target_size: int) -> torch.Tensor:
    """Move cameras so the object they render lands where it is in the target image.

    The search compares crops, so a chosen candidate says where the camera *looks from* but not
    how far away it is or where the object sits in the uncropped input. Under weak perspective,
    moving the camera back by a factor ``k`` shrinks the object by ``k``, and sliding it sideways
    shifts the object in the image; both are solved from the two square boxes. Orientation and field
    of view are kept. Taught in Chapter 6, "Pose search".

    Args:
        c2w: the candidates' cameras ``(B, 4, 4)``.
        fov: their field of view in radians ``(B,)``.
        render_boxes: :func:`square_boxes` of the candidates' renders ``(B, 3)``.
        render_size: side of the renders in pixels.
        target_boxes: :func:`square_boxes` of the inputs ``(B, 3)``.
        target_size: side of the inputs in pixels.

    Returns:
        the placed cameras ``(B, 4, 4)``.

    Example:
        >>> c2w = spherical_cameras(torch.tensor([30.0]), torch.tensor([10.0]), 4.0)
        >>> box = torch.tensor([[31.5, 31.5, 20.0]])                  # centred, as in the render
        >>> bool(torch.allclose(place_camera(c2w, torch.tensor([0.7]), box, 64, box, 64), c2w, atol=1e-6))
        True
    """
    focal_r = focal_length(fov, render_size).reshape(-1, 1)
    focal_t = focal_length(fov, target_size).reshape(-1, 1)
    offset_r = (render_boxes[:, :2] - 0.5 * (render_size - 1)) / focal_r  # tangent-plane units
    offset_t = (target_boxes[:, :2] - 0.5 * (target_size - 1)) / focal_t
    side_r, side_t = render_boxes[:, 2:] / focal_r, target_boxes[:, 2:] / focal_t
    distance = (c2w[:, :3, 3]).norm(dim=-1, keepdim=True)
    new_distance = distance * side_r / side_t
    shift = offset_t - offset_r * distance / new_distance  # what the sideways move must add
    axes = c2w[:, :3, :3]
    move = (new_distance - distance) * axes[:, :, 2] - shift[:, :1] * new_distance * axes[:, :, 0] + shift[:, 1:] * new_distance * axes[:, :, 1]
    placed = c2w.clone()
    placed[:, :3, 3] = c2w[:, :3, 3] + move
    return placed


@torch.no_grad()
def render_candidates(field: VoxelField, config: Congeal3DConfig, batch: int = 32) -> dict:
    """Render every search candidate once (shared by all inputs).

    Renders are made on the field's device and returned on the CPU. Chapter 6, "Pose search".

    Args:
        field: the canonical :class:`VoxelField`.
        config: a :class:`Congeal3DConfig` (the candidate grid, ``search_render_size`` ``s``,
            ``search_samples``).
        batch: candidates rendered at once.

    Returns:
        the cameras of :func:`candidate_cameras` plus ``rgb`` ``(C, 3, s, s)`` and ``mask``
        ``(C, 1, s, s)``.

    Example:
        >>> config = Congeal3DConfig(search_fovs_deg=(60.0,), search_azimuths=2, search_elevations=2,
        ...                          search_render_size=4, search_samples=4)
        >>> out = render_candidates(VoxelField(resolution=4), config)
        >>> out["rgb"].shape, out["mask"].shape
        (torch.Size([4, 3, 4, 4]), torch.Size([4, 1, 4, 4]))
    """
    cameras = candidate_cameras(config)
    size, device = config.search_render_size, field.density.device
    rgb, mask = [], []
    for start in range(0, cameras["c2w"].shape[0], batch):
        chunk = slice(start, start + batch)
        out = render(field, cameras["c2w"][chunk].to(device), cameras["fov"][chunk].to(device), size, config.search_samples)
        rgb.append(out["rgb"].cpu())
        mask.append(out["mask"].cpu())
    return {**cameras, "rgb": torch.cat(rgb), "mask": torch.cat(mask)}


@torch.no_grad()
def search_poses(field: VoxelField, images: torch.Tensor, masks: torch.Tensor, config: Congeal3DConfig, backbone=None, candidates: dict | None = None) -> dict:
    """Pose initialisation (Alg. 1, lines 4-7): the candidate camera whose render is semantically closest.

    Renders and inputs are cropped to their mask boxes (:func:`crop_to_boxes`) and compared by
    :func:`semantic_distance` of ``backbone`` descriptors; a candidate that renders nothing is never
    chosen. The winner is then placed to frame the object as the input does (:func:`place_camera`).
    Taught in Chapter 6, "Pose search".

    Args:
        field: the canonical :class:`VoxelField`.
        images: inputs ``(N, 3, S, S)``.
        masks: their masks ``(N, 1, S, S)``.
        config: a :class:`Congeal3DConfig`.
        backbone: a :class:`congealing.features.Backbone`, a backbone name, or None (the default one).
        candidates: the output of :func:`render_candidates`, to reuse (default: rendered here).

    Returns:
        ``c2w`` ``(N, 4, 4)``, ``fov`` ``(N,)``, ``index`` ``(N,)`` (the chosen candidate),
        ``distance`` ``(N, C)`` (the landscape), ``candidates`` and ``seconds``.

    Raises:
        InputError: an input has no usable mask (:func:`check_masks`).
    """
    check_masks(masks)
    start = time.perf_counter()
    backbone = load_backbone(backbone) if backbone is None or isinstance(backbone, str) else backbone
    candidates = render_candidates(field, config) if candidates is None else candidates
    usable = candidates["mask"].flatten(1).amax(dim=1) > 0.5
    render_boxes = square_boxes(candidates["mask"], config.crop_margin)
    render_crops, _ = crop_to_boxes(candidates["rgb"], candidates["mask"], render_boxes, config.crop_size)
    input_boxes = square_boxes(masks, config.crop_margin)
    input_crops, _ = crop_to_boxes(images, masks, input_boxes, config.crop_size)
    grid, size = config.descriptor_grid, config.crop_size
    render_keys = extract_descriptors(render_crops, backbone, grid=grid, input_size=size, cache=False)
    input_keys = extract_descriptors(input_crops, backbone, grid=grid, input_size=size, cache=False)
    distance = semantic_distance(input_keys, render_keys)
    distance[:, ~usable] = float("inf")  # a candidate that sees nothing cannot explain an input
    index = distance.argmin(dim=1)
    c2w = place_camera(candidates["c2w"][index], candidates["fov"][index], render_boxes[index], config.search_render_size, input_boxes, images.shape[-1])
    return {"c2w": c2w, "fov": candidates["fov"][index].clone(), "index": index, "distance": distance, "candidates": candidates, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- pose refinement


def refine_poses(field: VoxelField, masks: torch.Tensor, c2w: torch.Tensor, fov: torch.Tensor, config: Congeal3DConfig, snapshots: int = 10, progress=None, valid: torch.Tensor | None = None) -> dict:
    """Pose refinement (Alg. 1, line 8; Eq. 8 with lambda_zeta = 0, lambda_IoU = 1).

    Each camera is ``c2w @ exp(xi)`` with ``xi`` in se(3) (:func:`se3_exp`, zero at the start) and
    its field of view ``fov * exp(phi)``; Adam minimises ``1 - IoU`` between the rendered opacity
    and the input mask over ``rays_per_image`` random pixels per image and step. The field is
    frozen (and left as the caller had it). Seeded by ``config.seed``. Taught in Chapter 6, "Pose
    refinement".

    Args:
        field: the canonical :class:`VoxelField`.
        masks: the inputs' masks ``(N, 1, S, S)``.
        c2w: the starting cameras ``(N, 4, 4)`` (e.g. :func:`search_poses`').
        fov: their field of view in radians ``(N,)`` or a number.
        config: a :class:`Congeal3DConfig` (``refine_steps``, ``refine_lr``, ``rays_per_image``,
            ``refine_fov``, ``samples_per_ray``).
        snapshots: how many cameras of the trajectory to keep besides the start.
        progress: ``progress(iterable, desc=...)`` wrapping the steps (e.g. tqdm), or None.
        valid: ``(N, 1, S, S)``, the pixels that lie inside each photo
            (:func:`congealing.congeal3d.captures.square_views`); the IoU ignores the others, where the
            object may continue unseen (default: every pixel counts).

    Returns:
        the refined ``c2w`` ``(N, 4, 4)`` and ``fov`` ``(N,)``, the per-step mean ``loss``,
        ``trajectory`` (the cameras at the start and every ``refine_steps // snapshots`` steps) and
        ``seconds``; all on the CPU.

    Raises:
        InputError: an input has no usable mask (:func:`check_masks`).
        FloatingPointError: the loss is not finite (the message names the step).
    """
    check_masks(masks)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    N, size, device = masks.shape[0], masks.shape[-1], field.density.device
    masks, c2w, fov = masks.to(device), c2w.to(device), torch.as_tensor(fov, dtype=torch.float32).to(device)
    trainable = [p.requires_grad for p in field.parameters()]
    field.requires_grad_(False)
    xi = torch.zeros(N, 6, device=device, requires_grad=True)
    log_fov = torch.zeros(N, device=device, requires_grad=True)
    params = [xi, log_fov] if config.refine_fov else [xi]
    optimiser = torch.optim.Adam(params, lr=config.refine_lr)
    flat_masks = masks.reshape(N, -1)
    flat_valid = None if valid is None else (valid.to(device) > 0.5).float().reshape(N, -1)
    every = max(1, config.refine_steps // max(1, snapshots))
    trajectory, losses = [c2w.cpu()], []
    current = lambda: (c2w @ se3_exp(xi), fov * log_fov.exp())
    steps = range(config.refine_steps) if progress is None else progress(range(config.refine_steps), desc="refine")
    try:
        for step in steps:
            picked = torch.randint(0, size * size, (N, config.rays_per_image), generator=generator).to(device)
            pixels = torch.stack([picked % size, picked // size], dim=-1).float()
            cams, fovs = current()
            origins, directions = camera_rays(cams, fovs, size, pixels)
            out = render_rays(field, origins.reshape(-1, 3), directions.reshape(-1, 3), config.samples_per_ray)
            opacity, target = out["opacity"].reshape(N, -1), flat_masks.gather(1, picked)
            if flat_valid is not None:
                weight = flat_valid.gather(1, picked)
                opacity, target = opacity * weight, target * weight
            iou = soft_iou(opacity, target)
            loss = (1.0 - iou).mean()
            check_finite(loss, f"pose refinement diverged at step {step}", {"1 - IoU": loss})
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            if (step + 1) % every == 0:
                trajectory.append(current()[0].detach().cpu())
    finally:
        for p, flag in zip(field.parameters(), trainable):
            p.requires_grad_(flag)
    cams, fovs = current()
    return {"c2w": cams.detach().cpu(), "fov": fovs.detach().cpu(), "loss": losses, "trajectory": trajectory, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- how far from the truth


def similarity_procrustes(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity ``target ~ s R source + t`` between point sets (Umeyama).

    :func:`pose_errors` aligns the predicted camera centres to the true ones with it (Chapter 6,
    "Pose refinement").

    Args:
        source: points ``(N, 3)``.
        target: points ``(N, 3)``.

    Returns:
        ``(s, R, t)``: the scale (a scalar tensor), a rotation ``(3, 3)`` (det +1) and ``t`` ``(3,)``.

    Example:
        >>> p = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
        >>> R = se3_exp(torch.tensor([[0.1, 0.2, 0.3, 0, 0, 0]]))[0, :3, :3]
        >>> s, R_hat, t = similarity_procrustes(p, 2 * p @ R.T + 1)
        >>> bool(torch.allclose(R_hat, R, atol=1e-4)), round(s.item(), 4)
        (True, 2.0)
    """
    mu_s, mu_t = source.mean(dim=0), target.mean(dim=0)
    xs, xt = source - mu_s, target - mu_t
    covariance = xt.T @ xs / source.shape[0]
    U, S, Vh = torch.linalg.svd(covariance)
    sign = torch.ones(3, dtype=source.dtype, device=source.device)
    sign[2] = torch.sign(torch.det(U @ Vh))
    R = U @ torch.diag(sign) @ Vh
    s = (S * sign).sum() / xs.pow(2).sum(dim=1).mean()
    return s, R, mu_t - s * R @ mu_s


def relative_pose_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict:
    """Frame-free camera errors over all pairs of cameras ``i < j``.

    No alignment between the two frames is fitted, so the numbers cannot be flattered or spoiled
    by a degenerate fit (cameras on a short arc make the centre Procrustes of :func:`pose_errors`
    ill-posed). Relative rotation error: the angle between the predicted and the true rotation
    from camera ``j`` to camera ``i`` (``R_i^T R_j``). View-angle error: how far the predicted
    angle between the two viewing directions is from the true one. Taught in Chapter 6, "From lego
    to a hand-held capture".

    Args:
        predicted: camera-to-world matrices ``(N, 4, 4)``, ``N >= 2``.
        truth: the true ones ``(N, 4, 4)``.

    Returns:
        ``relative_rotation_mean``, ``_median`` and ``_max``, ``view_angle_mean`` and ``_median``,
        all in degrees.

    Example:
        >>> from congealing.congeal3d import look_at
        >>> cams = look_at(torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]))
        >>> turned = se3_exp(torch.tensor([[0.3, -0.2, 0.7, 1.0, 0.0, 0.0]])) @ cams  # the whole scene moved
        >>> round(relative_pose_errors(turned, cams)["relative_rotation_max"], 3)  # is no error
        0.0
    """
    N = predicted.shape[0]
    i, j = torch.triu_indices(N, N, offset=1)
    R_pred, R_true = predicted[:, :3, :3].double(), truth[:, :3, :3].double()
    relative = rotation_angle_deg(R_pred[i].transpose(1, 2) @ R_pred[j], R_true[i].transpose(1, 2) @ R_true[j])
    view_pred, view_true = -R_pred[:, :, 2], -R_true[:, :, 2]  # cameras look down their -z axis (OpenGL)
    angle = lambda v: torch.rad2deg(torch.arccos((v[i] * v[j]).sum(-1).clamp(-1.0, 1.0)))
    view = (angle(view_pred) - angle(view_true)).abs()
    return {
        "relative_rotation_mean": float(relative.mean()), "relative_rotation_median": float(relative.median()),
        "relative_rotation_max": float(relative.max()),
        "view_angle_mean": float(view.mean()), "view_angle_median": float(view.median()),
    }


def pose_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict:
    """Rotation and translation errors of cameras after a similarity Procrustes alignment of their centres.

    The paper's Table 1 protocol: the predicted camera centres are aligned to the true ones
    (:func:`similarity_procrustes`); the rotation error is the angle between the aligned predicted
    and the true rotation, the translation error the distance between the aligned and the true
    centre. The frame-free errors of :func:`relative_pose_errors` come beside them. Taught in
    Chapter 6, "Pose search" and "Pose refinement".

    Args:
        predicted: camera-to-world matrices ``(N, 4, 4)``; the alignment is well posed only for at
            least 3 centres that are not collinear.
        truth: the true ones ``(N, 4, 4)``.

    Returns:
        ``rotation_deg`` and ``translation`` (per-view lists, degrees and scene units), their
        ``_mean`` and ``_median``, ``procrustes_scale`` (far from 1 warns that the alignment
        degenerated) and the entries of :func:`relative_pose_errors`.

    Example:
        >>> cams = spherical_cameras(torch.tensor([0.0, 90.0, 200.0]), torch.tensor([0.0, 30.0, -20.0]), 4.0)
        >>> errors = pose_errors(cams, cams)
        >>> round(errors["rotation_mean"], 2), round(errors["translation_mean"], 4), round(errors["procrustes_scale"], 4)
        (0.0, 0.0, 1.0)
    """
    s, R, t = similarity_procrustes(predicted[:, :3, 3].double(), truth[:, :3, 3].double())
    aligned_rotations = R.float() @ predicted[:, :3, :3]
    aligned_centres = (s * predicted[:, :3, 3].double() @ R.T + t).float()
    rotation = rotation_angle_deg(aligned_rotations, truth[:, :3, :3])
    translation = (aligned_centres - truth[:, :3, 3]).norm(dim=-1)
    return {
        "rotation_deg": rotation.tolist(), "translation": translation.tolist(),
        "rotation_mean": float(rotation.mean()), "rotation_median": float(rotation.median()),
        "translation_mean": float(translation.mean()), "translation_median": float(translation.median()),
        "procrustes_scale": float(s), **relative_pose_errors(predicted, truth),
    }
