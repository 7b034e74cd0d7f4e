"""3-D congealing: cameras, se(3), the voxel field and its renderer, shape boxes and checkpoints,
visual-hull carving, pose search, IoU refinement, pose errors, coordinate maps, transfer, edits and
the lego benchmark. Analytic fields (balls) and a tiny colour "backbone"; a few seconds per test."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from congealing import congeal3d as c3
from congealing import lego
from congealing.congeal3d import Congeal3DConfig, VoxelField

FOV = math.radians(40.0)


# ----------------------------------------------------------------------------- helpers


def ball_field(balls, resolution: int = 24, bound: float = 1.0) -> VoxelField:
    """A field of solid balls ``[(centre (3,), radius, colour (3,)), ...]``: density raw 30 inside
    (softplus(26) = 26 per unit: opaque) and -20 outside; colour logits +-10 (pure colours)."""
    field = VoxelField(resolution, bound)
    axis = torch.linspace(-bound, bound, resolution)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # the grid is stored [z, y, x]
    points = torch.stack([x, y, z], dim=-1)
    with torch.no_grad():
        field.density.fill_(-20.0)
        field.colour.fill_(-10.0)
        for centre, radius, colour in balls:
            inside = (points - torch.tensor(centre)).norm(dim=-1) <= radius
            field.density[0, 0][inside] = 30.0
            for c in range(3):
                field.colour[0, c][inside] = 10.0 if colour[c] > 0.5 else -10.0
    return field


def red_ball(radius: float = 0.5, centre=(0.0, 0.0, 0.0), resolution: int = 24) -> VoxelField:
    return ball_field([(centre, radius, (1.0, 0.0, 0.0))], resolution)


def asymmetric_field(resolution: int = 24) -> VoxelField:
    """Three balls of different sizes and colours: no rotation maps it onto itself."""
    return ball_field(
        [((0.4, 0.0, 0.0), 0.35, (1.0, 0.0, 0.0)), ((-0.3, 0.35, 0.2), 0.25, (0.0, 0.0, 1.0)), ((-0.1, -0.4, -0.25), 0.2, (0.0, 1.0, 0.0))],
        resolution,
    )


def tiny_config(**overrides) -> Congeal3DConfig:
    base = dict(
        image_size=32, grid_resolution=24, bound=1.0, samples_per_ray=32, search_fovs_deg=(40.0,), search_azimuths=8,
        search_elevations=4, camera_radius=3.0, search_render_size=32, crop_size=32, descriptor_grid=8,
        refine_steps=30, rays_per_image=256, mapping_steps=20, mapping_size=16, global_delta=3,
    )
    return Congeal3DConfig(**{**base, **overrides})


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum().clamp_min(1))


# ----------------------------------------------------------------------------- cameras


def test_look_at_gives_right_handed_rotations_with_z_from_target_to_camera():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(6, 3, generator=g)
    target = torch.tensor([0.2, -0.1, 0.3])
    c2w = c3.look_at(centres, target)
    R = c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(6, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(6), atol=1e-5)
    assert torch.allclose(R[:, :, 2], F.normalize(centres - target, dim=-1), atol=1e-5)
    assert torch.allclose(c2w[:, :3, 3], centres) and torch.equal(c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(6, 4))
    assert (R[:, 2, 0].abs() < 1e-5).all()  # no roll: the camera's x axis stays horizontal
    # straight down the world's up: still a valid rotation
    top = c3.look_at(torch.tensor([[0.0, 0.0, 3.0]]))[0, :3, :3]
    assert torch.allclose(top.T @ top, torch.eye(3), atol=1e-5) and torch.det(top) > 0.99


def test_spherical_cameras_and_camera_angles_round_trip():
    azimuth = torch.tensor([-170.0, -45.0, 0.0, 30.0, 120.0, 179.0])
    elevation = torch.tensor([-80.0, -10.0, 0.0, 45.0, 20.0, 85.0])
    c2w = c3.spherical_cameras(azimuth, elevation, 2.5)
    assert torch.allclose(c2w[:, :3, 3].norm(dim=-1), torch.full((6,), 2.5), atol=1e-5)
    az, el = c3.camera_angles(c2w)
    assert torch.allclose(az, azimuth, atol=1e-3) and torch.allclose(el, elevation, atol=1e-3)
    # every camera looks at the origin
    assert torch.allclose(c2w[:, :3, 2], F.normalize(c2w[:, :3, 3], dim=-1), atol=1e-5)


def test_camera_rays_and_project_points_agree():
    g = torch.Generator().manual_seed(1)
    c2w = c3.look_at(3 * F.normalize(torch.randn(3, 3, generator=g), dim=-1) + 0.5, torch.tensor([0.1, 0.0, -0.2]))
    size, fov = 16, torch.tensor([0.6, 0.9, 1.2])
    pixels = torch.rand(3, 10, 2, generator=g) * (size - 1)
    origins, directions = c3.camera_rays(c2w, fov, size, pixels)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(3, 10), atol=1e-5)
    assert torch.allclose(origins, c2w[:, None, :3, 3].expand(3, 10, 3))
    t = 1.0 + 3 * torch.rand(3, 10, generator=g)
    points = origins + t[..., None] * directions
    xy, depth = c3.project_points(points, c2w, fov, size)
    assert torch.allclose(xy, pixels, atol=1e-3)
    along_axis = t * (directions * -c2w[:, None, :3, 2]).sum(-1)  # distance along the viewing axis
    assert torch.allclose(depth, along_axis, atol=1e-4)
    assert (depth < t + 1e-5).all()
    # default pixels: row-major, every pixel; the centre ray of an odd image is the optical axis
    _, all_dirs = c3.camera_rays(c2w, fov, 5)
    assert all_dirs.shape == (3, 25, 3)
    assert torch.allclose(all_dirs[:, 12], -c2w[:, :3, 2], atol=1e-6)
    assert all_dirs[0, 4] @ c2w[0, :3, 0] > 0 and all_dirs[0, 0] @ c2w[0, :3, 1] > 0  # pixel (4, 0): right and up


def test_focal_length():
    assert torch.isclose(c3.focal_length(math.radians(90.0), 64), torch.tensor(32.0))
    assert torch.isclose(c3.focal_length(torch.tensor(2 * math.atan(0.25)), 100), torch.tensor(200.0))
    fovs = torch.tensor([0.5, 1.0])
    assert c3.focal_length(fovs, 10).shape == (2,) and c3.focal_length(fovs, 10)[0] > c3.focal_length(fovs, 10)[1]


# ----------------------------------------------------------------------------- se(3)


def test_se3_exp_identity_orthonormal_and_a_known_rotation():
    assert torch.allclose(c3.se3_exp(torch.zeros(2, 6)), torch.eye(4).expand(2, 4, 4))
    xi = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    T = c3.se3_exp(xi)
    R = T[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(5), atol=1e-5)
    assert torch.allclose(T[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(5, 4))
    a = 0.7
    rx = c3.se3_exp(torch.tensor([[a, 0.0, 0.0, 0.0, 0.0, 0.0]]))[0, :3, :3]
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    assert torch.allclose(rx, expected, atol=1e-5)
    ry = c3.se3_exp(torch.tensor([[0.0, a, 0.0, 0.0, 0.0, 0.0]]))[0, :3, :3]
    assert torch.allclose(ry, torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]]), atol=1e-5)
    pure = c3.se3_exp(torch.tensor([[0.0, 0.0, 0.0, 1.0, -2.0, 0.5]]))[0]
    assert torch.allclose(pure[:3, 3], torch.tensor([1.0, -2.0, 0.5])) and torch.allclose(pure[:3, :3], torch.eye(3))


def test_se3_exp_rejects_nan_and_rotation_angle():
    with pytest.raises(FloatingPointError, match="non-finite"):
        c3.se3_exp(torch.tensor([[0.0, float("nan"), 0.0, 0.0, 0.0, 0.0]]))
    axis = F.normalize(torch.tensor([1.0, 2.0, -1.0]), dim=0)
    R = c3.se3_exp(torch.cat([0.5 * axis, torch.zeros(3)])[None])[:, :3, :3]
    assert torch.allclose(c3.rotation_angle_deg(R, torch.eye(3)[None]), torch.tensor([math.degrees(0.5)]), atol=1e-2)
    assert torch.allclose(c3.rotation_angle_deg(torch.eye(3)[None], R), torch.tensor([math.degrees(0.5)]), atol=1e-2)
    assert c3.rotation_angle_deg(R, R).item() < 0.1
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))[None]
    assert abs(c3.rotation_angle_deg(flip, torch.eye(3)[None]).item() - 180.0) < 1e-3


# ----------------------------------------------------------------------------- Procrustes and pose errors


def _random_similarity(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = c3.se3_exp(torch.cat([torch.randn(3, generator=g), torch.zeros(3)])[None])[0, :3, :3]
    return 0.5 + 2 * torch.rand((), generator=g), R, torch.randn(3, generator=g)


def test_similarity_procrustes_recovers_a_random_similarity(device):
    s, R, t = (x.to(device) for x in _random_similarity(3))
    source = torch.randn(12, 3, generator=torch.Generator().manual_seed(4)).to(device)
    s_hat, R_hat, t_hat = c3.similarity_procrustes(source, s * source @ R.T + t)
    assert torch.isclose(s_hat, s, atol=1e-4)
    assert torch.allclose(R_hat, R, atol=1e-4) and torch.det(R_hat) > 0.999
    assert torch.allclose(t_hat, t, atol=1e-4)
    # a reflection in the data does not turn into a reflection in R
    _, R_mirror, _ = c3.similarity_procrustes(source, source * torch.tensor([-1.0, 1.0, 1.0], device=device))
    assert abs(torch.det(R_mirror).item() - 1.0) < 1e-5


def test_pose_errors_zero_up_to_a_similarity_and_large_for_random_cameras():
    truth = c3.spherical_cameras(torch.tensor([-150.0, -60.0, 0.0, 40.0, 100.0, 170.0]), torch.tensor([10.0, -30.0, 60.0, 0.0, 25.0, -5.0]), 4.0)
    s, R, t = _random_similarity(5)
    predicted = truth.clone()  # the same cameras in another world frame: x -> s R x + t
    predicted[:, :3, :3] = R @ truth[:, :3, :3]
    predicted[:, :3, 3] = s * truth[:, :3, 3] @ R.T + t
    errors = c3.pose_errors(predicted, truth)
    assert errors["rotation_mean"] < 0.1 and errors["translation_mean"] < 1e-3
    assert len(errors["rotation_deg"]) == 6 and len(errors["translation"]) == 6
    baseline = c3.pose_errors(c3.random_cameras(6, 4.0, seed=1), truth)
    assert baseline["rotation_mean"] > 20.0 and baseline["translation_mean"] > 0.5
    assert baseline["rotation_median"] <= max(baseline["rotation_deg"])
    cams = c3.random_cameras(5, 2.0, seed=2)
    assert torch.allclose(cams[:, :3, 3].norm(dim=-1), torch.full((5,), 2.0), atol=1e-5)
    assert torch.equal(cams, c3.random_cameras(5, 2.0, seed=2))


# ----------------------------------------------------------------------------- the field and the renderer


def test_render_a_solid_ball():
    field = red_ball(0.5)
    c2w = c3.spherical_cameras(torch.tensor([30.0]), torch.tensor([20.0]), 3.0)
    out = c3.render(field, c2w, FOV, 17, samples=96)
    assert out["rgb"].shape == (1, 3, 17, 17) and out["mask"].shape == out["depth"].shape == (1, 1, 17, 17)
    mask, rgb = out["mask"][0, 0], out["rgb"][0]
    assert mask[8, 8] > 0.99 and mask[0, 0] < 0.01
    assert torch.allclose(rgb[:, 8, 8], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3), atol=0.02)  # the white background
    voxel = 2 * field.bound / (field.resolution - 1)
    assert abs(out["depth"][0, 0, 8, 8].item() - (3.0 - 0.5)) < voxel
    nocs = out["nocs"][0][:, mask > 0.5]
    assert nocs.min() >= 0.0 and nocs.max() <= 1.0
    # the nocs field of the default box is (p + bound) / (2 bound): the visible surface point
    surface = c2w[0, :3, 3] * (0.5 / 3.0)
    assert torch.allclose(out["nocs"][0, :, 8, 8], (surface + 1.0) / 2.0, atol=0.05)
    # the silhouette is a disc of the right radius: r_px = f tan(asin(r / d))
    area = float((mask > 0.5).sum())
    radius_px = c3.focal_length(FOV, 17) * math.tan(math.asin(0.5 / 3.0))
    assert abs(area - math.pi * radius_px**2) < 0.25 * math.pi * radius_px**2


def test_render_is_differentiable_in_the_camera():
    field = red_ball(0.4, centre=(0.3, 0.2, 0.0), resolution=16)
    c2w = c3.spherical_cameras(torch.tensor([0.0]), torch.tensor([10.0]), 3.0).requires_grad_(True)
    fov = torch.tensor([FOV], requires_grad=True)
    out = c3.render(field, c2w, fov, 12, samples=32)
    weights = torch.linspace(-1, 1, 12).expand(12, 12)  # left/right asymmetric
    loss = (out["mask"][0, 0] * weights).sum() + out["rgb"].mean()
    loss.backward()
    assert torch.isfinite(c2w.grad).all() and c2w.grad[0, :3].abs().sum() > 1e-4
    assert torch.isfinite(fov.grad).all() and fov.grad.abs().item() > 0


def test_render_chunk_size_does_not_change_the_result(device):
    field = asymmetric_field(16).to(device)
    c2w = c3.spherical_cameras(torch.tensor([10.0, 200.0]), torch.tensor([20.0, -40.0]), 3.0).to(device)
    fov = torch.tensor([0.7, 0.9], device=device)
    whole = c3.render(field, c2w, fov, 10, samples=24)
    pieces = c3.render(field, c2w, fov, 10, samples=24, chunk=37)
    for key in whole:
        assert torch.allclose(whole[key], pieces[key], atol=1e-6), key
    assert whole["mask"].amax() > 0.9  # the views do see the object


# ----------------------------------------------------------------------------- shape box, checkpoints, carving


def test_set_shape_box_measures_the_ball_and_rejects_an_empty_field():
    field = red_ball(0.5, centre=(0.2, -0.1, 0.0))
    low, high = c3.set_shape_box(field)
    voxel = 2 * field.bound / (field.resolution - 1)
    centre = torch.tensor([0.2, -0.1, 0.0])
    assert torch.allclose(low, centre - 0.5, atol=1.5 * voxel) and torch.allclose(high, centre + 0.5, atol=1.5 * voxel)
    assert torch.equal(field.box_min, low) and torch.equal(field.box_max, high)
    nocs = field.nocs(torch.stack([low, high, centre, torch.tensor([5.0, 5.0, 5.0])]))
    assert torch.allclose(nocs[0], torch.zeros(3)) and torch.allclose(nocs[1], torch.ones(3))
    assert torch.allclose(nocs[2], torch.full((3,), 0.5), atol=0.1) and torch.equal(nocs[3], torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        c3.set_shape_box(VoxelField(8, 1.0))


def test_save_and_load_shape_round_trip_and_refusals(tmp_path):
    field = asymmetric_field(12)
    c3.set_shape_box(field)
    path = tmp_path / "shape.pt"
    c3.save_shape(field, path, steps=3, scene="balls")
    blob = torch.load(path, weights_only=True)
    assert blob["format_version"] == c3.SHAPE_FORMAT_VERSION and blob["metadata"] == {"steps": 3, "scene": "balls"}
    loaded = c3.load_shape(path)
    assert loaded.bound == field.bound and loaded.resolution == 12
    for key, value in field.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    blob["format_version"] = c3.SHAPE_FORMAT_VERSION + 1
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=rf"shape format {c3.SHAPE_FORMAT_VERSION + 1}.*fit the shape again"):
        c3.load_shape(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a congealing 3-D shape"):
        c3.load_shape(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a congealing 3-D shape, or it is damaged"):
        c3.load_shape(tmp_path / "garbage.pt")


def test_carve_visual_hull_removes_a_floater():
    cameras = c3.spherical_cameras(torch.tensor([0.0, 90.0, 200.0]), torch.tensor([0.0, 10.0, 5.0]), 3.0)
    masks = c3.render(red_ball(0.45), cameras, FOV, 24, samples=48)["mask"]
    field = ball_field([((0.0, 0.0, 0.0), 0.45, (1.0, 0.0, 0.0)), ((0.0, 0.0, 0.82), 0.15, (0.0, 1.0, 0.0))])
    blob = (torch.tensor([0.0, 0.0, 0.82]) / field.bound + 1) / 2 * (field.resolution - 1)
    zi = int(blob[2].round())
    centre = field.resolution // 2
    assert field.density[0, 0, zi, centre, centre] > 20  # the floater is there before carving
    carved = c3.carve_visual_hull(field, masks, cameras, FOV)
    assert 0.0 < carved < 1.0
    assert field.density[0, 0, zi - 1 : zi + 2, centre - 1 : centre + 2, centre - 1 : centre + 2].max() <= -20
    assert field.density[0, 0, centre - 2 : centre + 2, centre - 2 : centre + 2, centre - 2 : centre + 2].min() == 30  # the ball stays
    after = c3.render(field, cameras, FOV, 24, samples=48)["mask"]
    assert iou(after, masks) > 0.95


# ----------------------------------------------------------------------------- pose search


def test_candidate_cameras_grid():
    default = c3.candidate_cameras(Congeal3DConfig())
    assert default["c2w"].shape == (768, 4, 4) and default["fov"].shape == default["azimuth"].shape == (768,)
    azimuths, elevations = default["azimuth"].unique(), default["elevation"].unique()
    assert len(azimuths) == 16 and len(elevations) == 16
    assert torch.allclose(azimuths, -180 + 22.5 * (torch.arange(16) + 0.5))
    assert torch.allclose(elevations, -90 + 11.25 * (torch.arange(16) + 0.5))
    assert azimuths.min() >= -180 and azimuths.max() < 180 and elevations.abs().max() < 90
    assert torch.allclose(default["fov"].unique(), torch.deg2rad(torch.tensor([15.0, 37.5, 60.0])))
    assert torch.allclose(default["c2w"][:, :3, 3].norm(dim=-1), torch.full((768,), 4.0), atol=1e-4)
    az, el = c3.camera_angles(default["c2w"])
    assert torch.allclose(az, default["azimuth"], atol=1e-3) and torch.allclose(el, default["elevation"], atol=1e-3)
    small = c3.candidate_cameras(tiny_config())
    assert small["c2w"].shape == (32, 4, 4)
    assert small["azimuth"][0].item() == -157.5 and small["elevation"][0].item() == -67.5


def test_semantic_distance_properties():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(3, 5, 4, 4, generator=g), dim=1), F.normalize(torch.randn(4, 5, 4, 4, generator=g), dim=1)
    d = c3.semantic_distance(a, b)
    assert d.shape == (3, 4) and (d >= 0).all() and (d <= 2).all()
    assert torch.allclose(c3.semantic_distance(b, a), d.T, atol=1e-6)
    assert torch.allclose(c3.semantic_distance(a, a).diagonal(), torch.zeros(3), atol=1e-5)
    assert torch.allclose(c3.semantic_distance(a, -a).diagonal(), torch.full((3,), 2.0), atol=1e-5)
    # the closest candidate is the one that matches location by location
    assert (c3.semantic_distance(a, torch.cat([b, a])).argmin(dim=1) == torch.arange(4, 7)).all()


def test_square_boxes_and_crop_to_boxes():
    size = 32
    images = torch.full((1, 3, size, size), 0.3)
    masks = torch.zeros(1, 1, size, size)
    pattern = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[0, :, 10:18, 12:20] = pattern  # an 8 x 8 object off-centre
    masks[0, :, 10:18, 12:20] = 1.0
    boxes = c3.square_boxes(masks, margin=0.0)
    assert torch.allclose(boxes, torch.tensor([[15.5, 13.5, 8.0]]))
    crop, crop_mask = c3.crop_to_boxes(images, masks, boxes, 8)
    assert torch.allclose(crop[0], pattern, atol=1e-5) and torch.allclose(crop_mask, torch.ones(1, 1, 8, 8))
    # with a margin the object sits in the middle and the old background becomes white
    wide = c3.square_boxes(masks, margin=0.5)
    assert torch.allclose(wide, torch.tensor([[15.5, 13.5, 16.0]]))
    crop, crop_mask = c3.crop_to_boxes(images, masks, wide, 16)
    assert torch.allclose(crop[0, :, 4:12, 4:12], pattern, atol=1e-5)
    assert torch.allclose(crop[0, :, :4], torch.ones(3, 4, 16)) and torch.allclose(crop[0, :, :, 12:], torch.ones(3, 16, 4))
    assert crop_mask[0, 0, 4:12, 4:12].min() > 0.99 and crop_mask[0, 0, :4].max() < 0.01
    rect = torch.zeros(1, 1, size, size)
    rect[0, 0, 4:8, 2:22] = 1.0  # wide, short: the square's side is the longer extent
    assert torch.allclose(c3.square_boxes(rect, 0.1), torch.tensor([[11.5, 5.5, 24.0]]))


def test_place_camera_reframes_a_moved_camera():
    field = ball_field([((0.0, 0.0, 0.0), 0.5, (1.0, 0.0, 0.0)), ((0.0, 0.0, 0.35), 0.3, (0.0, 0.0, 1.0))])
    size, fov = 32, torch.tensor([FOV])
    original = c3.spherical_cameras(torch.tensor([30.0]), torch.tensor([20.0]), 3.0)
    moved = original.clone()
    moved[:, :3, 3] += 1.2 * original[:, :3, 2] + 0.35 * original[:, :3, 0] - 0.2 * original[:, :3, 1]
    target = c3.render(field, original, fov, size, samples=48)["mask"]
    seen = c3.render(field, moved, fov, size, samples=48)["mask"]
    assert iou(seen, target) < 0.5
    placed = c3.place_camera(moved, fov, c3.square_boxes(seen), size, c3.square_boxes(target), size)
    assert torch.equal(placed[:, :3, :3], moved[:, :3, :3])  # orientation kept
    after = c3.render(field, placed, fov, size, samples=48)["mask"]
    assert iou(after, target) > 0.8
    assert (placed[0, :3, 3] - original[0, :3, 3]).norm() < 0.3
    # different image sizes: the same framing in a larger target image
    big = c3.render(field, original, fov, 48, samples=48)["mask"]
    placed_big = c3.place_camera(moved, fov, c3.square_boxes(seen), size, c3.square_boxes(big), 48)
    assert iou(c3.render(field, placed_big, fov, 48, samples=48)["mask"], big) > 0.8


def test_search_poses_finds_the_candidate_an_input_was_rendered_from(colour_backbone):
    field = asymmetric_field(20)
    config = tiny_config()
    candidates = c3.render_candidates(field, config)
    assert candidates["rgb"].shape == (32, 3, 32, 32) and candidates["mask"].shape == (32, 1, 32, 32)
    truth = torch.tensor([5, 10, 19, 30])
    # inputs: a larger image from each true candidate's direction, the camera moved closer
    c2w = candidates["c2w"][truth].clone()
    c2w[:, :3, 3] *= 0.85
    inputs = c3.render(field, c2w, candidates["fov"][truth], 48, samples=32)
    found = c3.search_poses(field, inputs["rgb"], inputs["mask"], config, backbone=colour_backbone, candidates=candidates)
    assert found["distance"].shape == (4, 32) and found["c2w"].shape == (4, 4, 4) and found["fov"].shape == (4,)
    assert torch.equal(found["index"], truth), (found["index"], truth)
    assert (found["distance"][torch.arange(4), truth] < found["distance"].median(dim=1).values).all()
    errors = c3.rotation_angle_deg(found["c2w"][:, :3, :3], c2w[:, :3, :3])
    assert errors.max() < 0.1  # same orientation (acos rounding); placement moves the centre only
    assert (found["c2w"][:, :3, 3] - c2w[:, :3, 3]).norm(dim=-1).max() < 0.3  # and puts it back near the truth
    assert found["seconds"] > 0 and found["candidates"] is candidates


# ----------------------------------------------------------------------------- pose refinement


def _perturbed(c2w: torch.Tensor, degrees: float = 5.0, translation: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axes = F.normalize(torch.randn(c2w.shape[0], 3, generator=g), dim=-1)
    shifts = translation * F.normalize(torch.randn(c2w.shape[0], 3, generator=g), dim=-1)
    return c2w @ c3.se3_exp(torch.cat([math.radians(degrees) * axes, shifts], dim=1))


def test_refine_poses_reduces_the_iou_loss_and_the_pose_error():
    field = asymmetric_field(20)
    config = tiny_config(refine_steps=30, refine_lr=1e-2, rays_per_image=256, samples_per_ray=32)
    truth = c3.spherical_cameras(torch.tensor([20.0, 140.0]), torch.tensor([15.0, -20.0]), 3.0)
    fov = torch.full((2,), FOV)
    masks = (c3.render(field, truth, fov, 32, samples=48)["mask"] > 0.5).float()
    start = _perturbed(truth)
    refined = c3.refine_poses(field, masks, start, fov, config, snapshots=5)
    assert len(refined["loss"]) == 30 and len(refined["trajectory"]) == 6
    assert torch.equal(refined["trajectory"][0], start)
    assert sum(refined["loss"][-5:]) / 5 < 0.8 * sum(refined["loss"][:5]) / 5
    rotation = lambda c: c3.rotation_angle_deg(c[:, :3, :3], truth[:, :3, :3])
    # the translation a silhouette pins down: where the object (the origin) sits in the camera's frame;
    # a camera centre alone trades off against a small rotation about it (the image shifts either way)
    in_camera = lambda c: (c[:, :3, :3].transpose(1, 2) @ c[:, :3, 3:])[..., 0]
    translation = lambda c: (in_camera(c) - in_camera(truth)).norm(dim=-1)
    assert (rotation(refined["c2w"]) < 0.8 * rotation(start)).all(), (rotation(start), rotation(refined["c2w"]))
    assert (translation(refined["c2w"]) < 0.5 * translation(start)).all(), (translation(start), translation(refined["c2w"]))
    assert all(p.requires_grad for p in field.parameters())  # the field is unfrozen again
    assert refined["fov"].shape == (2,)


def test_refine_poses_nan_raises_with_the_step(monkeypatch):
    field = red_ball(0.5, resolution=8)
    config = tiny_config(refine_steps=3, rays_per_image=16, samples_per_ray=8)
    cams = c3.spherical_cameras(torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0]), 3.0)
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1.0
    real = c3.render_rays

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "opacity": out["opacity"] * float("nan")}

    monkeypatch.setattr(c3.poses, "render_rays", poisoned)  # where refine_poses looks it up
    with pytest.raises(FloatingPointError, match="step 0"):
        c3.refine_poses(field, masks, cams, torch.full((2,), FOV), config)


# ----------------------------------------------------------------------------- coordinate maps, transfer, edits


def _sphere_points(count: int = 400, seed: int = 0) -> torch.Tensor:
    """Points on the asymmetric field's balls' surfaces."""
    g = torch.Generator().manual_seed(seed)
    points = []
    for centre, radius in (((0.4, 0.0, 0.0), 0.35), ((-0.3, 0.35, 0.2), 0.25), ((-0.1, -0.4, -0.25), 0.2)):
        points.append(torch.tensor(centre) + radius * F.normalize(torch.randn(count, 3, generator=g), dim=-1))
    return torch.cat(points)


@pytest.fixture(scope="module")
def mapped(colour_backbone):
    """Coordinate maps of two exact views of the asymmetric field (40 degrees apart)."""
    field = asymmetric_field(24)
    c3.set_shape_box(field)
    config = tiny_config(samples_per_ray=48)
    c2w = c3.spherical_cameras(torch.tensor([10.0, 50.0]), torch.tensor([20.0, 30.0]), 3.0)
    fov = torch.full((2,), FOV)
    views = c3.render(field, c2w, fov, 32, samples=48)
    masks = (views["mask"] > 0.5).float()
    maps = c3.fit_coordinate_maps(field, views["rgb"], masks, c2w, fov, config, backbone=colour_backbone)
    return field, c2w, fov, views["rgb"], masks, maps


def test_fit_coordinate_maps_shapes_and_near_identity_warp(mapped):
    field, c2w, fov, images, masks, maps = mapped
    assert maps.nocs.shape == (2, 3, 32, 32) and maps.warp.shape == (2, 32, 32, 2)
    assert torch.equal(maps.mask, masks) and len(maps.loss) == 20
    assert (maps.nocs[masks.expand_as(maps.nocs) == 0] == 0).all()
    inside = maps.nocs.permute(0, 2, 3, 1)[masks[:, 0] > 0.5]
    assert inside.min() >= 0 and inside.max() <= 1
    from congealing import warps

    identity = warps.identity_grid((32, 32), 2)
    assert (maps.warp - identity).abs().max() < 0.1  # the exact camera's render is already aligned
    # so every foreground pixel gets (about) the render's own canonical coordinate
    render_nocs = maps.renders["nocs"].permute(0, 2, 3, 1)[masks[:, 0] > 0.5]
    assert (inside - render_nocs).norm(dim=-1).median() < 0.05


def test_transfer_points_between_exact_views(mapped):
    field, c2w, fov, images, masks, maps = mapped
    xy, visible = lego.visible_points(field, _sphere_points(), c2w, fov, 32, masks, tolerance=0.1, samples=48)
    both = visible.all(dim=0)
    assert both.sum() > 30
    moved = c3.transfer_points(maps, 0, 1, xy[0, both])
    error = (moved - xy[1, both]).norm(dim=-1)
    assert error.median() < 1.5 and (error < 4.0).float().mean() > 0.9, error
    back = c3.transfer_points(maps, 1, 0, xy[1, both])
    assert (back - xy[0, both]).norm(dim=-1).median() < 1.5
    assert c3.transfer_points(maps, 0, 1, torch.zeros(0, 2)).shape == (0, 2)
    assert (masks[1, 0, moved[:, 1].long(), moved[:, 0].long()] > 0.5).all()  # always lands on the target's object


def test_propagate_nocs_edit_changes_only_masked_pixels(mapped):
    _, _, _, images, masks, maps = mapped
    edited = c3.propagate_nocs_edit(maps, images, c3.stripes_edit(axis=0, stripes=3))
    assert edited.shape == images.shape
    changed = (edited - images).abs().amax(dim=1, keepdim=True) > 1e-6
    assert not (changed & (masks < 0.5)).any()
    assert changed.sum() > 0.2 * masks.sum()  # the stripes land on the object
    untouched = c3.propagate_nocs_edit(maps, images, lambda nocs: torch.zeros(nocs.shape[0], 4))
    assert torch.equal(untouched, images)


def test_filter_by_pose():
    cams = c3.spherical_cameras(torch.tensor([-150.0, -30.0, 0.0, 60.0, 120.0]), torch.tensor([0.0, 20.0, -60.0, 10.0, 0.0]), 3.0)
    assert c3.filter_by_pose(cams, (-90.0, 90.0), (-30.0, 30.0)).tolist() == [1, 3]
    assert c3.filter_by_pose(cams).tolist() == [1, 2, 3]
    assert c3.filter_by_pose(cams, (-180.0, 180.0)).tolist() == [0, 1, 2, 3, 4]
    assert c3.filter_by_pose(cams, (170.0, 180.0)).numel() == 0


# ----------------------------------------------------------------------------- the pipeline's errors, appearance


def test_fit_rejects_a_set_of_one_an_empty_mask_and_no_masks(colour_backbone):
    field = red_ball(0.5, resolution=8)
    config = tiny_config()
    images, masks = torch.ones(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:12, 4:12] = 1.0
    with pytest.raises(ValueError, match="at least 2"):
        c3.fit(images[:1], config, masks=masks[:1], backbone=colour_backbone, shape=field)
    with pytest.raises(ValueError, match=r"image\(s\) 1\b.*silhouette"):
        c3.fit(images, config, masks=masks, backbone=colour_backbone, shape=field)
    with pytest.raises(ValueError, match=r"image\(s\) 1\b.*silhouette"):
        c3.find_poses(field, images, masks, config, backbone=colour_backbone, search=False)
    with pytest.raises(ValueError, match="give masks"):
        c3.fit(images, config, backbone=colour_backbone, shape=field)


def test_fit_returns_a_point_map_alignment_of_the_steps_it_runs(colour_backbone):
    """``fit`` is find_poses then fit_coordinate_maps, run by hand here: the same cameras, the same
    maps and the maps' own transfer, in the point-map form of an Alignment."""
    from congealing.alignment import Alignment

    field = asymmetric_field(24)
    c3.set_shape_box(field)
    config = tiny_config()
    views = c3.render(field, c3.spherical_cameras(torch.tensor([-60.0, 20.0, 100.0]), torch.tensor([20.0, 30.0, 10.0]), 3.0),
                      torch.full((3,), FOV), 32, samples=32)
    images, masks = views["rgb"], (views["mask"] > 0.5).float()
    steps = []
    alignment = c3.fit(images, config, masks=masks, backbone=colour_backbone, shape=field, callback=lambda done, total: steps.append((done, total)))
    assert isinstance(alignment, Alignment) and alignment.method == "congeal3d" and len(alignment) == 3 and alignment.size == (32, 32)
    assert alignment.transforms is None and alignment.grids is None and not alignment.flips.any()
    assert [h["loss"] for h in alignment.history] == alignment.state["refined"]["loss"] and len(alignment.history) == config.refine_steps
    assert steps[-1] == (config.refine_steps + config.mapping_steps,) * 2 and len(steps) == steps[-1][0]
    assert alignment.parameters == 3 * 7 + 3 * 2 * 16 * 16 and alignment.seconds > 0
    assert set(alignment.state["seconds"]) == {"pose_search", "refinement", "mappings"}
    by_hand = c3.find_poses(field, images, masks, config, backbone=colour_backbone)
    assert torch.equal(by_hand["search"]["index"], alignment.state["search"]["index"])
    assert torch.allclose(by_hand["refined"]["c2w"], alignment.state["c2w"]) and torch.allclose(by_hand["refined"]["fov"], alignment.state["fov"])
    maps = c3.fit_coordinate_maps(field, images, masks, by_hand["refined"]["c2w"], by_hand["refined"]["fov"], config, backbone=colour_backbone)
    assert torch.allclose(maps.nocs, alignment.state["maps"].nocs, atol=1e-5)
    points = torch.nonzero(masks[0, 0] > 0.5)[::7].flip(-1).float()
    assert torch.equal(alignment.transfer_points(0, 2, points), c3.transfer_points(alignment.state["maps"], 0, 2, points))
    with pytest.raises(ValueError, match="maps points only"):
        alignment.warp(images)


