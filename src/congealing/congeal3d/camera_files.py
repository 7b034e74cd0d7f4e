"""Camera files of a capture: ``transforms.json`` and COLMAP's text model read into :class:`Cameras`.

* :func:`cameras_from_transforms` reads the contents of a ``transforms.json`` (instant-ngp /
  nerfstudio / NeRF-synthetic: ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` or
  ``camera_angle_x``, globally or per frame);
* :func:`cameras_from_colmap` reads COLMAP's text model (``cameras.txt`` + ``images.txt``);
* :func:`check_intrinsics` refuses intrinsics no photo can have, and :func:`match_photos` pairs
  the cameras with the photos of a folder by file name.

Both importers say what they ignore (lens distortion, instant-ngp's ``scale``/``offset``) in
``Cameras.notes`` and as warnings. Conventions: cameras are OpenGL camera-to-world ``(N, 4, 4)``
as in :mod:`congealing.congeal3d`; intrinsics ``fx, fy, cx, cy`` ``(N,)`` are in pixels with pixel
*centres* at integers (the convention of :mod:`congealing.warps`); files use pixel edges (COLMAP
and nerfstudio put the centre of the first pixel at 0.5), and the importers convert.
:func:`congealing.congeal3d.captures.load_cameras` chooses the importer for a path and normalises
the frame; Chapter 6, "From lego to a hand-held capture", describes the route.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field as dataclass_field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "Cameras", "cameras_from_transforms", "cameras_from_colmap", "check_intrinsics",
    "match_photos",
]


_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_IGNORED_NGP_KEYS = ("scale", "offset", "aabb_scale")


@dataclass
class Cameras:
    """Calibrated cameras of a capture.

    ``c2w`` ``(N, 4, 4)`` OpenGL camera-to-world; ``fx``, ``fy``, ``cx``, ``cy`` ``(N,)`` pixels
    (pixel centres at integers); ``width``, ``height`` ``(N,)`` the photo sizes the intrinsics refer
    to; ``names`` the image file names; ``notes``: what the importer ignored or assumed, one line
    each; ``transform``: the similarity ``(4, 4)`` that :func:`normalise_frame` applied to the
    file's frame (identity if none), with ``scale`` its scale factor.
    """

    c2w: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    names: list
    notes: list = dataclass_field(default_factory=list)
    transform: torch.Tensor = dataclass_field(default_factory=lambda: torch.eye(4))
    scale: float = 1.0

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def subset(self, index) -> "Cameras":
        """The cameras at ``index`` (a list of ints)."""
        index = list(index)
        pick = lambda t: t[index]  # noqa: E731
        return replace(self, c2w=pick(self.c2w), fx=pick(self.fx), fy=pick(self.fy), cx=pick(self.cx), cy=pick(self.cy),
                       width=pick(self.width), height=pick(self.height), names=[self.names[i] for i in index])


def _note(notes: list, message: str) -> None:
    if message not in notes:
        notes.append(message)
        warnings.warn(message, stacklevel=3)


def _check_rotations(c2w: torch.Tensor, names: list, source: str) -> None:
    if not torch.isfinite(c2w).all():
        raise InputError(f"{source}: a camera matrix has NaN or infinite entries")
    R = c2w[:, :3, :3].double()
    error = (R.transpose(1, 2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax(dim=(1, 2))
    bad = [names[i] for i in torch.nonzero((error > 1e-3) | (torch.det(R) < 0)).flatten().tolist()]
    if bad:
        raise InputError(f"{source}: the camera matrix of {', '.join(bad[:3])} is not a rotation plus a translation (scaled or mirrored axes)")


def _image_size(folder: Path | None, file_path: str, photos: Path | None = None) -> tuple[int, int] | None:
    """(width, height) of an image named in a camera file, or None if it cannot be found: at
    ``file_path`` under ``folder`` (the camera file's folder), else by its name in ``photos``."""
    from PIL import Image, ImageOps

    paths = [] if folder is None else [folder / file_path]
    if photos is not None:
        paths.append(photos / Path(file_path).name)
    for path in paths:
        for candidate in (path, path.with_suffix(".png"), path.with_suffix(".jpg")):
            if candidate.is_file():
                with Image.open(candidate) as img:
                    return ImageOps.exif_transpose(img).size  # as the loader reads it
    return None


def cameras_from_transforms(meta: dict, folder=None, source: str = "transforms.json", photos=None) -> Cameras:
    """Cameras from the contents of an instant-ngp / nerfstudio / NeRF-synthetic ``transforms.json``.

    Intrinsics are read per frame, falling back to the file's global keys: ``fl_x`` / ``fl_y``
    (else ``camera_angle_x`` / ``camera_angle_y``; ``fl_y`` defaults to ``fl_x``), ``cx`` / ``cy``
    (default: the image centre), ``w`` / ``h`` (else read from the image file under ``folder``, or
    of the same name in ``photos``).
    Poses are ``transform_matrix`` (OpenGL camera-to-world, as these formats store them; a 3x4
    matrix gets the row ``[0, 0, 0, 1]``). The principal point is moved from the file's pixel-edge
    convention to pixel centres (``cx - 0.5``). Lens distortion terms and instant-ngp's ``scale`` /
    ``offset`` / ``aabb_scale`` are ignored, with a warning and a line in ``notes``. Chapter 6,
    "From lego to a hand-held capture", reads a capture with it.

    Args:
        meta: the parsed JSON, a dict with ``frames`` (each with ``file_path`` and ``transform_matrix``)
            and optional global intrinsics.
        folder: the folder of the file, where images named by ``file_path`` are measured when ``w`` /
            ``h`` are missing (None: not looked for there).
        source: the file's name, used in messages.
        photos: another folder where the images are looked for by file name, or None.

    Returns:
        the :class:`Cameras`: ``c2w`` ``(N, 4, 4)``, ``fx``, ``fy``, ``cx``, ``cy`` ``(N,)`` float,
        ``width``, ``height`` ``(N,)`` long, ``names`` (the file names without folders) and ``notes``.

    Raises:
        InputError: no ``frames``; a frame without ``transform_matrix``, image size or focal length; a
            value that is not a number; a matrix that is not 4x4 (or 3x4), not finite, or not a rotation
            plus a translation; a fisheye or equirectangular camera model.

    Example:
        >>> import math, torch
        >>> from congealing.congeal3d.camera_files import cameras_from_transforms
        >>> meta = {"camera_angle_x": math.radians(90), "w": 4, "h": 4,
        ...         "frames": [{"file_path": "a.png", "transform_matrix": torch.eye(4).tolist()}]}
        >>> cams = cameras_from_transforms(meta)
        >>> float(cams.fx[0]), float(cams.cx[0])
        (2.0, 1.5)
    """
    folder = None if folder is None else Path(folder)
    photos = None if photos is None else Path(photos)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise InputError(f"{source} has no 'frames': it is not a transforms.json of instant-ngp, nerfstudio or NeRF-synthetic")
    notes: list = []
    keys = [k for k in _IGNORED_NGP_KEYS if k in meta]
    if keys:
        _note(notes, f"{source}: ignored {', '.join(keys)} (instant-ngp's scene scaling); the frame is normalised from the cameras and masks instead")
    values = {k: [] for k in ("fx", "fy", "cx", "cy", "w", "h")}
    poses, names = [], []
    for frame in frames:
        if not isinstance(frame, dict):
            raise InputError(f"{source}: frame {len(names)} is not an object with file_path and transform_matrix")
        name = str(frame.get("file_path", f"frame {len(names)}"))
        try:
            fx, fy, cx, cy, w, h, pose = _transforms_frame(frame, meta, name, folder, photos, source, notes)
        except (TypeError, ValueError, RuntimeError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"{source}: frame {name} has a value that is not a number or not a 4x4 matrix ({error})") from None
        for key, value in zip(("fx", "fy", "cx", "cy", "w", "h"), (fx, fy, cx, cy, w, h)):
            values[key].append(value)
        poses.append(pose)
        names.append(Path(name).name)
    c2w = torch.stack(poses)
    _check_rotations(c2w, names, source)
    t = lambda k: torch.tensor(values[k], dtype=torch.float32)  # noqa: E731
    return Cameras(c2w.float(), t("fx"), t("fy"), t("cx"), t("cy"), t("w").long(), t("h").long(), names, notes)


def _transforms_frame(frame: dict, meta: dict, name: str, folder, photos, source: str, notes: list) -> tuple:
    """One frame of a transforms.json: ``fx, fy, cx, cy, w, h`` (pixel centres at integers) and its pose ``(4, 4)``."""
    get = lambda key, default=None: frame.get(key, meta.get(key, default))  # noqa: E731
    if "transform_matrix" not in frame:
        raise InputError(f"{source}: frame {name} has no transform_matrix")
    w, h = get("w"), get("h")
    if w is None or h is None:
        size = _image_size(folder, name, photos)
        if size is None:
            raise InputError(f"{source}: frame {name} gives no image size (w, h) and its image was not found to measure it")
        w, h = size
    w, h = float(w), float(h)
    if get("fl_x") is not None:
        fx = float(get("fl_x"))
    elif get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
    else:
        raise InputError(f"{source}: frame {name} has neither fl_x nor camera_angle_x: the focal length is unknown")
    if get("fl_y") is not None:
        fy = float(get("fl_y"))
    elif get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * float(get("camera_angle_y")))
    else:
        fy = fx
    model = str(get("camera_model", "OPENCV")).upper()
    if "FISHEYE" in model or "EQUIRECT" in model:
        raise InputError(f"{source}: camera model {model} is not a pinhole; undistort the photos first (e.g. COLMAP's image_undistorter) and give a PINHOLE model")
    distortion = [k for k in _DISTORTION_KEYS if abs(float(get(k, 0.0) or 0.0)) > 0]
    if distortion:
        _note(notes, f"{source}: lens distortion ({', '.join(distortion)}) is ignored: the model is a pinhole camera; undistort the photos first for exact geometry")
    pose = torch.as_tensor(frame["transform_matrix"], dtype=torch.float64)
    if pose.shape == (3, 4):
        pose = torch.cat([pose, torch.tensor([[0.0, 0, 0, 1]], dtype=pose.dtype)])
    if pose.shape != (4, 4):
        raise InputError(f"{source}: transform_matrix of frame {name} must be 4x4 (or 3x4), got {tuple(pose.shape)}")
    # file: pixel edges at integers; here: pixel centres
    return fx, fy, float(get("cx", 0.5 * w)) - 0.5, float(get("cy", 0.5 * h)) - 0.5, w, h, pose


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(N, 3, 3)`` of unit quaternions ``(N, 4)`` ``(w, x, y, z)`` (COLMAP's order)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def cameras_from_colmap(folder) -> Cameras:
    """Cameras from a COLMAP text model: ``cameras.txt`` and ``images.txt`` in ``folder``.

    Models SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV are read (the radial and
    OpenCV distortion terms are ignored, with a warning and a line in ``notes``). COLMAP stores
    world-to-camera poses (a quaternion ``QW QX QY QZ`` and ``TX TY TZ``) in OpenCV axes (y down,
    z forward); they are inverted and turned into OpenGL camera-to-world. The principal point is moved
    from COLMAP's pixel-edge convention to pixel centres (``cx - 0.5``). Used by :func:`load_cameras`
    for the route of Chapter 6, "From lego to a hand-held capture".

    Args:
        folder: the folder holding ``cameras.txt`` and ``images.txt`` (a ``str`` or path).

    Returns:
        the :class:`Cameras` of the images in ``images.txt``'s order: ``c2w`` ``(N, 4, 4)``, ``fx``,
        ``fy``, ``cx``, ``cy`` ``(N,)`` float, ``width``, ``height`` ``(N,)`` long, ``names`` (as
        ``images.txt`` gives them) and ``notes``.

    Raises:
        InputError: an unsupported camera model, a line that cannot be read, an image whose camera is
            not defined, or no images at all.
        OSError: ``cameras.txt`` or ``images.txt`` cannot be read.
    """
    folder = Path(folder)
    cameras = {}
    for line in (folder / "cameras.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            camera_id, model, w, h, params = parts[0], parts[1].upper(), float(parts[2]), float(parts[3]), [float(p) for p in parts[4:]]
            if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
                fx = fy = params[0]
                cx, cy, distortion = params[1], params[2], params[3:]
            elif model in ("PINHOLE", "OPENCV"):
                fx, fy, cx, cy, distortion = params[0], params[1], params[2], params[3], params[4:]
            else:
                raise InputError(f"{folder / 'cameras.txt'}: camera model {model} is not supported; undistort with COLMAP's image_undistorter (it writes PINHOLE cameras)")
        except (ValueError, IndexError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"{folder / 'cameras.txt'}: cannot read the line {line.strip()[:60]!r} (CAMERA_ID MODEL WIDTH HEIGHT PARAMS...)") from None
        cameras[camera_id] = (fx, fy, cx, cy, w, h, any(abs(d) > 0 for d in distortion))
    notes: list = []
    rows, names = [], []
    lines = [line for line in (folder / "images.txt").read_text().splitlines() if not line.startswith("#")]
    for line in lines[::2]:  # every image takes two lines: its pose, then its 2-D points
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            q, t, camera_id, name = [float(p) for p in parts[1:5]], [float(p) for p in parts[5:8]], parts[8], parts[9]
        except ValueError:
            raise InputError(f"{folder / 'images.txt'}: cannot read the line {line.strip()[:60]!r} (IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)") from None
        if camera_id not in cameras:
            raise InputError(f"{folder / 'images.txt'}: image {name} uses camera {camera_id}, which cameras.txt does not define")
        rows.append((q, t, cameras[camera_id]))
        names.append(name)
    if not rows:
        raise InputError(f"{folder / 'images.txt'} lists no images")
    if any(r[2][6] for r in rows):
        _note(notes, f"{folder}: lens distortion of the COLMAP cameras is ignored: the model is a pinhole camera; undistort the photos first for exact geometry")
    R = _quaternion_to_matrix(torch.tensor([r[0] for r in rows], dtype=torch.float64))
    t = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    c2w[:, :3, :3] = R.transpose(1, 2) @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # OpenCV -> OpenGL axes
    c2w[:, :3, 3] = -(R.transpose(1, 2) @ t[:, :, None])[..., 0]
    intr = torch.tensor([r[2][:6] for r in rows], dtype=torch.float32)
    return Cameras(c2w.float(), intr[:, 0], intr[:, 1], intr[:, 2] - 0.5, intr[:, 3] - 0.5, intr[:, 4].long(), intr[:, 5].long(), names, notes)


def check_intrinsics(cameras: Cameras, source: str) -> None:
    """Refuse intrinsics no photo can have.

    A focal length or image size that is not a positive number, a principal point outside the photo, a
    horizontal field of view outside 1-170 degrees, or pixels more than twice as tall as wide (usually
    a focal length in other units, or ``w`` and ``h`` swapped) is refused, naming the first bad camera.
    :func:`congealing.congeal3d.captures.check_capture` runs it before any work (Chapter 6, "From lego
    to a hand-held capture").

    Args:
        cameras: the :class:`Cameras` to check (``fx``, ``fy``, ``cx``, ``cy``, ``width``, ``height``
            ``(N,)``).
        source: the camera file's name, used in messages.

    Returns:
        None when every camera is plausible.

    Raises:
        InputError: the first camera with impossible intrinsics, and why.

    Example:
        >>> import torch
        >>> from congealing.congeal3d.camera_files import Cameras, check_intrinsics
        >>> cams = Cameras(torch.eye(4)[None], torch.tensor([2.0]), torch.tensor([2.0]), torch.tensor([9.0]), torch.tensor([1.5]),
        ...                torch.tensor([4]), torch.tensor([4]), ["a.png"])
        >>> check_intrinsics(cams, "t.json")
        Traceback (most recent call last):
        ...
        congealing.errors.InputError: t.json: the principal point of a.png, (9.5, 2.0) px, lies outside its 4x4 photo
    """
    for i, name in enumerate(cameras.names):
        fx, fy, cx, cy = (float(t[i]) for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
        w, h = int(cameras.width[i]), int(cameras.height[i])
        if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0 or w <= 0 or h <= 0:
            raise InputError(f"{source}: the intrinsics of {name} are not positive finite numbers (fl_x {fx}, fl_y {fy}, w {w}, h {h})")
        if not (0 <= cx + 0.5 <= w and 0 <= cy + 0.5 <= h):
            raise InputError(f"{source}: the principal point of {name}, ({cx + 0.5:.1f}, {cy + 0.5:.1f}) px, lies outside its {w}x{h} photo")
        fov = math.degrees(2 * math.atan(0.5 * w / fx))
        if not 1.0 <= fov <= 170.0:
            raise InputError(f"{source}: the horizontal field of view of {name} is {fov:.2f} deg (fl_x {fx:g} px for a {w} px wide photo); "
                             "is the focal length in pixels of this photo size?")
        if not 0.5 <= fx / fy <= 2.0:
            raise InputError(f"{source}: {name} has fl_x {fx:g} and fl_y {fy:g} px: pixels {fx / fy:.2f} times as wide as tall; check the focal lengths and w / h")


def match_photos(cameras: Cameras, sizes: dict, source: str, folder) -> Cameras:
    """The cameras of the photos ``sizes``, matched by file name, in the folder's order.

    A photo matches the camera of the same file name or, if the camera file leaves out extensions,
    the only camera with the same name without one. Every photo needs a camera; cameras without a
    photo are left out with a warning. A photo whose shape differs from its camera's ``w`` x ``h``
    (aspect ratios more than 2 % apart: rotated or cropped after calibration) is refused; a uniformly
    resized one is fine (the intrinsics scale with it). :func:`congealing.congeal3d.captures.check_capture`
    runs it (Chapter 6, "From lego to a hand-held capture").

    Args:
        cameras: the :class:`Cameras` read from the camera file.
        sizes: photo file name -> ``(width, height)`` in pixels, in the folder's order.
        source: the camera file's name, used in messages.
        folder: the photos' folder, used in messages.

    Returns:
        the :class:`Cameras` of the photos, one per entry of ``sizes`` in its order, their ``names``
        the photos' file names.

    Raises:
        InputError: no photo is named in the camera file, a photo has no camera, or a photo's aspect
            ratio differs from its camera's.

    Example:
        >>> import torch
        >>> from congealing.congeal3d.camera_files import Cameras, match_photos
        >>> cams = Cameras(torch.eye(4).repeat(2, 1, 1), *[torch.ones(2)] * 4, torch.tensor([4, 4]), torch.tensor([2, 2]), ["a", "b"])
        >>> match_photos(cams, {"b.jpg": (8, 4), "a.jpg": (8, 4)}, "t.json", "photos").names
        ['b.jpg', 'a.jpg']
    """
    by_name = {name: i for i, name in enumerate(cameras.names)}
    by_stem: dict = {}
    for i, name in enumerate(cameras.names):
        by_stem.setdefault(Path(name).stem, []).append(i)
    index, missing = [], []
    for photo in sizes:
        i = by_name.get(photo)
        if i is None and len(by_stem.get(Path(photo).stem, [])) == 1:
            i = by_stem[Path(photo).stem][0]
        (missing.append(photo) if i is None else index.append(i))
    if not index:
        raise InputError(f"none of the {len(sizes)} photos in {folder} is named in {source} (it names e.g. {cameras.names[0]}, "
                         f"the folder holds e.g. {next(iter(sizes))}): give the camera file of these photos")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{len(missing)} photo(s) in {folder} have no camera in {source}: {', '.join(missing[:3])}{more}; "
                         "remove them from the folder or give the camera file that lists them")
    unused = len(cameras) - len(set(index))
    if unused:
        warnings.warn(f"{source} lists {unused} camera(s) whose photo is not in {folder}; they are left out", stacklevel=2)
    matched = cameras.subset(index)
    for k, (photo, (w, h)) in enumerate(sizes.items()):
        cw, ch = int(matched.width[k]), int(matched.height[k])
        if abs(w / h - cw / ch) > 0.02 * cw / ch:
            raise InputError(f"{photo} is {w}x{h} px but its camera in {source} is for a {cw}x{ch} photo (another shape: "
                             "rotated or cropped after calibration?); give the photos the cameras were computed for")
    matched.names = list(sizes)
    return matched
