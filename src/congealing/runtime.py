"""Run settings shared by every chapter: the quick/full switch, seeding and the device.

There is one switch for the whole book: the environment variable ``CONGEAL_MODE`` (``quick``, the
default, or ``full``). Notebooks, benchmarks and the ``congeal`` CLI all read it through
:func:`get_mode`; the CLI's ``--mode`` flag overrides it. Quick mode is sized for 2 CPU cores and a
few minutes per notebook; full mode uses the papers' settings and expects a GPU.

>>> get_mode("full")
'full'
>>> pick({"quick": 10, "full": 8000}, mode="quick")
10
"""
from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "MODES", "ModeConfig", "cache_dir", "get_mode", "pick", "seed_everything", "get_device", "run_label",
    "provenance", "run_recorded",
]

MODES = ("quick", "full")


def cache_dir() -> Path:
    """The project cache: ``$CONGEAL_CACHE`` or ``~/.cache/congealing``."""
    return Path(os.environ.get("CONGEAL_CACHE") or Path.home() / ".cache" / "congealing")


def get_mode(mode: str | None = None) -> str:
    """Return the run mode: ``mode`` if given, else ``$CONGEAL_MODE``, else ``"quick"``."""
    chosen = (mode or os.environ.get("CONGEAL_MODE") or "quick").strip().lower()
    if chosen not in MODES:
        raise UsageError(f"unknown mode {chosen!r}: --mode and CONGEAL_MODE take quick or full")
    return chosen


def pick(options: dict, mode: str | None = None):
    """Select the value for the current mode from ``{"quick": ..., "full": ...}``."""
    return options[get_mode(mode)]


class ModeConfig:
    """The shared ``for_mode`` of every method's frozen dataclass config (Chapter 7, "One protocol").

    The dataclass defaults are the published (full-mode) settings; the class attribute ``QUICK``
    lists quick mode's changes (a class with derived quick settings overrides :meth:`quick`).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo(ModeConfig):
    ...     QUICK: ClassVar[dict] = {"steps": 10}
    ...     steps: int = 8000
    ...     seed: int = 0
    >>> Demo.for_mode("quick"), Demo.for_mode("full", seed=3)
    (Demo(steps=10, seed=0), Demo(steps=8000, seed=3))
    """

    QUICK: ClassVar[dict] = {}

    @classmethod
    def quick(cls):
        """The quick-mode config: the defaults with ``QUICK`` applied."""
        return replace(cls(), **cls.QUICK)

    @classmethod
    def for_mode(cls, mode: str | None = None, **overrides):
        """The config of ``mode`` (None: :func:`get_mode`), with ``overrides`` applied last."""
        base = cls.quick() if get_mode(mode) == "quick" else cls()
        return replace(base, **overrides)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(preference: str | None = None) -> torch.device:
    """The device to compute on: ``preference`` (``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"``),
    else ``$CONGEAL_DEVICE``, else the best available (CUDA, then Apple MPS, then CPU)."""
    choice = (preference or os.environ.get("CONGEAL_DEVICE") or "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise UsageError(f"unknown device {choice!r} (--device or CONGEAL_DEVICE); use cpu, cuda, cuda:N, mps or auto") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {choice!r} is not supported (--device or CONGEAL_DEVICE); use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {choice!r} was asked for, but this PyTorch sees no CUDA GPU; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {choice!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UsageError(f"device {choice!r} was asked for, but Apple's MPS is not available here; use --device cpu or auto")
    return device


def run_label(mode: str | None = None, backbone: str | None = None, device=None) -> str:
    """A short provenance string for figure titles, e.g. ``"quick mode · efficientnet_lite0 · cpu"``."""
    parts = [f"{get_mode(mode)} mode"]
    if backbone:
        parts.append(str(backbone))
    parts.append(str(device if device is not None else get_device()))
    return " · ".join(parts)


def provenance(command: str, mode: str | None = None, device=None) -> dict:
    """Where a result came from, stored beside it (``results/*.json``): the command, the git commit
    of the library (with ``+dirty`` if the working tree had changes), mode, device, torch version,
    CPU threads and the date (UTC).

    >>> sorted(provenance("congeal info"))
    ['command', 'commit', 'date', 'device', 'mode', 'threads', 'torch']
    """
    import datetime
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    device = device if device is not None else get_device()
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else str(device)
    return {
        "command": command, "commit": commit, "mode": get_mode(mode), "device": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_recorded(argv: list[str], folder=None) -> dict:
    """Run ``congeal ARGV --json FILE`` in a fresh process and return its JSON record.

    A fresh process makes the record's wall time and peak memory the method's own. The record is
    kept in ``folder`` (default ``$CONGEAL_CACHE/results``) under a name made from the command, and
    reused when the same command already ran at the same *clean* git commit (a notebook executed
    twice, by nbval and by the book build, then trains each method once). A record from a dirty
    tree or another commit is recomputed.
    """
    import hashlib
    import json
    import subprocess
    import sys

    folder = Path(folder) if folder is not None else cache_dir() / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha1(" ".join(argv).encode()).hexdigest()[:16] + ".json")
    commit = provenance("").get("commit", "")
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("provenance", {}).get("commit") == commit and not commit.endswith("+dirty") and "unknown" not in commit:
            return record
    completed = subprocess.run([sys.executable, "-m", "congealing.cli", *argv, "--json", str(path)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"congeal {' '.join(argv)} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(path.read_text())
