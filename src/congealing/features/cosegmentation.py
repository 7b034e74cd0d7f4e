"""Saliency and co-segmentation: which locations of a photo set show the object they share.

Two saliencies that work for any backbone (:func:`commonness`: what the other images match;
:func:`border_contrast`: what is unlike every photo's border), the k-means that clusters a set's
descriptors (:func:`kmeans`), Amir et al.'s co-segmentation that votes on the clusters
(:func:`cosegment`), and :func:`saliency_masks`, the masks the methods use when a user gives none.
Taught in Chapter 3, "4. Saliency and co-segmentation masks".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backbones import Backbone, extract_descriptors

__all__ = [
    "commonness", "border_contrast", "kmeans", "cosegment", "saliency_masks", "border_band", "valid_on_grid",
]


def _unit_rows(descriptors: torch.Tensor) -> torch.Tensor:
    N, D, h, w = descriptors.shape
    return F.normalize(descriptors.permute(0, 2, 3, 1).reshape(N, h * w, D).float(), dim=-1)


def commonness(descriptors: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """A saliency for any backbone: how well each location is matched in the *other* images ``(N, 1, h, w)``.

    For every location of image ``n``, its best cosine similarity in image ``m`` is averaged over
    ``m != n``, then min-max normalised per image to ``[0, 1]``. What the set has in common (the
    object) is matched everywhere; a background seen in one photo only is not. Computed on a
    ``grid`` x ``grid`` version of ``descriptors`` and upsampled back (cost ``N^2 grid^4 D``). Taught
    in Chapter 3, "4. Saliency and co-segmentation masks".

    Args:
        descriptors: ``(N, D, h, w)``, ``N >= 2``.
        grid: the side of the grid the matching is computed on.

    Returns:
        ``(N, 1, h, w)`` in ``[0, 1]``.

    Raises:
        ValueError: fewer than 2 images.

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> d = torch.randn(3, 8, 4, 4, generator=generator)
        >>> d[:, :, :2, :2] = torch.randn(8, 1, 1, generator=generator)   # the same "object" in every image
        >>> s = commonness(d, grid=4)
        >>> bool(s[:, 0, :2, :2].min() == 1.0), s.shape
        (True, torch.Size([3, 1, 4, 4]))
    """
    N, D, h, w = descriptors.shape
    if N < 2:
        raise ValueError("commonness compares images with each other: it needs at least 2 images")
    small = F.interpolate(descriptors.float(), size=(grid, grid), mode="bilinear", align_corners=False) if (h, w) != (grid, grid) else descriptors.float()
    rows = _unit_rows(small)  # (N, g*g, D)
    score = torch.zeros(N, grid * grid, device=rows.device)
    for n in range(N):
        best = torch.einsum("id,mjd->mij", rows[n], rows).amax(dim=2)  # (N, g*g): best match in each image
        score[n] = (best.sum(dim=0) - best[n]) / (N - 1)
    score = score.reshape(N, 1, grid, grid)
    if (h, w) != (grid, grid):
        score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
    low, high = score.amin(dim=(2, 3), keepdim=True), score.amax(dim=(2, 3), keepdim=True)
    return (score - low) / (high - low + 1e-12)


def border_contrast(descriptors: torch.Tensor, valid: torch.Tensor | None = None, width: float = 0.125, grid: int = 16) -> torch.Tensor:
    """A saliency that tells the object from a background the whole set shares ``(N, 1, h, w)``.

    Every photo's border band (:func:`border_band`, ``width`` of its side) shows mostly background.
    For each location of image ``n``, its best cosine similarity to the border band of image ``m``
    is taken, and the median over all ``m`` (so the few photos where the object reaches the border
    do not count) is subtracted from 1: the object is unlike every photo's border, a wall or a
    table is like it, however common it is to the set. Min-max normalised per image to ``[0, 1]``
    over ``valid`` (0 elsewhere). Computed on a ``grid`` x ``grid`` version of ``descriptors`` and
    upsampled back. Taught in Chapter 3, "4. Saliency and co-segmentation masks"; :func:`cosegment`'s
    default saliency.

    Args:
        descriptors: ``(N, D, h, w)``.
        valid: ``(N, 1, h, w)`` the photos' own pixels (> 0.5), or None for everything.
        width: the border band's width, as a fraction of the side.
        grid: the side of the grid the matching is computed on.

    Returns:
        ``(N, 1, h, w)`` in ``[0, 1]``.

    Example:
        >>> d = torch.zeros(2, 2, 8, 8); d[:, 0] = 1.0          # background everywhere ...
        >>> d[:, :, 3:5, 3:5] = torch.tensor([0.0, 1.0])[:, None, None]  # ... and an object inside
        >>> s = border_contrast(d, grid=8)
        >>> float(s[:, 0, 3:5, 3:5].min()), float(s[:, 0, 0].max())
        (1.0, 0.0)
    """
    N, D, h, w = descriptors.shape
    small = F.interpolate(descriptors.float(), size=(grid, grid), mode="bilinear", align_corners=False) if (h, w) != (grid, grid) else descriptors.float()
    inside = torch.ones(N, 1, grid, grid, device=small.device) if valid is None else valid_on_grid(valid, (grid, grid)).to(small.device)
    band = border_band(inside, width).reshape(N, -1) > 0.5
    rows = _unit_rows(small)  # (N, g*g, D)
    similarity = torch.stack([torch.einsum("nid,bd->nib", rows, rows[m][band[m]]).amax(dim=2) for m in range(N)], dim=1)  # (N, N, g*g)
    score = 1 - similarity.median(dim=1).values
    flat_inside = inside.reshape(N, -1) > 0.5
    low = score.masked_fill(~flat_inside, math.inf).amin(dim=1, keepdim=True)
    high = score.masked_fill(~flat_inside, -math.inf).amax(dim=1, keepdim=True)
    score = ((score - low) / (high - low + 1e-12)).clamp(0, 1) * flat_inside
    score = score.reshape(N, 1, grid, grid)
    if (h, w) != (grid, grid):
        score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
    return score


def kmeans(points: torch.Tensor, k: int, iterations: int = 30, restarts: int = 3, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Plain (Euclidean) k-means of ``points`` ``(M, D)``: centroids ``(k, D)`` and the mean squared distance.

    k-means++ initialisation from a seeded generator, at most ``iterations`` Lloyd steps (fewer once
    the labels stop changing), ``restarts`` runs, the best kept: the same inputs and ``seed`` give
    the same centroids. No chapter calls it; :func:`cosegment` clusters with it (Chapter 3, "4.
    Saliency and co-segmentation masks", describes the clustering).

    Args:
        points: ``(M, D)``, ``M >= k``.
        k: the number of clusters.
        iterations: the most Lloyd steps per run.
        restarts: the number of runs.
        seed: seed of the CPU generator for the initialisation.

    Returns:
        ``(centroids, inertia)``: float ``(k, D)`` and the mean squared distance of the points to
        their nearest centroid (a float).

    Raises:
        ValueError: fewer than ``k`` points.

    Example:
        >>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
        >>> centroids, inertia = kmeans(x, 2)
        >>> sorted(centroids[:, 0].tolist()), inertia
        ([0.0, 10.0], 0.0)
    """
    if points.shape[0] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {points.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    squared = points.pow(2).sum(dim=1, keepdim=True)  # (M, 1)
    distances = lambda c: (squared - 2 * points @ c.T + c.pow(2).sum(dim=1)).clamp(min=0)  # noqa: E731  (M, k)
    best = (None, math.inf)
    for _ in range(restarts):
        centroids = points[torch.randint(points.shape[0], (1,), generator=generator)]
        for _ in range(1, k):
            nearest = distances(centroids).amin(dim=1)
            weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
            centroids = torch.cat([centroids, points[torch.multinomial(weights.cpu(), 1, generator=generator)]])
        labels = None
        for _ in range(iterations):
            previous, labels = labels, distances(centroids).argmin(dim=1)
            if previous is not None and torch.equal(previous, labels):
                break  # converged: the centroids would not move
            assignment = F.one_hot(labels, k).float()  # (M, k)
            counts = assignment.sum(dim=0)[:, None]
            centroids = torch.where(counts > 0, assignment.T @ points / counts.clamp(min=1), centroids)
        inertia = float(distances(centroids).amin(dim=1).mean())
        if inertia < best[1]:
            best = (centroids, inertia)
    return best


def cosegment(
    descriptors: torch.Tensor,
    saliency: torch.Tensor | None = None,
    max_clusters: int = 14,
    elbow: float = 0.975,
    vote_threshold: float = 0.3,
    vote_fraction: float = 0.75,
    sample: int = 100,
    seed: int = 0,
    valid: torch.Tensor | None = None,
    border_prior: bool = True,
    border_width: float = 0.0625,
) -> torch.Tensor:
    """Co-segment the common object of a set: binary masks ``(N, 1, h, w)`` from descriptors ``(N, D, h, w)``.

    Amir et al.'s recipe, without the CRF/GrabCut refinement:

    1. k-means on the set's unit descriptors (every ``sample``-th location of every image), for
       k = 2, 3, ... up to ``max_clusters``; stop at the first k whose mean squared distance is
       above ``elbow`` times the previous one (the elbow), and label every location with it;
    2. image n *votes* for cluster c if the mean ``saliency`` of its locations labelled c is
       above ``vote_threshold``;
    3. the clusters with votes from at least ``vote_fraction`` of the images are the object (at
       least the most voted one); the mask is where those clusters are.

    Two additions for photos taken in one place, where the background (a wall, a table) is as
    common to the set as the object (Chapter 3, "4. Saliency and co-segmentation masks", its
    paragraph "When the background is shared"):

    * ``valid`` ``(N, 1, h, w)``: the photos' own pixels (0 on the padding that squares them); the
      padding is left out of the clustering, the votes and the masks.
    * ``border_prior``: a cluster found more often in the band along each photo's border
      (``border_width`` of its side) than inside it is background, whatever its votes (the most
      voted cluster that is not is kept, so a mask is never empty). Objects are photographed
      inside the frame; backgrounds run out of it.

    ``saliency`` ``(N, 1, h, w)`` in ``[0, 1]``: by default :func:`border_contrast`, which works for
    any backbone and is not fooled by a background the whole set shares (``vote_threshold=0.3``;
    measured on CUB classes 1-10 and on lego on a shared wall by ``benchmarks/bench_cosegment.py``,
    where it beat both :func:`commonness` and the product of the two); or :func:`commonness`, which
    suits sets whose backgrounds differ from photo to photo and have no structure of their own; or
    a ViT's CLS attention (:meth:`ViTKeys.saliency`, resized to
    ``(h, w)``), which is peaked: Amir et al. vote on it with ``vote_threshold=0.065``.
    Deterministic for a given ``seed``. Taught in Chapter 3, "4. Saliency and co-segmentation masks".

    Args:
        descriptors: ``(N, D, h, w)``.
        saliency: ``(N, 1, h, w)`` in ``[0, 1]``, or None for :func:`border_contrast`.
        max_clusters: the largest k tried.
        elbow: the inertia ratio at which k stops growing.
        vote_threshold: the mean saliency above which an image votes for a cluster.
        vote_fraction: the fraction of images whose votes make a cluster the object.
        sample: cluster every ``sample``-th location of each image.
        seed: the k-means seed.
        valid: ``(N, 1, h, w)`` the photos' own pixels (> 0.5), or None for everything.
        border_prior: treat clusters found more on the border band than inside as background.
        border_width: the border band's width, as a fraction of the side.

    Returns:
        float masks ``(N, 1, h, w)`` of 0 and 1.

    Raises:
        ValueError: ``valid`` or ``saliency`` is not ``(N, 1, h, w)``.

    Example:
        >>> d = torch.zeros(4, 2, 8, 8); d[:, 0] = 1.0                       # background everywhere ...
        >>> d[:, :, 2:6, 2:6] = torch.tensor([0.0, 1.0])[:, None, None]      # ... and an object inside
        >>> masks = cosegment(d, sample=1, seed=0)
        >>> masks.shape, masks.sum().item(), masks[:, 0, 2:6, 2:6].all().item()
        (torch.Size([4, 1, 8, 8]), 64.0, True)
    """
    N, D, h, w = descriptors.shape
    inside = torch.ones(N, h * w, dtype=torch.bool, device=descriptors.device)
    if valid is not None:
        if valid.shape != (N, 1, h, w):
            raise ValueError(f"valid must be (N, 1, h, w) = {(N, 1, h, w)}, got {tuple(valid.shape)}")
        inside = (valid > 0.5).reshape(N, h * w).to(descriptors.device)
    if saliency is None:
        saliency = border_contrast(descriptors, valid)
    if saliency.shape != (N, 1, h, w):
        raise ValueError(f"saliency must be (N, 1, h, w) = {(N, 1, h, w)}, got {tuple(saliency.shape)}")
    rows = _unit_rows(descriptors)  # (N, h*w, D)
    fit = rows[:, ::sample][inside[:, ::sample]]
    centroids, previous = kmeans(fit, 1, seed=seed)
    for k in range(2, min(max_clusters, fit.shape[0]) + 1):
        centroids, inertia = kmeans(fit, k, seed=seed)
        if inertia > elbow * previous:
            break
        previous = inertia
    k = centroids.shape[0]
    squared = centroids.pow(2).sum(dim=1)
    labels = torch.stack([(squared - 2 * image @ centroids.T).argmin(dim=1) for image in rows])  # (N, h*w): nearest centroid
    flat_saliency = saliency.reshape(N, h * w).float() * inside
    weight = inside.float()
    sums = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, flat_saliency)
    counts = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, weight)
    present = counts > 0
    votes = (present & (sums / counts.clamp(min=1) > vote_threshold)).sum(dim=0)
    candidates = torch.ones(k, dtype=torch.bool, device=labels.device)
    if border_prior:
        band = border_band(inside.reshape(N, 1, h, w).float(), border_width).reshape(N, h * w)
        on_border = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, band * weight).sum(dim=0)
        off_border = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, (1 - band) * weight).sum(dim=0)
        share_border = on_border / on_border.sum().clamp(min=1)
        share_inside = off_border / off_border.sum().clamp(min=1)
        candidates = share_border <= share_inside
        if not candidates.any():
            candidates = share_border / share_inside.clamp(min=1e-12) == (share_border / share_inside.clamp(min=1e-12)).min()
    salient = (votes >= math.ceil(vote_fraction * N)) & candidates
    salient[torch.where(candidates, votes, -1).argmax()] = True
    return (salient[labels] & inside).reshape(N, 1, h, w).float()


