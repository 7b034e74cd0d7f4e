"""SpaceJAM: fast joint alignment with a ~16K-parameter network (Barel et al., ECCV 2024).

The pipeline, as in the official code (``BGU-CS-VIL/SpaceJAM``), with the changes listed below:

1. **Keys** (:func:`prepare_keys`): dense descriptors of every image, PCA to ``K = 25`` components
   fitted on all locations of the whole set, multiplied by the set's foreground masks.
2. **Autoencoder** (:class:`KeyAutoencoder`): a per-pixel MLP of 1x1 convolutions, 25 -> 3 -> 25
   channels, 3,036 parameters. Its 3-channel code (the "low-dimensional keys", shown as RGB) is what
   the alignment network reads. Pretrained with a masked L2 reconstruction loss.
3. **Alignment network** (:class:`RecurrentLieSTN`): a small CNN (13,271 parameters) that reads a
   code map and predicts a Lie-algebra element ``xi`` in sl(3) (8 numbers). It runs 5 times with
   the same weights; each step re-warps the *original* code with the transform so far (so the
   network never sees an interpolation of an interpolation), and the steps compose as matrix
   products of exponentials, ``T = exp(xi_5) ... exp(xi_1)``. The last layer starts at zero, so
   every transform is the identity at initialisation.
4. **Curriculum**: ``xi`` is projected onto se(2), then aff(2), then sl(3)
   (:func:`congealing.warps.project`), using the nesting of the algebras.
5. **Inverse-compositional loss** (:func:`ic_loss`): for every ordered pair ``(i, j)`` of a batch,
   the keys of ``i`` carried into ``j``'s own frame by ``T_j^-1 T_i`` must reproduce ``j``'s keys.
   Nothing is measured in the atlas frame, so shrinking every image does not lower the loss, and no
   regulariser is needed.
6. **Reflections**: every image is also seen mirrored, and both configurations of every target
   are trained (the loss averages over them); each source may also be mirrored in the common frame
   (the "atlas flip"), and each pair keeps the better of the two. Each image's flip configuration
   ``c_n`` (used when it is the source of a pair, and in its final transform) is updated every 20
   epochs from a 20-epoch history, between 10 % and 90 % of training.

Transforms follow :mod:`congealing.warps`: ``T_n`` ``(3, 3)`` maps image ``n``'s normalised
coordinates to the common frame (flip included), so a keypoint moves from ``a`` to ``b`` by
``T_b^-1 T_a`` in closed form.

Differences from the official code, and why
-------------------------------------------
* Pairs are warped **once**, directly by ``T_j^-1 T_i``, instead of forward into an atlas and back
  (two interpolations), and the *decoded* keys are warped rather than the codes (the decoder is
  per-pixel, so it runs on ``B`` maps instead of ``4 B^2``). Outside the source image the
  prediction is ``Dec(0)``, what the official code's zero-padded code warp decodes to there
  (``decoded_padding``). This removes the official code's giant temporaries (22 GB on CPU, see the
  book's anchors) and is what makes it fast.
* The history that drives the flip update is recorded from the training losses instead of an
  extra evaluation pass against one random image's atlas.
* The encoder's global scalar normaliser keeps running statistics for evaluation (the official one
  uses the statistics of whichever 2 maps it is given at test time).
* The network predicts the 8 sl(3) coordinates of :func:`congealing.warps.lie_basis` (the official
  one predicts 9 matrix entries), so the STN has 13,271 instead of 13,304 parameters.
* PCA: a plain centred PCA on the unit-norm descriptors (no double standardisation), and the keys
  are divided by one scalar (their foreground standard deviation) so losses are O(1) for any
  backbone.

>>> cfg = SpaceJAMConfig.for_mode("quick")
>>> cfg.pca_dim, cfg.low_dim, cfg.recurrences, cfg.batch_size
(25, 3, 5, 10)
>>> ae, stn = KeyAutoencoder(cfg), RecurrentLieSTN(cfg)
>>> count_parameters(ae), count_parameters(stn)
(3036, 13271)
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, features, warps
from .alignment import Alignment, ReportViews
from .losses import check_finite
from .runtime import ModeConfig, get_device

__all__ = [
    "GROUPS", "DIVERGED_ADVICE", "SpaceJAMConfig", "count_parameters", "prepare_keys", "keys_from_descriptors",
    "GlobalNorm", "KeyAutoencoder", "RecurrentLieSTN", "pair_predictions", "ic_loss", "atlas_loss",
    "TrainResult", "infer", "pretrain_epoch", "joint_loss", "joint_epoch", "update_flips", "train",
    "atlas", "codes_to_rgb", "fit",
]

GROUPS = ("se2", "affine", "homography")
DIVERGED_ADVICE = "check the inputs for degenerate images (e.g. blank) and the config's learning rates"


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SpaceJAMConfig(ModeConfig):
    """Every number of the method, with the official code's defaults (full mode).

    Quick mode (:meth:`for_mode`) changes only:

    * ``map_size`` 256 -> 32. The official code bilinearly upsamples 64x64 descriptor grids to
      256x256; upsampled maps carry no extra information but cost more per warp (the loss warps
      ``2 B^2`` maps per batch). 32x32 is the native grid of a stride-8 backbone on 256-pixel
      images (EfficientNet-Lite0's finest stage) and makes every warp 64x cheaper than at 256
      (64x64 measured 4x slower than 32x32 per epoch on 2 cores). The STN's adaptive pools keep its
      layers, and parameter count, identical at any size.
    * ``ae_epochs`` 301 -> 30 and ``epochs`` 401 -> 90, so a 30-image class trains in about a
      minute of one CPU core. Every epoch-based schedule (curriculum switches, StepLR period, flip
      updates and their window) is scaled by the same factor, so the *shape* of training is kept.
      Halving the earlier quick schedule (60 / 120) first cost nothing (class 1, seed 0: 34.5
      against 31.2 PCK@0.1); once the loss was cheaper (``loss_size`` below), 90 joint epochs
      instead of 60 raised the mean over classes 1-3 and seeds 0-2 from 44.9 to 48.8 (held-out
      classes 4-6, seed 0: 55.5 either way) for about 50 s of CPU per class instead of 37.
    * ``stn_lr`` 2e-4 -> 1e-3. With 4.5x fewer Adam steps, the published rate cannot move the
      network as far (Adam's step is about ``lr`` per step whatever the gradient's size): on CUB
      class 1 (EfficientNet-Lite0, the earlier 120-epoch quick schedule) it left PCK@0.1 at 12 %,
      near the identity, against 27.5 % with 1e-3 (2e-4 x 401/90 = 8.9e-4 keeps the path length;
      1e-3 rounds it up).
    * ``stn_pools`` (32, 8) -> (26, 8): the first pool's official size is what 256-px maps reach
      after the 7x7 convolution (250 -> 32). On 32-px maps that convolution leaves 26x26, which a
      32 pool would only *enlarge* (repeating pixels for the next convolution to pay for); 26 keeps
      it as it is. Same layers and parameter count.
    * ``loss_size`` 0 -> 16: the IC loss compares the maps area-averaged to 16x16 (the STN still
      reads the 32x32 codes). The pair warps are 4x fewer samples; a joint epoch went from 1.1 s to
      0.5 s of CPU, and PCK did not drop (classes 1/2/3, seed 0, with the flip init below:
      34.6 / 45.6 / 43.8 against 32.7 / 48.9 / 37.5 at 32x32).
    * ``flip_init`` "none" -> "consensus" (:func:`congealing.features.consensus_flips`): the images start in the
      mirror configuration that makes their keys' column profiles agree, instead of all as they
      are; the official history-based updates still run. On class 1 the updates alone left 9 of 27
      birds facing the other way (by beak/tail keypoints); with the consensus start 4. Offline, the
      consensus alone orients classes 1-6 consistently (100 / 95 / 100 / 100 / 100 / 100 % of the
      birds whose beak and tail are visible). Mean PCK@0.1 over classes 1-3, seed 0: 39.2 -> 41.3.
    * ``pca_fit`` "all" -> "foreground": the PCA is fitted (and centred) on the co-segmented
      foreground only, so its 25 components describe the object rather than what separates it from
      the background, and the object's mean key is the background's value 0 (meant to make the
      loss weigh the parts' layout more than the silhouette; not measured apart). Classes 1/2/3,
      seed 0: 33.0 / 43.9 / 67.1 against 34.6 / 45.6 / 43.8.

    The loss follows the official code in both modes: ``atlas_flips`` (mean over each target's two
    flip configurations, min over the atlas's mirror) and ``decoded_padding`` (a source predicts
    ``Dec(0)`` outside its frame, as the official zero-padded code warp does).

    What each quick change bought, and what was tried and not kept, is measured in
    ``benchmarks/records/issue15_quick_cpu.json`` (explained in ``benchmarks/issue15_log.md``) and
    shown in Chapter 5, "Where this leaves SpaceJAM in quick mode".
    """

    # keys
    pca_dim: int = 25
    map_size: int = 256
    descriptor_grid: int = 64
    pca_fit: str = "all"  # fit the PCA on "all" locations (official) or on the "foreground" only
    # autoencoder (1x1 convs): 25 -> 32 -> 16 -> 3 and back
    low_dim: int = 3
    ae_hidden: tuple = (32, 16)
    # alignment network
    stn_channels: tuple = (10, 5)
    stn_kernels: tuple = (7, 5)
    stn_pools: tuple = (32, 8)
    stn_hidden: int = 32
    recurrences: int = 5
    # optimisation
    ae_epochs: int = 301
    epochs: int = 401
    batch_size: int = 10
    ae_lr: float = 1e-3
    stn_lr: float = 2e-4
    joint_ae_lr: float = 1e-3
    lr_step: int = 50
    lr_gamma: float = 0.9
    # curriculum: se(2) from epoch 0, aff(2) from 101, sl(3) from 201
    curriculum_epochs: tuple = (101, 201)
    # reflections
    flips: bool = True
    flip_every: int = 20
    flip_window: int = 20
    flip_range: tuple = (0.1, 0.9)
    # initial flip configurations: "none" (official: every image as it is) or "consensus" (features.consensus_flips)
    flip_init: str = "none"
    # switches for the ablations (all True/"lie"/"ic" is the method)
    pretrain_ae: bool = True
    curriculum: bool = True
    parameterisation: str = "lie"  # or "matrix": T = I + A per step, no exponential
    loss: str = "ic"  # or "atlas": distance to the mean of the aligned keys, no regulariser
    # the IC loss is a mean over each target's mask instead of all its pixels (official weight_loss_with_masks)
    mask_weighted_loss: bool = False
    # the IC loss compares maps area-averaged to loss_size x loss_size (0: at map_size, official)
    loss_size: int = 0
    # reflections in the loss: min over the atlas's mirror, mean over the target's two configurations
    atlas_flips: bool = True
    # out of the source's frame a prediction is Dec(0) (official: codes are warped with zero padding), not 0
    decoded_padding: bool = True
    seed: int = 42

    @classmethod
    def quick(cls) -> "SpaceJAMConfig":
        """The CPU-sized quick config (see the class docstring): the published one, :meth:`scaled`
        to 30 + 90 epochs, with the listed changes."""
        return cls().scaled(
            ae_epochs=30, epochs=90, map_size=32, stn_lr=1e-3, stn_pools=(26, 8), loss_size=16, flip_init="consensus",
            pca_fit="foreground",
        )

    def scaled(self, *, ae_epochs: int, epochs: int, **changes) -> "SpaceJAMConfig":
        """A copy trained for ``epochs`` joint epochs, with every epoch-based schedule scaled alike."""
        f = epochs / self.epochs
        scale = lambda v: max(1, round(v * f))  # noqa: E731
        return replace(
            self,
            ae_epochs=ae_epochs,
            epochs=epochs,
            lr_step=scale(self.lr_step),
            curriculum_epochs=tuple(scale(e) for e in self.curriculum_epochs),
            flip_every=scale(self.flip_every),
            flip_window=scale(self.flip_window),
            **changes,
        )

    def group_at(self, epoch: int) -> str:
        """The transformation group trained at (0-based) joint ``epoch``.

        >>> cfg = SpaceJAMConfig()
        >>> cfg.group_at(0), cfg.group_at(101), cfg.group_at(400)
        ('se2', 'affine', 'homography')
        """
        if not self.curriculum:
            return "homography"
        return GROUPS[sum(epoch >= e for e in self.curriculum_epochs)]

    def flip_update_at(self, epoch: int) -> bool:
        """Whether the flip configurations are re-chosen after (0-based) ``epoch``
        (official: epochs 60, 80, ..., 360 of 401)."""
        low, high = self.flip_range
        return self.flips and epoch > 0 and epoch % self.flip_every == 0 and low < epoch / self.epochs < high


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- keys


def prepare_keys(
    images: torch.Tensor,
    backbone,
    config: SpaceJAMConfig,
    masks: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked PCA keys ``(N, K, S, S)`` and masks ``(N, 1, S, S)`` of images ``(N, 3, H, W)``.

    ``masks`` ``(N, 1, *, *)`` in ``[0, 1]``: the set's foreground. If ``None``, Chapter 3's
    co-segmentation (:func:`congealing.features.cosegment`) finds it, leaving out the padding
    outside ``valid`` ``(N, 1, H, W)`` (the photos' own pixels) if given. Descriptors are cached
    on disk by :func:`congealing.features.extract_descriptors`.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"joint alignment needs at least 2 images, got {images.shape[0]}")
    descriptors = features.extract_descriptors(images, backbone, grid=config.descriptor_grid)
    if masks is None:
        small = None if valid is None else (F.interpolate(valid.float(), size=descriptors.shape[-2:], mode="area") > 0.5).float()
        masks = features.cosegment(descriptors, valid=small)
    return keys_from_descriptors(descriptors, masks.float(), config)


def keys_from_descriptors(descriptors: torch.Tensor, masks: torch.Tensor, config: SpaceJAMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors ``(N, D, h, w)`` and masks ``(N, 1, *, *)`` to keys ``(N, K, S, S)`` and masks ``(N, 1, S, S)``.

    PCA is fitted on all locations of all images (background included, as the official code does),
    then the maps are resized to ``config.map_size``, multiplied by the masks, and divided by one
    scalar, their standard deviation on the foreground.

    >>> keys, m = keys_from_descriptors(torch.randn(3, 40, 8, 8), torch.ones(3, 1, 8, 8), SpaceJAMConfig(map_size=16))
    >>> keys.shape, m.shape
    (torch.Size([3, 25, 16, 16]), torch.Size([3, 1, 16, 16]))
    """
    size = (config.map_size, config.map_size)
    fit_masks = None
    if config.pca_fit == "foreground":
        fit_masks = (F.interpolate(masks.float(), size=descriptors.shape[-2:], mode="bilinear", align_corners=False) > 0.5).float()
        if fit_masks.sum() < config.pca_dim:
            fit_masks = None
    maps, _, _ = features.pca_project(descriptors.float(), config.pca_dim, fit_masks)
    if maps.shape[-2:] != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    masks = (F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False) > 0.5).float()
    empty = masks.flatten(1).sum(1) == 0
    if empty.any():
        # An empty mask would make an image all-zero keys (nothing to align); keep the whole image instead.
        warnings.warn(f"the masks of images {empty.nonzero().flatten().tolist()} are empty; using the whole image for them")
        masks[empty] = 1.0
    keys = maps * masks
    scale = keys.permute(1, 0, 2, 3)[:, masks[:, 0] > 0].std()
    return (keys / scale.clamp_min(1e-12)).contiguous(), masks


# ----------------------------------------------------------------------------- networks


class GlobalNorm(nn.Module):
    """``(x - mean) / (std + 1e-8)`` with one scalar mean and std over the whole batch tensor.

    The official encoder's last step. In training the batch's statistics are used and a running
    average is kept (like batch norm), which evaluation uses, so a code does not depend on which
    other images are evaluated with it.
    """

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, std = x.mean(), x.std()
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_std.lerp_(std.detach(), self.momentum)
        else:
            mean, std = self.running_mean, self.running_std
        return (x - mean) / (std + 1e-8)


def _mlp(channels: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv2d(a, b, 1))
        if index < len(channels) - 2:  # official order inside a hidden block: conv, ReLU, BN
            layers += [nn.ReLU(), nn.BatchNorm2d(b)]
    return layers


class KeyAutoencoder(nn.Module):
    """Per-pixel autoencoder: keys ``(B, 25, H, W)`` -> codes ``(B, 3, H, W)`` -> keys.

    1x1 convolutions only, so it is "fully convolutional" at any resolution and commutes with
    flips. 3,036 parameters with the defaults.

    >>> ae = KeyAutoencoder(SpaceJAMConfig())
    >>> ae.encode(torch.randn(2, 25, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(self, config: SpaceJAMConfig):
        super().__init__()
        widths = [config.pca_dim, *config.ae_hidden, config.low_dim]
        self.encoder = nn.Sequential(*_mlp(widths), GlobalNorm())
        self.decoder = nn.Sequential(*_mlp(widths[::-1]))

    def encode(self, keys: torch.Tensor) -> torch.Tensor:
        return self.encoder(keys)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(keys))


class RecurrentLieSTN(nn.Module):
    """The localisation network, applied ``recurrences`` times with shared weights.

    Input codes ``(B, 3, S, S)`` (any ``S`` >= 19); output transforms ``(B, 3, 3)`` (and, with
    ``return_steps``, the transform after every step, ``(B, steps, 3, 3)``). 13,271 parameters with
    the defaults; the head starts at zero so the output is the identity at initialisation.

    >>> stn = RecurrentLieSTN(SpaceJAMConfig())
    >>> torch.allclose(stn(torch.randn(2, 3, 64, 64), "homography"), torch.eye(3).expand(2, 3, 3))
    True
    """

    def __init__(self, config: SpaceJAMConfig):
        super().__init__()
        (c1, c2), (k1, k2), (p1, p2) = config.stn_channels, config.stn_kernels, config.stn_pools
        self.features = nn.Sequential(
            nn.Conv2d(config.low_dim, c1, k1), nn.AdaptiveMaxPool2d(p1), nn.ReLU(),
            nn.Conv2d(c1, c2, k2), nn.AdaptiveMaxPool2d(p2), nn.ReLU(), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(c2 * p2 * p2, config.stn_hidden), nn.ReLU(), nn.Linear(config.stn_hidden, 8))
        nn.init.zeros_(self.head[-1].weight)  # identity at initialisation: exp(0) = I
        nn.init.zeros_(self.head[-1].bias)
        self.recurrences = config.recurrences
        self.parameterisation = config.parameterisation

    def step(self, codes: torch.Tensor, group: str) -> torch.Tensor:
        """One increment ``(B, 3, 3)``: ``exp(project(xi))`` (or ``I + hat(xi)`` without the Lie parameterisation)."""
        xi = warps.project(self.head(self.features(codes)), group)
        if self.parameterisation == "matrix":
            return torch.eye(3, dtype=xi.dtype, device=xi.device) + warps.hat(xi)
        return warps.exp(xi)

    def forward(self, codes: torch.Tensor, group: str = "homography", steps: int | None = None, return_steps: bool = False):
        T = warps.identity(codes.shape[0], codes.dtype, codes.device)
        history = []
        for k in range(self.recurrences if steps is None else steps):
            # Each step reads the *original* codes warped once by the transform so far.
            view = codes if k == 0 else warps.warp_image(codes, T)
            T = warps.compose(self.step(view, group), T)  # the new increment acts in the aligned frame
            history.append(T)
        if return_steps:
            return T, torch.stack(history, dim=1)
        return T


# ----------------------------------------------------------------------------- losses


def _safe_homogeneous(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``T`` ``(B, 3, 3)`` applied to normalised points ``(B, P, 2)``, keeping ``w`` away from 0."""
    h = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1) @ T.transpose(1, 2)
    w = h[..., 2:3]
    w = torch.where(w.abs() < 1e-6, torch.full_like(w, 1e-6) * torch.where(w < 0, -1.0, 1.0), w)
    return h[..., :2] / w


