"""`congeal` never loses a user's files, and every mistake gets one clear line (exit code 2).

Each test is one thing a user will type. The runs use the cheap least-squares method on tiny
folders; the trained methods are exercised up to the point where they must refuse.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from congealing import checkpoints, cli, congeal3d, data, evaluation, features, report, report_folder
from congealing.errors import CheckpointError, OutputFolderError


def _photos(folder: Path, names=("a.jpg", "b.png", "c.jpg"), seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        pixels = np.zeros((48, 64, 3), dtype=np.uint8)
        x = rng.integers(8, 32)
        pixels[12:36, x : x + 24] = rng.integers(120, 255, size=3)  # a bright box at a different place in each
        Image.fromarray(pixels).save(folder / name)
    return folder


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def _align(folder, out, capsys, *extra):
    return _run(["align", folder, "--method", "lsq", "--out", out, "--size", "64", *extra], capsys)


def _one_line_error(code, err, *words):
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("congeal: warning") and not line.startswith("congeal: note")]
    assert len(lines) == 1 and lines[0].startswith("congeal: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, err)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. data loss


def test_a_folder_with_a_summary_json_is_not_a_report(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "summary.json").write_text("{}")
    (project / "thesis.tex").write_text("\\section{Results}")
    (project / "src" / "main.py").write_text("print(1)")
    before = _snapshot(project)
    _one_line_error(*_align(photos, project, capsys), "did not write")
    assert _snapshot(project) == before


def test_the_input_folder_is_never_the_report(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    (photos / "summary.json").write_text("{}")
    before = _snapshot(photos)
    _one_line_error(*_align(photos, photos, capsys), "input folder")
    assert _snapshot(photos) == before


def test_rerun_keeps_the_users_notes_and_replaces_only_its_own_files(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "report"
    assert _align(photos, out, capsys)[0] == 0
    manifest = json.loads((out / report_folder.MARKER).read_text())["files"]
    assert "index.html" in manifest and "summary.json" in manifest
    (out / "notes.txt").write_text("bird 3 looks odd")
    (out / "aligned" / "my_crop.png").write_bytes(b"mine")
    assert _align(photos, out, capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "bird 3 looks odd"
    assert (out / "aligned" / "my_crop.png").read_bytes() == b"mine"
    assert not any(p.name.startswith(".report") for p in tmp_path.iterdir())  # no staging or old copy left
    assert "notes.txt" not in json.loads((out / report_folder.MARKER).read_text())["files"]


def test_an_empty_working_folder_can_hold_the_report(tmp_path, capsys, monkeypatch):
    photos = _photos(tmp_path / "photos")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert _align(photos, ".", capsys)[0] == 0
    assert (here / "index.html").exists() and here.is_dir()
    (here / "mine.txt").write_text("x")  # now it is a report with a user's file: a rerun keeps it
    assert _align(photos, ".", capsys)[0] == 0
    assert (here / "mine.txt").read_text() == "x"


# ----------------------------------------------------------------------------- 2. unique names


def test_inputs_with_the_same_stem_get_distinct_outputs(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", names=("a.jpg", "a.png", "x.JPG", "y.jpg", "y.png"))
    out = tmp_path / "report"
    assert _align(photos, out, capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    files = [summary["outputs"][name]["aligned"] for name in summary["images"]]
    assert len(summary["images"]) == 5 and len(set(files)) == 5
    assert all((out / f).is_file() for f in files)
    assert len(list((out / "inputs").iterdir())) == 5


def test_output_keys_are_unique_also_without_case():
    keys = report.output_keys(["x.JPG", "x.jpg", "x.Jpg", "x_jpg", "noext"])
    assert len({k.lower() for k in keys}) == 5


# ----------------------------------------------------------------------------- 3. resume


def _fake_checkpoint(path: Path, photos: Path):
    fingerprint = data.load_image_folder(photos, size=64).fingerprint
    checkpoints.save({"epoch": 1}, path, fingerprint=dict(fingerprint, config={"epochs": 10}))


@pytest.mark.parametrize("names", [("a.jpg", "b.png", "c.jpg"), ("a.jpg", "b.png")], ids=["same-size", "fewer-images"])
def test_resume_refuses_a_checkpoint_of_other_images(tmp_path, capsys, names):
    first = _photos(tmp_path / "first")
    other = _photos(tmp_path / "other", names=names, seed=7)
    out = tmp_path / "report"
    _fake_checkpoint(cli.checkpoint_path(out, "spacejam"), first)
    code, err = _run(["align", other, "--method", "spacejam", "--out", out, "--size", "64", "--resume"], capsys)
    _one_line_error(code, err, "other images", "without --resume")
    assert not out.exists()


def test_resume_refuses_a_tampered_checkpoint_without_torch_advice(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "report"
    path = cli.checkpoint_path(out, "neural")
    torch.save({"epoch": 1, "evil": object()}, path)  # needs pickle's code execution to load
    code, err = _run(["align", photos, "--method", "neural", "--out", out, "--size", "64", "--resume"], capsys)
    _one_line_error(code, err, path.name, "not a congealing checkpoint")
    assert "weights_only" not in err
    path.write_bytes(b"\x00garbage")
    _one_line_error(*_run(["align", photos, "--method", "neural", "--out", out, "--size", "64", "--resume"], capsys), "not a congealing checkpoint")


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    _one_line_error(*_run(["align", photos, "--method", "spacejam", "--out", tmp_path / "r", "--resume"], capsys), "no checkpoint")
    _one_line_error(*_align(photos, tmp_path / "r", capsys, "--resume"), "nothing to resume")


def test_check_fingerprint_names_what_differs(tmp_path):
    path = tmp_path / "c.pt"
    stored = {"files": [["a.png", 3, "aa"], ["b.png", 4, "bb"]], "size": 64, "config": {"lr": 0.1}}
    checkpoints.save({"epoch": 2}, path, fingerprint=stored)
    state = checkpoints.load(path)
    checkpoints.check_fingerprint(state, stored, path)
    with pytest.raises(CheckpointError, match=r"changed: b.png"):
        checkpoints.check_fingerprint(state, {**stored, "files": [["a.png", 3, "aa"], ["b.png", 4, "XX"]]}, path)
    with pytest.raises(CheckpointError, match=r"size 64 there, 128 now"):
        checkpoints.check_fingerprint(state, {**stored, "size": 128}, path)
    with pytest.raises(CheckpointError, match=r"lr: 0.1 there, 0.2 now"):
        checkpoints.check_fingerprint(state, {**stored, "config": {"lr": 0.2}}, path)
    checkpoints.check_fingerprint(state, {**stored, "config": {"lr": 0.2}}, path, keys=("files", "size"))
    torch.save({"epoch": 2}, path)  # from before fingerprints
    with pytest.raises(CheckpointError, match="does not record"):
        checkpoints.check_fingerprint(checkpoints.load(path), stored, path)


# ----------------------------------------------------------------------------- 4. replacing a report


def test_a_failed_replacement_leaves_the_old_report_whole(tmp_path, capsys, monkeypatch):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "report"
    assert _align(photos, out, capsys)[0] == 0
    (out / "notes.txt").write_text("keep")
    before = _snapshot(out)
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name == ".report.partial":
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(report_folder.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        report.write_alignment(out, method="test", names=["a.png", "b.png"], inputs=torch.rand(2, 3, 8, 8), aligned=torch.rand(2, 3, 8, 8), atlas={"mean": torch.rand(3, 8, 8)}, mode="quick")
    assert _snapshot(out) == before
    assert not (tmp_path / ".report.old").exists()


def test_a_symlinked_out_is_refused_before_any_work(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "x.txt").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    _one_line_error(*_run(["align", photos, "--method", "spacejam", "--out", link], capsys), "symbolic link")
    assert link.is_symlink() and (target / "x.txt").read_text() == "x"


# ----------------------------------------------------------------------------- 5-6. photos as users have them


def test_exif_orientation_is_applied(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # stored landscape ...
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # ... shown rotated 90 degrees clockwise: portrait, white on top
    Image.fromarray(pixels).save(folder / "p.jpg", exif=exif.tobytes())
    Image.fromarray(pixels).save(folder / "q.jpg")
    loaded = data.load_image_folder(folder, size=40)
    portrait, landscape = loaded.valid[0, 0], loaded.valid[1, 0]
    assert portrait.sum(0).gt(0).sum() == 20 and portrait.sum(1).gt(0).sum() == 40  # 20 wide, 40 tall
    assert landscape.sum(0).gt(0).sum() == 40 and landscape.sum(1).gt(0).sum() == 20
    image = loaded.images[0].mean(0)
    assert image[2:18, 12:28].mean() > 0.8 and image[22:38, 12:28].mean() < 0.2


def test_padding_is_never_a_mask(tmp_path):
    loaded = data.load_image_folder(_photos(tmp_path / "photos"), size=64)
    assert loaded.masks is None  # no alpha in any file
    assert loaded.valid[:, :, 0].sum() == 0 and loaded.valid[:, :, 32].sum() > 0  # padded rows on top


def test_report_links_survive_hash_and_question_marks(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos", names=("bird #1.jpg", "what?.png", "plain.jpg")), tmp_path / "report"
    assert _align(photos, out, capsys)[0] == 0
    html = (out / "index.html").read_text()
    assert "%23" in html and "%3F" in html and 'src="aligned/bird #1' not in html
    import re
    import urllib.parse

    for source in re.findall(r'src="([^"]+)"', html):
        assert (out / urllib.parse.unquote(source.replace("&amp;", "&"))).is_file(), source


# ----------------------------------------------------------------------------- 7. eval validates first, keeps finished work


def test_eval_validates_every_class_before_any_work(tmp_path, capsys):
    result = tmp_path / "r.json"
    _one_line_error(*_run(["eval", "--dataset", "cub", "--method", "nn", "--classes", "1,999", "--json", result], capsys), "999")
    _one_line_error(*_run(["eval", "--dataset", "cub", "--method", "nn", "--classes", "abc"], capsys), "whole number")
    assert not result.exists()


def test_eval_names_classes_missing_from_the_data(data_root, capsys):
    on_disk = data.cub_classes_on_disk(data_root)
    missing = next(i for i in range(1, 201) if i not in on_disk)
    _one_line_error(*_run(["eval", "--dataset", "cub", "--method", "nn", "--classes", f"1,{missing}", "--data", data_root], capsys), str(missing), "not in the CUB data")


def test_eval_keeps_finished_classes_when_a_later_one_fails(data_root, tmp_path, capsys, monkeypatch):
    real = data.load_cub_class

    def load(class_id, **kwargs):
        if class_id == 2:
            raise RuntimeError("the disk went away")
        return real(class_id, **kwargs)

    monkeypatch.setattr(evaluation.cub, "load_cub_class", load)  # where `congeal eval --dataset cub` looks it up
    monkeypatch.setenv("CONGEAL_BACKBONE", "efficientnet_lite0")
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="disk went away"):  # not a user's mistake: it keeps its traceback
        cli.main(["eval", "--dataset", "cub", "--method", "identity", "--classes", "1,2", "--json", str(out), "--data", str(data_root)])
    record = json.loads(out.read_text())
    assert record["complete"] is False and [r["class_id"] for r in record["classes"]] == [1]
    assert 0 < record["classes"][0]["pck"]["0.1"]["mean"] < 1


# ----------------------------------------------------------------------------- 8-9. every mistake: one line, exit 2, before work

BAD_COMMANDS = {
    "size-zero": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--size", "0"],
    "size-negative": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--size", "-5"],
    "size-one": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--size", "1"],
    "size-text": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--size", "big"],
    "seed-negative": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--seed", "-1"],
    "device": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--device", "tpu"],
    "device-missing-gpu": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--device", "cuda:7"],
    "backbone-unknown": ["align", "{photos}", "--method", "neural", "--out", "{out}", "--backbone", "resnet"],
    "backbone-with-pixels": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--backbone", "efficientnet_lite0"],
    "method": ["align", "{photos}", "--method", "magic", "--out", "{out}"],
    "folder-missing": ["align", "{tmp}/nowhere", "--method", "lsq", "--out", "{out}"],
    "out-is-file": ["align", "{photos}", "--method", "lsq", "--out", "{tmp}/file.txt"],
    "out-is-input": ["align", "{photos}", "--method", "lsq", "--out", "{photos}"],
    "out-not-ours": ["align", "{photos}", "--method", "spacejam", "--out", "{tmp}/busy"],
    "out-read-only": ["align", "{photos}", "--method", "lsq", "--out", "{tmp}/locked/report"],
    "shape-missing": ["align", "{photos}", "--method", "congeal3d", "--out", "{out}"],
    "shape-not-file": ["align", "{photos}", "--method", "congeal3d", "--out", "{out}", "--shape", "{tmp}/none.pt"],
    "shape-other-method": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--shape", "{tmp}/file.txt"],
    "classes-text": ["eval", "--dataset", "cub", "--method", "nn", "--classes", "abc"],
    "classes-range": ["eval", "--dataset", "mnist", "--method", "lsq", "--classes", "3,12"],
    "classes-lego": ["eval", "--dataset", "lego", "--method", "congeal3d", "--classes", "1"],
    "mnist-with-cub-method": ["eval", "--dataset", "mnist", "--method", "nn"],
    "mnist-with-backbone": ["eval", "--dataset", "mnist", "--method", "lsq", "--backbone", "efficientnet_lite0"],
    "dataset": ["eval", "--dataset", "imagenet", "--method", "nn"],
    "input-size-method": ["eval", "--dataset", "cub", "--method", "spacejam", "--input-size", "384"],
    "input-size-mnist": ["eval", "--dataset", "mnist", "--method", "lsq", "--input-size", "384"],
    "input-size-text": ["eval", "--dataset", "cub", "--method", "nn", "--input-size", "big"],
    "input-size-range": ["eval", "--dataset", "cub", "--method", "nn", "--input-size", "8"],
    "json-folder": ["eval", "--dataset", "mnist", "--method", "lsq", "--json", "{tmp}"],
    "json-not-ours": ["eval", "--dataset", "mnist", "--method", "lsq", "--json", "{tmp}/file.txt"],
    "data-missing": ["eval", "--dataset", "mnist", "--method", "lsq", "--data", "{tmp}/nowhere"],
    "unknown-flag": ["align", "{photos}", "--method", "lsq", "--out", "{out}", "--colour"],
    "no-command": [],
}


@pytest.fixture()
def scene(tmp_path):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    yield {"photos": photos, "out": tmp_path / "report", "tmp": tmp_path}
    locked.chmod(0o700)


def _no_work(monkeypatch):
    """Make any alignment or evaluation fail the test: none may start before the arguments are checked."""
    monkeypatch.setattr(cli, "_run_alignment", lambda images, args: pytest.fail("work started before the arguments were checked"))
    monkeypatch.setattr(cli, "_evaluate", lambda args, argv: pytest.fail("work started before the arguments were checked"))


@pytest.mark.parametrize("name", list(BAD_COMMANDS))
def test_every_mistake_is_one_line_and_exit_2(name, scene, capsys, monkeypatch):
    if name == "out-read-only" and os.geteuid() == 0:
        pytest.skip("root can write anywhere; see test_read_only_out_as_a_user")
    _no_work(monkeypatch)
    argv = [a.format(**scene) for a in BAD_COMMANDS[name]]
    _one_line_error(*_run(argv, capsys))
    assert (scene["tmp"] / "file.txt").read_text() == "mine" and (scene["tmp"] / "busy" / "keep.txt").read_text() == "mine"
    assert not scene["out"].exists()
    assert not [p for p in scene["tmp"].iterdir() if p.name.startswith(".")]  # no checkpoint or staging left


def test_bad_environment_variables_are_one_line(scene, capsys, monkeypatch):
    _no_work(monkeypatch)
    for variable, value in (("CONGEAL_MODE", "fast"), ("CONGEAL_BACKBONE", "resnet"), ("CONGEAL_DEVICE", "tpu")):
        monkeypatch.setenv(variable, value)
        _one_line_error(*_run(["align", scene["photos"], "--method", "neural", "--out", scene["out"]], capsys), value)
        monkeypatch.delenv(variable)


def test_read_only_out_as_a_user(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user can write to read-only folders (root)")
        with pytest.raises(OutputFolderError, match="not writable"):
            report_folder.check_output_folder(locked / "report")
    finally:
        locked.chmod(0o700)


def test_debug_shows_the_traceback_and_a_real_process_shows_one_line(tmp_path):
    command = [sys.executable, "-m", "congealing.cli", "align", str(tmp_path), "--method", "lsq", "--out", str(tmp_path / "o"), "--size", "0"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0 and "Traceback" not in plain.stderr
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and debug.stderr.strip().endswith("16 to 2048")


# ----------------------------------------------------------------------------- 10-11. unusable images


def test_every_unreadable_file_is_named_and_can_be_skipped(tmp_path, capsys, monkeypatch):
    photos = _photos(tmp_path / "photos")
    (photos / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: not an image, passed over
    jpeg = (photos / "a.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(photos / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 900 pixels is a 'decompression bomb' now ...
    monkeypatch.setattr(data.images, "read_image", _read_small_ok(data.read_image))  # ... for huge.png only (where the loader looks it up)
    code, err = _align(photos, tmp_path / "out", capsys)
    _one_line_error(code, err, "truncated.jpg", "huge.png", "--skip-unreadable")
    assert "._a.jpg" not in err
    code, err = _align(photos, tmp_path / "out", capsys, "--skip-unreadable")
    assert code == 0, err
    assert "truncated.jpg" in err and "huge.png" in err  # a warning names what was left out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == ["a.jpg", "b.png", "c.jpg"]
    # the report itself says which files it lacks, and why
    assert [entry.split(": ")[0] for entry in summary["left_out"]] == ["huge.png", "truncated.jpg"]
    assert "truncated" in summary["left_out"][1] and "left_out" in summary["fields"]
    warning = next(w for w in summary["verdict"]["warnings"] if "could not be used" in w)
    assert "2 file(s)" in warning and "huge.png, truncated.jpg" in warning
    assert "huge.png, truncated.jpg" in (tmp_path / "out" / "index.html").read_text()


def _read_small_ok(read_image):
    def read(path, **options):
        if Path(path).name != "huge.png":
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
                return read_image(path, **options)
        return read_image(path, **options)

    return read


def test_non_finite_pixels_name_the_file(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    values = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    values[3, 4] = np.nan
    Image.fromarray(values, mode="F").save(photos / "depth.tif")
    _one_line_error(*_align(photos, tmp_path / "out", capsys), "depth.tif", "NaN")


@pytest.mark.parametrize("method", ["lsq", "spacejam", "congeal3d"])
def test_a_set_of_flat_photos_is_refused_before_any_work(tmp_path, capsys, method):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, shape in (("a.png", (40, 60, 3)), ("b.png", (60, 40, 3)), ("c.jpg", (50, 50, 3))):
        Image.fromarray(np.full(shape, 255, dtype=np.uint8)).save(photos / name)  # white, padded with black to a square
    out = tmp_path / "out"
    extra = []
    if method == "congeal3d":
        congeal3d.save_shape(congeal3d.VoxelField(8, 1.5), tmp_path / "shape.pt")
        extra = ["--shape", tmp_path / "shape.pt"]
    code, err = _run(["align", photos, "--method", method, "--out", out, "--size", "64", *extra], capsys)
    _one_line_error(code, err, "3 images", "flat colour")
    assert not out.exists()


def test_one_flat_photo_among_real_ones_is_aligned(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(photos / "black.png")
    code, err = _align(photos, tmp_path / "out", capsys)
    assert code == 0, err
    assert "black.png" in json.loads((tmp_path / "out" / "summary.json").read_text())["images"]


def test_a_panorama_is_aligned_among_ordinary_photos(tmp_path, capsys, monkeypatch):
    """A strip 30 times as wide as tall is thinner than one of the co-segmentation's grid cells once
    squared (its border band was empty: an IndexError traceback)."""
    monkeypatch.setenv("CONGEAL_BACKBONE", "efficientnet_lite0")
    photos = _photos(tmp_path / "photos")
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 600, 3), dtype=np.uint8)).save(photos / "panorama.png")
    code, err = _run(["align", photos, "--method", "spacejam", "--out", tmp_path / "out", "--size", "64"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == ["a.jpg", "b.png", "c.jpg", "panorama.png"]


def test_non_finite_descriptors_are_never_cached(isolated_cache, monkeypatch):
    monkeypatch.setenv("CONGEAL_BACKBONE", "efficientnet_lite0")
    images = torch.rand(2, 3, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        features.extract_descriptors(images, "efficientnet_lite0", grid=8)
    assert not list(Path(isolated_cache).rglob("*.pt"))


# ----------------------------------------------------------------------------- 12. damaged files


def test_a_damaged_feature_cache_file_is_named_and_rebuilt(isolated_cache):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = features.extract_descriptors(images, "efficientnet_lite0", grid=8)
    (cached,) = list(Path(isolated_cache).rglob("*.pt"))
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.warns(UserWarning, match=cached.name):
        again = features.extract_descriptors(images, "efficientnet_lite0", grid=8)
    assert torch.allclose(first, again)
    assert features.extract_descriptors(images, "efficientnet_lite0", grid=8).shape == first.shape  # rebuilt: read quietly


def test_a_bad_dino_weights_file_is_blamed_on_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "dino.pth"
    bad.write_bytes(b"not weights")
    monkeypatch.setenv("CONGEAL_DINO_WEIGHTS", str(bad))
    features.backbones._LOADED.pop("dino_vits8", None)
    with pytest.raises(features.WeightsNotAvailableError, match=r"CONGEAL_DINO_WEIGHTS=.*dino.pth") as info:
        features.load_backbone("dino_vits8")
    assert "hub" not in str(info.value)


# ----------------------------------------------------------------------------- 13. interrupted and slow runs


def test_an_interrupted_run_says_how_to_resume_and_leaves_no_half_report(tmp_path, capsys, monkeypatch):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "report"

    def interrupted_training(image_set, args):
        checkpoints.save({"epoch": 5}, args.checkpoint, fingerprint=image_set.fingerprint)
        report_folder.begin(args.out)  # a report was being written when Ctrl-C came
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_alignment", interrupted_training)
    code, err = _run(["align", photos, "--method", "spacejam", "--out", out, "--size", "64"], capsys)
    assert code == 130 and "Traceback" not in err
    assert "--resume" in err and cli.checkpoint_path(out, "spacejam").name in err
    assert not report_folder.staging_path(out).exists() and not out.exists()


def test_full_mode_on_a_cpu_warns_first(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "photos" / "only.png")
    code, err = _run(["align", tmp_path / "photos", "--method", "lsq", "--out", tmp_path / "o", "--mode", "full"], capsys)
    assert code == 2 and "expects a GPU" in err.splitlines()[0] and "at least 2" in err


# ----------------------------------------------------------------------------- masks a user gives


def test_masks_folder_is_read_per_photo_and_checked(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", names=("a.jpg", "b.png"))
    masks = tmp_path / "masks"
    masks.mkdir()
    block = np.zeros((48, 64), dtype=np.uint8)
    block[10:30, 20:40] = 255
    Image.fromarray(block).save(masks / "a.png")
    Image.fromarray(block).save(masks / "b.png")
    image_set = data.load_image_folder(photos, size=64)
    loaded = data.load_masks(masks, image_set)
    assert loaded.shape == (2, 1, 64, 64) and float(loaded[0, 0, 8 + 20, 30]) == 1.0 and float(loaded[0, 0, 8 + 5, 5]) == 0.0
    Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(masks / "b.png")  # a mask that marks nothing ...
    with pytest.warns(UserWarning, match="mark no object.*b.png"):
        assert not data.load_masks(masks, image_set)[1].any()
    Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(masks / "a.png")  # ... and none that marks anything
    with pytest.raises(data.ImageSetError, match="no mask .* marks an object"):
        data.load_masks(masks, image_set)
    _one_line_error(*_run(["align", photos, "--method", "spacejam", "--out", tmp_path / "o", "--masks", masks], capsys), "marks an object", "white")
    Image.fromarray(np.zeros((64, 48), dtype=np.uint8)).save(masks / "b.png")  # portrait mask for a landscape photo
    (masks / "a.png").unlink()
    with pytest.raises(data.ImageSetError, match=r"a.jpg: no mask.*b.png: its shape"):
        data.load_masks(masks, image_set)
    _one_line_error(*_run(["align", photos, "--method", "lsq", "--out", tmp_path / "o", "--masks", masks], capsys), "no masks")
    _one_line_error(*_run(["align", photos, "--method", "spacejam", "--out", tmp_path / "o", "--masks", tmp_path / "none"], capsys), "not a folder")
