"""Make ``import timm`` work next to a torchvision whose compiled ops do not match torch.

On PyPI, ``torchvision==0.28.0`` is a CUDA build. Installed beside the CPU build of
``torch==2.13.0`` its compiled extension does not load, and torchvision's own import then fails
while registering fake kernels for two operators it expected that extension to define::

    RuntimeError: operator torchvision::nms does not exist

timm imports torchvision, so every backbone would be unusable. We declare the two operator
*schemas* (no kernels: nothing here calls NMS), after which torchvision imports and timm works.
Where torchvision is healthy this does nothing: the first import simply succeeds.
"""
from __future__ import annotations

import sys

import torch

__all__ = ["import_timm"]

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schema_library = None  # kept alive: the schemas vanish when the Library object is collected


def import_timm():
    """Import and return ``timm``, declaring torchvision's missing operator schemas if needed.

    torchvision is imported first. If that raises a ``RuntimeError`` naming a ``torchvision::``
    operator (its compiled extension did not load, see the module docstring), the half-imported
    torchvision modules are dropped from ``sys.modules``, the schemas of ``nms`` and ``qnms`` are
    declared (no kernels) in a ``torch.library.Library`` that this module keeps alive, and torchvision
    is imported again. Where torchvision imports cleanly nothing is declared. The timm backbones of
    :mod:`congealing.features` are loaded through it; no chapter calls it directly.

    Returns:
        the ``timm`` module.

    Raises:
        RuntimeError: torchvision fails to import for another reason, or fails again after the
            schemas were declared by an earlier call.
        ImportError: timm or torchvision is not installed.
    """
    global _schema_library
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _schema_library is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # drop the half-imported package before trying again
        _schema_library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPS:
            _schema_library.define(schema)
        import torchvision  # noqa: F401
    import timm

    return timm
