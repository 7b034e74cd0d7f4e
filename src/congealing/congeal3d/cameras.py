"""Cameras in the OpenGL convention of :mod:`congealing.congeal3d`: placement, rays, projection, se(3).

Taught in Chapter 6, "Cameras and rendering" (rays and the convention) and "Pose refinement"
(se(3) updates); the camera angles return in "Pose search" and "Edits and pose-aware filtering".
A camera is a ``(B, 4, 4)`` camera-to-world matrix ``c2w`` whose columns are its x (right), y (up)
and z (backwards) axes and its centre; it looks along ``-z``; the world's up is ``+z``. A field of
view is the full horizontal angle in radians; images are square.

>>> c2w = spherical_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 4.0)
>>> [round(float(a), 1) + 0.0 for a in camera_angles(c2w)]
[0.0, 0.0]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "look_at", "spherical_cameras", "camera_angles", "focal_length", "camera_rays", "project_points", "se3_basis",
    "se3_exp", "rotation_angle_deg", "random_cameras", "relative_rotations",
]


def look_at(centres: torch.Tensor, target: torch.Tensor | None = None, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world matrices of cameras at ``centres`` looking at ``target``.

    A camera looking straight along ``up`` gets an arbitrary but valid roll (its x axis is the
    world's x). Chapter 6, "Cameras and rendering".

    Args:
        centres: camera centres ``(B, 3)``.
        target: the point looked at, ``(3,)`` or ``(B, 3)`` (default: the origin).
        up: the world's up direction.

    Returns:
        the cameras ``(B, 4, 4)``.

    Example:
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
    """Cameras on a sphere around the origin, looking at it.

    Azimuth is measured in the xy-plane from +x towards +y, elevation from the xy-plane towards +z.
    The pose search's candidate grid is built from it (Chapter 6, "Pose search"); "The canonical
    shape, two routes" renders from one.

    Args:
        azimuth_deg: azimuths ``(B,)`` in degrees.
        elevation_deg: elevations ``(B,)`` in degrees.
        radius: distance of every camera from the origin.

    Returns:
        the cameras ``(B, 4, 4)`` (see :func:`look_at`).

    Example:
        >>> spherical_cameras(torch.tensor([90.0]), torch.tensor([0.0]), 4.0)[0, :3, 3].round() + 0.0
        tensor([0., 4., 0.])
    """
    az, el = torch.deg2rad(azimuth_deg.float()), torch.deg2rad(elevation_deg.float())
    centres = radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    return look_at(centres)


def camera_angles(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation in degrees of camera centres (the inverse of :func:`spherical_cameras`).

    Chapter 6 plots the inputs' viewpoints with it ("From 2-D to 3-D", "Pose search") and
    :func:`congealing.congeal3d.filter_by_pose` selects by it.

    Args:
        c2w: cameras ``(B, 4, 4)``.

    Returns:
        ``(azimuth (B,), elevation (B,))`` in degrees; azimuth in ``(-180, 180]``.

    Example:
        >>> az, el = camera_angles(spherical_cameras(torch.tensor([30.0]), torch.tensor([45.0]), 2.0))
        >>> round(az.item(), 3), round(el.item(), 3)
        (30.0, 45.0)
    """
    centre = c2w[:, :3, 3]
    azimuth = torch.rad2deg(torch.atan2(centre[:, 1], centre[:, 0]))
    elevation = torch.rad2deg(torch.asin((centre[:, 2] / centre.norm(dim=-1)).clamp(-1, 1)))
    return azimuth, elevation


def focal_length(fov: torch.Tensor | float, size: int) -> torch.Tensor:
    """Focal length in pixels of a square image with horizontal field of view ``fov``.

    ``0.5 size / tan(fov / 2)``; used by :func:`project_points` and
    :func:`congealing.congeal3d.place_camera` (Chapter 6, "Pose search").

    Args:
        fov: field of view in radians, a number or a tensor of any shape.
        size: image side in pixels.

    Returns:
        the focal length, a float32 tensor shaped like ``fov``.

    Example:
        >>> import math
        >>> focal_length(math.radians(90), 64)
        tensor(32.)
    """
    return 0.5 * size / torch.tan(0.5 * torch.as_tensor(fov, dtype=torch.float32))