def saliency_masks(images: torch.Tensor, backbone: "Backbone", given: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """Object masks of a photo set for the methods that need one, and where they came from.

    No chapter section is about it; Chapter 4, "A set of your choice", uses it, and so do ``congeal
    align`` (:func:`congealing.align.align`), Neural Congealing's ``fit`` and :mod:`congealing.congeal3d.captures`.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        backbone: the :class:`Backbone` whose descriptors the co-segmentation clusters (not used
            when ``given`` is set).
        given: ``(N, 1, h, w)`` masks to use as they are (e.g. a user's alpha channels), or None.
        valid: ``(N, 1, H, W)``, the photos' own pixels (:attr:`congealing.data.ImageSet.valid`);
            the co-segmentation leaves out the padding outside them.

    Returns:
        ``(masks (N, 1, h, w) float, source)``: ``given`` if any, else :func:`cosegment` of the
        backbone's descriptors (Chapter 3, "4. Saliency and co-segmentation masks"); ``source`` says
        which, for the report.

    Example:
        >>> masks, source = saliency_masks(torch.zeros(2, 3, 8, 8), None, given=torch.ones(2, 1, 8, 8))
        >>> masks.shape, source
        (torch.Size([2, 1, 8, 8]), 'given (alpha channels or --masks)')
    """
    if given is not None:
        return given.float(), "given (alpha channels or --masks)"
    descriptors = extract_descriptors(images, backbone)
    small = None if valid is None else valid_on_grid(valid, descriptors.shape[-2:])
    return cosegment(descriptors, valid=small).float(), "co-segmentation"


def valid_on_grid(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The photos' own pixels ``valid`` ``(N, 1, H, W)`` on a coarser ``size`` grid, float 0/1 ``(N, 1, h, w)``.

    A cell counts if more than half of it is the photo's own. A photo too thin for that anywhere (a
    panorama 30 times as wide as tall, squared by padding, on a 16 x 16 grid) keeps every cell it
    touches instead, so that no photo is left without a valid cell. No chapter calls it;
    :func:`saliency_masks`, :func:`border_contrast` and SpaceJAM's keys use it.

    Args:
        valid: ``(N, 1, H, W)``, the photos' own pixels where > 0.5.
        size: ``(h, w)``, the grid.

    Returns:
        float ``(N, 1, h, w)`` of 0 and 1.

    Example:
        >>> strip = torch.zeros(1, 1, 32, 32); strip[:, :, 15:16] = 1.0   # one row of 32
        >>> valid_on_grid(strip, (4, 4))[0, 0].int()
        tensor([[0, 0, 0, 0],
                [1, 1, 1, 1],
                [0, 0, 0, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    fraction = F.interpolate(valid.float(), size=tuple(size), mode="area")
    inside = fraction > 0.5
    thin = ~inside.flatten(1).any(dim=1)  # (N,): photos with no cell more than half their own
    inside[thin] = fraction[thin] > 0
    return inside.float()


def border_band(valid: torch.Tensor, width: float = 0.0625) -> torch.Tensor:
    """The band along the border of each image's ``valid`` area.

    Valid locations within ``width`` of the side (at least one location) of an invalid one or of the
    grid's edge. No chapter calls it; :func:`border_contrast` and :func:`cosegment` use it.

    Args:
        valid: ``(N, 1, h, w)``, valid where > 0.5.
        width: the band's width as a fraction of ``max(h, w)`` (at least one location).

    Returns:
        float ``(N, 1, h, w)`` of 0 and 1.

    Example:
        >>> border_band(torch.ones(1, 1, 6, 6), width=1 / 6)[0, 0].int()
        tensor([[1, 1, 1, 1, 1, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    """
    N, _, h, w = valid.shape
    r = max(1, round(width * max(h, w)))
    outside = F.pad(1 - (valid > 0.5).float(), (r, r, r, r), value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=2 * r + 1, stride=1)
    return (valid > 0.5).float() * near_outside
