"""The application layer of ``congeal align``: a folder of photos in, an alignment report out.

One function per method, each ``align_METHOD(image_set, request)``: it takes the loaded images
(:class:`congealing.data.ImageSet`) and an :class:`AlignRequest` (typed settings, no command line),
runs the method's own module (:mod:`congealing.classical`, :mod:`congealing.neural`,
:mod:`congealing.spacejam`), and writes the report folder with :func:`congealing.report.write_alignment`.
:data:`METHODS` is the registry the ``congeal`` command reads. The command checks every argument
(and the output folder) before calling in here; these functions trust what they are given.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch.nn.functional as F

from . import classical, neural, runtime, spacejam, warps
from .data import ImageSet
from .errors import UsageError
from .features import PCAColours, extract_descriptors, load_backbone, saliency_masks
from .report import AlignProgress, centre_disk, demo_edit, write_alignment

__all__ = ["AlignRequest", "METHODS", "PIXEL_METHODS", "RESUMABLE", "align_classical", "align_neural", "align_spacejam", "checkpoint_path"]


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


# ----------------------------------------------------------------------------- classical congealing (Chapter 2)


#: Working resolution of ``congeal align``: transforms are estimated on images resized to this side
#: (they act on normalised coordinates, so they apply unchanged to the full-size images).
WORK_SIZE = 64


#: What each method's ``history["objective"]`` measures, for the report.
OBJECTIVE_NAMES = {
    "entropy": "the total pixel-stack entropy (bits)",
    "lsq": "the squared error to the mean image",
    "ic-lsq": "the squared error to the mean image",
}


def align_classical(image_set: ImageSet, request: AlignRequest) -> None:
    """``congeal align DIR --method {entropy,lsq,ic-lsq}``: align a user's images and write the report.

    Entropy congealing sees the images as grey (channel mean), with 2 grey levels if they are
    nearly binary (90% of pixels within 0.1 of black or white) and 8 otherwise; the least-squares
    methods use all channels. Transforms are estimated at ``WORK_SIZE`` pixels and applied to the
    input images (``congeal align --size``). Alpha masks of the inputs are not used.
    """
    method = request.method
    if method not in classical.CONFIGS:
        raise UsageError(f"unknown method {method!r}; choose one of {classical.METHOD_NAMES}")
    device = runtime.get_device(request.device)
    images = classical.as_image_stack(image_set.images).to(device)
    small = F.interpolate(images, size=(WORK_SIZE, WORK_SIZE), mode="bilinear", antialias=True, align_corners=False) if images.shape[-1] > WORK_SIZE else images
    mode = runtime.get_mode(request.mode)
    config = classical.CONFIGS[method].for_mode(mode)
    if method == "entropy":
        small = small.mean(1, keepdim=True)
        nearly_binary = float(((small < 0.1) | (small > 0.9)).float().mean()) > 0.9
        config = replace(config, bins=2 if nearly_binary else 8)
    progress = AlignProgress(method)
    progress.stage("aligning", config.iterations)
    start = time.perf_counter()
    result = classical.congeal(small, method, config, progress=progress.step)
    seconds = time.perf_counter() - start
    progress.stage("writing the report")
    aligned = warps.warp_image(images, result.transforms)

    edited = warps.propagate_edit(images, result.transforms, demo_edit(centre_disk(images.shape[-1])))

    write_alignment(
        request.out,
        method=method,
        names=list(image_set.names),
        inputs=images.cpu(),
        aligned=aligned.cpu(),
        atlas={"mean": aligned.mean(0).cpu()},
        mode=mode,
        transforms=result.transforms,
        summary={
            "iterations": result.iterations,
            "seconds": round(seconds, 3),
            "working_size": int(small.shape[-1]),
            "objective_before": result.history["objective"][0],
            "objective_after": result.history["objective"][-1],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        },
        extra_images={"edit": edited.cpu()},
        valid=image_set.valid,
        objective={"name": OBJECTIVE_NAMES[method], "before": result.history["objective"][0], "after": result.history["objective"][-1], "better": "lower"},
    )
    progress.close()


# ----------------------------------------------------------------------------- Neural Congealing (Chapter 4)


def align_neural(image_set: ImageSet, request: AlignRequest) -> None:
    """``congeal align DIR --method neural --out OUT``: congealed images, the atlas (average image,
    saliency, keys as PCA-RGB), per-image mappings and an edit-propagation demo. The training
    checkpoint sits at ``request.checkpoint`` (beside OUT) while training (``request.resume``
    continues it, from there or from ``OUT/checkpoint.pt``, if it was made from the same images and
    settings) and inside OUT after."""
    progress = AlignProgress("neural")
    progress.stage("loading the backbone")
    device = runtime.get_device(request.device)
    backbone = load_backbone(request.backbone, device=device)
    mode = runtime.get_mode(request.mode)
    cfg = request.config or neural.NeuralCongealingConfig.for_mode(mode, seed=request.seed)
    images = image_set.images
    alpha = image_set.masks if image_set.masks is not None and bool((image_set.masks < 0.5).any()) else None
    progress.stage("descriptors and object masks")
    masks, mask_source = saliency_masks(images, backbone, alpha, image_set.valid)
    data = neural.prepare(images, masks, backbone, cfg, device)
    out = Path(request.out)
    side = _checkpoint_path(request)
    if request.resume and not side.exists() and (out / "checkpoint.pt").exists():
        shutil.copyfile(out / "checkpoint.pt", side)
    fingerprint = dict(image_set.fingerprint, backbone=backbone.name, config=asdict(cfg))
    progress.stage("training", cfg.epochs)
    result = neural.fit(data, cfg, checkpoint=side, resume=request.resume, log=progress.write, fingerprint=fingerprint,
                 callback=lambda epoch, model: progress.step(epoch + 1, cfg.epochs), callback_every=1)
    progress.stage("writing the report")
    show = 128
    congealed = result.congeal(images.to(device), show).cpu()
    saliency = result.model.atlas_saliency.detach().cpu()
    average = congealed.mean(dim=0)
    keys = result.model.atlas_keys.detach().cpu()[None]
    edit = demo_edit(warps.resize(saliency[None, None].float(), show)[0, 0])
    edited = neural.propagate_edit(result, edit, images.to(device)).cpu()
    write_alignment(
        out, method="neural", names=image_set.names, inputs=images, aligned=congealed,
        atlas={"mean": average, "saliency": saliency[None], "keys (PCA-RGB)": PCAColours.fit(keys)(keys)[0]},
        mode=mode, grids=result.grids().cpu(),
        summary={"backbone": backbone.name, "masks": mask_source, "epochs": cfg.epochs, "seconds": round(result.seconds, 1),
                 "flipped": result.flipped.tolist(), "final_keys_cos": result.history[-1]["keys_cos"]},
        extra_images={"edit": edited},
        masks=masks.cpu(), valid=image_set.valid, flipped=result.flipped, descriptors=extract_descriptors(images, backbone),  # cached by the co-segmentation
        objective={"name": "the keys cosine loss (1 - cosine similarity of aligned descriptors and atlas)", "before": result.history[0]["keys_cos"],
                   "after": result.history[-1]["keys_cos"], "better": "lower"},
        method_scores={"name": "keys loss", "values": neural.per_image_keys_loss(result.model, result.data, result.flipped).cpu(), "better": "lower",
                       "doc": "Neural Congealing's weighted L2 + cosine loss between the image's warped descriptors and the atlas, inside the atlas saliency (neural.per_image_keys_loss); lower is better"},
        extra_files={"checkpoint.pt": side},
    )
    side.unlink()
    progress.close()


# ----------------------------------------------------------------------------- SpaceJAM (Chapter 5)


def align_spacejam(image_set: ImageSet, request: AlignRequest) -> None:
    """``congeal align DIR --method spacejam --out OUT``: align a folder and write the report.

    A checkpoint is kept at ``request.checkpoint`` (beside ``OUT``) while training and copied into
    ``OUT/checkpoint.pt`` at the end; ``request.resume`` continues from either, if it was made from
    the same images and settings.
    """
    progress = AlignProgress("spacejam")
    progress.stage("loading the backbone")
    out = Path(request.out)
    device = runtime.get_device(request.device)
    config = request.config or spacejam.SpaceJAMConfig.for_mode(request.mode, seed=request.seed)
    backbone = load_backbone(request.backbone, device=device)
    masks = image_set.masks
    if masks is not None and bool((masks > 0.5).all()):
        masks = None  # no alpha channel: use the co-segmentation when available
    progress.stage("descriptors and object masks")
    keys, masks = spacejam.prepare_keys(image_set.images, backbone, config, masks, image_set.valid)
    sidecar = _checkpoint_path(request)
    final = out / "checkpoint.pt"
    if request.resume and not sidecar.exists() and final.exists():
        shutil.copyfile(final, sidecar)
    fingerprint = dict(image_set.fingerprint, backbone=backbone.name, config=spacejam._config_dict(config))
    tic = time.perf_counter()
    progress.stage("training")
    result = spacejam.fit(keys, masks, config, device=device, checkpoint=sidecar, resume=request.resume, progress=progress.step, fingerprint=fingerprint)
    progress.stage("writing the report")
    images = image_set.images
    aligned = warps.warp_image(images, result.transforms)
    codes_rgb = spacejam.codes_to_rgb(result.codes)
    size = images.shape[-2:]
    codes_up = F.interpolate(codes_rgb, size=size, mode="bilinear", align_corners=False)
    mask_up = F.interpolate(result.masks, size=size, mode="bilinear", align_corners=False)
    views = {
        "mean": spacejam.atlas(images, result.transforms),
        "foreground": spacejam.atlas(images, result.transforms, mask_up),
        "keys": spacejam.atlas(codes_up, result.transforms, mask_up),
    }
    write_alignment(
        out, method="spacejam", names=image_set.names, inputs=images, aligned=aligned, atlas=views, mode=runtime.get_mode(request.mode),
        transforms=result.transforms,
        summary={
            "backbone": backbone.name, "seconds": round(time.perf_counter() - tic, 1), "trainable_parameters": result.parameters["total"],
            "flipped": int(result.flips.sum()), "final_loss": result.losses[-1] if result.losses else None, "config": spacejam._config_dict(config),
        },
        extra_images={
            "low-dim keys": F.interpolate(codes_rgb, size=size, mode="nearest"),
            "edit": warps.propagate_edit(images, result.transforms, demo_edit(spacejam.atlas(mask_up, result.transforms)[0])),
        },
        extra_files={"checkpoint.pt": sidecar},
        masks=mask_up, valid=image_set.valid, flipped=result.flips, descriptors=extract_descriptors(images, backbone),
        objective={"name": "the training loss (mean over the epoch)", "before": result.losses[0], "after": result.losses[-1], "better": "lower"} if result.losses else None,
    )
    sidecar.unlink()
    progress.close()


#: The registry of ``congeal align --method NAME``: ``NAME -> align(image_set, request)``.
METHODS: dict[str, Callable[[ImageSet, AlignRequest], None]] = {
    "entropy": align_classical,
    "lsq": align_classical,
    "ic-lsq": align_classical,
    "neural": align_neural,
    "spacejam": align_spacejam,
}
#: Methods that work on pixels: no feature backbone, no object masks.
PIXEL_METHODS = classical.METHOD_NAMES
#: Methods that train with a checkpoint that ``request.resume`` continues.
RESUMABLE = ("neural", "spacejam")
