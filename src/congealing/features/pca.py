"""Descriptors as colour: the principal components of a whole set, shown as RGB.

:func:`pca_project` fits the components on every location of every image of a set, so the same
component means the same thing in every image; :func:`minmax_rgb` turns three maps into colours by
one range for the whole set; :class:`PCAColours` fixes both on one set and colours any descriptors
of the same space the same way. Taught in Chapter 3, "2. Looking at 472 dimensions: PCA as colour".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "pca_project", "channel_spread", "foreground_locations", "minmax_rgb", "PCAColours",
]


def _locations(descriptors: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every location's descriptor ``(N h w, D)`` and those a fit uses ``(M, D)`` (inside ``masks`` > 0.5, or all)."""
    flat = descriptors.permute(0, 2, 3, 1).reshape(-1, descriptors.shape[1])
    return flat, (flat if masks is None else flat[masks.permute(0, 2, 3, 1).reshape(-1) > 0.5])


def pca_project(descriptors: torch.Tensor, k: int, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project descriptors ``(N, D, h, w)`` on the top ``k`` principal components of the whole set.

    The components are fitted on all locations of all images (only where ``masks`` is > 0.5, if
    given), so the same component means the same thing in every image. Exact (an eigendecomposition
    of the ``D x D`` scatter matrix in float64) and deterministic: each component's largest entry is
    made positive. Taught in Chapter 3, "2. Looking at 472 dimensions: PCA as colour".

    Args:
        descriptors: ``(N, D, h, w)``.
        k: the number of components.
        masks: ``(N, 1, h, w)``, the locations to fit on (> 0.5), or None for all.

    Returns:
        ``(maps, components, mean)``: the projections of *all* locations ``(N, k, h, w)``, the
        components ``(k, D)`` (orthonormal rows, largest variance first) and the mean ``(D,)``.

    Raises:
        ValueError: fewer than ``k`` locations to fit on.

    Example:
        >>> points = torch.tensor([[[[0.0, 0.0], [4.0, 4.0]], [[0.0, 2.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
        >>> maps, components, mean = pca_project(points, k=1)       # x varies most
        >>> components, mean
        (tensor([[1., 0.]]), tensor([2., 1.]))
        >>> maps[0, 0]
        tensor([[-2., -2.],
                [ 2.,  2.]])
    """
    N, D, h, w = descriptors.shape
    flat, fit = _locations(descriptors, masks)
    if fit.shape[0] < k:
        raise ValueError(f"PCA with k={k} needs at least {k} locations, got {fit.shape[0]}")
    mean = fit.mean(dim=0)
    centred = (fit - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # exact and deterministic (D x D)
    components = vectors[:, -k:].flip(-1).T
    # An eigenvector's sign is arbitrary: make each one's largest entry positive, so reruns agree.
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = (components * signs).float().contiguous()
    projected = (flat - mean) @ components.T
    return projected.reshape(N, h, w, k).permute(0, 3, 1, 2).contiguous(), components, mean


def channel_spread(descriptors: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """The standard deviation ``(D,)`` of each channel of descriptors ``(N, D, h, w)`` over the
    locations :func:`pca_project` would fit on (inside ``masks`` ``(N, 1, h, w)`` > 0.5, or all),
    floored at 1e-9. Dividing by it before the PCA z-scores every channel, as SpaceJAM's official
    code does (Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder").

    Example:
        >>> channel_spread(torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]]))  # (1, 2, 1, 2): one varying channel, one constant
        tensor([1.4142e+00, 1.0000e-09])
    """
    return _locations(descriptors, masks)[1].std(dim=0).clamp_min(1e-9)


def foreground_locations(masks: torch.Tensor, k: int) -> torch.Tensor | None:
    """The locations to fit a ``k``-component PCA on: inside ``masks``, or None (every location)
    when the masks hold fewer than ``k`` of them. SpaceJAM's ``pca_fit`` and Neural Congealing's
    ``keys_pca_fit`` (Chapters 4 and 5) fit their keys' basis on the object this way.

    Args:
        masks: ``(N, 1, h, w)`` in ``[0, 1]``, at the descriptors' resolution.
        k: the number of components.

    Returns:
        ``(N, 1, h, w)`` binary masks (``masks > 0.5``) for :func:`pca_project`, or None.

    Example:
        >>> foreground_locations(torch.tensor([[[[0.9, 0.2], [0.7, 0.0]]]]), 2).flatten().tolist()
        [1.0, 0.0, 1.0, 0.0]
        >>> foreground_locations(torch.tensor([[[[0.9, 0.2], [0.7, 0.0]]]]), 3) is None
        True
    """
    inside = (masks > 0.5).float()
    return inside if inside.sum() >= k else None


def minmax_rgb(maps: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> torch.Tensor:
    """Three maps per image ``(N, 3, h, w)`` as RGB in ``[0, 1]``, by one min-max per channel.

    ``low``, ``high`` ``(3,)``: the range that maps to 0 and 1; by default the set's own minimum and
    maximum over all images and locations, so the same colour means the same value in every image.
    Values outside a given range are clipped. Taught in Chapter 3, "2. Looking at 472 dimensions:
    PCA as colour"; SpaceJAM's key maps in Chapter 5, "The keys: masked PCA maps and a 3-channel
    autoencoder".

    Args:
        maps: ``(N, 3, h, w)``.
        low: ``(3,)`` the values shown as 0, or None for the set's minimum.
        high: ``(3,)`` the values shown as 1, or None for the set's maximum.

    Returns:
        ``(N, 3, h, w)`` in ``[0, 1]``.

    Example:
        >>> maps = torch.tensor([[[[0.0, 2.0]], [[1.0, 3.0]], [[-1.0, 1.0]]]])  # (1, 3, 1, 2)
        >>> minmax_rgb(maps)[0, :, 0]
        tensor([[0., 1.],
                [0., 1.],
                [0., 1.]])
        >>> minmax_rgb(maps, low=torch.zeros(3), high=torch.full((3,), 2.0))[0, :, 0]
        tensor([[0.0000, 1.0000],
                [0.5000, 1.0000],
                [0.0000, 0.5000]])
    """
    low = maps.amin(dim=(0, 2, 3)) if low is None else low
    high = maps.amax(dim=(0, 2, 3)) if high is None else high
    low, high = low.reshape(1, -1, 1, 1), high.reshape(1, -1, 1, 1)
    return ((maps - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class PCAColours:
    """Descriptors shown as colour: the top 3 principal components of a set as red, green and blue.

    :meth:`fit` fixes the components, the mean and the colour range on one set (the range over all
    its locations); calling the result colours any descriptors ``(N, D, h, w)`` of the same space
    (the set itself, an atlas, a new image) the same way: ``(N, 3, h, w)`` in ``[0, 1]``. Taught in
    Chapter 3, "2. Looking at 472 dimensions: PCA as colour"; Chapter 4, "The set, its keys and its
    masks", colours its atlas with it.

    Attributes:
        components: ``(3, D)`` from :func:`pca_project`.
        mean: ``(D,)``.
        low: ``(3,)`` the projection values shown as 0.
        high: ``(3,)`` the projection values shown as 1.

    Example:
        >>> descriptors = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> colours = PCAColours.fit(descriptors)
        >>> rgb = colours(descriptors)
        >>> rgb.shape, float(rgb.amin()), float(rgb.amax())
        (torch.Size([2, 3, 4, 4]), 0.0, 1.0)
    """

    components: torch.Tensor  # (3, D)
    mean: torch.Tensor  # (D,)
    low: torch.Tensor  # (3,)
    high: torch.Tensor  # (3,)

    @classmethod
    def fit(cls, descriptors: torch.Tensor, masks: torch.Tensor | None = None) -> "PCAColours":
        """Fit the colours on one set: the components and the colour range.

        Args:
            descriptors: ``(N, D, h, w)``.
            masks: ``(N, 1, h, w)``, the locations the components are fitted on (> 0.5), or None for all.
                The colour range is always taken over all locations of ``descriptors``.

        Returns:
            the :class:`PCAColours`.

        Raises:
            ValueError: fewer than 3 locations to fit on.
        """
        maps, components, mean = pca_project(descriptors, 3, masks)
        return cls(components, mean, maps.amin(dim=(0, 2, 3)), maps.amax(dim=(0, 2, 3)))

    def __call__(self, descriptors: torch.Tensor) -> torch.Tensor:
        maps = torch.einsum("ndhw,kd->nkhw", descriptors - self.mean[None, :, None, None], self.components)
        return minmax_rgb(maps, self.low, self.high)
