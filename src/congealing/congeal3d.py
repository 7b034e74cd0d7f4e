"""3-D congealing: one canonical shape, a camera per image, and correspondence through 3-D.

The pipeline of Zhang et al., *3D Congealing: 3D-Aware Image Alignment in the Wild* (2024),
Algorithm 1, in plain PyTorch:

1. a **canonical shape** ``theta``: a radiance field with density, colour and a canonical-coordinate
   (NOCS) field (:class:`VoxelField`, :func:`render`). The paper distils it from a text-to-image
   diffusion model (:mod:`congealing.diffusion_prior`); the offline route fits it to a few anchor
   views with known cameras (:func:`fit_shape`);
2. **pose search**: every input is compared, by the semantic distance of dense descriptors, with
   renders from a grid of field-of-view x azimuth x elevation cameras (:func:`search_poses`);
3. **pose refinement**: each camera moves in se(3) (and its field of view) to maximise the IoU of
   the rendered and the input masks (:func:`refine_poses`);
4. **canonical coordinate maps**: a smooth 2-D warp from each input to its render, then the NOCS
   lookup, map every pixel to a 3-D canonical point (:func:`fit_coordinate_maps`); inverting the
   map of another image by nearest neighbours gives image-to-image correspondence
   (:func:`transfer_points`).

Conventions
-----------
* Cameras follow NeRF-synthetic (OpenGL): a ``(B, 4, 4)`` camera-to-world matrix ``c2w`` whose
  columns are the camera's x (right), y (up) and z (backwards) axes and its centre; the camera
  looks along ``-z``. The world's up is ``+z``. A field of view ``fov`` is the full horizontal
  angle in radians; images are square.
* Pixel coordinates put pixel centres at integers, as in :mod:`congealing.warps`; the principal
  point is the image centre ``(size - 1) / 2``.
* Images, masks and coordinate maps are ``(B, C, H, W)``; NOCS values lie in ``[0, 1]^3``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field as dataclass_field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import warps
from .errors import CheckpointError, InputError, UsageError

__all__ = [
    "SHAPE_FORMAT_VERSION", "Congeal3DConfig", "PHOTO_SEARCH_FOVS_DEG", "photo_search_config",
    "look_at", "spherical_cameras", "camera_angles", "focal_length", "camera_rays",
    "project_points", "se3_basis", "se3_exp", "rotation_angle_deg", "VoxelField", "render_rays",
    "render", "choose_anchor_views", "farthest_points", "fit_shape", "MIN_ANCHOR_IOU", "check_shape",
    "carve_visual_hull", "density_from_raw", "surface_points", "set_shape_box", "save_shape", "load_shape", "square_boxes",
    "crop_to_boxes", "candidate_cameras", "semantic_distance", "place_camera", "render_candidates",
    "search_poses", "silhouette_iou", "soft_iou", "refine_poses", "similarity_procrustes",
    "relative_pose_errors", "pose_errors", "random_cameras", "CoordinateMaps", "huber_tv",
    "fit_coordinate_maps", "transfer_points", "propagate_nocs_edit", "stripes_edit",
    "filter_by_pose", "Congealed3D", "congeal", "vary_appearance", "LegoBenchmark", "KeypointSet",
    "load_lego_benchmark", "visible_points", "add_surface_keypoints", "relative_rotations",
    "pck_by_rotation", "evaluate_lego", "planar_transfers", "format_lego_table", "align_folder",
]

#: Bumped whenever the layout of a saved shape changes; :func:`load_shape` refuses other versions.
SHAPE_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- configuration


@dataclass
class Congeal3DConfig:
    """Every setting of the pipeline. Defaults are the full-mode (paper-like) settings.

    ``for_mode("quick")`` (2 CPU cores, a few minutes for the lego chapter) changes only sizes
    and iteration counts, never the objectives:

    * ``image_size`` 200 -> 96, ``grid_resolution`` 128 -> 64, ``samples_per_ray`` 128 -> 64:
      a 96-px view still shows the lego's pose; rendering cost scales with pixels x samples.
    * ``shape_steps`` 3000 -> 400, ``rays_per_step`` 8192 -> 1024 (the shape is fitted three
      times in Chapter 6's quick run; with 1024 rays instead of 2048 each fit takes half the time
      and the held-out mask IoU drops by about 0.02).
    * ``search_render_size`` 128 -> 64, ``search_samples`` 128 -> 32, ``crop_size`` 224 -> 128,
      ``descriptor_grid`` 28 -> 16 (the 768 candidate renders dominate the search; a silhouette
      and coarse appearance need few samples per ray).
    * ``refine_steps`` 1000 -> 100, ``rays_per_image`` 1024 -> 256 (IoU over a random subset of
      pixels each step; an unbiased estimate of the same loss, noisier with fewer pixels).
    * ``mapping_steps`` 4000 -> 300, ``mapping_size`` 64 -> 32 and ``global_delta`` 10 -> 5 (the
      same fraction of the smaller map).
    """

    # data
    image_size: int = 200
    anchor_views: int = 8
    # canonical field (offline route)
    grid_resolution: int = 128
    bound: float = 1.5  # the field lives in [-bound, bound]^3 (lego fits in [-1.2, 1.2]^3)
    samples_per_ray: int = 128
    shape_steps: int = 3000
    rays_per_step: int = 8192
    shape_lr: float = 0.1
    mask_weight: float = 1.0
    tv_weight: float = 1e-4
    density_threshold: float = 5.0  # marching-cubes level for the shape's bounding box
    # pose search (Alg. 1, lines 4-7)
    search_fovs_deg: tuple = (15.0, 37.5, 60.0)
    search_azimuths: int = 16
    search_elevations: int = 16
    camera_radius: float = 4.0
    search_render_size: int = 128
    search_samples: int = 128
    crop_size: int = 224
    crop_margin: float = 0.1
    descriptor_grid: int = 28
    # pose refinement (Alg. 1, line 8; Eq. 8 with lambda_zeta = 0, lambda_IoU = 1)
    refine_steps: int = 1000
    refine_lr: float = 5e-3
    rays_per_image: int = 1024
    refine_fov: bool = True
    # canonical coordinate maps (Alg. 1, line 9; Eq. 10 and Appendix B)
    mapping_steps: int = 4000
    mapping_lr: float = 0.01
    mapping_size: int = 64
    lambda_l2: float = 1.0
    lambda_rigid_global: float = 1.0  # rigidity at Delta = 10 px (of a 64-px map)
    lambda_rigid_local: float = 1.0  # rigidity at Delta = 1 px
    lambda_tv: float = 1.0  # Huber total variation
    global_delta: int = 10
    huber_delta: float = 0.01
    seed: int = 0

    @classmethod
    def for_mode(cls, mode: str | None = None, **overrides) -> "Congeal3DConfig":
        """The full settings or their CPU-sized quick version (see the class docstring)."""
        from .runtime import get_mode

        config = cls()
        if get_mode(mode) == "quick":
            config = replace(
                config, image_size=96, grid_resolution=64, samples_per_ray=64, shape_steps=400, rays_per_step=1024,
                search_render_size=64, search_samples=32, crop_size=128, descriptor_grid=16, refine_steps=100, rays_per_image=256,
                mapping_steps=300, mapping_size=32, global_delta=5,
            )
        return replace(config, **overrides)


#: The search's fields of view for a user's photos of unknown intrinsics: the benchmark's grid plus
#: 75 degrees. A phone's main camera (26 mm equivalent) sees 2 atan(18 / 26) = 69 degrees along
#: the photo's long side, which the folder loader's square padding keeps; 60 degrees refined by
#: IoU does not reliably reach it. Known intrinsics replace the grid with the one true field of
#: view (:func:`congealing.captures.known_fov_config`).
PHOTO_SEARCH_FOVS_DEG = (15.0, 37.5, 60.0, 75.0)


def photo_search_config(config: Congeal3DConfig) -> Congeal3DConfig:
    """The settings for a user's photos of unknown field of view: the search tries
    :data:`PHOTO_SEARCH_FOVS_DEG` (a third more candidate renders than the benchmark's grid).

    >>> max(photo_search_config(Congeal3DConfig()).search_fovs_deg) >= 70
    True
    """
    return replace(config, search_fovs_deg=PHOTO_SEARCH_FOVS_DEG)


# ----------------------------------------------------------------------------- cameras


def look_at(centres: torch.Tensor, target: torch.Tensor | None = None, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world matrices ``(B, 4, 4)`` of cameras at ``centres`` ``(B, 3)`` looking at ``target``.

    ``up`` is the world's up direction; a camera looking straight along it gets an arbitrary but
    valid roll.

    >>> c2w = look_at(torch.tensor([[0.0, -4.0, 0.0]]))
    >>> c2w[0, :3, 2]          # the camera's z axis points away from the target
    tensor([ 0., -1.,  0.])
    """
    target = torch.zeros_like(centres) if target is None else target.expand_as(centres)
    backward = F.normalize(centres - target, dim=-1)
    up_vector = torch.tensor(up, dtype=centres.dtype, device=centres.device).expand_as(centres)
    right = torch.linalg.cross(up_vector, backward, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6  # looking along `up`: pick x as right
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=centres.dtype, device=centres.device).expand_as(right), right)
    right = F.normalize(right, dim=-1)
    true_up = torch.linalg.cross(backward, right, dim=-1)
    c2w = torch.eye(4, dtype=centres.dtype, device=centres.device).repeat(centres.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, backward, centres
    return c2w


def spherical_cameras(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, radius: float) -> torch.Tensor:
    """Cameras ``(B, 4, 4)`` on a sphere of ``radius`` around the origin, looking at it.

    Azimuth is measured in the xy-plane from +x towards +y, elevation from the xy-plane towards +z.

    >>> spherical_cameras(torch.tensor([90.0]), torch.tensor([0.0]), 4.0)[0, :3, 3].round() + 0.0
    tensor([0., 4., 0.])
    """
    az, el = torch.deg2rad(azimuth_deg.float()), torch.deg2rad(elevation_deg.float())
    centres = radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    return look_at(centres)


def camera_angles(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation in degrees ``(B,)`` of camera centres (inverse of :func:`spherical_cameras`)."""
    centre = c2w[:, :3, 3]
    azimuth = torch.rad2deg(torch.atan2(centre[:, 1], centre[:, 0]))
    elevation = torch.rad2deg(torch.asin((centre[:, 2] / centre.norm(dim=-1)).clamp(-1, 1)))
    return azimuth, elevation


def focal_length(fov: torch.Tensor | float, size: int) -> torch.Tensor:
    """Focal length in pixels of a square ``size``-pixel image with horizontal field of view ``fov`` (radians)."""
    return 0.5 * size / torch.tan(0.5 * torch.as_tensor(fov, dtype=torch.float32))


def camera_rays(c2w: torch.Tensor, fov: torch.Tensor | float, size: int, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions ``(B, R, 3)`` through pixels of ``size`` x ``size`` images.

    ``pixels`` ``(B, R, 2)`` are pixel ``(x, y)`` coordinates (default: every pixel, row-major,
    so ``R = size * size``). ``fov`` is a number or ``(B,)``. Differentiable in ``c2w`` and ``fov``.

    >>> o, d = camera_rays(torch.eye(4)[None], math.radians(90), 3)
    >>> d[0, 4]                 # the centre pixel looks along -z
    tensor([ 0.,  0., -1.])
    """
    B = c2w.shape[0]
    if pixels is None:
        ys, xs = torch.meshgrid(torch.arange(size, dtype=c2w.dtype, device=c2w.device), torch.arange(size, dtype=c2w.dtype, device=c2w.device), indexing="ij")
        pixels = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(B, -1, -1)
    fov = torch.as_tensor(fov, dtype=c2w.dtype, device=c2w.device)
    focal = (0.5 * size / torch.tan(0.5 * fov)).reshape(-1, 1).expand(B, 1)
    centre = 0.5 * (size - 1)
    local = torch.stack(
        [(pixels[..., 0] - centre) / focal, -(pixels[..., 1] - centre) / focal, -torch.ones_like(pixels[..., 0])], dim=-1
    )
    directions = F.normalize(local @ c2w[:, :3, :3].transpose(1, 2), dim=-1)
    origins = c2w[:, None, :3, 3].expand_as(directions)
    return origins, directions


def project_points(points: torch.Tensor, c2w: torch.Tensor, fov: torch.Tensor | float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(B, P, 2)`` and depths ``(B, P)`` (distance along the viewing axis) of
    world points ``(P, 3)`` or ``(B, P, 3)`` seen by cameras ``c2w`` ``(B, 4, 4)``.

    >>> xy, depth = project_points(torch.tensor([[0.0, 0.0, -2.0]]), torch.eye(4)[None], math.radians(90), 3)
    >>> xy, depth
    (tensor([[[1., 1.]]]), tensor([[2.]]))
    """
    points = points.expand(c2w.shape[0], -1, -1) if points.ndim == 2 else points
    rotation, centre = c2w[:, :3, :3], c2w[:, :3, 3]
    local = (points - centre[:, None]) @ rotation  # world -> camera: R^T (p - c)
    depth = -local[..., 2]
    focal = focal_length(fov, size).to(points).reshape(-1, 1)
    centre_px = 0.5 * (size - 1)
    x = centre_px + focal * local[..., 0] / depth
    y = centre_px - focal * local[..., 1] / depth
    return torch.stack([x, y], dim=-1), depth


# ----------------------------------------------------------------------------- se(3)


def se3_basis(dtype=torch.float32, device=None) -> torch.Tensor:
    """The six generators ``(6, 4, 4)`` of se(3): rotations about x, y, z, then translations along x, y, z.

    The 3-D counterpart of :func:`congealing.warps.lie_basis`: a camera update is ``exp`` of a
    combination of these, so every parameter value is a valid rigid motion (BARF's choice).

    >>> se3_basis().shape
    torch.Size([6, 4, 4])
    """
    G = torch.zeros(6, 4, 4, dtype=dtype, device=device)
    G[0, 2, 1], G[0, 1, 2] = 1.0, -1.0  # rotate about x
    G[1, 0, 2], G[1, 2, 0] = 1.0, -1.0  # rotate about y
    G[2, 1, 0], G[2, 0, 1] = 1.0, -1.0  # rotate about z
    G[3, 0, 3] = G[4, 1, 3] = G[5, 2, 3] = 1.0
    return G


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Rigid motions ``(B, 4, 4)`` of se(3) parameters ``(B, 6)`` (rotation vector, translation). Differentiable.

    >>> T = se3_exp(torch.tensor([[0.0, 0.0, math.pi / 2, 1.0, 0.0, 0.0]]))
    >>> T[0, :3, :3].round()
    tensor([[ 0., -1.,  0.],
            [ 1.,  0.,  0.],
            [ 0.,  0.,  1.]])
    """
    if not torch.isfinite(xi).all():
        raise FloatingPointError("non-finite se(3) parameters (NaN or inf): the pose optimisation diverged")
    return torch.linalg.matrix_exp(torch.einsum("bk,kij->bij", xi, se3_basis(xi.dtype, xi.device)))


def rotation_angle_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees ``(B,)`` between rotations ``(B, 3, 3)``.

    >>> R = se3_exp(torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]]))[:, :3, :3]
    >>> rotation_angle_deg(R, torch.eye(3)[None]).round(decimals=2)
    tensor([17.1900])
    """
    cosine = ((R_a.transpose(1, 2) @ R_b).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))


# ----------------------------------------------------------------------------- the canonical field


def density_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """The field's density from its raw grid values: ``softplus(raw - 4)``, so an untrained field
    (raw 0) is almost empty (density 0.018).

    >>> float(density_from_raw(torch.tensor(4.0)))  # softplus(0) = log 2
    0.6931471824645996
    """
    return F.softplus(raw - 4.0)


def surface_points(field: "VoxelField", level: float = 5.0) -> torch.Tensor:
    """World points ``(M, 3)`` on the shape's surface: the marching-cubes vertices of the density
    grid at ``level``. Raises ``ValueError`` if no voxel is denser than ``level``."""
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
    ``softplus(raw - 4)`` (so an untrained field is almost empty) and colour ``sigmoid(raw)``. The
    canonical-coordinate (NOCS) field of the paper's Eq. 11 is ``(p - p_min) / (p_max - p_min)``
    over the shape's bounding box ``box_min``, ``box_max`` (buffers; set by :func:`set_shape_box`).
    A grid, not an MLP: on a CPU it is ~100x faster to fit and to render, and the chapter's shape
    is a single object.
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
        return self.density.shape[-1]

    def _sample(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # grid_sample's last coordinate axis is (x, y, z) -> (W, H, D): the grid is stored [z, y, x]
        coords = (points / self.bound).reshape(1, 1, 1, -1, 3)
        values = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
        return values.reshape(grid.shape[1], -1).T

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density ``(M,)`` and colour ``(M, 3)`` at world points ``(M, 3)`` (zero density outside the box)."""
        raw = self._sample(torch.cat([self.density, self.colour], dim=1), points)
        return density_from_raw(raw[:, 0]), torch.sigmoid(raw[:, 1:])

    def density_grid(self) -> torch.Tensor:
        """The density of every voxel ``(R, R, R)``, indexed ``[z, y, x]`` (detached)."""
        return density_from_raw(self.density[0, 0].detach())

    def nocs(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical coordinates ``(M, 3)`` in ``[0, 1]`` of world points ``(M, 3)`` (Eq. 11)."""
        return ((points - self.box_min) / (self.box_max - self.box_min).clamp_min(1e-6)).clamp(0.0, 1.0)


def _ray_box(origins: torch.Tensor, directions: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances ``(..., )`` of rays through the cube ``[-bound, bound]^3`` (slab method)."""
    inverse = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) * inverse, (bound - origins) * inverse
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, torch.maximum(far, near)


def render_rays(field: VoxelField, origins: torch.Tensor, directions: torch.Tensor, samples: int, background: float = 1.0, jitter: bool = False) -> dict:
    """Volume-render rays ``(R, 3)`` through ``field`` (the paper's Eq. 9).

    Samples are spread evenly over each ray's segment inside the field's cube (stratified when
    ``jitter``). Returns ``rgb`` ``(R, 3)`` (composited over ``background``), ``opacity`` ``(R,)``
    (the accumulated alpha: the rendered mask), ``depth`` ``(R,)`` (expected distance along the
    ray) and ``nocs`` ``(R, 3)`` (expected canonical coordinate, divided by the opacity).
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
    """Render ``size`` x ``size`` views from cameras ``c2w`` ``(B, 4, 4)`` with field of view ``fov``.

    Returns ``rgb`` ``(B, 3, H, W)``, ``mask`` ``(B, 1, H, W)`` (opacity), ``depth`` ``(B, 1, H, W)``
    (distance along each pixel's ray) and ``nocs`` ``(B, 3, H, W)``. Rays are processed in chunks of
    ``chunk`` so memory stays bounded for any batch; differentiable.

    >>> field = VoxelField(resolution=8, bound=1.0)
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


def choose_anchor_views(c2w: torch.Tensor, count: int, whole: torch.Tensor | None = None) -> list[int]:
    """Indices of ``count`` cameras spread over the sphere (farthest-point sampling of their centres).

    ``whole`` ``(N,)`` bool: only views that show the whole object may be anchors (see
    :func:`congealing.captures.object_is_whole`); on a hand-held capture the extreme views are
    often close-ups, and the visual hull of a view that cuts the object off cuts the shape too.
    Fewer than 2 such views is an :class:`~congealing.errors.InputError`.

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
    """Indices of ``count`` of ``points`` ``(P, D)`` spread out by farthest-point sampling from
    ``first``: each next point is the one farthest from those chosen. ``allowed`` ``(P,)`` bool:
    the only candidates (``count`` must not exceed how many there are).

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

    ``images`` ``(A, 3, H, W)`` composited over white, ``masks`` ``(A, 1, H, W)``, cameras ``c2w``
    ``(A, 4, 4)`` and ``fov`` are the anchors' (known). Each step renders ``rays_per_step`` random
    rays; the loss is the photometric L2 error, plus ``mask_weight`` x the L2 error of the rendered
    opacity against the mask (it carves free space from few views, as a visual hull would), plus
    ``tv_weight`` x the total variation of the grids. Adam at ``shape_lr`` (grids move fast; DVGO's
    rate). Finally the shape's bounding box is measured (:func:`check_shape`: an empty or collapsed
    shape is an :class:`~congealing.errors.InputError`), and so is the IoU of the shape's rendered
    silhouettes with the anchor masks (an InputError below ``MIN_ANCHOR_IOU``: a visual hull cut by
    a wrong camera or a cut-off anchor). ``device``: where to fit (default CPU); the field stays there.
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
        if not torch.isfinite(loss):
            raise FloatingPointError(f"shape fitting diverged at step {step}: loss {loss.item()}")
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
    """Measure the fitted shape's box (:func:`set_shape_box`) and stop with an
    :class:`~congealing.errors.InputError` if the shape is empty or collapsed (a side under 4
    voxels): then the anchors' cameras, field of view and masks do not describe one object, and
    every later stage would silently work on nothing. ``carved``: the fraction the visual hull
    removed, for the message. Returns the box corners ``(3,)``."""
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
    """Empty every voxel outside the visual hull: outside some view's frame, or seen by it as
    background (``mask < threshold``). The object must be whole in every view.

    A grid fitted to a few views keeps "floaters": density that the photometric loss cannot see
    because no anchor looks through it against the background. Space carving (the visual hull)
    removes them; without it they stretch the bounding box, and the NOCS coordinates with it.
    Returns the fraction of voxels carved.
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
    """Measure the shape's bounding box by marching cubes on the density grid and store it in the
    field (``box_min``, ``box_max``, used by the NOCS field). Returns the box corners ``(3,)``."""
    world = surface_points(field, level)
    field.box_min.copy_(world.min(dim=0).values)
    field.box_max.copy_(world.max(dim=0).values)
    return field.box_min.clone(), field.box_max.clone()


def save_shape(field: VoxelField, path, **metadata) -> None:
    """Save a canonical shape (loadable with ``torch.load(..., weights_only=True)``)."""
    torch.save({"format_version": SHAPE_FORMAT_VERSION, "kind": "VoxelField", "bound": field.bound, "state": field.state_dict(), "metadata": metadata}, path)


def load_shape(path) -> VoxelField:
    """Load a shape saved by :func:`save_shape`; a file from another version is refused with a clear error."""
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


# ----------------------------------------------------------------------------- pose search


def _check_masks(masks: torch.Tensor, names=None) -> None:
    empty = [i for i in range(masks.shape[0]) if float((masks[i] > 0.5).sum()) < 4]
    if empty:
        labels = [names[i] if names else str(i) for i in empty]
        raise InputError(f"no usable foreground mask for image(s) {', '.join(labels)}: 3-D congealing needs the object's silhouette (give RGBA images whose alpha marks the object)")


def square_boxes(masks: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Square boxes ``(N, 3)`` ``(centre x, centre y, side)`` in pixels around each mask's bounding
    box ``(N, 1, H, W)``, enlarged by ``margin`` of the side on every edge.

    >>> m = torch.zeros(1, 1, 8, 8); m[0, 0, 2:4, 1:7] = 1
    >>> square_boxes(m, margin=0.0)
    tensor([[3.5000, 2.5000, 6.0000]])
    """
    from .metrics import mask_to_box

    box = mask_to_box(masks)
    centre = 0.5 * (box[:, :2] + box[:, 2:])
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) + 1.0
    return torch.cat([centre, (side * (1 + 2 * margin))[:, None]], dim=1)


