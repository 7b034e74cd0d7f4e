"""The benchmarks of 3-D congealing on NeRF-synthetic *lego* (Chapters 6 and 7) and their protocols.

* :func:`evaluate_lego` (``congeal eval --dataset lego --method congeal3d``): the lego views split
  into anchors that fit the shape and inputs to pose (:func:`load_lego_benchmark`), rendered and
  with per-image appearance changes (:func:`vary_appearance`); camera errors and PCK of keypoint
  transfer through 3-D, binned by the relative rotation of the two views (:func:`pck_by_rotation`),
  against nearest-neighbour matching and the planar methods (:func:`planar_transfers`);
* :func:`evaluate_lego_capture` (``congeal eval --dataset lego-capture --method congeal3d``): lego
  made to look like a hand-held capture (:func:`make_capture_benchmark`), posed from its
  ``transforms.json`` (:func:`evaluate_capture`).

Both take a :class:`LegoRequest` (typed settings, no command line) and return a JSON-ready record
whose ``table`` is the plain-text table the command prints. The algorithm itself is the
:mod:`congealing.congeal3d` package.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field as dataclass_field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import congeal3d, metrics, neural, runtime, spacejam, warps
from .congeal3d import (
    Congeal3DConfig, VoxelField, camera_angles, cameras_from_transforms, choose_anchor_views, congeal_capture, cosegment_photos,
    farthest_points, fit_shape, object_is_whole, pose_errors, progress_bars, project_points, random_cameras, relative_pose_errors,
    relative_rotations, render, render_candidates, se3_exp, surface_points,
)
from .data import load_nerf_synthetic
from .errors import UsageError
from .evaluation import descriptor_transfer, peak_memory_mb, threshold_lengths, transfer_all_pairs
from .features import extract_descriptors, load_backbone
from .metrics import mask_to_box

__all__ = [
    "LegoRequest", "vary_appearance", "LegoBenchmark", "KeypointSet", "load_lego_benchmark", "visible_points", "add_surface_keypoints",
    "pck_by_rotation", "evaluate_lego", "planar_transfers", "format_lego_table", "CaptureBenchmark", "brick_wall",
    "make_capture_benchmark", "evaluate_capture", "format_capture_rows", "evaluate_lego_capture",
]


@dataclass(frozen=True)
class LegoRequest:
    """What to evaluate on lego: the arguments of :func:`evaluate_lego` and :func:`evaluate_lego_capture`
    (``congeal eval`` builds one from its flags).

    Attributes:
        method: ``"congeal3d"`` (the only method these benchmarks run).
        mode: ``"quick"`` or ``"full"`` (None: :func:`congealing.runtime.get_mode`).
        seed: the seed of the config, the appearance changes and the random-camera baseline.
        device: a name or :class:`torch.device` (None: the best available).
        backbone: a :func:`congealing.features.load_backbone` name (None: its default).
        data: the data folder (None: ``$CONGEAL_DATA``, else the download cache).
        planar: also run SpaceJAM and Neural Congealing on the varied inputs (:func:`evaluate_lego`).
        capture: add the capture-like row to the lego table (None: in full mode only).
        progress: show progress bars.

    Example:
        >>> LegoRequest(mode="quick").method
        'congeal3d'
    """

    method: str = "congeal3d"
    mode: str | None = None
    seed: int = 0
    device: str | torch.device | None = None
    backbone: str | None = None
    data: str | Path | None = None
    planar: bool = True
    capture: bool | None = None
    progress: bool = True


# ----------------------------------------------------------------------------- the lego benchmark


def vary_appearance(images: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Give every image its own look: a colour tint, contrast and gamma, a directional light ramp on
    the object, and a new background (a random colour or a smooth random texture).

    The offline stand-in for the paper's in-the-wild captures (NAVI's changing illumination and
    backgrounds), shown in Chapter 6, "From 2-D to 3-D". The object's silhouette, and so its mask,
    is unchanged. The random numbers are drawn on the CPU: the same looks on any device.

    Args:
        images: ``(N, 3, S, S)`` in ``[0, 1]``.
        masks: ``(N, 1, S, S)`` the objects.
        seed: the looks' seed.

    Returns:
        ``(N, 3, S, S)`` in ``[0, 1]``.

    Example:
        >>> masks = torch.zeros(2, 1, 8, 8); masks[:, :, 2:6, 2:6] = 1
        >>> varied = vary_appearance(torch.full((2, 3, 8, 8), 0.5), masks, seed=0)
        >>> varied.shape, torch.equal(varied, vary_appearance(torch.full((2, 3, 8, 8), 0.5), masks, seed=0))
        (torch.Size([2, 3, 8, 8]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    N, _, S, _ = images.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(images.device)  # noqa: E731  drawn on the CPU: the same looks on any device
    tint = 0.6 + 0.8 * rand(N, 3, 1, 1)
    gamma = 0.6 + 0.9 * rand(N, 1, 1, 1)
    contrast = 0.6 + 0.8 * rand(N, 1, 1, 1)
    angle = 2 * math.pi * rand(N, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S, device=images.device), torch.linspace(-1, 1, S, device=images.device), indexing="ij")
    ramp = 0.75 + 0.35 * (angle.cos() * xs + angle.sin() * ys)[:, None]
    foreground = ((images.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5) * tint * ramp
    texture = F.interpolate(rand(N, 3, 6, 6), size=(S, S), mode="bicubic", align_corners=False)
    solid = rand(N, 3, 1, 1).expand(N, 3, S, S)
    background = torch.where(rand(N, 1, 1, 1) < 0.5, texture, solid)
    return (foreground * masks + background * (1 - masks)).clamp(0, 1)


@dataclass
class LegoBenchmark:
    """The Chapter 6 benchmark on NeRF-synthetic *lego* (:func:`load_lego_benchmark`; "From 2-D to 3-D").

    Attributes:
        anchor_index: the views that stand in for the generative shape prior.
        anchor_images: ``(A, 3, S, S)`` those views.
        anchor_masks: ``(A, 1, S, S)``.
        anchor_c2w: ``(A, 4, 4)`` their true cameras.
        input_index: the views to pose.
        images: ``(N, 3, S, S)`` the inputs as rendered.
        masks: ``(N, 1, S, S)``.
        c2w: ``(N, 4, 4)`` their true cameras (used only to score).
        fov: the true field of view (radians).
        varied: ``(N, 3, S, S)`` the inputs with per-image appearance changes (:func:`vary_appearance`).
        names: the inputs' file names.
        keypoints: ``(N, K, 2)`` fixed 3-D points on the object projected into each input
            (:func:`add_surface_keypoints`), or None before.
        visible: ``(N, K)`` bool.
        boxes: ``(N, 4)`` the PCK boxes (the masks' boxes).
        points3d: ``(K, 3)`` the points.
        part_names: ``p00``, ``p01``, ...
    """

    anchor_index: list
    anchor_images: torch.Tensor
    anchor_masks: torch.Tensor
    anchor_c2w: torch.Tensor
    input_index: list
    images: torch.Tensor
    masks: torch.Tensor
    c2w: torch.Tensor
    fov: float
    varied: torch.Tensor
    names: list
    keypoints: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    points3d: torch.Tensor | None = None
    part_names: list = dataclass_field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def keypoint_set(self, varied: bool = False) -> "KeypointSet":
        """The inputs over a white background and their keypoints, for the harness of
        :mod:`congealing.evaluation` (:func:`~congealing.evaluation.transfer_all_pairs`).

        Args:
            varied: the inputs with appearance changes instead of as rendered.

        Returns:
            a :class:`KeypointSet`.
        """
        images = self.varied if varied else self.images
        return KeypointSet(images * self.masks + (1 - self.masks), self.keypoints, self.visible, self.boxes, self.part_names)


@dataclass
class KeypointSet:
    """Images with keypoints: the fields :mod:`congealing.evaluation` reads from a CUB class.

    Attributes:
        images: ``(N, 3, S, S)``.
        keypoints: ``(N, K, 2)`` pixel ``(x, y)``.
        visible: ``(N, K)`` bool.
        boxes: ``(N, 4)`` PCK boxes ``(x0, y0, x1, y1)``.
        part_names: ``K`` names.
    """

    images: torch.Tensor
    keypoints: torch.Tensor
    visible: torch.Tensor
    boxes: torch.Tensor
    part_names: list

    def __len__(self) -> int:
        return self.images.shape[0]


def load_lego_benchmark(config: Congeal3DConfig, inputs: int | None = None, root=None, seed: int = 0) -> LegoBenchmark:
    """Split lego's 100 views into ``config.anchor_views`` anchors (spread over the sphere,
    :func:`congealing.congeal3d.choose_anchor_views`) and inputs (Chapter 6, "From 2-D to 3-D").

    Args:
        config: ``anchor_views`` and ``image_size`` are read.
        inputs: keep that many of the other views, evenly spaced (None: all).
        root: the data folder (None: ``$CONGEAL_DATA``, else the download cache).
        seed: the seed of :func:`vary_appearance`.

    Returns:
        a :class:`LegoBenchmark` without keypoints (:func:`add_surface_keypoints` adds them).

    Raises:
        congealing.data.DatasetNotFoundError: lego is not on disk and cannot be downloaded.
    """
    scene = load_nerf_synthetic("lego", size=config.image_size, root=root)
    anchors = choose_anchor_views(scene.c2w, config.anchor_views)
    rest = [i for i in range(len(scene.names)) if i not in anchors]
    if inputs is not None and inputs < len(rest):
        rest = [rest[round(k * len(rest) / inputs)] for k in range(inputs)]
    return LegoBenchmark(
        anchors, scene.images[anchors], scene.masks[anchors], scene.c2w[anchors],
        rest, scene.images[rest], scene.masks[rest], scene.c2w[rest], scene.fov,
        vary_appearance(scene.images[rest], scene.masks[rest], seed), [scene.names[i] for i in rest],
    )


@torch.no_grad()
def visible_points(field: VoxelField, points: torch.Tensor, c2w: torch.Tensor, fov, size: int, masks: torch.Tensor, tolerance: float, samples: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Where world points fall in each view, and whether each is visible there: inside the frame and
    the mask, with the rendered depth at its pixel within ``tolerance`` of its distance to the camera
    (nothing in front of it).

    Args:
        field: the shape whose depth decides occlusion.
        points: ``(P, 3)`` world points.
        c2w: ``(B, 4, 4)`` cameras.
        fov: the field of view (radians), a number or ``(B,)``.
        size: the views' side in pixels.
        masks: ``(B, 1, size, size)``.
        tolerance: scene units.
        samples: samples per ray of the depth render.

    Returns:
        ``(pixels (B, P, 2), visible (B, P))``.
    """
    xy, _ = project_points(points, c2w, fov, size)
    depth = torch.cat([render(field, c2w[i : i + 8], fov if not torch.is_tensor(fov) or fov.ndim == 0 else fov[i : i + 8], size, samples)["depth"] for i in range(0, c2w.shape[0], 8)])
    normalised = warps.pixel_to_normalized(xy, (size, size))
    depth_at = F.grid_sample(depth, normalised[:, :, None], mode="nearest", align_corners=False)[:, 0, :, 0]
    mask_at = F.grid_sample(masks.float(), normalised[:, :, None], mode="nearest", align_corners=False)[:, 0, :, 0]
    distance = (points[None] - c2w[:, None, :3, 3]).norm(dim=-1)
    inside = (normalised.abs() < 1).all(dim=-1)
    return xy, inside & (mask_at > 0.5) & ((depth_at - distance).abs() < tolerance)


