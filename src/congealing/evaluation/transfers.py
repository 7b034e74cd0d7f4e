"""What the CUB protocol judges, a keypoint transfer, and the baselines that make one directly.

One protocol for every method
-----------------------------
An aligner is judged by a :data:`TransferFn`: ``transfer(src, tgt, points)`` carries pixel points
``(K, 2)`` of image ``src`` to image ``tgt``. A joint aligner does it through its canonical frame
(image A -> canonical space -> image B): every method's ``fit`` returns a
:class:`congealing.alignment.Alignment`, whose :meth:`~congealing.alignment.Alignment.transfer` is
one (:func:`congealing.alignment.transfer_via_transforms` for a 3x3 transform per image,
:func:`congealing.alignment.transfer_via_grids` for dense sampling grids). Baselines that never
build a canonical frame (:func:`identity_transfer`, :func:`nn_transfer`) implement the same
signature directly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import warps
from ..features import Backbone, extract_descriptors, load_backbone

__all__ = [
    "TransferFn", "identity_transfer", "nn_transfer", "descriptor_similarity", "descriptor_transfer",
    "masked_descriptor_transfer", "windowed_descriptor_transfer",
]

#: ``transfer(src_index, tgt_index, points)``: ``points`` ``(K, 2)`` pixel ``(x, y)`` in image ``src``
#: -> ``(K, 2)`` predicted pixel ``(x, y)`` in image ``tgt``. A transfer may carry an attribute
#: ``flipped`` (``(N,)`` bool): images its aligner mirrored.
TransferFn = Callable[[int, int, torch.Tensor], torch.Tensor]


def identity_transfer(cub, backbone=None, mode=None, seed=0, device=None) -> TransferFn:
    """The do-nothing baseline: a keypoint is predicted at the same pixel in the target (Chapter 3,
    "5. The yardstick: keypoint transfer and PCK").

    Args:
        cub: the class (unused; the signature of every :data:`congealing.evaluation.CUB_METHODS` entry).
        backbone: unused.
        mode: unused.
        seed: unused.
        device: unused.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)``, a copy of ``points``.

    Example:
        >>> identity_transfer(None)(0, 1, torch.tensor([[3.0, 4.0]]))
        tensor([[3., 4.]])
    """
    return lambda src, tgt, points: points.clone()


def nn_transfer(cub, backbone=None, mode=None, seed=0, device=None, grid: int = 64, input_size: int | None = None) -> TransferFn:
    """The baseline every paper reports: nearest-neighbour matching of descriptors (Chapter 3, "The
    baseline every paper reports: nearest neighbours").

    For each source keypoint, its descriptor (bilinearly read from the source's ``grid`` x ``grid``
    map) is compared by cosine similarity with every location of the target; the similarity map is
    upsampled bilinearly to the image size and its argmax is the prediction (so predictions are
    not quantised to the descriptor grid): :func:`descriptor_transfer` on
    :func:`congealing.features.extract_descriptors` (cached on disk).

    Args:
        cub: a :class:`congealing.data.CUBSet` (or any set with square ``images`` ``(N, 3, S, S)``).
        backbone: a :class:`congealing.features.Backbone` or a name (None: the default one).
        mode: unused (the signature of every :data:`congealing.evaluation.CUB_METHODS` entry).
        seed: unused.
        device: where to load the backbone if it is not loaded yet.
        grid: the side of the descriptor grid.
        input_size: the side the images are resized to before the backbone (None: its own). A
            method whose config reads descriptors at another side (SpaceJAM's ``input_size``,
            Chapter 5) is compared with the baseline at that side.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` in pixels of ``cub.images``.
    """
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device)
    descriptors = extract_descriptors(cub.images, backbone, grid=grid, input_size=input_size)
    size = cub.images.shape[-1]
    return descriptor_transfer(descriptors, size)


def descriptor_similarity(descriptors: torch.Tensor, src: int, tgt: int, points: torch.Tensor, size: int) -> torch.Tensor:
    """Cosine similarity of the descriptors at source points with every pixel of the target (Chapter 3,
    "3. Similarity inspector").

    Each query descriptor is read bilinearly from the source's map and renormalised; the
    similarity map is upsampled bilinearly to the image size, so its argmax is not quantised to the
    descriptor grid.

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        src: index of the image the points are in.
        tgt: index of the image to compare with.
        points: ``(K, 2)`` pixel ``(x, y)`` in image ``src``.
        size: the images' side in pixels.

    Returns:
        ``(K, size, size)`` cosine similarities.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> descriptor_similarity(d, 0, 1, torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 4).shape
        torch.Size([2, 4, 4])
    """
    N, D, h, w = descriptors.shape
    normalised = warps.pixel_to_normalized(points.float()[None], (size, size))  # (1, K, 2)
    query = F.grid_sample(descriptors[src : src + 1], normalised[:, :, None], mode="bilinear", align_corners=False)
    query = F.normalize(query[0, :, :, 0].T, dim=1)  # (K, D)
    similarity = (query @ descriptors[tgt].reshape(D, h * w)).reshape(1, -1, h, w)
    if (h, w) != (size, size):
        similarity = F.interpolate(similarity, size=(size, size), mode="bilinear", align_corners=False)
    return similarity[0]


def _argmax_points(similarity: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel ``(x, y)`` ``(K, 2)`` of the largest similarity ``(K, S, S)`` per keypoint, searched only
    where ``allowed`` ``(K, S, S)`` is True (everywhere for a keypoint with nothing allowed)."""
    size = similarity.shape[-1]
    if allowed is not None:
        allowed = allowed | ~allowed.flatten(1).any(dim=1)[:, None, None]
        similarity = similarity.masked_fill(~allowed, -float("inf"))
    best = similarity.flatten(1).argmax(dim=1)
    return torch.stack([best % size, best // size], dim=1)


def descriptor_transfer(descriptors: torch.Tensor, size: int) -> TransferFn:
    """Nearest-neighbour transfer on unit descriptors: the argmax of :func:`descriptor_similarity` over
    the whole target (Chapter 3, "The baseline every paper reports: nearest neighbours").

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` in image ``tgt``.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> descriptor_transfer(torch.cat([d[:1], d[:1]]), 4)(0, 1, torch.tensor([[1.0, 2.0]]))
        tensor([[1., 2.]])
    """

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        return _argmax_points(descriptor_similarity(descriptors, src, tgt, points, size)).to(points.dtype)

    return transfer


def masked_descriptor_transfer(descriptors: torch.Tensor, size: int, masks: torch.Tensor) -> TransferFn:
    """Nearest-neighbour transfer that searches only inside the target's mask (Chapter 3, Exercises).

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.
        masks: ``(N, 1, m, m)`` (e.g. co-segmentations on the descriptor grid, or boxes), resized to
            the image size (nearest) and thresholded at 0.5; an empty mask restricts nothing.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` inside the target's mask.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> masks = torch.zeros(2, 1, 4, 4); masks[1, 0, :, 2:] = 1  # target: right half only
        >>> bool((masked_descriptor_transfer(d, 4, masks)(0, 1, torch.tensor([[0.0, 0.0], [1.0, 3.0]]))[:, 0] >= 2).all())
        True
    """
    inside = F.interpolate(masks.float(), size=(size, size), mode="nearest")[:, 0] > 0.5  # (N, S, S)

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        similarity = descriptor_similarity(descriptors, src, tgt, points, size)
        return _argmax_points(similarity, inside[tgt].expand_as(similarity)).to(points.dtype)

    return transfer


def windowed_descriptor_transfer(descriptors: torch.Tensor, size: int, guide: TransferFn, radius: float) -> TransferFn:
    """Nearest-neighbour transfer that searches only within ``radius`` pixels of another transfer's
    prediction: an aligner (``guide``) gives the rough place, descriptors the exact one (Chapter 7,
    Exercises).

    The result carries the guide's ``flipped`` attribute, if any, so mirrored pairs swap parts as
    the guide's do. A keypoint whose window holds no pixel is searched over the whole target.

    Args:
        descriptors: unit descriptors ``(N, D, h, w)`` of ``size`` x ``size`` images.
        size: the images' side in pixels.
        guide: a :data:`TransferFn` whose predictions centre the windows.
        radius: the window's radius in pixels.

    Returns:
        ``transfer(src, tgt, points (K, 2)) -> (K, 2)`` pixel ``(x, y)`` in image ``tgt``.

    Example:
        >>> d = torch.nn.functional.normalize(torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> corner = lambda src, tgt, points: torch.zeros_like(points)  # guide: always the top-left pixel
        >>> out = windowed_descriptor_transfer(d, 8, corner, radius=2)(0, 1, torch.tensor([[5.0, 6.0], [1.0, 7.0]]))
        >>> bool((out.norm(dim=1) <= 2).all())
        True
    """
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] == 0:
            return points.clone()
        guess = guide(src, tgt, points).float()
        near = (xs[None] - guess[:, 0, None, None]) ** 2 + (ys[None] - guess[:, 1, None, None]) ** 2 <= radius**2
        return _argmax_points(descriptor_similarity(descriptors, src, tgt, points, size), near).to(points.dtype)

    if hasattr(guide, "flipped"):
        transfer.flipped = guide.flipped
    return transfer
