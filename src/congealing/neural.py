"""Neural Congealing (Ofri-Amar, Geyer, Kasten, Dekel, CVPR 2023) in plain PyTorch, CPU or GPU.

The idea: an image set is summarised by an **atlas**, a learnable grid of descriptor "keys"
``(D, A, A)`` plus a saliency map ``(A, A)``, and every image gets a mapping into it. The mapping is
two spatial transformer networks (STNs) that read the RGB image: a **rigid** one predicting a
similarity ``(theta, s, t)`` and a **non-rigid** one predicting a coarse flow that is convexly
upsampled to the atlas resolution. Their composition is one sampling grid ``G_n`` ``(A, A, 2)``
that reads image ``n`` (its RGB, its keys, its saliency) at every atlas pixel. Atlas and mappings
are trained jointly, so the atlas converges to the mode of the set in feature space.

Coordinates follow :mod:`congealing.warps`: normalised ``[-1, 1]`` with ``align_corners=False``.
The similarity matrix ``T`` ``(B, 3, 3)`` here maps **atlas -> image** (it builds a sampling grid),
and ``G_n(p) = T_n [p + delta_n(p); 1]``: the flow lives in atlas space before the similarity.

Everything the official code (``dolev104/neural_congealing``) does is here, written anew: the
losses with their masks and batch-wide normalisations, the rigid bootstrap, the detached
rigid/non-rigid objectives, optional flips, the gradual atlas, relaxed rigidity, closed-form +
nearest-neighbour keypoint transfer and edit propagation. The CUDA-only pieces (fused activations,
FIR filters, splatting) are replaced by plain-PyTorch equivalents, so it runs anywhere.

>>> cfg = NeuralCongealingConfig.for_mode("quick")
>>> cfg.atlas_size, cfg.coarse_flow_size, cfg.upsample_factor
(32, 8, 4)
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, features, warps
from .alignment import Alignment, ReportViews
from .errors import CheckpointError
from .features import PCAColours, extract_descriptors, load_backbone, pca_project, saliency_masks
from .losses import check_finite, masked_mean, rigidity_loss
from .runtime import ModeConfig, get_device

__all__ = [
    "NeuralCongealingConfig", "keys_loss", "saliency_loss", "l0_approx", "saliency_sparsity",
    "keys_sparsity", "center_loss", "EqualConv", "ResBlock", "RigidSTN", "similarity_matrix",
    "similarity_inverse", "convex_upsample", "FlowSTN", "NeuralCongealing", "NeuralData", "prepare",
    "TrainResult", "per_image_keys_loss", "save_checkpoint", "update_flips_and_atlas", "train_epoch",
    "train", "fit",
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

    * ``image_size`` 256 -> 128, ``stn_input_size`` 128 -> 64, ``flow_input_size`` 128 -> 64:
      the STNs' cost grows with the square of their input, and 64 px still shows a bird's pose.
    * ``atlas_size`` 128 -> 32, ``coarse_flow_size`` 16 -> 8 (so convex upsampling is x4, not x8):
      32 is EfficientNet-Lite0's native stride-8 grid at 256 px; keys upsampled to 128 add no
      information but 16x the cost of every warp and loss.
    * ``stn_width`` 64 -> 16, ``stn_max_width`` 512 -> 64, ``stn_hidden`` 512 -> 64: ~100x fewer
      STN weights; the STNs only regress a similarity and a coarse flow.
    * ``epochs`` 8000 -> 100, ``bootstrap_epochs`` 1000 -> 40, ``update_every`` 100 -> 10:
      minutes instead of hours (the batch stays 2: per-image cost dominates a step on a CPU, so
      small batches give the most updates per second). The rigid bootstrap keeps 40 % of the
      epochs (the paper: 12.5 %), because in quick mode the similarity is where the PCK comes from.
    * ``keys_pca_dim`` 0 -> 32: the keys are the set's top 32 principal components of the
      backbone's descriptors (472 channels for EfficientNet-Lite0), as SpaceJAM does with 25; every
      warp and loss of the keys is ~15x smaller, and a step (with the batch-wise orientation
      choice, :meth:`NeuralData.view_at`) is ~1.7x cheaper, which paid for the longer schedule.
    * ``flip_init`` "none" -> "consensus" (with ``flips``): the orientations start from
      :func:`congealing.features.consensus_flips` of the box-masked keys (whose column profiles
      tell which way each bird faces) instead of all as they are; the official updates still run.
    * ``lr_stn`` 1e-4 -> 3e-3, ``lr_atlas`` 8e-4 -> 4e-3: with ~100x fewer optimiser steps the
      published rates barely leave the identity. Quick mode is a demonstration of the method, not
      a converged run: expect far lower PCK than the paper (the chapter reports it).
    * the global rigidity step ``global_delta`` is given at a 128-px atlas and scaled with the
      atlas (20 -> 5 px at 32), so it always spans the same fraction of the object.

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
    flips: bool = False
    gradual_atlas: bool = False
    keys_pca_dim: int = 0  # 0: the backbone's raw keys (official); k: their top-k principal components over the set
    flip_init: str = "none"  # with flips: start "none" mirrored (official) or from features.consensus_flips ("consensus")
    update_every: int = 100  # epochs between flip / gradual-atlas decisions
    checkpoint_every: int = 1000
    seed: int = 0

    QUICK: ClassVar[dict] = dict(
        image_size=128, stn_input_size=64, flow_input_size=64, atlas_size=32, coarse_flow_size=8,
        stn_width=16, stn_max_width=64, stn_hidden=64, epochs=100, bootstrap_epochs=40,
        update_every=10, checkpoint_every=20, lr_stn=3e-3, lr_atlas=4e-3, keys_pca_dim=32, flip_init="consensus",
    )

    def __post_init__(self):
        for name in ("stn_input_size", "flow_input_size", "atlas_size", "coarse_flow_size"):
            size = getattr(self, name)
            if size < 4 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two >= 4, got {size}")
        if self.atlas_size % self.coarse_flow_size or self.flow_input_size < 2 * self.coarse_flow_size:
            raise ValueError("atlas_size must be a multiple of coarse_flow_size, and flow_input_size at least twice it")
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


# ----------------------------------------------------------------------------- loss terms


def keys_loss(atlas_keys: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-mean squared distance and cosine distance between atlas keys ``(1|B, D, A, A)`` and
    congealed keys ``(B, D, A, A)``, averaged under ``mask`` ``(B, 1, A, A)``. Returns ``(l2, cos)``.

    Both come from one dot product and two squared norms (``|a-k|^2 = |a|^2 + |k|^2 - 2 a.k``):
    with D in the hundreds these channel reductions are most of a step's cost on a CPU.

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
    """Huber distance between the atlas saliency ``(1|B, 1, A, A)`` and congealed masks ``(B, 1, A, A)``
    over pixels that map inside the image (``inside``)."""
    huber = F.huber_loss(atlas_saliency.expand_as(saliency), saliency, reduction="none", delta=delta)
    return masked_mean(huber, inside)


def l0_approx(values: torch.Tensor, steepness: float = 5.0) -> torch.Tensor:
    """A smooth count of non-zeros: ``2 sigmoid(steepness * v) - 1``; 0 at 0, close to 1 from ~0.5 up.

    >>> l0_approx(torch.tensor([0.0, 1.0])).round(decimals=3)
    tensor([0.0000, 0.9870])
    """
    return 2.0 * torch.sigmoid(steepness * values) - 1.0


def saliency_sparsity(atlas_saliency: torch.Tensor, steepness: float = 5.0) -> torch.Tensor:
    """``mean |a| + 0.5 mean L0(a)`` over the atlas saliency ``(..., A, A)``: keeps the atlas foreground small."""
    return atlas_saliency.abs().mean() + 0.5 * l0_approx(atlas_saliency, steepness).mean()


def keys_sparsity(atlas_keys: torch.Tensor, atlas_saliency: torch.Tensor) -> torch.Tensor:
    """L1 norm (summed over the D channels) of the atlas keys ``(D, A, A)``, averaged with weight
    ``1 - saliency`` ``(A, A)`` (detached): background atlas keys go to zero."""
    weight = 1.0 - atlas_saliency.detach()
    return masked_mean(atlas_keys.abs().sum(dim=0), weight)


def center_loss(atlas_saliency: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """Half the squared distance of the saliency's centre of mass from the atlas centre.

    ``atlas_saliency`` ``(A, A)``; ``inside`` ``(A, A)`` (the pixels some image reaches) weighs it.

    >>> s = torch.zeros(8, 8); s[3:5, 3:5] = 1
    >>> center_loss(s).item()
    0.0
    """
    A_h, A_w = atlas_saliency.shape[-2:]
    coords = warps.identity_grid((A_h, A_w), 1, atlas_saliency.dtype, atlas_saliency.device)[0]  # (A, A, 2) x, y
    weight = atlas_saliency if inside is None else atlas_saliency * inside
    centre = (weight[..., None] * coords).sum(dim=(0, 1)) / weight.sum().clamp_min(1e-8)
    return 0.5 * centre.pow(2).sum()


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


def _trunk(size: int, stop: int, width: int, max_width: int, extra: bool) -> tuple[nn.Sequential, int]:
    """1x1 conv 3->width, then stride-2 ResBlocks from ``size`` down to ``stop`` (channels doubling, capped)."""
    layers, c = [EqualConv(3, width, 1), nn.LeakyReLU(0.2)], width
    while size > stop:
        out = min(max_width, 2 * c)
        layers.append(ResBlock(c, out))
        c, size = out, size // 2
    if extra:
        layers.append(ResBlock(c, c, down=False))
    layers += [EqualConv(c, c, 3), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), c


class RigidSTN(nn.Module):
    """RGB ``(B, 3, s, s)`` -> raw similarity parameters ``(B, 4)`` = ``(o1, o2, o3, o4)``, zero at init
    (the identity): ``theta = pi tanh(o1)``, ``scale = exp(o2)``, ``t = (o3, o4)``."""

    def __init__(self, cfg: NeuralCongealingConfig):
        super().__init__()
        self.trunk, c = _trunk(cfg.stn_input_size, 4, cfg.stn_width, cfg.stn_max_width, extra=False)
        self.hidden = nn.Linear(c * 16, cfg.stn_hidden)
        self.out = nn.Linear(cfg.stn_hidden, 4)
        nn.init.zeros_(self.out.weight)  # start exactly at the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, images):
        return self.out(_act(self.hidden(self.trunk(images).flatten(1))))


def similarity_matrix(raw: torch.Tensor) -> torch.Tensor:
    """Raw STN outputs ``(B, 4)`` -> atlas-to-image similarity ``(B, 3, 3)``.

    >>> torch.equal(similarity_matrix(torch.zeros(1, 4))[0], torch.eye(3))
    True
    """
    theta, scale = math.pi * torch.tanh(raw[:, 0]), torch.exp(raw[:, 1])
    cos, sin = scale * torch.cos(theta), scale * torch.sin(theta)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rows = [torch.stack([cos, -sin, raw[:, 2]], -1), torch.stack([sin, cos, raw[:, 3]], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=1)


def similarity_inverse(T: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of similarities ``(B, 3, 3)``: ``(1/s) [R^T | -R^T t]``.

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
    """RAFT's learned upsampling: flow ``(B, 2, h, w)`` and logits ``(B, 9 f^2, h, w)`` ->
    ``(B, 2, f h, f w)``; every fine pixel is a convex combination of its 3x3 coarse neighbours.
    The flow is multiplied by ``f`` first (RAFT's pixel convention, kept by the official code).

    >>> convex_upsample(torch.ones(1, 2, 4, 4), torch.zeros(1, 9 * 4, 4, 4), 2).shape
    torch.Size([1, 2, 8, 8])
    """
    B, _, h, w = flow.shape
    mask = weights.view(B, 1, 9, factor, factor, h, w).softmax(dim=2)
    neighbours = F.unfold(factor * flow, 3, padding=1).view(B, 2, 9, 1, 1, h, w)
    up = (mask * neighbours).sum(dim=2)  # (B, 2, f, f, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(B, 2, factor * h, factor * w)


class FlowSTN(nn.Module):
    """Similarity-aligned RGB ``(B, 3, s, s)`` -> residual flow ``(B, 2, A, A)`` in normalised atlas units,
    zero at init: a coarse ``(coarse, coarse)`` flow, convexly upsampled by ``A / coarse``."""

    def __init__(self, cfg: NeuralCongealingConfig):
        super().__init__()
        self.factor = cfg.upsample_factor
        self.trunk, c = _trunk(cfg.flow_input_size, cfg.coarse_flow_size, cfg.stn_width, cfg.stn_max_width, extra=True)
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
        self.rigid, self.flow = RigidSTN(cfg), FlowSTN(cfg)
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
        """Sampling grids of a batch: ``stn_images`` ``(B, 3, s, s)`` feed the rigid STN, ``src_images``
        ``(B, 3, S, S)`` are warped into the flow STN's input. Returns ``T`` ``(B, 3, 3)``, ``raw``
        ``(B, 4)``, ``sim_grid`` and ``grid`` ``(B, A, A, 2)``, ``delta`` ``(B, A, A, 2)`` (or None)."""
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
            flow_input = warps.warp_by_grid(src_images, flow_grid, padding_mode="border")
            delta = self.flow(flow_input.detach()).permute(0, 2, 3, 1)
            out["delta"] = delta
            out["grid"] = warps.transform_points(T_flow, (ident + delta).reshape(B, -1, 2)).reshape_as(ident)
        return out


# ----------------------------------------------------------------------------- data


@dataclass
class NeuralData:
    """The training tensors of one set (all on one device).

    ``images`` ``(N, 3, S, S)``, ``stn_images`` ``(N, 3, s, s)``, ``keys`` ``(N, D, A, A)``,
    ``masks`` ``(N, 1, A, A)``; ``flipped_*`` the same for the mirrored images (or None).
    """

    images: torch.Tensor
    stn_images: torch.Tensor
    keys: torch.Tensor
    masks: torch.Tensor
    flipped_stn_images: torch.Tensor | None = None
    flipped_images: torch.Tensor | None = None
    flipped_keys: torch.Tensor | None = None
    flipped_masks: torch.Tensor | None = None

    def __len__(self):
        return self.images.shape[0]

    def view(self, flipped: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(stn_images, images, keys, masks)`` with image ``n`` mirrored where ``flipped[n]``."""
        if not bool(flipped.any()):
            return self.stn_images, self.images, self.keys, self.masks
        f = flipped.to(self.images.device).view(-1, 1, 1, 1)
        pairs = [(self.stn_images, self.flipped_stn_images), (self.images, self.flipped_images), (self.keys, self.flipped_keys), (self.masks, self.flipped_masks)]
        return tuple(torch.where(f, b, a) for a, b in pairs)

    def view_at(self, idx: torch.Tensor, flipped: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``view(flipped)`` of the images ``idx`` only (``flipped`` ``(N,)`` covers the whole set):
        selects before choosing, so a batch does not copy every image's keys."""
        chosen = [t[idx] if t is not None else None for t in (self.stn_images, self.images, self.keys, self.masks,
                  self.flipped_stn_images, self.flipped_images, self.flipped_keys, self.flipped_masks)]
        f = flipped.to(self.images.device)[idx]
        if not bool(f.any()):
            return tuple(chosen[:4])
        f = f.view(-1, 1, 1, 1)
        return tuple(torch.where(f, b, a) for a, b in zip(chosen[:4], chosen[4:]))


def prepare(images: torch.Tensor, masks: torch.Tensor, backbone, cfg: NeuralCongealingConfig, device=None) -> NeuralData:
    """Images ``(N, 3, H, W)`` in ``[0, 1]`` and saliency masks ``(N, 1, h, w)`` -> :class:`NeuralData`.

    Keys come from ``backbone`` at ``cfg.atlas_size`` (through the disk cache of
    :func:`congealing.features.extract_descriptors`). With ``cfg.flips`` the mirrored images'
    keys are *re-extracted*, not mirrored (features are not mirror-equivariant).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"Neural Congealing aligns a set: it needs at least 2 images, got {images.shape[0]}")
    if masks.shape[0] != images.shape[0] or masks.ndim != 4:
        raise ValueError(f"masks must be (N, 1, h, w) with N = {images.shape[0]}, got {tuple(masks.shape)}")
    images = images.float()

    def one(imgs, msk):
        keys = extract_descriptors(imgs, backbone, grid=cfg.atlas_size)
        return warps.resize(imgs, cfg.stn_input_size), warps.resize(imgs, cfg.image_size), keys, warps.resize(msk.float(), cfg.atlas_size).clamp(0, 1)

    stn, src, keys, msk = one(images, masks)
    data = NeuralData(src, stn, keys, msk) if not cfg.flips else NeuralData(src, stn, keys, msk, *one(images.flip(-1), masks.flip(-1)))
    if cfg.keys_pca_dim:

        # One basis for both orientations, fitted on the original images' keys at every location.
        data.keys, components, mean = pca_project(data.keys, cfg.keys_pca_dim)
        if data.flipped_keys is not None:
            data.flipped_keys = torch.einsum("ndhw,kd->nkhw", data.flipped_keys - mean.view(1, -1, 1, 1), components).contiguous()
    if device is not None:
        for name, value in vars(data).items():
            if value is not None:
                setattr(data, name, value.to(device))
    return data


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """A trained model, its data, each image's orientation ``flipped`` ``(N,)`` and the loss history."""

    model: NeuralCongealing
    data: NeuralData
    flipped: torch.Tensor
    history: list = field(default_factory=list)
    seconds: float = 0.0

    @torch.no_grad()
    def outputs(self, batch: int = 16) -> dict:
        """Final ``T`` ``(N, 3, 3)``, ``delta`` ``(N, A, A, 2)`` and ``grid`` ``(N, A, A, 2)`` in the
        frame each image was trained in (mirrored where ``flipped``)."""
        self.model.eval()
        stn, src, _, _ = self.data.view(self.flipped)
        use_flow = self.model.flow_active
        parts = [self.model.mapping(stn[i : i + batch], src[i : i + batch], use_flow) for i in range(0, len(self.data), batch)]
        out = {k: torch.cat([p[k] for p in parts]) for k in ("T", "grid")}
        out["delta"] = torch.cat([p["delta"] for p in parts]) if use_flow else torch.zeros_like(out["grid"])
        return out

    def grids(self, outputs: dict | None = None) -> torch.Tensor:
        """Sampling grids ``(N, A, A, 2)`` into the **original** (unmirrored) images, from
        ``outputs`` (:meth:`outputs`; None: computed now)."""
        grid = (outputs if outputs is not None else self.outputs())["grid"].clone()
        grid[..., 0] = torch.where(self.flipped.to(grid.device).view(-1, 1, 1), -grid[..., 0], grid[..., 0])
        return grid

    @torch.no_grad()
    def congeal(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Warp images/maps ``(N, C, H, W)`` (original orientation) into the atlas frame at ``size``."""
        grid = self.grids().to(images.device)
        if size is not None and size != grid.shape[1]:
            grid = warps.resize_grid(grid, size)
        return warps.warp_by_grid(images, grid, padding_mode="border")

    def average_image(self, images: torch.Tensor, size: int = 128) -> torch.Tensor:
        """Mean congealed RGB ``(3, size, size)``: the picture a user edits."""
        return self.congeal(images, size).mean(dim=0)

    def transfer(self, size: tuple[int, int], outputs: dict | None = None) -> Callable[[int, int, torch.Tensor], torch.Tensor]:
        """A keypoint transfer ``(src, tgt, points (K, 2) pixel xy) -> (K, 2)`` for images of ``size`` (H, W).

        Source -> atlas: undo the similarity in closed form, then invert the flow by nearest
        neighbours over the atlas pixels. Atlas -> target: sample the target's grid. The function
        carries ``flipped`` ``(N,)``, the images trained mirrored (see :mod:`congealing.evaluation`).
        ``outputs``: the model's :meth:`outputs` if already computed (None: computed now, once).
        """
        outputs = outputs if outputs is not None else self.outputs()
        out = {k: v.cpu() for k, v in outputs.items()}
        flow_grid = warps.identity_grid(out["delta"].shape[1:3], len(self.data)) + out["delta"]
        T_inv = similarity_inverse(out["T"])
        grids, flipped = self.grids(outputs).cpu(), self.flipped.cpu()

        def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
            p = warps.pixel_to_normalized(points.float().cpu()[None], size)
            if flipped[src]:
                p = p * p.new_tensor([-1.0, 1.0])
            q = warps.transform_points(T_inv[src : src + 1], p)
            atlas_point = warps.invert_grid_points(q, flow_grid[src : src + 1])
            mapped = warps.grid_points(atlas_point, grids[tgt : tgt + 1])
            return warps.normalized_to_pixel(mapped, size)[0]

        transfer.flipped = flipped.clone()  # the evaluator relabels left/right parts of mirrored pairs
        return transfer


def _pass(model, data, idx, orientation, phase_flow, mapping_only, included, cfg) -> dict:
    """Every loss term of one batch in one orientation (unweighted), as a dict of scalars."""
    stn, src, keys, masks = data.view_at(idx, orientation)
    out = model.mapping(stn, src, phase_flow)
    grid = out["grid"]
    ones = torch.ones_like(masks)
    inside = warps.warp_by_grid(ones, grid).detach()
    warped_keys = warps.warp_by_grid(keys, grid, padding_mode="border")
    warped_masks = warps.warp_by_grid(masks, grid)
    atlas_keys, atlas_sal = model.atlas_keys[None], model.atlas_saliency[None, None]
    if mapping_only:
        atlas_keys, atlas_sal = atlas_keys.detach(), atlas_sal.detach()
    elif included is not None and not bool(included[idx.cpu()].all()):
        # Gradual atlas: images not yet included train their mappings against a frozen atlas.
        live = included[idx.cpu()].to(grid.device).view(-1, 1, 1, 1)
        atlas_keys = torch.where(live, atlas_keys, atlas_keys.detach())
        atlas_sal = torch.where(live, atlas_sal, atlas_sal.detach())
    terms = {}
    terms["keys_l2"], terms["keys_cos"] = keys_loss(atlas_keys, warped_keys, atlas_sal.detach() * inside)
    terms["saliency"] = saliency_loss(atlas_sal, warped_masks, inside, cfg.huber_delta)
    if not mapping_only and (included is None or bool(included[idx.cpu()].any())):
        sal = model.atlas_saliency
        terms["sparsity_saliency"] = saliency_sparsity(sal, cfg.l0_steepness)
        terms["sparsity_keys"] = keys_sparsity(model.atlas_keys, sal)
        terms["center"] = center_loss(sal, inside.amax(dim=0)[0])
    terms["scale"] = (1.0 - torch.exp(out["raw"][:, 1])).pow(2).mean()
    if phase_flow:
        terms["magnitude"] = masked_mean(out["delta"].pow(2).sum(-1, keepdim=True), inside.permute(0, 2, 3, 1))
        salient = (model.atlas_saliency.detach()[None, None] * inside)[:, 0]
        terms["rigidity_local"] = rigidity_loss(grid, salient, cfg.local_delta)
        terms["rigidity_global"] = rigidity_loss(grid, inside[:, 0], cfg.global_delta_px)
        # The rigid STN's own objective once the flow is on: keys + saliency through the similarity
        # alone, against a frozen atlas.
        sim = out["sim_grid"]
        inside_sim = warps.warp_by_grid(ones, sim).detach()
        sim_keys = warps.warp_by_grid(keys, sim, padding_mode="border")
        frozen_keys, frozen_sal = model.atlas_keys.detach()[None], model.atlas_saliency.detach()[None, None]
        terms["keys_l2_sim"], terms["keys_cos_sim"] = keys_loss(frozen_keys, sim_keys, frozen_sal * inside_sim)
        terms["saliency_sim"] = saliency_loss(frozen_sal, warps.warp_by_grid(masks, sim), inside_sim, cfg.huber_delta)
    return terms


def _total(terms: dict, weights: dict) -> torch.Tensor:
    return sum(weights[name.removesuffix("_sim")] * value for name, value in terms.items())


@torch.no_grad()
def per_image_keys_loss(model: NeuralCongealing, data: NeuralData, orientation: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Weighted L2 + cosine keys loss ``(N,)`` of every image in ``orientation`` ``(N,)`` bool, with
    mask ``atlas saliency x inside`` (the criterion for flips and the gradual atlas)."""
    cfg, w = model.cfg, model.cfg.weights()
    use_flow = model.flow_active
    losses = []
    for start in range(0, len(data), batch):
        idx = torch.arange(start, min(start + batch, len(data)))
        stn, src, keys, _ = data.view_at(idx, orientation)
        grid = model.mapping(stn, src, use_flow)["grid"]
        inside = warps.warp_by_grid(torch.ones_like(keys[:, :1]), grid)
        warped = warps.warp_by_grid(keys, grid, padding_mode="border")
        mask = model.atlas_saliency[None, None] * inside
        for b in range(len(idx)):
            l2, cos = keys_loss(model.atlas_keys[None], warped[b : b + 1], mask[b : b + 1])
            losses.append(w["keys_l2"] * l2 + w["keys_cos"] * cos)
    return torch.stack(losses)


def _optimizers(model, cfg):
    return {
        "rigid": torch.optim.Adam(model.rigid.parameters(), lr=cfg.lr_stn),
        "flow": torch.optim.Adam(model.flow.parameters(), lr=cfg.lr_stn),
        "atlas": torch.optim.Adam([model.atlas_keys, model.atlas_logits], lr=cfg.lr_atlas),
    }


def save_checkpoint(path, model, optimizers, epoch, flipped, included, history, fingerprint: dict | None = None) -> None:
    """A plain dict of tensors and numbers (loads with ``torch.load(path, weights_only=True)``),
    written atomically, with the ``fingerprint`` of the inputs (:mod:`congealing.checkpoints`)."""
    state = {
        "epoch": epoch,
        "config": asdict(model.cfg),
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "flipped": flipped.cpu(),
        "included": included.cpu() if included is not None else torch.ones(0, dtype=torch.bool),
        "history": history,
    }
    checkpoints.save(state, path, fingerprint)


def update_flips_and_atlas(model: NeuralCongealing, data: NeuralData, flipped: torch.Tensor, included: torch.Tensor | None,
                           per_update: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decisions taken every ``update_every`` epochs (Chapter 4, "Training"): returns the new
    ``flipped`` ``(N,)`` and ``included`` ``(N,)`` (or ``None`` without the gradual atlas).

    With flips, each image takes the orientation whose keys fit the atlas better
    (:func:`per_image_keys_loss`); with the gradual atlas, the ``per_update`` best-fitting images not
    yet included join the images that update the atlas.
    """
    N = len(data)
    if model.cfg.flips:
        original = per_image_keys_loss(model, data, torch.zeros(N, dtype=torch.bool))
        mirrored = per_image_keys_loss(model, data, torch.ones(N, dtype=torch.bool))
        flipped = (mirrored < original).cpu()
    if included is not None and not bool(included.all()):
        current = per_image_keys_loss(model, data, flipped).cpu()
        current[included] = float("inf")
        included = included.clone()
        included[current.argsort()[:per_update]] = True
    return flipped, included


def train_epoch(model: NeuralCongealing, data: NeuralData, optimizers: dict, order: torch.Tensor, flipped: torch.Tensor,
                included: torch.Tensor | None, epoch: int = 0, step: int = 0) -> tuple[dict[str, float], int]:
    """One epoch over the images in ``order`` ``(N,)`` (Chapter 4, "Training"); returns the epoch's
    mean of every loss term (and ``"total"``) and the step count so far.

    Each batch sums the weighted terms of :func:`_pass` in each image's current orientation and, with
    flips, in the other orientation against a frozen atlas (so both orientations learn to map). The
    rigid STN and the atlas always step; the flow STN once ``model.flow_active``. A non-finite loss
    raises :class:`FloatingPointError` naming the epoch, step and every term.
    """
    cfg, weights, device, N = model.cfg, model.cfg.weights(), data.keys.device, len(data)
    sums: dict[str, float] = {}
    for b in range(0, N, cfg.batch_size):
        idx = order[b : b + cfg.batch_size]
        terms = _pass(model, data, idx.to(device), flipped.to(device), model.flow_active, False, included, cfg)
        total = _total(terms, weights)
        if cfg.flips:
            other = _pass(model, data, idx.to(device), (~flipped).to(device), model.flow_active, True, None, cfg)
            total = total + _total(other, weights)
            terms.update({f"{k}_mirror": v for k, v in other.items()})
        check_finite(total, f"Neural Congealing diverged at epoch {epoch}, step {step}", {"total": total, **terms})
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        optimizers["rigid"].step()
        optimizers["atlas"].step()
        if model.flow_active:
            optimizers["flow"].step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(idx) / N
        sums["total"] = sums.get("total", 0.0) + total.item() * len(idx) / N
        step += 1
    return sums, step


def train(
    data: NeuralData,
    cfg: NeuralCongealingConfig,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[int, NeuralCongealing], None] | None = None,
    callback_every: int = 0,
    log: Callable[[str], None] | None = None,
    fingerprint: dict | None = None,
) -> TrainResult:
    """Train atlas and mappings on ``data`` with the schedule of ``cfg``.

    Epochs ``0 .. bootstrap_epochs - 1`` train the rigid STN and the atlas; afterwards the flow
    STN joins (with fresh Adam state), the atlas learns from the composed warp only, and the rigid
    STN from its own similarity-only objective. With ``checkpoint``, state is saved every
    ``cfg.checkpoint_every`` epochs and at the end, with ``fingerprint`` (what the inputs were);
    ``resume`` continues from it, and raises :class:`congealing.errors.CheckpointError` if the file
    is not a checkpoint or was made for another fingerprint or config. ``callback(epoch,
    model)`` runs every ``callback_every`` epochs (and after the last). A non-finite loss raises
    :class:`FloatingPointError` naming the epoch, step and every loss term.
    """
    N = len(data)
    if N < 2:
        raise ValueError(f"Neural Congealing aligns a set: it needs at least 2 images, got {N}")
    if cfg.flips and data.flipped_keys is None:
        raise ValueError("cfg.flips is set but data has no mirrored images: build it with prepare(..., cfg) using the same cfg")
    device = data.keys.device
    torch.manual_seed(cfg.seed)
    model = NeuralCongealing(cfg, data.keys.shape[1]).to(device)
    model.init_atlas(data.keys, data.masks)
    model.flow_active = cfg.bootstrap_epochs == 0
    optimizers = _optimizers(model, cfg)
    weights = cfg.weights()
    flipped = torch.zeros(N, dtype=torch.bool)
    if cfg.flips and cfg.flip_init == "consensus":
        flipped = features.consensus_flips((data.keys * data.masks).cpu())
    included = None
    if cfg.gradual_atlas:
        # Start from the image closest to the mean-key atlas (own mask), add one every update_every.
        with torch.no_grad():
            l2, cos = zip(*(keys_loss(model.atlas_keys[None], data.keys[n : n + 1], data.masks[n : n + 1]) for n in range(N)))
            first = int((weights["keys_l2"] * torch.stack(l2) + weights["keys_cos"] * torch.stack(cos)).argmin())
        included = torch.zeros(N, dtype=torch.bool)
        included[first] = True
    # One image joins per update, as published (12 images: all in by epoch 1100 of 8000); a short
    # run adds as many per update as it takes to include everyone by mid-training.
    per_update = max(1, math.ceil((N - 1) / max(1, (cfg.epochs // 2) // cfg.update_every)))
    history, start = [], 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = checkpoints.load(checkpoint, map_location=device)
        checkpoints.check_fingerprint(state, fingerprint, checkpoint)
        if state.get("config") != asdict(cfg):
            changed = sorted(k for k in asdict(cfg) if state.get("config", {}).get(k) != asdict(cfg).get(k))
            raise CheckpointError(f"{Path(checkpoint).name} was trained with other settings ({', '.join(changed)}); run without --resume to start again, or use the same settings")
        model.load_state_dict(state["model"])
        start, history = state["epoch"], list(state["history"])
        flipped = state["flipped"].bool().cpu()  # kept on the CPU, as in a fresh run (map_location moved them)
        included = state["included"].bool().cpu() if cfg.gradual_atlas else None
        model.flow_active = start >= cfg.bootstrap_epochs
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
    t0, step = time.perf_counter(), 0
    model.train()
    for epoch in range(start, cfg.epochs):
        if epoch == cfg.bootstrap_epochs and not model.flow_active:
            model.flow_active = True
            optimizers["flow"] = torch.optim.Adam(model.flow.parameters(), lr=cfg.lr_stn)
        if epoch > 0 and epoch % cfg.update_every == 0:
            flipped, included = update_flips_and_atlas(model, data, flipped, included, per_update)
        order = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        sums, step = train_epoch(model, data, optimizers, order, flipped, included, epoch, step)
        history.append({"epoch": epoch, **sums})
        if log is not None and (epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs - 1):
            log(f"epoch {epoch:5d}  total {sums['total']:.1f}  keys_cos {sums['keys_cos']:.4f}  {time.perf_counter() - t0:.0f}s")
        last = epoch == cfg.epochs - 1
        if checkpoint is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
            save_checkpoint(checkpoint, model, optimizers, epoch + 1, flipped, included, history, fingerprint)
        if callback is not None and ((callback_every and epoch % callback_every == 0) or last):
            model.eval()
            callback(epoch, model)
            model.train()
    model.eval()
    return TrainResult(model, data, flipped, history, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- the common protocol


def fit(images: torch.Tensor, config: NeuralCongealingConfig, *, masks: torch.Tensor | None = None, backbone=None, device=None,
        callback: Callable[[int, int], None] | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        fingerprint: dict | None = None, log: Callable[[str], None] | None = None) -> Alignment:
    """Neural Congealing behind the common protocol (:mod:`congealing.alignment`; Chapter 7, "One protocol, every method").

    :func:`prepare` then :func:`train`; the result as an :class:`congealing.alignment.Alignment`.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        config: the :class:`NeuralCongealingConfig`.
        masks: ``(N, 1, h, w)`` saliency masks; None: Chapter 3's co-segmentation
            (:func:`congealing.features.saliency_masks`).
        backbone: the :class:`congealing.features.Backbone` (None: the default one).
        device: where to train (None: the best available, :func:`congealing.runtime.get_device`).
        callback: ``callback(done, total)`` after every epoch.
        checkpoint, resume, fingerprint, log: as in :func:`train`.

    Returns:
        an Alignment with ``grids`` ``(N, A, A, 2)`` (atlas -> original image), ``flips``,
        ``atlas`` (``"saliency"`` ``(1, A, A)`` and ``"keys"`` ``(D, A, A)``), the masks, the loss
        history, the exact keypoint transfer of :meth:`TrainResult.transfer` as ``point_map``,
        and ``state["result"]``, the :class:`TrainResult`.
    """
    device = device if isinstance(device, torch.device) else get_device(device)
    backbone = backbone if backbone is not None else load_backbone(None, device)
    if masks is None:
        masks, _ = saliency_masks(images, backbone)
    data = prepare(images, masks, backbone, config, device)
    progress = None if callback is None else (lambda epoch, model: callback(epoch + 1, config.epochs))
    result = train(data, config, checkpoint=checkpoint, resume=resume, callback=progress, callback_every=1 if callback else 0,
                   log=log, fingerprint=fingerprint)
    size = tuple(images.shape[-2:])
    outputs = result.outputs()  # one pass of the model over the set serves the grids and the keypoint transfer
    return Alignment(
        method="neural", size=size, grids=result.grids(outputs).cpu(), flips=result.flipped,
        atlas={"saliency": result.model.atlas_saliency.detach().cpu()[None], "keys": result.model.atlas_keys.detach().cpu()},
        masks=masks.cpu(), history=result.history, seconds=result.seconds,
        parameters=sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        state={"result": result, "config": config, "backbone": backbone.name}, point_map=result.transfer(size, outputs),
        report=_report_views(result, masks.cpu()),
    )


def _report_views(result: TrainResult, masks: torch.Tensor) -> Callable[[torch.Tensor, int], ReportViews]:
    """What the ``congeal align`` report shows of a trained model: the atlas saliency and keys, the
    masks, each image's keys loss, and the edit drawn over the atlas saliency."""

    def views(images: torch.Tensor, side: int) -> ReportViews:
        saliency = result.model.atlas_saliency.detach().cpu()[None]
        keys = result.model.atlas_keys.detach().cpu()[None]
        scores = {"name": "keys loss", "values": per_image_keys_loss(result.model, result.data, result.flipped).cpu(), "better": "lower",
                  "doc": "Neural Congealing's weighted L2 + cosine loss between the image's warped descriptors and the atlas, inside the atlas saliency (neural.per_image_keys_loss); lower is better"}
        return ReportViews(atlas={"saliency": saliency, "keys (PCA-RGB)": PCAColours.fit(keys)(keys)[0]}, masks=masks, scores=scores,
                           edit_region=warps.resize(saliency[None].float(), side)[0, 0])

    return views
