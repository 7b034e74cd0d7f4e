"""Neural Congealing's training: the training tensors of a set (:func:`prepare`), one weighted
objective per batch, the schedule (:func:`train`) and the common protocol's :func:`fit`. Chapter 4,
"Training"; the networks are in :mod:`congealing.neural.model`, the loss terms in
:mod:`congealing.neural.losses`.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoints, features, warps
from ..alignment import Alignment, ReportViews
from ..errors import CheckpointError
from ..features import PCAColours, extract_descriptors, foreground_locations, load_backbone, pca_project, saliency_masks
from ..losses import check_finite, masked_mean, rigidity_loss
from ..runtime import get_device
from .losses import center_loss, keys_loss, keys_sparsity, saliency_loss, saliency_sparsity
from .model import NeuralCongealing, NeuralCongealingConfig, similarity_inverse

__all__ = [
    "NeuralData", "prepare", "TrainResult", "per_image_keys_loss", "save_checkpoint",
    "gradual_atlas_per_update", "update_flips_and_atlas", "lr_factor", "train_epoch", "train", "fit",
]

# ----------------------------------------------------------------------------- data


@dataclass
class NeuralData:
    """The training tensors of one set (all on one device).

    ``images`` ``(N, 3, S, S)``, ``stn_images`` ``(N, C, s, s)`` (what the STNs read: RGB, or the
    keys with ``stn_reads="keys"``), ``keys`` ``(N, D, A, A)``,
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
    keys are *re-extracted*, not mirrored (features are not mirror-equivariant). With
    ``cfg.keys_pca_dim`` the keys are projected on the set's top principal components (one basis
    for both orientations, fitted on every location, or with ``cfg.keys_pca_fit="foreground"``
    inside the masks when they hold at least ``keys_pca_dim`` locations). With ``cfg.stn_reads="keys"`` the STNs' input ``stn_images`` is the keys
    themselves at ``cfg.stn_input_size``, divided by their standard deviation over the set (one
    number, so any backbone's keys reach the STNs at the same scale). Chapter 4, "The set, its keys
    and its masks".

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``, ``N >= 2``.
        masks: ``(N, 1, h, w)`` saliency masks in ``[0, 1]``.
        backbone: the :class:`congealing.features.Backbone` the keys come from.
        cfg: the config (sizes, ``flips``, ``keys_pca_dim``).
        device: where the tensors go (None: where they were made).

    Returns:
        the :class:`NeuralData`: ``images`` ``(N, 3, S, S)``, ``stn_images`` ``(N, C, s, s)``,
        ``keys`` ``(N, D, A, A)``, ``masks`` ``(N, 1, A, A)`` (and the mirrored ones with flips).

    Raises:
        ValueError: the images are not ``(N, 3, H, W)`` with ``N >= 2``, or the masks do not match them.
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
        return warps.resize(imgs, cfg.image_size), keys, warps.resize(msk.float(), cfg.atlas_size).clamp(0, 1)

    src, keys, msk = one(images, masks)
    flipped_src, flipped_keys, flipped_msk = one(images.flip(-1), masks.flip(-1)) if cfg.flips else (None, None, None)
    if cfg.keys_pca_dim:
        # One basis for both orientations, fitted on the original images' keys at every location
        # (or inside their masks only, where they hold enough locations).
        fit = foreground_locations(msk, cfg.keys_pca_dim) if cfg.keys_pca_fit == "foreground" else None
        keys, components, mean = pca_project(keys, cfg.keys_pca_dim, fit)
        if flipped_keys is not None:
            flipped_keys = torch.einsum("ndhw,kd->nkhw", flipped_keys - mean.view(1, -1, 1, 1), components).contiguous()
    scale = keys.std()  # with stn_reads="keys": one number for the set, so the STNs still see how strongly each location responds

    def stn_input(imgs, k):
        return warps.resize(k, cfg.stn_input_size) / scale if cfg.stn_reads == "keys" else warps.resize(imgs, cfg.stn_input_size)

    data = NeuralData(src, stn_input(images, keys), keys, msk)
    if cfg.flips:
        data.flipped_stn_images, data.flipped_images = stn_input(images.flip(-1), flipped_keys), flipped_src
        data.flipped_keys, data.flipped_masks = flipped_keys, flipped_msk
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


def _mappings(model, views, phase_flow) -> list[dict]:
    """:meth:`NeuralCongealing.mapping` of each view ``(stn_images, images, keys, masks)`` of one batch,
    in one pass through the STNs. The STNs treat every image alone (no batch statistics), so this is
    the per-view mapping; a batch of both orientations at once costs about 0.6 of two batches on 2
    CPU cores (`benchmarks/issue15_log.md`, twentieth session)."""
    if len(views) == 1:
        return [model.mapping(views[0][0], views[0][1], phase_flow)]
    both = model.mapping(torch.cat([v[0] for v in views]), torch.cat([v[1] for v in views]), phase_flow)
    parts = [dict() for _ in views]
    for name, value in both.items():
        for part, piece in zip(parts, [None] * len(views) if value is None else value.chunk(len(views))):
            part[name] = piece
    return parts


def _pass(model, view, out, idx, phase_flow, mapping_only, included, cfg) -> dict:
    """Every loss term of one batch in one orientation (unweighted), as a dict of scalars: ``view`` is
    the batch's ``(stn_images, images, keys, masks)`` in that orientation, ``out`` its mapping."""
    _, _, keys, masks = view
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
    """Each image's weighted L2 + cosine keys loss against the atlas, under the mask ``atlas
    saliency x inside``: the criterion for flips and the gradual atlas (Chapter 4, "Training"), and
    the per-image score of the ``congeal align`` report.

    Args:
        model: the trained (or training) model.
        data: the set's training tensors (:func:`prepare`).
        orientation: ``(N,)`` bool, the images to read mirrored.
        batch: images per forward pass.

    Returns:
        ``(N,)``, lower is better.
    """
    w = model.cfg.weights()
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


def lr_factor(epoch: int, cfg: NeuralCongealingConfig) -> float:
    """The learning rates' multiplier at ``epoch``: 1 through the bootstrap, then a half-cosine
    from 1 down to ``cfg.lr_final`` at the last epoch (1 throughout with the official constant
    rates, ``lr_final=1``). Chapter 4, "Training".

    >>> cfg = NeuralCongealingConfig(epochs=10, bootstrap_epochs=2, lr_final=0.1)
    >>> [round(lr_factor(e, cfg), 2) for e in (0, 2, 6, 9)]
    [1.0, 1.0, 0.45, 0.1]
    """
    span = cfg.epochs - 1 - cfg.bootstrap_epochs
    if epoch <= cfg.bootstrap_epochs or span <= 0:
        return 1.0
    progress = min(1.0, (epoch - cfg.bootstrap_epochs) / span)
    return cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def _base_lr(name, cfg):
    return cfg.lr_atlas if name == "atlas" else cfg.lr_stn


def _set_lr(optimizers, cfg, factor):
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = factor * _base_lr(name, cfg)


def _optimizers(model, cfg):
    params = {"rigid": model.rigid.parameters(), "flow": model.flow.parameters(), "atlas": [model.atlas_keys, model.atlas_logits]}
    return {name: torch.optim.Adam(p, lr=_base_lr(name, cfg)) for name, p in params.items()}


def save_checkpoint(path, model, optimizers, epoch, flipped, included, history, fingerprint: dict | None = None) -> None:
    """Save a training checkpoint: a plain dict of tensors and numbers, written atomically.

    The dict holds ``epoch``, ``config`` (the model's config as a dict), ``model`` (its state dict),
    ``optimizers`` (name -> state dict), ``flipped``, ``included`` (an empty bool tensor without
    the gradual atlas) and ``history``; it loads with ``torch.load(path, weights_only=True)``.
    :func:`congealing.checkpoints.save` writes it with the ``fingerprint`` of the inputs, so a
    resumed run can check it continues the same training. :func:`train` calls it; no chapter does.

    Args:
        path: the checkpoint file.
        model: the :class:`~congealing.neural.NeuralCongealing` being trained.
        optimizers: name -> ``torch.optim.Optimizer`` (``"rigid"``, ``"flow"``, ``"atlas"``).
        epoch: the epochs done.
        flipped: ``(N,)`` bool, each image's orientation.
        included: ``(N,)`` bool, the images in the gradual atlas, or None.
        history: the loss history (a list of dicts of numbers).
        fingerprint: what identifies the inputs (:mod:`congealing.checkpoints`), or None.

    Returns:
        None; the file is written at ``path``.
    """
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


def gradual_atlas_per_update(n_images: int, cfg: NeuralCongealingConfig) -> int:
    """How many images join the gradual atlas at each decision (Chapter 4, "Training").

    One per decision, as published (12 images: all in by epoch 1100 of 8000, just after the
    1000-epoch bootstrap); a short run adds as many per decision as it takes to include all
    ``n_images`` by ``cfg.gradual_atlas_until``: half the epochs, or the end of the bootstrap.

    >>> schedule = dict(epochs=420, bootstrap_epochs=84, update_every=42)
    >>> gradual_atlas_per_update(30, NeuralCongealingConfig(**schedule))
    6
    >>> gradual_atlas_per_update(30, NeuralCongealingConfig(**schedule, gradual_atlas_until="bootstrap"))
    15
    >>> gradual_atlas_per_update(12, NeuralCongealingConfig())
    1
    """
    horizon = cfg.epochs // 2 if cfg.gradual_atlas_until == "half" else cfg.bootstrap_epochs
    return max(1, math.ceil((n_images - 1) / max(1, horizon // cfg.update_every)))


def update_flips_and_atlas(model: NeuralCongealing, data: NeuralData, flipped: torch.Tensor, included: torch.Tensor | None,
                           per_update: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decisions taken every ``update_every`` epochs (Chapter 4, "Training").

    With flips, each image takes the orientation whose keys fit the atlas better
    (:func:`per_image_keys_loss` of both orientations); with the gradual atlas, the ``per_update``
    best-fitting images not yet included join the images that update the atlas.

    Args:
        model: the model being trained (``model.cfg.flips`` says whether to update flips).
        data: the set's training tensors (:func:`prepare`).
        flipped: ``(N,)`` bool, each image's current orientation.
        included: ``(N,)`` bool, the images already in the atlas, or None (no gradual atlas).
        per_update: how many images join the atlas at this update.

    Returns:
        the new ``flipped`` ``(N,)`` and ``included`` ``(N,)`` (or None without the gradual atlas).
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
    """One epoch over the images in ``order`` (Chapter 4, "Training").

    Each batch of ``cfg.batch_size`` sums the weighted terms of :func:`_pass` in each image's current
    orientation and, with flips, in the other orientation against a frozen atlas (so both
    orientations learn to map). The rigid STN and the atlas always step; the flow STN once
    ``model.flow_active``.

    Args:
        model: the model being trained.
        data: the set's training tensors (:func:`prepare`).
        optimizers: ``{"rigid", "flow", "atlas"}`` -> ``torch.optim.Optimizer``.
        order: ``(N,)``, the images' order this epoch (a permutation).
        flipped: ``(N,)`` bool, each image's orientation.
        included: ``(N,)`` bool, the images that update the atlas, or None (all).
        epoch: the epoch's number, for the divergence message.
        step: the steps taken before this epoch.

    Returns:
        the epoch's mean of every loss term (unweighted; ``*_mirror`` for the other orientation) and of
        the weighted ``"total"``, as floats, and the step count after this epoch.

    Raises:
        FloatingPointError: a batch's total loss is not finite (the message names the epoch, the step
            and every term).
    """
    cfg, weights, device, N = model.cfg, model.cfg.weights(), data.keys.device, len(data)
    sums: dict[str, float] = {}
    for b in range(0, N, cfg.batch_size):
        idx = order[b : b + cfg.batch_size].to(device)
        views = [data.view_at(idx, flipped.to(device))] + ([data.view_at(idx, (~flipped).to(device))] if cfg.flips else [])
        outs = _mappings(model, views, model.flow_active)  # both orientations through the STNs at once
        terms = _pass(model, views[0], outs[0], idx, model.flow_active, False, included, cfg)
        total = _total(terms, weights)
        if cfg.flips:
            other = _pass(model, views[1], outs[1], idx, model.flow_active, True, None, cfg)
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
    model)`` runs every ``callback_every`` epochs (and after the last). Chapter 4, "Training".

    Args:
        data: the set's training tensors (:func:`prepare`, with the same ``cfg``).
        cfg: the config (schedule, weights, flips, gradual atlas, seed).
        checkpoint: the checkpoint file, or None.
        resume: continue from ``checkpoint`` if it exists.
        callback: ``callback(epoch, model)``; callback_every: its period in epochs (0: only after the last).
        log: ``log(line)`` about ten times per run, or None.
        fingerprint: JSON-ready description of the inputs, stored in and checked against the checkpoint.

    Returns:
        the :class:`TrainResult`: the model, the data, each image's orientation ``flipped`` ``(N,)``,
        one history dict per epoch (every loss term's epoch mean and ``"total"``) and the seconds.

    Raises:
        ValueError: fewer than two images, or ``cfg.flips`` without mirrored data.
        CheckpointError: ``resume`` with a checkpoint of other inputs or settings.
        FloatingPointError: a non-finite loss (naming the epoch, step and every loss term).
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
    per_update = gradual_atlas_per_update(N, cfg)
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
            optimizers["flow"] = torch.optim.Adam(model.flow.parameters(), lr=_base_lr("flow", cfg))
        _set_lr(optimizers, cfg, lr_factor(epoch, cfg))
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
