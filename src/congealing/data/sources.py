"""Where the datasets live: their official sources, and the search and download that find them.

:func:`find_dataset` looks, in this order:

1. in an explicit ``root`` argument;
2. in the folder of the environment variable ``CONGEAL_DATA`` (CI points it at a read-only copy);
3. in the download cache ``$CONGEAL_CACHE/data`` (default ``~/.cache/congealing/data``), filled on
   first use from the official files (:data:`DATASETS`), checked against their published checksums.

With no copy found and no network, the error names the dataset, every place looked in, and how to
get it. Nothing is ever written next to the data.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataNotFoundError
from ..files import write_atomically
from ..runtime import cache_dir

__all__ = [
    "DatasetNotFoundError", "DatasetSource", "DATASETS", "find_dataset",
]


class DatasetNotFoundError(DataNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says how to get it.

    Raised by :func:`find_dataset` and the loaders; a :class:`congealing.errors.DataNotFoundError`
    (so also a :class:`FileNotFoundError`), which the ``congeal`` command turns into one line and exit
    code 2.
    """


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