def pair_predictions(sources: torch.Tensor, source_T: torch.Tensor, target_T: torch.Tensor) -> torch.Tensor:
    """Every source map carried into every target's frame, with ONE interpolation each.

    ``sources`` ``(A, C, S, S)`` with transforms ``source_T`` ``(A, 3, 3)``; targets' transforms
    ``target_T`` ``(Q, 3, 3)``. Returns ``(A, C, Q, S, S)``: entry ``[a, :, q]`` is source ``a``
    warped by ``T_q^-1 T_a``. The ``Q`` sampling grids of one source are stacked vertically into
    one tall grid, so ``grid_sample`` reads each source once and no copies of the sources are made.

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
    points = _safe_homogeneous(grid, relative.reshape(A * Q, 3, 3)).reshape(A, Q * S, S, 2)
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

    ``decoded`` ``(B, K, S, S)``: the autoencoder's keys of the batch (the sources); ``keys``
    ``(B, K, S, S)``: the masked PCA keys (the targets); ``transforms`` ``(R, B, 3, 3)``: each
    image's transform in each of its ``R`` flip configurations (``R = 1`` or ``2``);
    ``config_index`` ``(B,)``: each image's current configuration, used when it is the source.

    Source ``i`` (in its configuration ``c_i``) predicts target ``j`` in configuration ``r`` through
    the common frame, optionally mirrored there (``F^a``, the "atlas flip"):
    ``e[a, i, j, r] = mean_pixels |keys_j - W(decoded_i; T_{j,r}^-1 F^a T_{i,c_i})|^2 / K``, the self
    pair ``i = j`` included (as in the official code). With ``R = 2`` and ``atlas_flips`` (the
    official loss) the loss is ``mean_{i, j, r} min_a e[a, i, j, r]``: *both* configurations of
    every target are trained (so the network learns to align an image and its mirror alike), and
    the mirrored atlas serves the configuration that does not match it as it is. Without
    ``atlas_flips``: ``mean_j min_r mean_i e[0, i, j, r]`` (gradients through the best
    configuration only). ``outside`` ``(K,)``: what a source predicts outside its frame (default
    0, the masked background); the official code warps codes with zero padding, so it predicts
    ``Dec(0)`` there. ``weight`` ``(B, 1, S, S)``: per-pixel weights of each target (e.g. its
    mask; the official ``weight_loss_with_masks``), the pixel mean becoming a weighted mean. Returns the loss and ``mean_i e[0, i, j, r]`` ``(B, R)`` detached, for the
    flip history.

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
    """Ablation: distance of every aligned map to their mean (the atlas), in the atlas frame, with no
    regulariser. Same arguments and returns as :func:`ic_loss`. Shrinking every image towards one
    point (or off the frame) lowers it, which is the trivial solution the IC loss avoids."""
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


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``transforms`` ``(N, 3, 3)``: image -> common frame (flip included); ``flips`` ``(N,)`` bool;
    ``steps`` ``(N, recurrences, 3, 3)``: the transform after each recurrent step (flip included);
    ``stages`` maps a curriculum group to the transforms ``(N, 3, 3)`` at the end of its stage;
    ``codes`` ``(N, 3, S, S)``: the low-dimensional keys; ``losses``: mean loss per joint epoch.
    """

    transforms: torch.Tensor
    flips: torch.Tensor
    steps: torch.Tensor
    stages: dict
    codes: torch.Tensor
    keys: torch.Tensor
    masks: torch.Tensor
    ae_losses: list
    losses: list
    seconds: dict
    parameters: dict
    config: SpaceJAMConfig
    model: dict = field(default_factory=dict, repr=False)


