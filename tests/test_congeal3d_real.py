"""3-D congealing on a user's capture (issue 19): camera files (transforms.json, COLMAP text), frame
normalisation, the exact mapping of off-centre, non-square pinhole photos to the square model, the
whole-object anchor rule and the collapsed-shape check. References: lego's own camera file, scipy's
rotations, analytic projections."""
from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from congealing import congeal3d as c3
from congealing import lego, warps
from congealing.congeal3d import camera_files as cf
from congealing.congeal3d import captures as cp
from congealing.errors import InputError


def lego_transforms():
    from congealing.data import find_dataset

    try:
        folder = find_dataset("nerf_synthetic", download=False) / "lego"
    except Exception:
        pytest.skip("NeRF-synthetic lego is not on this machine (set CONGEAL_DATA)")
    return folder / "transforms_train.json"


def moved(c2w: torch.Tensor, seed: int = 0, scale: float = 0.37, shift=(2.0, -1.0, 5.0)) -> torch.Tensor:
    """The cameras after the world moves by x -> s R x + t (R random, from scipy)."""
    R = torch.from_numpy(Rotation.random(random_state=seed).as_matrix()).float()
    out = c2w.clone()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * c2w[:, :3, 3] @ R.T + torch.tensor(shift)
    return out


def same_up_to_turn_about_z(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> None:
    """Cameras ``a`` and ``b`` differ by at most a rotation about the world's z axis."""
    assert torch.allclose(a[:, :3, 3].norm(dim=-1), b[:, :3, 3].norm(dim=-1), atol=tolerance)
    assert torch.allclose(a[:, 2, 3], b[:, 2, 3], atol=tolerance)
    assert torch.allclose(a[:, 2, :3], b[:, 2, :3], atol=tolerance)  # the z row is invariant to turns about z
    assert c3.relative_pose_errors(a, b)["relative_rotation_max"] < 0.1


# ----------------------------------------------------------------------------- camera files


def test_lego_transforms_round_trip():
    path = lego_transforms()
    meta = json.loads(path.read_text())
    raw = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float32)
    cams = cp.load_cameras(path, normalise=False)
    assert torch.allclose(cams.c2w, raw)
    assert torch.allclose(cams.fx, 0.5 * 800 / torch.tan(torch.tensor(0.5 * meta["camera_angle_x"])))
    assert torch.allclose(cams.cx, torch.full_like(cams.cx, 399.5)) and int(cams.width[0]) == 800  # measured from the PNG
    normalised = cp.load_cameras(path)
    # lego is already in the model's frame: the normalised frame is the original up to a similarity close to identity
    s, R, t = c3.similarity_procrustes(raw[:, :3, 3].double(), normalised.c2w[:, :3, 3].double())
    aligned = (s * raw[:, :3, 3].double() @ R.T + t).float()
    assert (aligned - normalised.c2w[:, :3, 3]).norm(dim=-1).max() < 1e-3
    assert abs(float(s) - 4.0 / float(raw[:, :3, 3].norm(dim=-1).median())) < 1e-3
    assert float(t.norm()) < 0.2  # lego's cameras look at its origin
    assert c3.relative_pose_errors(normalised.c2w, raw)["relative_rotation_max"] < 0.1  # acos of float32 matrices: ~0.05 deg floor


def test_normalised_frame_forgets_the_files_frame():
    c2w = c3.spherical_cameras(torch.linspace(-80, 60, 12), torch.linspace(5, 50, 12), 4.0)
    n = len(c2w)
    intr = [torch.full((n,), 100.0), torch.full((n,), 100.0), torch.full((n,), 63.5), torch.full((n,), 63.5)]
    size = [torch.full((n,), 128), torch.full((n,), 128)]
    a = cp.normalise_frame(cf.Cameras(c2w, *intr, *size, [str(i) for i in range(n)]))
    b = cp.normalise_frame(cf.Cameras(moved(c2w), *intr, *size, [str(i) for i in range(n)]))
    same_up_to_turn_about_z(a.c2w, b.c2w, 1e-3)
    same_up_to_turn_about_z(b.c2w, c2w, 1e-3)  # the true up, though the arc is one-sided and looks down
    assert torch.allclose(a.c2w[:, :3, 3].norm(dim=-1), torch.full((n,), 4.0), atol=1e-3)


