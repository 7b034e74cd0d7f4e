"""The whole pipeline (Algorithm 1, lines 4-9) for a set of inputs with a given canonical shape,
behind the common protocol of :mod:`congealing.alignment` (:func:`fit`)."""
from __future__ import annotations

import time

import torch

from ..alignment import Alignment
from .config import Congeal3DConfig
from .field import VoxelField
from .maps import fit_coordinate_maps, transfer_points
from .poses import check_masks, place_camera, refine_poses, render_candidates, search_poses, square_boxes

__all__ = ["find_poses", "fit", "progress_bars"]


def find_poses(field: VoxelField, images: torch.Tensor, masks: torch.Tensor, config: Congeal3DConfig, backbone=None, *, search: bool = True, refine: bool = True, candidates: dict | None = None, valid: torch.Tensor | None = None, progress=None) -> dict:
    """Lines 4-8 of Algorithm 1: a camera per input, by pose search and IoU refinement.

    ``search=False`` is the "no pose initialisation" ablation of Chapter 6 (every camera starts at
    the first candidate, azimuth -169, elevation -84 degrees, framed on the input); ``refine=False``
    is "no IoU refinement" (Chapter 6, "Pose refinement", runs both). :func:`fit` calls it, then
    fits the coordinate maps.

    Args:
        field: the canonical shape (:class:`VoxelField`); the search renders it where it lives.
        images: ``(N, 3, S, S)`` inputs in ``[0, 1]``.
        masks: ``(N, 1, S, S)`` their object masks.
        config: the settings (:class:`Congeal3DConfig`).
        backbone: a :class:`congealing.features.Backbone`, a name, or None (the default one).
        search: run the pose search (False: the first candidate, the ablation).
        refine: run the IoU refinement (False: the search's cameras).
        candidates: the search's renders (:func:`render_candidates`), shared between calls; None
            renders them.
        valid: ``(N, 1, S, S)`` the pixels inside each photo (refinement ignores the rest), or None.
        progress: ``progress(iterable, desc)`` wrapping the refinement loop (:func:`progress_bars`).

    Returns:
        ``{"search": ..., "refined": ..., "seconds": {"pose_search", "refinement"}}``:
        :func:`search_poses`' and :func:`refine_poses`' results (``c2w`` ``(N, 4, 4)``, ``fov``
        ``(N,)``, ``loss`` per refinement step, ...).

    Raises:
        ValueError: fewer than 2 images.
        congealing.errors.InputError: an image has no usable mask.
    """
    if images.shape[0] < 2:
        raise ValueError("3-D congealing aligns a set: give at least 2 images")
    check_masks(masks)
    if search:
        found = search_poses(field, images, masks, config, backbone, candidates)
    else:
        cams = render_candidates(field, config) if candidates is None else candidates
        first = torch.zeros(images.shape[0], dtype=torch.long)
        boxes = square_boxes(cams["mask"][first], config.crop_margin)
        c2w = place_camera(cams["c2w"][first], cams["fov"][first], boxes, config.search_render_size, square_boxes(masks, config.crop_margin), images.shape[-1])
        found = {"c2w": c2w, "fov": cams["fov"][first].clone(), "index": first, "distance": None, "candidates": cams, "seconds": 0.0}
    refined = (refine_poses(field, masks, found["c2w"], found["fov"], config, progress=progress, valid=valid) if refine
               else {"c2w": found["c2w"], "fov": found["fov"], "loss": [], "trajectory": [found["c2w"]], "seconds": 0.0})
    return {"search": found, "refined": refined, "seconds": {"pose_search": round(found["seconds"], 2), "refinement": round(refined["seconds"], 2)}}


