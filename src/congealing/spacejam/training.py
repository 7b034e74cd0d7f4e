"""SpaceJAM's keys and training: the masked PCA keys (:func:`prepare_keys`), the joint loss of a
batch (:func:`joint_loss`), the two training phases (:func:`train`), the atlas pictures and the
common protocol's :func:`fit`. Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder",
"Reflections" and "Results on CUB"; the networks are in :mod:`congealing.spacejam.model`, the
inverse-compositional loss in :mod:`congealing.spacejam.losses`.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import checkpoints, features, warps
from ..alignment import Alignment, ReportViews
from ..losses import check_finite
from ..runtime import get_device
from .losses import atlas_loss, ic_loss
from .model import KeyAutoencoder, RecurrentLieSTN, SpaceJAMConfig, count_parameters

__all__ = [
    "DIVERGED_ADVICE", "prepare_keys", "keys_from_descriptors", "TrainResult", "infer", "pretrain_epoch", "joint_loss", "joint_epoch",
    "update_flips", "train", "atlas", "codes_to_rgb", "fit",
]

DIVERGED_ADVICE = "check the inputs for degenerate images (e.g. blank) and the config's learning rates"




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
    outside ``valid`` ``(N, 1, H, W)`` (the photos' own pixels) if given. The descriptors are those
    of the images resized to ``config.input_size`` px before the backbone (0: its own side), cached
    on disk by :func:`congealing.features.extract_descriptors`; the keys are made by
    :func:`keys_from_descriptors`. Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder".

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``, ``N >= 2``.
        backbone: the :class:`congealing.features.Backbone`.
        config: the config (``descriptor_grid``, ``input_size``, ``pca_dim``, ``pca_fit``, ``map_size``).
        masks: ``(N, 1, *, *)`` foreground in ``[0, 1]``, or None (co-segmentation).
        valid: ``(N, 1, H, W)`` the photos' own pixels, or None.

    Returns:
        keys ``(N, K, S, S)`` and masks ``(N, 1, S, S)`` (``K = config.pca_dim``, ``S = config.map_size``).

    Raises:
        ValueError: the images are not ``(N, 3, H, W)`` RGB with ``N >= 2``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"joint alignment needs at least 2 images, got {images.shape[0]}")
    descriptors = features.extract_descriptors(images, backbone, grid=config.descriptor_grid, input_size=config.backbone_input_size)
    if masks is None:
        small = None if valid is None else features.valid_on_grid(valid, descriptors.shape[-2:])
        masks = features.cosegment(descriptors, valid=small)
    return keys_from_descriptors(descriptors, masks.float(), config)


def keys_from_descriptors(descriptors: torch.Tensor, masks: torch.Tensor, config: SpaceJAMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors ``(N, D, h, w)`` and masks ``(N, 1, *, *)`` to keys ``(N, K, S, S)`` and masks ``(N, 1, S, S)``.

    PCA (``K = config.pca_dim`` components) is fitted on all locations of all images (background
    included, as the official code does; on the foreground only with ``config.pca_fit ==
    "foreground"`` when it has at least ``K`` locations), each descriptor channel first divided by
    its standard deviation over those locations (``config.pca_standardise``, the official code's
    z-score; the centring is the PCA's own), then the maps are resized to
    ``config.map_size``, multiplied by the masks (resized and thresholded at 0.5), and divided by one
    scalar, their standard deviation on the foreground. An image whose mask is empty keeps its whole
    image, with a warning. Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder".

    Args:
        descriptors: ``(N, D, h, w)``, e.g. from :func:`congealing.features.extract_descriptors`.
        masks: ``(N, 1, *, *)`` foreground in ``[0, 1]``, at any resolution.
        config: the :class:`SpaceJAMConfig` (``pca_dim``, ``pca_fit``, ``pca_standardise``, ``map_size``).

    Returns:
        keys ``(N, K, S, S)`` (zero on the background) and binary masks ``(N, 1, S, S)``,
        ``S = config.map_size``.

    Example:
        >>> import torch
        >>> from congealing.spacejam import SpaceJAMConfig, keys_from_descriptors
        >>> _ = torch.manual_seed(0)
        >>> keys, m = keys_from_descriptors(torch.randn(3, 40, 8, 8), torch.ones(3, 1, 8, 8), SpaceJAMConfig(map_size=16))
        >>> keys.shape, m.shape
        (torch.Size([3, 25, 16, 16]), torch.Size([3, 1, 16, 16]))
    """
    size = (config.map_size, config.map_size)
    fit_masks = None
    if config.pca_fit == "foreground":
        at_descriptors = F.interpolate(masks.float(), size=descriptors.shape[-2:], mode="bilinear", align_corners=False)
        fit_masks = features.foreground_locations(at_descriptors, config.pca_dim)
    descriptors = descriptors.float()
    if config.pca_standardise:
        # Every channel one unit of spread where the PCA is fitted (pca_project centres them): the
        # components then follow how channels co-vary, not which channels happen to vary most.
        descriptors = descriptors / features.channel_spread(descriptors, fit_masks)[:, None, None]
    maps, _, _ = features.pca_project(descriptors, config.pca_dim, fit_masks)
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
    """Evaluation-mode transforms of all images (Chapter 5, "Lie groups, the curriculum and the cascade").

    ``T_n = M_n R_n`` where ``R_n`` is the flip of image ``n``'s configuration and ``M_n`` the STN's
    output for the (possibly mirrored) codes after ``steps`` recurrent steps (``L``; default: all
    of them).

    Args:
        ae: the key autoencoder; stn: the alignment network.
        keys: ``(N, K, S, S)``.
        flips: ``(N,)`` bool, each image's flip configuration.
        group: the transformation group the network's output is projected onto.
        chunk: images per forward pass.
        steps: recurrent steps to run (None: all).

    Returns:
        ``T`` ``(N, 3, 3)`` image -> common frame, ``steps`` ``(N, L, 3, 3)`` the transform after each
        step, and the codes ``(N, 3, S, S)``.

    Example:
        >>> cfg = SpaceJAMConfig.for_mode("quick", map_size=16)
        >>> T, steps, codes = infer(KeyAutoencoder(cfg), RecurrentLieSTN(cfg), torch.randn(2, 25, 16, 16), torch.tensor([False, True]))
        >>> T.shape, steps.shape, codes.shape, torch.linalg.det(T[:, :2, :2]).sign().tolist()  # the zero-initialised STN: identity, mirrored for image 1
        (torch.Size([2, 3, 3]), torch.Size([2, 3, 3, 3]), torch.Size([2, 3, 16, 16]), [1.0, -1.0])
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
    """One epoch of autoencoder pretraining; returns the mean loss.

    The loss is the masked L2 reconstruction of the keys inside the masks, with every image also
    shown mirrored (as the official code does), over batches of ``order``; ``optimiser`` steps once
    per batch. Chapter 5, "The keys: masked PCA maps and a 3-channel autoencoder".

    Args:
        ae: the :class:`KeyAutoencoder` being pretrained.
        optimiser: its optimiser.
        keys: ``(N, K, S, S)``, the masked PCA keys.
        masks: ``(N, 1, S, S)``.
        order: ``(N,)``, a permutation of the images; batches are taken from it in turn.
        batch_size: images per batch (before mirroring).
        epoch: the epoch's number; it only names the place of a divergence.

    Returns:
        the mean reconstruction loss over the epoch's images, a float.

    Raises:
        FloatingPointError: a batch's loss is not finite.
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
    """The joint-training loss of one ``batch`` and its per-target errors (Chapter 5, "Reflections").

    The batch's keys are encoded; the network reads every code as it is and mirrored (``R = 2``
    rows of ``reflections``, or ``R = 1`` without flips) and predicts each configuration's transform;
    :func:`ic_loss` (or :func:`atlas_loss` when ``config.loss`` is not ``"ic"``, the ablation) compares
    the decoded keys carried between every pair with the targets' keys. ``config`` also chooses
    ``Dec(0)`` outside the frame (``decoded_padding``), mask-weighted errors
    (``mask_weighted_loss``), area-averaged comparison at ``loss_size`` and ``atlas_flips``.

    Args:
        ae: the :class:`KeyAutoencoder`.
        stn: the :class:`RecurrentLieSTN`.
        keys: ``(N, K, S, S)``, the masked PCA keys of the whole set.
        masks: ``(N, 1, S, S)``.
        batch: ``(B,)``, the indices of the batch's images.
        flips: ``(N,)`` bool, each image's configuration when it is a source.
        group: the transformation group the network's output is projected onto (the curriculum's).
        reflections: ``(R, N, 3, 3)``, identity and (with ``R = 2``) the horizontal flip of each image.
        config: the :class:`SpaceJAMConfig`.

    Returns:
        the loss, a 0-d tensor, and the per-target errors ``(B, R)`` detached.
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
    """One epoch of joint training over batches of ``order``; returns the mean loss.

    Every batch's :func:`joint_loss` updates the network and the autoencoder together (one Adam each,
    ``optimisers``); each image's per-configuration error is written to ``history`` (this epoch's row
    of the record :func:`update_flips` reads). Chapter 5, "Reflections".

    Args:
        ae: the :class:`KeyAutoencoder`.
        stn: the :class:`RecurrentLieSTN`.
        optimisers: the optimisers stepped after every batch (an iterable).
        keys: ``(N, K, S, S)``, the masked PCA keys.
        masks: ``(N, 1, S, S)``.
        order: ``(N,)``, a permutation of the images; batches of ``config.batch_size`` are taken from it.
        flips: ``(N,)`` bool, each image's configuration.
        group: the transformation group of the current curriculum stage.
        reflections: ``(R, N, 3, 3)``, see :func:`joint_loss`.
        history: ``(N, R)``, written in place with each image's per-configuration error.
        config: the :class:`SpaceJAMConfig`.
        epoch: the epoch's number; it only names the place of a divergence.

    Returns:
        the mean loss over the epoch's images, a float.

    Raises:
        FloatingPointError: a batch's loss is not finite.
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
    """Each image's flip configuration after ``epoch``: the one with the lower recent error.

    The errors of ``history`` are averaged over the last ``config.flip_window`` epochs up to and
    including ``epoch``; each image takes the configuration with the lower mean (ties: not flipped).
    Chapter 5, "Reflections".

    Args:
        history: ``(epochs, N, 2)``, each epoch's per-image error of the two configurations.
        epoch: the epoch just finished (an index into ``history``).
        config: the :class:`SpaceJAMConfig` (``flip_window``).

    Returns:
        ``(N,)`` bool, True where the image is read mirrored.

    Example:
        >>> import torch
        >>> from congealing.spacejam import SpaceJAMConfig, update_flips
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
    ``progress(done, total, note)`` is called after every epoch (autoencoder epochs first).
    Chapter 5: the autoencoder pretraining ("The keys: masked PCA maps and a 3-channel
    autoencoder"), then joint training ("Lie groups, the curriculum and the cascade", "Reflections").

    Args:
        keys: ``(N, K, S, S)`` (:func:`prepare_keys`); masks: ``(N, 1, S, S)``.
        config: the config (None: ``SpaceJAMConfig.for_mode()``).
        device: where to train (None: the CPU).
        checkpoint: the checkpoint file, or None; resume: continue from it if it exists.
        checkpoint_every: epochs between checkpoints.
        fingerprint: JSON-ready description of the inputs, stored in and checked against the checkpoint.
        progress: ``progress(done, total, note)``, or None.

    Returns:
        the :class:`TrainResult`: ``transforms`` ``(N, 3, 3)`` (image -> common frame, flips
        included), ``flips`` ``(N,)``, each recurrent step's transform, the transforms at the end of
        each curriculum stage, the codes, the losses, the seconds per phase and the networks.

    Raises:
        ValueError: the keys are not ``(N, config.pca_dim, S, S)`` or there are fewer than two images.
        CheckpointError: ``resume`` with a checkpoint made for another ``fingerprint``.
        FloatingPointError: a non-finite loss (naming the phase, epoch, step and loss).
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
    pixel (so the background does not darken it). Chapter 5, "Results on CUB", shows them; so does
    the ``congeal align`` report.

    Args:
        maps: ``(N, C, H, W)`` images or maps in each image's frame.
        transforms: ``(N, 3, 3)`` image -> common frame.
        masks: ``(N, 1, H, W)`` in ``[0, 1]``, or None (a plain mean).

    Returns:
        ``(C, H, W)``.

    Example:
        >>> atlas(torch.ones(2, 3, 4, 4), warps.identity(2)).shape
        torch.Size([3, 4, 4])
        >>> atlas(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]), warps.identity(2), torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2))[0, 0, 0].item()
        1.0
    """
    warped = warps.warp_image(maps.float(), transforms.float())
    if masks is None:
        return warped.mean(dim=0)
    weight = warps.warp_image(masks.float(), transforms.float())
    return (warped * weight).sum(dim=0) / weight.sum(dim=0).clamp_min(1e-6)


def codes_to_rgb(codes: torch.Tensor) -> torch.Tensor:
    """Low-dimensional keys as RGB: :func:`congealing.features.minmax_rgb` (one min-max over the
    whole set, so the same colour means the same code in every image). Chapter 5, "The keys: masked
    PCA maps and a 3-channel autoencoder", shows them; so does the ``congeal align`` report.

    Args:
        codes: ``(N, 3, S, S)``.

    Returns:
        ``(N, 3, S, S)`` in ``[0, 1]``.

    Example:
        >>> codes_to_rgb(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)).amin().item()
        0.0
    """
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
