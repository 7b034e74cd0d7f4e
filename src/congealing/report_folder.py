"""A report folder that never costs the user a file (used by :mod:`congealing.report`).

``congeal align ... --out OUT`` writes a whole folder. These rules keep that safe:

* **Ownership.** A folder is a report only if it holds the marker file :data:`MARKER`, which the
  program writes with a *manifest*: every file it put there. The program deletes or replaces only
  files its own manifest lists. A folder without the marker is never written into unless it is empty,
  and the input folder is never a report.
* **Staging.** The new report is written to ``.OUT.partial`` beside ``OUT`` (itself marked as the
  program's) and becomes ``OUT`` only when complete, so an interrupted run leaves no half report.
* **Replacing.** An earlier report is renamed aside (``.OUT.old``) and stays whole until the new one
  is in place; files the user added to it (notes, edits) are moved into the new report; only then
  are the old report's own files deleted. If anything fails on the way, the old report is put back.

Validate with :func:`check_output_folder` before any work; write with :func:`begin` and
:func:`publish`.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from .errors import OutputFolderError

__all__ = ["MARKER", "STAGING_MARKER", "check_output_folder", "is_report", "begin", "publish", "staging_path"]

#: The marker + manifest of a finished report.
MARKER = ".congeal-report.json"
#: The marker of a report being written (``.OUT.partial``).
STAGING_MARKER = ".congeal-staging"
_PROGRAM = "congeal"


def is_report(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a report this program wrote (it holds a readable :data:`MARKER`).

    The marker must be JSON whose ``"program"`` is this program's; a missing, unreadable or foreign
    marker (or a missing folder) gives False. No chapter teaches it; ``congeal align`` (Chapter 7,
    "Align your own photos") relies on it to replace only its own reports.

    Args:
        folder: the folder to look at.

    Returns:
        True if the marker says this program wrote the folder.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from congealing.report_folder import MARKER, is_report
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     before = is_report(tmp)
        ...     _ = (Path(tmp) / MARKER).write_text(json.dumps({"program": "congeal"}))
        ...     print(before, is_report(tmp))
        False True
    """
    marker = Path(folder) / MARKER
    try:
        return json.loads(marker.read_text()).get("program") == _PROGRAM
    except (OSError, ValueError, AttributeError):
        return False


def staging_path(out: str | os.PathLike) -> Path:
    """Where the report for ``out`` is written before it is complete: ``.OUT.partial`` beside it.

    Args:
        out: the report folder.

    Returns:
        the staging folder's path (nothing is created).

    Example:
        >>> from congealing.report_folder import staging_path
        >>> staging_path("runs/birds").as_posix()
        'runs/.birds.partial'
    """
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def _old_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out: str | os.PathLike, inputs: str | os.PathLike | None = None) -> Path:
    """Check, before any work, that a report can be written to ``out``; return it as an absolute path.

    Leftovers of an earlier run (``.OUT.partial``, ``.OUT.old``) must be this program's; a
    ``.OUT.old`` (a run stopped while replacing a report) is refused so the user can recover it.
    ``congeal align`` runs it before anything else (Chapter 7, "Align your own photos").

    Args:
        out: the report folder asked for (new, empty, or an earlier report of this program).
        inputs: the folder of input images, which can never be the report folder.

    Returns:
        ``out`` as an absolute path (symbolic links not resolved).

    Raises:
        OutputFolderError: ``out`` is a file, a symbolic link, a folder holding files the program did
            not write (the input folder among them), or a place the user cannot write to; or a leftover
            staging or old folder is in the way.
    """
    given = str(out)
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        raise OutputFolderError(f"--out {given} is a symbolic link; give the folder it points to, or a new folder")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {given} is a file, not a folder; choose a new folder for the report")
    if inputs is not None and out.exists() and Path(inputs).exists() and out.samefile(inputs):
        raise OutputFolderError(f"--out {given} is the input folder; choose a new folder for the report, e.g. {out.name}_aligned")
    if out.exists() and any(out.iterdir()) and not is_report(out):
        raise OutputFolderError(
            f"--out {given} already holds files that congeal did not write; choose a new or empty folder (nothing was changed)"
        )
    for leftover in (staging_path(out), _old_path(out)):
        if leftover.exists() and not (leftover / STAGING_MARKER).exists() and not is_report(leftover):
            raise OutputFolderError(f"{leftover} is in the way and was not written by congeal; move it, or choose another --out")
    if _old_path(out).exists():
        raise OutputFolderError(
            f"{_old_path(out)} holds the previous report from a run that stopped while replacing it; "
            f"check it for files you want, remove it, and run again"
        )
    writable = _nearest_existing(out.parent)
    if not os.access(writable, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        raise OutputFolderError(f"--out {given}: {writable if not out.exists() else out} is not writable; choose a folder you can write to")
    return out


def begin(out: str | os.PathLike) -> Path:
    """Create the empty staging folder for ``out`` (removing a leftover one of this program's) and return it.

    The folder (:func:`staging_path`) is marked with :data:`STAGING_MARKER` until :func:`publish`.

    Args:
        out: the report folder the staging folder is for.

    Returns:
        the new, empty (but for its marker) staging folder.

    Raises:
        OutputFolderError: a staging folder this program did not write is in the way.
    """
    staging = staging_path(out)
    if staging.exists():
        if not (staging / STAGING_MARKER).exists() and not is_report(staging):
            raise OutputFolderError(f"{staging} is in the way and was not written by congeal; move it, or choose another --out")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).write_text("a congeal report being written; it becomes the report when complete\n")
    return staging


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def publish(staging: Path, out: str | os.PathLike) -> Path:
    """Make the complete report in ``staging`` (from :func:`begin`) the folder ``out``.

    Writes the manifest (:data:`MARKER`, every file of the report), then renames ``staging`` to
    ``out``; fills ``out`` if it is an empty folder; or replaces an earlier report as described in the
    module docstring (the user's own files move into the new report; ones whose names clash stay in
    ``.OUT.old``, with a warning).

    Args:
        staging: the staging folder, complete.
        out: the report folder.

    Returns:
        ``out`` as a path.

    Raises:
        OutputFolderError: ``out`` now holds files this program did not write (the new report is left
            in ``staging``).
        OSError: a rename failed (when replacing, the old report is put back first).
    """
    out = Path(out)
    (staging / STAGING_MARKER).unlink()
    manifest = [f for f in _files(staging)]
    (staging / MARKER).write_text(json.dumps({"program": _PROGRAM, "format": 1, "files": manifest}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        os.rename(staging, out)
        return out
    if not any(out.iterdir()):  # an empty folder the user made (maybe the working folder): fill it
        for entry in staging.iterdir():
            os.rename(entry, out / entry.name)
        staging.rmdir()
        return out
    if not is_report(out):
        raise OutputFolderError(f"{out} now holds files that congeal did not write; the new report is left in {staging}")
    old_manifest = set(json.loads((out / MARKER).read_text()).get("files", [])) | {MARKER}
    old = _old_path(out)
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)  # the old report is whole again
        raise
    kept = []
    for relative in _files(old):  # the user's own files move into the new report
        if relative in old_manifest:
            continue
        target = out / relative
        if target.exists():
            kept.append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old / relative, target)
    for relative in sorted(old_manifest - {MARKER}) + [MARKER]:
        path = old / relative
        if path.is_file() or path.is_symlink():
            path.unlink()
    for folder in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(old.iterdir()):
        old.rmdir()
    else:
        warnings.warn(f"the new report is in {out}; your own files {', '.join(kept[:5])} clash with its names and were kept in {old}")
    return out