def test_nerfstudio_file_with_off_centre_principal_point(tmp_path):
    c2w = moved(c3.spherical_cameras(torch.tensor([0.0, 50.0, 100.0]), torch.tensor([20.0, 30.0, 10.0]), 4.0))
    frames = [{"file_path": f"images/{i}.jpg", "transform_matrix": m.tolist(), "cx": 30.0 + i, "cy": 70.0} for i, m in enumerate(c2w)]
    meta = {"fl_x": 90.0, "fl_y": 95.0, "w": 60, "h": 100, "k1": -0.05, "camera_model": "OPENCV", "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="distortion"):
        cams = cp.load_cameras(tmp_path, normalise=False)  # a folder holding transforms.json
    assert any("k1" in note for note in cams.notes)
    assert cams.fx.tolist() == [90.0] * 3 and cams.fy.tolist() == [95.0] * 3
    assert cams.cx.tolist() == [29.5, 30.5, 31.5] and cams.cy.tolist() == [69.5] * 3  # pixel edges -> centres
    assert cams.width.tolist() == [60] * 3 and cams.height.tolist() == [100] * 3
    assert torch.allclose(cams.c2w, c2w)


@pytest.mark.parametrize("meta, message", [
    ({"frames": []}, "no 'frames'"),
    ({"w": 4, "h": 4, "frames": [{"file_path": "a", "transform_matrix": torch.eye(4).tolist()}]}, "focal length"),
    ({"fl_x": 3, "w": 4, "h": 4, "frames": [{"file_path": "a", "transform_matrix": (2 * torch.eye(4)).tolist()}]}, "not a rotation"),
    ({"fl_x": 3, "frames": [{"file_path": "missing.png", "transform_matrix": torch.eye(4).tolist()}]}, "image size"),
    ({"fl_x": 3, "w": 4, "h": 4, "camera_model": "OPENCV_FISHEYE", "frames": [{"file_path": "a", "transform_matrix": torch.eye(4).tolist()}]}, "not a pinhole"),
])
def test_unusable_camera_files_say_why(tmp_path, meta, message):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=message):
        cp.load_cameras(path, normalise=False)


def test_colmap_text_model_matches_the_opengl_cameras(tmp_path):
    c2w = moved(c3.spherical_cameras(torch.tensor([10.0, 70.0, 130.0, -40.0]), torch.tensor([15.0, 35.0, 5.0, 60.0]), 4.0), seed=3)
    # COLMAP: world-to-camera, OpenCV axes (y down, z forward); quaternion (w, x, y, z) by scipy
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    lines = []
    for i, m in enumerate(c2w.double()):
        R_cv = m[:3, :3] @ flip.double()
        R_w2c, t_w2c = R_cv.T, -R_cv.T @ m[:3, 3]
        x, y, z, w = Rotation.from_matrix(R_w2c.numpy()).as_quat()
        lines += [f"{i + 1} {w} {x} {y} {z} {t_w2c[0]} {t_w2c[1]} {t_w2c[2]} 1 img{i}.jpg", "1.0 2.0 -1"]
    (tmp_path / "images.txt").write_text("# image list\n" + "\n".join(lines) + "\n")
    (tmp_path / "cameras.txt").write_text("# cameras\n1 SIMPLE_RADIAL 640 480 500 300 250 0.01\n")
    with pytest.warns(UserWarning, match="distortion"):
        cams = cp.load_cameras(tmp_path, normalise=False)
    assert torch.allclose(cams.c2w, c2w, atol=1e-4)
    assert cams.names == [f"img{i}.jpg" for i in range(4)]
    assert cams.cx.tolist() == [299.5] * 4 and cams.fy.tolist() == [500.0] * 4


# ----------------------------------------------------------------------------- the square model


def test_square_views_are_an_exact_change_of_intrinsics():
    # a portrait photo, off-centre principal point, fx != fy; each pixel stores its own photo coordinates
    w, h, fx, fy, cx, cy = 60, 100, 80.0, 90.0, 20.0, 61.0
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    photo = torch.stack([xs, ys, torch.zeros_like(xs)])
    c2w = c3.look_at(torch.tensor([[0.0, -4.0, 1.0]]))
    cams = cf.Cameras(c2w, torch.tensor([fx]), torch.tensor([fy]), torch.tensor([cx]), torch.tensor([cy]), torch.tensor([w]), torch.tensor([h]), ["p"])
    views = cp.square_views([photo], cams, 64)
    points = torch.randn(50, 3) * 0.4
    local = (points - c2w[0, :3, 3]) @ c2w[0, :3, :3]
    depth = -local[:, 2]
    photo_xy = torch.stack([cx + fx * local[:, 0] / depth, cy - fy * local[:, 1] / depth], dim=-1)  # the photo's own projection
    square_xy, _ = c3.project_points(points, views.c2w, views.fov, 64)
    inside = ((photo_xy >= 0) & (photo_xy <= torch.tensor([w - 1.0, h - 1.0]))).all(dim=-1)
    assert inside.sum() > 20
    grid = warps.pixel_to_normalized(square_xy, (64, 64))
    read = torch.nn.functional.grid_sample(views.images, grid[:, :, None], mode="bilinear", align_corners=False)[0, :2, :, 0].T
    assert torch.allclose(read[inside], photo_xy[inside], atol=1e-2)  # bilinear is exact on a linear ramp
    # the square contains the whole photo, and marks what lies beyond it: the photo's share of the square's area
    tangent = math.tan(0.5 * views.fov)
    assert abs(float(views.valid.mean()) - (w / fx) * (h / fy) / (2 * tangent) ** 2) < 0.03
    assert math.isclose(math.tan(0.5 * views.fov), max(cx + 0.5, w - cx - 0.5) / fx, rel_tol=1e-5) or math.isclose(
        math.tan(0.5 * views.fov), max(cy + 0.5, h - cy - 0.5) / fy, rel_tol=1e-5)


