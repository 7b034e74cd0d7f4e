"""The MNIST ground-truth protocol of the classical methods (Chapter 2, "How well does it work?"),
as functions of typed arguments.

Real MNIST digits are padded and warped by known random affine transforms (:class:`Perturbation`,
:func:`perturb`), congealed, and the transforms they need to be undone are compared with the ones
the method found (:func:`alignment_errors`, built on :func:`residual_alignment_error`).
:func:`evaluate_mnist` (``congeal eval --dataset mnist --method M``) takes a
:class:`congealing.evaluation.EvalRequest` and returns a JSON-ready record whose ``"table"`` the
command prints. The CUB keypoint protocol is :mod:`congealing.evaluation`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import classical, runtime, warps
from .data import load_mnist
from .errors import UsageError
from .evaluation import EvalRequest

__all__ = [
    "Perturbation", "perturb", "residual_alignment_error", "mean_image_sharpness", "alignment_errors",
    "evaluate_on_digits", "format_mnist_table", "EVAL_DIGITS", "evaluate_mnist", "MNIST_METHODS",
]


@dataclass(frozen=True)
class Perturbation:
    """The range of the known random affine transforms applied to real digits for ground truth
    (Chapter 2, "A set that needs aligning").

    Each parameter is drawn uniformly from ``[-limit, +limit]`` (:meth:`sample`).

    Attributes:
        translation: pixels, along x and y.
        rotation: degrees.
        log_scale: the log of the scale.
        log_aspect: the log of the aspect ratio.
        shear: a plain number.
        pad: pixels of background added on every side first, so the perturbed digit stays in the frame.

    Example:
        >>> Perturbation().sample(2, (36, 36), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 3])
    """

    translation: float = 3.0
    rotation: float = 20.0
    log_scale: float = 0.15
    log_aspect: float = 0.1
    shear: float = 0.1
    pad: int = 4

    def sample(self, count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """Random transforms for images of ``size`` (after padding).

        Args:
            count: how many.
            size: ``(H, W)`` of the padded images, in pixels.
            generator: the CPU generator they are drawn from.

        Returns:
            ``(count, 3, 3)`` affine transforms in normalised coordinates.
        """
        pixel = 2.0 / max(size)
        limits = torch.tensor([self.translation * pixel, self.translation * pixel, math.radians(self.rotation), self.log_scale, self.log_aspect, self.shear])
        xi = (torch.rand(count, classical.AFFINE_DIM, generator=generator) * 2.0 - 1.0) * limits
        return warps.exp(xi, "affine")


def perturb(images: torch.Tensor, perturbation: Perturbation, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad images by ``perturbation.pad`` and warp each by a known random transform (Chapter 2, "A set
    that needs aligning").

    Args:
        images: ``(N, C, h, w)``.
        perturbation: the ranges (:class:`Perturbation`).
        seed: the transforms are drawn on the CPU with this seed, so the same seed gives the same
            set on any device.

    Returns:
        ``(perturbed (N, C, h + 2 pad, w + 2 pad), transforms (N, 3, 3))``; the transforms map the
        padded, unperturbed image to the perturbed one.

    Example:
        >>> perturbed, known = perturb(torch.zeros(3, 1, 28, 28), Perturbation(), seed=0)
        >>> perturbed.shape, known.shape
        (torch.Size([3, 1, 36, 36]), torch.Size([3, 3, 3]))
    """
    padded = F.pad(images, (perturbation.pad,) * 4)
    generator = torch.Generator().manual_seed(seed)
    # Drawn on the CPU with a seeded generator, so the same seed gives the same set on any device.
    transforms = perturbation.sample(images.shape[0], tuple(padded.shape[-2:]), generator).to(images.device, images.dtype)
    return warps.warp_image(padded, transforms), transforms


