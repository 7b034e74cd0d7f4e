"""The canonical shape: a voxel radiance field with a NOCS field, its volume renderer, and the
offline route that fits it to anchor views with known cameras (visual hull, checks, save and load).

Taught in Chapter 6: the field and its renderer in "Cameras and rendering", the offline shape fit
and the visual hull in "The canonical shape, two routes", the shape checks in "From lego to a
hand-held capture". Cameras follow :mod:`congealing.congeal3d.cameras`.

>>> field = VoxelField(resolution=4, bound=1.0)
>>> density, colour = field.query(torch.zeros(2, 3))
>>> density.shape, colour.shape, round(float(density[0].detach()), 4)    # untrained: almost empty
(torch.Size([2]), torch.Size([2, 3]), 0.0181)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import warps
from ..errors import CheckpointError, InputError
from ..losses import check_finite
from .cameras import camera_rays, project_points
from .config import Congeal3DConfig, SHAPE_FORMAT_VERSION

__all__ = [
    "VoxelField", "render_rays", "render", "choose_anchor_views", "farthest_points", "fit_shape", "MIN_ANCHOR_IOU",
    "check_shape", "carve_visual_hull", "silhouette_iou", "soft_iou", "density_from_raw", "surface_points",
    "set_shape_box", "save_shape", "load_shape",
]


def density_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """The field's density from its raw grid values: ``softplus(raw - 4)``.

    So an untrained field (raw 0) is almost empty (density 0.018). :class:`VoxelField`'s density;
    Chapter 6, "Cameras and rendering" introduces the field.

    Args:
        raw: raw density values, any shape.

    Returns:
        the non-negative densities, shaped like ``raw``.

    Example:
        >>> float(density_from_raw(torch.tensor(4.0)))  # softplus(0) = log 2
        0.6931471824645996
    """
    return F.softplus(raw - 4.0)


def surface_points(field: "VoxelField", level: float = 5.0) -> torch.Tensor:
    """World points on the shape's surface: the marching-cubes vertices of the density grid.

    :func:`set_shape_box` measures the shape's box from them; :mod:`congealing.lego` places its
    surface keypoints on them (Chapter 6, "From 2-D to 3-D").

    Args:
        field: the :class:`VoxelField`.
        level: the density of the surface.

    Returns:
        the vertices ``(M, 3)`` in world coordinates.

    Raises:
        ValueError: no voxel is denser than ``level`` (the shape is empty).

    Example:
        >>> field = VoxelField(resolution=8, bound=1.0)
        >>> with torch.no_grad(): field.density[..., 2:6, 2:6, 2:6] = 20.0     # a dense cube
        >>> points = surface_points(field)
        >>> bool(points.abs().max() < 1.0), points.shape[1]
        (True, 3)
    """
    from skimage.measure import marching_cubes  # scikit-image: only the shape's surface needs it

    density = field.density_grid().cpu().numpy()  # indexed [z, y, x]
    if density.max() <= level:
        raise ValueError(f"the field has no density above {level}: the shape is empty (did fitting fail?)")
    vertices, _, _, _ = marching_cubes(density, level=level)
    xyz = torch.from_numpy(vertices[:, ::-1].copy()).float()  # (z, y, x) -> (x, y, z)
    return xyz / (field.resolution - 1) * 2 * field.bound - field.bound


class VoxelField(nn.Module):
    """A dense voxel radiance field over ``[-bound, bound]^3`` (DVGO / Plenoxels style).

    Density and colour live on a ``resolution^3`` grid, read by trilinear interpolation; density is
    ``softplus(raw - 4)`` (:func:`density_from_raw`, so an untrained field is almost empty) and colour
    ``sigmoid(raw)``. The canonical-coordinate (NOCS) field of the paper's Eq. 11 is
    ``(p - p_min) / (p_max - p_min)`` over the shape's bounding box ``box_min``, ``box_max`` (buffers;
    set by :func:`set_shape_box`). The paper's field is a NeRF MLP; why a grid here is taught in
    Chapter 6, "Cameras and rendering".

    Args:
        resolution: voxels per side ``R``.
        bound: half the side of the cube the field fills.

    Attributes:
        density: raw densities ``(1, 1, R, R, R)`` indexed ``[z, y, x]`` (a parameter).
        colour: raw colours ``(1, 3, R, R, R)`` (a parameter).
        box_min, box_max: the shape's bounding box ``(3,)`` (buffers; the whole cube until measured).

    Example:
        >>> field = VoxelField(resolution=4, bound=1.0)
        >>> field.resolution, field.nocs(torch.tensor([[0.0, 0.0, 0.0]]))
        (4, tensor([[0.5000, 0.5000, 0.5000]]))
    """

    def __init__(self, resolution: int = 128, bound: float = 1.5):
        super().__init__()
        self.bound = float(bound)
        self.density = nn.Parameter(torch.zeros(1, 1, resolution, resolution, resolution))
        self.colour = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))
        self.register_buffer("box_min", torch.full((3,), -bound))
        self.register_buffer("box_max", torch.full((3,), bound))

    @property
    def resolution(self) -> int:
        """Voxels per side of the grid."""
        return self.density.shape[-1]

    def _sample(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # grid_sample's last coordinate axis is (x, y, z) -> (W, H, D): the grid is stored [z, y, x]
        coords = (points / self.bound).reshape(1, 1, 1, -1, 3)
        values = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
        return values.reshape(grid.shape[1], -1).T

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density ``(M,)`` and colour ``(M, 3)`` at world points ``(M, 3)`` (zero density outside the cube)."""
        raw = self._sample(torch.cat([self.density, self.colour], dim=1), points)
        return density_from_raw(raw[:, 0]), torch.sigmoid(raw[:, 1:])

    def density_grid(self) -> torch.Tensor:
        """The density of every voxel ``(R, R, R)``, indexed ``[z, y, x]`` (detached)."""
        return density_from_raw(self.density[0, 0].detach())

    def nocs(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical coordinates ``(M, 3)`` in ``[0, 1]`` of world points ``(M, 3)`` (Eq. 11), clamped to the box."""
        return ((points - self.box_min) / (self.box_max - self.box_min).clamp_min(1e-6)).clamp(0.0, 1.0)


def _ray_box(origins: torch.Tensor, directions: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances ``(..., )`` of rays through the cube ``[-bound, bound]^3`` (slab method)."""
    inverse = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) * inverse, (bound - origins) * inverse
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, torch.maximum(far, near)


