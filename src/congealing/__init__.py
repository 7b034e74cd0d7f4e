"""congealing: joint image alignment, from classical congealing to today's methods.

The library under the book *Congealing, step by step*. One module per concept, in four layers
(each imports only from its own layer and those below; ``tests/test_layers.py`` checks it):

Foundations

* :mod:`congealing.warps`      Lie-group warps, sampling grids, flips (Chapter 1); a package
  (``transforms``, ``grids``)
* :mod:`congealing.data`       image folders, MNIST, CUB-200-2011, NeRF-synthetic; a package
  (``sources``, ``images``, ``datasets``)
* :mod:`congealing.features`   dense descriptors from DINO / DINOv2 / EfficientNet-Lite0, co-segmentation;
  a package (``backbones``, ``pca``, ``cosegmentation``, ``flips``)
* :mod:`congealing.metrics`    PCK, bootstrap intervals, box IoU (Chapter 3)
* :mod:`congealing.losses`     loss terms more than one method uses
* :mod:`congealing.runtime`    the quick/full switch, seeding, device choice, the cache folder
* :mod:`congealing.alignment`  the one result type every method's ``fit`` returns (Chapter 7)
* :mod:`congealing.checkpoints`, :mod:`congealing.files`, :mod:`congealing.errors`

Methods (never import each other)

* :mod:`congealing.classical`  entropy, least-squares and inverse-compositional congealing (Chapter 2);
  a package (``configs``, ``common``, ``entropy``, ``least_squares``, ``protocol``)
* :mod:`congealing.neural`     Neural Congealing (Chapter 4); a package (``model``, ``training``)
* :mod:`congealing.spacejam`   SpaceJAM (Chapter 5); a package (``model``, ``training``)
* :mod:`congealing.congeal3d`  3-D congealing (Chapter 6), a package (its ``camera_files`` and
  ``captures`` submodules: a user's calibrated capture), with :mod:`congealing.diffusion_prior`

Evaluation

* :mod:`congealing.evaluation` keypoint transfer through any aligner, the CUB protocol
* :mod:`congealing.sweeps`     the recorded quick-mode sweeps of Chapters 4 and 5, read back
* :mod:`congealing.mnist`      the MNIST ground-truth protocol of the classical methods (Chapter 2)
* :mod:`congealing.registry`   every method's ``fit``, config and CUB setup, read by the CLI and Chapter 7
* :mod:`congealing.lego`       the lego and capture-like lego benchmarks of 3-D congealing (Chapters 6, 7)

Applications

* :mod:`congealing.align`      folder -> alignment -> report: one :func:`~congealing.align.align` for
  every method (3-D congealing's routes included)
* :mod:`congealing.report`     the folder ``congeal align`` writes (with :mod:`congealing.report_page`,
  the page, :mod:`congealing.report_scores`, the agreement scores, and
  :mod:`congealing.report_folder`, the never-overwrite rules)
* :mod:`congealing.widgets`    widgets that also work in the static HTML book
* :mod:`congealing.cli`        the ``congeal`` command

Importing the package is cheap; submodules are imported on first use.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "warps", "data", "features", "metrics", "losses", "runtime", "checkpoints", "files", "errors",
    "classical", "neural", "spacejam", "congeal3d", "diffusion_prior",
    "alignment", "evaluation", "sweeps", "mnist", "registry", "lego", "align", "report", "report_page", "report_scores", "report_folder",
    "widgets", "cli",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