def residual_alignment_error(transforms: torch.Tensor, size: tuple[int, int], box: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-image misalignment in pixels left after removing the one transform common to the set
    (Chapter 2, "Did it undo the perturbations?").

    ``transforms`` map each image's *original* frame to the common frame (for congealed perturbed
    digits: the learned transform composed with the known perturbation). A perfect joint alignment
    makes them all equal to one ``C``. The common transform is estimated as their mean ``C`` (the
    least-squares fit of the corner positions, exact for affine matrices), and the error of image
    ``i`` is the mean displacement of the four corners of ``box`` under ``C^-1 T_i``, in pixels of
    the original frame, so a set that merely shrinks does not look better aligned.

    Args:
        transforms: ``(N, 3, 3)`` original frame -> common frame.
        size: ``(H, W)`` of the images, in pixels.
        box: ``(h, w)`` of the centred box whose corners are measured (None: the full frame).

    Returns:
        ``(N,)`` pixels.

    Example:
        >>> T = warps.exp(torch.tensor([[0.1, 0.0], [0.1, 0.0]]), "translation")
        >>> residual_alignment_error(T, (28, 28)).tolist()     # a shared shift is no misalignment
        [0.0, 0.0]
    """
    H, W = size
    h, w = box or size
    corners = torch.tensor([[-w / W, -h / H], [w / W, -h / H], [w / W, h / H], [-w / W, h / H]], dtype=transforms.dtype, device=transforms.device)
    relative = warps.compose(warps.invert(transforms.mean(0, keepdim=True)).expand_as(transforms), transforms)
    moved = warps.transform_points(relative, corners.expand(transforms.shape[0], 4, 2))
    scale = corners.new_tensor([W / 2.0, H / 2.0])
    return ((moved - corners) * scale).norm(dim=-1).mean(-1)


def mean_image_sharpness(images: torch.Tensor) -> float:
    """Mean gradient magnitude of the mean image (grey levels per pixel): a well-aligned set has a
    crisp mean, a misaligned one a blurry mean with small gradients (Chapter 2, "The comparison
    table").

    Args:
        images: ``(N, C, H, W)``.

    Returns:
        the sharpness.

    Example:
        >>> mean_image_sharpness(torch.ones(2, 1, 8, 8))
        0.0
    """
    mean = images.mean(0, keepdim=True)
    H, W = mean.shape[-2:]
    gradient = classical.image_gradient(mean) / mean.new_tensor([W / 2.0, H / 2.0])
    return float(gradient.norm(dim=-1).mean())


def alignment_errors(learned: torch.Tensor, learned_clean: torch.Tensor, known: torch.Tensor, size, box) -> dict:
    """The errors (pixels, mean over the set) of a congealing run on perturbed images (Chapter 2,
    "Did it undo the perturbations?"), all by :func:`residual_alignment_error`:

    * ``baseline_error``: doing nothing (the perturbations themselves);
    * ``residual_error``: ``learned`` composed with the perturbation, against the original frame;
    * ``recovery_error``: the same composition against the method's own alignment of the clean
      images, i.e. how well the known perturbations were undone;
    * ``clean_motion``: how far the method moved the clean images.

    Args:
        learned: ``(N, 3, 3)`` the method's transforms of the perturbed images.
        learned_clean: ``(N, 3, 3)`` its transforms of the clean images.
        known: ``(N, 3, 3)`` the perturbations.
        size: the images' ``(H, W)``.
        box: the object's ``(h, w)`` (centred).

    Returns:
        the four errors, in pixels.

    Example:
        >>> known = warps.exp(torch.tensor([[0.1, 0.0], [-0.1, 0.0]]), "translation")
        >>> e = alignment_errors(warps.invert(known), warps.identity(2), known, (36, 36), (28, 28))
        >>> round(e["baseline_error"], 2), round(e["recovery_error"], 2), round(e["clean_motion"], 2)
        (1.8, 0.0, 0.0)
    """
    composed = warps.compose(learned, known)
    recovered = warps.compose(warps.invert(classical.recentre(learned_clean)), classical.recentre(composed))
    error = lambda T: float(residual_alignment_error(T, size, box).mean())  # noqa: E731
    return {
        "baseline_error": error(known),
        "residual_error": error(composed),
        "recovery_error": error(recovered),
        "clean_motion": error(learned_clean),
    }


def evaluate_on_digits(digits: torch.Tensor, method: str, config=None, perturbation: Perturbation | None = None, seed: int = 0) -> dict:
    """Congeal real digits twice, perturbed and clean, and measure the result (Chapter 2, "The
    comparison table").

    The digits are padded and warped by known random transforms (:func:`perturb`), then congealed
    (:func:`congealing.classical.congeal`). The errors in pixels over the 28 x 28 digit box are
    :func:`alignment_errors`: ``baseline_error`` (doing nothing), ``residual_error`` (against the
    original MNIST frame; it counts as error any change the method makes to the digits' *own* pose
    and shape, since MNIST digits are centred but not deslanted, so it has a floor well above zero),
    ``recovery_error`` (against the method's own alignment of the clean digits) and ``clean_motion``
    (how far it moved the clean digits: that floor).

    Args:
        digits: ``(N, 1, 28, 28)`` in ``[0, 1]``.
        method: ``"entropy"``, ``"lsq"`` or ``"ic-lsq"``.
        config: the method's config (None: ``for_mode()``).
        perturbation: the ranges (None: :class:`Perturbation`'s defaults).
        seed: the perturbations' seed.

    Returns:
        the images count, the four errors, iterations, seconds (perturbed run), seconds per
        iteration, the objective before and after (perturbed run) and, on the clean digits, the
        mean image's per-pixel pixel-stack entropy (bits) and sharpness
        (:func:`mean_image_sharpness`) before and after.
    """
    perturbation = perturbation or Perturbation()
    config = config or classical.CONFIGS[method].for_mode()
    perturbed, known = perturb(digits, perturbation, seed)
    clean = F.pad(digits, (perturbation.pad,) * 4)
    size, box = tuple(clean.shape[-2:]), tuple(digits.shape[-2:])
    start = time.perf_counter()
    result = classical.congeal(perturbed, method, config)
    seconds = time.perf_counter() - start
    on_clean = classical.congeal(clean, method, config)
    return {
        "images": int(digits.shape[0]),
        **alignment_errors(result.transforms, on_clean.transforms, known, size, box),
        "iterations": result.iterations,
        "seconds": seconds,
        "seconds_per_iteration": result.seconds_per_iteration,
        "objective_before": result.history["objective"][0],
        "objective_after": result.history["objective"][-1],
        "mean_entropy_before": float(classical.pixel_stack_entropy(clean).mean()),
        "mean_entropy_after": float(classical.pixel_stack_entropy(on_clean.aligned).mean()),
        "sharpness_before": mean_image_sharpness(clean),
        "sharpness_after": mean_image_sharpness(on_clean.aligned),
    }


def format_mnist_table(rows: dict, title: str) -> str:
    """A plain-text table of :func:`evaluate_on_digits` results keyed by class.

    Args:
        rows: ``{class: evaluate_on_digits(...)}`` (a ``"mean"`` row too, if wanted).
        title: the first line.

    Returns:
        the table.
    """
    columns = [("baseline_error", "do-nothing px", "{:.2f}"), ("residual_error", "residual px", "{:.2f}"), ("recovery_error", "recovery px", "{:.2f}"),
               ("clean_motion", "clean moved px", "{:.2f}"), ("mean_entropy_before", "H before", "{:.3f}"), ("mean_entropy_after", "H after", "{:.3f}"),
               ("iterations", "iters", "{}"), ("seconds_per_iteration", "s/iter", "{:.3f}")]
    header = f"{'class':>6} " + " ".join(f"{name:>14}" for _, name, _ in columns)
    lines = [title, header, "-" * len(header)]
    for key, row in rows.items():
        lines.append(f"{key:>6} " + " ".join(f"{fmt.format(row[field]):>14}" for field, _, fmt in columns))
    return "\n".join(lines)


#: Digits per class in ``congeal eval --dataset mnist``: quick mode keeps the CLI to about a minute.
EVAL_DIGITS = {"quick": 100, "full": 1000}


def evaluate_mnist(request: EvalRequest) -> dict:
    """``congeal eval --dataset mnist --method M``: ground-truth errors on every (or each chosen)
    class (Chapter 2, "The comparison table", measures the same on fewer digits).

    The first ``EVAL_DIGITS[mode]`` test-set digits of each class are used; class ``d`` is
    perturbed with seed ``request.seed + d``; each is :func:`evaluate_on_digits` with the method's
    ``for_mode(mode)`` config.

    Args:
        request: ``method`` one of :data:`MNIST_METHODS`, ``classes`` the digits (None: all ten),
            ``mode``, ``seed``, ``device``, ``data`` (:class:`congealing.evaluation.EvalRequest`).

    Returns:
        a JSON-ready dict (settings, per-class numbers, their mean) with a ``"table"`` string.

    Raises:
        UsageError: an unknown method or a class outside 0-9.
    """
    if request.method not in MNIST_METHODS:
        raise UsageError(f"congeal eval: unknown method {request.method!r} for mnist; available: {', '.join(MNIST_METHODS)}")
    mode = runtime.get_mode(request.mode)
    classes = list(request.classes) if request.classes else list(range(10))
    if any(c not in range(10) for c in classes):
        raise UsageError(f"MNIST classes are 0-9, got {classes}")
    device = runtime.get_device(request.device)
    config, perturbation = classical.CONFIGS[request.method].for_mode(mode), Perturbation()
    count = EVAL_DIGITS[mode]
    per_class = {}
    for digit in classes:
        digits, _ = load_mnist(request.data, digits=[digit], limit=count)
        per_class[str(digit)] = evaluate_on_digits(digits.to(device), request.method, config, perturbation, seed=request.seed + digit)
    mean = {field: sum(row[field] for row in per_class.values()) / len(per_class) for field in next(iter(per_class.values()))}
    title = f"MNIST test set, {request.method}, {mode} mode, {count} digits per class, perturbation {perturbation}"
    return {
        "dataset": "mnist",
        "method": request.method,
        "mode": mode,
        "seed": request.seed,
        "digits_per_class": count,
        "perturbation": perturbation.__dict__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        "per_class": per_class,
        "mean": mean,
        "table": format_mnist_table({**per_class, "mean": mean}, title),
    }


#: The methods ``congeal eval --dataset mnist`` evaluates: the classical ones (they work on pixels).
MNIST_METHODS = classical.METHOD_NAMES
