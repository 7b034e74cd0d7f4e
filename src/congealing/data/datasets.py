"""The datasets of the book, read from their official layouts: MNIST, CUB-200-2011 and NeRF-synthetic.

Each loader finds its files with :func:`congealing.data.find_dataset` (downloading them on first
use). Images come out as float tensors in ``[0, 1]``, ``(N, C, S, S)``; keypoints in pixel
coordinates of those tensors (centres at integers, the convention of :mod:`congealing.warps`).
MNIST is Chapter 2's set, CUB-200-2011 Chapters 3-5's and NeRF-synthetic's lego Chapter 6's.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import to_tensor
from .sources import DatasetNotFoundError, find_dataset

__all__ = [
    "load_mnist", "CUBSet", "cub_crop_box", "cub_classes_on_disk", "cub_box_masks",
    "load_cub_class", "NerfScene", "load_nerf_synthetic",
]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(root=None, digits=None, limit: int | None = None, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test set: images ``(N, 1, 28, 28)`` in ``[0, 1]`` and labels ``(N,)``.

    ``digits`` keeps only those classes; ``limit`` keeps the first ``limit`` images (after
    filtering). No example here: it needs the MNIST files. Used in Chapter 2, "A set that needs
    aligning", and by ``congeal eval --dataset mnist``.

    Args:
        root: a folder to look in first (see :func:`find_dataset`), or None.
        digits: a digit or digits to keep, or None for all ten.
        limit: keep at most this many images, or None.
        download: whether to download when no copy is found.

    Returns:
        ``(images, labels)``: float ``(N, 1, 28, 28)`` in ``[0, 1]`` and long ``(N,)``.

    Raises:
        DatasetNotFoundError: the data is not found (or the image or label file is missing).
        ValueError: a file is not an unsigned-byte idx file.
    """
    folder = find_dataset("mnist", root, download)
    images = _read_idx(_first_existing(folder, "t10k-images-idx3-ubyte"))
    labels = _read_idx(_first_existing(folder, "t10k-labels-idx1-ubyte"))
    images = torch.from_numpy(images.copy()).float().div(255.0)[:, None]
    labels = torch.from_numpy(labels.copy()).long()
    if digits is not None:
        keep = torch.isin(labels, torch.as_tensor(list(np.atleast_1d(digits))))
        images, labels = images[keep], labels[keep]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _first_existing(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise DatasetNotFoundError(f"{folder} has no {stem}(.gz)")


@dataclass
class CUBSet:
    """One CUB class, box-cropped to squares.

    What :func:`load_cub_class` returns. Used from Chapter 3 on, e.g. Chapter 4, "The set, its keys
    and its masks"; :func:`congealing.evaluation.evaluate_transfer` scores keypoint transfer on it.

    Attributes:
        images: ``(N, 3, S, S)`` float in ``[0, 1]``.
        keypoints: ``(N, 15, 2)`` pixel ``(x, y)`` in the crop (0 where not visible).
        visible: ``(N, 15)`` bool.
        boxes: ``(N, 4)`` the bird's box ``(x0, y0, x1, y1)`` in the crop, pixel centres.
        names: the ``N`` image paths as ``images.txt`` lists them.
        part_names: the 15 part names of ``parts/parts.txt``.
        class_name: the class folder name, e.g. ``"001.Black_footed_Albatross"``.
    """

    images: torch.Tensor
    keypoints: torch.Tensor
    visible: torch.Tensor
    boxes: torch.Tensor
    names: list[str]
    part_names: list[str]
    class_name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index) -> "CUBSet":
        """The images picked by ``index``, each with its keypoints, visibility, box and name.

        The part names and class name are shared. Used in Chapter 3, "Exercises".

        Args:
            index: a slice, a list of positions or a boolean mask ``(N,)``.

        Returns:
            a new :class:`CUBSet` of the picked images, in the order picked.

        Raises:
            IndexError: a position is out of range.

        Example:
            >>> cub = CUBSet(torch.zeros(4, 3, 8, 8), torch.zeros(4, 15, 2), torch.ones(4, 15, dtype=torch.bool),
            ...              torch.zeros(4, 4), ["a", "b", "c", "d"], [str(k) for k in range(15)], "toy")
            >>> small = cub.subset(slice(0, 2))
            >>> len(small), small.names, tuple(small.keypoints.shape)
            (2, ['a', 'b'], (2, 15, 2))
            >>> cub.subset([3, 1]).names
            ['d', 'b']
        """
        positions = torch.arange(len(self))[index].reshape(-1)
        return CUBSet(
            self.images[positions], self.keypoints[positions], self.visible[positions], self.boxes[positions],
            [self.names[k] for k in positions.tolist()], self.part_names, self.class_name,
        )


