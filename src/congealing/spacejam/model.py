"""SpaceJAM's configuration and networks: the settings (:class:`SpaceJAMConfig`), the key
autoencoder (:class:`KeyAutoencoder`) and the recurrent Lie-algebra alignment network
(:class:`RecurrentLieSTN`). Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder" and
"Lie groups, the curriculum and the cascade"; the losses are in
:mod:`congealing.spacejam.losses`, the keys and training in :mod:`congealing.spacejam.training`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from .. import warps
from ..runtime import ModeConfig

__all__ = [
    "GROUPS", "SpaceJAMConfig", "count_parameters", "GlobalNorm", "KeyAutoencoder", "ChannelsLastAdaptiveMaxPool2d", "RecurrentLieSTN",
]

GROUPS = ("se2", "affine", "homography")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SpaceJAMConfig(ModeConfig):
    """Every number of the method, with the official code's defaults (full mode).

    Quick mode (:meth:`for_mode`, 2 CPU cores) changes only:

    * ``map_size`` 256 -> 64: the official code bilinearly upsamples the 64x64 descriptor grids to
      256x256, which adds no information but costs more per warp (the loss warps ``2 B^2`` maps per
      batch, the network warps every code at each of its recurrent steps); 64x64 is the descriptor grid
      itself, so the keys lose nothing and every warp is 16x cheaper. The network's adaptive pools
      keep their official sizes (the first one takes the 58x58 left by the 7x7 convolution to 32x32).
      Smaller maps were measured and are worse: 32x32 (with a first pool of 26) scores 3.9 points less
      on the mean of CUB classes 1-3 (five seeds) and 1.0 less on classes 4-6 (three seeds), at 40 %
      of the time (about 35 against 88 s of one core per class; with two threads a class takes
      about 60 s).
    * ``ae_epochs`` 301 -> 68 and ``epochs`` 401 -> 90 (:meth:`scaled`): both phases, and every
      epoch-based schedule (curriculum switches, StepLR period, flip updates and their window), are
      cut by the same factor, 90/401, so the shape of training is kept. An earlier quick config
      pretrained the autoencoder for 30 epochs, when its reconstruction loss was still falling;
      measured on CUB with the same seeds on one machine
      (``benchmarks/records/issue15_sj_384_ae68_f.json`` against ``issue15_sj_384_rec3_f.json``),
      68 epochs score 57.6 against 55.7 on class 1 (eight seeds; standard deviation 2.9 against 4.2),
      60.1 against 58.5 on the mean of classes 1-3 (seeds 0-4) and 67.1 against 67.1 on classes 4-10
      (seeds 0-2), for about 13 s more of one core per class; on both cores of that machine a class
      took 48-56 s (``benchmarks/records/issue15_two_cores_f_384_ae68_seeds.json``; with the published
      ``ae_lr``, below).
    * ``stn_lr`` 2e-4 -> 1e-3: with 4.5x fewer Adam steps (each about ``lr`` long), 2e-4 x 401/90 =
      8.9e-4 keeps the path length of the published schedule; 1e-3 rounds it up.
    * ``ae_lr`` 1e-3 -> 4.4e-3: the same for the autoencoder's pretraining, which takes 301/68 = 4.4x
      fewer steps: 1e-3 x 301/68 keeps its path length. After 68 epochs its masked reconstruction
      loss is 0.191 / 0.199 / 0.162 on CUB classes 1 / 2 / 3 instead of 0.246 / 0.254 / 0.201 (and
      0.237 / 0.235 / 0.188 after 100 epochs at 1e-3). Measured on CUB with the same seeds on one
      machine (``benchmarks/records/issue15_sj_384_aelr_f.json`` against ``issue15_sj_384_ae68_f.json``):
      59.1 against 57.6 on class 1 (eight seeds, every one at or above nearest neighbours against six),
      61.8 against 60.1 on the mean of classes 1-3 (seeds 0-4) and 67.5 against 67.1 on classes 4-10
      (seeds 0-4, no class moving 2 points; ``issue15_sj_384_aelr_heldout34_f.json`` and
      ``issue15_sj_384_ae68_heldout34_f.json`` add seeds 3-4), at the same cost; on both cores of
      that machine a class takes 44-52.5 s, and every class run of seeds 0-4 is at or above nearest
      neighbours (``benchmarks/records/issue15_two_cores_f_384_aelr_seeds.json``). The joint phase's
      rate (``joint_ae_lr``) stays the published 1e-3: scaled by 401/90 as well, class 1 scored 59.5
      with one of its eight seeds below the baseline (``issue15_sj_384_aelr_joint_f.json``).
    * ``loss_size`` 0 -> 16: the IC loss compares the maps area-averaged to 16x16 (the STN still
      reads the 64x64 codes): 16x fewer samples per pair warp.
    * ``flip_init`` "none" -> "consensus": the images start in the mirror configuration that makes
      their keys' column profiles agree (:func:`congealing.features.consensus_flips`) instead of
      all as they are; the official history-based updates still run.
    * ``pca_fit`` "all" -> "foreground": the PCA is fitted (and its channels centred and
      standardised) on the co-segmented foreground only, so its 25 components describe the object
      rather than what separates it from the background, and the object's mean key is the
      background's value 0.
    * ``input_size`` 0 -> 384: the images are resized to 384 px before the backbone instead of its
      own side (256 for EfficientNet-Lite0), so its finest stage, of stride 8, gives 48 x 48
      descriptors instead of 32 x 32 before they are resampled to the 64 x 64 grid. The official
      code does the same for the same reason: it upsamples each 256-px image to 896 px so that
      DINOv2 ViT-L/14 gives 64 x 64 tokens. Measured on CUB (seeds 0-2, one machine): +10.1 points
      on the mean of classes 1-3 and +1.4 on classes 4-10, where nearest neighbours on the same
      384-px descriptors gain +3.2 and +1.1 (the baseline a SpaceJAM run is compared with is
      computed at its ``input_size``); 512 px fails on two class-1 seeds of three.
    * ``recurrences`` 5 -> 3: the network's shared step is applied three times instead of five.
      Each step runs the network on every code of the batch (and its mirror image), so the step is
      most of a joint epoch's time; three steps cost about 0.7 of five. Measured on CUB with the
      same seeds on one machine (``benchmarks/records/issue15_sj_384_rec3_f.json``): 58.5 against
      58.7 on the mean of classes 1-3 (seeds 0-4) and 67.1 against 67.2 on classes 4-10 (seeds
      0-2); on both cores of that 2-core machine a class took 40-50 s instead of 51-62 s (with 30
      autoencoder epochs, above).

    The loss follows the official code in both modes: ``atlas_flips`` (mean over each target's two
    flip configurations, min over the atlas's mirror) and ``decoded_padding`` (a source predicts
    ``Dec(0)`` outside its frame, as the official zero-padded code warp does). What each quick
    change does to the PCK, measured on CUB classes 1-6, is recorded in
    ``benchmarks/records/issue15_quick_cpu.json`` (``benchmarks/issue15_log.md``) and shown in
    Chapter 5, "Results on CUB" ("Where this leaves SpaceJAM in quick mode").

    Example:
        >>> cfg = SpaceJAMConfig.for_mode("quick")
        >>> cfg.map_size, cfg.ae_epochs, cfg.epochs, cfg.curriculum_epochs, cfg.stn_pools, cfg.input_size, cfg.recurrences
        (64, 68, 90, (23, 45), (32, 8), 384, 3)
        >>> cfg.stn_lr, cfg.ae_lr, cfg.joint_ae_lr
        (0.001, 0.0044, 0.001)
    """

    # keys
    pca_dim: int = 25
    map_size: int = 256
    descriptor_grid: int = 64
    input_size: int = 0  # the side images are resized to before the backbone (0: the backbone's own)
    pca_fit: str = "all"  # fit the PCA on "all" locations (official) or on the "foreground" only
    pca_standardise: bool = True  # z-score each descriptor channel where the PCA is fitted, before it (official)
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
    # curriculum: se(2) from epoch 0, aff(2) from 101, sl(3) from 201 (the groups of the stages, in order)
    curriculum_epochs: tuple = (101, 201)
    curriculum_groups: tuple = GROUPS
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
        to 68 + 90 epochs, with the listed changes."""
        return cls().scaled(
            ae_epochs=68, epochs=90, map_size=64, stn_lr=1e-3, ae_lr=4.4e-3, loss_size=16, flip_init="consensus",
            pca_fit="foreground", input_size=384, recurrences=3,
        )

    @property
    def backbone_input_size(self) -> int | None:
        """``input_size`` as :func:`congealing.features.extract_descriptors` takes it: None for 0 (the backbone's own side).

        >>> SpaceJAMConfig().backbone_input_size, SpaceJAMConfig.for_mode("quick").backbone_input_size
        (None, 384)
        """
        return self.input_size or None

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
        return self.curriculum_groups[sum(epoch >= e for e in self.curriculum_epochs)]

    def flip_update_at(self, epoch: int) -> bool:
        """Whether the flip configurations are re-chosen after (0-based) ``epoch``
        (official: epochs 60, 80, ..., 360 of 401)."""
        low, high = self.flip_range
        return self.flips and epoch > 0 and epoch % self.flip_every == 0 and low < epoch / self.epochs < high


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (Chapter 5 counts the autoencoder's and the STN's).

    Args:
        module: any module.

    Returns:
        the number of elements of its parameters that require gradients.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


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


class ChannelsLastAdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """:class:`torch.nn.AdaptiveMaxPool2d`, computed in channels-last memory layout; ``(B, C, H, W)`` in and out.

    The same maxima and the same gradients, bit for bit (a maximum is exact, ties go to the first
    cell in row-major order in either layout, and each cell's gradient is summed over its windows in
    the same order), in about half the time of PyTorch's CPU kernel in the default layout on the
    network's first pool (58 x 58 -> 32 x 32). Chapter 5, "Speed next to Neural Congealing".

    >>> x = torch.randn(2, 3, 58, 58)
    >>> torch.equal(ChannelsLastAdaptiveMaxPool2d(32)(x), nn.AdaptiveMaxPool2d(32)(x))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


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
            nn.Conv2d(config.low_dim, c1, k1), ChannelsLastAdaptiveMaxPool2d(p1), nn.ReLU(),
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
