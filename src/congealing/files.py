"""Writing a file so that a reader never sees half of it.

Every file the library writes and others may read while it runs (a downloaded archive, a cached
descriptor tensor, a training checkpoint, a ``congeal eval --json`` record) goes through
:func:`write_atomically`: the content is written to a hidden ``.NAME.PID.partial`` file beside the
target and renamed over it in one step (``os.replace``), so an interrupted run leaves either the old
file or the new one, and two processes filling the same cache entry do not mix their bytes.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "note.txt"
>>> write_atomically(target, lambda partial: partial.write_text("done")) == target
True
>>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
('done', ['note.txt'])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["partial_path", "write_atomically"]


def partial_path(path: str | os.PathLike) -> Path:
    """The hidden file beside ``path`` that :func:`write_atomically` writes first (unique per process).

    Its name is ``.NAME.PID.partial``, in ``path``'s folder (so the final rename stays on one file
    system). No chapter calls it; :func:`write_atomically` does.

    Args:
        path: the target file.

    Returns:
        the partial file's :class:`~pathlib.Path` (nothing is created).

    Example:
        >>> partial_path("/tmp/out/result.json") == Path(f"/tmp/out/.result.json.{os.getpid()}.partial")
        True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(partial)`` to fill a hidden file beside ``path``, then rename it to ``path``.

    The rename is ``os.replace``: a reader sees the old file or the whole new one, never half.
    No chapter calls it; downloads (:mod:`congealing.data`), the descriptor cache
    (:func:`congealing.features.extract_descriptors`), checkpoints (:func:`congealing.checkpoints.save`)
    and ``congeal eval --json`` records (:mod:`congealing.cli`) are written with it.

    Args:
        path: the file to create or replace; its folder is created if needed.
        write: writes the whole content to the path it is given (e.g. ``lambda p: torch.save(x, p)``).

    Returns:
        ``path`` as a :class:`pathlib.Path`. If ``write`` raises, the partial file is removed and
        ``path`` is left as it was.

    Raises:
        Exception: whatever ``write`` raises, unchanged, after the partial file is removed.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     target = write_atomically(Path(folder) / "note.txt", lambda partial: partial.write_text("old"))
        ...     try:
        ...         write_atomically(target, lambda partial: 1 / 0)
        ...     except ZeroDivisionError:
        ...         print(target.read_text(), [p.name for p in target.parent.iterdir()])
        old ['note.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