def _read_table(path: Path) -> list[list[str]]:
    with open(path) as handle:
        return [line.split() for line in handle if line.strip()]


def cub_crop_box(box_xywh, pad: float = 0.05) -> tuple[int, int, int]:
    """The square crop ``(x0, y0, side)`` around a CUB box, in 0-based pixels (the ACSM protocol).

    The box is padded by ``pad`` of its width/height on each side, then the shorter side grows
    symmetrically to make a square (half-up rounding, as the published code). The crop may reach
    outside the photo (negative ``x0``/``y0``). No chapter calls it; :func:`load_cub_class` does.

    Args:
        box_xywh: the box as ``bounding_boxes.txt`` gives it: 1-based ``(x, y, width, height)``.
        pad: the padding on each side, as a fraction of the box's width/height.

    Returns:
        ``(x0, y0, side)`` ints: the crop's top-left corner and side, in 0-based pixels.

    Example:
        >>> cub_crop_box((61.0, 28.0, 100.0, 50.0))
        (55, -3, 109)
    """
    x, y, w, h = box_xywh
    x0, y0, x1, y1 = x - 1, y - 1, x + w - 2, y + h - 2  # 1-based (x, y, w, h) -> 0-based corners
    bw, bh = x1 - x0, y1 - y0
    x0, x1, y0, y1 = x0 - pad * bw, x1 + pad * bw, y0 - pad * bh, y1 + pad * bh
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0)
    half_up = lambda v: int(np.floor(v + 0.5))  # noqa: E731
    return half_up(cx - side / 2), half_up(cy - side / 2), half_up(side)


def cub_classes_on_disk(root=None) -> dict[int, str]:
    """The CUB classes ``{id: folder name}`` whose images are on disk (empty if CUB is not there yet).

    Never downloads. No chapter calls it; ``congeal eval --dataset cub --classes ...`` checks the
    classes asked for against it.

    Args:
        root: a folder to look in first (see :func:`find_dataset`), or None.

    Returns:
        ``{class id: class folder name}`` for every class folder present under ``images/``.

    Example:
        >>> isinstance(cub_classes_on_disk("/nonexistent"), dict)
        True
    """
    try:
        folder = find_dataset("cub", root, download=False)
    except DatasetNotFoundError:
        return {}
    classes = {int(i): name for i, name in _read_table(folder / "classes.txt")}
    return {i: name for i, name in classes.items() if (folder / "images" / name).is_dir()}


