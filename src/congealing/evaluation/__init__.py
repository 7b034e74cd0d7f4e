"""The CUB keypoint-transfer protocol (Chapters 3-5, 7), as functions of typed arguments.

:func:`evaluate_cub` (``congeal eval --dataset cub``) takes an :class:`EvalRequest` and returns a
JSON-ready record (``congeal eval`` prints its ``"table"`` and writes the rest with ``--json``). The
methods it can evaluate are :data:`CUB_METHODS`: the two baselines and every method whose
:mod:`congealing.registry` entry says how to prepare a class for it (:func:`fit_on_cub`). The
MNIST ground-truth protocol of Chapter 2 is :mod:`congealing.mnist`; the lego benchmarks of
Chapters 6 and 7 are :mod:`congealing.lego`; the readers of the recorded quick-mode sweeps that
Chapters 4 and 5 show are :mod:`congealing.sweeps`.

Layout
------
Three modules, whose public names are all re-exported here (``from congealing.evaluation import
evaluate_transfer``):

* :mod:`congealing.evaluation.transfers`: what is judged, a :data:`TransferFn`, and the baselines
  that make one without a canonical frame (:func:`identity_transfer`, :func:`nn_transfer`,
  :func:`descriptor_transfer` and its masked and windowed variants) (Chapter 3, "5. The yardstick:
  keypoint transfer and PCK" and "The baseline every paper reports: nearest neighbours");
* :mod:`congealing.evaluation.pck`: the protocol that judges it (:func:`evaluate_transfer`,
  :func:`pck_per_image`, the mirror rule :data:`CUB_MIRROR`) and the keypoint oracle
  :func:`keypoint_similarities` (Chapter 3, "5. The yardstick"; Chapter 5, "Which birds it fails on");
* :mod:`congealing.evaluation.cub`: ``congeal eval --dataset cub``, a method fitted class by class
  and its JSON record (:func:`evaluate_cub`, :func:`fit_on_cub`, :data:`CUB_METHODS`,
  :func:`merge_cub_records`) (Chapter 7, "CUB-200-2011").
"""
from __future__ import annotations

from .transfers import (
    TransferFn, identity_transfer, nn_transfer, descriptor_similarity, descriptor_transfer,
    masked_descriptor_transfer, windowed_descriptor_transfer,
)
from .pck import CUB_MIRROR, keypoint_similarities, threshold_lengths, transfer_all_pairs, evaluate_transfer, pck_per_image
from .cub import (
    DEFAULT_CLASSES, EvalRequest, evaluate_cub, merge_cub_records, peak_memory_mb, format_cub_table, fit_on_cub, CUB_METHODS,
)

__all__ = [
    "TransferFn", "CUB_MIRROR", "DEFAULT_CLASSES", "EvalRequest",
    "identity_transfer", "nn_transfer", "descriptor_similarity",
    "descriptor_transfer", "masked_descriptor_transfer", "windowed_descriptor_transfer", "keypoint_similarities",
    "threshold_lengths", "transfer_all_pairs", "evaluate_transfer", "pck_per_image", "evaluate_cub", "merge_cub_records", "peak_memory_mb", "format_cub_table",
    "fit_on_cub", "CUB_METHODS",
]
