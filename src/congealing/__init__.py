"""congealing: joint image alignment, from classical congealing to today's methods.

The library under the book *Congealing, step by step*. One module per concept:

* :mod:`congealing.warps`     Lie-group warps, sampling grids, flips (Chapter 1)
* :mod:`congealing.data`      image folders, MNIST, CUB-200-2011, NeRF-synthetic
* :mod:`congealing.features`  dense descriptors from DINO / DINOv2 / EfficientNet-Lite0
* :mod:`congealing.classical` entropy, least-squares and inverse-compositional congealing (Chapter 2)
* :mod:`congealing.metrics`   PCK, bootstrap intervals, box IoU (Chapter 3)
* :mod:`congealing.eval`      keypoint transfer through any aligner, the CUB protocol (Chapter 3)
* :mod:`congealing.neural`    Neural Congealing (Chapter 4)
* :mod:`congealing.spacejam`  SpaceJAM (Chapter 5)
* :mod:`congealing.runtime`   the quick/full switch, seeding, device choice
* :mod:`congealing.widgets`   widgets that also work in the static HTML book
* :mod:`congealing.report`    the folder ``congeal align`` writes

Importing the package is cheap; submodules are imported on first use.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = {"warps", "data", "features", "runtime", "widgets", "report", "classical", "metrics", "eval", "neural", "spacejam", "congeal3d", "diffusion_prior", "cli"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