def cub_box_masks(cub) -> torch.Tensor:
    """The ground-truth boxes of a :class:`congealing.data.CUBSet` as masks ``(N, 1, S, S)``.

    Each box is rounded to whole pixels and filled (clipped to the image). Used in Chapter 4, "The set,
    its keys and its masks" (the masks Neural Congealing trains under there).

    Args:
        cub: a :class:`CUBSet` (its ``images`` give the size, its ``boxes`` the masks).

    Returns:
        float masks ``(N, 1, S, S)``: 1 inside each image's box, 0 outside.

    Example:
        >>> cub = CUBSet(torch.zeros(1, 3, 6, 6), torch.zeros(1, 15, 2), torch.ones(1, 15, dtype=torch.bool),
        ...              torch.tensor([[1.0, 2.0, 3.0, 4.0]]), ["a"], [str(k) for k in range(15)], "toy")
        >>> cub_box_masks(cub)[0, 0]
        tensor([[0., 0., 0., 0., 0., 0.],
                [0., 0., 0., 0., 0., 0.],
                [0., 1., 1., 1., 0., 0.],
                [0., 1., 1., 1., 0., 0.],
                [0., 1., 1., 1., 0., 0.],
                [0., 0., 0., 0., 0., 0.]])
    """
    N, _, H, W = cub.images.shape
    masks = torch.zeros(N, 1, H, W)
    for n, (x0, y0, x1, y1) in enumerate(cub.boxes.round().long().tolist()):
        masks[n, 0, max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = 1.0
    return masks


def load_cub_class(class_id: int, split: str = "test", size: int = 256, root=None, download: bool = True, limit: int | None = None) -> CUBSet:
    """Images of CUB class ``class_id`` (1-200) in ``split`` (``"test"``, ``"train"`` or ``"all"``).

    Each image is cropped to the padded, squared ground-truth box (:func:`cub_crop_box`; pixels
    outside the photo are zero) and resized to ``size`` with Lanczos; keypoints and the box are
    carried into the crop. CUB's part coordinates are 1-based; they are shifted to this project's
    0-based pixel centres. No example here: it needs the CUB files. Used in Chapter 3's setup cell,
    Chapter 4, "The set, its keys and its masks", Chapter 5, "The keys: masked PCA maps and a
    3-channel autoencoder", and by ``congeal eval --dataset cub``.

    Args:
        class_id: the CUB class id, 1-200.
        split: ``"test"``, ``"train"`` or ``"all"`` (CUB's ``train_test_split.txt``).
        size: the side ``S`` of the square crops.
        root: a folder to look in first (see :func:`find_dataset`), or None.
        download: whether to download when no copy is found.
        limit: keep the first ``limit`` images (by CUB image id), or None.

    Returns:
        the :class:`CUBSet`.

    Raises:
        ValueError: ``split`` is unknown, or ``class_id`` is not in the data.
        DatasetNotFoundError: the data is not found, the class has no images in ``split``, or a
            listed image file is missing.
    """
    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    folder = find_dataset("cub", root, download)
    images_txt = {int(i): p for i, p in _read_table(folder / "images.txt")}
    labels = {int(i): int(c) for i, c in _read_table(folder / "image_class_labels.txt")}
    is_train = {int(i): t == "1" for i, t in _read_table(folder / "train_test_split.txt")}
    boxes = {int(r[0]): tuple(map(float, r[1:])) for r in _read_table(folder / "bounding_boxes.txt")}
    class_names = {int(i): n for i, n in _read_table(folder / "classes.txt")}
    part_names = [" ".join(r[1:]) for r in _read_table(folder / "parts" / "parts.txt")]
    parts: dict[int, np.ndarray] = {}
    for image_id, part_id, x, y, vis in _read_table(folder / "parts" / "part_locs.txt"):
        table = parts.setdefault(int(image_id), np.zeros((len(part_names), 3), dtype=np.float32))
        table[int(part_id) - 1] = (float(x), float(y), float(vis))
    if class_id not in class_names:
        raise ValueError(f"class {class_id} is not in {folder} (it holds {min(class_names)}-{max(class_names)})")
    ids = [i for i in sorted(images_txt) if labels[i] == class_id and (split == "all" or is_train[i] == (split == "train"))]
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        raise DatasetNotFoundError(f"no {split} images of class {class_id} under {folder / 'images'}")
    arrays, keypoints, visible, crop_boxes, names = [], [], [], [], []
    for image_id in ids:
        path = folder / "images" / images_txt[image_id]
        if not path.exists():
            raise DatasetNotFoundError(f"{path} is listed in images.txt but missing")
        with Image.open(path) as photo:
            x0, y0, side = cub_crop_box(boxes[image_id])
            crop = photo.convert("RGB").crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS)
        arrays.append(np.asarray(crop, dtype=np.float32) / 255.0)
        scale = size / side
        to_crop = lambda px, py: ((px - x0 + 0.5) * scale - 0.5, (py - y0 + 0.5) * scale - 0.5)  # noqa: E731
        table = parts.get(image_id, np.zeros((len(part_names), 3), dtype=np.float32))
        vis = table[:, 2] > 0
        kx, ky = to_crop(table[:, 0] - 1.0, table[:, 1] - 1.0)
        keypoints.append(np.where(vis[:, None], np.stack([kx, ky], axis=-1), 0.0))
        visible.append(vis)
        bx, by, bw, bh = boxes[image_id]
        (cx0, cy0), (cx1, cy1) = to_crop(bx - 1, by - 1), to_crop(bx + bw - 2, by + bh - 2)
        crop_boxes.append((cx0, cy0, cx1, cy1))
        names.append(images_txt[image_id])
    return CUBSet(
        images=to_tensor(arrays),
        keypoints=torch.tensor(np.stack(keypoints), dtype=torch.float32),
        visible=torch.tensor(np.stack(visible)),
        boxes=torch.tensor(crop_boxes, dtype=torch.float32),
        names=names,
        part_names=part_names,
        class_name=class_names[class_id],
    )


