"""3-D congealing: one canonical shape, a camera per image, and correspondence through 3-D.

The pipeline of Zhang et al., *3D Congealing: 3D-Aware Image Alignment in the Wild* (2024),
Algorithm 1, in plain PyTorch:

1. a **canonical shape** ``theta``: a radiance field with density, colour and a canonical-coordinate
   (NOCS) field (:class:`VoxelField`, :func:`render`). The paper distils it from a text-to-image
   diffusion model (:mod:`congealing.diffusion_prior`); the offline route fits it to a few anchor
   views with known cameras (:func:`fit_shape`);
2. **pose search**: every input is compared, by the semantic distance of dense descriptors, with
   renders from a grid of field-of-view x azimuth x elevation cameras (:func:`search_poses`);
3. **pose refinement**: each camera moves in se(3) (and its field of view) to maximise the IoU of
   the rendered and the input masks (:func:`refine_poses`);
4. **canonical coordinate maps**: a smooth 2-D warp from each input to its render, then the NOCS
   lookup, map every pixel to a 3-D canonical point (:func:`fit_coordinate_maps`); inverting the
   map of another image by nearest neighbours gives image-to-image correspondence
   (:func:`transfer_points`).

:func:`fit` runs steps 2-4 behind the common protocol of every method (:mod:`congealing.alignment`):
``fit(images, config, *, masks, backbone, device, callback, shape)`` returns an
:class:`~congealing.alignment.Alignment` of the point-map form, with the cameras and the
coordinate maps in its ``state``.

Conventions
-----------
* Cameras follow NeRF-synthetic (OpenGL): a ``(B, 4, 4)`` camera-to-world matrix ``c2w`` whose
  columns are the camera's x (right), y (up) and z (backwards) axes and its centre; the camera
  looks along ``-z``. The world's up is ``+z``. A field of view ``fov`` is the full horizontal
  angle in radians; images are square.
* Pixel coordinates put pixel centres at integers, as in :mod:`congealing.warps`; the principal
  point is the image centre ``(size - 1) / 2``.
* Images, masks and coordinate maps are ``(B, C, H, W)``; NOCS values lie in ``[0, 1]^3``.

Layout
------
The package holds the algorithm only, one concept per module: :mod:`~congealing.congeal3d.config`
(the settings), :mod:`~congealing.congeal3d.cameras` (cameras, rays, se(3)),
:mod:`~congealing.congeal3d.field` (the voxel field, its renderer and the offline shape fit),
:mod:`~congealing.congeal3d.poses` (pose search, refinement, pose errors),
:mod:`~congealing.congeal3d.maps` (coordinate maps, transfer, edits),
:mod:`~congealing.congeal3d.pipeline` (:func:`find_poses`, :func:`fit`), :mod:`~congealing.congeal3d.camera_files`
(a capture's camera files) and :mod:`~congealing.congeal3d.captures` (a user's calibrated capture).
Every public name is re-exported here. The lego benchmarks live in
:mod:`congealing.lego` (evaluation), ``congeal align --method congeal3d`` in
:mod:`congealing.align` (application).
"""
from __future__ import annotations

from .config import SHAPE_FORMAT_VERSION, Congeal3DConfig, PHOTO_SEARCH_FOVS_DEG, photo_search_config
from .cameras import (
    look_at, spherical_cameras, camera_angles, focal_length, camera_rays, project_points, se3_basis, se3_exp,
    rotation_angle_deg, random_cameras, relative_rotations,
)
from .field import (
    VoxelField, render_rays, render, choose_anchor_views, farthest_points, fit_shape, MIN_ANCHOR_IOU, check_shape,
    carve_visual_hull, silhouette_iou, soft_iou, density_from_raw, surface_points, set_shape_box, save_shape,
    load_shape,
)
from .poses import (
    check_masks, square_boxes, crop_to_boxes, candidate_cameras, semantic_distance, place_camera, render_candidates,
    search_poses, refine_poses, similarity_procrustes, relative_pose_errors, pose_errors,
)
from .maps import (
    CoordinateMaps, huber_tv, fit_coordinate_maps, transfer_points, propagate_nocs_edit, stripes_edit,
    filter_by_pose,
)
from .pipeline import find_poses, fit, progress_bars
from .camera_files import Cameras, cameras_from_transforms, cameras_from_colmap, check_intrinsics, match_photos
from .captures import (
    load_cameras, normalise_frame, SquareViews, square_views, object_is_whole, known_fov_config, check_capture,
    congeal_capture, pad_to_squares, photos_from_squares, cosegment_photos,
)

__all__ = [
    "SHAPE_FORMAT_VERSION", "Congeal3DConfig", "PHOTO_SEARCH_FOVS_DEG", "photo_search_config",
    "look_at", "spherical_cameras", "camera_angles", "focal_length", "camera_rays",
    "project_points", "se3_basis", "se3_exp", "rotation_angle_deg", "random_cameras",
    "relative_rotations", "VoxelField", "render_rays", "render", "choose_anchor_views",
    "farthest_points", "fit_shape", "MIN_ANCHOR_IOU", "check_shape", "carve_visual_hull",
    "silhouette_iou", "soft_iou", "density_from_raw", "surface_points", "set_shape_box",
    "save_shape", "load_shape", "check_masks", "square_boxes", "crop_to_boxes", "candidate_cameras",
    "semantic_distance", "place_camera", "render_candidates", "search_poses", "refine_poses",
    "similarity_procrustes", "relative_pose_errors", "pose_errors", "CoordinateMaps", "huber_tv",
    "fit_coordinate_maps", "transfer_points", "propagate_nocs_edit", "stripes_edit",
    "filter_by_pose", "find_poses", "fit", "progress_bars", "Cameras", "load_cameras",
    "cameras_from_transforms", "cameras_from_colmap", "normalise_frame", "SquareViews",
    "square_views", "object_is_whole", "known_fov_config", "check_intrinsics", "match_photos",
    "check_capture", "congeal_capture", "pad_to_squares", "photos_from_squares", "cosegment_photos",
]
