"""A user's multi-view capture for 3-D congealing: its cameras loaded and normalised, and the exact
mapping of any pinhole photo to the square, centred camera model of :mod:`congealing.congeal3d`.

Chapter 6's model assumes lego's world: square images, a centred principal point, the object at
the origin inside the field's cube and cameras about 4 units away. A real capture has none of
that: portrait photos, a principal point off the centre, COLMAP's arbitrary frame and scale. This
module brings such a capture into the model's world without approximations:

* :func:`load_cameras` reads ``transforms.json`` (instant-ngp / nerfstudio: ``fl_x``, ``fl_y``,
  ``cx``, ``cy``, ``w``, ``h`` or ``camera_angle_x``, globally or per frame) or COLMAP's text model
  (``cameras.txt`` + ``images.txt``) with the importers of :mod:`congealing.congeal3d.camera_files`,
  which say what they ignore (lens distortion, instant-ngp's ``scale``/``offset``);
* :func:`normalise_frame` moves and scales the cameras so the object sits at the origin and fits
  the field's cube: the centre and size of a coarse visual hull of the masks (or, without masks,
  the point the optical axes pass closest to), with the world's up as ``+z`` (the direction
  orthogonal to every camera's x axis, as people hold cameras upright; the cameras' mean up
  direction if they are rolled);
* :func:`square_views` resamples every photo into a square image of a shared field of view with
  the principal point at the centre and square pixels. A pinhole camera's intrinsics can be changed
  by resampling its image alone (same centre, same rotation), so this is exact; pixels that fall
  outside the photo are marked invalid, never as background.

Conventions: cameras are OpenGL camera-to-world ``(N, 4, 4)`` as in :mod:`congealing.congeal3d`.
Intrinsics ``fx, fy, cx, cy`` ``(N,)`` are in pixels with pixel *centres* at integers (the
convention of :mod:`congealing.warps`); files use pixel edges (COLMAP and nerfstudio put the
centre of the first pixel at 0.5), and the importers convert.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import IMAGE_SUFFIXES
from ..errors import InputError
from ..features import saliency_masks
from .camera_files import Cameras, cameras_from_colmap, cameras_from_transforms, check_intrinsics, match_photos
from .config import Congeal3DConfig
from .field import choose_anchor_views, fit_shape
from .pipeline import find_poses, fit

__all__ = [
    "load_cameras", "check_capture", "normalise_frame", "SquareViews", "square_views",
    "object_is_whole", "known_fov_config", "congeal_capture", "photos_from_squares",
    "pad_to_squares", "cosegment_photos",
]


def load_cameras(path, masks: list | None = None, normalise: bool = True, radius: float = 4.0, photos=None) -> Cameras:
    """Read a capture's cameras and normalise their frame.

    ``path`` is a ``transforms.json`` file (:func:`cameras_from_transforms`), or a folder holding a
    COLMAP text model (``cameras.txt`` and ``images.txt`` in it, its ``sparse/0`` or its ``sparse``;
    :func:`cameras_from_colmap`) or a ``transforms.json``. The frame is then normalised
    (:func:`normalise_frame`) unless ``normalise`` is False. Warns (and lists in ``notes``) what the
    importers ignore. Chapter 6, "From lego to a hand-held capture".

    Args:
        path: the camera file or folder (a ``str`` or path).
        masks: optional object masks, one ``(1, h, w)`` tensor per camera (any resolution of the
            photo); with them the frame is centred and scaled on the visual hull.
        normalise: move the cameras into the model's frame (False: the file's frame as it is).
        radius: the cameras' median distance to the object after normalising.
        photos: the folder of the photos, where image sizes a ``transforms.json`` leaves out are
            measured (besides its own folder), or None.

    Returns:
        the :class:`~congealing.congeal3d.camera_files.Cameras` (``c2w`` ``(N, 4, 4)``, intrinsics
        ``(N,)``), normalised if ``normalise``.

    Raises:
        InputError: no such file or folder, a folder with neither camera format, a file that is not
            valid JSON text, or any error of the importers and :func:`normalise_frame`.
    """
    path = Path(path)
    if path.is_dir():
        for folder in (path, path / "sparse" / "0", path / "sparse"):
            if (folder / "cameras.txt").is_file() and (folder / "images.txt").is_file():
                cameras = cameras_from_colmap(folder)
                break
        else:
            if (path / "transforms.json").is_file():
                return load_cameras(path / "transforms.json", masks, normalise, radius, photos)
            raise InputError(f"{path}: no transforms.json, and no COLMAP text model (cameras.txt + images.txt; convert a binary model with 'colmap model_converter --output_type TXT')")
    elif path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); give a transforms.json or a COLMAP text folder") from None
        except UnicodeDecodeError:
            raise InputError(f"{path} is not a text file; give a transforms.json or a COLMAP text folder (cameras.txt + images.txt)") from None
        cameras = cameras_from_transforms(meta, path.parent, str(path), photos)
    else:
        raise InputError(f"{path}: no such camera file or folder")
    return normalise_frame(cameras, masks, radius) if normalise else cameras


def check_capture(folder, camera_path, min_photos: int | None = None) -> Cameras:
    """Check a capture before any work and return the photos' cameras.

    The camera file (or COLMAP folder) at ``camera_path`` must exist and parse (:func:`load_cameras`,
    not normalised), its intrinsics must be sane (:func:`check_intrinsics`), ``folder`` must hold at
    least ``min_photos`` readable photos, and every photo must have a camera of its shape
    (:func:`match_photos`; sizes read from the file headers only, unreadable files skipped).
    ``congeal align --cameras`` runs it first; the route is Chapter 6's "From lego to a hand-held
    capture".

    Args:
        folder: the folder of photos.
        camera_path: the ``transforms.json`` or COLMAP text folder.
        min_photos: the fewest readable photos accepted (None: the anchors of
            :class:`congealing.congeal3d.Congeal3DConfig` plus two to pose).

    Returns:
        the photos' :class:`~congealing.congeal3d.camera_files.Cameras`, not yet normalised, in the
        folder's (sorted) order.

    Raises:
        InputError: ``camera_path`` does not exist or cannot be used, impossible intrinsics, too few
            photos, or photos without a matching camera.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    min_photos = Congeal3DConfig().anchor_views + 2 if min_photos is None else min_photos
    folder, camera_path = Path(folder), Path(camera_path)
    if not camera_path.exists():
        raise InputError(f"--cameras {camera_path}: no such file or folder; give a transforms.json or a COLMAP text folder (cameras.txt + images.txt)")
    source = str(camera_path)
    cameras = load_cameras(camera_path, normalise=False, photos=folder)
    check_intrinsics(cameras, source)
    sizes = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()):
        try:
            with Image.open(path) as img:
                sizes[path.name] = ImageOps.exif_transpose(img).size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # the image loader names unreadable files (or skips them with --skip-unreadable)
    if len(sizes) < min_photos:
        raise InputError(f"{folder} holds {len(sizes)} readable photo(s); 3-D congealing of a capture needs at least {min_photos} "
                         "(the anchors that fit the shape and at least two to pose)")
    return match_photos(cameras, sizes, source, folder)