def camera_rays(c2w: torch.Tensor, fov: torch.Tensor | float, size: int, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions through pixels of ``size`` x ``size`` images.

    The principal point is the image centre ``(size - 1) / 2``; pixel centres are at integers.
    Differentiable in ``c2w`` and ``fov``. Taught in Chapter 6, "Cameras and rendering".

    Args:
        c2w: cameras ``(B, 4, 4)``.
        fov: field of view in radians, a number or ``(B,)``.
        size: image side in pixels.
        pixels: pixel ``(x, y)`` coordinates ``(B, R, 2)`` (default: every pixel, row-major, so
            ``R = size * size``).

    Returns:
        ``(origins, directions)``, each ``(B, R, 3)``.

    Example:
        >>> import math
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
    """Pixel coordinates and depths of world points seen by cameras (the inverse of :func:`camera_rays`).

    Used to carve the visual hull (:func:`congealing.congeal3d.carve_visual_hull`; Chapter 6, "The
    canonical shape, two routes") and by :mod:`congealing.lego` to project the lego's keypoints
    ("From 2-D to 3-D").

    Args:
        points: world points ``(P, 3)`` (shared by all cameras) or ``(B, P, 3)``.
        c2w: cameras ``(B, 4, 4)``.
        fov: field of view in radians, a number or ``(B,)``.
        size: image side in pixels.

    Returns:
        ``(xy (B, P, 2), depth (B, P))``: pixel ``(x, y)`` and the distance along the viewing axis
        (negative behind the camera).

    Example:
        >>> import math
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
    """The six generators of se(3): rotations about x, y, z, then translations along x, y, z.

    The 3-D counterpart of :func:`congealing.warps.lie_basis`: a camera update is ``exp`` of a
    combination of these, so every parameter value is a valid rigid motion (BARF's choice). Taught
    in Chapter 6, "Pose refinement".

    Args:
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the generators ``(6, 4, 4)``.

    Example:
        >>> se3_basis()[2]                                  # rotate about z
        tensor([[ 0., -1.,  0.,  0.],
                [ 1.,  0.,  0.,  0.],
                [ 0.,  0.,  0.,  0.],
                [ 0.,  0.,  0.,  0.]])
    """
    G = torch.zeros(6, 4, 4, dtype=dtype, device=device)
    G[0, 2, 1], G[0, 1, 2] = 1.0, -1.0  # rotate about x
    G[1, 0, 2], G[1, 2, 0] = 1.0, -1.0  # rotate about y
    G[2, 1, 0], G[2, 0, 1] = 1.0, -1.0  # rotate about z
    G[3, 0, 3] = G[4, 1, 3] = G[5, 2, 3] = 1.0
    return G


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Rigid motions of se(3) parameters (the matrix exponential). Differentiable.

    Taught in Chapter 6, "Pose refinement": each camera is refined as ``c2w @ se3_exp(xi)``.

    Args:
        xi: parameters ``(B, 6)``: rotation vector, then translation (:func:`se3_basis` order).

    Returns:
        the rigid motions ``(B, 4, 4)``.

    Raises:
        FloatingPointError: ``xi`` holds NaN or inf (the pose optimisation diverged).

    Example:
        >>> import math
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
    """Geodesic angle in degrees between two batches of rotations.

    The rotation error of :func:`congealing.congeal3d.pose_errors` (Chapter 6, "Pose search" and
    "Pose refinement").

    Args:
        R_a: rotations ``(B, 3, 3)``.
        R_b: rotations ``(B, 3, 3)``.

    Returns:
        the angles ``(B,)`` in degrees, in ``[0, 180]``.

    Example:
        >>> R = se3_exp(torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]]))[:, :3, :3]
        >>> rotation_angle_deg(R, torch.eye(3)[None]).round(decimals=2)
        tensor([17.1900])
    """
    cosine = ((R_a.transpose(1, 2) @ R_b).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))


# ----------------------------------------------------------------------------- baselines and pairs of cameras


def random_cameras(count: int, radius: float, seed: int = 0) -> torch.Tensor:
    """The random-pose baseline: cameras at uniformly random directions, looking at the origin.

    Seeded, so the baseline is the same on every run. The "random poses" row of Chapter 6, "Pose
    search" and "Pose refinement".

    Args:
        count: the number of cameras ``N``.
        radius: distance of every camera from the origin.
        seed: seed of the generator that draws the directions.

    Returns:
        the cameras ``(N, 4, 4)``.

    Example:
        >>> cams = random_cameras(3, 4.0)
        >>> cams.shape, bool(torch.allclose(cams[:, :3, 3].norm(dim=-1), torch.full((3,), 4.0)))
        (torch.Size([3, 4, 4]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return look_at(radius * directions)


def relative_rotations(c2w: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between every two cameras' orientations.

    :mod:`congealing.lego` bins keypoint transfer by it (Chapter 6, "Canonical coordinates and
    correspondence", PCK against the relative rotation of the two views).

    Args:
        c2w: cameras ``(N, 4, 4)``.

    Returns:
        the angles ``(N, N)`` in degrees, symmetric, zero on the diagonal.

    Example:
        >>> cams = spherical_cameras(torch.tensor([0.0, 90.0]), torch.zeros(2), 4.0)
        >>> relative_rotations(cams).round()
        tensor([[ 0., 90.],
                [90.,  0.]])
    """
    R = c2w[:, :3, :3]
    cosine = ((torch.einsum("aji,bjk->abik", R, R).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cosine))
