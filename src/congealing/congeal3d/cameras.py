"""Cameras in the OpenGL convention of :mod:`congealing.congeal3d`: look-at and spherical placement,
rays and projection, se(3) and rotation angles."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "look_at", "spherical_cameras", "camera_angles", "focal_length", "camera_rays", "project_points", "se3_basis",
    "se3_exp", "rotation_angle_deg", "random_cameras", "relative_rotations",
]


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
    """Pixel coordinates ``(B, P, 2)`` and depths ``(B, P)`` (distance along the viewing axis) of
    world points ``(P, 3)`` or ``(B, P, 3)`` seen by cameras ``c2w`` ``(B, 4, 4)``.

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
    """Geodesic angle in degrees ``(B,)`` between rotations ``(B, 3, 3)``.

    >>> R = se3_exp(torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]]))[:, :3, :3]
    >>> rotation_angle_deg(R, torch.eye(3)[None]).round(decimals=2)
    tensor([17.1900])
    """
    cosine = ((R_a.transpose(1, 2) @ R_b).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))


# ----------------------------------------------------------------------------- baselines and pairs of cameras


def random_cameras(count: int, radius: float, seed: int = 0) -> torch.Tensor:
    """The random-pose baseline: ``count`` cameras at uniformly random directions, looking at the origin."""
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return look_at(radius * directions)


def relative_rotations(c2w: torch.Tensor) -> torch.Tensor:
    """Angle in degrees ``(N, N)`` between every two cameras' orientations."""
    R = c2w[:, :3, :3]
    cosine = ((torch.einsum("aji,bjk->abik", R, R).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cosine))