def _axes_meeting_point(c2w: torch.Tensor) -> torch.Tensor:
    """The point ``(3,)`` nearest, in least squares, to every camera's optical axis."""
    origins, directions = c2w[:, :3, 3].double(), -c2w[:, :3, 2].double()
    projector = torch.eye(3, dtype=torch.float64) - directions[:, :, None] * directions[:, None, :]
    A, b = projector.sum(dim=0), (projector @ origins[:, :, None]).sum(dim=0)[:, 0]
    if torch.linalg.cond(A) > 1e6:
        raise InputError("the cameras' optical axes are (nearly) parallel: they do not look at a common object; 3-D congealing needs views around one object")
    return torch.linalg.solve(A, b).float()


def _rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rotation ``(3, 3)`` taking unit vector ``a`` to unit vector ``b`` (Rodrigues)."""
    a, b = F.normalize(a, dim=0), F.normalize(b, dim=0)
    v, c = torch.linalg.cross(a, b), float(a @ b)
    if c < -1 + 1e-8:  # opposite: half a turn about any axis orthogonal to a
        axis = F.normalize(torch.linalg.cross(a, torch.tensor([1.0, 0, 0]) if abs(float(a[0])) < 0.9 else torch.tensor([0.0, 1, 0])), dim=0)
        return 2 * axis[:, None] * axis[None] - torch.eye(3)
    K = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return torch.eye(3) + K + K @ K / (1 + c)


def _apply_similarity(c2w: torch.Tensor, transform: torch.Tensor, scale: float) -> torch.Tensor:
    """Cameras after the world moves by ``x -> transform @ x`` (a rotation, scaled by ``scale``, plus a translation)."""
    out = transform @ c2w
    out[:, :3, :3] = out[:, :3, :3] / scale
    return out


def _coarse_hull(cameras: Cameras, masks: list, extent: float, resolution: int = 48) -> torch.Tensor:
    """Voxel centres ``(M, 3)`` of a coarse visual hull in ``[-extent, extent]^3``. A voxel is kept
    if every view whose photo it projects into sees it on the object (mask > 0.5), at least two
    views do, and it lies in at least half of the photos (the object is what most photos frame);
    views it falls outside of have no say (close-ups cut the object off)."""
    axis = torch.linspace(-extent, extent, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    votes, framed = torch.zeros(points.shape[0]), torch.zeros(points.shape[0])
    keep = torch.ones(points.shape[0], dtype=torch.bool)
    for i, mask in enumerate(masks):
        mask = mask.float().reshape(1, 1, *mask.shape[-2:])
        h, w = mask.shape[-2:]
        sx, sy = w / float(cameras.width[i]), h / float(cameras.height[i])
        R, centre = cameras.c2w[i, :3, :3], cameras.c2w[i, :3, 3]
        local = (points - centre) @ R
        depth = -local[:, 2]
        u = ((cameras.cx[i] + 0.5 + cameras.fx[i] * local[:, 0] / depth) * sx) / w * 2 - 1  # normalised, align_corners=False
        v = ((cameras.cy[i] + 0.5 - cameras.fy[i] * local[:, 1] / depth) * sy) / h * 2 - 1
        inside = (depth > 0) & (u.abs() < 1) & (v.abs() < 1)
        seen = F.grid_sample(mask, torch.stack([u, v], dim=-1)[None, :, None], mode="bilinear", align_corners=False).flatten()
        keep &= ~inside | (seen > 0.5)
        votes += (inside & (seen > 0.5)).float()
        framed += inside.float()
    return points[keep & (votes >= 2) & (framed >= 0.5 * len(masks))]


def _world_up(c2w: torch.Tensor) -> torch.Tensor:
    """The world's up ``(3,)`` seen from cameras ``(N, 4, 4)`` held upright (no roll): the direction
    orthogonal to every camera's x axis (the least eigenvector of their scatter), signed like the
    cameras' mean up vector. The mean up vector alone tilts towards the cameras when they all look
    down from one side (a front-only arc), by as much as their elevation. If the cameras are
    rolled (no direction is orthogonal to all x axes), the mean up vector is used.
    """
    right, mean_up = c2w[:, :3, 0].double(), c2w[:, :3, 1].double().mean(dim=0)
    values, vectors = torch.linalg.eigh(right.T @ right)
    up = vectors[:, 0]
    if c2w.shape[0] < 2 or values[0] > 0.05 * values[1]:
        return F.normalize(mean_up, dim=0).float()
    return (up if float(up @ mean_up) >= 0 else -up).float()


def normalise_frame(cameras: Cameras, masks: list | None = None, radius: float = 4.0, object_half_size: float = 1.2) -> Cameras:
    """Move the capture into the model's frame: object at the origin, world up ``+z``.

    1. The world is rotated so its up (:func:`_world_up`: people hold cameras upright) becomes
       ``+z``, translated so the point the optical axes pass closest to is the origin, and scaled
       so the cameras' median distance to it is ``radius`` (lego's cameras are 4.03 away).
    2. With ``masks`` (one ``(1, h, w)`` per camera), a coarse visual hull is carved in that frame
       (:func:`_coarse_hull`) and the frame is moved again so the hull's box is centred at the
       origin with its largest half-side ``object_half_size`` (lego's: 1.2, in a field of bound 1.5).

    The applied similarity is composed into ``cameras.transform`` and ``cameras.scale``. Chapter 6,
    "From lego to a hand-held capture".

    Args:
        cameras: the :class:`~congealing.congeal3d.camera_files.Cameras`, ``c2w`` ``(N, 4, 4)`` in
            any frame.
        masks: object masks, one ``(1, h, w)`` tensor per camera, or None (no visual hull step).
        radius: the cameras' median distance to the origin after step 1.
        object_half_size: the largest half-side of the hull's box after step 2.

    Returns:
        the cameras with ``c2w`` ``(N, 4, 4)`` in the model's frame (intrinsics unchanged) and
        ``transform`` ``(4, 4)`` / ``scale`` updated.

    Raises:
        InputError: the optical axes are (nearly) parallel, the number of masks is not the number of
            cameras, or the visual hull is empty (masks and cameras do not agree).

    Example:
        >>> import torch
        >>> from congealing.congeal3d import spherical_cameras
        >>> from congealing.congeal3d.camera_files import Cameras
        >>> from congealing.congeal3d.captures import normalise_frame
        >>> c2w = spherical_cameras(torch.tensor([0.0, 90.0, 180.0]), torch.tensor([10.0, 20.0, 30.0]), 4.0)
        >>> c2w[:, :3, 3] = 0.5 * c2w[:, :3, 3] + torch.tensor([1.0, 2.0, 3.0])  # another scale and origin
        >>> n = len(c2w); cams = Cameras(c2w, *[torch.ones(n)] * 4, torch.ones(n).long(), torch.ones(n).long(), ["a", "b", "c"])
        >>> normalise_frame(cams).c2w[:, :3, 3].norm(dim=-1).round(decimals=3)
        tensor([4., 4., 4.])
    """
    c2w = cameras.c2w.float()
    up = _world_up(c2w)
    transform = torch.eye(4)
    transform[:3, :3] = _rotation_between(up, torch.tensor([0.0, 0.0, 1.0]))
    c2w = transform @ c2w
    centre = _axes_meeting_point(c2w)
    scale = radius / float((c2w[:, :3, 3] - centre).norm(dim=-1).median())
    step = torch.eye(4)
    step[:3, :3] *= scale
    step[:3, 3] = -scale * centre
    transform, total_scale = step @ transform, scale
    c2w = _apply_similarity(c2w, step, scale)
    if masks is not None:
        if len(masks) != c2w.shape[0]:
            raise InputError(f"{len(masks)} masks for {c2w.shape[0]} cameras: give one mask per photo")
        moved = replace(cameras, c2w=c2w)
        hull = _coarse_hull(moved, masks, extent=0.75 * radius)
        if hull.shape[0] < 8:
            raise InputError("the masks and the cameras do not agree on any common object (their visual hull is empty): "
                             "check that the camera file belongs to these photos and that the masks mark the object")
        low, high = hull.amin(dim=0), hull.amax(dim=0)
        scale = object_half_size / float(0.5 * (high - low).max())
        step = torch.eye(4)
        step[:3, :3] *= scale
        step[:3, 3] = -scale * 0.5 * (low + high)
        transform, total_scale = step @ transform, total_scale * scale
        c2w = _apply_similarity(c2w, step, scale)
    return replace(cameras, c2w=c2w, transform=transform @ cameras.transform, scale=total_scale * cameras.scale)


@dataclass
class SquareViews:
    """Photos resampled to the square, centred model: ``images`` ``(N, 3, S, S)``, ``masks`` and
    ``valid`` ``(N, 1, S, S)`` (``valid``: the pixels that lie inside the photo), the shared
    horizontal (= vertical) field of view ``fov`` in radians, and the cameras ``c2w``."""

    images: torch.Tensor
    masks: torch.Tensor | None
    valid: torch.Tensor
    fov: float
    c2w: torch.Tensor


def _tangent_extent(cameras: Cameras) -> torch.Tensor:
    """Per camera ``(N,)``: the largest |tangent| from the principal point to a photo edge."""
    left, right = (cameras.cx + 0.5) / cameras.fx, (cameras.width - cameras.cx - 0.5) / cameras.fx
    top, bottom = (cameras.cy + 0.5) / cameras.fy, (cameras.height - cameras.cy - 0.5) / cameras.fy
    return torch.stack([left, right, top, bottom], dim=1).amax(dim=1)


def _object_extent(cameras: Cameras, masks: list, margin: float) -> torch.Tensor:
    """Per camera ``(N,)``: the largest |tangent| from the principal point to an object pixel, times ``1 + margin``."""
    out = []
    for i, mask in enumerate(masks):
        h, w = mask.shape[-2:]
        ys, xs = torch.nonzero(mask.reshape(h, w) > 0.5, as_tuple=True)
        if xs.numel() == 0:
            out.append(float(_tangent_extent(cameras.subset([i]))[0]))
            continue
        sx, sy = float(cameras.width[i]) / w, float(cameras.height[i]) / h
        tx = ((xs.float() + 0.5) * sx - 0.5 - cameras.cx[i]).abs().max() / cameras.fx[i]
        ty = ((ys.float() + 0.5) * sy - 0.5 - cameras.cy[i]).abs().max() / cameras.fy[i]
        out.append(float(torch.maximum(tx, ty)) * (1 + margin))
    return torch.tensor(out)


def square_views(images: list, cameras: Cameras, size: int, masks: list | None = None, fov: float | None = None, background: float = 1.0, margin: float = 0.1) -> SquareViews:
    """Resample photos into square images of one centred pinhole camera.

    Every photo (at any resolution of the photo its camera describes) becomes a ``size`` x ``size``
    image with a centred principal point, square pixels and field of view ``fov``. Default: the
    smallest that contains every object mask with ``margin`` to spare (without masks: every whole
    photo); the photos' background beyond it is dropped.

    Exact for a pinhole camera: the square pixel ``(u, v)`` sees the ray of tangent
    ``((u - c) / f, (v - c) / f)``, which is photo pixel ``(cx + fx tan_x, cy + fy tan_y)``. Outside
    the photo the square shows ``background`` with ``valid`` 0. Chapter 6, "From lego to a hand-held
    capture".

    Args:
        images: the photos, one ``(C, h, w)`` tensor per camera.
        cameras: their :class:`~congealing.congeal3d.camera_files.Cameras` (the poses are kept).
        size: the side of the squares in pixels.
        masks: object masks, one ``(1, h, w)`` tensor per camera, or None.
        fov: the squares' field of view in radians (None: chosen as above).
        background: the value of the pixels outside the photo.
        margin: the relative room left around the masks (or photos) when ``fov`` is None.

    Returns:
        a :class:`SquareViews`: ``images`` ``(N, C, size, size)``, ``masks`` ``(N, 1, size, size)``
        (None without masks), ``valid`` ``(N, 1, size, size)``, ``fov`` (radians) and ``c2w``
        ``(N, 4, 4)`` (a copy of the cameras').

    Raises:
        InputError: the number of photos is not the number of cameras.

    Example:
        >>> import math, torch
        >>> from congealing.congeal3d.camera_files import Cameras
        >>> from congealing.congeal3d.captures import square_views
        >>> cams = Cameras(torch.eye(4)[None], torch.tensor([2.0]), torch.tensor([2.0]), torch.tensor([1.5]), torch.tensor([1.5]),
        ...                torch.tensor([4]), torch.tensor([4]), ["a"])
        >>> views = square_views([torch.rand(3, 4, 4)], cams, 4)
        >>> round(math.degrees(views.fov), 1), bool(views.valid.all())
        (90.0, True)
    """
    if len(images) != len(cameras):
        raise InputError(f"{len(images)} photos for {len(cameras)} cameras: the camera file must list every photo")
    if fov is None:
        extent = _tangent_extent(cameras) if masks is None else _object_extent(cameras, masks, margin)
        fov = 2 * math.atan(float(extent.max()))
    focal = 0.5 * size / math.tan(0.5 * fov)
    pixel = torch.arange(size, dtype=torch.float32) - 0.5 * (size - 1)
    tan_y, tan_x = torch.meshgrid(pixel / focal, pixel / focal, indexing="ij")
    out_images, out_masks, out_valid = [], [], []
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        sx, sy = w / float(cameras.width[i]), h / float(cameras.height[i])
        x = (cameras.cx[i] + 0.5 + cameras.fx[i] * tan_x) * sx  # photo coordinates, pixel edges at integers
        y = (cameras.cy[i] + 0.5 + cameras.fy[i] * tan_y) * sy
        grid = torch.stack([x / w * 2 - 1, y / h * 2 - 1], dim=-1)[None]
        valid = ((grid.abs() <= 1).all(dim=-1)).float()[:, None]
        sampled = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out_images.append(sampled * valid + background * (1 - valid))
        out_valid.append(valid)
        if masks is not None:
            out_masks.append(F.grid_sample(masks[i].reshape(1, 1, *masks[i].shape[-2:]).float(), grid, mode="bilinear", align_corners=False) * valid)
    return SquareViews(torch.cat(out_images), torch.cat(out_masks) if masks is not None else None, torch.cat(out_valid), fov, cameras.c2w.clone())


def object_is_whole(masks: torch.Tensor, valid: torch.Tensor | None = None, margin: int = 1) -> torch.Tensor:
    """Whether each view shows its whole object: no object pixel near the picture's edge.

    An object pixel (mask > 0.5) within ``margin`` pixels of the square's border or of an invalid
    (outside-the-photo) pixel makes the view not whole. A view that cuts the object off cannot be an
    anchor: the visual hull would lose what lies outside its frame. Chapter 6, "From lego to a
    hand-held capture".

    Args:
        masks: object masks ``(N, 1, H, W)``.
        valid: ``(N, 1, H, W)``, the pixels inside the photo (> 0.5), or None (every pixel).
        margin: the distance in pixels an object pixel must keep from the edge.

    Returns:
        ``(N,)`` bool, True where the object is whole.

    Example:
        >>> import torch
        >>> from congealing.congeal3d.captures import object_is_whole
        >>> m = torch.zeros(2, 1, 6, 6); m[0, 0, 2:4, 2:4] = 1; m[1, 0, 0:3, 2:4] = 1
        >>> object_is_whole(m).tolist()
        [True, False]
    """
    inside = torch.ones_like(masks) if valid is None else (valid > 0.5).float()
    inside = F.pad(inside, (1, 1, 1, 1), value=0.0)
    eroded = -F.max_pool2d(-inside, 2 * margin + 1, stride=1, padding=margin)[..., 1:-1, 1:-1]  # erode the valid area
    return ~((masks > 0.5) & (eroded < 0.5)).flatten(1).any(dim=1)


def known_fov_config(config, fov: float):
    """The 3-D congealing settings for inputs of known field of view.

    The pose search tries that one field of view (``search_fovs_deg``), and refinement keeps it
    (``refine_fov`` False); every other setting is ``config``'s. Chapter 6, "From lego to a
    hand-held capture".

    Args:
        config: a :class:`congealing.congeal3d.Congeal3DConfig`.
        fov: the inputs' field of view in radians.

    Returns:
        a copy of ``config`` with ``search_fovs_deg = (degrees(fov),)`` and ``refine_fov = False``.

    Example:
        >>> import math
        >>> from congealing.congeal3d import Congeal3DConfig
        >>> from congealing.congeal3d.captures import known_fov_config
        >>> cfg = known_fov_config(Congeal3DConfig(), math.radians(40.0))
        >>> [round(f, 6) for f in cfg.search_fovs_deg], cfg.refine_fov
        ([40.0], False)
    """
    return replace(config, search_fovs_deg=(math.degrees(fov),), refine_fov=False)


def congeal_capture(photos: list, masks: list, cameras: Cameras, config, backbone=None, anchors: int | None = None, device=None, progress=None, whole_anchors: bool = True, inputs: int | None = None, maps: bool = False) -> dict:
    """3-D congealing of a calibrated capture: the offline route of Chapter 6 on a user's photos.

    The frame is normalised on the masks' visual hull (:func:`normalise_frame`), every photo is
    resampled to the square model (:func:`square_views`), ``anchors`` views that show the whole
    object (:func:`object_is_whole`; all views if ``whole_anchors`` is False) and are spread around
    it fit the shape with their cameras (:func:`congealing.congeal3d.field.fit_shape`, on white),
    and the other photos are posed by search and IoU refinement at the known field of view
    (:func:`known_fov_config`), ignoring the square's pixels outside each photo. Chapter 6, "From
    lego to a hand-held capture".

    Args:
        photos: one ``(3, h, w)`` tensor per camera.
        masks: one ``(1, h, w)`` object mask per camera.
        cameras: the photos' :class:`~congealing.congeal3d.camera_files.Cameras`, in any frame.
        config: a :class:`congealing.congeal3d.Congeal3DConfig` (``image_size``, ``anchor_views``, ...).
        backbone: the feature backbone of the pose search, or None.
        anchors: how many anchor views fit the shape (None: ``config.anchor_views``).
        device: where the shape is fitted (None: the CPU).
        progress: ``progress(iterable, desc)`` wrapping each stage's loop (e.g. tqdm), or None.
        whole_anchors: take anchors only among the views that show the whole object.
        inputs: pose only that many of the other photos (evenly spaced; None: all).
        maps: also fit the canonical coordinate maps of the posed photos (the report's NOCS maps;
            slower), through :func:`congealing.congeal3d.fit`.

    Returns:
        a dict: ``cameras`` (normalised), ``views`` (:class:`SquareViews`, ``(N, ., S, S)``),
        ``anchors`` and ``inputs`` (lists of indices), ``field`` (the fitted
        :class:`~congealing.congeal3d.VoxelField`), ``poses`` (:func:`congealing.congeal3d.find_poses`'
        ``search``, ``refined`` and ``seconds`` of the inputs), ``alignment`` (the
        :class:`~congealing.alignment.Alignment` of :func:`congealing.congeal3d.fit` if ``maps``, else
        None), ``config`` (the known-field-of-view one used) and ``seconds`` (per stage).

    Raises:
        InputError: the cameras, masks and photos do not agree (see :func:`normalise_frame` and
            :func:`square_views`), or fewer than two photos are left to pose after the anchors.
        ValueError: fewer than 2 anchor views (from ``fit_shape``).
        FloatingPointError: the shape's loss diverged (from ``fit_shape``).
    """
    start = time.perf_counter()
    cameras = normalise_frame(cameras, masks)
    views = square_views(photos, cameras, config.image_size, masks)
    whole = object_is_whole(views.masks, views.valid) if whole_anchors else None
    anchor_index = choose_anchor_views(views.c2w, anchors or config.anchor_views, whole)
    rest = [i for i in range(len(cameras)) if i not in anchor_index]
    if len(rest) < 2:
        raise InputError(f"{len(cameras)} photos leave {len(rest)} to pose after {len(anchor_index)} anchors: give more photos")
    inputs = rest if inputs is None or inputs >= len(rest) else [rest[round(k * len(rest) / inputs)] for k in range(inputs)]
    m = views.masks[anchor_index]
    on_white = views.images[anchor_index] * m + (1 - m)
    field = fit_shape(on_white, m, views.c2w[anchor_index], views.fov, config, progress, device)
    seconds = {"frame_and_shape": round(time.perf_counter() - start, 2)}
    known = known_fov_config(config, views.fov)
    images, input_masks, valid = views.images[inputs], views.masks[inputs], views.valid[inputs]
    alignment = fit(images, known, masks=input_masks, backbone=backbone, shape=field, valid=valid, progress=progress) if maps else None
    poses = alignment.state if maps else find_poses(field, images, input_masks, known, backbone, valid=valid, progress=progress)
    return {"cameras": cameras, "views": views, "anchors": anchor_index, "inputs": inputs, "field": field, "poses": poses,
            "alignment": alignment, "config": known, "seconds": {**seconds, **poses["seconds"]}}


def photos_from_squares(squares: torch.Tensor, valid: torch.Tensor) -> list:
    """Undo the folder loader's padding: each square cropped to its photo's own pixels.

    The crop is the bounding box of the pixels where ``valid`` > 0.5
    (:attr:`congealing.data.ImageSet.valid`). The loader resized the whole photo onto that ``h`` x
    ``w`` block, so the crop is the photo at a smaller scale: its camera's intrinsics still apply.
    ``congeal align --cameras`` uses it before :func:`congeal_capture`.

    Args:
        squares: padded images or maps ``(N, C, S, S)``.
        valid: ``(N, 1, S, S)``, 1 on each photo's own pixels.

    Returns:
        a list of ``N`` tensors ``(C, h, w)``, one per photo.

    Example:
        >>> import torch
        >>> from congealing.congeal3d.captures import photos_from_squares
        >>> valid = torch.zeros(1, 1, 4, 4); valid[..., 1:3, :] = 1
        >>> photos_from_squares(torch.rand(1, 3, 4, 4), valid)[0].shape
        torch.Size([3, 2, 4])
    """
    out = []
    for square, inside in zip(squares, valid):
        rows = torch.nonzero(inside[0].amax(dim=1) > 0.5).flatten()
        cols = torch.nonzero(inside[0].amax(dim=0) > 0.5).flatten()
        out.append(square[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1])
    return out


def pad_to_squares(photos: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos padded to ``size`` x ``size`` squares the way the folder loader pads them.

    Each photo is resized (bilinear, antialiased) so its longer side is ``size`` and centred on a
    zero square. :func:`photos_from_squares` undoes it.

    Args:
        photos: one ``(C, h, w)`` tensor per photo.
        size: the side of the squares in pixels.

    Returns:
        ``squares`` ``(N, C, size, size)`` (zero outside the photos) and ``valid``
        ``(N, 1, size, size)``, 1 on each photo's own pixels.

    Example:
        >>> import torch
        >>> from congealing.congeal3d.captures import pad_to_squares
        >>> squares, valid = pad_to_squares([torch.ones(3, 8, 4)], 4)
        >>> squares.shape, valid[0, 0].sum().item()
        (torch.Size([1, 3, 4, 4]), 8.0)
    """
    squares, valid = [], []
    for photo in photos:
        h, w = photo.shape[-2:]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        resized = F.interpolate(photo[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        square = torch.zeros(photo.shape[0], size, size)
        square[:, top : top + nh, left : left + nw] = resized
        inside = torch.zeros(1, size, size)
        inside[:, top : top + nh, left : left + nw] = 1.0
        squares.append(square)
        valid.append(inside)
    return torch.stack(squares), torch.stack(valid)


def cosegment_photos(photos: list, backbone, size: int = 256) -> list:
    """Object masks of a capture's photos by co-segmentation, as ``congeal align`` makes them without ``--masks``.

    The photos are padded to squares (:func:`pad_to_squares`), segmented by
    :func:`congealing.features.saliency_masks` with the padding left out, the masks are upsampled to
    the squares and thresholded at 0.5, and cropped back (:func:`photos_from_squares`).

    Args:
        photos: one ``(3, h, w)`` tensor in ``[0, 1]`` per photo.
        backbone: the :class:`congealing.features.Backbone` whose descriptors are co-segmented.
        size: the side of the squares the photos are padded to.

    Returns:
        a list with one binary ``(1, h', w')`` mask per photo (the photo at the squares' scale, longer
        side ``size``; its camera still applies).
    """
    squares, valid = pad_to_squares(photos, size)
    masks, _ = saliency_masks(squares, backbone, None, valid)
    masks = (F.interpolate(masks.float(), size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
    return photos_from_squares(masks, valid)
