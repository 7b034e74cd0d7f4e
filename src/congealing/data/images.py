"""Images from files: any common format read as float RGB, squared, and a user's folder as a set.

:func:`read_image` reads greyscale, palette, 16-bit and RGBA files alike (alpha kept as a mask);
:func:`to_square` pads or crops to a square; :func:`load_image_folder` loads a folder as an
:class:`ImageSet`, naming every file it cannot use, and :func:`load_masks` reads a folder of
masks for it. Images come out as float tensors in ``[0, 1]``, ``(N, 3, S, S)``. Chapter 4, "A set
of your choice", and ``congeal align FOLDER`` (Chapter 7, "Align your own photos") use them.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

__all__ = [
    "IMAGE_SUFFIXES", "ImageSetError", "read_image", "to_square", "to_tensor", "ImageSet",
    "load_image_folder", "load_masks",
]


#: File suffixes :func:`load_image_folder` and :func:`load_masks` read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class ImageSetError(InputError):
    """A folder of images cannot be used as a set; the message lists every offending file.

    Raised by :func:`load_image_folder` and :func:`load_masks`; a
    :class:`congealing.errors.InputError` (so also a :class:`ValueError`), which the ``congeal``
    command turns into one line and exit code 2.
    """


def read_image(path: str | os.PathLike, fit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read any common image as float RGB ``(H, W, 3)`` in ``[0, 1]`` plus its alpha ``(H, W)`` or None.

    Greyscale, palette, 16-bit and RGBA files are all accepted; 16-bit images keep their full range,
    and float (``F``) images are min-max scaled. EXIF orientation is applied, so phone photos come
    out as the camera was held. With ``fit``, an 8-bit photo whose shorter side is at least four times
    ``fit`` is first shrunk by an integer factor (a box filter, keeping that side at least ``2 * fit``,
    so padding or cropping it to a ``fit`` square still only shrinks it): a 48-megapixel photo meant
    for a 256-pixel square never becomes gigabytes of floats. Used in Chapter 7, "Align your own
    photos", section "Exercises", and by :func:`load_image_folder` and :func:`load_masks`.

    Args:
        path: the image file.
        fit: the side the caller will resize the image to, or None to read it at full size.

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
        factor = min(img.size) // (2 * fit) if fit else 0
        if factor >= 2 and img.mode in ("L", "LA", "RGB", "RGBA"):  # the modes PIL's reduce takes; others are rare and read whole
            img = img.reduce(factor)
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

    Mixed sizes and modes are fine (see :func:`read_image`, :func:`to_square`; a photo many times larger
    than ``size`` is shrunk as it is read, ``read_image(..., fit=size)``); an RGBA file's alpha
    becomes its mask, unless it is transparent all over (no pixel more than half opaque: then it marks
    no object, and the file is read as one without alpha, with a warning). Hidden files (names
    starting with ``.``, such as macOS's ``._photo.jpg`` AppleDouble files) are not images and are
    passed over. Unreadable files, and files whose pixels
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
    arrays, alphas, valid, names, files, bad, clear = [], [], [], [], [], [], []
    for path in paths:
        try:
            rgb, alpha = read_image(path, fit=size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            bad.append(f"{path.name}: {type(error).__name__}: {error}")
            continue
        if not (np.isfinite(rgb).all() and (alpha is None or np.isfinite(alpha).all())):
            bad.append(f"{path.name}: its pixels include NaN or infinite values")
            continue
        if alpha is not None and not (alpha > 0.5).any():  # a file transparent all over marks no object: its alpha is no mask
            clear.append(path.name)
            alpha = None
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
            + _subfolder_hint(folder)
        )
    if max_images is not None and len(arrays) > max_images:
        raise ImageSetError(f"{folder} holds {len(arrays)} images; at most {max_images} are supported here")
    if clear:
        warnings.warn(f"{len(clear)} image(s) are transparent all over (no pixel more than half opaque), so their alpha channel "
                      f"is not used as an object mask: {', '.join(clear)}")
    valid_tensor = to_tensor(valid)
    masks = None
    if any(alpha is not None for alpha in alphas):  # a file without alpha counts as all object
        masks = to_tensor([a if a is not None else v for a, v in zip(alphas, valid)])
    fingerprint = {"files": files, "size": size, "method": method}
    return ImageSet(to_tensor(arrays), names, masks, valid_tensor, bad, fingerprint)


def _subfolder_hint(folder: Path) -> str:
    """Where a folder's images are one level down (a common slip), say so: subfolders are not searched."""
    def holds_images(sub: Path) -> bool:
        try:
            return sub.is_dir() and not sub.name.startswith(".") and any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir())
        except OSError:  # a subfolder that cannot be listed is no hint
            return False

    holding = [sub.name for sub in sorted(folder.iterdir()) if holds_images(sub)]
    if not holding:
        return ""
    return f"; subfolders are not searched (images in: {', '.join(holding[:3])}{', ...' if len(holding) > 3 else ''}): name that folder instead"


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
            masks, and masks whose shape differs from their photo's; or no mask marks an object (an
            empty mask among others is allowed, with a warning).
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
    empty = [name for name, mask in zip(image_set.names, masks) if not mask.any()]
    if len(empty) == len(masks):
        raise ImageSetError(f"no mask in {folder} marks an object (none has a pixel more than half white or opaque): "
                            "white (or opaque) marks the object, black the background")
    if empty:
        warnings.warn(f"the masks of {len(empty)} photo(s) mark no object, so the methods use the whole photo for them: "
                      + ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""))
    return to_tensor(masks)
