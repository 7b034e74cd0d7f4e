"""The application layer of ``congeal align``: a folder of photos in, an alignment report out.

:func:`align` takes the loaded images (:class:`congealing.data.ImageSet`) and an
:class:`AlignRequest` (typed settings, no command line), looks the method up in
:mod:`congealing.registry`, calls its ``fit`` (the protocol of :mod:`congealing.alignment`), and
writes the report folder with :func:`congealing.report.write_alignment`. The command checks every
argument (and the output folder) before calling in here; this module trusts what it is given.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import classical, neural, registry, runtime, spacejam, warps
from .alignment import Alignment
from .data import ImageSet
from .features import PCAColours, extract_descriptors, load_backbone, saliency_masks
from .report import AlignProgress, centre_disk, demo_edit, write_alignment

__all__ = ["AlignRequest", "WORK_SIZE", "PIXEL_METHODS", "RESUMABLE", "align", "config_for", "checkpoint_path"]


@dataclass(frozen=True)
class AlignRequest:
    """The settings of one ``congeal align`` run.

    ``method``: a key of :data:`METHODS`; ``out``: the report folder (checked by
    :func:`congealing.report_folder.check_output_folder`); ``mode``: ``"quick"`` or ``"full"``;
    ``seed``; ``device``: a name or None (the best available); ``backbone``: a
    :func:`congealing.features.load_backbone` name or None; ``resume``: continue the training
    checkpoint (trained methods); ``checkpoint``: where the training checkpoint is kept while the
    method trains (None: ``.OUT.METHOD.checkpoint.pt`` beside ``out``); ``config``: the method's
    config to use instead of ``for_mode(mode, seed=seed)`` (tests' tiny runs).
    """

    method: str
    out: Path
    mode: str | None = None
    seed: int = 0
    device: str | None = None
    backbone: str | None = None
    resume: bool = False
    checkpoint: Path | None = None
    config: object | None = None


def checkpoint_path(out: Path, method: str) -> Path:
    """Where ``congeal align --method METHOD --out OUT`` keeps its training checkpoint while it runs."""
    out = Path(out)
    return out.with_name(f".{out.name}.{method}.checkpoint.pt")


def _checkpoint_path(request: AlignRequest) -> Path:
    return Path(request.checkpoint) if request.checkpoint is not None else checkpoint_path(request.out, request.method)


#: Working resolution of the pixel methods: transforms are estimated on images resized to this side
#: (they act on normalised coordinates, so they apply unchanged to the full-size images).
WORK_SIZE = 64
#: Methods that work on pixels: no feature backbone, no object masks.
PIXEL_METHODS = registry.names(features=False)
#: Methods that train with a checkpoint that ``request.resume`` continues.
RESUMABLE = tuple(name for name, method in registry.METHODS.items() if method.resumable)
#: Side of the congealed images a dense (grid) method's report shows.
GRID_REPORT_SIZE = 128


def config_for(request: AlignRequest):
    """The method's config: ``request.config``, else ``for_mode(mode)`` with ``request.seed`` where
    the config has a seed."""
    if request.config is not None:
        return request.config
    config_type = registry.get(request.method).config
    seeded = {"seed": request.seed} if "seed" in {f.name for f in fields(config_type)} else {}
    return config_type.for_mode(runtime.get_mode(request.mode), **seeded)


def _plain(config) -> dict:
    """A config as plain numbers, strings and lists (JSON- and checkpoint-safe)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def align(image_set: ImageSet, request: AlignRequest) -> Alignment:
    """``congeal align DIR --method NAME --out OUT``: align a user's images and write the report.

    Pixel methods (Chapter 2) work at ``WORK_SIZE``; entropy congealing sees the images as grey,
    with 2 grey levels if they are nearly binary (90% of pixels within 0.1 of black or white) and 8
    otherwise. Feature methods (Chapters 4, 5) load the backbone and take the object masks from the
    images' alpha channels or ``--masks`` if any, else from the co-segmentation
    (:func:`congealing.features.saliency_masks`). Trained methods keep a checkpoint at
    ``request.checkpoint`` (beside OUT) while training; ``request.resume`` continues it, from there
    or from ``OUT/checkpoint.pt``, if it was made from the same images and settings; it ends up
    inside OUT.

    Returns:
        the :class:`congealing.alignment.Alignment` the report shows.
    """
    method = registry.get(request.method)
    progress = AlignProgress(method.name)
    device = runtime.get_device(request.device)
    mode = runtime.get_mode(request.mode)
    config = config_for(request)
    images = image_set.images
    options, masks, mask_source, backbone, sidecar = {}, None, None, None, None
    if method.features:
        progress.stage("loading the backbone")
        backbone = load_backbone(request.backbone, device=device)
        alpha = image_set.masks if image_set.masks is not None and bool((image_set.masks < 0.5).any()) else None
        progress.stage("descriptors and object masks")
        masks, mask_source = saliency_masks(images, backbone, alpha, image_set.valid)
        fitted = images
    else:
        fitted, config = _pixel_inputs(images, method.name, config)
    if method.resumable:
        sidecar = _checkpoint_path(request)
        if request.resume and not sidecar.exists() and (Path(request.out) / "checkpoint.pt").exists():
            shutil.copyfile(Path(request.out) / "checkpoint.pt", sidecar)
        fingerprint = dict(image_set.fingerprint, backbone=backbone.name, config=_plain(config))
        options = {"checkpoint": sidecar, "resume": request.resume, "fingerprint": fingerprint}
    progress.stage("training" if method.resumable else "aligning")
    alignment = method.fit(fitted.to(device), config, masks=masks, backbone=backbone, device=device, callback=progress.step, **options)
    if not method.features:
        alignment = replace(alignment, size=tuple(images.shape[-2:]))  # normalised transforms: the same at any size
    progress.stage("writing the report")
    _write_report(alignment, image_set, request, mode, config, backbone, mask_source, sidecar)
    if sidecar is not None:
        sidecar.unlink()
    progress.close()
    return alignment


def _pixel_inputs(images: torch.Tensor, method: str, config):
    """The stack a pixel method aligns: images at ``WORK_SIZE`` (grey for entropy congealing, whose
    number of grey levels follows the images), and the config to use."""
    images = classical.as_image_stack(images)
    small = F.interpolate(images, size=(WORK_SIZE, WORK_SIZE), mode="bilinear", antialias=True, align_corners=False) if images.shape[-1] > WORK_SIZE else images
    if method == "entropy":
        small = small.mean(1, keepdim=True)
        nearly_binary = float(((small < 0.1) | (small > 0.9)).float().mean()) > 0.9
        config = replace(config, bins=2 if nearly_binary else 8)
    return small, config


def _objective(alignment: Alignment) -> dict | None:
    """The first and last value of the method's loss in ``alignment.history``, for the report."""
    method = registry.get(alignment.method)
    values = [entry[method.loss_key] for entry in alignment.history if method.loss_key in entry]
    return {"name": method.objective, "before": values[0], "after": values[-1], "better": "lower"} if values else None


def _write_report(alignment: Alignment, image_set: ImageSet, request: AlignRequest, mode: str, config, backbone, mask_source, sidecar) -> None:
    images = image_set.images.float()
    method = registry.get(alignment.method)
    objective = _objective(alignment)
    dense = alignment.grids is not None
    aligned = alignment.warp(images, GRID_REPORT_SIZE, padding_mode="border") if dense else alignment.warp(images)
    summary = {"seconds": round(alignment.seconds, 3), "trainable_parameters": alignment.parameters, "flipped": int(alignment.flips.sum()), "config": _plain(config)}
    if objective is not None:
        summary.update(objective_before=objective["before"], objective_after=objective["after"])
    report = dict(
        method=alignment.method, names=list(image_set.names), inputs=images.cpu(), aligned=aligned.cpu(), mode=mode,
        atlas={"mean": aligned.mean(0).cpu()}, valid=image_set.valid, flipped=alignment.flips, objective=objective,
        transforms=alignment.transforms, grids=alignment.grids.cpu() if dense else None, summary=summary,
    )
    if backbone is not None:
        summary.update(backbone=backbone.name, masks=mask_source)
        report.update(descriptors=extract_descriptors(images, backbone))  # cached by the co-segmentation
    if sidecar is not None:
        report.update(extra_files={"checkpoint.pt": sidecar})
    if not method.features:
        summary.update(iterations=len(alignment.history) - 1, working_size=WORK_SIZE)
        edit_region = centre_disk(images.shape[-1])
    elif dense:
        saliency = alignment.atlas["saliency"]
        keys = alignment.atlas["keys"][None]
        report["atlas"].update({"saliency": saliency, "keys (PCA-RGB)": PCAColours.fit(keys)(keys)[0]})
        report.update(masks=alignment.masks, method_scores=_neural_scores(alignment))
        edit_region = warps.resize(saliency[None].float(), GRID_REPORT_SIZE)[0, 0]
    else:
        size = images.shape[-2:]
        result = alignment.state["result"]
        mask_up = F.interpolate(alignment.masks, size=size, mode="bilinear", align_corners=False)
        report["atlas"] = dict(alignment.atlas)
        report.update(masks=mask_up, extra_images={"low-dim keys": F.interpolate(spacejam.codes_to_rgb(result.codes), size=size, mode="nearest")})
        edit_region = spacejam.atlas(mask_up, alignment.transforms)[0]
    edited = alignment.propagate_edit(demo_edit(edit_region), images)
    report["extra_images"] = {**report.get("extra_images", {}), "edit": edited.cpu()}
    write_alignment(request.out, **report)


def _neural_scores(alignment: Alignment) -> dict:
    result = alignment.state["result"]
    return {"name": "keys loss", "values": neural.per_image_keys_loss(result.model, result.data, result.flipped).cpu(), "better": "lower",
            "doc": "Neural Congealing's weighted L2 + cosine loss between the image's warped descriptors and the atlas, inside the atlas saliency (neural.per_image_keys_loss); lower is better"}
