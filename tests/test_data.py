"""congealing.data on real data and on the bad input a user's folder can hold."""
import numpy as np
import pytest
import torch
from PIL import Image

from congealing import data


def test_mnist_test_set(data_root):
    images, labels = data.load_mnist(data_root)
    assert images.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert torch.bincount(labels).min() > 800  # every digit is well represented
    sevens, seven_labels = data.load_mnist(data_root, digits=7, limit=50)
    assert sevens.shape[0] == 50 and (seven_labels == 7).all()


def test_cub_class_crops_and_keypoints(data_root):
    cub = data.load_cub_class(1, split="test", root=data_root)
    assert len(cub) == 30  # the class-001 test split of CUB-200-2011
    assert cub.images.shape == (30, 3, 256, 256) and cub.keypoints.shape == (30, 15, 2)
    assert cub.part_names[1] == "beak" and "Albatross" in cub.class_name
    assert cub.visible.float().mean() > 0.4
    inside = cub.keypoints[cub.visible]
    assert (inside >= -1).all() and (inside <= 256).all()
    # The crop pads the box by 5 % a side, so the box spans about 1 / 1.1 of the longer crop side.
    extent = torch.maximum(cub.boxes[:, 2] - cub.boxes[:, 0], cub.boxes[:, 3] - cub.boxes[:, 1])
    assert torch.allclose(extent.mean(), torch.tensor(256 / 1.1), rtol=0.03)
    train = data.load_cub_class(1, split="train", root=data_root)
    assert set(train.names).isdisjoint(cub.names)


def test_cub_keypoints_follow_the_crop(data_root):
    """A keypoint sits on the same photo pixel before and after the crop (colour check)."""
    cub = data.load_cub_class(2, split="test", root=data_root, size=512, limit=3)
    assert cub.images.shape[-1] == 512
    # Visible keypoints lie inside the crop and inside (or near) the bird's box.
    for keypoints, visible, box in zip(cub.keypoints, cub.visible, cub.boxes):
        pts = keypoints[visible]
        margin = 0.08 * 512
        assert (pts[:, 0] >= box[0] - margin).all() and (pts[:, 0] <= box[2] + margin).all()
        assert (pts[:, 1] >= box[1] - margin).all() and (pts[:, 1] <= box[3] + margin).all()


def test_nerf_synthetic_lego(data_root):
    scene = data.load_nerf_synthetic("lego", root=data_root, size=64, views=[0, 1, 2])
    assert scene.images.shape == (3, 3, 64, 64) and scene.masks.shape == (3, 1, 64, 64)
    assert scene.c2w.shape == (3, 4, 4)
    rotation = scene.c2w[:, :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-4)
    assert 0.5 < scene.fov < 1.0  # about 40 degrees
    assert 0.05 < scene.masks.mean() < 0.6  # the object covers part of each view


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.delenv("CONGEAL_DATA", raising=False)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.find_dataset("cub", root=tmp_path, download=False)
    message = str(info.value)
    assert "CUB-200-2011" in message and str(tmp_path) in message and "CONGEAL_DATA" in message


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


