"""Does SpaceJAM's IC loss prefer the keypoints' alignment to the one SpaceJAM finds?

Usage: PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_loss_landscape.py CLASS SEED ["dict(overrides)"]

Trains the shipped quick config (plus overrides) on CUB class CLASS, then scores three sets of
per-image transforms (image -> common frame) with the IC loss of the keys themselves (no
autoencoder: ``ic_loss(keys, keys, T)`` at ``loss_size``, one configuration per image, outside = 0)
and with PCK@0.1:

* identity: every image as it is, in its consensus mirror configuration (the training's start);
* spacejam: the trained transforms;
* keypoints (similarity / affine): fitted to the CUB keypoints by generalised Procrustes, each
  image mirrored (with its left/right part names swapped) where that fits the reference better.

If the keypoint-fitted transforms have the higher loss, the loss on these keys prefers SpaceJAM's
alignment, and more optimisation cannot reach the keypoints' PCK.
"""
import sys

import torch
import torch.nn.functional as F

from congealing import data, features, spacejam, warps
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import CUB_MIRROR, evaluate_transfer

def fit_linear(src, dst, weight, kind):
    """The (3, 3) similarity or affine map taking points src (K, 2) to dst (K, 2), least squares over weight > 0."""
    w = weight.double()
    if kind == "affine":
        A = torch.cat([src, torch.ones(len(src), 1, dtype=src.dtype)], 1) * w[:, None].sqrt()
        X = torch.linalg.lstsq(A, dst * w[:, None].sqrt()).solution  # (3, 2)
        return torch.cat([X.T, torch.tensor([[0.0, 0.0, 1.0]], dtype=src.dtype)])
    mu_s, mu_d = (w[:, None] * src).sum(0) / w.sum(), (w[:, None] * dst).sum(0) / w.sum()
    s, d = src - mu_s, dst - mu_d
    cov = (w[:, None, None] * d[:, :, None] * s[:, None, :]).sum(0)
    U, S, Vh = torch.linalg.svd(cov)
    sign = torch.ones(2, dtype=src.dtype)
    sign[1] = torch.sign(torch.det(U @ Vh))
    R = U @ torch.diag(sign) @ Vh
    scale = (S * sign).sum() / (w * (s ** 2).sum(1)).sum()
    t = mu_d - scale * R @ mu_s
    T = torch.eye(3, dtype=src.dtype)
    T[:2, :2], T[:2, 2] = scale * R, t
    return T


def keypoint_transforms(cub, kind, iterations=10):
    """Per-image transforms (N, 3, 3) fitted to the keypoints (generalised Procrustes, mirrors chosen per image)."""
    N = len(cub)
    points = warps.pixel_to_normalized(cub.keypoints.double()[..., :2], (256, 256))
    visible = (cub.visible > 0).double()
    mirror = torch.tensor(CUB_MIRROR)
    F_ = warps.hflip(True, 1, torch.float64)[0]
    mirrored_points = (points * torch.tensor([-1.0, 1.0], dtype=torch.float64))[:, mirror.argsort()]
    mirrored_visible = visible[:, mirror.argsort()]
    reference = points[0].clone()
    ref_visible = visible[0].clone()
    for _ in range(iterations):
        transforms, aligned, weights = [], [], []
        for n in range(N):
            best = None
            for flip in (False, True):
                p, v = (mirrored_points[n], mirrored_visible[n]) if flip else (points[n], visible[n])
                w = v * (ref_visible > 0)
                if w.sum() < 3:
                    continue
                S = fit_linear(p, reference, w, kind)
                moved = warps.transform_points(S[None], p[None])[0]
                residual = float((w * ((moved - reference) ** 2).sum(1)).sum() / w.sum())
                if best is None or residual < best[0]:
                    best = (residual, S @ F_ if flip else S, moved, v)
            transforms.append(best[1]); aligned.append(best[2]); weights.append(best[3])
        aligned, weights = torch.stack(aligned), torch.stack(weights)
        reference = (weights[..., None] * aligned).sum(0) / weights.sum(0).clamp_min(1)[:, None]
        ref_visible = (weights.sum(0) > 0).double()
        reference = (reference - (ref_visible[:, None] * reference).sum(0) / ref_visible.sum()) * ref_visible[:, None]
        reference = reference / reference.norm() * 2.0  # a fixed size, so Procrustes cannot shrink it
    return torch.stack(transforms).float()


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
    rows.update({f"keypoints, {kind}": keypoint_transforms(cub, kind) for kind in ("similarity", "affine")})
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