@torch.no_grad()
def add_surface_keypoints(bench: LegoBenchmark, field: VoxelField, count: int = 24, level: float = 5.0, tolerance: float = 0.08) -> None:
    """Fix ``count`` 3-D points on the object and project them into every input with the *true*
    camera: the ground truth of the keypoint-transfer benchmark (Chapter 6, "From 2-D to 3-D").

    The points are farthest-point samples of the shape's marching-cubes vertices among those that
    at least two anchor views see (so they lie on the visible surface, not inside thin slabs or at
    silhouettes only). Visibility in each input follows :func:`visible_points`. Sets ``keypoints``,
    ``visible``, ``points3d``, ``boxes`` and ``part_names`` of ``bench`` in place.

    Args:
        bench: the benchmark.
        field: the shape fitted to its anchors.
        count: the number of points.
        level: the density of the surface (marching cubes).
        tolerance: the depth tolerance of :func:`visible_points`, scene units.
    """
    vertices = surface_points(field, level)
    size = bench.anchor_images.shape[-1]
    _, seen = visible_points(field, vertices, bench.anchor_c2w, bench.fov, size, bench.anchor_masks, tolerance)
    vertices = vertices[seen.sum(dim=0) >= 2]
    points = vertices[farthest_points(vertices, count, int((vertices - vertices.mean(dim=0)).norm(dim=-1).argmin()))]
    bench.keypoints, bench.visible = visible_points(field, points, bench.c2w, bench.fov, bench.images.shape[-1], bench.masks, tolerance)
    bench.points3d = points
    bench.boxes = mask_to_box(bench.masks)
    bench.part_names = [f"p{k:02d}" for k in range(count)]



