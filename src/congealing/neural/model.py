"""Neural Congealing's configuration and networks: the settings (:class:`NeuralCongealingConfig`),
the two spatial transformers (:class:`RigidSTN`, :class:`FlowSTN`) and the model that holds them with
the atlas (:class:`NeuralCongealing`). Chapter 4, "The atlas and the two mappings"; the loss terms
are in :mod:`congealing.neural.losses`, the training in :mod:`congealing.neural.training`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import warps
from ..runtime import ModeConfig

__all__ = [
    "NeuralCongealingConfig", "EqualConv", "ResBlock", "RigidSTN", "similarity_matrix",
    "similarity_inverse", "convex_upsample", "FlowSTN", "NeuralCongealing",
]

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class NeuralCongealingConfig(ModeConfig):
    """Every setting of Neural Congealing; the defaults are the paper's full-mode settings.

    Loss weights use the paper's notation; each term's absolute weight is ``loss_scale`` times the
    product shown in :meth:`weights` (they equal the official code's coefficients: keys 3500 (L2) +
    4000 (cosine), saliency 5000, centre 3000, saliency sparsity 450, keys sparsity 10, scale 800,
    magnitude 8000, local rigidity 100, global rigidity 350). The paper's ``gamma = 2`` multiplies
    the saliency sparsity ``L1 + 0.5 * L0``; that is what reconciles the paper's ``lambda_p`` with
    the code's 450.

    ``for_mode("quick")`` (2 CPU cores, a few minutes for a 30-image CUB class) changes:

    * ``image_size`` 256 -> 128, ``stn_input_size`` 128 -> 32, ``flow_input_size`` 128 -> 32:
      the STNs read their input (the keys, below) at 32 px, where a bird's pose still shows; a
      forward and backward pass of both STNs costs about half what it does at 64 px, which pays for
      the longer schedule.
    * ``atlas_size`` 128 -> 32, ``coarse_flow_size`` 16 -> 8 (so convex upsampling is x4, not x8):
      32 is EfficientNet-Lite0's native stride-8 grid at 256 px; keys upsampled to 128 add no
      information but 16x the cost of every warp and loss.
    * ``stn_width`` 64 -> 16, ``stn_max_width`` 512 -> 64, ``stn_hidden`` 512 -> 64: ~100x fewer
      STN weights; the STNs only regress a similarity and a coarse flow.
    * ``epochs`` 8000 -> 420, ``bootstrap_epochs`` 1000 -> 84, ``update_every`` 100 -> 42,
      ``batch_size`` 2 -> 4: minutes instead of hours. At the quick sizes a step's fixed cost
      (dozens of small convolutions) is about half of it, so an epoch in batches of 4 costs about
      0.7 of one in batches of 2: 420 epochs of 4 cost what 300 of 2 would, and align better (CUB
      classes 1-3, three seeds). The rigid bootstrap keeps 20 % of the epochs (the paper: 12.5 %):
      measured along a run, PCK barely leaves the identity while only the similarity trains, and
      rises once the flow joins, through the flow and through the similarity's own frozen-atlas
      objective alike. The flip and atlas decisions stay ten per run.
    * ``keys_pca_dim`` 0 -> 32: the keys are the set's top 32 principal components of the
      backbone's descriptors (472 channels for EfficientNet-Lite0), as SpaceJAM does with 25; every
      warp and loss of the keys is ~15x smaller, and a step (with the batch-wise orientation
      choice, :meth:`NeuralData.view_at`) is ~1.7x cheaper.
    * ``keys_pca_fit`` "all" -> "foreground": those components are fitted inside the saliency
      masks only (on CUB the boxes, in ``congeal align`` the co-segmentation), as SpaceJAM's
      ``pca_fit`` does, so they describe the object's parts rather than what tells it from the
      background. Measured against fitting on every location (CUB classes 1-3, five seeds): classes
      1 and 3 gain, class 2 is level on its mean, and classes 4-6, on which nothing was chosen, gain
      on their mean.
    * ``stn_reads`` "images" -> "keys": both STNs read the set's keys (their 32 principal
      components on the 32 x 32 atlas grid) instead of the RGB image, as SpaceJAM's STN does. STNs
      with ~100x fewer weights and a few hundred epochs learn little of a bird's pose from 32-px RGB;
      the keys already tell head from wing. Measured against the same config on RGB: level on CUB
      classes 1-3 except class 2, which gains (three seeds), and better on classes 4-6, on which
      nothing was chosen (``benchmarks/records/issue15_quick_cpu.json``).
    * ``flip_init`` "none" -> "consensus" (with ``flips``): the orientations start from
      :func:`congealing.features.consensus_flips` of the box-masked keys (whose column profiles
      tell which way each bird faces) instead of all as they are; the official updates still run.
    * ``lr_stn`` 1e-4 -> 3e-3, ``lr_atlas`` 8e-4 -> 4e-3: with ~100x fewer optimiser steps the
      published rates barely leave the identity. Quick mode is a demonstration of the method, not
      a converged run: expect far lower PCK than the paper (the chapter reports it).
    * ``lr_final`` 1 -> 0.1: after the bootstrap both rates fall along a half-cosine to a tenth of
      themselves at the last epoch (:func:`congealing.neural.training.lr_factor`); the paper keeps
      its small rates constant. At quick mode's large rates the last epochs otherwise still move
      every mapping by whole steps, and a run ends wherever its last steps took it. Measured
      against constant rates (five seeds): classes 2, 3 and 4 (30 birds each) higher on every
      seed, class 1 level; the smallest classes, 5 and 6 (14 and 11 birds, so half the steps or
      fewer), lower on their mean, and the mean of classes 4-6 level (they were not used to
      choose it).
    * the global rigidity step ``global_delta`` is given at a 128-px atlas and scaled with the
      atlas (20 -> 5 px at 32), so it always spans the same fraction of the object.
    * on CUB (``congeal eval``, :data:`congealing.registry.METHODS`), the supplementary's
      evaluation settings apply except the gradual atlas (``gradual_atlas`` stays off): in a run of a
      few hundred epochs, an atlas that one bird starts holds the others near that bird's pose; with
      every image updating the atlas from the start, class 1 gains about ten points (three seeds).

    The quick config's PCK on CUB classes 1-3 against nearest neighbours, before and after these
    changes, is recorded in ``benchmarks/records/issue15_quick_cpu.json`` and shown in Chapter 4,
    "Quick mode on whole classes".

    >>> NeuralCongealingConfig().weights()["rigidity_global"]
    350.0
    >>> NeuralCongealingConfig(relaxed_rigidity=True).weights()["rigidity_local"]
    25.0
    """

    # resolutions
    image_size: int = 256
    stn_input_size: int = 128
    flow_input_size: int = 128
    atlas_size: int = 128
    coarse_flow_size: int = 16
    # STN widths (the official GANgealing trunk with channel multiplier 0.5)
    stn_width: int = 64
    stn_max_width: int = 512
    stn_hidden: int = 512
    # losses (paper notation; absolute weight = loss_scale x product, see weights())
    loss_scale: float = 4000.0
    lambda_l: float = 0.875  # keys L2 (cosine has weight 1)
    lambda_s: float = 1.25  # saliency
    lambda_r: float = 0.025  # mapping regularisation (local rigidity)
    lambda_s1: float = 8.0  # scale
    lambda_s2: float = 80.0  # flow magnitude
    lambda_s3: float = 3.5  # global rigidity
    lambda_a: float = 0.75  # atlas regularisation (centre)
    lambda_p: float = 0.075  # atlas sparsity
    lambda_k: float = 2 / 45  # keys sparsity (inside lambda_p): 0.0444.., so the weight is the official 10 (0.044 would give 9.9)
    gamma: float = 2.0  # saliency sparsity: gamma * (L1 + 0.5 * L0)
    l0_steepness: float = 5.0  # L0 ~ 2 sigmoid(5 a) - 1
    huber_delta: float = 0.7
    local_delta: int = 1
    global_delta: float = 20.0  # pixels of a 128-px atlas; scaled with atlas_size
    relaxed_rigidity: bool = False  # the supplementary's evaluation sets: local x0.25, global x90/350
    # schedule
    epochs: int = 8000
    bootstrap_epochs: int = 1000
    batch_size: int = 2
    lr_stn: float = 1e-4
    lr_atlas: float = 8e-4
    lr_final: float = 1.0  # both rates' fraction at the last epoch: 1 keeps them constant (official); below 1 they fall after the bootstrap (lr_factor)
    flips: bool = False
    gradual_atlas: bool = False
    gradual_atlas_until: str = "half"  # every image has joined the gradual atlas by "half" the epochs or by the end of the "bootstrap"
    keys_pca_dim: int = 0  # 0: the backbone's raw keys (official); k: their top-k principal components over the set
    keys_pca_fit: str = "all"  # fit those components on "all" locations or on the saliency masks' "foreground" only
    flip_init: str = "none"  # with flips: start "none" mirrored (official) or from features.consensus_flips ("consensus")
    update_every: int = 100  # epochs between flip / gradual-atlas decisions
    checkpoint_every: int = 1000
    stn_reads: str = "images"  # what both STNs read: the RGB "images" (official) or the set's "keys" (see prepare)
    seed: int = 0

    QUICK: ClassVar[dict] = dict(
        image_size=128, stn_input_size=32, flow_input_size=32, atlas_size=32, coarse_flow_size=8,
        stn_width=16, stn_max_width=64, stn_hidden=64, epochs=420, bootstrap_epochs=84, batch_size=4,
        update_every=42, checkpoint_every=42, lr_stn=3e-3, lr_atlas=4e-3, lr_final=0.1, keys_pca_dim=32, keys_pca_fit="foreground", flip_init="consensus",
        stn_reads="keys",
    )

    def __post_init__(self):
        for name in ("stn_input_size", "flow_input_size", "atlas_size", "coarse_flow_size"):
            size = getattr(self, name)
            if size < 4 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two >= 4, got {size}")
        if self.atlas_size % self.coarse_flow_size or self.flow_input_size < 2 * self.coarse_flow_size:
            raise ValueError("atlas_size must be a multiple of coarse_flow_size, and flow_input_size at least twice it")
        if self.stn_reads not in ("images", "keys"):
            raise ValueError(f'stn_reads must be "images" or "keys", got {self.stn_reads!r}')
        if self.keys_pca_fit not in ("all", "foreground"):
            raise ValueError(f'keys_pca_fit must be "all" or "foreground", got {self.keys_pca_fit!r}')
        if self.gradual_atlas_until not in ("half", "bootstrap"):
            raise ValueError(f'gradual_atlas_until must be "half" or "bootstrap", got {self.gradual_atlas_until!r}')
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"lr_final must lie in (0, 1], got {self.lr_final}")
        if not 0 <= self.bootstrap_epochs <= self.epochs:
            raise ValueError(f"bootstrap_epochs ({self.bootstrap_epochs}) must lie in [0, epochs={self.epochs}]")

    @property
    def upsample_factor(self) -> int:
        return self.atlas_size // self.coarse_flow_size

    @property
    def global_delta_px(self) -> int:
        return max(1, round(self.global_delta * self.atlas_size / 128))

    def weights(self) -> dict[str, float]:
        """The absolute weight of every loss term."""
        c = self.loss_scale
        local, glob = (0.25, 90.0 / 350.0) if self.relaxed_rigidity else (1.0, 1.0)
        return {
            "keys_l2": c * self.lambda_l,
            "keys_cos": c,
            "saliency": c * self.lambda_s,
            "sparsity_saliency": c * self.lambda_a * self.lambda_p * self.gamma,
            "sparsity_keys": c * self.lambda_a * self.lambda_p * self.lambda_k,
            "center": c * self.lambda_a,
            "scale": c * self.lambda_r * self.lambda_s1,
            "magnitude": c * self.lambda_r * self.lambda_s2,
            "rigidity_local": c * self.lambda_r * local,
            "rigidity_global": c * self.lambda_r * self.lambda_s3 * glob,
        }


# ----------------------------------------------------------------------------- networks


class EqualConv(nn.Conv2d):
    """A conv whose N(0, 1) weights are scaled by ``1/sqrt(fan_in)`` at run time (StyleGAN2)."""

    def __init__(self, cin, cout, kernel, stride=1, bias=True):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        nn.init.normal_(self.weight)
        if bias:
            nn.init.zeros_(self.bias)
        self.gain = 1.0 / math.sqrt(cin * kernel * kernel)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


def _act(x):
    # StyleGAN2's fused leaky ReLU, without the CUDA kernel.
    return math.sqrt(2.0) * F.leaky_relu(x, 0.2)


def _blur(x):
    # [1, 3, 3, 1] FIR low-pass before every stride-2 step (anti-aliasing, as upfirdn2d).
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :]) / 64.0
    C = x.shape[1]
    return F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), k.expand(C, 1, 4, 4), groups=C)


class ResBlock(nn.Module):
    """conv3x3 -> (blur) conv3x3 (stride 2 if ``down``), plus a 1x1 skip; ``(main + skip) / sqrt 2``."""

    def __init__(self, cin, cout, down=True):
        super().__init__()
        self.down = down
        self.conv1 = EqualConv(cin, cin, 3)
        self.conv2 = EqualConv(cin, cout, 3, stride=2 if down else 1)
        self.skip = EqualConv(cin, cout, 1, stride=2 if down else 1, bias=False)

    def forward(self, x):
        y = _act(self.conv1(x))
        y = _act(self.conv2(_blur(y) if self.down else y))
        return (y + self.skip(_blur(x) if self.down else x)) / math.sqrt(2.0)


def _trunk(size: int, stop: int, width: int, max_width: int, extra: bool, channels: int = 3) -> tuple[nn.Sequential, int]:
    """1x1 conv channels->width, then stride-2 ResBlocks from ``size`` down to ``stop`` (channels doubling, capped)."""
    layers, c = [EqualConv(channels, width, 1), nn.LeakyReLU(0.2)], width
    while size > stop:
        out = min(max_width, 2 * c)
        layers.append(ResBlock(c, out))
        c, size = out, size // 2
    if extra:
        layers.append(ResBlock(c, c, down=False))
    layers += [EqualConv(c, c, 3), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), c


class RigidSTN(nn.Module):
    """Images ``(B, C, s, s)`` (RGB, ``C = channels = 3``, or keys) -> raw similarity parameters
    ``(B, 4)`` = ``(o1, o2, o3, o4)``, zero at init (the identity): ``theta = pi tanh(o1)``,
    ``scale = exp(o2)``, ``t = (o3, o4)``."""

    def __init__(self, cfg: NeuralCongealingConfig, channels: int = 3):
        super().__init__()
        self.trunk, c = _trunk(cfg.stn_input_size, 4, cfg.stn_width, cfg.stn_max_width, extra=False, channels=channels)
        self.hidden = nn.Linear(c * 16, cfg.stn_hidden)
        self.out = nn.Linear(cfg.stn_hidden, 4)
        nn.init.zeros_(self.out.weight)  # start exactly at the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, images):
        return self.out(_act(self.hidden(self.trunk(images).flatten(1))))


def similarity_matrix(raw: torch.Tensor) -> torch.Tensor:
    """Raw STN outputs ``(B, 4)`` -> atlas-to-image similarity ``(B, 3, 3)``.

    ``raw = (o1, o2, o3, o4)`` gives the angle ``theta = pi tanh(o1)`` (so it stays in
    ``(-pi, pi)``), the scale ``s = exp(o2)`` and the translation ``t = (o3, o4)`` in normalised
    coordinates: ``T = [[s cos, -s sin, o3], [s sin, s cos, o4], [0, 0, 1]]``. Zeros give the
    identity, where :class:`RigidSTN` starts. Chapter 4, "The atlas and the two mappings".

    Args:
        raw: the rigid STN's outputs ``(B, 4)``.

    Returns:
        the similarities ``(B, 3, 3)``, atlas -> image, normalised coordinates.

    Example:
        >>> import torch
        >>> from congealing.neural import similarity_matrix
        >>> torch.equal(similarity_matrix(torch.zeros(1, 4))[0], torch.eye(3))
        True
        >>> similarity_matrix(torch.tensor([[0.0, 0.0, 0.5, -0.25]]))[0, :2, 2]
        tensor([ 0.5000, -0.2500])
    """
    theta, scale = math.pi * torch.tanh(raw[:, 0]), torch.exp(raw[:, 1])
    cos, sin = scale * torch.cos(theta), scale * torch.sin(theta)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rows = [torch.stack([cos, -sin, raw[:, 2]], -1), torch.stack([sin, cos, raw[:, 3]], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=1)


def similarity_inverse(T: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of similarities ``(B, 3, 3)``: ``(1/s) [R^T | -R^T t]``.

    The scale is read from the first column (``s^2 = a_00^2 + a_10^2``), so ``T`` must be a
    similarity (as :func:`similarity_matrix` makes); no general matrix inverse is computed. Keypoint
    transfer undoes the rigid part with it (Chapter 4, "Keypoint transfer"; the exercises of Chapter 4
    compare it with ``torch.linalg.inv``).

    Args:
        T: similarities ``(B, 3, 3)`` with last row ``[0, 0, 1]``.

    Returns:
        their inverses ``(B, 3, 3)``.

    Example:
        >>> import torch
        >>> from congealing.neural import similarity_inverse, similarity_matrix
        >>> T = similarity_matrix(torch.tensor([[0.3, 0.2, 0.1, -0.4]]))
        >>> torch.allclose(similarity_inverse(T) @ T, torch.eye(3), atol=1e-6)
        True
    """
    A, t = T[:, :2, :2], T[:, :2, 2:]
    scale2 = (A[:, 0, 0] ** 2 + A[:, 1, 0] ** 2)[:, None, None]
    A_inv = A.transpose(1, 2) / scale2
    top = torch.cat([A_inv, -A_inv @ t], dim=2)
    return torch.cat([top, T[:, 2:]], dim=1)


