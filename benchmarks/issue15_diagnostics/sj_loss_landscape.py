"""Does SpaceJAM's IC loss prefer the keypoints' alignment to the one SpaceJAM finds?

Usage: PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_loss_landscape.py CLASS SEED ["dict(overrides)"]

Trains the shipped quick config (plus overrides) on CUB class CLASS, then scores three sets of
per-image transforms (image -> common frame) with the IC loss of the keys themselves (no
autoencoder: ``ic_loss(keys, keys, T)`` at ``loss_size``, one configuration per image, outside = 0)
and with PCK@0.1:

* identity: every image as it is, in its consensus mirror configuration (the training's start);
* spacejam: the trained transforms;
* keypoints: similarities fitted to the CUB keypoints by generalised Procrustes
  (``evaluation.keypoint_similarities``, each image mirrored where that fits the reference better).

If the keypoint-fitted transforms have the higher loss, the loss on these keys prefers SpaceJAM's
alignment, and more optimisation cannot reach the keypoints' PCK.
"""
import sys

import torch
import torch.nn.functional as F

from congealing import data, features, spacejam, warps
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer, keypoint_similarities

if __name__ == "__main__":
    class_id, seed = int(sys.argv[1]), int(sys.argv[2])
    overrides = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
    cub = data.load_cub_class(class_id)
    backbone = features.load_backbone("efficientnet_lite0")
    config = spacejam.SpaceJAMConfig.for_mode("quick", seed=seed, **overrides)
    keys, masks = spacejam.prepare_keys(cub.images, backbone, config)
    N = len(cub)

    def ic_of(transforms):
        small = F.adaptive_avg_pool2d(keys, config.loss_size) if 0 < config.loss_size < keys.shape[-1] else keys
        loss, _ = spacejam.ic_loss(small, small, transforms[None], torch.zeros(N, dtype=torch.long), atlas_flips=False)
        return float(loss)

    def pck_of(transforms):
        return 100 * evaluate_transfer(transfer_via_transforms(transforms, 256), cub, alphas=(0.1,), n_boot=0)["pck"]["0.1"]["mean"]

    start = warps.hflip(features.consensus_flips(keys) if config.flip_init == "consensus" else torch.zeros(N, dtype=torch.bool))
    result = spacejam.train(keys, masks, config)
    rows = {"identity (start)": start, "spacejam": result.transforms.float()}
    rows["keypoints, similarity"] = keypoint_similarities(cub)
    print(f"class {class_id} seed {seed} overrides {overrides}")
    for name, T in rows.items():
        print(f"{name:40s} IC loss of the keys {ic_of(T):.4f}   PCK@0.1 {pck_of(T):5.1f}")

    def descend(transforms, group="affine", steps=200, lr=0.01):
        """Adam on per-image Lie parameters composed after ``transforms``, on the keys' IC loss: where
        does the loss lead from there (is the start a local minimum of it)?"""
        small = F.adaptive_avg_pool2d(keys, config.loss_size) if 0 < config.loss_size < keys.shape[-1] else keys
        xi = torch.zeros(N, 8, requires_grad=True)
        optimiser = torch.optim.Adam([xi], lr=lr)
        for _ in range(steps):
            T = warps.exp(warps.project(xi, group)) @ transforms
            loss, _ = spacejam.ic_loss(small, small, T[None], torch.zeros(N, dtype=torch.long), atlas_flips=False)
            optimiser.zero_grad(); loss.backward(); optimiser.step()
        return (warps.exp(warps.project(xi, group)) @ transforms).detach()

    for group in ("similarity", "affine"):
        for name in ("spacejam", "keypoints, similarity"):
            T = descend(rows[name], group)
            print(f"{name + ' + ' + group + ' descent':40s} IC loss of the keys {ic_of(T):.4f}   PCK@0.1 {pck_of(T):5.1f}")