def render_rays(field: VoxelField, origins: torch.Tensor, directions: torch.Tensor, samples: int, background: float = 1.0, jitter: bool = False) -> dict:
    """Volume-render rays through a field (the paper's Eq. 9).

    ``samples`` points are spread evenly over each ray's segment inside the field's cube
    (stratified when ``jitter``), and composited front to back. Differentiable in the field and the
    rays. Taught in Chapter 6, "Cameras and rendering".

    Args:
        field: the :class:`VoxelField`.
        origins: ray origins ``(R, 3)``.
        directions: unit ray directions ``(R, 3)``.
        samples: samples per ray.
        background: the grey level composited behind the field.
        jitter: draw each sample uniformly within its stratum (training) instead of at its centre.

    Returns:
        ``rgb`` ``(R, 3)`` (composited over ``background``), ``opacity`` ``(R,)`` (the accumulated
        alpha: the rendered mask), ``depth`` ``(R,)`` (expected distance along the ray) and ``nocs``
        ``(R, 3)`` (expected canonical coordinate, divided by the opacity).

    Example:
        >>> field = VoxelField(resolution=4, bound=1.0)
        >>> out = render_rays(field, torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]]), 8)
        >>> out["opacity"].shape, bool(out["opacity"] < 0.05)     # an untrained field is almost empty
        (torch.Size([1]), True)
    """
    near, far = _ray_box(origins, directions, field.bound)
    steps = (torch.arange(samples, dtype=origins.dtype, device=origins.device) + 0.5) / samples
    if jitter:
        steps = steps + (torch.rand(origins.shape[0], samples, device=origins.device) - 0.5) / samples
    t = near[:, None] + (far - near)[:, None] * steps  # (R, S)
    points = origins[:, None] + directions[:, None] * t[..., None]
    density, colour = field.query(points.reshape(-1, 3))
    delta = ((far - near) / samples)[:, None]
    alpha = 1.0 - torch.exp(-density.reshape(t.shape) * delta)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-10], dim=1), dim=1)
    weights = alpha * transmittance
    opacity = weights.sum(dim=1)
    rgb = (weights[..., None] * colour.reshape(*t.shape, 3)).sum(dim=1) + background * (1.0 - opacity[:, None])
    nocs = (weights[..., None] * field.nocs(points.reshape(-1, 3)).reshape(*t.shape, 3)).sum(dim=1) / opacity[:, None].clamp_min(1e-6)
    depth = (weights * t).sum(dim=1) / opacity.clamp_min(1e-6)
    return {"rgb": rgb, "opacity": opacity, "depth": depth, "nocs": nocs}


