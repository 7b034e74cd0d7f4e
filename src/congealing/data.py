"""Image sets: a user's folder, MNIST, CUB-200-2011 and NeRF-synthetic, in their official layouts.

Where the data lives (:func:`find_dataset`), in this order:

1. an explicit ``root`` argument;
2. the environment variable ``CONGEAL_DATA`` (CI points it at a read-only copy);
3. the download cache ``$CONGEAL_CACHE/data`` (default ``~/.cache/congealing/data``), filled on
   first use from the official files, checked against their published checksums.

With no copy found and no network, the error names the dataset, every place looked in, and how to
get it. Nothing is ever written next to the data.

Images come out as float tensors in ``[0, 1]``, ``(N, 3, S, S)``; keypoints in pixel coordinates of
those tensors (centres at integers, the convention of :mod:`congealing.warps`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataNotFoundError, InputError
from .files import write_atomically
from .runtime import cache_dir

__all__ = [
    "IMAGE_SUFFIXES", "DatasetNotFoundError", "ImageSetError", "DatasetSource", "DATASETS",
    "find_dataset", "read_image", "to_square", "to_tensor", "ImageSet", "load_image_folder",
    "load_masks", "load_mnist", "CUBSet", "cub_crop_box", "cub_classes_on_disk", "cub_box_masks",
    "load_cub_class", "NerfScene", "load_nerf_synthetic",
]

#: File suffixes :func:`load_image_folder` and :func:`load_masks` read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DatasetNotFoundError(DataNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says how to get it.

    Raised by :func:`find_dataset` and the loaders; a :class:`congealing.errors.DataNotFoundError`
    (so also a :class:`FileNotFoundError`), which the ``congeal`` command turns into one line and exit
    code 2.
    """


class ImageSetError(InputError):
    """A folder of images cannot be used as a set; the message lists every offending file.

    Raised by :func:`load_image_folder` and :func:`load_masks`; a
    :class:`congealing.errors.InputError` (so also a :class:`ValueError`), which the ``congeal``
    command turns into one line and exit code 2.
    """