def pck_by_rotation(transfer, keypoint_set, c2w: torch.Tensor, bins=(0, 45, 90, 180), alpha: float = 0.1) -> dict:
    """PCK@``alpha`` (box threshold of the target, Chapter 3's harness) of ``transfer`` over all
    ordered pairs, overall and binned by the relative rotation between the two true cameras
    (Chapter 6, "Canonical coordinates and correspondence").

    Args:
        transfer: ``transfer(src, tgt, points (K, 2)) -> (K, 2)``, e.g. an
            :class:`~congealing.alignment.Alignment`'s ``transfer()``.
        keypoint_set: a :class:`KeypointSet`.
        c2w: ``(N, 4, 4)`` the true cameras.
        bins: edges of the rotation bins, degrees.
        alpha: the PCK threshold.

    Returns:
        ``{"all": pck, "n_keypoints": ..., "bins": {"0-45": {"pck": ... or None, "n_keypoints": ...}, ...}}``.
    """
    result = transfer_all_pairs(transfer, keypoint_set)
    pairs, visible = result["pairs"], result["visible"]
    correct = metrics.correct_keypoints(result["pred"], result["target"], threshold_lengths(keypoint_set.boxes)[pairs[:, 1]], alpha)
    angles = relative_rotations(c2w)[pairs[:, 0], pairs[:, 1]]
    out = {"all": float((correct & visible).sum() / visible.sum().clamp_min(1)), "n_keypoints": int(visible.sum()), "bins": {}}
    for low, high in zip(bins[:-1], bins[1:]):
        in_bin = ((angles > low) & (angles <= high))[:, None] & visible
        out["bins"][f"{low}-{high}"] = {"pck": float((correct & in_bin).sum() / in_bin.sum()) if in_bin.any() else None, "n_keypoints": int(in_bin.sum())}
    return out


