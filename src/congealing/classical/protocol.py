"""One entry point for the three classical methods: :func:`congeal` by name, and :func:`fit`, the
common protocol of :mod:`congealing.alignment` (Chapter 7, "One protocol, every method").
"""
from __future__ import annotations


from ..alignment import Alignment
from .configs import AFFINE_DIM, CONFIGS, CongealResult, METHOD_NAMES
from .common import as_image_stack
from .entropy import congeal_entropy
from .least_squares import congeal_ic_lsq, congeal_lsq

__all__ = ["congeal", "method_of", "fit"]


# ----------------------------------------------------------------------------- one entry point


def congeal(images, method: str = "entropy", config=None, progress=None) -> CongealResult:
    """Run one classical method by name.

    :func:`congealing.evaluation.evaluate_on_digits` runs it for every row of Chapter 2, "The
    comparison table".

    Args:
        images: ``(N, C, H, W)`` (or a sequence, see :func:`as_image_stack`); greyscale for
            ``"entropy"``.
        method: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"`` (:data:`METHOD_NAMES`).
        config: the method's config (default: its ``for_mode()``).
        progress: ``progress(done, total)`` after every iteration, or None.

    Returns:
        the method's :class:`CongealResult`.

    Raises:
        ValueError: ``method`` is unknown, or the method refuses the images or config.

    Example:
        >>> import torch
        >>> from congealing.classical import LSQConfig
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> congeal(digits, "lsq", LSQConfig(iterations=1)).iterations
        1
    """
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHOD_NAMES}")
    run = {"entropy": congeal_entropy, "lsq": congeal_lsq, "ic-lsq": congeal_ic_lsq}[method]
    return run(images, config or CONFIGS[method].for_mode(), progress=progress)


def method_of(config) -> str:
    """The method a config belongs to: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.

    The exact type decides (an :class:`ICLSQConfig` is not an :class:`LSQConfig` here). :func:`fit`
    uses it; Chapter 7, "One protocol, every method".

    Args:
        config: an :class:`EntropyConfig`, :class:`LSQConfig` or :class:`ICLSQConfig`.

    Returns:
        the method's name, a key of :data:`CONFIGS`.

    Raises:
        ValueError: ``config`` is of any other type.

    Example:
        >>> from congealing.classical import ICLSQConfig, LSQConfig
        >>> method_of(ICLSQConfig()), method_of(LSQConfig())
        ('ic-lsq', 'lsq')
    """
    for name, config_type in CONFIGS.items():
        if type(config) is config_type:
            return name
    raise ValueError(f"not a classical congealing config: {type(config).__name__}; use one of {[c.__name__ for c in CONFIGS.values()]}")


def fit(images, config, *, masks=None, backbone=None, device=None, callback=None) -> Alignment:
    """Classical congealing behind the common fit protocol (:mod:`congealing.alignment`).

    Runs :func:`congeal` with the method ``config`` selects; :mod:`congealing.registry` lists it for
    all three methods. Taught in Chapter 7, "One protocol, every method".

    Args:
        images: ``(N, C, H, W)`` (or a sequence of ``(C, H, W)``), see :func:`as_image_stack`.
        config: an :class:`EntropyConfig`, :class:`LSQConfig` or :class:`ICLSQConfig`; its type
            selects the method.
        masks: not used (the classical methods align pixels; mask the images first if needed).
        backbone: not used.
        device: where to run (None: where ``images`` are).
        callback: ``callback(done, total)`` after every iteration.

    Returns:
        an :class:`congealing.alignment.Alignment` with ``transforms`` ``(N, 3, 3)`` (input ->
        aligned), ``atlas["mean"]``, one history entry per iteration (``objective``, ``seconds``;
        the start first) and ``state["result"]``, the full :class:`CongealResult`.

    Raises:
        ValueError: ``config`` is not a classical config, or the method refuses the images.

    Example:
        >>> import torch
        >>> from congealing.classical import LSQConfig
        >>> digits = torch.zeros(4, 1, 16, 16); digits[:, :, 4:12, 6:10] = 1.0
        >>> alignment = fit(digits, LSQConfig(iterations=2))
        >>> alignment.method, alignment.transforms.shape, len(alignment.history)
        ('lsq', torch.Size([4, 3, 3]), 3)
    """
    method = method_of(config)
    stack = as_image_stack(images)
    if device is not None:
        stack = stack.to(device)
    result = congeal(stack, method, config, progress=callback)
    history = [{"iteration": i, "objective": objective, "seconds": seconds}
               for i, (objective, seconds) in enumerate(zip(result.history["objective"], result.history["seconds"]))]
    return Alignment(
        method=method, size=tuple(stack.shape[-2:]), transforms=result.transforms, atlas={"mean": result.atlas},
        history=history, seconds=float(sum(result.history["seconds"])), parameters=AFFINE_DIM * len(stack),
        state={"result": result, "config": config},
    )
