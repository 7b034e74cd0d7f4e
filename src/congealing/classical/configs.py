"""The settings and results of classical congealing: the three frozen configs (published defaults,
``for_mode``), :class:`CongealResult` and the image :class:`Funnel` (Chapter 2, "Classical congealing").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import runtime, warps

__all__ = ["AFFINE_DIM", "METHOD_NAMES", "EntropyConfig", "LSQConfig", "ICLSQConfig", "CONFIGS", "CongealResult", "Funnel"]


AFFINE_DIM = warps.GROUP_DIMS["affine"]
#: The three methods, as :func:`congeal` and :data:`CONFIGS` name them.
METHOD_NAMES = ("entropy", "lsq", "ic-lsq")


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class EntropyConfig(runtime.ModeConfig):
    """Settings of entropy congealing (:func:`congeal_entropy`, Learned-Miller 2006).

    A frozen :class:`congealing.runtime.ModeConfig`: ``EntropyConfig.for_mode()`` gives the settings of
    the current mode. Each iteration tries ``+step`` and ``-step`` for every parameter of every image
    and keeps the best of the three, as in the paper. Taught in Chapter 2, "The algorithm"; grey
    levels for natural images in "Not just digits: faces".

    Attributes:
        iterations: coordinate-descent sweeps (quick mode: 40 instead of 100; the set converges in
            about that many on MNIST).
        steps: step sizes of the six affine parameters: translation in *pixels* (converted to
            normalised units per image size), rotation in radians, log-scale, log-aspect and shear as
            plain numbers. The values are ours (about one pixel of motion at the digit's edge), not
            the paper's.
        shrink: factor applied to all steps whenever an iteration lowers the total entropy by less
            than ``stall`` (relative), so the last iterations refine instead of oscillating between
            two neighbours.
        stall: the relative entropy decrease below which the steps shrink.
        min_step_fraction: the steps never shrink below this fraction of their start.
        bins: grey levels of the pixel stack (:func:`soft_bins`); 2 is the paper's binary setting,
            natural greyscale images want more.
        prior: pseudo-count added to every bin, so no probability is zero.

    Example:
        >>> EntropyConfig.for_mode("quick").iterations, EntropyConfig().bins
        (40, 2)
    """

    QUICK: ClassVar[dict] = {"iterations": 40}
    iterations: int = 100
    steps: tuple = (1.0, 1.0, 0.04, 0.03, 0.03, 0.03)
    shrink: float = 0.5
    stall: float = 1e-3
    min_step_fraction: float = 0.05
    bins: int = 2
    prior: float = 1.0


@dataclass(frozen=True)
class LSQConfig(runtime.ModeConfig):
    """Settings of least-squares congealing (:func:`congeal_lsq`, Cox et al. 2008).

    A frozen :class:`congealing.runtime.ModeConfig`. Taught in Chapter 2, "Least-squares congealing";
    ``blur`` in its Exercises.

    Attributes:
        iterations: Gauss-Newton iterations (quick mode: 30 instead of 60).
        damping: the Levenberg term added to each image's Gauss-Newton Hessian, relative to its trace,
            so blank images (zero Hessian) stay where they are instead of producing NaN.
        max_step: bound on each update's parameter norm: one Gauss-Newton step far outside its basin
            would otherwise throw a digit out of the frame.
        blur: Gaussian sigma in pixels applied to the images that are fitted (residuals and
            Jacobians; the returned aligned set is not blurred); 0 is the paper's setting.

    Example:
        >>> LSQConfig.for_mode("quick").iterations, LSQConfig().iterations
        (30, 60)
    """

    QUICK: ClassVar[dict] = {"iterations": 30}
    iterations: int = 60
    damping: float = 1e-3
    max_step: float = 0.1
    blur: float = 0.0


@dataclass(frozen=True)
class ICLSQConfig(LSQConfig):
    """Settings of inverse-compositional least-squares congealing (:func:`congeal_ic_lsq`, Cox et al. 2009).

    Those of :class:`LSQConfig`, plus one. Taught in Chapter 2, "Inverse compositional".

    Attributes:
        mask_outside: leave out of an image's residual (and Hessian) the pixels its warp reads from
            *outside* that image, so a digit pushed half out of the frame is not dragged toward the
            empty border.

    Example:
        >>> ICLSQConfig().mask_outside, ICLSQConfig().damping == LSQConfig().damping
        (True, True)
    """

    mask_outside: bool = True


#: Each method's config type (:func:`method_of` reads a config's method from it).
CONFIGS = {"entropy": EntropyConfig, "lsq": LSQConfig, "ic-lsq": ICLSQConfig}


# ----------------------------------------------------------------------------- results


@dataclass
class CongealResult:
    """What :func:`congeal_entropy`, :func:`congeal_lsq` and :func:`congeal_ic_lsq` return.

    :func:`fit` wraps it in a :class:`congealing.alignment.Alignment` (``state["result"]``). Its
    history draws Chapter 2's curves and frames ("The algorithm", "Watching it happen", "Inverse
    compositional").

    Attributes:
        method: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.
        transforms: ``(N, 3, 3)`` input -> aligned frame.
        aligned: the aligned images ``(N, C, H, W)``.
        atlas: the mean aligned image ``(C, H, W)``.
        history: one entry per iteration *plus the start*: ``objective`` (the method's loss: total
            pixel-stack entropy in bits, or mean squared difference to the others), ``seconds``
            (wall time of that iteration, 0 for the start), ``atlas`` (list of ``(C, H, W)`` means)
            and ``transforms`` (list of ``(N, 3, 3)``), so any iteration's aligned stack can be
            rebuilt.
        config: the config the run used.
        funnel: the :class:`Funnel` of an entropy run, None for the least-squares methods.

    Example:
        >>> import torch
        >>> from congealing.classical import congeal_lsq
        >>> digits = torch.zeros(3, 1, 8, 8); digits[:, :, 2:6, 3:5] = 1.0
        >>> result = congeal_lsq(digits, LSQConfig(iterations=2))
        >>> result.iterations, len(result.history["transforms"]), result.funnel is None
        (2, 3, True)
    """

    method: str
    transforms: torch.Tensor
    aligned: torch.Tensor
    atlas: torch.Tensor
    history: dict
    config: object
    funnel: "Funnel | None" = None

    @property
    def iterations(self) -> int:
        """The number of iterations run (the history's length less the start)."""
        return len(self.history["objective"]) - 1

    @property
    def seconds_per_iteration(self) -> float:
        """Mean wall time of one iteration in seconds (the start excluded)."""
        return sum(self.history["seconds"]) / max(self.iterations, 1)


@dataclass
class Funnel:
    """The sequence of pixel-stack distributions of an entropy congealing run (the "image funnel").

    :func:`funnel_align` replays it on new images. Taught in Chapter 2, "The image funnel".

    Attributes:
        log_probs: ``(T, K, H, W)`` log-probability of each of the ``K`` grey-level bins at every
            pixel, as the stack stood at the start of each of the ``T`` iterations.
        steps: ``(T, 6)`` the parameter steps used in that iteration (normalised units).
        bins: ``K``.

    Example:
        >>> import torch
        >>> from congealing.classical import congeal_entropy
        >>> digits = torch.zeros(4, 1, 8, 8); digits[:, :, 2:6, 3:5] = 1.0
        >>> funnel = congeal_entropy(digits, EntropyConfig(iterations=1)).funnel
        >>> funnel.log_probs.shape, funnel.steps.shape, funnel.bins
        (torch.Size([1, 2, 8, 8]), torch.Size([1, 6]), 2)
    """

    log_probs: torch.Tensor
    steps: torch.Tensor
    bins: int