def _setup(request: "LegoRequest", dataset: str, note: str = ""):
    """``(mode, config, device, backbone, progress)`` of a lego benchmark run; ``UsageError`` for a
    method other than congeal3d."""
    if request.method != "congeal3d":
        raise UsageError(f"congeal eval --dataset {dataset}: method {request.method!r} is not available here; use congeal3d{note}")
    mode = runtime.get_mode(request.mode)
    device = runtime.get_device(request.device)
    return mode, Congeal3DConfig.for_mode(mode, seed=request.seed), device, load_backbone(request.backbone, device), progress_bars(request.progress)


def evaluate_lego(request: LegoRequest) -> dict:
    """``congeal eval --dataset lego --method congeal3d``: the Chapter 6 benchmark, and the lego table of
    Chapter 7 ("lego: when the viewpoint changes").

    Fits the shape to the anchor views, then, for the inputs as rendered and with per-image
    appearance changes: pose errors (Procrustes-aligned, mean and median) for random cameras, "no
    pose initialisation" (:func:`congealing.congeal3d.find_poses` without the search), "no IoU
    refinement" and the full method (:func:`congealing.congeal3d.fit`); PCK@0.1 of keypoint
    transfer through 3-D against nearest-neighbour matching with the same backbone, binned by the
    relative rotation of the two views (and, on the varied inputs, SpaceJAM and Neural Congealing:
    :func:`planar_transfers`); seconds per stage. Quick mode uses 16 of the 92 inputs. In full mode
    (or with ``request.capture``), also the real-like row (:func:`evaluate_capture`); quick mode
    leaves it out, and ``congeal eval --dataset lego-capture`` runs it on its own.

    Args:
        request: what to evaluate (:class:`LegoRequest`).

    Returns:
        the JSON-ready record (settings, ``appearances`` with ``poses``, ``pck`` and ``seconds``,
        ``capture`` if run, ``peak_rss_mb``) with a ``"table"`` string (:func:`format_lego_table`).

    Raises:
        UsageError: ``request.method`` is not ``"congeal3d"``.
    """
    mode, config, device, backbone, progress = _setup(request, "lego", " (its table includes the nearest-neighbour baseline)")
    bench = load_lego_benchmark(config, inputs=runtime.pick({"quick": 16, "full": None}, mode), root=request.data, seed=request.seed)
    start = time.perf_counter()
    field = fit_shape(bench.anchor_images, bench.anchor_masks, bench.anchor_c2w, bench.fov, config, progress, device)
    seconds = {"shape": round(time.perf_counter() - start, 2)}
    add_surface_keypoints(bench, field.cpu())
    field.to(device)
    start = time.perf_counter()
    candidates = render_candidates(field, config)
    seconds["candidate_renders"] = round(time.perf_counter() - start, 2)
    out = {
        "dataset": "lego", "method": "congeal3d", "backbone": backbone.name, "backbone_title": backbone.title, "mode": mode, "device": str(device), "seed": request.seed,
        "config": asdict(config), "anchors": bench.anchor_index, "inputs": bench.input_index, "n_keypoints_3d": int(bench.points3d.shape[0]),
        "protocol": "pose errors after a similarity Procrustes alignment of camera centres; translation in scene units (cameras at radius 4.03); "
        "PCK@0.1 of the target's mask box over ordered pairs, 3-D points visible in both views, binned by relative rotation (degrees)",
        "seconds": seconds, "appearances": {},
    }
    for appearance in ("rendered", "varied"):
        images = bench.varied if appearance == "varied" else bench.images
        full = congeal3d.fit(images, config, masks=bench.masks, backbone=backbone, shape=field, candidates=candidates, progress=progress)
        no_init = congeal3d.find_poses(field, images, bench.masks, config, backbone, search=False, candidates=candidates, progress=progress)
        poses = {
            "random poses": pose_errors(random_cameras(len(bench), config.camera_radius, request.seed), bench.c2w),
            "no pose initialisation": pose_errors(no_init["refined"]["c2w"], bench.c2w),
            "no IoU refinement": pose_errors(full.state["search"]["c2w"], bench.c2w),
            "3D congealing": pose_errors(full.state["c2w"], bench.c2w),
        }
        keypoints = bench.keypoint_set(appearance == "varied")
        nn = descriptor_transfer(extract_descriptors(keypoints.images, backbone, grid=64), keypoints.images.shape[-1])
        pck = {"nearest neighbour": pck_by_rotation(nn, keypoints, bench.c2w)}
        if appearance == "varied" and request.planar:
            for name, (transfer, seconds) in planar_transfers(keypoints, bench.masks, backbone, mode, request.seed, device).items():
                pck[name] = {**pck_by_rotation(transfer, keypoints, bench.c2w), "seconds": round(seconds, 1)}
        pck["3D congealing"] = pck_by_rotation(full.transfer(), keypoints, bench.c2w)
        out["appearances"][appearance] = {"poses": poses, "pck": pck, "seconds": full.state["seconds"]}
    with_capture = mode == "full" if request.capture is None else request.capture
    if with_capture:
        out["capture"] = evaluate_capture(config, backbone, device, progress, request.seed, request.data, inputs=runtime.pick({"quick": 16, "full": None}, mode))
    out["peak_rss_mb"] = peak_memory_mb(device)
    out["table"] = format_lego_table(out)
    return out


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def planar_transfers(keypoints: "KeypointSet", masks: torch.Tensor, backbone, mode: str, seed: int = 0, device=None) -> dict:
    """The planar methods of Chapters 4 and 5 on the same inputs, for the comparison: SpaceJAM and
    Neural Congealing, each with the input masks and with reflections off (3-D points have no
    left/right twins to swap).

    Args:
        keypoints: the inputs (:class:`KeypointSet`).
        masks: ``(N, 1, S, S)`` the objects.
        backbone: a :class:`congealing.features.Backbone`.
        mode: ``"quick"`` or ``"full"``.
        seed: the configs' seed.
        device: where to train.

    Returns:
        ``{name: (transfer, seconds)}``.
    """
    out = {}
    tic = time.perf_counter()
    sj_config = spacejam.SpaceJAMConfig.for_mode(mode, seed=seed, flips=False)
    out["SpaceJAM"] = (spacejam.fit(keypoints.images, sj_config, masks=masks, backbone=backbone, device=device).transfer(), time.perf_counter() - tic)
    tic = time.perf_counter()
    nc_config = neural.NeuralCongealingConfig.for_mode(mode, seed=seed, flips=False, gradual_atlas=True, relaxed_rigidity=True)
    out["Neural Congealing"] = (neural.fit(keypoints.images, nc_config, masks=masks, backbone=backbone, device=device).transfer(), time.perf_counter() - tic)
    return out


