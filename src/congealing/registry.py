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

from dataclasses import dataclass, field
from typing import Callable

from . import classical, congeal3d, neural, spacejam
from .alignment import Alignment
from .errors import UsageError

__all__ = ["CubSetup", "Method", "METHODS", "get", "names"]


@dataclass(frozen=True)
class CubSetup:
    """How ``congeal eval --dataset cub`` prepares a CUB class for a method
    (:func:`congealing.evaluation.fit_on_cub`; the protocol: Chapter 3, "5. The yardstick: keypoint
    transfer and PCK").

    Attributes:
        inputs: ``"images"``: the class's 256-px crops ``(N, 3, 256, 256)``; ``"pca-maps"``: the
            top 3 principal components of the set's descriptors on a 64 x 64 grid, fitted on the
            masks' foreground, background set to 0 (Chapter 3), so pixel methods see what the
            learned methods see.
        masks: ``"boxes"``: the ground-truth boxes as masks (:func:`congealing.data.cub_box_masks`);
            ``"cosegment"``: Chapter 3's co-segmentation of the descriptors
            (:func:`congealing.features.cosegment`); None: the method finds its own (or uses none).
            ``"pca-maps"`` needs ``"cosegment"``.
        overrides: config fields set on top of ``for_mode(mode, seed=seed)``.
        quick_overrides: quick mode's changes to ``overrides`` (listed where the method's chapter
            and config docstring list its quick changes).

    Raises:
        ValueError: an unknown ``inputs`` or ``masks``, or PCA maps without co-segmentation.

    Example:
        >>> setup = CubSetup("images", "boxes", {"flips": True, "epochs": 9}, quick_overrides={"epochs": 3})
        >>> setup.overrides_for("full"), setup.overrides_for("quick")
        ({'flips': True, 'epochs': 9}, {'flips': True, 'epochs': 3})
    """

    inputs: str = "images"
    masks: str | None = None
    overrides: dict = field(default_factory=dict, hash=False)
    quick_overrides: dict = field(default_factory=dict, hash=False)

    def overrides_for(self, mode: str) -> dict:
        """The config fields set on top of ``for_mode(mode, seed=seed)`` in ``mode`` (``"quick"`` or ``"full"``)."""
        return {**self.overrides, **(self.quick_overrides if mode == "quick" else {})}

    def __post_init__(self):
        if self.inputs not in ("images", "pca-maps"):
            raise ValueError(f"CubSetup.inputs must be 'images' or 'pca-maps', got {self.inputs!r}")
        if self.masks not in ("boxes", "cosegment", None):
            raise ValueError(f"CubSetup.masks must be 'boxes', 'cosegment' or None, got {self.masks!r}")
        if self.inputs == "pca-maps" and self.masks != "cosegment":
            raise ValueError("CubSetup: PCA maps are fitted on the co-segmented foreground; use masks='cosegment'")


#: Classical congealing on CUB: least squares (affine) of the PCA-RGB descriptor maps. On CUB both
#: variants shrink or stretch some birds (the atlas-style objective has no guard against it); the
#: inverse-compositional one, which ignores pixels read from outside an image, suffers less.
_CLASSICAL_ON_CUB = CubSetup("pca-maps", "cosegment")
#: Neural Congealing on CUB: the ground-truth box as the saliency input (features.cosegment with
#: EfficientNet-Lite0 agrees poorly with the birds: IoU 0.32 with the box on class 1) and the
#: supplementary's evaluation settings (the official ``config_eval_sets``): horizontal flips (CUB
#: birds face both ways, which no similarity can undo; the transfer's ``flipped`` lets the
#: evaluator swap left/right parts), the gradual atlas and relaxed rigidity. Quick mode leaves the
#: gradual atlas off: with the quick STNs reading the keys, starting the atlas from one bird holds
#: class 1 near that bird's pose (PCK@0.1 about 29 over three seeds, against about 39 with every
#: image updating the atlas from the start; ``benchmarks/records/issue15_quick_cpu.json``, Chapter
#: 4, "Quick mode on whole classes").
_NEURAL_ON_CUB = CubSetup("images", "boxes", {"flips": True, "gradual_atlas": True, "relaxed_rigidity": True},
                          quick_overrides={"gradual_atlas": False})
