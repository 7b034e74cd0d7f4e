"""``congeal eval --dataset cub``: a method fitted on each CUB class and scored (Chapter 7).

:func:`evaluate_cub` takes an :class:`EvalRequest` and returns a JSON-ready record (``congeal
eval`` prints its ``"table"`` and writes the rest with ``--json``). The methods it can evaluate are
:data:`CUB_METHODS`: the two baselines and every method whose :mod:`congealing.registry` entry says
how to prepare a class for it (:func:`fit_on_cub`). Each class is scored by
:func:`congealing.evaluation.pck.evaluate_transfer`; :func:`merge_cub_records` puts together the
records of runs that split the classes between them.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch

from .. import registry, runtime
from ..data import cub_box_masks, load_cub_class
from ..errors import UsageError
from ..features import Backbone, cosegment, extract_descriptors, load_backbone, pca_project
from .pck import evaluate_transfer
from .transfers import TransferFn, identity_transfer, nn_transfer

__all__ = [
    "DEFAULT_CLASSES", "EvalRequest", "evaluate_cub", "merge_cub_records", "peak_memory_mb", "format_cub_table",
    "fit_on_cub", "CUB_METHODS",
]

#: Classes evaluated when ``--classes`` is not given.
DEFAULT_CLASSES = (1, 2, 3)


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate: the arguments of :func:`evaluate_cub` and
    :func:`congealing.mnist.evaluate_mnist` (``congeal eval`` builds one from its flags).

    Attributes:
        method: a key of :data:`CUB_METHODS` (CUB) or of :data:`congealing.mnist.MNIST_METHODS` (MNIST).
        classes: class ids (CUB 1-200, default :data:`DEFAULT_CLASSES`; MNIST digits 0-9, default
            all), or None.
        mode: ``"quick"`` or ``"full"`` (None: :func:`congealing.runtime.get_mode`).
        seed: the seed of the method's config (and of the bootstrap).
        device: a name or :class:`torch.device` (None: the best available).
        backbone: a :func:`congealing.features.load_backbone` name (None: its default).
        data: the data folder (None: ``$CONGEAL_DATA``, else the download cache).
        input_size: for ``"nn"`` only: the side the images are resized to before the backbone
            (None: its own), to compare with a method that reads its descriptors at that side
            (SpaceJAM's quick config: 384 px, Chapter 5).

    Example:
        >>> EvalRequest("nn", classes=(1,)).mode is None
        True
    """

    method: str
    classes: tuple[int, ...] | None = None
    mode: str | None = None
    seed: int = 0
    device: str | torch.device | None = None
    backbone: str | None = None
    data: str | Path | None = None
    input_size: int | None = None


# ----------------------------------------------------------------------------- one record per run


