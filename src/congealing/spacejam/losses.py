"""SpaceJAM's losses: the inverse-compositional loss on the keys (:func:`ic_loss`), its pairwise
warps (:func:`pair_predictions`) and the atlas form (:func:`atlas_loss`). Chapter 5, "Why
atlases and regularisers are fragile"; training (:mod:`congealing.spacejam.training`) calls them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import warps

__all__ = ["pair_predictions", "ic_loss", "atlas_loss"]


def pair_predictions(sources: torch.Tensor, source_T: torch.Tensor, target_T: torch.Tensor) -> torch.Tensor:
    """Every source map carried into every target's frame, with ONE interpolation each.

    Entry ``[a, :, q]`` is source ``a`` warped by ``T_q^-1 T_a`` (bilinear, zero outside the source).
    The ``Q`` sampling grids of one source are stacked vertically into one tall grid, so
    ``grid_sample`` reads each source once and no copies of the sources are made. Chapter 5, "Why
    atlases and regularisers are fragile".

    Args:
        sources: the maps to carry ``(A, C, S, S)``.
        source_T: their transforms ``(A, 3, 3)``, image -> common frame.
        target_T: the targets' transforms ``(Q, 3, 3)``, image -> common frame.

    Returns:
        ``(A, C, Q, S, S)``: every source in every target's frame.

    Example:
        >>> import torch
        >>> from congealing import warps
        >>> from congealing.spacejam import pair_predictions
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(2, 4, 8, 8); T = warps.exp(torch.randn(2, 8) * 0.1)
        >>> out = pair_predictions(x, T, T)
        >>> torch.allclose(out[0, :, 0], x[0], atol=1e-5), tuple(out.shape)
        (True, (2, 4, 2, 8, 8))
    """
    A, C, S, _ = sources.shape
    Q = target_T.shape[0]
    # Sampling the source at (T_q^-1 T_a)^-1 p = T_a^-1 T_q p for every pixel p of target q's frame.
    relative = torch.linalg.solve(source_T[:, None], target_T[None].expand(A, Q, 3, 3))
    grid = warps.identity_grid((S, S), 1, sources.dtype, sources.device).reshape(1, S * S, 2).expand(A * Q, -1, -1)
    points = warps.transform_points(relative.reshape(A * Q, 3, 3), grid).reshape(A, Q * S, S, 2)
    out = F.grid_sample(sources, points, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(A, C, Q, S, S)


def ic_loss(
    decoded: torch.Tensor,
    keys: torch.Tensor,
    transforms: torch.Tensor,
    config_index: torch.Tensor,
    atlas_flips: bool = True,
    outside: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse-compositional loss over all ordered pairs of a batch, with reflections.

    Source ``i`` (in its configuration ``c_i``) predicts target ``j`` in configuration ``r`` through
    the common frame, optionally mirrored there (``F^a``, the "atlas flip"):
    ``e[a, i, j, r] = mean_pixels |keys_j - W(decoded_i; T_{j,r}^-1 F^a T_{i,c_i})|^2 / K``, the self
    pair ``i = j`` included (as in the official code). With ``R = 2`` and ``atlas_flips`` (the
    official loss) the loss is ``mean_{i, j, r} min_a e[a, i, j, r]``: *both* configurations of
    every target are trained (so the network learns to align an image and its mirror alike), and
    the mirrored atlas serves the configuration that does not match it as it is. Without
    ``atlas_flips``: ``mean_j min_r mean_i e[0, i, j, r]`` (gradients through the best
    configuration only). Chapter 5, "Why atlases and regularisers are fragile".

    Args:
        decoded: ``(B, K, S, S)``, the autoencoder's keys of the batch (the sources).
        keys: ``(B, K, S, S)``, the masked PCA keys (the targets).
        transforms: ``(R, B, 3, 3)``, each image's transform (image -> common frame) in each of its
            ``R`` flip configurations (``R = 1`` or ``2``).
        config_index: ``(B,)`` long, each image's current configuration, used when it is the source.
        atlas_flips: also let every source predict through the mirrored common frame (used only
            when ``R = 2``).
        outside: ``(K,)``, what a source predicts outside its frame (None: 0, the masked background);
            the official code warps codes with zero padding, so it predicts ``Dec(0)`` there.
        weight: ``(B, 1, S, S)`` per-pixel weights of each target (e.g. its mask; the official
            ``weight_loss_with_masks``), the pixel mean becoming a weighted mean; None: uniform.

    Returns:
        the loss, a 0-d tensor, and ``mean_i e[0, i, j, r]`` ``(B, R)`` detached (per target and
        configuration), for the flip history.

    Example:
        >>> import torch
        >>> from congealing import warps
        >>> from congealing.spacejam import ic_loss
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(3, 5, 8, 8); T = warps.identity(3)[None]
        >>> loss, e = ic_loss(x[:1].expand(3, -1, -1, -1), x[:1].expand(3, -1, -1, -1), T, torch.zeros(3, dtype=torch.long))
        >>> float(loss) < 1e-10, tuple(e.shape)
        (True, (3, 1))
    """
    R, B = transforms.shape[:2]
    K = keys.shape[1]
    if outside is not None:  # predict ``outside`` beyond the source's frame: shift both sides by it
        outside = outside.reshape(1, K, 1, 1)
        decoded, keys = decoded - outside, keys - outside
    source_T = transforms[config_index, torch.arange(B, device=transforms.device)]
    A = 2 if atlas_flips and R == 2 else 1
    if A == 2:  # every source also mirrored in the common frame: F T_i
        source_T = torch.cat([source_T, warps.hflip(True, B, source_T.dtype, source_T.device) @ source_T])
        decoded = decoded.repeat(2, 1, 1, 1)
    predictions = pair_predictions(decoded, source_T, transforms.reshape(R * B, 3, 3))  # (A*B_src, K, R*B_tgt, S, S)
    errors = (predictions.reshape(A, B, K, R, B, *keys.shape[-2:]) - keys.transpose(0, 1)[None, None, :, None]).pow(2)
    if weight is None:
        errors = errors.mean(dim=(2, 5, 6))  # (A, B_src, R, B_tgt)
    else:
        w = weight[:, 0] / weight[:, 0].sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)  # (B_tgt, S, S), sums to 1
        errors = (errors.mean(dim=2) * w[None, None, None]).sum(dim=(-2, -1))
    per_target = errors[0].mean(dim=0).transpose(0, 1)  # (B_tgt, R)
    loss = errors.min(dim=0).values.mean() if A == 2 else per_target.min(dim=1).values.mean()
    return loss, per_target.detach()


