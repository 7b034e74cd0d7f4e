"""The registry of methods that ``congeal align``, ``congeal eval`` and Chapter 7 all read
(Chapter 7, "One protocol, every method"): the 2-D aligners and 3-D congealing.

Every entry is a :class:`Method`: its name, its module's ``fit`` (the common protocol of
:mod:`congealing.alignment`), its frozen config class (``for_mode(mode, **overrides)``) and what the
applications need to know about it. Adding a method is one module with a config and a ``fit``, and
one entry here (CONTRIBUTING.md, "How to add a method").

>>> sorted(METHODS)
['congeal3d', 'entropy', 'ic-lsq', 'lsq', 'neural', 'spacejam']
>>> names(needs_shape=True)
('congeal3d',)
>>> get("lsq").config.for_mode("quick").iterations
30
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import classical, congeal3d, neural, spacejam
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
        needs_shape: True if ``fit`` also takes a canonical 3-D ``shape`` (3-D congealing: ``congeal
            align`` needs ``--shape`` or ``--cameras``, and its alignment maps points only).
    """

    name: str
    fit: Callable[..., Alignment]
    config: type
    chapter: str
    features: bool
    resumable: bool
    objective: str
    loss_key: str
    needs_shape: bool = False


METHODS: dict[str, Method] = {
    "entropy": Method("entropy", classical.fit, classical.EntropyConfig, "Chapter 2", False, False,
                      "the total pixel-stack entropy (bits)", "objective"),
    "lsq": Method("lsq", classical.fit, classical.LSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective"),
    "ic-lsq": Method("ic-lsq", classical.fit, classical.ICLSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective"),
    "neural": Method("neural", neural.fit, neural.NeuralCongealingConfig, "Chapter 4", True, True,
                     "the keys cosine loss (1 - cosine similarity of aligned descriptors and atlas)", "keys_cos"),
    "spacejam": Method("spacejam", spacejam.fit, spacejam.SpaceJAMConfig, "Chapter 5", True, True,
                       "the training loss (mean over the epoch)", "loss"),
    "congeal3d": Method("congeal3d", congeal3d.fit, congeal3d.Congeal3DConfig, "Chapter 6", True, False,
                        "1 - soft IoU of the rendered silhouette and the mask (pose refinement)", "loss", needs_shape=True),
}


def names(features: bool | None = None, needs_shape: bool | None = None) -> tuple[str, ...]:
    """The registered names, in registry order, filtered by what is given.

    Args:
        features: True / False: only the methods that do / do not align a backbone's descriptors.
        needs_shape: True / False: only the methods that do / do not need a canonical 3-D shape
            (False: the 2-D aligners).

    Returns:
        the names.

    Example:
        >>> names(features=False)
        ('entropy', 'lsq', 'ic-lsq')
        >>> names(needs_shape=False)
        ('entropy', 'lsq', 'ic-lsq', 'neural', 'spacejam')
    """
    return tuple(name for name, method in METHODS.items()
                 if (features is None or method.features == features) and (needs_shape is None or method.needs_shape == needs_shape))


def get(name: str) -> Method:
    """The :class:`Method` called ``name``; :class:`congealing.errors.UsageError` naming the choices otherwise."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