def test_vary_appearance_keeps_the_silhouette_and_is_deterministic(device):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g)
    masks = torch.zeros(3, 1, 16, 16)
    masks[:, :, 4:12, 3:10] = 1.0
    varied = lego.vary_appearance(images, masks, seed=7)
    assert torch.allclose(lego.vary_appearance(images.to(device), masks.to(device), seed=7).cpu(), varied, atol=1e-5)  # the same looks on any device
    assert varied.shape == images.shape and varied.min() >= 0 and varied.max() <= 1
    assert torch.equal(varied, lego.vary_appearance(images, masks, seed=7))
    assert not torch.allclose(varied, lego.vary_appearance(images, masks, seed=8))
    # outside the mask only the new background: the input's own background never shows
    other = images.clone()
    other[masks.expand_as(images) == 0] = torch.rand(int((masks.expand_as(images) == 0).sum()), generator=g)
    assert torch.equal(lego.vary_appearance(other, masks, seed=7), varied)
    # inside the mask the object (changed in look) is still there, and differs from the background
    assert not torch.allclose(varied[masks.expand_as(varied) > 0.5], images[masks.expand_as(images) > 0.5])
    inside = varied[:, :, 4:12, 3:10].mean(dim=(2, 3))
    changed_object = lego.vary_appearance(images * 0.2, masks, seed=7)[:, :, 4:12, 3:10].mean(dim=(2, 3))
    assert not torch.allclose(inside, changed_object)  # the object's pixels follow the input