# ----------------------------------------------------------------------------- locating data


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from: its folder name, a file that proves it is there, and downloads.

    The values of :data:`DATASETS`; :func:`find_dataset` looks for ``folder/marker`` and downloads
    ``files`` into the cache. ``congeal info`` lists each one and where it was found.

    Attributes:
        name: the dataset's name in messages, e.g. ``"CUB-200-2011"``.
        folder: the folder name of the official layout, e.g. ``"CUB_200_2011"``.
        marker: a path inside ``folder`` whose existence proves the dataset is there.
        homepage: where a person can get it.
        files: ``(url, filename, md5 or None, extract?)`` per download.
        size_note: the download size, for the not-found message.
    """

    name: str
    folder: str
    marker: str
    homepage: str
    files: tuple = ()  # (url, filename, md5 or None, extract_to_folder?)
    size_note: str = ""


#: The downloadable datasets by key (:func:`find_dataset`): MNIST's test set, CUB-200-2011, NeRF-synthetic.
DATASETS = {
    "mnist": DatasetSource(
        "MNIST test set",
        "mnist",
        "t10k-images-idx3-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/",
        (
            ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", False),
            ("https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", False),
        ),
        "2 MB",
    ),
    "cub": DatasetSource(
        "CUB-200-2011",
        "CUB_200_2011",
        "images.txt",
        "https://www.vision.caltech.edu/datasets/cub_200_2011/",
        (("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78", True),),
        "1.1 GB",
    ),
    "nerf_synthetic": DatasetSource(
        "NeRF-synthetic",
        "nerf_synthetic",
        "lego/transforms_train.json",
        "https://www.matthewtancik.com/nerf",
        (("http://cseweb.ucsd.edu/~viscomp/projects/LF/papers/ECCV20/nerf/nerf_example_data.zip", "nerf_example_data.zip", None, True),),
        "1.9 GB (with the LLFF scenes)",
    ),
}


def find_dataset(key: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder of dataset ``key`` (``"mnist"``, ``"cub"``, ``"nerf_synthetic"``).

    Looks in ``root``, then ``$CONGEAL_DATA``, then the download cache (see the module docstring);
    ``root`` and ``$CONGEAL_DATA`` may point either at the dataset folder itself or at its parent.
    With ``download`` and no copy found, the official files are downloaded into the cache and
    checked. Used in Chapter 7, "Align your own photos", section "Your photos", by every loader
    below, and by ``congeal info``.

    Args:
        key: a key of :data:`DATASETS`.
        root: a folder to look in first, or None.
        download: whether to download when no copy is found.

    Returns:
        the dataset's folder (the one holding its marker file).

    Raises:
        KeyError: ``key`` is not in :data:`DATASETS`.
        DatasetNotFoundError: no copy was found and downloading was off or failed; the message lists
            every place looked in and how to get the data.

    Example:
        >>> import tempfile
        >>> from unittest import mock
        >>> with tempfile.TemporaryDirectory() as parent, mock.patch.dict(os.environ, {"CONGEAL_DATA": parent}):
        ...     (Path(parent) / "mnist").mkdir()
        ...     (Path(parent) / "mnist" / "t10k-images-idx3-ubyte.gz").touch()
        ...     print(find_dataset("mnist", download=False).relative_to(parent))
        mnist
    """
    source = DATASETS[key]
    candidates: list[tuple[str, Path]] = []
    if root is not None:
        candidates.append(("root argument", Path(root)))
    if os.environ.get("CONGEAL_DATA"):
        candidates.append(("$CONGEAL_DATA", Path(os.environ["CONGEAL_DATA"])))
    cached = cache_dir() / "data"
    candidates.append(("download cache", cached))
    looked = []
    for label, base in candidates:
        for folder in (base / source.folder, base):
            looked.append(f"{folder} ({label})")
            if (folder / source.marker).exists():
                return folder
    if download:
        try:
            return _download(source, cached)
        except OSError as error:  # no network, server gone, disk full...
            reason = f"downloading failed: {error}"
    else:
        reason = "download=False"
    raise DatasetNotFoundError(
        f"{source.name} not found. Looked for {source.folder}/{source.marker} in:\n  "
        + "\n  ".join(looked)
        + f"\nand {reason}.\nGet it from {source.homepage} ({source.size_note}), unpack it so that "
        f"<DIR>/{source.folder}/{source.marker} exists, and set CONGEAL_DATA=<DIR> (or pass root=<DIR>)."
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out)


def _download(source: DatasetSource, cached: Path) -> Path:
    target = cached / source.folder
    target.mkdir(parents=True, exist_ok=True)
    for url, filename, md5, extract in source.files:
        path = (cached if extract else target) / filename
        if not path.exists():
            print(f"downloading {source.name}: {url}")
            write_atomically(path, lambda partial: _fetch(url, partial))
        if md5 is not None and _md5(path) != md5:
            path.unlink()
            raise OSError(f"checksum mismatch for {url} (expected md5 {md5}); the file was removed")
        if extract:
            if filename.endswith((".tgz", ".tar.gz")):
                with tarfile.open(path) as archive:
                    archive.extractall(cached, filter="data")
            else:
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(cached)
            path.unlink()
    if not (target / source.marker).exists():
        raise OSError(f"the download did not produce {target / source.marker}")
    return target


