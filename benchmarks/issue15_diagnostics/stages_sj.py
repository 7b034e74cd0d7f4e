"""Class c, seed s, shipped quick SpaceJAM (optionally overrides): loss trajectory, per-stage PCK, scales."""
import sys, time, torch
from dataclasses import replace
from congealing import data, features, spacejam
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer
c, seed = int(sys.argv[1]), int(sys.argv[2]); over = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
cub = data.load_cub_class(c)
bb = features.load_backbone("efficientnet_lite0")
cfg = replace(spacejam.SpaceJAMConfig.for_mode("quick", seed=seed), **over)
keys, masks = spacejam.prepare_keys(cub.images, bb, cfg)
t = time.process_time()
r = spacejam.train(keys, masks, cfg)
print("cpu", round(time.process_time() - t, 1))
pck = lambda T: round(100 * evaluate_transfer(transfer_via_transforms(T, 256), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1)
print("losses", [round(l, 4) for l in r.losses[::5]], round(r.losses[-1], 4))
for g, T in r.stages.items():
    print("stage", g, "pck", pck(T), "scale", [round(float(v), 2) for v in torch.linalg.det(T[:, :2, :2]).abs().sqrt()])
print("final pck", pck(r.transforms))
print("scale", sorted(round(float(v), 2) for v in torch.linalg.det(r.transforms[:, :2, :2]).abs().sqrt()))
print("trans", sorted(round(float(v), 2) for v in r.transforms[:, :2, 2].norm(dim=1)))
print("persp", sorted(round(float(v), 3) for v in r.transforms[:, 2, :2].norm(dim=1)))
print("mask frac", [round(float(m), 2) for m in masks.mean(dim=(1, 2, 3))])