# ----------------------------------------------------------------------------- lego


def test_load_lego_benchmark_splits_anchors_and_inputs(data_root):
    config = Congeal3DConfig(image_size=48, anchor_views=8)
    bench = lego.load_lego_benchmark(config, inputs=4, root=data_root)
    assert len(bench.anchor_index) == 8 and len(bench.input_index) == 4 and len(bench) == 4
    assert not set(bench.anchor_index) & set(bench.input_index)
    assert bench.anchor_images.shape == (8, 3, 48, 48) and bench.images.shape == (4, 3, 48, 48)
    assert bench.masks.shape == (4, 1, 48, 48) and bench.varied.shape == (4, 3, 48, 48)
    assert bench.c2w.shape == (4, 4, 4) and bench.anchor_c2w.shape == (8, 4, 4) and len(bench.names) == 4
    directions = F.normalize(bench.anchor_c2w[:, :3, 3], dim=-1)
    angles = torch.rad2deg(torch.acos((directions @ directions.T).clamp(-1, 1)))
    angles.fill_diagonal_(180.0)
    assert angles.min() > 20.0
    assert (bench.masks.flatten(1).amax(dim=1) > 0.5).all()
    # the varied inputs keep the object where the mask is (and only change its look)
    assert not torch.allclose(bench.varied, bench.images)


