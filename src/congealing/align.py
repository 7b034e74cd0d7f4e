"""The application layer of ``congeal align``: a folder of photos in, an alignment report out.

:func:`align` takes the loaded images (:class:`congealing.data.ImageSet`) and an
:class:`AlignRequest` (typed settings, no command line), looks the method up in
:mod:`congealing.registry`, calls its ``fit`` (the protocol of :mod:`congealing.alignment`), and
writes the report folder with :func:`congealing.report.write_alignment`. A method that needs a
canonical shape (3-D congealing, ``needs_shape`` in the registry) has its own routes, which
:func:`align` takes: :func:`align_congeal3d` (photos posed on a saved shape) and
:func:`align_capture` (a calibrated capture). The command checks every argument (and the output
folder) before calling in here; this module trusts what it is given.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import classical, congeal3d, registry, runtime
from .alignment import Alignment, ReportViews
from .data import ImageSet
from .errors import InputError, UsageError
from .features import extract_descriptors, load_backbone, saliency_masks
from .report import AlignProgress, centre_disk, demo_edit, write_alignment

__all__ = ["AlignRequest", "WORK_SIZE", "PIXEL_METHODS", "RESUMABLE", "align", "config_for", "checkpoint_path", "align_congeal3d", "align_capture", "check_not_flat"]


@dataclass(frozen=True)
class AlignRequest:
    """The settings of one ``congeal align`` run.

    ``method``: a key of :data:`METHODS`; ``out``: the report folder (checked by
    :func:`congealing.report_folder.check_output_folder`); ``mode``: ``"quick"`` or ``"full"``;
    ``seed``; ``device``: a name or None (the best available); ``backbone``: a
    :func:`congealing.features.load_backbone` name or None; ``resume``: continue the training
    checkpoint (trained methods); ``checkpoint``: where the training checkpoint is kept while the
    method trains (None: ``.OUT.METHOD.checkpoint.pt`` beside ``out``); ``config``: the method's
    config to use instead of ``for_mode(mode, seed=seed)`` (tests' tiny runs). 3-D congealing
    (:func:`align_congeal3d`): ``shape``, the canonical shape saved by
    :func:`congealing.congeal3d.save_shape`, or ``cameras``, the capture's camera file, with
    ``capture_cameras``, its cameras as :func:`congealing.congeal3d.captures.check_capture` read them.
    Built by the ``congeal`` command from its flags (Chapter 7, "Align your own photos", "Align").

    Example:
        >>> request = AlignRequest(method="lsq", out=Path("report"), mode="quick")
        >>> request.seed, request.backbone, request.resume
        (0, None, False)
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
    shape: Path | None = None
    cameras: Path | None = None
    capture_cameras: congeal3d.Cameras | None = None


def checkpoint_path(out: Path, method: str) -> Path:
    """Where ``congeal align --method METHOD --out OUT`` keeps its training checkpoint while it runs:
    a hidden file beside ``OUT`` (moved into ``OUT`` with the report at the end).

    Args:
        out: the report folder.
        method: the method's registry name.

    Returns:
        ``OUT/../.NAME.METHOD.checkpoint.pt``.

    Example:
        >>> checkpoint_path(Path("runs/birds"), "neural").as_posix()
        'runs/.birds.neural.checkpoint.pt'
    """
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
    """The config ``congeal align`` runs the method with.

    Args:
        request: the run's settings.

    Returns:
        ``request.config`` if given, else the method's ``Config.for_mode(request.mode)`` with
        ``request.seed`` where the config has a seed.

    Raises:
        UsageError: the mode is unknown.
        KeyError: the method is not in :mod:`congealing.registry`.

    Example:
        >>> config_for(AlignRequest(method="lsq", out=Path("report"), mode="quick")).iterations
        30
    """
    if request.config is not None:
        return request.config
    config_type = registry.get(request.method).config
    seeded = {"seed": request.seed} if "seed" in {f.name for f in fields(config_type)} else {}
    return config_type.for_mode(runtime.get_mode(request.mode), **seeded)


def align(image_set: ImageSet, request: AlignRequest) -> Alignment:
    """``congeal align DIR --method NAME --out OUT``: align a user's images and write the report.

    Pixel methods (Chapter 2) work at ``WORK_SIZE``; entropy congealing sees the images as grey,
    with 2 grey levels if they are nearly binary (90% of pixels within 0.1 of black or white) and 8
    otherwise. Feature methods (Chapters 4, 5) load the backbone and take the object masks from the
    images' alpha channels or ``--masks`` if any, else from the co-segmentation
    (:func:`congealing.features.saliency_masks`). Trained methods keep a checkpoint at
    ``request.checkpoint`` (beside OUT) while training; ``request.resume`` continues it, from there
    or from ``OUT/checkpoint.pt``, if it was made from the same images and settings; it ends up
    inside OUT. The report shows what every method shows (inputs, aligned images, their mean, an
    edit propagated to every image) and what the method's ``Alignment.report`` adds
    (:class:`congealing.alignment.ReportViews`). Chapter 7, "Align your own photos", "Align".

    Args:
        image_set: the loaded images (:func:`congealing.data.load_image_folder`): ``images``
            ``(N, 3, S, S)`` in ``[0, 1]``, ``names``, ``masks``/``valid`` ``(N, 1, S, S)`` or None.
        request: the run's settings (the method, the report folder, mode, seed, device, ...).

    Returns:
        the :class:`congealing.alignment.Alignment` the report shows.

    Raises:
        CongealError: a user's mistake (e.g. a checkpoint made for other images with ``resume``,
            or a set in which every photo is one flat colour).
        FloatingPointError: the method diverged.
    """
    method = registry.get(request.method)
    check_not_flat(image_set)
    if method.needs_shape:
        return align_congeal3d(image_set, request)
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
        fingerprint = dict(image_set.fingerprint, backbone=backbone.name, config=config.plain())
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


def check_not_flat(image_set: ImageSet, tolerance: float = 1.0 / 255) -> None:
    """Refuse a set in which every photo is one flat colour (all black, say), before any work.

    Only each photo's own pixels count (``image_set.valid``), not the padding that squared it, so
    white photos padded with black are flat too. One flat photo among real ones is allowed: the
    methods treat it as an outlier.

    Args:
        image_set: the loaded images, ``images`` ``(N, C, S, S)`` and ``valid`` ``(N, 1, S, S)`` or None.
        tolerance: the largest range of pixel values (0-1 scale) that still counts as flat.

    Raises:
        InputError: every photo is flat.

    Example:
        >>> from congealing.data import ImageSet
        >>> check_not_flat(ImageSet(torch.rand(2, 3, 8, 8), ["a.png", "b.png"]))   # nothing to say
    """
    images = image_set.images.float().flatten(2)
    inside = torch.ones_like(images[:, :1]) if image_set.valid is None else image_set.valid.flatten(2) > 0.5
    highest = images.masked_fill(~inside.bool(), -math.inf).amax(2)
    lowest = images.masked_fill(~inside.bool(), math.inf).amin(2)
    if bool(((highest - lowest) <= tolerance).all()):
        raise InputError(f"every one of the {len(image_set.names)} images is a single flat colour (all black, say): there is nothing to align; check the folder")


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
    """Every method's report: the inputs, the aligned images and their mean, what the method's
    ``alignment.report`` adds (:class:`congealing.alignment.ReportViews`), and the demo edit."""
    images = image_set.images.float()
    method = registry.get(alignment.method)
    objective = _objective(alignment)
    dense = alignment.grids is not None
    side = GRID_REPORT_SIZE if dense else images.shape[-1]
    aligned = alignment.warp(images, side, padding_mode="border") if dense else alignment.warp(images)
    views = alignment.report(images, side) if alignment.report is not None else ReportViews()
    summary = {"seconds": round(alignment.seconds, 3), "trainable_parameters": alignment.parameters, "flipped": int(alignment.flips.sum()), "config": config.plain()}
    if objective is not None:
        summary.update(objective_before=objective["before"], objective_after=objective["after"])
    if backbone is not None:
        summary.update(backbone=backbone.name, masks=mask_source)
    if not method.features:
        summary.update(iterations=len(alignment.history) - 1, working_size=WORK_SIZE)
    edit_region = views.edit_region if views.edit_region is not None else centre_disk(side)
    edited = alignment.propagate_edit(demo_edit(edit_region), images)
    write_alignment(
        request.out, method=alignment.method, names=list(image_set.names), inputs=images.cpu(), aligned=aligned.cpu(), mode=mode,
        atlas={"mean": aligned.mean(0).cpu(), **views.atlas}, valid=image_set.valid, flipped=alignment.flips, objective=objective,
        transforms=alignment.transforms, grids=alignment.grids.cpu() if dense else None, summary=summary,
        masks=views.masks, method_scores=views.scores, extra_images={**views.images, "edit": edited.cpu()},
        descriptors=extract_descriptors(images, backbone) if backbone is not None else None,  # cached by the co-segmentation
        extra_files={"checkpoint.pt": sidecar} if sidecar is not None else None, left_out=image_set.skipped,
    )


# ----------------------------------------------------------------------------- 3-D congealing


def align_congeal3d(image_set: ImageSet, request: AlignRequest) -> Alignment:
    """``congeal align DIR --method congeal3d --shape SHAPE --out OUT``: per-image camera (JSON in
    ``summary.json``, matrices in ``mappings.pt``), NOCS map as RGB, mask, and the canonical render
    beside each input, plus an edit painted in the canonical frame onto every image.

    Masks come from the images' alpha channel if they have one, else from co-segmentation
    (Chapter 3). Nothing is written unless every stage succeeds. With ``request.cameras`` (a
    capture's camera file) the shape is fitted from the photos themselves instead
    (:func:`align_capture`). Chapter 7, "Align your own photos"; the method is Chapter 6's.

    Args:
        image_set: the loaded photos ``(N, 3, S, S)`` with their names (and alpha masks, if any).
        request: the run's settings; ``request.shape`` (or ``request.cameras``) is required.

    Returns:
        the :func:`congealing.congeal3d.fit` alignment the report shows (written to ``request.out``).

    Raises:
        UsageError: neither ``request.shape`` nor ``request.cameras`` is given.
    """
    if request.cameras is not None:
        return align_capture(image_set, request)
    shape_path = request.shape
    if shape_path is None:
        raise UsageError(
            "congeal align --method congeal3d needs --shape SHAPE_CKPT: a canonical shape saved by "
            "congealing.congeal3d.save_shape (Chapter 6 fits one for lego with congealing.congeal3d.fit_shape)"
        )
    progress = AlignProgress("congeal3d")
    progress.stage("loading the shape and the backbone")
    device = runtime.get_device(request.device)
    mode = runtime.get_mode(request.mode)
    field = congeal3d.load_shape(shape_path).to(device)
    config = congeal3d.photo_search_config(congeal3d.Congeal3DConfig.for_mode(mode, seed=request.seed))
    backbone = load_backbone(request.backbone, device)
    size = config.image_size
    images = F.interpolate(image_set.images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    alpha = image_set.masks if image_set.masks is not None and bool((image_set.masks < 0.5).any()) else None
    valid = None if image_set.valid is None else F.interpolate(image_set.valid, size=(size, size), mode="area")
    masks, mask_source = saliency_masks(images, backbone, None if alpha is None else F.interpolate(alpha, size=(size, size), mode="area"), valid)
    masks = (F.interpolate(masks, size=(size, size), mode="nearest") > 0.5).float()
    congeal3d.check_masks(masks, image_set.names)
    progress.stage("pose search, pose refinement, coordinate maps" + (" (bars below)" if progress.interactive else ""))
    alignment = congeal3d.fit(images, config, masks=masks, backbone=backbone, shape=field, progress=congeal3d.progress_bars(progress.interactive))
    progress.stage("writing the report")
    maps, refined = alignment.state["maps"], alignment.state["refined"]
    cams, fovs = refined["c2w"], refined["fov"]
    azimuth, elevation = congeal3d.camera_angles(cams)
    with torch.no_grad():
        views = congeal3d.spherical_cameras(torch.tensor([-90.0, 0.0, 90.0]), torch.tensor([30.0, 30.0, 30.0]), config.camera_radius).to(device)
        front = {k: v.cpu() for k, v in congeal3d.render(field, views, math.radians(37.5), size, config.samples_per_ray).items()}
    poses = [
        {"image": name, "c2w": c.tolist(), "fov_deg": math.degrees(float(f)), "azimuth_deg": float(a), "elevation_deg": float(e)}
        for name, c, f, a, e in zip(image_set.names, cams, fovs, azimuth, elevation)
    ]
    write_alignment(
        request.out, method="congeal3d", names=image_set.names, inputs=images, aligned=maps.renders["rgb"],
        atlas={f"canonical shape, azimuth {a}": view for a, view in zip((-90, 0, 90), front["rgb"])},
        mode=mode, transforms=cams,
        summary={"backbone": backbone.name, "masks": mask_source, "shape": str(shape_path), "seconds": alignment.state["seconds"], "poses": poses},
        extra_images={"NOCS map": maps.nocs, "edit (canonical stripes)": congeal3d.propagate_nocs_edit(maps, images, congeal3d.stripes_edit())},
        masks=masks.cpu(), coordinate_maps=(maps.nocs.cpu(), maps.mask.cpu()), poses=poses, left_out=image_set.skipped,
        objective={"name": "1 - soft IoU of the rendered silhouette and the mask", "before": refined["loss"][0], "after": refined["loss"][-1], "better": "lower"}
        if refined["loss"] else None,
        method_scores={"name": "silhouette IoU", "values": congeal3d.silhouette_iou(maps.renders["mask"].cpu(), masks.cpu()), "better": "higher",
                       "doc": "intersection over union of the shape rendered at the image's camera and the image's object mask, in [0, 1]; higher is better"},
    )
    progress.close()
    return alignment


def align_capture(image_set: ImageSet, request: AlignRequest) -> Alignment:
    """``congeal align DIR --method congeal3d --cameras PATH --out OUT``: 3-D congealing of a
    calibrated capture (:func:`congealing.congeal3d.captures.congeal_capture`), written as a report.

    ``request.capture_cameras``: the photos' cameras checked before any work
    (:func:`congealing.congeal3d.captures.check_capture`); ``request.cameras``: the file they came from;
    masks from ``--masks`` or the photos' alpha channels (``image_set.masks``), else
    co-segmentation that leaves the padding out (:func:`congealing.features.saliency_masks`). The
    report shows, for every posed photo (the others are the anchors that fit the shape), the
    photo in the model's square camera, the canonical shape rendered from the camera found, its
    NOCS map and an edit; ``summary.json`` adds each camera from the file (in the normalised
    frame), the angle between it and the camera found, the anchors, and what the importer
    ignored. Nothing is written unless every stage succeeds. Chapter 6, "From lego to a hand-held capture", runs the
    same :func:`congealing.congeal3d.captures.congeal_capture`.

    Args:
        image_set: the loaded photos ``(N, 3, S, S)`` (padded squares, ``valid`` their own pixels).
        request: the run's settings, with ``cameras`` and ``capture_cameras``.

    Returns:
        the posed photos' :func:`congealing.congeal3d.fit` alignment (the report is written to ``request.out``).
    """
    progress = AlignProgress("congeal3d")
    progress.stage("loading the backbone and making the masks")
    device = runtime.get_device(request.device)
    mode = runtime.get_mode(request.mode)
    config = congeal3d.Congeal3DConfig.for_mode(mode, seed=request.seed)
    backbone = load_backbone(request.backbone, device)
    cameras = request.capture_cameras
    cameras = cameras.subset([cameras.names.index(name) for name in image_set.names])  # photos the loader skipped have no say
    given = image_set.masks if image_set.masks is not None and bool((image_set.masks < 0.5).any()) else None
    masks, mask_source = saliency_masks(image_set.images, backbone, given, image_set.valid)
    masks = (F.interpolate(masks.float(), size=image_set.images.shape[-2:], mode="bilinear", align_corners=False) > 0.5).float()
    photos = congeal3d.photos_from_squares(image_set.images, image_set.valid)
    photo_masks = congeal3d.photos_from_squares(masks, image_set.valid)
    progress.stage("frame, shape, pose search, refinement, coordinate maps" + (" (bars below)" if progress.interactive else ""))
    out = congeal3d.congeal_capture(photos, photo_masks, cameras, config, backbone, device=device, progress=congeal3d.progress_bars(progress.interactive), maps=True)
    progress.stage("writing the report")
    alignment, views, posed = out["alignment"], out["views"], out["inputs"]
    field, maps, refined = out["field"], alignment.state["maps"], alignment.state["refined"]
    found, fovs = refined["c2w"].cpu(), refined["fov"].cpu()
    given_c2w = out["cameras"].c2w[posed]
    disagreement = congeal3d.rotation_angle_deg(found[:, :3, :3].double(), given_c2w[:, :3, :3].double())
    azimuth, elevation = congeal3d.camera_angles(found)
    names = [image_set.names[i] for i in posed]
    poses = [
        {"image": name, "c2w": c.tolist(), "fov_deg": math.degrees(float(f)), "azimuth_deg": float(a), "elevation_deg": float(e),
         "c2w_from_file": g.tolist(), "rotation_from_file_deg": float(d)}
        for name, c, f, a, e, g, d in zip(names, found, fovs, azimuth, elevation, given_c2w, disagreement)
    ]
    with torch.no_grad():
        turn = congeal3d.spherical_cameras(torch.tensor([-90.0, 0.0, 90.0]), torch.tensor([30.0, 30.0, 30.0]), config.camera_radius).to(field.density.device)
        front = {k: v.cpu() for k, v in congeal3d.render(field, turn, views.fov, config.image_size, config.samples_per_ray).items()}
    ignored = ["lens distortion (k1, k2, k3, k4, p1, p2): the model is a pinhole camera; undistort the photos first for exact geometry", *cameras.notes]
    summary = {
        "backbone": backbone.name, "masks": mask_source, "cameras_file": str(request.cameras), "importer_ignores": list(dict.fromkeys(ignored)),
        "anchors": [image_set.names[i] for i in out["anchors"]], "fov_deg": math.degrees(views.fov), "frame_scale": out["cameras"].scale,
        "rotation_from_file_median_deg": float(disagreement.median()), "seconds": out["seconds"], "poses": poses,
    }
    field_docs = {
        "cameras_file": "the camera file of the capture (--cameras)",
        "importer_ignores": "what the camera importer reads but does not model",
        "anchors": "the photos (whole object in view) whose cameras from the file fitted the canonical shape; the others are posed",
        "fov_deg": "the field of view of the square model camera every photo was resampled to (from the file's intrinsics)",
        "frame_scale": "the scale from the camera file's units to the model's (object about 2.4 units wide, cameras about 4 away)",
        "rotation_from_file_median_deg": "median angle between each posed photo's camera found by 3-D congealing and its camera in the file (same frame); lower is better",
    }
    with tempfile.TemporaryDirectory() as scratch:
        shape_path = Path(scratch) / "shape.pt"
        congeal3d.save_shape(field.cpu(), shape_path, anchors=summary["anchors"], cameras_file=str(request.cameras))
        write_alignment(
            request.out, method="congeal3d", names=names, inputs=views.images[posed], aligned=maps.renders["rgb"],
            atlas={f"canonical shape, azimuth {a}": view for a, view in zip((-90, 0, 90), front["rgb"])},
            mode=mode, transforms=found, summary=summary, field_docs=field_docs,
            extra_images={"NOCS map": maps.nocs, "edit (canonical stripes)": congeal3d.propagate_nocs_edit(maps, views.images[posed], congeal3d.stripes_edit())},
            masks=views.masks[posed].cpu(), valid=views.valid[posed].cpu(), coordinate_maps=(maps.nocs.cpu(), maps.mask.cpu()), poses=poses,
            objective={"name": "1 - soft IoU of the rendered silhouette and the mask", "before": refined["loss"][0], "after": refined["loss"][-1], "better": "lower"}
            if refined["loss"] else None,
            method_scores={"name": "silhouette IoU", "values": congeal3d.silhouette_iou(maps.renders["mask"].cpu() * views.valid[posed], (views.masks[posed] > 0.5).float() * views.valid[posed]),
                           "better": "higher", "doc": "intersection over union of the shape rendered at the camera found and the photo's object mask, over the photo's pixels, in [0, 1]; higher is better"},
            extra_files={"shape.pt": shape_path}, left_out=image_set.skipped,
        )
    progress.close()
    return alignment