def test_a_view_that_cuts_the_object_cannot_be_an_anchor():
    masks = torch.zeros(4, 1, 16, 16)
    masks[0, 0, 4:10, 4:10] = 1
    masks[1, 0, 0:8, 4:10] = 1  # touches the top edge
    masks[2, 0, 5:11, 5:12] = 1
    masks[3, 0, 5:11, 5:12] = 1
    valid = torch.ones_like(masks)
    valid[3, 0, :, 12:] = 0  # the photo ends right beside the object
    whole = cp.object_is_whole(masks, valid)
    assert whole.tolist() == [True, False, True, False]
    cams = c3.spherical_cameras(torch.tensor([0.0, 180.0, 20.0, 170.0]), torch.zeros(4), 4.0)
    assert c3.choose_anchor_views(cams, 2) == [0, 1]  # the old rule takes the far, cut view
    assert c3.choose_anchor_views(cams, 2, whole) == [0, 2]
    with pytest.raises(InputError, match="whole object"):
        c3.choose_anchor_views(cams, 2, torch.tensor([True, False, False, False]))


def test_a_collapsed_shape_stops_with_a_clear_message():
    field = c3.VoxelField(24, 1.0)
    with torch.no_grad():
        field.density.fill_(-20.0)
        field.density[0, 0, 10:14, 10:14, 12] = 30.0  # one voxel thick: a sliver, like an over-carved hull
    with pytest.raises(InputError, match="collapsed"):
        c3.check_shape(field, 5.0, carved=0.999)
    with torch.no_grad():
        field.density.fill_(-20.0)
    with pytest.raises(InputError, match="empty"):
        c3.check_shape(field, 5.0)
    with torch.no_grad():
        field.density[0, 0, 6:18, 6:18, 6:18] = 30.0
    low, high = c3.check_shape(field, 5.0)
    assert float((high - low).min()) > 0.5


def test_capture_benchmark_cameras_and_masks_agree():
    """The composited benchmark's transforms.json is exact: every visual-hull point of the true
    shape projects into the masks, and the normalised frame is lego's up to a similarity."""
    lego_transforms()
    bench = lego.make_capture_benchmark(32, views=10, close_up_every=3)
    assert len(bench) == 10 and int(bench.close_up.sum()) == 3
    assert all(p.shape[-2:] == (43, 32) for p in bench.photos)  # portrait 3:4
    cams = cf.cameras_from_transforms(bench.meta)
    assert not torch.allclose(cams.cx, cams.cx[:1].expand_as(cams.cx))  # principal points differ and are off-centre
    assert c3.relative_pose_errors(cams.c2w, bench.c2w)["relative_rotation_max"] < 0.1
    normalised = cp.normalise_frame(cams, bench.masks)
    s, R, t = c3.similarity_procrustes(bench.c2w[:, :3, 3].double(), normalised.c2w[:, :3, 3].double())
    assert 0.8 < float(s) < 1.25 and float(t.norm()) < 0.4  # lego's frame, recovered from the masks
    views = cp.square_views(bench.photos, normalised, 32, bench.masks)
    whole = cp.object_is_whole(views.masks, views.valid)
    assert not whole[bench.close_up].any()  # every close-up is recognised as one


def test_fit_shape_refuses_anchors_whose_cameras_disagree():
    """Anchors with the right cameras fit a shape that reproduces their silhouettes; the same masks
    with their cameras shuffled (each photo given another photo's pose) are stopped with a clear
    message instead of yielding a sliver."""
    field = c3.VoxelField(24, 1.5)
    axis = torch.linspace(-1.5, 1.5, 24)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    with torch.no_grad():
        field.density.fill_(-20.0)
        field.density[0, 0][((x - 0.6) ** 2 + y**2 + z**2 <= 0.25) | ((x + 0.5) ** 2 + (y - 0.4) ** 2 + z**2 <= 0.09)] = 30.0
    cams = c3.spherical_cameras(torch.tensor([0.0, 60.0, 120.0, 180.0, 240.0, 300.0]), torch.tensor([20.0, -10.0, 35.0, 5.0, -25.0, 15.0]), 4.0)
    fov = math.radians(40.0)
    with torch.no_grad():
        masks = (c3.render(field, cams, fov, 32, 48)["mask"] > 0.5).float()
    images = torch.ones(6, 3, 32, 32) * (1 - masks) + 0.3 * masks
    config = c3.Congeal3DConfig(grid_resolution=24, samples_per_ray=32, shape_steps=150, rays_per_step=1024)
    fitted = c3.fit_shape(images, masks, cams, fov, config)
    assert float((fitted.box_max - fitted.box_min).min()) > 0.5
    with pytest.raises(InputError, match="anchor views"):
        c3.fit_shape(images, masks, cams[[3, 4, 5, 0, 1, 2]], fov, config)