def format_lego_table(results: dict) -> str:
    """Plain-text tables of :func:`evaluate_lego`'s record, which ``congeal eval`` prints.

    Args:
        results: the record.

    Returns:
        the tables: camera errors and PCK by relative rotation per appearance, seconds, and the
        capture row if there is one.
    """
    lines = [f"lego, 3-D congealing, backbone {results['backbone']}, {results['mode']} mode"]
    for appearance, block in results["appearances"].items():
        lines.append(f"\ninputs {appearance}: camera errors (Procrustes-aligned | frame-free, over pairs)")
        lines.append(f"{'':26} {'rot mean':>9} {'rot med':>8} {'trans mean':>11} {'trans med':>10} | {'rel rot med':>11} {'view med':>9}")
        for name, e in block["poses"].items():
            lines.append(f"{name:26} {e['rotation_mean']:9.1f} {e['rotation_median']:8.1f} {e['translation_mean']:11.2f} {e['translation_median']:10.2f} | "
                         f"{e['relative_rotation_median']:11.1f} {e['view_angle_median']:9.1f}")
        bins = list(next(iter(block["pck"].values()))["bins"])
        lines.append(f"PCK@0.1 by relative rotation: {'':2}{'all':>6} " + " ".join(f"{b + ' deg':>11}" for b in bins))
        for name, p in block["pck"].items():
            cells = " ".join(f"{_percent(p['bins'][b]['pck']):>11}" for b in bins)
            lines.append(f"{name:31} {100 * p['all']:6.1f} {cells}")
        lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in block["seconds"].items()))
    lines.append("seconds (shared): " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))
    if "capture" in results:

        lines += ["", *format_capture_rows(results["capture"])]
    else:
        lines.append("\n(the capture-like row runs in full mode; in quick mode: congeal eval --dataset lego-capture --method congeal3d)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- a real-like benchmark


@dataclass
class CaptureBenchmark:
    """Lego made to look like a hand-held capture (:func:`make_capture_benchmark`; Chapter 6, "From
    lego to a hand-held capture").

    Attributes:
        photos: ``(3, H, W)`` portrait photos, one per view.
        masks: ``(1, H, W)`` their objects.
        meta: the transforms.json a user would have: poses in an arbitrary frame and scale,
            ``fl_x``/``fl_y``/``cx``/``cy`` per frame.
        c2w: ``(N, 4, 4)`` the true cameras in lego's frame.
        close_up: ``(N,)`` bool, the views cropped to cut the object.
        names: the views' names.
    """

    photos: list
    masks: list
    meta: dict
    c2w: torch.Tensor
    close_up: torch.Tensor
    names: list

    def __len__(self) -> int:
        return len(self.photos)


def brick_wall(size: int) -> torch.Tensor:
    """A real photograph as the shared background: scikit-image's brick wall (``skimage.data.brick``,
    a public-domain photo bundled with scikit-image), tinted brick-red.

    Args:
        size: the side in pixels.

    Returns:
        ``(3, size, size)`` in ``[0, 1]``.

    Example:
        >>> brick_wall(16).shape
        torch.Size([3, 16, 16])
    """
    from skimage import data


    gray = torch.from_numpy(data.brick()).float()[None, None] / 255.0
    gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return (gray * torch.tensor([1.0, 0.62, 0.5])[:, None, None] * 1.3).clamp(0, 1)


def make_capture_benchmark(image_size: int, root=None, seed: int = 0, arc_deg: float = 150.0, close_up_every: int = 4, views: int | None = None) -> CaptureBenchmark:
    """NeRF-synthetic lego as a phone capture, for the failure modes of a real one (Chapter 6, "From
    lego to a hand-held capture").

    * a front-only arc: the training views whose azimuth is within ``arc_deg / 2`` of -90 degrees;
    * one real textured background shared by every view (:func:`brick_wall`);
    * portrait 3:4 photos, ``4/3 * image_size`` pixels high, cropped from the render at random
      offsets, so each has its own off-centre principal point and focal length; every
      ``close_up_every``-th view is a close-up that cuts the object off;
    * the cameras in a ``transforms.json`` (nerfstudio keys, per frame) in an arbitrary frame: the
      true poses moved by a random rotation, scale and translation.

    The crop and resize is an exact change of pinhole intrinsics, so the file's cameras are exact.

    Args:
        image_size: the model's square side; the photos are ``4/3`` of it high.
        root: the data folder (None: ``$CONGEAL_DATA``, else the download cache).
        seed: the crops' and the frame's seed (deterministic in it).
        arc_deg: the width of the arc of views kept, degrees.
        close_up_every: every that many views is a close-up (0: none).
        views: keep the first that many views of the arc (None: all).

    Returns:
        a :class:`CaptureBenchmark`.
    """
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda low, high: low + (high - low) * float(torch.rand((), generator=generator))  # noqa: E731
    size = 2 * image_size
    scene = load_nerf_synthetic("lego", size=size, root=root, background=0.0)
    azimuth, _ = camera_angles(scene.c2w)
    offset = (azimuth + 90.0 + 180.0) % 360.0 - 180.0
    chosen = torch.nonzero(offset.abs() <= 0.5 * arc_deg).flatten().tolist()
    if views is not None:
        chosen = chosen[:views]
    wall = brick_wall(2 * size)  # the render sits in the middle of a wall twice its size
    pad = size // 2
    out_h = int(round(4 * image_size / 3))
    out_w = int(round(0.75 * out_h))
    photos, masks, frames, close = [], [], [], []
    for k, i in enumerate(chosen):
        alpha = F.pad(scene.masks[i], (pad, pad, pad, pad))
        composite = F.pad(scene.images[i], (pad, pad, pad, pad)) * alpha + wall * (1 - alpha)
        ys, xs = torch.nonzero(alpha[0] > 0.5, as_tuple=True)
        bx0, bx1, by0, by1 = float(xs.min()), float(xs.max()) + 1, float(ys.min()), float(ys.max()) + 1
        is_close = close_up_every > 0 and k % close_up_every == close_up_every - 1
        if is_close:  # a close-up: a crop half the object's height, centred somewhere on the object
            hc = 0.55 * (by1 - by0) * uniform(0.8, 1.2)
            wc = 0.75 * hc
            x0 = uniform(bx0, bx1) - 0.5 * wc
            y0 = uniform(by0, by1) - 0.5 * hc
        else:  # the whole object, with a margin, at a random place in the portrait frame
            hc = max(by1 - by0, (bx1 - bx0) / 0.75) * uniform(1.1, 1.4)
            wc = 0.75 * hc
            x0 = uniform(bx1 - wc, bx0)
            y0 = uniform(by1 - hc, by0)
        scale = out_h / hc
        u = (torch.arange(out_w, dtype=torch.float32) + 0.5) / scale + x0  # render coordinates, pixel edges at integers
        v = (torch.arange(out_h, dtype=torch.float32) + 0.5) / scale + y0
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        grid = torch.stack([uu / (2 * size) * 2 - 1, vv / (2 * size) * 2 - 1], dim=-1)[None]
        sampled = F.grid_sample(torch.cat([composite, alpha])[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        photos.append(sampled[:3].clamp(0, 1))
        masks.append(sampled[3:].clamp(0, 1))
        close.append(is_close)
        frames.append({
            "file_path": f"images/{scene.names[i]}", "w": out_w, "h": out_h,
            "fl_x": float(scene.focal) * scale, "fl_y": float(scene.focal) * scale,
            "cx": (size - x0) * scale, "cy": (size - y0) * scale,  # the render's centre is at `size` on the wall
        })
    # an arbitrary world frame, as COLMAP would give: x -> s R x + t
    axis_angle = torch.randn(3, generator=generator)
    rotation = se3_exp(torch.cat([axis_angle, torch.zeros(3)])[None])[0, :3, :3]
    scale, shift = 0.37, torch.tensor([2.0, -1.0, 5.0])
    true = scene.c2w[chosen]
    moved = true.clone()
    moved[:, :3, :3] = rotation @ true[:, :3, :3]
    moved[:, :3, 3] = scale * true[:, :3, 3] @ rotation.T + shift
    for frame, matrix in zip(frames, moved):
        frame["transform_matrix"] = matrix.tolist()
    meta = {"camera_model": "OPENCV", "frames": frames}
    return CaptureBenchmark(photos, masks, meta, true, torch.tensor(close), [scene.names[i] for i in chosen])


def evaluate_capture(config, backbone, device=None, progress=None, seed: int = 0, root=None, inputs: int | None = None, masks: str = "true", bench=None) -> dict:
    """The real-like row of the lego table (Chapter 6, "From lego to a hand-held capture"):
    :func:`congealing.congeal3d.captures.congeal_capture` on :func:`make_capture_benchmark` (or
    ``bench``), from its ``transforms.json`` as a user would give it.

    Camera errors of the posed inputs against the true cameras, Procrustes-aligned and frame-free
    (:func:`congealing.congeal3d.pose_errors`), for random cameras, the search alone and the full
    method; ``by_view``: the full method's frame-free errors among the posed views that show the
    whole object and among those that cut it off.

    Args:
        config: the 3-D congealing settings.
        backbone: a :class:`congealing.features.Backbone` or a name.
        device: where to fit.
        progress: ``progress(iterable, desc)`` (:func:`congealing.congeal3d.progress_bars`) or None.
        seed: the benchmark's and the random cameras' seed.
        root: the data folder.
        inputs: pose that many views, evenly spaced (None: all but the anchors).
        masks: ``"true"`` (the renders' alpha) or ``"cosegment"`` (the co-segmentation a user without
            masks gets, :func:`congealing.congeal3d.cosegment_photos`; ``mask_iou``: their mean IoU
            with the true masks).
        bench: a :class:`CaptureBenchmark` to reuse (None: made here).

    Returns:
        the JSON-ready row (masks, counts, anchors, field of view, ``poses``, ``by_view``, ``seconds``).

    Raises:
        ValueError: ``masks`` is neither ``"true"`` nor ``"cosegment"``.
    """
    if masks not in ("true", "cosegment"):
        raise ValueError(f"masks must be 'true' or 'cosegment', got {masks!r}")
    bench = make_capture_benchmark(config.image_size, root, seed) if bench is None else bench
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the benchmark's file has no distortion; nothing to say
        cameras = cameras_from_transforms(bench.meta, source="capture benchmark")
    photo_masks, mask_iou = bench.masks, None
    if masks == "cosegment":
        backbone = load_backbone(backbone, device) if backbone is None or isinstance(backbone, str) else backbone
        photo_masks = cosegment_photos(bench.photos, backbone)
        true = [F.interpolate(m[None], size=c.shape[-2:], mode="area")[0] > 0.5 for m, c in zip(bench.masks, photo_masks)]
        mask_iou = sum(float((t & (c > 0.5)).sum() / (t | (c > 0.5)).sum().clamp_min(1)) for t, c in zip(true, photo_masks)) / len(true)
    out = congeal_capture(bench.photos, photo_masks, cameras, config, backbone, device=device, progress=progress, inputs=inputs)
    truth, found = bench.c2w[out["inputs"]], out["poses"]
    poses = {
        "random poses": pose_errors(random_cameras(len(truth), config.camera_radius, seed), truth),
        "no IoU refinement": pose_errors(found["search"]["c2w"], truth),
        "3D congealing": pose_errors(found["refined"]["c2w"], truth),
    }
    whole = object_is_whole(out["views"].masks, out["views"].valid)
    by_view = {}
    for label, keep in (("whole views", whole[out["inputs"]]), ("cut views", ~whole[out["inputs"]])):
        index = torch.nonzero(keep).flatten()
        if len(index) >= 2:
            by_view[label] = {"count": len(index), **relative_pose_errors(found["refined"]["c2w"][index], truth[index])}
    return {
        "masks": masks, "mask_iou": mask_iou,
        "views": len(bench), "close_ups": int(bench.close_up.sum()), "whole_views": int(whole.sum()), "by_view": by_view,
        "anchors": out["anchors"], "posed": len(out["inputs"]), "fov_deg": round(math.degrees(out["views"].fov), 2),
        "frame_scale": out["cameras"].scale, "poses": poses, "seconds": out["seconds"],
    }


def format_capture_rows(c: dict) -> list:
    """Plain-text lines of one :func:`evaluate_capture` row (the lego table's capture row).

    Args:
        c: the row.

    Returns:
        the lines.
    """
    masks = "true masks" if c.get("masks", "true") == "true" else f"co-segmentation masks (IoU {c['mask_iou']:.2f} with the true ones)"
    lines = [f"capture-like lego with {masks} (brick wall, portrait crops, off-centre principal points, {c['close_ups']} close-ups, front arc; "
             f"{c['views']} views, {len(c['anchors'])} whole-view anchors, {c['posed']} posed, FoV {c['fov_deg']} deg known from transforms.json)",
             f"{'':26} {'rot mean':>9} {'rot med':>8} {'trans mean':>11} {'trans med':>10} | {'rel rot med':>11} {'view med':>9}"]
    for name, e in c["poses"].items():
        lines.append(f"{name:26} {e['rotation_mean']:9.1f} {e['rotation_median']:8.1f} {e['translation_mean']:11.2f} {e['translation_median']:10.2f} | "
                     f"{e['relative_rotation_median']:11.1f} {e['view_angle_median']:9.1f}")
    for name, e in c.get("by_view", {}).items():
        lines.append(f"{'  ' + name + ' (' + str(e['count']) + ')':26} {'':>41} | {e['relative_rotation_median']:11.1f} {e['view_angle_median']:9.1f}")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in c["seconds"].items()))
    return lines


def evaluate_lego_capture(request: LegoRequest) -> dict:
    """``congeal eval --dataset lego-capture --method congeal3d``: the capture-like lego
    (:func:`evaluate_capture`), posed with the true masks and with the co-segmentation masks a
    user without masks gets; 16 posed views in quick mode, all in full mode. ``--dataset lego``
    adds the true-mask row to its table in full mode only (the quick lego run stays short).

    Args:
        request: what to evaluate (:class:`LegoRequest`).

    Returns:
        the JSON-ready record (settings, ``capture`` with a ``"true"`` and a ``"cosegment"`` row,
        ``peak_rss_mb``) with a ``"table"`` string.

    Raises:
        UsageError: ``request.method`` is not ``"congeal3d"``.
    """
    mode, config, device, backbone, progress = _setup(request, "lego-capture")
    bench = make_capture_benchmark(config.image_size, request.data, seed=request.seed)
    inputs = runtime.pick({"quick": 16, "full": None}, mode)
    out = {"dataset": "lego-capture", "method": "congeal3d", "backbone": backbone.name, "backbone_title": backbone.title, "mode": mode,
           "device": str(device), "seed": request.seed, "config": asdict(config),
           "protocol": "camera errors of the posed views against the true cameras: Procrustes-aligned, and frame-free over pairs (relative rotation, view angle), degrees",
           "capture": {}}
    for masks in ("true", "cosegment"):
        out["capture"][masks] = evaluate_capture(config, backbone, device, progress, request.seed, inputs=inputs, masks=masks, bench=bench)
    out["peak_rss_mb"] = peak_memory_mb(device)
    lines = [f"lego as a hand-held capture, 3-D congealing, backbone {backbone.name}, {mode} mode"]
    for result in out["capture"].values():
        lines += ["", *format_capture_rows(result)]
    out["table"] = "\n".join(lines)
    return out
