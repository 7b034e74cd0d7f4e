"""Which images SpaceJAM fails on: class C, seed S, the shipped quick config (plus overrides).

    PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_per_image.py C S ["dict(overrides)"]

Prints each image's PCK@0.1 (``evaluation.pck_per_image``: mean over the ordered pairs it is in) for
SpaceJAM after each curriculum stage and for nearest neighbours, its co-segmented mask fraction, the
learned scale (sqrt |det| of the linear part) and whether its mirror choice agrees with the majority of
the birds' facing (beak and tail keypoints; "?" where either is hidden).
"""
import sys
import time
from dataclasses import replace

import torch

from congealing import data, features, spacejam
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import nn_transfer, pck_per_image

c, seed = int(sys.argv[1]), int(sys.argv[2])
overrides = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
cub = data.load_cub_class(c)
backbone = features.load_backbone("efficientnet_lite0")
config = replace(spacejam.SpaceJAMConfig.for_mode("quick", seed=seed), **overrides)
keys, masks = spacejam.prepare_keys(cub.images, backbone, config)
tic = time.process_time()
result = spacejam.train(keys, masks, config)
print(f"class {c} seed {seed} {overrides}: {time.process_time() - tic:.0f} CPU s")
size = cub.images.shape[-1]
stages = {group: 100 * pck_per_image(transfer_via_transforms(T, size), cub) for group, T in result.stages.items()}
final = 100 * pck_per_image(transfer_via_transforms(result.transforms, size), cub)
nn = 100 * pck_per_image(nn_transfer(cub, backbone), cub)
beak, tail = cub.part_names.index("beak"), cub.part_names.index("tail")
seen = cub.visible[:, beak] & cub.visible[:, tail]
facing = torch.sign(cub.keypoints[:, beak, 0] - cub.keypoints[:, tail, 0]) * torch.sign(torch.linalg.det(result.transforms[:, :2, :2]))
majority = facing[seen].sum().sign()
scale = torch.linalg.det(result.transforms[:, :2, :2]).abs().sqrt()
print("image  mask  scale  facing  " + "  ".join(f"{g:>10s}" for g in stages) + "  final    NN")
for i in range(len(cub)):
    agree = "?" if not seen[i] else ("ok" if facing[i] == majority else "other")
    print(f"{i:5d}  {masks[i].mean():.2f}  {scale[i]:5.2f}  {agree:>6s}  " + "  ".join(f"{s[i]:10.1f}" for s in stages.values()) + f"  {final[i]:5.1f}  {nn[i]:5.1f}")
print(f"mean of per-image PCK: SpaceJAM {final.nanmean():.1f}, NN {nn.nanmean():.1f}")
