"""Can a search find the similarity that Neural Congealing's rigid bootstrap does not?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_search_similarity.py CLASS [ROUNDS=3]

Classical congealing by exhaustive search on Neural Congealing's quick keys (top-32 principal components,
32x32, box masks, consensus flips): every image takes the best of 625 similarities (scales 0.7-1.4, angles
+-30 degrees, shifts +-0.3) by masked cosine to an atlas plus mask IoU; the atlas starts as the image nearest
the mean keys and becomes the mean of the aligned keys after each round. Prints PCK@0.1 (box threshold) of
keypoint transfer through those similarities alone.
"""
import sys
import time

import torch
import torch.nn.functional as F

from congealing import data, features, neural
from congealing.evaluation import evaluate_transfer

cls = int(sys.argv[1]); rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
cub = data.load_cub_class(cls)
bb = features.load_backbone("efficientnet_lite0")
cfg = neural.NeuralCongealingConfig.for_mode("quick", seed=0, flips=True, gradual_atlas=True, relaxed_rigidity=True)
t0 = time.process_time()
d = neural.prepare(cub.images, data.cub_box_masks(cub), bb, cfg)
flipped = features.consensus_flips((d.keys * d.masks).cpu())
_, _, keys, masks = d.view(flipped)
N = keys.shape[0]
keys = F.normalize(keys, dim=1)

# candidate similarities: atlas coords u -> image coords s R u + t
scales = torch.tensor([0.7, 0.85, 1.0, 1.2, 1.4])
angles = torch.deg2rad(torch.tensor([-30., -15., 0., 15., 30.]))
shifts = torch.linspace(-0.3, 0.3, 5)
S, A, X, Y = torch.meshgrid(scales, angles, shifts, shifts, indexing="ij")
S, A, X, Y = S.flatten(), A.flatten(), X.flatten(), Y.flatten()
M = torch.zeros(len(S), 2, 3)
M[:, 0, 0] = S * torch.cos(A); M[:, 0, 1] = -S * torch.sin(A); M[:, 1, 0] = S * torch.sin(A); M[:, 1, 1] = S * torch.cos(A)
M[:, 0, 2] = X; M[:, 1, 2] = Y
size = keys.shape[-1]
grids = F.affine_grid(M, (len(S), 1, size, size), align_corners=False)

def warp_all(n):
    k = F.grid_sample(keys[n:n+1].expand(len(S), -1, -1, -1), grids, align_corners=False, padding_mode="zeros")
    m = F.grid_sample(masks[n:n+1].expand(len(S), -1, -1, -1), grids, align_corners=False, padding_mode="zeros")
    return k, m

# reference: the image closest to the mean keys (as the gradual atlas starts)
mean = (keys * masks).mean(0, keepdim=True)
ref = int(((keys * masks - mean) ** 2).flatten(1).sum(1).argmin())
atlas_k, atlas_m = keys[ref:ref+1] * masks[ref:ref+1], masks[ref:ref+1]
choice = torch.full((N,), int(((S == 1) & (A == 0) & (X == 0) & (Y == 0)).nonzero()))
for r in range(rounds):
    warped_k, warped_m = [], []
    for n in range(N):
        k, m = warp_all(n)
        # masked cosine between the warped keys and the atlas, over the atlas saliency; penalise mask disagreement
        sim = ((k * atlas_k).sum(1, keepdim=True) * atlas_m).flatten(1).sum(1) / atlas_m.sum().clamp_min(1e-6)
        iou = (m * atlas_m).flatten(1).sum(1) / (m + atlas_m - m * atlas_m).flatten(1).sum(1).clamp_min(1e-6)
        score = sim + iou
        choice[n] = score.argmax()
        warped_k.append(k[choice[n]]); warped_m.append(m[choice[n]])
    wk, wm = torch.stack(warped_k), torch.stack(warped_m)
    atlas_k = F.normalize((wk * wm).sum(0, keepdim=True), dim=1) * (wm.mean(0, keepdim=True) > 0.5)
    atlas_m = wm.mean(0, keepdim=True)
    print("round", r, "scales", S[choice].tolist()[:10], flush=True)
cpu = time.process_time() - t0
Ms = M[choice]  # (N, 2, 3)
img = cub.images.shape[-1]

def to_norm(p): return (2 * p + 1) / img - 1
def to_pix(u): return ((u + 1) * img - 1) / 2

def transfer(src, tgt, points):
    p = points.float().clone()
    if flipped[src]: p[:, 0] = img - 1 - p[:, 0]
    u = to_norm(p)
    L, t = Ms[src, :, :2], Ms[src, :, 2]
    a = torch.linalg.solve(L, (u - t).T).T  # atlas coords
    v = a @ Ms[tgt, :, :2].T + Ms[tgt, :, 2]
    q = to_pix(v)
    if flipped[tgt]: q[:, 0] = img - 1 - q[:, 0]
    return q
transfer.flipped = flipped
pck = 100 * evaluate_transfer(transfer, cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"]
print(f"class {cls} search-similarity PCK {pck:.1f} cpu {cpu:.1f}s", flush=True)