def render(field: VoxelField, c2w: torch.Tensor, fov, size: int, samples: int = 64, background: float = 1.0, chunk: int = 16384) -> dict:
    """Render square views of a field from cameras.

    Rays (:func:`congealing.congeal3d.camera_rays`) are rendered in chunks of ``chunk`` so memory
    stays bounded for any batch; differentiable. Chapter 6 renders with it throughout, first in
    "The canonical shape, two routes".

    Args:
        field: the :class:`VoxelField`.
        c2w: cameras ``(B, 4, 4)``.
        fov: field of view in radians, a number or ``(B,)``.
        size: image side ``S`` in pixels.
        samples: samples per ray.
        background: the grey level composited behind the field.
        chunk: rays rendered at once.

    Returns:
        ``rgb`` ``(B, 3, S, S)``, ``mask`` ``(B, 1, S, S)`` (opacity), ``depth`` ``(B, 1, S, S)``
        (distance along each pixel's ray) and ``nocs`` ``(B, 3, S, S)``.

    Example:
        >>> field = VoxelField(resolution=8, bound=1.0)
        >>> from congealing.congeal3d import spherical_cameras
        >>> out = render(field, spherical_cameras(torch.tensor([0.0]), torch.tensor([30.0]), 3.0), 0.7, 4, samples=8)
        >>> out["rgb"].shape, out["mask"].shape
        (torch.Size([1, 3, 4, 4]), torch.Size([1, 1, 4, 4]))
    """
    origins, directions = camera_rays(c2w, fov, size)
    B = c2w.shape[0]
    flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    pieces = [render_rays(field, flat_o[i : i + chunk], flat_d[i : i + chunk], samples, background) for i in range(0, flat_o.shape[0], chunk)]
    out = {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}
    as_image = lambda x, c: x.reshape(B, size, size, c).permute(0, 3, 1, 2)
    return {"rgb": as_image(out["rgb"], 3), "mask": as_image(out["opacity"], 1), "depth": as_image(out["depth"], 1), "nocs": as_image(out["nocs"], 3)}


# ----------------------------------------------------------------------------- the shape (offline route)


