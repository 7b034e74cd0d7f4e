"""`congeal align` on a small folder of mixed photos, for every method: the same report layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from congealing import cli, lego, warps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bird_folder(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("birds")
    originals = sorted(next((Path(data_root) / "CUB_200_2011" / "images").glob("001.*")).glob("*.jpg"))[:4]
    for k, path in enumerate(originals):
        image = Image.open(path)
        if k == 1:
            image.convert("L").save(folder / f"{path.stem}.png")  # a grey-level PNG among JPEGs
        else:
            image.save(folder / path.name)
    return folder


@pytest.fixture(scope="module")
def lego_folder_and_shape(tmp_path_factory, data_root):
    from congealing import congeal3d

    folder = tmp_path_factory.mktemp("lego")
    train = Path(data_root) / "nerf_synthetic" / "lego" / "train"
    for i in (3, 27, 58):
        Image.open(train / f"r_{i}.png").resize((96, 96)).save(folder / f"lego_{i}.png")  # RGBA: alpha is the mask
    config = congeal3d.Congeal3DConfig.for_mode("quick", grid_resolution=32, shape_steps=200, rays_per_step=1024)  # a rough shape is enough here
    bench = lego.load_lego_benchmark(config, inputs=2, root=data_root)
    shape = congeal3d.fit_shape(bench.anchor_images, bench.anchor_masks, bench.anchor_c2w, bench.fov, config)
    path = folder.parent / "lego_shape.pt"
    congeal3d.save_shape(shape, path)
    return folder, path


def check_report(out: Path, method: str, count: int) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and (out / "index.html").exists() and (out / "atlas.png").exists()
    assert len(list((out / "aligned").glob("*.png"))) == count
    assert (out / "edit").is_dir() or any("edit" in d.name for d in out.iterdir() if d.is_dir()), "every report propagates an edit"
    mappings = torch.load(out / "mappings.pt", weights_only=True)
    assert mappings["names"] == summary["images"]
    assert "transforms" in mappings or "grids" in mappings
    # something was aligned: the images (all different) got different mappings, not all the identity,
    # and the atlas is not blank
    if "transforms" in mappings:  # (N, 3, 3) image transforms, or (N, 4, 4) cameras for congeal3d
        maps = mappings["transforms"].float()
        d = maps.shape[-1]
        assert maps.shape in {(count, 3, 3), (count, 4, 4)} and torch.isfinite(maps).all()
        identity = torch.eye(d).expand(count, d, d)
    else:
        maps = mappings["grids"].float()
        assert maps.shape[0] == count and maps.shape[-1] == 2 and torch.isfinite(maps).all()
        identity = warps.identity_grid(tuple(maps.shape[1:3]), count)
    assert (maps - identity).abs().max() > 1e-3, f"{method}: every mapping is the identity"
    assert (maps - maps[:1]).abs().flatten(1).amax(dim=1)[1:].min() > 1e-4, f"{method}: two images got the same mapping"
    atlas = np.asarray(Image.open(out / "atlas.png").convert("L"), dtype=np.float64)
    assert atlas.std() > 1.0, f"{method}: the atlas is blank"


@pytest.mark.parametrize("method", ["entropy", "lsq", "ic-lsq", "spacejam", "neural"])
def test_align_a_folder_of_mixed_photos(method, bird_folder, tmp_path):
    out = tmp_path / "report"
    assert cli.main(["align", str(bird_folder), "--method", method, "--out", str(out), "--mode", "quick", "--size", "128"]) == 0
    check_report(out, method, 4)


def test_align_a_folder_in_3d(lego_folder_and_shape, tmp_path):
    folder, shape = lego_folder_and_shape
    out = tmp_path / "report"
    assert cli.main(["align", str(folder), "--method", "congeal3d", "--shape", str(shape), "--out", str(out), "--mode", "quick"]) == 0
    check_report(out, "congeal3d", 3)
    poses = json.loads((out / "summary.json").read_text())["poses"]
    assert len(poses) == 3 and all(len(p["c2w"]) == 4 for p in poses)