def atlas_loss(decoded: torch.Tensor, keys: torch.Tensor, transforms: torch.Tensor, config_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ablation: distance of every aligned map to their mean (the atlas), in the atlas frame, with no regulariser.

    The atlas is the mean of the decoded maps warped into the common frame in each image's current
    configuration; each configuration ``r`` of image ``j`` is scored by the mean squared distance of
    its warped map to it, and the loss is the mean over images of the best configuration. Shrinking
    every image towards one point (or off the frame) lowers it, which is the trivial solution the IC
    loss avoids (Chapter 5, "Why atlases and regularisers are fragile").

    Args:
        decoded: ``(B, K, S, S)``, the autoencoder's keys of the batch.
        keys: ``(B, K, S, S)``, the masked PCA keys (unused: the atlas is made of ``decoded``; kept
            so the signature is :func:`ic_loss`'s).
        transforms: ``(R, B, 3, 3)``, each image's transform in each flip configuration.
        config_index: ``(B,)`` long, each image's current configuration.

    Returns:
        the loss, a 0-d tensor, and the per-image, per-configuration distances ``(B, R)`` detached.
    """
    R, B = transforms.shape[:2]
    identity = warps.identity(1, transforms.dtype, transforms.device)
    # Warp each image into the common frame: sources with T, target frame = identity.
    aligned = pair_predictions(decoded, transforms.reshape(R * B, 3, 3)[torch.arange(B, device=transforms.device) + B * config_index], identity)[:, :, 0]
    atlas = aligned.mean(dim=0, keepdim=True)
    per_config = []
    for r in range(R):
        warped = pair_predictions(decoded, transforms[r], identity)[:, :, 0]
        per_config.append((warped - atlas).pow(2).mean(dim=(1, 2, 3)))
    per_target = torch.stack(per_config, dim=1)
    return per_target.min(dim=1).values.mean(), per_target.detach()