def silhouette_iou(rendered: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of rendered opacities and masks, both thresholded at 0.5.

    ``congeal align --method congeal3d`` reports it per image (:mod:`congealing.align`); no
    chapter section uses it.

    Args:
        rendered: opacities ``(N, 1, S, S)``.
        masks: masks ``(N, 1, S, S)``.

    Returns:
        the IoU of every pair ``(N,)``; 0 where both are empty.

    Example:
        >>> silhouette_iou(torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
        tensor([0.5000])
    """
    a, b = rendered.flatten(1) > 0.5, masks.flatten(1) > 0.5
    return (a & b).sum(1).float() / (a | b).sum(1).clamp_min(1).float()


def soft_iou(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft IoU of opacities and masks in ``[0, 1]`` (the paper's mask term).

    ``sum(a b) / sum(a + b - a b)`` per row; differentiable, so pose refinement descends on
    ``1 - soft_iou`` (Chapter 6, "Pose refinement"). "The canonical shape, two routes" scores the
    held-out views with it.

    Args:
        rendered: opacities ``(B, R)``.
        target: masks ``(B, R)``.

    Returns:
        the soft IoU of every row ``(B,)``.

    Example:
        >>> soft_iou(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
        tensor([0.5000])
    """
    intersection = (rendered * target).sum(dim=1)
    union = (rendered + target - rendered * target).sum(dim=1)
    return intersection / union.clamp_min(1e-6)


def choose_anchor_views(c2w: torch.Tensor, count: int, whole: torch.Tensor | None = None) -> list[int]:
    """Indices of cameras spread over the sphere (farthest-point sampling of their centres' directions).

    On a hand-held capture the extreme views are often close-ups, and the visual hull of a view that
    cuts the object off cuts the shape too; ``whole`` restricts the anchors to views that show the
    whole object (see :func:`congealing.congeal3d.captures.object_is_whole`). Chapter 6, "The
    canonical shape, two routes" and "From lego to a hand-held capture".

    Args:
        c2w: cameras ``(N, 4, 4)``.
        count: the number of anchors wanted.
        whole: ``(N,)`` bool, the views that may be anchors (default: all).

    Returns:
        ``min(count, allowed views)`` indices, starting at the first allowed view.

    Raises:
        InputError: fewer than 2 views (or ``count``, if smaller) are allowed.

    Example:
        >>> from congealing.congeal3d import spherical_cameras
        >>> cams = spherical_cameras(torch.tensor([0.0, 5.0, 180.0]), torch.zeros(3), 4.0)
        >>> choose_anchor_views(cams, 2), choose_anchor_views(cams, 2, whole=torch.tensor([True, True, False]))
        ([0, 2], [0, 1])
    """
    allowed = torch.ones(c2w.shape[0], dtype=torch.bool) if whole is None else whole.bool().cpu()
    if int(allowed.sum()) < min(2, count):
        raise InputError(
            f"only {int(allowed.sum())} of {c2w.shape[0]} views show the whole object (its mask keeps clear of the picture's edge): "
            "the shape needs at least 2 such views; add photos taken from farther away"
        )
    centres = F.normalize(c2w[:, :3, 3], dim=-1)
    return farthest_points(centres, min(count, int(allowed.sum())), int(torch.nonzero(allowed)[0]), allowed)


def farthest_points(points: torch.Tensor, count: int, first: int = 0, allowed: torch.Tensor | None = None) -> list[int]:
    """Indices of points spread out by farthest-point sampling.

    Starting from ``first``, each next point is the one farthest from those chosen. Chapter 6: the
    anchor views of "The canonical shape, two routes" (:func:`choose_anchor_views`) and the lego's
    surface keypoints of "From 2-D to 3-D" (:mod:`congealing.lego`).

    Args:
        points: ``(P, D)``.
        count: the number of indices wanted; must not exceed the allowed points.
        first: the index to start from.
        allowed: ``(P,)`` bool, the only candidates (default: all).

    Returns:
        ``count`` indices, ``first`` first.

    Example:
        >>> farthest_points(torch.tensor([[0.0], [1.0], [0.9], [0.5]]), 3)
        [0, 1, 3]
    """
    allowed = torch.ones(points.shape[0], dtype=torch.bool) if allowed is None else allowed
    chosen = [first]
    distance = (points - points[first]).norm(dim=-1)
    distance[~allowed] = -1.0
    while len(chosen) < count:
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).norm(dim=-1))
        distance[~allowed] = -1.0
    return chosen