def evaluate_cub(request: EvalRequest, on_partial: Callable[[dict], None] | None = None) -> dict:
    """``congeal eval --dataset cub``: PCK of ``request.method`` on each class of ``request.classes``
    (Chapter 3, "The same from the command line"; Chapter 7, "CUB-200-2011").

    Every class is fitted on its own (:data:`CUB_METHODS`) and scored by :func:`evaluate_transfer`
    with ``request.seed``.

    Args:
        request: what to evaluate (:class:`EvalRequest`).
        on_partial: called after each class but the last with the record so far, so finished
            classes survive a later failure; or None.

    Returns:
        the JSON-ready record: the settings, ``classes`` (one :func:`evaluate_transfer` result per
        class, with ``class_id``, ``class_name``, ``seconds`` and ``trainable_parameters``), their
        ``mean``, ``peak_rss_mb`` and a ``"table"`` string (:func:`format_cub_table`).

    Raises:
        UsageError: ``request.method`` is not in :data:`CUB_METHODS`, or ``request.input_size`` is
            given for another method than ``"nn"`` or is not positive.
    """
    if request.method not in CUB_METHODS:
        raise UsageError(f"congeal eval: unknown method {request.method!r} for cub; available: {', '.join(CUB_METHODS)}")
    if request.input_size is not None and (request.method != "nn" or request.input_size < 1):
        raise UsageError("congeal eval: --input-size sets the nearest-neighbour baseline's input side (a positive number of pixels, "
                         "with --method nn); the methods read theirs from their configs")
    sized = {} if request.input_size is None else {"input_size": request.input_size}
    classes = tuple(request.classes) if request.classes else DEFAULT_CLASSES
    mode = runtime.get_mode(request.mode)
    device = runtime.get_device(request.device)
    backbone = load_backbone(request.backbone, device)
    fit = CUB_METHODS[request.method]
    rows = []
    for class_id in classes:
        cub = load_cub_class(class_id, split="test", size=256, root=request.data)
        start = time.perf_counter()
        transfer = fit(cub, backbone, mode, request.seed, device, **sized)
        result = evaluate_transfer(transfer, cub, seed=request.seed)
        result.update(class_id=class_id, class_name=cub.class_name, seconds=round(time.perf_counter() - start, 2),
                      trainable_parameters=getattr(transfer, "parameters", 0))
        rows.append(result)
        if on_partial is not None and len(rows) < len(classes):
            on_partial(_cub_record(request, rows, backbone, mode, device))
    return _cub_record(request, rows, backbone, mode, device)


def _cub_record(request: EvalRequest, rows: list[dict], backbone, mode: str, device) -> dict:
    """The JSON-ready record of :func:`evaluate_cub` for the classes in ``rows``."""
    out = {
        "dataset": "cub",
        "method": request.method,
        "backbone": backbone.name,
        "backbone_title": backbone.title,
        "mode": mode,
        "device": str(device),
        "seed": request.seed,
        **({} if request.input_size is None else {"input_size": request.input_size}),
        "protocol": "test split, 256 px box crops, all ordered pairs, keypoints visible in both, d <= alpha * max(h, w) of the target box",
        "classes": rows,
        "mean": _cub_mean(rows),
    }
    out["peak_rss_mb"] = peak_memory_mb(device)
    out["table"] = format_cub_table(out)
    return out


def _cub_mean(rows: list[dict]) -> dict:
    """The ``mean`` of a CUB record: each score averaged over the classes in ``rows``."""
    mean = {f"pck@{a}": float(sum(r["pck"][a]["mean"] for r in rows) / len(rows)) for a in ("0.1", "0.05")}
    mean.update({f"pck_image@{a}": float(sum(r["pck_image"][a]["pooled"] for r in rows) / len(rows)) for a in ("0.1", "0.05")})
    return mean


#: The fields of a CUB record that say what was run; records merged by :func:`merge_cub_records` must agree on them.
_CUB_SETTINGS = ("dataset", "method", "backbone", "backbone_title", "mode", "device", "seed", "input_size", "protocol")


