"""Does the coarse comparison make SpaceJAM's IC loss prefer its own alignment to the keypoints'?

Usage: PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_loss_resolution.py CLASS SEED [INPUT_SIZE]

Trains the shipped quick config on CUB class CLASS, then scores three fixed sets of transforms (the
start, SpaceJAM's, similarities fitted to the keypoints) with the IC loss of the keys themselves, as
`sj_loss_landscape.py` does, with the maps area-averaged to 8, 16 (the quick loss's size), 32 and 64
(the keys' own size) before the comparison. INPUT_SIZE: the side the images are resized to before
the backbone (default: the quick config's `input_size`, 384; 256 is EfficientNet-Lite0's own).
"""
import sys, torch, torch.nn.functional as F
from congealing import data, features, spacejam, warps
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer, keypoint_similarities
c, seed = int(sys.argv[1]), int(sys.argv[2])
cub = data.load_cub_class(c); bb = features.load_backbone("efficientnet_lite0")
cfg = spacejam.SpaceJAMConfig.for_mode("quick", seed=seed, **({"input_size": int(sys.argv[3])} if len(sys.argv) > 3 else {}))
keys, masks = spacejam.prepare_keys(cub.images, bb, cfg); N = len(cub)
def ic_of(T, size):
    small = F.adaptive_avg_pool2d(keys, size) if size < keys.shape[-1] else keys
    loss, _ = spacejam.ic_loss(small, small, T[None], torch.zeros(N, dtype=torch.long), atlas_flips=False)
    return float(loss)
def pck_of(T):
    return 100 * evaluate_transfer(transfer_via_transforms(T, 256), cub, alphas=(0.1,), n_boot=0)["pck"]["0.1"]["mean"]
start = warps.hflip(features.consensus_flips(keys))
res = spacejam.train(keys, masks, cfg)
rows = {"start": start, "spacejam": res.transforms.float(), "keypoints": keypoint_similarities(cub)}
for name, T in rows.items():
    print(f"class {c} input {cfg.input_size or bb.spec.input_size} {name:10s} PCK {pck_of(T):5.1f} " + " ".join(f"L{s}={ic_of(T, s):.4f}" for s in (8, 16, 32, 64)), flush=True)