def _total_variation(grid: torch.Tensor) -> torch.Tensor:
    return sum((grid.diff(dim=d) ** 2).mean() for d in (2, 3, 4))


def fit_shape(images: torch.Tensor, masks: torch.Tensor, c2w: torch.Tensor, fov, config: Congeal3DConfig, progress=None, device=None) -> VoxelField:
    """The offline stand-in for the generative shape prior: fit a :class:`VoxelField` to anchor views.

    Each step renders ``rays_per_step`` random rays of the anchors; the loss is the photometric L2
    error, plus ``mask_weight`` x the L2 error of the rendered opacity against the mask, plus
    ``tv_weight`` x the total variation of the grids, minimised by Adam at ``shape_lr``. Then the
    visual hull is carved (:func:`carve_visual_hull`), the shape's box is measured and checked
    (:func:`check_shape`), and the IoU of the shape's rendered silhouettes with the anchor masks must
    reach :data:`MIN_ANCHOR_IOU`. Seeded by ``config.seed``. Taught in Chapter 6, "The canonical
    shape, two routes".

    Args:
        images: anchor views ``(A, 3, S, S)`` composited over white.
        masks: their masks ``(A, 1, S, S)``.
        c2w: their known cameras ``(A, 4, 4)``.
        fov: their field of view in radians, a number or ``(A,)``.
        config: a :class:`Congeal3DConfig`.
        progress: ``progress(iterable, desc=...)`` wrapping the steps (e.g. tqdm), or None.
        device: where to fit (default: the CPU); the field stays there.

    Returns:
        the fitted :class:`VoxelField`, its box set.

    Raises:
        ValueError: fewer than 2 anchor views.
        FloatingPointError: the loss is not finite.
        InputError: the shape is empty or collapsed, or its silhouettes' mean IoU with the anchor
            masks is below :data:`MIN_ANCHOR_IOU` (the anchors' cameras, field of view and masks do
            not agree on one object, or an anchor cuts the object off).
    """
    if images.shape[0] < 2:
        raise ValueError(f"fit_shape needs at least 2 anchor views with known cameras, got {images.shape[0]}")
    generator = torch.Generator().manual_seed(config.seed)
    size = images.shape[-1]
    device = torch.device(device or "cpu")
    field = VoxelField(config.grid_resolution, config.bound).to(device)
    images, masks, c2w = images.to(device), masks.to(device), c2w.to(device)
    fov = fov.to(device) if torch.is_tensor(fov) else fov
    origins, directions = camera_rays(c2w, fov, size)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    colours = images.permute(0, 2, 3, 1).reshape(-1, 3)
    opacities = masks.reshape(-1)
    optimiser = torch.optim.Adam(field.parameters(), lr=config.shape_lr)
    steps = range(config.shape_steps) if progress is None else progress(range(config.shape_steps), desc="shape")
    for step in steps:
        batch = torch.randint(0, origins.shape[0], (config.rays_per_step,), generator=generator).to(device)
        out = render_rays(field, origins[batch], directions[batch], config.samples_per_ray, jitter=True)
        loss = F.mse_loss(out["rgb"], colours[batch]) + config.mask_weight * F.mse_loss(out["opacity"], opacities[batch])
        loss = loss + config.tv_weight * (_total_variation(field.density) + _total_variation(field.colour))
        check_finite(loss, f"shape fitting diverged at step {step}", {"loss": loss})
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    carved = carve_visual_hull(field, masks, c2w, fov)
    check_shape(field, config.density_threshold, carved)
    with torch.no_grad():
        rendered = torch.cat([render(field, c2w[i : i + 8], fov if not torch.is_tensor(fov) or fov.ndim == 0 else fov[i : i + 8], size, config.samples_per_ray)["mask"] for i in range(0, c2w.shape[0], 8)])
        iou = soft_iou(rendered.flatten(1), masks.flatten(1).float())
    if float(iou.mean()) < MIN_ANCHOR_IOU:
        raise InputError(
            f"the shape fitted to the anchor views does not reproduce their silhouettes (mean mask IoU {float(iou.mean()):.2f}, "
            f"worst {float(iou.min()):.2f} for anchor {int(iou.argmin())}): the anchors' cameras, field of view and masks do not agree "
            "on one object, or an anchor cuts the object off (its visual hull then cuts the shape)"
        )
    return field