def _flip_transforms(B: int, dtype, device) -> torch.Tensor:
    return torch.stack([warps.identity(B, dtype, device), warps.hflip(True, B, dtype, device)])  # (2, B, 3, 3)


@torch.no_grad()
def infer(ae: KeyAutoencoder, stn: RecurrentLieSTN, keys: torch.Tensor, flips: torch.Tensor, group: str = "homography", chunk: int = 16, steps: int | None = None):
    """Evaluation-mode transforms of all images: ``(T (N, 3, 3), steps (N, L, 3, 3), codes (N, 3, S, S))``.

    ``T_n = M_n R_n`` where ``R_n`` is the flip of image ``n``'s configuration and ``M_n`` the STN's
    output for the (possibly mirrored) codes after ``steps`` recurrent steps (``L``; default: all
    of them).
    """
    ae.eval(), stn.eval()
    Ts, all_steps, codes = [], [], []
    for start in range(0, keys.shape[0], chunk):
        z = ae.encode(keys[start : start + chunk])
        f = flips[start : start + chunk].to(z.device)
        z_in = torch.where(f[:, None, None, None], z.flip(-1), z)
        M, history = stn(z_in, group, steps=steps, return_steps=True)
        R = warps.hflip(f, dtype=z.dtype, device=z.device)
        Ts.append(M @ R)
        all_steps.append(history @ R[:, None])
        codes.append(z)
    return torch.cat(Ts), torch.cat(all_steps), torch.cat(codes)