def crop_to_boxes(images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, size: int, background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``images`` ``(N, C, H, W)`` and ``masks`` ``(N, 1, H, W)`` to square ``boxes`` (from
    :func:`square_boxes`), resized to ``size``; outside the mask the crop shows ``background``
    (so an input's own background never enters the comparison, as with the paper's segmented inputs).
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
    camera's roll is undefined). Returns ``c2w`` ``(C, 4, 4)``, ``fov`` ``(C,)`` radians,
    ``azimuth`` and ``elevation`` ``(C,)`` degrees.

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

    ``a`` ``(N, D, h, w)`` and ``b`` ``(C, D, h, w)`` give the ``(N, C)`` matrix of distances.

    >>> d = F.normalize(torch.randn(2, 4, 3, 3), dim=1)
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
    shifts the object in the image; both are solved from the two square boxes ``(B, 3)``
    (:func:`square_boxes` of the candidate's render and of the input). Orientation and field of
    view are kept. Returns ``(B, 4, 4)``.
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
    """Render every search candidate once (shared by all inputs): ``rgb`` ``(C, 3, s, s)``,
    ``mask`` ``(C, 1, s, s)`` at ``search_render_size``, plus the cameras (all on the CPU; the
    renders are made on the field's device)."""
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
    """Pose initialisation (Alg. 1, lines 4-7): the candidate camera whose render is semantically
    closest to each input, then placed to frame the object as the input does (:func:`place_camera`).

    ``images`` ``(N, 3, S, S)`` and ``masks`` ``(N, 1, S, S)``. Renders and inputs are cropped to
    their mask boxes and compared by :func:`semantic_distance` of ``backbone`` descriptors.
    Returns ``c2w`` ``(N, 4, 4)``, ``fov`` ``(N,)``, ``index`` ``(N,)`` (the chosen candidate),
    ``distance`` ``(N, C)`` (the landscape), ``candidates`` and ``seconds``.
    """
    from .features import extract_descriptors, load_backbone

    _check_masks(masks)
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


def silhouette_iou(rendered: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU ``(N,)`` of rendered opacities and masks ``(N, 1, S, S)``, both thresholded at 0.5.

    >>> silhouette_iou(torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    tensor([0.5000])
    """
    a, b = rendered.flatten(1) > 0.5, masks.flatten(1) > 0.5
    return (a & b).sum(1).float() / (a | b).sum(1).clamp_min(1).float()


def soft_iou(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft IoU ``(B,)`` of opacities and masks ``(B, R)`` in ``[0, 1]`` (the paper's mask term).

    >>> soft_iou(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    tensor([0.5000])
    """
    intersection = (rendered * target).sum(dim=1)
    union = (rendered + target - rendered * target).sum(dim=1)
    return intersection / union.clamp_min(1e-6)


def refine_poses(field: VoxelField, masks: torch.Tensor, c2w: torch.Tensor, fov: torch.Tensor, config: Congeal3DConfig, snapshots: int = 10, progress=None, valid: torch.Tensor | None = None) -> dict:
    """Pose refinement (Alg. 1, line 8; Eq. 8 with lambda_zeta = 0, lambda_IoU = 1).

    Each camera is ``c2w @ exp(xi)`` with ``xi`` in se(3) (:func:`se3_exp`, zero at the start) and
    its field of view ``fov * exp(phi)``; Adam minimises ``1 - IoU`` between the rendered opacity
    and the input mask over ``rays_per_image`` random pixels per image and step. The field is
    frozen (and left as the caller had it). Returns the refined ``c2w`` ``(N, 4, 4)`` and ``fov``
    ``(N,)``, the per-step mean ``loss``, ``trajectory`` (the cameras at the start and every
    ``refine_steps // snapshots`` steps) and ``seconds``. A NaN stops it with the step number.
    ``valid`` ``(N, 1, S, S)``: the pixels that lie inside each photo (:func:`congealing.captures.square_views`);
    the IoU ignores the others, where the object may continue unseen.
    """
    _check_masks(masks)
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
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pose refinement diverged at step {step}: 1 - IoU = {loss.item()}")
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
    """Least-squares similarity ``target ~ s R source + t`` between point sets ``(N, 3)`` (Umeyama).

    Returns ``s`` (scalar tensor), ``R`` ``(3, 3)`` (a rotation, det +1) and ``t`` ``(3,)``.

    >>> p = torch.randn(10, 3)
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
    """Frame-free camera errors of cameras ``(N, 4, 4)`` (camera-to-world), over all pairs ``i < j``.

    No alignment between the two frames is fitted, so the numbers cannot be flattered or spoiled
    by a degenerate fit (cameras on a short arc make the centre Procrustes of :func:`pose_errors`
    ill-posed). Relative rotation error: the angle between the predicted and the true rotation
    from camera ``j`` to camera ``i`` (``R_i^T R_j``). View-angle error: how far the predicted
    angle between the two viewing directions is from the true one. Both in degrees.

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
    """Rotation and translation errors of cameras ``(N, 4, 4)`` after a similarity Procrustes
    alignment of the predicted camera centres to the true ones (the paper's Table 1 protocol),
    with the frame-free errors of :func:`relative_pose_errors` beside them.

    Rotation error: the angle between the aligned predicted and the true camera rotation, in
    degrees. Translation error: the distance between the aligned predicted and the true camera
    centre, in the scene's units. Returns per-view lists and their mean and median, and
    ``procrustes_scale``: a scale far from 1 warns that the alignment degenerated.
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


def random_cameras(count: int, radius: float, seed: int = 0) -> torch.Tensor:
    """The random-pose baseline: ``count`` cameras at uniformly random directions, looking at the origin."""
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return look_at(radius * directions)


# ----------------------------------------------------------------------------- canonical coordinate maps


@dataclass
class CoordinateMaps:
    """Per-image maps into the canonical frame, at the images' resolution ``S``.

    ``nocs`` ``(N, 3, S, S)``: ``Phi_fwd``, every input pixel's canonical coordinate; ``mask``
    ``(N, 1, S, S)``: the pixels that have one (the input's foreground); ``warp`` ``(N, S, S, 2)``:
    the fitted 2-D warp ``u -> u~`` into each image's render (normalised coordinates);
    ``renders``: ``rgb``/``nocs``/``mask`` of the canonical shape at each image's camera;
    ``loss``: the objective's history.
    """

    nocs: torch.Tensor
    mask: torch.Tensor
    warp: torch.Tensor
    renders: dict
    loss: list
    seconds: float = 0.0


def huber_tv(offsets: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber total variation of a field ``(B, 2, h, w)``: robust smoothness that still allows edges.

    >>> huber_tv(torch.zeros(1, 2, 4, 4), 0.01).item()
    0.0
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
    and at 1 pixel, and Huber total variation. ``Phi_fwd(u)`` is the render's NOCS value at ``u~``.
    """
    from .features import extract_descriptors, load_backbone
    from .losses import masked_mean, rigidity_loss

    _check_masks(masks)
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
        if not torch.isfinite(loss):
            raise FloatingPointError(f"coordinate-map fitting diverged at step {step}: semantic {semantic.item()}, smooth {smooth.item()}")
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

    ``points`` ``(K, 2)`` pixel ``(x, y)`` in image ``source``. ``Phi_fwd`` is read from the source's
    NOCS map at the nearest pixel (interpolating would blend coordinates across depth edges); ``Phi_rev`` (Eqs. 12-13) is the target pixel whose canonical coordinate
    is nearest. Returns ``(K, 2)`` pixels in image ``target``.
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
    """Paint every image through its canonical coordinates: ``paint(nocs (M, 3)) -> rgba (M, 4)``.

    The edit is defined once, in the canonical frame (e.g. "stripes along the shape's x axis"),
    and lands on the same part of the object in every image. Returns edited ``(N, 3, S, S)``.
    """
    N, _, S, _ = images.shape
    flat = maps.nocs.permute(0, 2, 3, 1).reshape(-1, 3)
    rgba = paint(flat).reshape(N, S, S, 4).permute(0, 3, 1, 2)
    alpha = rgba[:, 3:] * maps.mask
    return images * (1 - alpha) + rgba[:, :3] * alpha


def stripes_edit(axis: int = 0, stripes: int = 5, colour=(0.9, 0.1, 0.6)):
    """A canonical-frame texture for :func:`propagate_nocs_edit`: coloured stripes across one NOCS axis."""
    colour = torch.tensor(colour)

    def paint(nocs: torch.Tensor) -> torch.Tensor:
        on = (torch.floor(nocs[:, axis] * 2 * stripes) % 2 == 0).float()[:, None]
        return torch.cat([colour.to(nocs.device).expand(nocs.shape[0], 3), 0.8 * on], dim=1)

    return paint


def filter_by_pose(c2w: torch.Tensor, azimuth_range=(-90.0, 90.0), elevation_range=(-90.0, 90.0)) -> torch.Tensor:
    """Pose-aware filtering: indices of the cameras whose azimuth and elevation (degrees) fall in the ranges."""
    azimuth, elevation = camera_angles(c2w)
    keep = (azimuth >= azimuth_range[0]) & (azimuth <= azimuth_range[1]) & (elevation >= elevation_range[0]) & (elevation <= elevation_range[1])
    return torch.nonzero(keep).flatten()


# ----------------------------------------------------------------------------- the whole pipeline


@dataclass
class Congealed3D:
    """What :func:`congeal` returns: cameras after search and after refinement, the coordinate maps
    and the seconds each stage took."""

    search: dict
    refined: dict
    maps: CoordinateMaps | None
    seconds: dict = dataclass_field(default_factory=dict)


def congeal(field: VoxelField, images: torch.Tensor, masks: torch.Tensor, config: Congeal3DConfig, backbone=None, search: bool = True, refine: bool = True, maps: bool = True, progress=None, candidates=None, valid=None) -> Congealed3D:
    """Lines 4-9 of Algorithm 1 for a set of inputs with a given canonical shape.

    ``search=False`` is the "no pose initialisation" ablation (every camera starts at the first
    candidate, azimuth -169, elevation -84 degrees, framed on the input); ``refine=False`` is "no
    IoU refinement". ``valid``: the pixels inside each photo (refinement ignores the rest). Raises a
    clear error for a set of one or images without a usable mask.
    """
    if images.shape[0] < 2:
        raise ValueError("3-D congealing aligns a set: give at least 2 images")
    _check_masks(masks)
    if search:
        found = search_poses(field, images, masks, config, backbone, candidates)
    else:
        cams = render_candidates(field, config) if candidates is None else candidates
        first = torch.zeros(images.shape[0], dtype=torch.long)
        boxes = square_boxes(cams["mask"][first], config.crop_margin)
        c2w = place_camera(cams["c2w"][first], cams["fov"][first], boxes, config.search_render_size, square_boxes(masks, config.crop_margin), images.shape[-1])
        found = {"c2w": c2w, "fov": cams["fov"][first].clone(), "index": first, "distance": None, "candidates": cams, "seconds": 0.0}
    refined = refine_poses(field, masks, found["c2w"], found["fov"], config, progress=progress, valid=valid) if refine else {"c2w": found["c2w"], "fov": found["fov"], "loss": [], "trajectory": [found["c2w"]], "seconds": 0.0}
    coordinate_maps = fit_coordinate_maps(field, images, masks, refined["c2w"], refined["fov"], config, backbone, progress) if maps else None
    seconds = {"pose_search": round(found["seconds"], 2), "refinement": round(refined["seconds"], 2)}
    if coordinate_maps is not None:
        seconds["mappings"] = round(coordinate_maps.seconds, 2)
    return Congealed3D(found, refined, coordinate_maps, seconds)


# ----------------------------------------------------------------------------- the lego benchmark


def vary_appearance(images: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Give every image its own look: a colour tint, contrast and gamma, a directional light ramp on
    the object, and a new background (a random colour or a smooth random texture).

    The offline stand-in for the paper's in-the-wild captures (NAVI's changing illumination and
    backgrounds). The object's silhouette, and so its mask, is unchanged. Deterministic in ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    N, _, S, _ = images.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(images.device)  # noqa: E731  drawn on the CPU: the same looks on any device
    tint = 0.6 + 0.8 * rand(N, 3, 1, 1)
    gamma = 0.6 + 0.9 * rand(N, 1, 1, 1)
    contrast = 0.6 + 0.8 * rand(N, 1, 1, 1)
    angle = 2 * math.pi * rand(N, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S, device=images.device), torch.linspace(-1, 1, S, device=images.device), indexing="ij")
    ramp = 0.75 + 0.35 * (angle.cos() * xs + angle.sin() * ys)[:, None]
    foreground = ((images.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5) * tint * ramp
    texture = F.interpolate(rand(N, 3, 6, 6), size=(S, S), mode="bicubic", align_corners=False)
    solid = rand(N, 3, 1, 1).expand(N, 3, S, S)
    background = torch.where(rand(N, 1, 1, 1) < 0.5, texture, solid)
    return (foreground * masks + background * (1 - masks)).clamp(0, 1)


@dataclass
class LegoBenchmark:
    """The Chapter 6 benchmark on NeRF-synthetic *lego*.

    ``anchors``: views (with their true cameras) that stand in for the generative shape prior;
    ``images`` / ``masks`` / ``c2w`` / ``fov``: the inputs and their true cameras (used only to
    score); ``varied``: the inputs with per-image appearance changes; ``keypoints`` ``(N, K, 2)``,
    ``visible`` ``(N, K)`` and ``boxes`` ``(N, 4)``: fixed 3-D points on the object projected into
    each input (for PCK, like a keypoint dataset); ``points3d`` ``(K, 3)``.
    """

    anchor_index: list
    anchor_images: torch.Tensor
    anchor_masks: torch.Tensor
    anchor_c2w: torch.Tensor
    input_index: list
    images: torch.Tensor
    masks: torch.Tensor
    c2w: torch.Tensor
    fov: float
    varied: torch.Tensor
    names: list
    keypoints: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    points3d: torch.Tensor | None = None
    part_names: list = dataclass_field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def keypoint_set(self, varied: bool = False) -> "KeypointSet":
        """The inputs (over a white background) and their keypoints, for the harness of
        :mod:`congealing.evaluation` (``transfer_all_pairs``, ``evaluate_transfer``)."""
        images = self.varied if varied else self.images
        return KeypointSet(images * self.masks + (1 - self.masks), self.keypoints, self.visible, self.boxes, self.part_names)


@dataclass
class KeypointSet:
    """Images ``(N, 3, S, S)`` with keypoints ``(N, K, 2)``, ``visible`` ``(N, K)`` and PCK boxes
    ``(N, 4)``: the fields :mod:`congealing.evaluation` reads from a CUB class."""

    images: torch.Tensor
    keypoints: torch.Tensor
    visible: torch.Tensor
    boxes: torch.Tensor
    part_names: list

    def __len__(self) -> int:
        return self.images.shape[0]


def load_lego_benchmark(config: Congeal3DConfig, inputs: int | None = None, root=None, seed: int = 0) -> LegoBenchmark:
    """Split lego's 100 views into ``config.anchor_views`` anchors (spread over the sphere) and
    inputs (all others, or ``inputs`` of them, evenly spaced), at ``config.image_size`` pixels."""
    from .data import load_nerf_synthetic

    scene = load_nerf_synthetic("lego", size=config.image_size, root=root)
    anchors = choose_anchor_views(scene.c2w, config.anchor_views)
    rest = [i for i in range(len(scene.names)) if i not in anchors]
    if inputs is not None and inputs < len(rest):
        rest = [rest[round(k * len(rest) / inputs)] for k in range(inputs)]
    return LegoBenchmark(
        anchors, scene.images[anchors], scene.masks[anchors], scene.c2w[anchors],
        rest, scene.images[rest], scene.masks[rest], scene.c2w[rest], scene.fov,
        vary_appearance(scene.images[rest], scene.masks[rest], seed), [scene.names[i] for i in rest],
    )


@torch.no_grad()
def visible_points(field: VoxelField, points: torch.Tensor, c2w: torch.Tensor, fov, size: int, masks: torch.Tensor, tolerance: float, samples: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(B, P, 2)`` of world points ``(P, 3)`` in each view and whether each is visible
    ``(B, P)``: inside the frame and the mask, with the rendered depth at its pixel within
    ``tolerance`` (scene units) of its distance to the camera (nothing in front of it)."""
    xy, _ = project_points(points, c2w, fov, size)
    depth = torch.cat([render(field, c2w[i : i + 8], fov if not torch.is_tensor(fov) or fov.ndim == 0 else fov[i : i + 8], size, samples)["depth"] for i in range(0, c2w.shape[0], 8)])
    normalised = warps.pixel_to_normalized(xy, (size, size))
    depth_at = F.grid_sample(depth, normalised[:, :, None], mode="nearest", align_corners=False)[:, 0, :, 0]
    mask_at = F.grid_sample(masks.float(), normalised[:, :, None], mode="nearest", align_corners=False)[:, 0, :, 0]
    distance = (points[None] - c2w[:, None, :3, 3]).norm(dim=-1)
    inside = (normalised.abs() < 1).all(dim=-1)
    return xy, inside & (mask_at > 0.5) & ((depth_at - distance).abs() < tolerance)


@torch.no_grad()
def add_surface_keypoints(bench: LegoBenchmark, field: VoxelField, count: int = 24, level: float = 5.0, tolerance: float = 0.08) -> None:
    """Fix ``count`` 3-D points on the object and project them into every input with the *true*
    camera (the ground truth of the keypoint-transfer benchmark).

    The points are farthest-point samples of the shape's marching-cubes vertices among those that
    at least two anchor views see (so they lie on the visible surface, not inside thin slabs or at
    silhouettes only). Visibility in each input follows :func:`visible_points`.
    """
    from .metrics import mask_to_box

    vertices = surface_points(field, level)
    size = bench.anchor_images.shape[-1]
    _, seen = visible_points(field, vertices, bench.anchor_c2w, bench.fov, size, bench.anchor_masks, tolerance)
    vertices = vertices[seen.sum(dim=0) >= 2]
    points = vertices[farthest_points(vertices, count, int((vertices - vertices.mean(dim=0)).norm(dim=-1).argmin()))]
    bench.keypoints, bench.visible = visible_points(field, points, bench.c2w, bench.fov, bench.images.shape[-1], bench.masks, tolerance)
    bench.points3d = points
    bench.boxes = mask_to_box(bench.masks)
    bench.part_names = [f"p{k:02d}" for k in range(count)]


def relative_rotations(c2w: torch.Tensor) -> torch.Tensor:
    """Angle in degrees ``(N, N)`` between every two cameras' orientations."""
    R = c2w[:, :3, :3]
    cosine = ((torch.einsum("aji,bjk->abik", R, R).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cosine))


def pck_by_rotation(transfer, keypoint_set, c2w: torch.Tensor, bins=(0, 45, 90, 180), alpha: float = 0.1) -> dict:
    """PCK@``alpha`` (box threshold of the target, Chapter 3's harness) of ``transfer`` over all
    ordered pairs, overall and binned by the relative rotation between the two true cameras."""
    from . import metrics
    from .evaluation import threshold_lengths, transfer_all_pairs

    result = transfer_all_pairs(transfer, keypoint_set)
    pairs, visible = result["pairs"], result["visible"]
    correct = metrics.correct_keypoints(result["pred"], result["target"], threshold_lengths(keypoint_set.boxes)[pairs[:, 1]], alpha)
    angles = relative_rotations(c2w)[pairs[:, 0], pairs[:, 1]]
    out = {"all": float((correct & visible).sum() / visible.sum().clamp_min(1)), "n_keypoints": int(visible.sum()), "bins": {}}
    for low, high in zip(bins[:-1], bins[1:]):
        in_bin = ((angles > low) & (angles <= high))[:, None] & visible
        out["bins"][f"{low}-{high}"] = {"pck": float((correct & in_bin).sum() / in_bin.sum()) if in_bin.any() else None, "n_keypoints": int(in_bin.sum())}
    return out


# ----------------------------------------------------------------------------- command line


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda iterable, desc: tqdm(iterable, desc=desc, leave=False)


def evaluate_lego(args) -> dict:
    """``congeal eval --dataset lego --method congeal3d``: the Chapter 6 benchmark.

    Fits the shape to the anchor views, then, for the inputs as rendered and with per-image
    appearance changes: pose errors (Procrustes-aligned, mean and median) for random cameras,
    "no pose initialisation", "no IoU refinement" and the full method; PCK@0.1 of keypoint
    transfer through 3-D against nearest-neighbour matching with the same backbone, binned by the
    relative rotation of the two views (and, on the varied inputs, SpaceJAM and Neural Congealing:
    :func:`planar_transfers`; ``args.planar = False`` skips them); seconds per stage. Quick mode
    uses 16 of the 92 inputs. In full mode, then the real-like row (``args.capture``: True or False
    to force it on or off): lego as a hand-held capture, posed from its ``transforms.json``
    (:func:`congealing.captures.evaluate_capture`). Quick mode leaves it out: Chapter 7's quick
    run reads the table above only, and ``congeal eval --dataset lego-capture`` runs the row on
    its own, with true and co-segmented masks.
    """
    from . import runtime
    from .evaluation import descriptor_transfer
    from .features import extract_descriptors, load_backbone

    if args.method != "congeal3d":
        raise UsageError(f"congeal eval --dataset lego: method {args.method!r} is not available here; use congeal3d (its table includes the nearest-neighbour baseline)")
    mode = runtime.get_mode(getattr(args, "mode", None))
    config = Congeal3DConfig.for_mode(mode, seed=args.seed)
    device = runtime.get_device(getattr(args, "device", None))
    backbone = load_backbone(getattr(args, "backbone", None), device)
    progress = _progress(getattr(args, "progress", True))
    bench = load_lego_benchmark(config, inputs=runtime.pick({"quick": 16, "full": None}, mode), seed=args.seed)
    start = time.perf_counter()
    field = fit_shape(bench.anchor_images, bench.anchor_masks, bench.anchor_c2w, bench.fov, config, progress, device)
    seconds = {"shape": round(time.perf_counter() - start, 2)}
    add_surface_keypoints(bench, field.cpu())
    field.to(device)
    start = time.perf_counter()
    candidates = render_candidates(field, config)
    seconds["candidate_renders"] = round(time.perf_counter() - start, 2)
    out = {
        "dataset": "lego", "method": "congeal3d", "backbone": backbone.name, "backbone_title": backbone.title, "mode": mode, "device": str(device), "seed": args.seed,
        "config": asdict(config), "anchors": bench.anchor_index, "inputs": bench.input_index, "n_keypoints_3d": int(bench.points3d.shape[0]),
        "protocol": "pose errors after a similarity Procrustes alignment of camera centres; translation in scene units (cameras at radius 4.03); "
        "PCK@0.1 of the target's mask box over ordered pairs, 3-D points visible in both views, binned by relative rotation (degrees)",
        "seconds": seconds, "appearances": {},
    }
    for appearance in ("rendered", "varied"):
        images = bench.varied if appearance == "varied" else bench.images
        full = congeal(field, images, bench.masks, config, backbone, progress=progress, candidates=candidates)
        no_init = congeal(field, images, bench.masks, config, backbone, search=False, maps=False, progress=progress, candidates=candidates)
        poses = {
            "random poses": pose_errors(random_cameras(len(bench), config.camera_radius, args.seed), bench.c2w),
            "no pose initialisation": pose_errors(no_init.refined["c2w"], bench.c2w),
            "no IoU refinement": pose_errors(full.search["c2w"], bench.c2w),
            "3D congealing": pose_errors(full.refined["c2w"], bench.c2w),
        }
        keypoints = bench.keypoint_set(appearance == "varied")
        nn = descriptor_transfer(extract_descriptors(keypoints.images, backbone, grid=64), keypoints.images.shape[-1])
        pck = {"nearest neighbour": pck_by_rotation(nn, keypoints, bench.c2w)}
        if appearance == "varied" and getattr(args, "planar", True):
            for name, (transfer, seconds) in planar_transfers(keypoints, bench.masks, backbone, mode, args.seed, device).items():
                pck[name] = {**pck_by_rotation(transfer, keypoints, bench.c2w), "seconds": round(seconds, 1)}
        pck["3D congealing"] = pck_by_rotation(lambda a, b, p: transfer_points(full.maps, a, b, p), keypoints, bench.c2w)
        out["appearances"][appearance] = {"poses": poses, "pck": pck, "seconds": full.seconds}
    if getattr(args, "capture", mode == "full"):
        from .captures import evaluate_capture

        out["capture"] = evaluate_capture(config, backbone, device, progress, args.seed, inputs=runtime.pick({"quick": 16, "full": None}, mode))
    from .evaluation import peak_memory_mb

    out["peak_rss_mb"] = peak_memory_mb(device)
    out["table"] = format_lego_table(out)
    return out


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def planar_transfers(keypoints: "KeypointSet", masks: torch.Tensor, backbone, mode: str, seed: int = 0, device=None) -> dict:
    """The planar methods of Chapters 4 and 5 on the same inputs, for the comparison: SpaceJAM and
    Neural Congealing, each with the input masks and with reflections off (3-D points have no
    left/right twins to swap). Returns ``{name: (transfer, seconds)}``."""
    from . import neural, spacejam
    from .evaluation import transfer_via_transforms

    size = keypoints.images.shape[-1]
    out = {}
    tic = time.perf_counter()
    sj_config = spacejam.SpaceJAMConfig.for_mode(mode, seed=seed, flips=False)
    keys, sj_masks = spacejam.prepare_keys(keypoints.images, backbone, sj_config, masks)
    out["SpaceJAM"] = (transfer_via_transforms(spacejam.train(keys, sj_masks, sj_config, device=device).transforms, size), time.perf_counter() - tic)
    tic = time.perf_counter()
    nc_config = neural.NeuralCongealingConfig.for_mode(mode, seed=seed, flips=False, gradual_atlas=True, relaxed_rigidity=True)
    data = neural.prepare(keypoints.images, masks, backbone, nc_config, device)
    out["Neural Congealing"] = (neural.train(data, nc_config).transfer((size, size)), time.perf_counter() - tic)
    return out


def format_lego_table(results: dict) -> str:
    """Plain-text tables of :func:`evaluate_lego`'s results."""
    lines = [f"lego, 3-D congealing, backbone {results['backbone']}, {results['mode']} mode"]
    for appearance, block in results["appearances"].items():
        lines.append(f"\ninputs {appearance}: camera errors (Procrustes-aligned | frame-free, over pairs)")
        lines.append(f"{'':26} {'rot mean':>9} {'rot med':>8} {'trans mean':>11} {'trans med':>10} | {'rel rot med':>11} {'view med':>9}")
        for name, e in block["poses"].items():
            lines.append(f"{name:26} {e['rotation_mean']:9.1f} {e['rotation_median']:8.1f} {e['translation_mean']:11.2f} {e['translation_median']:10.2f} | "
                         f"{e['relative_rotation_median']:11.1f} {e['view_angle_median']:9.1f}")
        bins = list(next(iter(block["pck"].values()))["bins"])
        lines.append(f"PCK@0.1 by relative rotation: {'':2}{'all':>6} " + " ".join(f"{b + ' deg':>11}" for b in bins))
        for name, p in block["pck"].items():
            cells = " ".join(f"{_percent(p['bins'][b]['pck']):>11}" for b in bins)
            lines.append(f"{name:31} {100 * p['all']:6.1f} {cells}")
        lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in block["seconds"].items()))
    lines.append("seconds (shared): " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))
    if "capture" in results:
        from .captures import format_capture_rows

        lines += ["", *format_capture_rows(results["capture"])]
    else:
        lines.append("\n(the capture-like row runs in full mode; in quick mode: congeal eval --dataset lego-capture --method congeal3d)")
    return "\n".join(lines)


def align_folder(image_set, args) -> None:
    """``congeal align DIR --method congeal3d --shape SHAPE --out OUT``: per-image camera (JSON in
    ``summary.json``, matrices in ``mappings.pt``), NOCS map as RGB, mask, and the canonical render
    beside each input, plus an edit painted in the canonical frame onto every image.

    Masks come from the images' alpha channel if they have one, else from co-segmentation
    (Chapter 3). Nothing is written unless every stage succeeds. With ``args.cameras`` (a
    capture's camera file) the shape is fitted from the photos themselves instead
    (:func:`congealing.captures.align_capture`).
    """
    if getattr(args, "cameras", None) is not None:
        from .captures import align_capture

        return align_capture(image_set, args)
    from .features import load_backbone
    from .features import saliency_masks
    from .report import write_alignment

    shape_path = getattr(args, "shape", None)
    if shape_path is None:
        raise UsageError(
            "congeal align --method congeal3d needs --shape SHAPE_CKPT: a canonical shape saved by "
            "congealing.congeal3d.save_shape (Chapter 6 fits one for lego with congealing.congeal3d.fit_shape)"
        )
    from .report import AlignProgress
    from .runtime import get_device

    progress = AlignProgress("congeal3d")
    progress.stage("loading the shape and the backbone")
    device = get_device(getattr(args, "device", None))
    field = load_shape(shape_path).to(device)
    config = photo_search_config(Congeal3DConfig.for_mode(args.mode, seed=getattr(args, "seed", 0)))
    backbone = load_backbone(getattr(args, "backbone", None), device)
    size = config.image_size
    images = F.interpolate(image_set.images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    alpha = image_set.masks if image_set.masks is not None and bool((image_set.masks < 0.5).any()) else None
    valid = None if image_set.valid is None else F.interpolate(image_set.valid, size=(size, size), mode="area")
    masks, mask_source = saliency_masks(images, backbone, None if alpha is None else F.interpolate(alpha, size=(size, size), mode="area"), valid)
    masks = (F.interpolate(masks, size=(size, size), mode="nearest") > 0.5).float()
    _check_masks(masks, image_set.names)
    progress.stage("pose search, pose refinement, coordinate maps (bars below)")
    result = congeal(field, images, masks, config, backbone, progress=_progress(True))
    progress.stage("writing the report")
    maps = result.maps
    cams, fovs = result.refined["c2w"], result.refined["fov"]
    azimuth, elevation = camera_angles(cams)
    with torch.no_grad():
        views = spherical_cameras(torch.tensor([-90.0, 0.0, 90.0]), torch.tensor([30.0, 30.0, 30.0]), config.camera_radius).to(device)
        front = {k: v.cpu() for k, v in render(field, views, math.radians(37.5), size, config.samples_per_ray).items()}
    poses = [
        {"image": name, "c2w": c.tolist(), "fov_deg": math.degrees(float(f)), "azimuth_deg": float(a), "elevation_deg": float(e)}
        for name, c, f, a, e in zip(image_set.names, cams, fovs, azimuth, elevation)
    ]
    write_alignment(
        args.out, method="congeal3d", names=image_set.names, inputs=images, aligned=maps.renders["rgb"],
        atlas={f"canonical shape, azimuth {a}": view for a, view in zip((-90, 0, 90), front["rgb"])},
        mode=args.mode, transforms=cams,
        summary={"backbone": backbone.name, "masks": mask_source, "shape": str(shape_path), "seconds": result.seconds, "poses": poses},
        extra_images={"NOCS map": maps.nocs, "edit (canonical stripes)": propagate_nocs_edit(maps, images, stripes_edit())},
        masks=masks.cpu(), coordinate_maps=(maps.nocs.cpu(), maps.mask.cpu()), poses=poses,
        objective={"name": "1 - soft IoU of the rendered silhouette and the mask", "before": result.refined["loss"][0], "after": result.refined["loss"][-1], "better": "lower"}
        if result.refined["loss"] else None,
        method_scores={"name": "silhouette IoU", "values": silhouette_iou(maps.renders["mask"].cpu(), masks.cpu()), "better": "higher",
                       "doc": "intersection over union of the shape rendered at the image's camera and the image's object mask, in [0, 1]; higher is better"},
    )
    progress.close()
