"""Where does the IC loss of a set of keys lead, without any network? A training-free screen of key designs.

Usage: PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_keys_screen.py CLASSES VARIANTS

For each CUB class and each key variant (below), with SpaceJAM's shipped quick config otherwise:
the keys' IC loss (``ic_loss(keys, keys, T)`` at ``loss_size``, one configuration per image) and
PCK@0.1 at (a) the start (identity in the consensus mirror configuration), (b) similarities fitted
to the CUB keypoints (``evaluation.keypoint_similarities``), and after 200 Adam steps of
per-image similarity parameters on that loss from each. A loss that suits keypoint transfer keeps
(b)'s PCK when descending from it and climbs towards it from (a).

Variants: ``default`` (co-segmentation masks, PCA on the foreground), ``pca_all`` (PCA on every
location), ``unmasked`` (no masks: every location is foreground), ``box`` (the ground-truth boxes
as masks, a diagnostic), ``unit`` (the default keys scaled to unit length per location).
"""
import sys

import torch
import torch.nn.functional as F

from congealing import data, features, spacejam, warps
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer, keypoint_similarities

classes = [int(c) for c in sys.argv[1].split(",")]
variants = sys.argv[2].split(",")
backbone = features.load_backbone("efficientnet_lite0")
base = spacejam.SpaceJAMConfig.for_mode("quick", seed=0)


def keys_of(cub, variant):
    descriptors = features.extract_descriptors(cub.images, backbone, grid=base.descriptor_grid)
    masks = features.cosegment(descriptors)
    if variant == "box":
        masks = data.cub_box_masks(cub)
    if variant == "unmasked":
        masks = torch.ones_like(masks)
    config = spacejam.SpaceJAMConfig.for_mode("quick", seed=0, pca_fit="all" if variant in ("pca_all", "unmasked") else base.pca_fit)
    keys, masks = spacejam.keys_from_descriptors(descriptors, masks, config)
    if variant == "unit":
        keys = keys / keys.norm(dim=1, keepdim=True).clamp_min(1e-6) * masks
    return keys


for class_id in classes:
    cub = data.load_cub_class(class_id)
    N = len(cub)
    for variant in variants:
        keys = keys_of(cub, variant)
        small = F.adaptive_avg_pool2d(keys, base.loss_size)
        zero = torch.zeros(N, dtype=torch.long)

        def ic(T):
            return spacejam.ic_loss(small, small, T[None], zero, atlas_flips=False)[0]

        def pck(T):
            return 100 * evaluate_transfer(transfer_via_transforms(T, 256), cub, alphas=(0.1,), n_boot=0)["pck"]["0.1"]["mean"]

        def descend(T0, steps=200, lr=0.01):
            xi = torch.zeros(N, 8, requires_grad=True)
            optimiser = torch.optim.Adam([xi], lr=lr)
            for _ in range(steps):
                loss = ic(warps.exp(warps.project(xi, "similarity")) @ T0)
                optimiser.zero_grad(); loss.backward(); optimiser.step()
            return (warps.exp(warps.project(xi, "similarity")) @ T0).detach()

        start = warps.hflip(features.consensus_flips(keys))
        fitted = keypoint_similarities(cub)
        cells = []
        for name, T in (("start", start), ("keypoints", fitted), ("start+descent", descend(start)), ("keypoints+descent", descend(fitted))):
            cells.append(f"{name} {float(ic(T)):.3f}/{pck(T):.1f}")
        print(f"class {class_id} {variant:9s} IC/PCK: " + "   ".join(cells), flush=True)