def convex_upsample(flow: torch.Tensor, weights: torch.Tensor, factor: int) -> torch.Tensor:
    """RAFT's learned upsampling of a coarse flow by ``factor``.

    Every fine pixel is a convex combination (softmax over the 9 weights of its sub-pixel position) of
    its 3x3 coarse neighbours (zero-padded at the border). The flow is multiplied by ``factor`` first
    (RAFT's pixel convention, kept by the official code). :class:`FlowSTN` ends with it (Chapter 4,
    "The atlas and the two mappings").

    Args:
        flow: the coarse flow ``(B, 2, h, w)``.
        weights: the logits ``(B, 9 f^2, h, w)``, ``f = factor``.
        factor: the upsampling factor ``f``.

    Returns:
        the fine flow ``(B, 2, f h, f w)``.

    Example:
        >>> import torch
        >>> from congealing.neural import convex_upsample
        >>> convex_upsample(torch.ones(1, 2, 4, 4), torch.zeros(1, 9 * 4, 4, 4), 2).shape
        torch.Size([1, 2, 8, 8])
    """
    B, _, h, w = flow.shape
    mask = weights.view(B, 1, 9, factor, factor, h, w).softmax(dim=2)
    neighbours = F.unfold(factor * flow, 3, padding=1).view(B, 2, 9, 1, 1, h, w)
    up = (mask * neighbours).sum(dim=2)  # (B, 2, f, f, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(B, 2, factor * h, factor * w)