def test_congeal_align_needs_a_valid_shape(tmp_path, capsys):
    from PIL import Image

    from congealing import cli

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(2):  # photos with something in them (a set of flat colours is refused first)
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{k}.png")
    assert cli.main(["align", str(folder), "--method", "congeal3d", "--out", str(tmp_path / "out")]) == 2
    assert "needs --shape" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"something": torch.zeros(1)}, foreign)
    assert cli.main(["align", str(folder), "--method", "congeal3d", "--shape", str(foreign), "--out", str(tmp_path / "out")]) == 2
    assert "not a congealing 3-D shape" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written half-way


def test_stripes_edit_paints_on_every_device(device):
    nocs = torch.tensor([[0.05, 0.5, 0.5], [0.15, 0.5, 0.5]], device=device)  # stripe 0 is on, stripe 1 off (5 stripes: width 0.1)
    rgba = c3.stripes_edit(axis=0, stripes=5, colour=(0.9, 0.1, 0.6))(nocs)
    assert rgba.device == nocs.device
    assert torch.allclose(rgba.cpu(), torch.tensor([[0.9, 0.1, 0.6, 0.8], [0.9, 0.1, 0.6, 0.0]]))


def test_relative_pose_errors_measure_pairs_without_a_frame():
    angles = torch.linspace(-0.3, 0.3, 5)  # a short frontal arc, where a centre Procrustes is fragile
    centres = torch.stack([4 * torch.sin(angles), torch.zeros(5), 4 * torch.cos(angles)], dim=1)
    truth = c3.look_at(centres)
    moved = c3.se3_exp(torch.tensor([[0.2, 1.0, -0.4, 3.0, -1.0, 2.0]])) @ truth  # another frame, same cameras
    errors = c3.relative_pose_errors(moved, truth)
    assert errors["relative_rotation_max"] < 1e-3 and errors["view_angle_mean"] < 1e-3
    tilted = truth.clone()
    tilted[2] = truth[2] @ c3.se3_exp(torch.tensor([[0.0, math.radians(10), 0.0, 0.0, 0.0, 0.0]]))[0]  # camera 2 turned 10 deg
    errors = c3.relative_pose_errors(tilted, truth)
    assert errors["relative_rotation_max"] == pytest.approx(10.0, abs=1e-3)
    assert errors["relative_rotation_median"] == pytest.approx(0.0, abs=1e-3)  # 4 of the 10 pairs hold camera 2
    assert "relative_rotation_median" in c3.pose_errors(tilted, truth)
