"""``congeal align DIR --method congeal3d --cameras PATH``: a user's calibrated capture, from the
command line. Every mistake in the camera file or the folder stops before any work with one line
and exit code 2; a good capture gives a report whose cameras agree with the file's."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from congealing import cli, lego
from congealing import congeal3d as c3
from congealing.congeal3d import captures as cp


def save_png(tensor: torch.Tensor, path: Path) -> None:
    array = (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


@pytest.fixture(scope="module")
def capture_folder(tmp_path_factory, data_root):
    """12 portrait photos of the capture-like lego (brick wall, off-centre crops, no close-ups), their
    masks, and the transforms.json a user would have (poses in an arbitrary frame and scale)."""
    bench = lego.make_capture_benchmark(32, root=data_root, close_up_every=0, views=12)
    root = tmp_path_factory.mktemp("capture")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for name, photo, mask in zip(bench.names, bench.photos, bench.masks):
        save_png(photo, root / "images" / f"{Path(name).stem}.png")
        save_png(mask, root / "masks" / f"{Path(name).stem}.png")
    (root / "transforms.json").write_text(json.dumps(bench.meta))
    return root, bench


def run(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("congeal: ") and not line.startswith("congeal: warning")]
    assert code == 2 and len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def copy_with(root: Path, tmp_path: Path, meta: dict | None = None, text: str | None = None) -> Path:
    path = tmp_path / "transforms.json"
    path.write_text(text if text is not None else json.dumps(meta))
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing file", ("no such file",)),
        ("bad json", ("not valid JSON", "line 1")),
        ("unknown photo", ("no camera in", "extra.png")),
        ("wrong folder", ("none of the",)),
        ("principal point outside", ("principal point", "outside")),
        ("focal length in mm", ("field of view",)),
        ("rotated photo", ("another shape",)),
        ("not a rotation", ("not a rotation",)),
        ("no frames", ("no 'frames'",)),
        ("other method", ("--cameras is for --method congeal3d",)),
        ("with a shape", ("leave out --shape",)),
    ],
)
def test_every_capture_mistake_is_one_line_and_exit_2_before_any_work(case, words, capture_folder, tmp_path, capsys):
    root, bench = capture_folder
    photos, cameras = root / "images", root / "transforms.json"
    meta = json.loads(cameras.read_text())
    method, extra = "congeal3d", []
    if case == "missing file":
        cameras = tmp_path / "nowhere.json"
    elif case == "bad json":
        cameras = copy_with(root, tmp_path, text="{frames: [")
    elif case == "unknown photo":
        photos = tmp_path / "photos"
        shutil.copytree(root / "images", photos)
        shutil.copy(photos / f"{Path(bench.names[0]).stem}.png", photos / "extra.png")
    elif case == "wrong folder":
        for frame in meta["frames"]:
            frame["file_path"] = "images/IMG_" + Path(frame["file_path"]).name
        cameras = copy_with(root, tmp_path, meta)
    elif case == "principal point outside":
        meta["frames"][3]["cx"] = 10 * meta["frames"][3]["w"]
        cameras = copy_with(root, tmp_path, meta)
    elif case == "focal length in mm":
        for frame in meta["frames"]:
            frame["fl_x"] = frame["fl_y"] = 0.026
        cameras = copy_with(root, tmp_path, meta)
    elif case == "rotated photo":
        photos = tmp_path / "photos"
        shutil.copytree(root / "images", photos)
        path = photos / f"{Path(bench.names[2]).stem}.png"
        Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path)
    elif case == "not a rotation":
        meta["frames"][1]["transform_matrix"][0][0] *= 3.0
        cameras = copy_with(root, tmp_path, meta)
    elif case == "no frames":
        cameras = copy_with(root, tmp_path, {"camera_angle_x": 0.7})
    elif case == "other method":
        method = "neural"
    elif case == "with a shape":
        shape = tmp_path / "shape.pt"
        shape.write_bytes(b"x")
        extra = ["--shape", str(shape)]
    out = tmp_path / "report"
    code, err = run(["align", str(photos), "--method", method, "--cameras", str(cameras), "--out", str(out), "--mode", "quick", *extra], capsys)
    one_line_error(code, err, *words)
    assert not out.exists()


def test_a_colmap_text_folder_passes_the_checks(capture_folder, tmp_path):
    """The same capture as a COLMAP text model (world-to-camera, OpenCV axes, PINHOLE): the checks
    accept it and read the same cameras as from the transforms.json."""
    root, bench = capture_folder
    from_json = cp.check_capture(root / "images", root / "transforms.json")  # in the folder's order
    lines = []
    for k, frame in enumerate(bench.meta["frames"]):
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        R = c2w[:3, :3] @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # OpenGL -> OpenCV camera axes
        w2c_R, w2c_t = R.T, -R.T @ c2w[:3, 3]
        from scipy.spatial.transform import Rotation

        x, y, z, w = Rotation.from_matrix(w2c_R.numpy()).as_quat()
        lines.append(f"{k + 1} {w} {x} {y} {z} {' '.join(str(float(v)) for v in w2c_t)} {k + 1} {Path(frame['file_path']).stem}.png\n")
    cameras_txt = "".join(f"{k + 1} PINHOLE {f['w']} {f['h']} {f['fl_x']} {f['fl_y']} {f['cx']} {f['cy']}\n" for k, f in enumerate(bench.meta["frames"]))
    colmap = tmp_path / "sparse" / "0"
    colmap.mkdir(parents=True)
    (colmap / "cameras.txt").write_text("# camera list\n" + cameras_txt)
    (colmap / "images.txt").write_text("# image list\n" + "".join(line + "\n" for line in lines))
    args = cli._parser().parse_args(["align", str(root / "images"), "--method", "congeal3d", "--cameras", str(tmp_path), "--out", str(tmp_path / "report"), "--mode", "quick"])
    cli.validate(args)
    got = args.capture_cameras
    assert got.names == from_json.names and sorted(got.names) == sorted(f"{Path(n).stem}.png" for n in bench.names)
    assert torch.allclose(got.c2w, from_json.c2w, atol=1e-5) and torch.allclose(got.cx, from_json.cx) and torch.allclose(got.fy, from_json.fy)


@pytest.mark.slow
def test_align_a_capture_from_the_command_line(capture_folder, tmp_path, capsys, monkeypatch):
    """The whole route on 12 small photos with CPU-minute settings: a report with a camera for
    every posed photo, the file's camera beside it, the shape, and what the importer ignores."""
    root, bench = capture_folder
    small = lambda mode=None, **overrides: dataclasses.replace(  # noqa: E731
        ORIGINAL_FOR_MODE("quick", **overrides), image_size=48, grid_resolution=32, shape_steps=300, rays_per_step=2048,
        search_azimuths=8, search_elevations=6, search_render_size=48, crop_size=64, refine_steps=40, mapping_steps=30, mapping_size=16,
    )
    monkeypatch.setattr(c3.Congeal3DConfig, "for_mode", staticmethod(small))
    out = tmp_path / "report"
    code, err = run(["align", str(root / "images"), "--method", "congeal3d", "--cameras", str(root / "transforms.json"),
                     "--masks", str(root / "masks"), "--out", str(out), "--size", "64"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["anchors"]) == 8 and len(summary["poses"]) == 4
    assert any("distortion" in line for line in summary["importer_ignores"])
    assert summary["masks"].startswith("given")
    poses = summary["poses"]
    assert {p["image"] for p in poses} | set(summary["anchors"]) == {f"{Path(n).stem}.png" for n in bench.names}
    found = torch.tensor([p["c2w"] for p in poses])
    given = torch.tensor([p["c2w_from_file"] for p in poses])
    assert torch.isfinite(found).all() and not torch.allclose(found, given)  # posed, not copied from the file
    rel = c3.relative_pose_errors(found, given)["relative_rotation_median"]
    chance = c3.relative_pose_errors(c3.random_cameras(len(poses), 4.0, 0), given)["relative_rotation_median"]
    assert rel < chance, (rel, chance)
    assert c3.load_shape(out / "shape.pt").density.shape[-1] == 32
    assert len(list((out / "aligned").glob("*.png"))) == 4


ORIGINAL_FOR_MODE = c3.Congeal3DConfig.for_mode


def test_photos_of_unknown_intrinsics_are_searched_up_to_a_phones_field_of_view(tmp_path, monkeypatch, capsys):
    """``congeal align --shape`` (no camera file) searches fields of view that include a phone's:
    26 mm equivalent, 69 degrees along the long side. The run stops at the search, whose settings it records."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        rgba = np.zeros((40, 30, 4), dtype=np.uint8)
        rgba[..., :3] = rng.integers(0, 255, (40, 30, 3))
        rgba[10:30, 8:22, 3] = 255
        Image.fromarray(rgba).save(folder / f"p{k}.png")
    shape = tmp_path / "shape.pt"
    c3.save_shape(c3.VoxelField(8, 1.5), shape)
    seen = {}

    class Stop(Exception):
        pass

    def record(images, config, **kwargs):
        seen["fovs"] = config.search_fovs_deg
        raise Stop

    monkeypatch.setattr(c3, "fit", record)
    with pytest.raises(Stop):
        cli.main(["align", str(folder), "--method", "congeal3d", "--shape", str(shape), "--out", str(tmp_path / "out"), "--mode", "quick", "--size", "32"])
    phone = np.degrees(2 * np.arctan(18 / 26))
    assert min(abs(f - phone) for f in seen["fovs"]) < 7.5 and max(seen["fovs"]) > phone


def test_lego_capture_benchmark_is_its_own_dataset(capsys):
    """``congeal eval --dataset lego-capture`` exists (the quick lego run leaves the capture row out)
    and refuses what does not apply to it in one line."""
    code, err = run(["eval", "--dataset", "lego-capture", "--method", "congeal3d", "--classes", "1"], capsys)
    one_line_error(code, err, "--classes does not apply to --dataset lego-capture")
    code, err = run(["eval", "--dataset", "lego-capture", "--method", "lsq"], capsys)
    one_line_error(code, err, "cannot be evaluated on lego-capture")
