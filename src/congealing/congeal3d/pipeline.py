"""The whole pipeline (Algorithm 1, lines 4-9) for a set of inputs with a given canonical shape."""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

import torch

from .config import Congeal3DConfig
from .field import VoxelField
from .maps import CoordinateMaps, fit_coordinate_maps
from .poses import check_masks, place_camera, refine_poses, render_candidates, search_poses, square_boxes

__all__ = ["Congealed3D", "congeal", "progress_bars"]


@dataclass
class Congealed3D:
    """What :func:`congeal` returns: cameras after search and after refinement, the coordinate maps
    and the seconds each stage took."""

    search: dict
    refined: dict
    maps: CoordinateMaps | None
    seconds: dict = dataclass_field(default_factory=dict)


def congeal(field: VoxelField, images: torch.Tensor, masks: torch.Tensor, config: Congeal3DConfig, backbone=None, search: bool = True, refine: bool = True, maps: bool = True, progress=None, candidates=None, valid=None) -> Congealed3D:
    """Lines 4-9 of Algorithm 1 for a set of inputs with a given canonical shape.

    ``search=False`` is the "no pose initialisation" ablation (every camera starts at the first
    candidate, azimuth -169, elevation -84 degrees, framed on the input); ``refine=False`` is "no
    IoU refinement". ``valid``: the pixels inside each photo (refinement ignores the rest). Raises a
    clear error for a set of one or images without a usable mask.
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
    refined = refine_poses(field, masks, found["c2w"], found["fov"], config, progress=progress, valid=valid) if refine else {"c2w": found["c2w"], "fov": found["fov"], "loss": [], "trajectory": [found["c2w"]], "seconds": 0.0}
    coordinate_maps = fit_coordinate_maps(field, images, masks, refined["c2w"], refined["fov"], config, backbone, progress) if maps else None
    seconds = {"pose_search": round(found["seconds"], 2), "refinement": round(refined["seconds"], 2)}
    if coordinate_maps is not None:
        seconds["mappings"] = round(coordinate_maps.seconds, 2)
    return Congealed3D(found, refined, coordinate_maps, seconds)


def progress_bars(enabled: bool = True):
    """The ``progress`` argument of :func:`fit_shape`, :func:`refine_poses`, :func:`congeal` and
    :func:`congealing.congeal3d.captures.congeal_capture` as tqdm bars (``progress(iterable, desc)``
    wraps a loop), or None (no bars) when ``enabled`` is False.

    >>> progress_bars(False) is None
    True
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda iterable, desc: tqdm(iterable, desc=desc, leave=False)