def merge_cub_records(records: list[dict]) -> dict:
    """One :func:`evaluate_cub` record made of several, each of the same run on other classes.

    Chapter 7 ("CUB-200-2011") trains each class of the two learned methods in its own process, so
    that two processes keep both cores busy; this puts their records back together. Every class is
    fitted on its own with the same seed (:func:`evaluate_cub`), so the classes are the same whether
    they ran in one process or in several.

    Args:
        records: JSON records of ``congeal eval --dataset cub`` that agree on the method and every
            setting (backbone, mode, device, seed, input side, protocol) and share no class.

    Returns:
        the record with every class in the order given, their ``mean``, the largest ``peak_rss_mb``
        (each process's own peak; one class is what a process needed) and ``provenance``: the list
        of the records' provenances.

    Raises:
        ValueError: ``records`` is empty, disagrees on a setting, repeats a class or holds an
            unfinished record (``"complete": false``).

    Example:
        >>> row = lambda c, p: {"class_id": c, "pck": {a: {"mean": p} for a in ("0.1", "0.05")},
        ...                     "pck_image": {a: {"pooled": p} for a in ("0.1", "0.05")}}
        >>> part = lambda c, p: {"dataset": "cub", "method": "nn", "seed": 0, "classes": [row(c, p)], "peak_rss_mb": 100.0 * c}
        >>> merged = merge_cub_records([part(1, 0.5), part(2, 0.25)])
        >>> [c["class_id"] for c in merged["classes"]], merged["mean"]["pck@0.1"], merged["peak_rss_mb"]
        ([1, 2], 0.375, 200.0)
    """
    if not records:
        raise ValueError("merge_cub_records needs at least one record")
    first = records[0]
    for record in records:
        if record.get("complete") is False:
            raise ValueError(f"a record of classes {[c['class_id'] for c in record['classes']]} is unfinished: rerun its command")
        differing = [key for key in _CUB_SETTINGS if record.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"records of different runs cannot be merged: they differ in {', '.join(differing)}")
    rows = [row for record in records for row in record["classes"]]
    ids = [row["class_id"] for row in rows]
    if len(set(ids)) < len(ids):
        raise ValueError(f"records to merge repeat a class: {sorted(ids)}")
    out = {key: first[key] for key in _CUB_SETTINGS if key in first}
    out.update(classes=rows, mean=_cub_mean(rows))
    out["peak_rss_mb"] = max(record["peak_rss_mb"] for record in records)
    out["provenance"] = [record.get("provenance") for record in records]
    return out


