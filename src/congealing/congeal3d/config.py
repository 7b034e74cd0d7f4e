"""The settings of 3-D congealing (:class:`Congeal3DConfig`) and the pose search's field-of-view grid for photos.

Taught in Chapter 6, "3D congealing" (its note on quick and full mode prints the config) and
"From lego to a hand-held capture" (:data:`PHOTO_SEARCH_FOVS_DEG`).

>>> Congeal3DConfig.for_mode("quick").image_size, Congeal3DConfig().image_size
(96, 200)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from ..runtime import ModeConfig

__all__ = ["SHAPE_FORMAT_VERSION", "Congeal3DConfig", "PHOTO_SEARCH_FOVS_DEG", "photo_search_config"]


#: Bumped whenever the layout of a saved shape changes; :func:`load_shape` refuses other versions.
SHAPE_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Congeal3DConfig(ModeConfig):
    """Every setting of the 3-D congealing pipeline; the defaults are the full-mode (paper-like) settings.

    A frozen :class:`congealing.runtime.ModeConfig`. Chapter 6's opening note on quick and full mode
    prints it and refers here for why each quick setting is what it is. ``for_mode("quick")``
    (2 CPU cores, a few minutes for the lego chapter) changes only sizes and iteration counts, never
    the objectives:

    * ``image_size`` 200 -> 96, ``grid_resolution`` 128 -> 64, ``samples_per_ray`` 128 -> 64:
      a 96-px view still shows the lego's pose; rendering cost scales with pixels x samples.
    * ``shape_steps`` 3000 -> 400, ``rays_per_step`` 8192 -> 1024: Chapter 6's quick run fits the
      shape three times, and the cost of a fit is steps x rays.
    * ``search_render_size`` 128 -> 64, ``search_samples`` 128 -> 32, ``crop_size`` 224 -> 128,
      ``descriptor_grid`` 28 -> 16 (the 768 candidate renders dominate the search; a silhouette
      and coarse appearance need few samples per ray).
    * ``refine_steps`` 1000 -> 100, ``rays_per_image`` 1024 -> 256 (IoU over a random subset of
      pixels each step; an unbiased estimate of the same loss, noisier with fewer pixels).
    * ``mapping_steps`` 4000 -> 300, ``mapping_size`` 64 -> 32 and ``global_delta`` 10 -> 5 (the
      same fraction of the smaller map).

    Attributes:
        image_size: side in pixels of the inputs and the anchor views.
        anchor_views: anchor views with known cameras the offline shape is fitted to.
        grid_resolution: voxels per side of the canonical field (:class:`VoxelField`).
        bound: the field lives in ``[-bound, bound]^3``.
        samples_per_ray: volume-rendering samples per ray.
        shape_steps, rays_per_step, shape_lr: the shape fit's Adam steps, rays per step and rate.
        mask_weight, tv_weight: weights of the opacity-vs-mask and total-variation terms of the fit.
        density_threshold: marching-cubes level of the shape's bounding box (:func:`set_shape_box`).
        search_fovs_deg, search_azimuths, search_elevations, camera_radius: the pose search's
            candidate grid (Alg. 1, lines 4-7; :func:`candidate_cameras`).
        search_render_size, search_samples: size and samples per ray of the candidate renders.
        crop_size, crop_margin, descriptor_grid: the crops compared by the search and their
            descriptor grid.
        refine_steps, refine_lr, rays_per_image, refine_fov: pose refinement (Alg. 1, line 8; Eq. 8
            with lambda_zeta = 0, lambda_IoU = 1); ``refine_fov`` also refines the field of view.
        mapping_steps, mapping_lr, mapping_size: the coordinate maps' fit (Alg. 1, line 9; Eq. 10 and
            Appendix B) and the side of its offset grid.
        lambda_l2, lambda_rigid_global, lambda_rigid_local, lambda_tv: weights of the maps' closeness,
            rigidity at ``global_delta`` pixels, rigidity at 1 pixel and Huber total variation.
        global_delta, huber_delta: the global rigidity's pixel distance and the Huber threshold.
        seed: seed of every random draw of the pipeline (rays, pixels).

    Example:
        >>> quick = Congeal3DConfig.for_mode("quick")
        >>> quick.shape_steps, quick.rays_per_step, quick.mask_weight == Congeal3DConfig().mask_weight
        (400, 1024, True)
    """

    # data
    image_size: int = 200
    anchor_views: int = 8
    # canonical field (offline route)
    grid_resolution: int = 128
    bound: float = 1.5  # the field lives in [-bound, bound]^3 (lego fits in [-1.2, 1.2]^3)
    samples_per_ray: int = 128
    shape_steps: int = 3000
    rays_per_step: int = 8192
    shape_lr: float = 0.1
    mask_weight: float = 1.0
    tv_weight: float = 1e-4
    density_threshold: float = 5.0  # marching-cubes level for the shape's bounding box
    # pose search (Alg. 1, lines 4-7)
    search_fovs_deg: tuple = (15.0, 37.5, 60.0)
    search_azimuths: int = 16
    search_elevations: int = 16
    camera_radius: float = 4.0
    search_render_size: int = 128
    search_samples: int = 128
    crop_size: int = 224
    crop_margin: float = 0.1
    descriptor_grid: int = 28
    # pose refinement (Alg. 1, line 8; Eq. 8 with lambda_zeta = 0, lambda_IoU = 1)
    refine_steps: int = 1000
    refine_lr: float = 5e-3
    rays_per_image: int = 1024
    refine_fov: bool = True
    # canonical coordinate maps (Alg. 1, line 9; Eq. 10 and Appendix B)
    mapping_steps: int = 4000
    mapping_lr: float = 0.01
    mapping_size: int = 64
    lambda_l2: float = 1.0
    lambda_rigid_global: float = 1.0  # rigidity at Delta = 10 px (of a 64-px map)
    lambda_rigid_local: float = 1.0  # rigidity at Delta = 1 px
    lambda_tv: float = 1.0  # Huber total variation
    global_delta: int = 10
    huber_delta: float = 0.01
    seed: int = 0
    # rays_per_step 1024 rather than 2048 halved each quick shape fit and lowered the held-out mask IoU
    # by about 0.02 when it was chosen (commit 6d9d0f0); refine's 256 pixels per image replaced 512 then.
    QUICK: ClassVar[dict] = dict(
        image_size=96, grid_resolution=64, samples_per_ray=64, shape_steps=400, rays_per_step=1024,
        search_render_size=64, search_samples=32, crop_size=128, descriptor_grid=16, refine_steps=100, rays_per_image=256,
        mapping_steps=300, mapping_size=32, global_delta=5,
    )


#: The search's fields of view for a user's photos of unknown intrinsics: the benchmark's grid plus
#: 75 degrees. A phone's main camera (26 mm equivalent) sees 2 atan(18 / 26) = 69 degrees along
#: the photo's long side, which the folder loader's square padding keeps; 60 degrees refined by
#: IoU does not reliably reach it. Known intrinsics replace the grid with the one true field of
#: view (:func:`congealing.congeal3d.captures.known_fov_config`).
PHOTO_SEARCH_FOVS_DEG = (15.0, 37.5, 60.0, 75.0)


def photo_search_config(config: Congeal3DConfig) -> Congeal3DConfig:
    """The settings for a user's photos of unknown field of view.

    The pose search tries :data:`PHOTO_SEARCH_FOVS_DEG` (a third more candidate renders than the
    benchmark's grid); everything else is ``config``'s. Chapter 6, "From lego to a hand-held capture".

    Args:
        config: the settings to start from.

    Returns:
        a new :class:`Congeal3DConfig` with ``search_fovs_deg = PHOTO_SEARCH_FOVS_DEG``.

    Example:
        >>> max(photo_search_config(Congeal3DConfig()).search_fovs_deg) >= 70
        True
    """
    return replace(config, search_fovs_deg=PHOTO_SEARCH_FOVS_DEG)
