"""Training checkpoints that resume only what they were made for (``congeal align --resume``).

A checkpoint is a plain dict of tensors, numbers and strings, written atomically (a temporary file
renamed into place) and read with ``torch.load(..., weights_only=True)``, so loading one never runs
code. Each carries a *fingerprint*: what it was trained on (for a folder of images, every file's
name, size and content hash, see :func:`congealing.data.load_image_folder`) and the config it was
trained with. :func:`load` refuses a file that is not such a checkpoint, and :func:`check_fingerprint`
refuses to resume from one made for other images or settings, naming what differs.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "run.pt"
>>> save({"epoch": 3}, path, fingerprint={"files": [["a.png", 10, "ab"]], "config": {"lr": 0.1}})
>>> state = load(path)
>>> state["epoch"]
3
>>> check_fingerprint(state, {"files": [["a.png", 10, "ab"]], "config": {"lr": 0.1}}, path)
>>> check_fingerprint(state, {"files": [["a.png", 10, "ab"]], "config": {"lr": 0.2}}, path)
Traceback (most recent call last):
...
congealing.errors.CheckpointError: run.pt was trained with other settings (lr: 0.1 there, 0.2 now); run without --resume to start again, or use the same settings
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import write_atomically

__all__ = ["save", "load", "check_fingerprint", "describe_difference"]

FINGERPRINT_KEY = "fingerprint"


def save(state: dict, path: str | os.PathLike, fingerprint: dict | None = None) -> None:
    """Write ``state`` (plus ``fingerprint`` as JSON text) to ``path`` atomically.

    ``torch.save`` into a hidden file beside ``path``, then one rename
    (:func:`congealing.files.write_atomically`). The fingerprint is stored under the key
    ``"fingerprint"``, as JSON with sorted keys. No chapter calls it; ``neural.fit`` and
    ``spacejam.fit`` save their checkpoints with it (Chapter 4, "Training": "the rest of ``fit`` is
    checkpoints"), which ``congeal align --resume`` continues (Chapter 7, "Align your own photos",
    section "Align").

    Args:
        state: tensors, numbers, strings, and lists/dicts of them (nothing that needs code to load).
        path: the checkpoint file; its folder is created if needed.
        fingerprint: JSON-ready description of the inputs and config, or None.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "runs" / "run.pt"
        ...     save({"epoch": 3, "weights": torch.zeros(2)}, path, fingerprint={"config": {"lr": 0.1}})
        ...     print(load(path)["fingerprint"])
        {"config": {"lr": 0.1}}
    """
    state = dict(state)
    if fingerprint is not None:
        state[FINGERPRINT_KEY] = json.dumps(fingerprint, sort_keys=True)
    write_atomically(path, lambda partial: torch.save(state, partial))


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save` (``weights_only=True``: data only, never code).

    Used where training resumes: ``neural.fit``, ``spacejam.fit`` and the ``congeal align --resume``
    check (:mod:`congealing.cli`; Chapter 7, "Align your own photos", section "Align").

    Args:
        path: the checkpoint file.
        map_location: ``torch.load``'s ``map_location`` (default: everything onto the CPU).

    Returns:
        the saved dict (with its ``"fingerprint"`` JSON text if one was saved).

    Raises:
        CheckpointError: the file is missing, damaged, or holds something other than a checkpoint dict.

    Example:
        >>> load("/nonexistent/run.pt")
        Traceback (most recent call last):
        ...
        congealing.errors.CheckpointError: /nonexistent/run.pt does not exist; run without --resume to start a new training run
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; run without --resume to start a new training run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a congealing checkpoint, or it is damaged ({type(error).__name__}); "
            "delete it and run without --resume to start again"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a congealing checkpoint (it holds a {type(state).__name__}); delete it and run without --resume")
    return state


def describe_difference(stored: dict, current: dict) -> str:
    """What differs between two fingerprints, in words (empty if nothing does).

    Files are compared by name (changed, new, missing; at most five names each), then every other
    entry except ``config``, then the ``config`` settings one by one. :func:`check_fingerprint`
    builds its error messages from it; no chapter calls it.

    Args:
        stored: the fingerprint saved in the checkpoint (``{"files": [[name, size, hash], ...],
            "config": {...}, ...}``).
        current: the fingerprint of the run that wants to resume, same layout.

    Returns:
        the differences joined by ``"; "``, or ``""``.

    Example:
        >>> describe_difference({"files": [["a.png", 1, "x"]]}, {"files": [["a.png", 1, "y"], ["b.png", 2, "z"]]})
        'other images (1 there, 2 now; changed: a.png; new: b.png)'
        >>> describe_difference({"config": {"lr": 0.1}}, {"config": {"lr": 0.2}})
        'settings (lr: 0.1 there, 0.2 now)'
    """
    parts = []
    old_files = {name: rest for name, *rest in stored.get("files", [])}
    new_files = {name: rest for name, *rest in current.get("files", [])}
    if old_files != new_files:
        changed = sorted(n for n in old_files.keys() & new_files.keys() if old_files[n] != new_files[n])
        details = [f"{len(old_files)} there, {len(new_files)} now"]
        for label, names in (("changed", changed), ("new", sorted(new_files.keys() - old_files.keys())), ("missing", sorted(old_files.keys() - new_files.keys()))):
            if names:
                details.append(f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        parts.append(f"other images ({'; '.join(details)})")
    for key in sorted((stored.keys() | current.keys()) - {"files", "config"}):
        if stored.get(key) != current.get(key):
            parts.append(f"{key} {stored.get(key)} there, {current.get(key)} now")
    old_config, new_config = stored.get("config", {}), current.get("config", {})
    settings = [f"{k}: {old_config.get(k)} there, {new_config.get(k)} now" for k in sorted(old_config.keys() | new_config.keys()) if old_config.get(k) != new_config.get(k)]
    if settings:
        parts.append("settings (" + "; ".join(settings) + ")")
    return "; ".join(parts)


def check_fingerprint(state: dict, fingerprint: dict | None, path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``state`` was saved with ``fingerprint``.

    With ``keys``, only those entries are compared (e.g. the input files, before the config is
    known). A checkpoint saved without a fingerprint cannot show what it was made from and is
    refused when a fingerprint is expected. The message says whether the settings or the images
    differ (:func:`describe_difference`). Used where training resumes: ``neural.fit``,
    ``spacejam.fit`` and ``congeal align --resume`` (Chapter 7, "Align your own photos", section
    "Align").

    Args:
        state: a checkpoint dict from :func:`load`.
        fingerprint: what the current run would save, or None to accept any checkpoint.
        path: the checkpoint's path; its file name goes into the message.
        keys: the fingerprint entries to compare, or None for all of them.

    Returns:
        None when the fingerprints agree (or ``fingerprint`` is None).

    Raises:
        CheckpointError: the checkpoint has no fingerprint, or was made from other images or settings.

    Example:
        >>> check_fingerprint({"epoch": 1}, {"config": {}}, "run.pt")
        Traceback (most recent call last):
        ...
        congealing.errors.CheckpointError: run.pt does not record which images and settings it was trained on; run without --resume to start again
    """
    if fingerprint is None:
        return
    name = Path(path).name
    if FINGERPRINT_KEY not in state:
        raise CheckpointError(f"{name} does not record which images and settings it was trained on; run without --resume to start again")
    stored = json.loads(state[FINGERPRINT_KEY])
    current = json.loads(json.dumps(fingerprint, sort_keys=True))  # the same JSON round trip as the stored copy
    if keys is not None:
        stored, current = {k: stored.get(k) for k in keys}, {k: current.get(k) for k in keys}
    if stored == current:
        return
    if stored.get("files") == current.get("files") and set(stored) == set(current) and all(stored[k] == current[k] for k in stored if k != "config"):
        old, new = stored.get("config", {}), current.get("config", {})
        diff = ", ".join(f"{k}: {old.get(k)} there, {new.get(k)} now" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
        raise CheckpointError(f"{name} was trained with other settings ({diff}); run without --resume to start again, or use the same settings")
    raise CheckpointError(f"{name} was trained on {describe_difference(stored, current)}; run without --resume to start again, or give the same folder")
