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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "MODES", "ModeConfig", "cache_dir", "get_mode", "pick", "seed_everything", "get_device", "run_label",
    "provenance", "run_recorded", "start_recorded",
]

#: The two run modes :func:`get_mode` accepts (``$CONGEAL_MODE``, ``--mode``).
MODES = ("quick", "full")


def cache_dir() -> Path:
    """The project cache: ``$CONGEAL_CACHE`` or ``~/.cache/congealing``.

    Nothing is created here. No chapter calls it; downloaded data (:mod:`congealing.data`), cached
    descriptors (:func:`congealing.features.extract_descriptors`) and :func:`run_recorded`'s records
    live under it.

    Returns:
        the cache folder as a :class:`~pathlib.Path` (it may not exist yet).

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"CONGEAL_CACHE": "/tmp/congeal-cache"}):
        ...     print(cache_dir())
        /tmp/congeal-cache
    """
    return Path(os.environ.get("CONGEAL_CACHE") or Path.home() / ".cache" / "congealing")


def get_mode(mode: str | None = None) -> str:
    """Return the run mode: ``mode`` if given, else ``$CONGEAL_MODE``, else ``"quick"``.

    Case and surrounding spaces are ignored. Every chapter's setup cell calls it (``MODE =
    runtime.get_mode()``), and so does the ``congeal`` command for ``--mode``.

    Args:
        mode: ``"quick"`` or ``"full"``, or None to read the environment.

    Returns:
        ``"quick"`` or ``"full"``.

    Raises:
        UsageError: the chosen mode is neither (a :class:`ValueError`).

    Example:
        >>> get_mode(" Full ")
        'full'
    """
    chosen = (mode or os.environ.get("CONGEAL_MODE") or "quick").strip().lower()
    if chosen not in MODES:
        raise UsageError(f"unknown mode {chosen!r}: --mode and CONGEAL_MODE take quick or full")
    return chosen


def pick(options: dict, mode: str | None = None):
    """Select the value for the current mode from ``{"quick": ..., "full": ...}``.

    Every chapter sizes its runs with it, e.g. Chapter 1, "1.6 A tiny spatial transformer".

    Args:
        options: ``{"quick": value, "full": value}``.
        mode: the mode (None: :func:`get_mode`'s choice).

    Returns:
        ``options[mode]``.

    Raises:
        UsageError: the mode is unknown.
        KeyError: ``options`` has no entry for the mode.

    Example:
        >>> pick({"quick": 10, "full": 8000}, mode="full")
        8000
    """
    return options[get_mode(mode)]


