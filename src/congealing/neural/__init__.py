"""Neural Congealing (Ofri-Amar, Geyer, Kasten, Dekel, CVPR 2023) in plain PyTorch, CPU or GPU.

The idea: an image set is summarised by an **atlas**, a learnable grid of descriptor "keys"
``(D, A, A)`` plus a saliency map ``(A, A)``, and every image gets a mapping into it. The mapping is
two spatial transformer networks (STNs) that read the RGB image (quick mode: the image's keys,
``stn_reads``): a **rigid** one predicting a similarity ``(theta, s, t)`` and a **non-rigid** one
predicting a coarse flow that is convexly upsampled to the atlas resolution. Their composition is
one sampling grid ``G_n`` ``(A, A, 2)`` that reads image ``n`` (its RGB, its keys, its saliency)
at every atlas pixel. Atlas and mappings are trained jointly, so the atlas converges to the mode of
the set in feature space.

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

from .model import (
    NeuralCongealingConfig,
    EqualConv,
    ResBlock,
    RigidSTN,
    similarity_matrix,
    similarity_inverse,
    convex_upsample,
    FlowSTN,
    NeuralCongealing,
)
from .losses import keys_loss, saliency_loss, l0_approx, saliency_sparsity, keys_sparsity, center_loss
from .training import (
    NeuralData,
    prepare,
    TrainResult,
    per_image_keys_loss,
    save_checkpoint,
    gradual_atlas_per_update,
    update_flips_and_atlas,
    lr_factor,
    train_epoch,
    train,
    fit,
)

__all__ = [
    "NeuralCongealingConfig", "keys_loss", "saliency_loss", "l0_approx", "saliency_sparsity",
    "keys_sparsity", "center_loss", "EqualConv", "ResBlock", "RigidSTN", "similarity_matrix",
    "similarity_inverse", "convex_upsample", "FlowSTN", "NeuralCongealing", "NeuralData", "prepare",
    "TrainResult", "per_image_keys_loss", "save_checkpoint", "gradual_atlas_per_update", "update_flips_and_atlas", "lr_factor", "train_epoch",
    "train", "fit",
]
