"""Neural Congealing's loss terms on the atlas and the keys: :func:`keys_loss`, :func:`saliency_loss`,
the sparsity terms (:func:`l0_approx`, :func:`saliency_sparsity`, :func:`keys_sparsity`) and
:func:`center_loss`. Chapter 4, "The losses, one line of reason each"; training (:mod:`congealing.neural.training`) weighs them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import warps
from ..losses import masked_mean

__all__ = ["keys_loss", "saliency_loss", "l0_approx", "saliency_sparsity", "keys_sparsity", "center_loss"]


def keys_loss(atlas_keys: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-mean squared distance and cosine distance between atlas keys and congealed keys.

    Both come from one dot product and two squared norms (``|a-k|^2 = |a|^2 + |k|^2 - 2 a.k``):
    with D in the hundreds these channel reductions are most of a step's cost on a CPU. Each is
    averaged under ``mask`` with :func:`congealing.losses.masked_mean`. Chapter 4, "The losses, one
    line of reason each".

    Args:
        atlas_keys: ``(1|B, D, A, A)``.
        keys: the congealed keys ``(B, D, A, A)``.
        mask: weights ``(B, 1, A, A)`` (in training: atlas saliency times ``inside``).

    Returns:
        ``(l2, cos)``, two 0-d tensors: the masked mean of ``|a - k|^2 / D`` and of
        ``1 - cos(a, k)``.

    Example:
        >>> import torch
        >>> from congealing.neural import keys_loss
        >>> _ = torch.manual_seed(0)
        >>> k = torch.randn(2, 5, 3, 3)
        >>> [round(v.item(), 6) for v in keys_loss(k, k, torch.ones(2, 1, 3, 3))]
        [0.0, 0.0]
    """
    dot = (atlas_keys * keys).sum(dim=1, keepdim=True)
    a2 = atlas_keys.pow(2).sum(dim=1, keepdim=True)
    k2 = keys.pow(2).sum(dim=1, keepdim=True)
    l2 = (a2 + k2 - 2.0 * dot).clamp_min(0.0) / keys.shape[1]
    cos = 1.0 - dot / (a2 * k2).clamp_min(1e-16).sqrt()
    return masked_mean(l2, mask), masked_mean(cos, mask)


def saliency_loss(atlas_saliency: torch.Tensor, saliency: torch.Tensor, inside: torch.Tensor, delta: float = 0.7) -> torch.Tensor:
    """Huber distance between the atlas saliency and the congealed masks, over the atlas pixels that
    map inside the image (Chapter 4, "The losses, one line of reason each").

    Args:
        atlas_saliency: ``(1|B, 1, A, A)`` in ``[0, 1]``.
        saliency: the congealed masks ``(B, 1, A, A)``.
        inside: ``(B, 1, A, A)``, 1 where the atlas pixel samples inside the image.
        delta: the Huber threshold.

    Returns:
        a scalar, the mean Huber distance under ``inside``.

    Example:
        >>> m = torch.ones(2, 1, 4, 4)
        >>> saliency_loss(m[:1], m, m).item(), round(saliency_loss(0 * m[:1], m, m, delta=0.7).item(), 4)  # 0.7 * (1 - 0.35)
        (0.0, 0.455)
    """
    huber = F.huber_loss(atlas_saliency.expand_as(saliency), saliency, reduction="none", delta=delta)
    return masked_mean(huber, inside)


def l0_approx(values: torch.Tensor, steepness: float = 5.0) -> torch.Tensor:
    """A smooth count of non-zeros: ``2 sigmoid(steepness * v) - 1``; 0 at 0, close to 1 from ~0.5 up.

    Elementwise; :func:`saliency_sparsity` averages it over the atlas saliency. Chapter 4, "The
    losses, one line of reason each".

    Args:
        values: any shape, usually non-negative (e.g. a saliency in ``[0, 1]``).
        steepness: the slope at 0 is ``steepness / 2``.

    Returns:
        a tensor of the shape of ``values``, in ``(-1, 1)``.

    Example:
        >>> import torch
        >>> from congealing.neural import l0_approx
        >>> l0_approx(torch.tensor([0.0, 1.0])).round(decimals=3)
        tensor([0.0000, 0.9870])
    """
    return 2.0 * torch.sigmoid(steepness * values) - 1.0


def saliency_sparsity(atlas_saliency: torch.Tensor, steepness: float = 5.0) -> torch.Tensor:
    """``mean |a| + 0.5 mean L0(a)`` over the atlas saliency: keeps the atlas foreground small
    (Chapter 4, "The losses, one line of reason each").

    Args:
        atlas_saliency: ``(..., A, A)`` in ``[0, 1]``.
        steepness: of :func:`l0_approx`.

    Returns:
        a scalar, 0 for an all-zero saliency.

    Example:
        >>> saliency_sparsity(torch.zeros(4, 4)).item()
        0.0
    """
    return atlas_saliency.abs().mean() + 0.5 * l0_approx(atlas_saliency, steepness).mean()


def keys_sparsity(atlas_keys: torch.Tensor, atlas_saliency: torch.Tensor) -> torch.Tensor:
    """L1 norm (summed over the D channels) of the atlas keys, averaged with weight ``1 - saliency``
    (detached): background atlas keys go to zero (Chapter 4, "The losses, one line of reason each").

    Args:
        atlas_keys: ``(D, A, A)``.
        atlas_saliency: ``(A, A)`` in ``[0, 1]``.

    Returns:
        a scalar.

    Example:
        >>> keys_sparsity(torch.ones(3, 2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]])).item()
        3.0
    """
    weight = 1.0 - atlas_saliency.detach()
    return masked_mean(atlas_keys.abs().sum(dim=0), weight)


def center_loss(atlas_saliency: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """Half the squared distance of the saliency's centre of mass from the atlas centre.

    The centre of mass is taken in normalised coordinates (:func:`congealing.warps.identity_grid`),
    each pixel weighted by the saliency (times ``inside`` if given). Chapter 4, "The losses, one line
    of reason each".

    Args:
        atlas_saliency: ``(A, A)`` in ``[0, 1]``.
        inside: ``(A, A)`` weights, the atlas pixels some image reaches, or None (all).

    Returns:
        a 0-d tensor, 0 when the centre of mass is the atlas centre.

    Example:
        >>> import torch
        >>> from congealing.neural import center_loss
        >>> s = torch.zeros(8, 8); s[3:5, 3:5] = 1
        >>> center_loss(s).item()
        0.0
        >>> center_loss(torch.roll(s, 2, dims=1)).item()  # centre at x = 0.5: 0.5 * 0.5 ** 2
        0.125
    """
    A_h, A_w = atlas_saliency.shape[-2:]
    coords = warps.identity_grid((A_h, A_w), 1, atlas_saliency.dtype, atlas_saliency.device)[0]  # (A, A, 2) x, y
    weight = atlas_saliency if inside is None else atlas_saliency * inside
    centre = (weight[..., None] * coords).sum(dim=(0, 1)) / weight.sum().clamp_min(1e-8)
    return 0.5 * centre.pow(2).sum()
