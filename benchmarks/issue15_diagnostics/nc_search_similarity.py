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

from congealing import data, features, neural, warps
from congealing.evaluation import evaluate_transfer

cls = int(sys.argv[1]); rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
cub = data.load_cub_class(cls)
bb = features.load_backbone("efficientnet_lite0")
cfg = neural.NeuralCongealingConfig.for_mode("quick", seed=0, flips=True, gradual_atlas=True, relaxed_rigidity=True)
t0 = time.process_time()
d = neural.prepare(cub.images, data.cub_box_masks(cub), bb, cfg)
flipped = features.consensus_flips((d.keys * d.masks).cpu())
_, _, keys, masks = d.view(flipped)
N, size = keys.shape[0], keys.shape[-1]
keys = F.normalize(keys, dim=1)

# candidate similarities (atlas -> image), as neural.similarity_matrix parametrises them: (angle/pi in tanh, log scale, t)
scales = torch.tensor([0.7, 0.85, 1.0, 1.2, 1.4])
angles = torch.deg2rad(torch.tensor([-30., -15., 0., 15., 30.]))
shifts = torch.linspace(-0.3, 0.3, 5)
S, A, X, Y = (v.flatten() for v in torch.meshgrid(scales, angles, shifts, shifts, indexing="ij"))
M = neural.similarity_matrix(torch.stack([torch.atanh(A / torch.pi), S.log(), X, Y], dim=1))  # (625, 3, 3)
ident = warps.identity_grid((size, size), len(M))
grids = warps.transform_points(M, ident.reshape(len(M), -1, 2)).reshape_as(ident)


def warp_all(n):
    return (warps.warp_by_grid(keys[n:n + 1].expand(len(M), -1, -1, -1), grids),
            warps.warp_by_grid(masks[n:n + 1].expand(len(M), -1, -1, -1), grids))


# reference: the image closest to the mean keys (as the gradual atlas starts)
mean = (keys * masks).mean(0, keepdim=True)
ref = int(((keys * masks - mean) ** 2).flatten(1).sum(1).argmin())
atlas_k, atlas_m = keys[ref:ref + 1] * masks[ref:ref + 1], masks[ref:ref + 1]
choice = torch.zeros(N, dtype=torch.long)
for r in range(rounds):
    warped_k, warped_m = [], []
    for n in range(N):
        k, m = warp_all(n)
        # masked cosine between the warped keys and the atlas, over the atlas saliency, plus the masks' IoU
        sim = ((k * atlas_k).sum(1, keepdim=True) * atlas_m).flatten(1).sum(1) / atlas_m.sum().clamp_min(1e-6)
        iou = (m * atlas_m).flatten(1).sum(1) / (m + atlas_m - m * atlas_m).flatten(1).sum(1).clamp_min(1e-6)
        choice[n] = (sim + iou).argmax()
        warped_k.append(k[choice[n]]); warped_m.append(m[choice[n]])
    wk, wm = torch.stack(warped_k), torch.stack(warped_m)
    atlas_k = F.normalize((wk * wm).sum(0, keepdim=True), dim=1) * (wm.mean(0, keepdim=True) > 0.5)
    atlas_m = wm.mean(0, keepdim=True)
    print("round", r, "scales of the first 10 images", S[choice][:10].tolist(), flush=True)
cpu = time.process_time() - t0
found = M[choice]  # (N, 3, 3) atlas -> image
image_size = tuple(cub.images.shape[-2:])


def transfer(src, tgt, points):
    """Source pixels -> atlas (inverse similarity) -> target pixels, in the mirrored frame of a flipped image."""
    mirror = torch.tensor([-1.0, 1.0])
    u = warps.pixel_to_normalized(points.float(), image_size)[None]
    u = u * mirror if flipped[src] else u
    v = warps.transform_points(found[tgt:tgt + 1], warps.transform_points(neural.similarity_inverse(found[src:src + 1]), u))
    v = v * mirror if flipped[tgt] else v
    return warps.normalized_to_pixel(v[0], image_size)


transfer.flipped = flipped
pck = 100 * evaluate_transfer(transfer, cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"]
print(f"class {cls} search-similarity PCK {pck:.1f} cpu {cpu:.1f}s", flush=True)
