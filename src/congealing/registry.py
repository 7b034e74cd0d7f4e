"""The registry of 2-D methods that ``congeal align``, ``congeal eval`` and Chapter 7 all read
(Chapter 7, "One protocol, every method").

Every entry is a :class:`Method`: its name, its module's ``fit`` (the common protocol of
:mod:`congealing.alignment`), its frozen config class (``for_mode(mode, **overrides)``) and what the
applications need to know about it. Adding a method is one module with a config and a ``fit``, and
one entry here (CONTRIBUTING.md, "How to add a method").

>>> sorted(METHODS)
['entropy', 'ic-lsq', 'lsq', 'neural', 'spacejam']
>>> get("lsq").config.for_mode("quick").iterations
30
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import classical, neural, spacejam
from .alignment import Alignment
from .errors import UsageError

__all__ = ["Method", "METHODS", "get", "names"]


@dataclass(frozen=True)
class Method:
    """One aligner.

    Attributes:
        name: what ``--method`` takes.
        fit: ``fit(images, config, *, masks=None, backbone=None, device=None, callback=None) -> Alignment``.
        config: the config class; ``config.for_mode(mode, **overrides)`` gives its settings.
        chapter: where the book teaches it.
        features: True if it aligns a backbone's descriptors (and uses object masks); False if it
            aligns pixels.
        resumable: True if ``fit`` takes ``checkpoint``, ``resume`` and ``fingerprint``.
        objective: what its history's loss measures, for the report.
        loss_key: the key of that loss in each ``Alignment.history`` entry.
    """

    name: str
    fit: Callable[..., Alignment]
    config: type
    chapter: str
    features: bool
    resumable: bool
    objective: str
    loss_key: str


METHODS: dict[str, Method] = {
    "entropy": Method("entropy", classical.fit, classical.EntropyConfig, "Chapter 2", False, False,
                      "the total pixel-stack entropy (bits)", "objective"),
    "lsq": Method("lsq", classical.fit, classical.LSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective"),
    "ic-lsq": Method("ic-lsq", classical.fit, classical.ICLSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective"),
    "neural": Method("neural", neural.fit, neural.NeuralCongealingConfig, "Chapter 4", True, True,
                     "the keys cosine loss (1 - cosine similarity of aligned descriptors and atlas)", "keys_cos"),
    "spacejam": Method("spacejam", spacejam.fit, spacejam.SpaceJAMConfig, "Chapter 5", True, True,
                       "the training loss (mean over the epoch)", "loss"),
}


def names(features: bool | None = None) -> tuple[str, ...]:
    """The registered names (only those that do / do not use features, if ``features`` is given)."""
    return tuple(name for name, method in METHODS.items() if features is None or method.features == features)


def get(name: str) -> Method:
    """The :class:`Method` called ``name``; :class:`congealing.errors.UsageError` naming the choices otherwise."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