class FlowSTN(nn.Module):
    """Similarity-aligned images ``(B, C, s, s)`` (RGB or keys, ``C = channels``) -> residual flow
    ``(B, 2, A, A)`` in normalised atlas units, zero at init: a coarse ``(coarse, coarse)`` flow,
    convexly upsampled by ``A / coarse``."""

    def __init__(self, cfg: NeuralCongealingConfig, channels: int = 3):
        super().__init__()
        self.factor = cfg.upsample_factor
        self.trunk, c = _trunk(cfg.flow_input_size, cfg.coarse_flow_size, cfg.stn_width, cfg.stn_max_width, extra=True, channels=channels)
        self.flow_head = nn.Sequential(EqualConv(c, c, 3), nn.ReLU(), EqualConv(c, 2, 3))
        nn.init.zeros_(self.flow_head[2].weight)  # start exactly at the identity
        self.mask_head = nn.Sequential(EqualConv(c, c, 3), nn.ReLU(), EqualConv(c, 9 * self.factor**2, 3))

    def forward(self, images):
        features = self.trunk(images)
        return convex_upsample(self.flow_head(features), self.mask_head(features), self.factor)


class NeuralCongealing(nn.Module):
    """The atlas (keys ``(D, A, A)`` and saliency logits ``(A, A)``) and the two STNs."""

    def __init__(self, cfg: NeuralCongealingConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        channels = dim if cfg.stn_reads == "keys" else 3
        self.rigid, self.flow = RigidSTN(cfg, channels), FlowSTN(cfg, channels)
        self.atlas_keys = nn.Parameter(torch.zeros(dim, cfg.atlas_size, cfg.atlas_size))
        self.atlas_logits = nn.Parameter(torch.zeros(cfg.atlas_size, cfg.atlas_size))
        self.flow_active = False  # set by train(): the flow STN joins after the rigid bootstrap

    @torch.no_grad()
    def init_atlas(self, keys: torch.Tensor, masks: torch.Tensor) -> None:
        """Atlas keys = mean keys ``(N, D, A, A)``; saliency = mean mask ``(N, 1, A, A)`` rescaled to
        ``[0.1, 0.9]`` (a constant mean, e.g. all-ones masks, gives 0.5 everywhere)."""
        self.atlas_keys.copy_(keys.mean(dim=0))
        m = masks.mean(dim=(0, 1))
        spread = m.max() - m.min()
        m = 0.1 + 0.8 * (m - m.min()) / spread if spread > 1e-6 else torch.full_like(m, 0.5)
        self.atlas_logits.copy_(torch.logit(m))

    @property
    def atlas_saliency(self) -> torch.Tensor:
        return torch.sigmoid(self.atlas_logits)

    def mapping(self, stn_images, src_images, use_flow: bool, detach_rigid: bool = True) -> dict:
        """Sampling grids of a batch: ``stn_images`` ``(B, C, s, s)`` feed the rigid STN; ``src_images``
        ``(B, 3, S, S)`` (with ``stn_reads="keys"``: ``stn_images``, the keys) are warped into the flow
        STN's input. Returns ``T`` ``(B, 3, 3)``, ``raw`` ``(B, 4)``, ``sim_grid`` and ``grid``
        ``(B, A, A, 2)``, ``delta`` ``(B, A, A, 2)`` (or None)."""
        cfg, B = self.cfg, stn_images.shape[0]
        raw = self.rigid(stn_images)
        T = similarity_matrix(raw)
        ident = warps.identity_grid((cfg.atlas_size,) * 2, B, T.dtype, T.device)
        sim_grid = warps.transform_points(T, ident.reshape(B, -1, 2)).reshape_as(ident)
        out = {"raw": raw, "T": T, "sim_grid": sim_grid, "grid": sim_grid, "delta": None}
        if use_flow:
            # The flow branch sees the similarity-aligned image, and the similarity enters its grid,
            # both detached: each STN is trained by its own objective.
            T_flow = T.detach() if detach_rigid else T
            small = warps.identity_grid((cfg.flow_input_size,) * 2, B, T.dtype, T.device)
            flow_grid = warps.transform_points(T_flow, small.reshape(B, -1, 2)).reshape_as(small)
            source = stn_images if cfg.stn_reads == "keys" else src_images
            flow_input = warps.warp_by_grid(source, flow_grid, padding_mode="border")
            delta = self.flow(flow_input.detach()).permute(0, 2, 3, 1)
            out["delta"] = delta
            out["grid"] = warps.transform_points(T_flow, (ident + delta).reshape(B, -1, 2)).reshape_as(ident)
        return out
