"""congealing: joint image alignment, from classical congealing to today's methods.

The library under the book *Congealing, step by step*. One module per concept:

* :mod:`congealing.warps`     Lie-group warps, sampling grids, flips (Chapter 1)
* :mod:`congealing.data`      image folders, MNIST, CUB-200-2011, NeRF-synthetic
* :mod:`congealing.features`  dense descriptors from DINO / DINOv2 / EfficientNet-Lite0
* :mod:`congealing.runtime`   the quick/full switch, seeding, device choice
* :mod:`congealing.widgets`   widgets that also work in the static HTML book

Importing the package is cheap; submodules are imported on first use.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = {"warps", "data", "features", "runtime", "widgets", "report", "classical", "metrics", "eval", "neural", "spacejam", "congeal3d", "cli"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