def fit(images: torch.Tensor, config: Congeal3DConfig, *, masks: torch.Tensor | None = None, backbone=None, device=None, callback=None, shape: VoxelField, candidates: dict | None = None, valid: torch.Tensor | None = None, progress=None) -> Alignment:
    """3-D congealing behind the common protocol (:mod:`congealing.alignment`): Algorithm 1, lines 4-9.

    Poses every input on the canonical ``shape`` (:func:`find_poses`: search, then IoU refinement)
    and fits its canonical coordinate map (:func:`fit_coordinate_maps`). The returned
    :class:`~congealing.alignment.Alignment` is of the point-map form: 3-D congealing has no 2-D
    warp into a common frame, and keypoints go from image to image through the canonical shape
    (:func:`transfer_points`). Taught in Chapter 6 ("Pose search", "Pose refinement",
    "Canonical coordinates and correspondence"); Chapter 7, "One protocol, every method", lists
    it with the other methods.

    Args:
        images: ``(N, 3, S, S)`` square inputs in ``[0, 1]``, ``N >= 2``.
        config: the settings (:class:`Congeal3DConfig`, ``for_mode(mode, **overrides)``).
        masks: ``(N, 1, S, S)`` the objects' masks; required (3-D congealing poses silhouettes).
        backbone: a :class:`congealing.features.Backbone`, a name, or None (the default one).
        device: where the shape is moved first (``nn.Module.to``, in place); None: where it is.
        callback: ``callback(done, total)`` after every refinement and mapping step (``total``:
            ``refine_steps + mapping_steps``).
        shape: the canonical shape (:class:`VoxelField`, e.g. :func:`fit_shape`'s or
            :func:`load_shape`'s); required, keyword only.
        candidates: the search's renders (:func:`render_candidates`) to reuse, or None.
        valid: ``(N, 1, S, S)`` the pixels inside each photo, or None (all).
        progress: ``progress(iterable, desc)`` wrapping each stage's loop (:func:`progress_bars`).

    Returns:
        an :class:`~congealing.alignment.Alignment` with ``method`` ``"congeal3d"``, ``size``
        ``(S, S)``, no ``transforms`` or ``grids``, ``point_map`` the coordinate maps' transfer,
        ``flips`` all False, ``masks`` the masks, ``history`` one ``{"loss": 1 - soft IoU}`` per
        refinement step, ``seconds`` the whole fit, ``parameters`` ``N (6 + 1)`` camera
        parameters (6 without the field of view) plus the ``2 mapping_size^2`` offsets per map,
        and ``state``: ``search`` and ``refined`` (:func:`find_poses`), ``c2w`` ``(N, 4, 4)`` and
        ``fov`` ``(N,)`` (the refined cameras), ``maps`` (:class:`CoordinateMaps`) and
        ``seconds`` per stage (``pose_search``, ``refinement``, ``mappings``).

    Raises:
        ValueError: ``masks`` is None, or fewer than 2 images.
        congealing.errors.InputError: an image has no usable mask.
    """
    if masks is None:
        raise ValueError("3-D congealing poses silhouettes: give masks (N, 1, S, S)")
    start = time.perf_counter()
    if device is not None:
        shape = shape.to(device)
    progress = _counting(progress, callback, config.refine_steps + config.mapping_steps)
    poses = find_poses(shape, images, masks, config, backbone, candidates=candidates, valid=valid, progress=progress)
    refined = poses["refined"]
    maps = fit_coordinate_maps(shape, images, masks, refined["c2w"], refined["fov"], config, backbone, progress)
    N = images.shape[0]
    parameters = N * (6 + int(config.refine_fov)) + N * 2 * config.mapping_size**2
    state = {**poses, "c2w": refined["c2w"], "fov": refined["fov"], "maps": maps, "seconds": {**poses["seconds"], "mappings": round(maps.seconds, 2)}}
    return Alignment(
        "congeal3d", tuple(images.shape[-2:]), flips=torch.zeros(N, dtype=torch.bool), masks=masks,
        history=[{"loss": loss} for loss in refined["loss"]], seconds=time.perf_counter() - start, parameters=parameters,
        state=state, point_map=lambda src, tgt, points: transfer_points(maps, src, tgt, points),
    )


def _counting(progress, callback, total: int):
    """The ``progress(iterable, desc)`` the stages take, also calling ``callback(done, total)``
    after every step of every stage (None: ``progress`` unchanged)."""
    if callback is None:
        return progress
    done = 0

    def wrap(iterable, desc):
        nonlocal done
        for item in (iterable if progress is None else progress(iterable, desc)):
            yield item
            done += 1
            callback(done, total)

    return wrap


def progress_bars(enabled: bool = True):
    """The ``progress`` argument of :func:`fit_shape`, :func:`refine_poses`, :func:`fit` and
    :func:`congealing.congeal3d.captures.congeal_capture` as tqdm bars (``progress(iterable, desc)``
    wraps a loop), or None (no bars) when ``enabled`` is False.

    Args:
        enabled: False for no bars.

    Returns:
        the wrapper, or None.

    Example:
        >>> progress_bars(False) is None
        True
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda iterable, desc: tqdm(iterable, desc=desc, leave=False)