def peak_memory_mb(device=None) -> float:
    """Peak memory of this process so far, in MB: resident set size on a CPU, allocated memory on a
    CUDA device (whichever is larger). Run one method per process to measure that method; the
    records of ``congeal eval`` carry it (Chapter 7, "Accuracy against time").

    Args:
        device: the device the method ran on (None: the CPU only).

    Returns:
        megabytes, rounded to 0.1.

    Example:
        >>> peak_memory_mb() > 0
        True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if device is not None and torch.device(device).type == "cuda":
        rss = max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return round(rss, 1)


def format_cub_table(results: dict) -> str:
    """A plain-text table of :func:`evaluate_cub`'s record (percentages), which ``congeal eval`` prints.

    Args:
        results: the record (``method``, ``backbone``, ``mode``, ``classes``, ``mean``).

    Returns:
        the table, one line per class, then the mean and a legend.
    """
    head = f"{'class':<32} {'PCK@0.1':>16} {'PCK@0.05':>16} {'img@0.1':>8} {'pairs':>6} {'kps':>6} {'s':>7}"
    side = f" at {results['input_size']} px" if results.get("input_size") else ""
    lines = [f"CUB PCK, method {results['method']}, backbone {results['backbone']}{side}, {results['mode']} mode", head]
    for r in results["classes"]:
        cells = []
        for a in ("0.1", "0.05"):
            low, high = r["pck"][a]["ci95"]
            cells.append(f"{100 * r['pck'][a]['mean']:5.1f} [{100 * low:4.1f},{100 * high:4.1f}]")
        name = f"{r['class_id']:03d} {r['class_name']}"[:32]
        lines.append(f"{name:<32} {cells[0]:>16} {cells[1]:>16} {100 * r['pck_image']['0.1']['pooled']:8.1f} {r['n_pairs']:>6} {r['n_keypoints']:>6} {r['seconds']:>7.1f}")
    m = results["mean"]
    lines.append(f"{'mean':<32} {100 * m['pck@0.1']:>16.1f} {100 * m['pck@0.05']:>16.1f} {100 * m['pck_image@0.1']:8.1f}")
    lines.append("PCK: mean over pairs [bootstrap 95% CI], threshold alpha*max(h,w) of the target box; img: pooled, alpha*256 (the papers' CUB threshold)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the methods on CUB


def fit_on_cub(method: str, cub, backbone=None, mode: str | None = None, seed: int = 0, device=None) -> TransferFn:
    """``congeal eval --dataset cub --method NAME``: fit a registered method on one CUB class the way
    its registry entry says (:class:`congealing.registry.CubSetup`), and return its keypoint transfer.

    ``"pca-maps"`` inputs: the class's descriptors on a 64 x 64 grid, co-segmented
    (:func:`congealing.features.cosegment`), projected on their top 3 principal components fitted on
    the foreground (:func:`congealing.features.pca_project`), background set to 0; the transforms
    fitted on them act on normalised coordinates, so they move the class's images. ``"images"``
    inputs: the 256-px crops, with the masks the entry names. The config is
    ``for_mode(mode, seed=seed, **overrides)`` (no seed for a config without one).

    Args:
        method: a registry name whose entry has a ``cub`` setup.
        cub: a :class:`congealing.data.CUBSet` (one class).
        backbone: a :class:`congealing.features.Backbone` or a name (None: the default one).
        mode: ``"quick"`` or ``"full"`` (None: :func:`congealing.runtime.get_mode`).
        seed: the config's seed (and the co-segmentation's).
        device: where to fit (None: the best available).

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` in the class's 256-px frame, with ``flipped``
        and ``parameters`` (:meth:`congealing.alignment.Alignment.transfer`).

    Raises:
        UsageError: ``method`` is not registered or not benchmarked on CUB.
    """
    entry = registry.get(method)
    setup = entry.cub
    if setup is None:
        raise UsageError(f"congeal eval: {method} is not benchmarked on cub; choose one of {', '.join(CUB_METHODS)}")
    if setup.inputs == "pca-maps":
        runtime.seed_everything(seed)  # the randomised PCA below draws from the global generator
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device)
    seeded = {"seed": seed} if "seed" in {f.name for f in fields(entry.config)} else {}
    config = entry.config.for_mode(mode, **seeded, **setup.overrides_for(runtime.get_mode(mode)))
    if setup.inputs == "pca-maps":
        descriptors = extract_descriptors(cub.images, backbone, grid=64)
        masks = cosegment(descriptors, seed=seed)
        maps, _, _ = pca_project(descriptors, 3, masks)
        alignment = entry.fit(maps * masks, config, backbone=backbone, device=device)
        return replace(alignment, size=tuple(cub.images.shape[-2:])).transfer()
    masks = {"boxes": lambda: cub_box_masks(cub), "cosegment": lambda: cosegment(extract_descriptors(cub.images, backbone, grid=64), seed=seed),
             None: lambda: None}[setup.masks]()
    return entry.fit(cub.images, config, masks=masks, backbone=backbone, device=device).transfer()


def _registered_on_cub(name: str) -> Callable[..., TransferFn]:
    """:func:`fit_on_cub` for the method ``name``, with the baselines' signature."""

    def fit(cub, backbone=None, mode: str | None = None, seed: int = 0, device=None) -> TransferFn:
        return fit_on_cub(name, cub, backbone, mode, seed, device)

    fit.__name__ = fit.__qualname__ = f"{name.replace('-', '_')}_on_cub"
    fit.__doc__ = f"``congeal eval --dataset cub --method {name}``: :func:`fit_on_cub` of {name}."
    return fit


#: The registry of ``congeal eval --dataset cub --method NAME``: ``NAME -> fit``, where
#: ``fit(cub, backbone, mode, seed, device) -> TransferFn`` trains on one class and returns its
#: keypoint transfer (with an optional ``parameters`` attribute: trainable parameters). The two
#: baselines, then every registered method with a CUB setup (:func:`fit_on_cub`).
CUB_METHODS: dict[str, Callable[..., TransferFn]] = {
    "identity": identity_transfer,
    "nn": nn_transfer,
    **{name: _registered_on_cub(name) for name in registry.names(on_cub=True)},
}