#: :func:`fit_shape` stops below this mean IoU of the fitted shape's silhouettes with the anchor masks.
MIN_ANCHOR_IOU = 0.5


def check_shape(field: VoxelField, level: float, carved: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure the fitted shape's box (:func:`set_shape_box`) and stop if the shape is empty or collapsed.

    A collapsed shape has a side under 4 voxels: then the anchors' cameras, field of view and masks
    do not describe one object, and every later stage would silently work on nothing. Chapter 6,
    "From lego to a hand-held capture".

    Args:
        field: the fitted :class:`VoxelField`; its box is set.
        level: the surface density (:func:`surface_points`).
        carved: the fraction the visual hull removed, quoted in the message (None: not quoted).

    Returns:
        the box corners ``(box_min (3,), box_max (3,))``.

    Raises:
        InputError: the shape is empty or collapsed.

    Example:
        >>> check_shape(VoxelField(resolution=8, bound=1.0), 5.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        congealing.errors.InputError: the shape fitted to the anchor views is empty: the anchor views' cameras, ...
    """
    voxel = 2 * field.bound / (field.resolution - 1)
    why = (
        "the anchor views' cameras, field of view and masks do not agree on one object "
        "(cameras of other photos, a wrong focal length, a frame where the object is not near the origin, or masks that cut the object off)"
    )
    hull = "" if carved is None else f"; the visual hull removed {100 * carved:.1f}% of the field"
    try:
        low, high = set_shape_box(field, level)
    except ValueError:
        raise InputError(f"the shape fitted to the anchor views is empty{hull}: {why}") from None
    side = high - low
    if float(side.min()) < 4 * voxel:
        raise InputError(f"the shape fitted to the anchor views collapsed to a box {float(side.min()):.3f} wide (a voxel is {voxel:.3f}){hull}: {why}")
    return low, high


@torch.no_grad()
def carve_visual_hull(field: VoxelField, masks: torch.Tensor, c2w: torch.Tensor, fov, threshold: float = 0.5) -> float:
    """Empty every voxel outside the visual hull, in place.

    A voxel is carved when it lies outside some view's frame or in front of the camera's background
    there (``mask < threshold``), so every view must show the whole object. It removes the
    "floaters" a few-view fit leaves behind the object, which would stretch the bounding box and the
    NOCS coordinates with it (Chapter 6, "The canonical shape, two routes").

    Args:
        field: the :class:`VoxelField`; carved voxels get raw density -20.
        masks: the views' masks ``(A, 1, S, S)``.
        c2w: the views' cameras ``(A, 4, 4)``.
        fov: field of view in radians, a number or ``(A,)``.
        threshold: the mask value below which a pixel is background.

    Returns:
        the fraction of voxels carved.

    Example:
        >>> from congealing.congeal3d import spherical_cameras
        >>> cam = spherical_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 4.0)
        >>> carve_visual_hull(VoxelField(resolution=4, bound=1.0), torch.zeros(1, 1, 8, 8), cam, 0.7)   # all background
        1.0
    """
    R, size, device = field.resolution, masks.shape[-1], field.density.device
    masks, c2w = masks.to(device), c2w.to(device)
    fov = fov.to(device) if torch.is_tensor(fov) else fov
    axis = torch.linspace(-field.bound, field.bound, R, device=device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # the grid is stored [z, y, x]
    centres = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    xy, depth = project_points(centres, c2w, fov, size)
    normalised = warps.pixel_to_normalized(xy, (size, size))
    seen = F.grid_sample(masks.float(), normalised[:, :, None], mode="bilinear", align_corners=False)[:, 0, :, 0]
    inside = (normalised.abs() <= 1).all(dim=-1) & (depth > 0)
    carved = (~inside | (seen < threshold)).any(dim=0).reshape(R, R, R)
    field.density[0, 0][carved] = -20.0
    return float(carved.float().mean())


@torch.no_grad()
def set_shape_box(field: VoxelField, level: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure the shape's bounding box by marching cubes and store it in the field.

    The box (``box_min``, ``box_max``) defines the NOCS field (:meth:`VoxelField.nocs`). Chapter 6,
    "The canonical shape, two routes".

    Args:
        field: the :class:`VoxelField`.
        level: the surface density (:func:`surface_points`).

    Returns:
        copies of the box corners ``(box_min (3,), box_max (3,))``.

    Raises:
        ValueError: the shape is empty (see :func:`surface_points`).

    Example:
        >>> field = VoxelField(resolution=9, bound=1.0)
        >>> with torch.no_grad(): field.density[..., 2:7, 2:7, 2:7] = 20.0
        >>> low, high = set_shape_box(field)
        >>> bool(torch.equal(field.box_min, low)), bool((high - low > 0.5).all())
        (True, True)
    """
    world = surface_points(field, level)
    field.box_min.copy_(world.min(dim=0).values)
    field.box_max.copy_(world.max(dim=0).values)
    return field.box_min.clone(), field.box_max.clone()


def save_shape(field: VoxelField, path, **metadata) -> None:
    """Save a canonical shape, loadable with ``torch.load(..., weights_only=True)``.

    Chapter 6's Exercises save the lego shape for ``congeal align``.

    Args:
        field: the :class:`VoxelField`.
        path: the file to write.
        **metadata: anything to keep beside it (plain Python values).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_shape(VoxelField(resolution=4), pathlib.Path(folder) / "shape.pt", note="demo")
        ...     load_shape(pathlib.Path(folder) / "shape.pt").resolution
        4
    """
    torch.save({"format_version": SHAPE_FORMAT_VERSION, "kind": "VoxelField", "bound": field.bound, "state": field.state_dict(), "metadata": metadata}, path)


def load_shape(path) -> VoxelField:
    """Load a shape saved by :func:`save_shape`.

    ``congeal align --method congeal3d`` reads the shape Chapter 6's Exercises save.

    Args:
        path: the file.

    Returns:
        the :class:`VoxelField`, on the CPU.

    Raises:
        CheckpointError: the file is unreadable, not a saved shape, or of another shape format
            version (:data:`congealing.congeal3d.config.SHAPE_FORMAT_VERSION`).

    Example:
        See :func:`save_shape` (a save and load round trip).
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable, truncated, or not a torch file
        raise CheckpointError(f"{path} is not a congealing 3-D shape, or it is damaged ({type(error).__name__}); save one with congealing.congeal3d.save_shape") from None
    if not isinstance(blob, dict) or blob.get("kind") != "VoxelField":
        raise CheckpointError(f"{path} is not a congealing 3-D shape (save one with congealing.congeal3d.save_shape)")
    if blob.get("format_version") != SHAPE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was saved in shape format {blob.get('format_version')}, this version reads format {SHAPE_FORMAT_VERSION}; "
            "fit the shape again with this version (congealing.congeal3d.fit_shape)"
        )
    resolution = blob["state"]["density"].shape[-1]
    field = VoxelField(resolution, blob["bound"])
    field.load_state_dict(blob["state"])
    return field