#: SpaceJAM on CUB: the images, masks from its own co-segmentation (Chapter 3's), its defaults.
_SPACEJAM_ON_CUB = CubSetup("images", None)


@dataclass(frozen=True)
class Method:
    """One aligner: what the applications and the evaluations need to know about it (Chapter 7, "One
    protocol, every method").

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
        cub: how ``congeal eval --dataset cub`` prepares a class for it (:class:`CubSetup`), or
            None if it is not benchmarked on CUB.

    Example:
        >>> METHODS["neural"].cub.masks, METHODS["congeal3d"].cub is None
        ('boxes', True)
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
    cub: CubSetup | None = None

    def descriptor_side(self, mode: str) -> int | None:
        """The side the images are resized to before the backbone when this method reads descriptors in
        ``mode`` (None: the backbone's own side, or a method that reads none). A config that reads them at
        a side of its own says so with a ``backbone_input_size`` property (SpaceJAM's quick config: 384 px,
        Chapter 5, "The backbone's input side"); nearest neighbours compared with the method are run at
        the same side (Chapter 7).

        Example:
            >>> get("spacejam").descriptor_side("quick"), get("spacejam").descriptor_side("full"), get("neural").descriptor_side("quick")
            (384, None, None)
        """
        return getattr(self.config.for_mode(mode), "backbone_input_size", None)


METHODS: dict[str, Method] = {
    "entropy": Method("entropy", classical.fit, classical.EntropyConfig, "Chapter 2", False, False,
                      "the total pixel-stack entropy (bits)", "objective"),
    "lsq": Method("lsq", classical.fit, classical.LSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective",
                  cub=_CLASSICAL_ON_CUB),
    "ic-lsq": Method("ic-lsq", classical.fit, classical.ICLSQConfig, "Chapter 2", False, False, "the squared error to the mean image", "objective",
                     cub=_CLASSICAL_ON_CUB),
    "neural": Method("neural", neural.fit, neural.NeuralCongealingConfig, "Chapter 4", True, True,
                     "the keys cosine loss (1 - cosine similarity of aligned descriptors and atlas)", "keys_cos", cub=_NEURAL_ON_CUB),
    "spacejam": Method("spacejam", spacejam.fit, spacejam.SpaceJAMConfig, "Chapter 5", True, True,
                       "the training loss (mean over the epoch)", "loss", cub=_SPACEJAM_ON_CUB),
    "congeal3d": Method("congeal3d", congeal3d.fit, congeal3d.Congeal3DConfig, "Chapter 6", True, False,
                        "1 - soft IoU of the rendered silhouette and the mask (pose refinement)", "loss", needs_shape=True),
}


def names(features: bool | None = None, needs_shape: bool | None = None, on_cub: bool | None = None) -> tuple[str, ...]:
    """The registered names, in registry order, filtered by what is given.

    Args:
        features: True / False: only the methods that do / do not align a backbone's descriptors.
        needs_shape: True / False: only the methods that do / do not need a canonical 3-D shape
            (False: the 2-D aligners).
        on_cub: True / False: only the methods that are / are not benchmarked on CUB (``cub``).

    Returns:
        the names.

    Example:
        >>> names(features=False)
        ('entropy', 'lsq', 'ic-lsq')
        >>> names(needs_shape=False)
        ('entropy', 'lsq', 'ic-lsq', 'neural', 'spacejam')
        >>> names(on_cub=True)
        ('lsq', 'ic-lsq', 'neural', 'spacejam')
    """
    return tuple(name for name, method in METHODS.items()
                 if (features is None or method.features == features) and (needs_shape is None or method.needs_shape == needs_shape)
                 and (on_cub is None or (method.cub is not None) == on_cub))


def get(name: str) -> Method:
    """The :class:`Method` called ``name`` (``congeal align --method`` and ``congeal eval --method``
    look methods up here).

    Args:
        name: a registered name (:data:`METHODS`).

    Returns:
        its :class:`Method`.

    Raises:
        congealing.errors.UsageError: an unknown name; the message names the choices.

    Example:
        >>> get("congeal3d").needs_shape, get("spacejam").chapter
        (True, 'Chapter 5')
    """
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