@dataclass
class NerfScene:
    """Views of a NeRF-synthetic scene.

    What :func:`load_nerf_synthetic` returns; Chapter 6's lego benchmark
    (:func:`congealing.congeal3d.load_lego_benchmark`, called in its setup cell) is built from it.

    Attributes:
        images: ``(N, 3, S, S)`` float in ``[0, 1]``, composited on the background.
        masks: ``(N, 1, S, S)`` the alpha channel, in ``[0, 1]``.
        c2w: ``(N, 4, 4)`` camera-to-world (Blender/OpenGL: the camera looks down its -z axis, y up).
        fov: the horizontal field of view in radians.
        focal: the focal length in pixels at size ``S``.
        names: the ``N`` image file names.
    """

    images: torch.Tensor
    masks: torch.Tensor
    c2w: torch.Tensor
    fov: float
    focal: float
    names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def load_nerf_synthetic(scene: str = "lego", split: str = "train", size: int = 200, root=None, download: bool = True, background: float = 1.0, views=None) -> NerfScene:
    """Load a NeRF-synthetic scene's views at ``size`` x ``size`` pixels.

    Each RGBA view is resized with Lanczos and composited on a grey level ``background``; the alpha
    becomes the mask. No example here: it needs the NeRF-synthetic files. Used for Chapter 6 through
    :func:`congealing.congeal3d.load_lego_benchmark` (its setup cell) and by
    :mod:`congealing.congeal3d.captures`.

    Args:
        scene: the scene folder, e.g. ``"lego"``.
        split: ``"train"``, ``"val"`` or ``"test"`` (``transforms_{split}.json``).
        size: the side ``S`` of the views.
        root: a folder to look in first (see :func:`find_dataset`), or None.
        download: whether to download when no copy is found.
        background: the grey level in ``[0, 1]`` under transparent pixels.
        views: indices of the frames to keep, or None for all.

    Returns:
        the :class:`NerfScene`.

    Raises:
        DatasetNotFoundError: the data or the split's ``transforms_{split}.json`` is not found.
    """
    folder = find_dataset("nerf_synthetic", root, download) / scene
    meta_path = folder / f"transforms_{split}.json"
    if not meta_path.exists():
        raise DatasetNotFoundError(f"{meta_path} not found (scenes: {sorted(p.name for p in folder.parent.iterdir() if p.is_dir())})")
    meta = json.loads(meta_path.read_text())
    frames = meta["frames"] if views is None else [meta["frames"][i] for i in views]
    images, masks, poses, names = [], [], [], []
    for frame in frames:
        path = (folder / frame["file_path"]).with_suffix(".png")
        with Image.open(path) as img:
            rgba = np.asarray(img.convert("RGBA").resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        images.append(rgba[..., :3] * alpha + background * (1.0 - alpha))
        masks.append(alpha)
        poses.append(np.asarray(frame["transform_matrix"], dtype=np.float32))
        names.append(path.name)
    fov = float(meta["camera_angle_x"])
    return NerfScene(to_tensor(images), to_tensor(masks), torch.from_numpy(np.stack(poses)), fov, 0.5 * size / np.tan(0.5 * fov), names)