# ----------------------------------------------------------------------------- image helpers


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read any common image as float RGB ``(H, W, 3)`` in ``[0, 1]`` plus its alpha ``(H, W)`` or None.

    Greyscale, palette, 16-bit and RGBA files are all accepted; 16-bit images keep their full range,
    and float (``F``) images are min-max scaled. EXIF orientation is applied, so phone photos come
    out as the camera was held. Used in Chapter 7, "Align your own photos", section "Exercises", and
    by :func:`load_image_folder` and :func:`load_masks`.

    Args:
        path: the image file.

    Returns:
        ``(rgb, alpha)``: ``rgb`` float32 ``(H, W, 3)`` in ``[0, 1]``; ``alpha`` float32 ``(H, W)``
        in ``[0, 1]`` for files with transparency, else None.

    Raises:
        PIL.UnidentifiedImageError: the file is not an image PIL can read.
        OSError: the file cannot be opened or is truncated.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     pixels = np.full((2, 4, 4), [255, 0, 0, 128], dtype=np.uint8)      # half-transparent red
        ...     Image.fromarray(pixels, "RGBA").save(Path(folder) / "red.png")
        ...     rgb, alpha = read_image(Path(folder) / "red.png")
        >>> rgb.shape, rgb[0, 0].tolist(), alpha.shape, round(float(alpha[0, 0]), 3)
        ((2, 4, 3), [1.0, 0.0, 0.0], (2, 4), 0.502)
    """
    with Image.open(path) as opened:
        opened.load()
        img = ImageOps.exif_transpose(opened)  # phone photos: store the pixels as the camera held them
        alpha = None
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            data = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if data.max() > 255 else 255.0
            grey = np.clip(data / peak, 0.0, 1.0).astype(np.float32)
            return np.repeat(grey[..., None], 3, axis=-1), None
        if img.mode == "F":
            grey = np.asarray(img, dtype=np.float32)
            grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-12)
            return np.repeat(grey[..., None], 3, axis=-1), None
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
            return rgba[..., :3], rgba[..., 3]
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, None


def to_square(array: np.ndarray, size: int, method: str = "pad") -> np.ndarray:
    """Resize an ``(H, W, C)`` array to ``(size, size, C)`` by padding or cropping.

    ``pad``: the longer side becomes ``size`` and the image is centred on zeros. ``crop``: the central
    square, then resized. Lanczos resampling per channel, clipped to ``[0, 1]``. No chapter calls it;
    :func:`load_image_folder` and :func:`load_masks` (so ``congeal align``) square every photo with it.

    Args:
        array: ``(H, W, C)`` float values in ``[0, 1]``.
        size: the side of the output.
        method: ``"pad"`` or ``"crop"``.

    Returns:
        float32 ``(size, size, C)`` in ``[0, 1]``.

    Raises:
        ValueError: ``method`` is neither ``"pad"`` nor ``"crop"``.

    Example:
        >>> to_square(np.ones((2, 4, 1), np.float32), 4)[..., 0].tolist()     # padded above and below
        [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """
    if method not in ("pad", "crop"):
        raise ValueError(f"method must be 'pad' or 'crop', got {method!r}")
    H, W = array.shape[:2]
    if method == "crop":
        side = min(H, W)
        top, left = (H - side) // 2, (W - side) // 2
        return _resize(array[top : top + side, left : left + side], (size, size))
    scale = size / max(H, W)
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    out = np.zeros((size, size, array.shape[2]), dtype=np.float32)
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = _resize(array, (h, w))
    return out


def _resize(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    channels = [Image.fromarray(array[..., c].astype(np.float32), mode="F") for c in range(array.shape[2])]
    resized = [np.asarray(ch.resize((size_hw[1], size_hw[0]), Image.LANCZOS)) for ch in channels]
    return np.clip(np.stack(resized, axis=-1), 0.0, 1.0).astype(np.float32)


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """A list of ``(H, W, C)`` arrays to one ``(N, C, H, W)`` float tensor.

    No chapter calls it; the loaders of this module do.

    Args:
        arrays: ``N`` arrays of the same shape ``(H, W, C)``.

    Returns:
        a contiguous float32 tensor ``(N, C, H, W)``.

    Raises:
        ValueError: the list is empty or the shapes differ (from ``numpy.stack``).

    Example:
        >>> to_tensor([np.zeros((2, 3, 1), np.float32)] * 5).shape
        torch.Size([5, 1, 2, 3])
    """
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float()


# ----------------------------------------------------------------------------- a user's folder


@dataclass
class ImageSet:
    """A set of square images with their names, masks and the files that could not be read.

    What :func:`load_image_folder` returns: Chapter 4, "A set of your choice", and the ``congeal
    align`` command (:func:`congealing.align.align`) work on it.

    Attributes:
        images: ``(N, 3, S, S)`` float in ``[0, 1]``.
        names: the ``N`` file names, sorted.
        masks: ``(N, 1, S, S)`` the object masks the files themselves carry (alpha channels), or None
            when no file has one.
        valid: ``(N, 1, S, S)`` 1 on the photo's own pixels inside the square, 0 on the padding that
            :func:`to_square` adds. Padding is never an object mask.
        skipped: the unreadable files (empty unless ``skip_unreadable``), each with its reason.
        fingerprint: the files' names, sizes and content hashes and the loading settings (what a
            checkpoint is checked against, :func:`congealing.checkpoints.check_fingerprint`).
    """

    images: torch.Tensor
    names: list[str]
    masks: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def load_image_folder(
    folder: str | os.PathLike,
    size: int = 256,
    method: str = "pad",
    min_images: int = 1,
    max_images: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """Load every image in ``folder`` (sorted by name) as a square set.

    Mixed sizes and modes are fine (see :func:`read_image`, :func:`to_square`); an RGBA file's alpha
    becomes its mask. Hidden files (names starting with ``.``, such as macOS's ``._photo.jpg``
    AppleDouble files) are not images and are passed over. Unreadable files, and files whose pixels
    are not finite, raise :class:`ImageSetError` naming each one, unless ``skip_unreadable`` is set,
    in which case they are listed in ``ImageSet.skipped`` and a warning is issued. The files
    themselves are never modified. ``ImageSet.fingerprint`` identifies the set (names, sizes and
    content hashes of the files read, and the loading settings), so a checkpoint can tell whether
    it was made from the same images. Used in Chapter 4, "A set of your choice", and by ``congeal
    align FOLDER``.

    Args:
        folder: the folder; files with a suffix in :data:`IMAGE_SUFFIXES` are read.
        size: the side ``S`` of the square images.
        method: ``"pad"`` or ``"crop"`` (:func:`to_square`).
        min_images: the fewest readable images accepted.
        max_images: the most images accepted, or None.
        skip_unreadable: warn about and skip unusable files instead of raising.

    Returns:
        the :class:`ImageSet`.

    Raises:
        ImageSetError: ``folder`` is not a folder; some files are unusable (without
            ``skip_unreadable``); fewer than ``min_images`` or more than ``max_images`` images.
        ValueError: ``method`` is neither ``"pad"`` nor ``"crop"``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(Path(folder) / "wide.png")
        ...     image_set = load_image_folder(folder, size=8)
        >>> image_set.names, tuple(image_set.images.shape), image_set.masks
        (['wide.png'], (1, 3, 8, 8), None)
        >>> image_set.valid[0, 0, :, 0].tolist()                      # the padding above and below
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    arrays, alphas, valid, names, files, bad = [], [], [], [], [], []
    for path in paths:
        try:
            rgb, alpha = read_image(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            bad.append(f"{path.name}: {type(error).__name__}: {error}")
            continue
        if not (np.isfinite(rgb).all() and (alpha is None or np.isfinite(alpha).all())):
            bad.append(f"{path.name}: its pixels include NaN or infinite values")
            continue
        arrays.append(to_square(rgb, size, method))
        inside = np.ones(rgb.shape[:2] + (1,), dtype=np.float32)
        valid.append(to_square(inside, size, method))
        alphas.append(None if alpha is None else to_square(alpha[..., None], size, method))
        names.append(path.name)
        files.append([path.name, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()[:16]])
    if bad and not skip_unreadable:
        raise ImageSetError(
            f"{len(bad)} unusable image(s) in {folder} (fix or remove them, or pass --skip-unreadable): " + "; ".join(bad)
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} unusable image(s) in {folder}: " + "; ".join(bad))
    if len(arrays) < min_images:
        raise ImageSetError(
            f"{folder} holds {len(arrays)} readable image(s) ({', '.join(IMAGE_SUFFIXES)}); at least {min_images} needed"
        )
    if max_images is not None and len(arrays) > max_images:
        raise ImageSetError(f"{folder} holds {len(arrays)} images; at most {max_images} are supported here")
    valid_tensor = to_tensor(valid)
    masks = None
    if any(alpha is not None for alpha in alphas):  # a file without alpha counts as all object
        masks = to_tensor([a if a is not None else v for a, v in zip(alphas, valid)])
    fingerprint = {"files": files, "size": size, "method": method}
    return ImageSet(to_tensor(arrays), names, masks, valid_tensor, bad, fingerprint)


def load_masks(folder: str | os.PathLike, image_set: ImageSet, method: str = "pad") -> torch.Tensor:
    """Object masks ``(N, 1, S, S)`` for ``image_set`` from a folder of mask images, one per photo.

    The mask of ``bird.jpg`` is ``bird.png`` (or ``bird.jpg.png``, or any image named ``bird.*``) in
    ``folder``: white (or opaque, for images with alpha) where the object is. Masks are squared
    like the photos (:func:`to_square` with the same ``method``) and thresholded at 0.5. No chapter
    calls it; ``congeal align FOLDER --masks MASKS`` does.

    Args:
        folder: the folder of mask images.
        image_set: the photos, from :func:`load_image_folder` (its ``names``, size and ``valid``).
        method: the ``method`` the photos were squared with.

    Returns:
        ``(N, 1, S, S)`` float masks of 0 and 1.

    Raises:
        ImageSetError: ``folder`` is not a folder; or, naming each, photos without a mask, unreadable
            masks, and masks whose shape differs from their photo's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"--masks {folder} is not a folder")
    size = image_set.images.shape[-1]
    files = {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    by_stem: dict[str, list[Path]] = {}
    for path in files.values():
        by_stem.setdefault(path.stem, []).append(path)
    masks, problems = [], []
    for index, name in enumerate(image_set.names):
        candidates = [files.get(Path(name).stem + ".png"), files.get(name + ".png")] + sorted(by_stem.get(Path(name).stem, []))
        path = next((c for c in candidates if c is not None), None)
        if path is None:
            problems.append(f"{name}: no mask (expected {Path(name).stem}.png)")
            continue
        try:
            rgb, alpha = read_image(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            problems.append(f"{path.name}: {type(error).__name__}: {error}")
            continue
        values = alpha if alpha is not None else rgb.mean(axis=-1)
        inside = to_square(np.ones(values.shape + (1,), dtype=np.float32), size, method)[..., 0]
        photo = image_set.valid[index, 0].numpy() if image_set.valid is not None else np.ones((size, size), dtype=np.float32)
        overlap = float((inside > 0.5).__and__(photo > 0.5).sum()) / max(float((inside > 0.5).__or__(photo > 0.5).sum()), 1.0)
        if overlap < 0.95:
            problems.append(f"{path.name}: its shape ({values.shape[1]}x{values.shape[0]}) does not match {name}")
            continue
        masks.append((to_square(values[..., None].astype(np.float32), size, method) > 0.5).astype(np.float32))
    if problems:
        raise ImageSetError(f"{len(problems)} problem(s) with the masks in {folder}: " + "; ".join(problems))
    return to_tensor(masks)


# ----------------------------------------------------------------------------- MNIST


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


# ----------------------------------------------------------------------------- CUB-200-2011


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


# ----------------------------------------------------------------------------- NeRF-synthetic


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