def test_image_folder_mixed_sizes_and_modes(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "a_rgb.jpg", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    _save(tmp_path / "b_grey.png", rng.integers(0, 255, (50, 30), dtype=np.uint8))
    rgba = rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[8:24, 8:24, 3] = 255
    _save(tmp_path / "c_rgba.png", rgba)
    sixteen = (rng.integers(0, 65535, (20, 20))).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "d_16bit.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = data.load_image_folder(tmp_path, size=64)
    assert images.images.shape == (4, 3, 64, 64) and images.masks.shape == (4, 1, 64, 64)
    assert images.names == ["a_rgb.jpg", "b_grey.png", "c_rgba.png", "d_16bit.png"]
    assert 0.0 <= images.images.min() and images.images.max() <= 1.0
    assert images.images[3].std() > 0.1  # the 16-bit image kept its range
    rgba_mask = images.masks[2, 0]
    assert rgba_mask[32, 32] > 0.9 and rgba_mask[2, 2] < 0.1
    cropped = data.load_image_folder(tmp_path, size=32, method="crop")
    assert cropped.images.shape == (4, 3, 32, 32)


def test_a_file_transparent_all_over_is_no_mask(tmp_path):
    rng = np.random.default_rng(1)
    clear = rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)
    clear[..., 3] = 100  # no pixel more than half opaque: the alpha marks no object
    _save(tmp_path / "clear.png", clear)
    _save(tmp_path / "plain.jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="transparent all over.*clear.png"):
        images = data.load_image_folder(tmp_path, size=16)
    assert images.masks is None  # no file left with an alpha: the methods co-segment instead
    assert images.images[0].std() > 0.1  # its colours are still read
    clear[4:12, 4:12, 3] = 255
    _save(tmp_path / "clear.png", clear)
    assert data.load_image_folder(tmp_path, size=16).masks[0, 0, 8, 8] > 0.9  # with an opaque part it is a mask


def test_image_folder_bad_input(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    _save(tmp_path / "ok.png", np.zeros((8, 8, 3), dtype=np.uint8))
    before = sorted(p.read_bytes() for p in tmp_path.iterdir())
    with pytest.raises(data.ImageSetError, match="broken.jpg"):
        data.load_image_folder(tmp_path)
    with pytest.warns(UserWarning, match="broken.jpg"):
        kept = data.load_image_folder(tmp_path, skip_unreadable=True)
    assert kept.names == ["ok.png"] and kept.skipped and "broken.jpg" in kept.skipped[0]
    with pytest.warns(UserWarning), pytest.raises(data.ImageSetError, match="at least 2"):
        data.load_image_folder(tmp_path, skip_unreadable=True, min_images=2)
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == before  # nothing was touched
    with pytest.raises(data.ImageSetError, match="not a folder"):
        data.load_image_folder(tmp_path / "missing")
    (tmp_path / "outer" / "shoot").mkdir(parents=True)  # the images one level down: a common slip
    _save(tmp_path / "outer" / "shoot" / "one.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(data.ImageSetError, match=r"holds 0 readable .*subfolders are not searched \(images in: shoot\)"):
        data.load_image_folder(tmp_path / "outer")


def test_download_checks_checksums(tmp_path, monkeypatch, isolated_cache):
    """The download path, exercised offline with file:// URLs standing in for the official ones."""
    import gzip
    import hashlib

    monkeypatch.delenv("CONGEAL_DATA", raising=False)
    payload = gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    served = tmp_path / "served.gz"
    served.write_bytes(payload)
    good = data.DatasetSource("toy", "toy", "labels.gz", "https://example.org", ((served.as_uri(), "labels.gz", hashlib.md5(payload).hexdigest(), False),))
    monkeypatch.setitem(data.DATASETS, "toy", good)
    folder = data.find_dataset("toy")
    assert folder == isolated_cache / "data" / "toy" and (folder / "labels.gz").read_bytes() == payload
    assert data.find_dataset("toy", download=False) == folder  # found in the cache the second time
    bad = data.DatasetSource("bad", "bad", "labels.gz", "https://example.org", ((served.as_uri(), "labels.gz", "0" * 32, False),))
    monkeypatch.setitem(data.DATASETS, "bad", bad)
    with pytest.raises(data.DatasetNotFoundError, match="checksum mismatch"):
        data.find_dataset("bad")
    assert not (isolated_cache / "data" / "bad" / "labels.gz").exists()  # the corrupt file was removed


@pytest.mark.parametrize("method", ["pad", "crop"])
def test_a_photo_many_times_the_size_is_shrunk_as_it_is_read(tmp_path, method):
    """A box-filter reduction before the Lanczos resize: nearly the same square, from far fewer floats."""
    y, x = np.mgrid[0:1200, 0:1800]
    smooth = np.stack([np.sin(x / 90.0), np.cos(y / 70.0), np.sin((x + y) / 120.0)], -1) * 100 + 128
    _save(tmp_path / "big.png", smooth.astype(np.uint8))
    rgb, _ = data.read_image(tmp_path / "big.png", fit=64)
    assert rgb.shape == (134, 200, 3)  # 1200 // 128 = 9, sides rounded up: the shorter stays at least 2 x 64
    assert data.read_image(tmp_path / "big.png", fit=400)[0].shape == (1200, 1800, 3)  # not four times larger: read whole
    full = data.to_square(data.read_image(tmp_path / "big.png")[0], 64, method)
    loaded = data.load_image_folder(tmp_path, size=64, method=method).images[0].permute(1, 2, 0).numpy()
    assert np.abs(loaded - full).mean() < 0.01 and np.abs(loaded - full).max() < 0.05  # at most a fraction of a box apart