def pretrain_epoch(ae: KeyAutoencoder, optimiser: torch.optim.Optimizer, keys: torch.Tensor, masks: torch.Tensor,
                   order: torch.Tensor, batch_size: int, epoch: int = 0) -> float:
    """One epoch of autoencoder pretraining (Chapter 5, "The keys"); returns the mean loss.

    The loss is the masked L2 reconstruction of keys ``(N, K, S, S)`` inside masks ``(N, 1, S, S)``,
    with every image also shown mirrored (as the official code does), over batches of ``order``
    ``(N,)`` (a permutation of the images). ``epoch`` only names the place of a divergence.
    """
    total = 0.0
    for step, batch in enumerate(order.split(batch_size)):
        x, m = keys[batch], masks[batch]
        x, m = torch.cat([x, x.flip(-1)]), torch.cat([m, m.flip(-1)])
        loss = ((ae(x) - x).pow(2).mean(dim=1, keepdim=True) * m).mean()
        check_finite(loss, f"SpaceJAM diverged in autoencoder pretraining, epoch {epoch}, step {step}", {"reconstruction loss": loss}, DIVERGED_ADVICE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += loss.item() * len(batch)
    return total / len(order)


def joint_loss(ae: KeyAutoencoder, stn: RecurrentLieSTN, keys: torch.Tensor, masks: torch.Tensor, batch: torch.Tensor,
               flips: torch.Tensor, group: str, reflections: torch.Tensor, config: SpaceJAMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint-training loss of one ``batch`` (indices ``(B,)``) and its per-target errors ``(B, R)``
    (Chapter 5, "Reflections").

    The batch's keys ``(B, K, S, S)`` are encoded; the network reads every code as it is and
    mirrored (``R = 2`` rows of ``reflections`` ``(R, N, 3, 3)``, or ``R = 1`` without flips) and
    predicts each configuration's transform; :func:`ic_loss` (or :func:`atlas_loss` for the
    ablation) compares the decoded keys carried between every pair with the targets' keys.
    ``flips`` ``(N,)``: each image's configuration when it is a source.
    """
    R = reflections.shape[0]
    x = keys[batch]
    z = ae.encode(x)
    views = torch.cat([z, z.flip(-1)]) if R == 2 else z
    transforms = stn(views, group).reshape(R, len(batch), 3, 3) @ reflections[:, batch]  # image -> common frame, per configuration
    config_index = flips[batch].long().to(x.device) if R == 2 else torch.zeros(len(batch), dtype=torch.long, device=x.device)
    if config.loss != "ic":
        return atlas_loss(ae.decode(z), x, transforms, config_index)
    outside = None
    if config.decoded_padding:  # Dec(0), decoded in the same batch (its norm layers see it, as officially)
        decoded = ae.decode(torch.cat([z, torch.zeros_like(z[:1])]))
        decoded, outside = decoded[:-1], decoded[-1, :, 0, 0]
    else:
        decoded = ae.decode(z)
    target, weight = x, masks[batch] if config.mask_weighted_loss else None
    if 0 < config.loss_size < x.shape[-1]:  # compare area-averaged maps (quick mode); the network still reads full codes
        decoded, target = (F.adaptive_avg_pool2d(m, config.loss_size) for m in (decoded, x))
        weight = None if weight is None else F.adaptive_avg_pool2d(weight, config.loss_size)
    return ic_loss(decoded, target, transforms, config_index, atlas_flips=config.atlas_flips, outside=outside, weight=weight)


def joint_epoch(ae: KeyAutoencoder, stn: RecurrentLieSTN, optimisers, keys: torch.Tensor, masks: torch.Tensor, order: torch.Tensor,
                flips: torch.Tensor, group: str, reflections: torch.Tensor, history: torch.Tensor, config: SpaceJAMConfig,
                epoch: int = 0) -> float:
    """One epoch of joint training over batches of ``order`` ``(N,)``; returns the mean loss.

    Every batch's :func:`joint_loss` updates the network and the autoencoder together (one Adam each,
    ``optimisers``); each image's per-configuration error is written to ``history`` ``(N, R)`` (this
    epoch's row of the record :func:`update_flips` reads).
    """
    total = 0.0
    for step, batch in enumerate(order.split(config.batch_size)):
        loss, per_target = joint_loss(ae, stn, keys, masks, batch, flips, group, reflections, config)
        check_finite(loss, f"SpaceJAM diverged in joint training, epoch {epoch}, step {step}", {f"{config.loss} loss": loss}, DIVERGED_ADVICE)
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for optimiser in optimisers:
            optimiser.step()
        history[batch] = per_target.cpu()
        total += loss.item() * len(batch)
    return total / len(order)


def update_flips(history: torch.Tensor, epoch: int, config: SpaceJAMConfig) -> torch.Tensor:
    """Each image's flip configuration ``(N,)`` bool after ``epoch``: the one with the lower mean
    error over the last ``config.flip_window`` epochs of ``history`` ``(epochs, N, 2)``.

    >>> history = torch.zeros(4, 2, 2); history[:, 0, 1] = 1.0; history[:, 1, 0] = 1.0
    >>> update_flips(history, 3, SpaceJAMConfig(flip_window=2)).tolist()
    [False, True]
    """
    window = history[max(0, epoch - config.flip_window + 1) : epoch + 1].mean(dim=0)
    return window.argmin(dim=1).bool()


def train(
    keys: torch.Tensor,
    masks: torch.Tensor,
    config: SpaceJAMConfig | None = None,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 20,
    fingerprint: dict | None = None,
    progress: Callable[..., None] | None = None,
) -> TrainResult:
    """Train SpaceJAM on keys ``(N, K, S, S)`` with masks ``(N, 1, S, S)`` and return every image's transform.

    ``checkpoint``: a file written every ``checkpoint_every`` epochs (a plain dict of tensors and
    numbers, and ``fingerprint``: what the inputs and config were); with ``resume`` training
    continues from it (also with more epochs), and :class:`congealing.errors.CheckpointError` is
    raised if the file is not a checkpoint or was made for another ``fingerprint``.
    ``progress(done, total, note)`` is called after every epoch (autoencoder epochs first). Raises
    ``ValueError`` for fewer than two
    images and ``FloatingPointError`` (naming the phase, epoch, step and loss) on divergence.
    """
    config = config or SpaceJAMConfig.for_mode()
    if keys.ndim != 4 or keys.shape[1] != config.pca_dim:
        raise ValueError(f"expected keys (N, {config.pca_dim}, S, S), got {tuple(keys.shape)}")
    N = keys.shape[0]
    if N < 2:
        raise ValueError(f"joint alignment needs at least 2 images, got {N}: there is nothing to align a single image to")
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    keys, masks = keys.to(device).float(), masks.to(device).float()
    ae, stn = KeyAutoencoder(config).to(device), RecurrentLieSTN(config).to(device)
    ae_opt = torch.optim.Adam(ae.parameters(), lr=config.ae_lr)
    ae_sched = torch.optim.lr_scheduler.StepLR(ae_opt, config.lr_step, config.lr_gamma)
    stn_opt = torch.optim.Adam(stn.parameters(), lr=config.stn_lr)
    joint_opt = torch.optim.Adam(ae.parameters(), lr=config.joint_ae_lr)  # a fresh optimiser, as the official code
    stn_sched = torch.optim.lr_scheduler.StepLR(stn_opt, config.lr_step, config.lr_gamma)
    joint_sched = torch.optim.lr_scheduler.StepLR(joint_opt, config.lr_step, config.lr_gamma)
    R = 2 if config.flips else 1
    flips = features.consensus_flips(keys.cpu()) if config.flips and config.flip_init == "consensus" else torch.zeros(N, dtype=torch.bool)
    history = torch.zeros(config.epochs, N, R)
    ae_losses: list[float] = []
    losses: list[float] = []
    stages: dict[str, torch.Tensor] = {}
    start_ae, start_joint = 0, 0
    seconds = {"ae": 0.0, "joint": 0.0}
    objects = dict(ae=ae, stn=stn, ae_opt=ae_opt, ae_sched=ae_sched, stn_opt=stn_opt, joint_opt=joint_opt, stn_sched=stn_sched, joint_sched=joint_sched)
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = checkpoints.load(checkpoint, map_location=device)
        checkpoints.check_fingerprint(state, fingerprint, checkpoint)
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
        flips = state["flips"].bool().cpu()
        done = state["history"].cpu()[: config.epochs]
        history[: done.shape[0]] = done
        ae_losses, losses = state["ae_losses"].tolist(), state["losses"].tolist()
        start_ae, start_joint = int(state["ae_epoch"]), int(state["epoch"])
        stages = {k[len("stage_"):]: v.cpu() for k, v in state.items() if k.startswith("stage_")}
        generator.set_state(state["generator"])
        seconds = {"ae": float(state["seconds_ae"]), "joint": float(state["seconds_joint"])}

    def save(ae_epoch: int, epoch: int) -> None:
        if checkpoint is None:
            return
        state = {name: obj.state_dict() for name, obj in objects.items()}
        state.update(
            flips=flips.clone(), history=history.clone(), ae_losses=torch.tensor(ae_losses), losses=torch.tensor(losses),
            ae_epoch=ae_epoch, epoch=epoch, generator=generator.get_state(),
            seconds_ae=seconds["ae"], seconds_joint=seconds["joint"], config=config.plain(),
            **{f"stage_{k}": v for k, v in stages.items()},
        )
        checkpoints.save(state, checkpoint, fingerprint)

    # --- 1. autoencoder pretraining: masked L2 reconstruction of the keys
    ae_epochs = config.ae_epochs if config.pretrain_ae else 0
    ae.train()
    tic = time.perf_counter()
    for epoch in range(start_ae, ae_epochs):
        ae_losses.append(pretrain_epoch(ae, ae_opt, keys, masks, torch.randperm(N, generator=generator), config.batch_size, epoch))
        ae_sched.step()
        if progress is not None:
            progress(epoch + 1, ae_epochs + config.epochs, f"autoencoder loss {ae_losses[-1]:.4f}")
        if (epoch + 1) % checkpoint_every == 0:
            seconds["ae"] += time.perf_counter() - tic
            tic = time.perf_counter()
            save(epoch + 1, 0)
    seconds["ae"] += time.perf_counter() - tic
    start_ae = ae_epochs

    # --- 2. joint training: IC loss, recurrent Lie STN, curriculum, reflections
    reflections = _flip_transforms(N, keys.dtype, device)[:R]
    tic = time.perf_counter()
    for epoch in range(start_joint, config.epochs):
        group = config.group_at(epoch)
        ae.train(), stn.train()
        order = torch.randperm(N, generator=generator)
        losses.append(joint_epoch(ae, stn, (stn_opt, joint_opt), keys, masks, order, flips, group, reflections, history[epoch], config, epoch))
        stn_sched.step()
        joint_sched.step()
        if config.flip_update_at(epoch):
            flips = update_flips(history, epoch, config)
        next_group = config.group_at(epoch + 1) if epoch + 1 < config.epochs else None
        if next_group != group:
            stages[group] = infer(ae, stn, keys, flips, group)[0].cpu()
        if progress is not None:
            progress(ae_epochs + epoch + 1, ae_epochs + config.epochs, f"[{group}] loss {losses[-1]:.4f}, flipped {int(flips.sum())}/{N}")
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs:
            seconds["joint"] += time.perf_counter() - tic
            tic = time.perf_counter()
            save(start_ae, epoch + 1)
    seconds["joint"] += time.perf_counter() - tic

    transforms, steps, codes = infer(ae, stn, keys, flips, config.group_at(config.epochs - 1))
    return TrainResult(
        transforms=transforms.cpu(), flips=flips.clone(), steps=steps.cpu(), stages=stages, codes=codes.cpu(),
        keys=keys.cpu(), masks=masks.cpu(), ae_losses=ae_losses, losses=losses, seconds=seconds,
        parameters={"autoencoder": count_parameters(ae), "stn": count_parameters(stn), "total": count_parameters(ae) + count_parameters(stn)},
        config=config, model={"ae": ae, "stn": stn},
    )


# ----------------------------------------------------------------------------- after training


def atlas(maps: torch.Tensor, transforms: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """The atlas ``(C, H, W)``: the mean of ``maps`` ``(N, C, H, W)`` warped by ``transforms`` ``(N, 3, 3)``.

    With ``masks`` ``(N, 1, H, W)``, the mean runs over the images whose warped mask covers each
    pixel (so the background does not darken it).

    >>> atlas(torch.ones(2, 3, 4, 4), warps.identity(2)).shape
    torch.Size([3, 4, 4])
    """
    warped = warps.warp_image(maps.float(), transforms.float())
    if masks is None:
        return warped.mean(dim=0)
    weight = warps.warp_image(masks.float(), transforms.float())
    return (warped * weight).sum(dim=0) / weight.sum(dim=0).clamp_min(1e-6)


def codes_to_rgb(codes: torch.Tensor) -> torch.Tensor:
    """Low-dimensional keys ``(N, 3, S, S)`` as RGB in ``[0, 1]``: :func:`congealing.features.minmax_rgb`
    (one min-max over the whole set, so the same colour means the same code in every image)."""
    return features.minmax_rgb(codes)


# ----------------------------------------------------------------------------- the common protocol


def fit(images: torch.Tensor, config: SpaceJAMConfig, *, masks: torch.Tensor | None = None, backbone=None, device=None,
        callback: Callable[[int, int], None] | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        fingerprint: dict | None = None) -> Alignment:
    """SpaceJAM behind the common protocol (:mod:`congealing.alignment`; Chapter 7, "One protocol, every method").

    :func:`prepare_keys` then :func:`train`; the result as an :class:`congealing.alignment.Alignment`.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        config: the :class:`SpaceJAMConfig`.
        masks: ``(N, 1, h, w)`` foreground masks; None: Chapter 3's co-segmentation.
        backbone: the :class:`congealing.features.Backbone` (None: the default one).
        device: where to train (None: the best available, :func:`congealing.runtime.get_device`).
        callback: ``callback(done, total)`` after every epoch (autoencoder epochs first).
        checkpoint, resume, fingerprint: as in :func:`train`.

    Returns:
        an Alignment with ``transforms`` ``(N, 3, 3)`` (image -> atlas, flip included), ``flips``,
        the masks ``(N, 1, S, S)``, one history entry per joint epoch (``epoch``, ``loss``; the
        autoencoder's are in the result), ``state["result"]``, the :class:`TrainResult`, and
        ``report``: the foreground atlas, the atlas of the low-dimensional keys and each image's keys
        at the images' size, built only when a report asks (:func:`atlas`, :func:`codes_to_rgb`).
    """
    device = device if isinstance(device, torch.device) else get_device(device)
    backbone = backbone if backbone is not None else features.load_backbone(None, device)
    keys, masks = prepare_keys(images, backbone, config, masks)
    progress = None if callback is None else (lambda done, total, note="": callback(done, total))
    result = train(keys, masks, config, device=device, checkpoint=checkpoint, resume=resume, fingerprint=fingerprint, progress=progress)
    history = [{"epoch": e, "loss": loss} for e, loss in enumerate(result.losses)]
    return Alignment(
        method="spacejam", size=tuple(images.shape[-2:]), transforms=result.transforms, flips=result.flips,
        masks=result.masks, history=history, seconds=float(sum(result.seconds.values())), parameters=result.parameters["total"],
        state={"result": result, "config": config, "backbone": backbone.name}, report=_report_views(result),
    )


def _report_views(result: TrainResult) -> Callable[[torch.Tensor, int], ReportViews]:
    """What the ``congeal align`` report shows of a trained SpaceJAM, at the images' size: the
    foreground atlas and the atlas of the low-dimensional keys (as RGB), each image's keys and its
    mask, and the edit drawn over the atlas of the masks."""

    def views(images: torch.Tensor, side: int) -> ReportViews:
        size = images.shape[-2:]
        mask_up = F.interpolate(result.masks, size=size, mode="bilinear", align_corners=False)
        codes = codes_to_rgb(result.codes)
        codes_up = F.interpolate(codes, size=size, mode="bilinear", align_corners=False)
        return ReportViews(
            atlas={"foreground": atlas(images, result.transforms, mask_up), "keys": atlas(codes_up, result.transforms, mask_up)},
            images={"low-dim keys": F.interpolate(codes, size=size, mode="nearest")}, masks=mask_up,
            edit_region=atlas(mask_up, result.transforms)[0],
        )

    return views