class ModeConfig:
    """The shared ``for_mode`` of every method's frozen dataclass config.

    The dataclass defaults are the published (full-mode) settings; the class attribute ``QUICK``
    lists quick mode's changes (a class with derived quick settings overrides :meth:`quick`). Shown
    in Chapter 4, "The atlas and the two mappings" (``ModeConfig.for_mode``); every method's config
    derives from it (classical, Neural Congealing, SpaceJAM, 3-D congealing).

    Example:
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
        """The quick-mode config: the defaults with ``QUICK`` applied.

        Returns:
            a new config instance.

        Raises:
            TypeError: ``QUICK`` names a field the dataclass does not have.
        """
        return replace(cls(), **cls.QUICK)

    @classmethod
    def for_mode(cls, mode: str | None = None, **overrides):
        """The config of ``mode`` (None: :func:`get_mode`), with ``overrides`` applied last.

        Args:
            mode: ``"quick"`` or ``"full"``, or None for :func:`get_mode`'s choice.
            **overrides: field values that replace the mode's.

        Returns:
            a new config instance: :meth:`quick` in quick mode, the defaults in full mode, then ``overrides``.

        Raises:
            UsageError: the mode is unknown.
            TypeError: an override names a field the dataclass does not have.
        """
        base = cls.quick() if get_mode(mode) == "quick" else cls()
        return replace(base, **overrides)

    def plain(self) -> dict:
        """The config as a dict of plain numbers, strings and lists (tuples become lists).

        What goes into JSON (``summary.json`` of a report) and checkpoints (the fingerprint and
        config a resumed run is checked against); ``json.loads(json.dumps(config.plain()))`` gives
        the same dict back.

        Returns:
            ``{field name: value}`` for every dataclass field, in field order.

        Example:
            >>> from dataclasses import dataclass
            >>> @dataclass(frozen=True)
            ... class Demo(ModeConfig):
            ...     sizes: tuple = (32, 8)
            ...     rate: float = 1e-3
            >>> Demo().plain()
            {'sizes': [32, 8], 'rate': 0.001}
        """
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way.

    The setup cells of Chapters 1-6 call it (e.g. ``runtime.seed_everything(0)`` in Chapter 1's).

    Args:
        seed: the seed for ``random``, ``numpy.random``, torch's global generator and the new one.

    Returns:
        a fresh CPU :class:`torch.Generator` seeded with ``seed``.

    Example:
        >>> generator = seed_everything(0)
        >>> torch.equal(torch.rand(2, generator=generator), torch.rand(2))   # both start from seed 0
        True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(preference: str | None = None) -> torch.device:
    """The device to compute on.

    ``preference`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``), else
    ``$CONGEAL_DEVICE``, else ``"auto"``: the best available (CUDA, then Apple MPS, then CPU). Used in
    the setup cells of Chapter 2 and Chapter 5, and by the ``congeal`` command's ``--device``.

    Args:
        preference: the device asked for, or None to read the environment.

    Returns:
        the :class:`torch.device`.

    Raises:
        UsageError: the device is unknown, unsupported, or not present on this machine.

    Example:
        >>> get_device("cpu")
        device(type='cpu')
    """
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
    """A short provenance string for figure titles, e.g. ``"quick mode · efficientnet_lite0 · cpu"``.

    Every chapter's setup cell builds its ``LABEL`` with it.

    Args:
        mode: the mode (None: :func:`get_mode`'s choice).
        backbone: the backbone's name, left out when None or empty.
        device: the device (None: :func:`get_device`'s choice).

    Returns:
        the parts joined by ``" · "``.

    Raises:
        UsageError: the mode or (when ``device`` is None) the device is unknown.

    Example:
        >>> run_label("quick", "efficientnet_lite0", "cpu")
        'quick mode · efficientnet_lite0 · cpu'
    """
    parts = [f"{get_mode(mode)} mode"]
    if backbone:
        parts.append(str(backbone))
    parts.append(str(device if device is not None else get_device()))
    return " · ".join(parts)


def provenance(command: str, mode: str | None = None, device=None) -> dict:
    """Where a result came from, stored beside it (``results/*.json``).

    The command, the git commit of the library (with ``+dirty`` if the working tree had changes;
    "unknown" outside a git checkout), mode, device (a CUDA GPU by name), torch version, CPU threads
    and the date (UTC). No chapter calls it; the ``congeal eval --json`` record carries it
    (:mod:`congealing.cli`), and Chapter 7, "Published numbers", prints it from stored records.

    Args:
        command: the command line that produced the result.
        mode: the mode (None: :func:`get_mode`'s choice).
        device: the device (None: :func:`get_device`'s choice).

    Returns:
        a dict with keys ``command``, ``commit``, ``mode``, ``device``, ``torch``, ``threads``, ``date``.

    Raises:
        UsageError: the mode or (when ``device`` is None) the device is unknown.

    Example:
        >>> sorted(provenance("congeal info", "quick", "cpu"))
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


def run_recorded(argv: list[str], folder=None, threads: int | None = None) -> dict:
    """Run ``congeal ARGV --json FILE`` in a fresh process and return its JSON record.

    A fresh process makes the record's wall time and peak memory the method's own. The record is
    kept in ``folder`` (default ``$CONGEAL_CACHE/results``) under a name made from the command, and
    reused when the same command already ran at the same *clean* git commit (a notebook executed
    again, by ``make book`` after ``make notebooks``, then trains each method once). A record from a dirty
    tree or another commit is recomputed. Shown in Chapter 7's introduction ("Chapter 7: Every method
    side by side") and used, through :func:`start_recorded`, for its "CUB-200-2011" and "lego: when
    the viewpoint changes" tables.

    Args:
        argv: the ``congeal`` arguments, e.g. ``["eval", "--dataset", "cub", "--method", "nn"]``.
        folder: where records are kept (created if missing); None: ``cache_dir() / "results"``.
        threads: the process's CPU threads (``OMP_NUM_THREADS``); None: what the environment says.

    Returns:
        the record the command wrote with ``--json`` (a dict, with its ``provenance``).

    Raises:
        RuntimeError: the command failed; the message holds the end of its stderr.
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
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads is not None else None
    completed = subprocess.run([sys.executable, "-m", "congealing.cli", *argv, "--json", str(path)], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"congeal {' '.join(argv)} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(path.read_text())


def start_recorded(commands: dict[str, list[str]], jobs: int = 2, folder=None) -> dict[str, Future]:
    """Start :func:`run_recorded` for several commands, ``jobs`` processes at a time, in the background.

    The commands start in the order given (put the longest first, so the processes finish close
    together), each in its own process, so on a machine with ``jobs`` cores they run side by side.
    Each process gets ``$OMP_NUM_THREADS`` threads if that is set, else an equal share of the cores:
    ``jobs`` processes never ask for more threads than the machine has. Chapter 7 starts its CUB and
    lego runs this way ("CUB-200-2011"), each class of the two learned methods in its own process,
    so both cores stay busy until the last run ends.

    Args:
        commands: a name for each run and its ``congeal`` arguments (see :func:`run_recorded`).
        jobs: how many commands run at once (at least 1).
        folder: where records are kept; None: ``cache_dir() / "results"``.

    Returns:
        a :class:`concurrent.futures.Future` per name; its ``result()`` waits for that run's record
        and raises its :class:`RuntimeError` if the command failed.

    Raises:
        ValueError: ``jobs`` is below 1.

    Example:
        >>> runs = start_recorded({}, jobs=2)
        >>> runs
        {}
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else max(1, (os.cpu_count() or 1) // jobs)
    pool = ThreadPoolExecutor(max_workers=jobs)  # threads that wait on processes: the work is in the processes
    runs = {name: pool.submit(run_recorded, argv, folder, threads) for name, argv in commands.items()}
    pool.shutdown(wait=False)  # no new work; the submitted runs go on
    return runs
