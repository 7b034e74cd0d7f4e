"""Does Neural Congealing's objective prefer the keypoints' alignment to the similarity it learns?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_loss_landscape.py 1 [--seed 0] [--set key=value ...] [--model /tmp/nc1.pt]

Trains the quick config as the sweep does (flips, gradual atlas, relaxed rigidity, box masks), then scores
per-image similarities (image -> a common frame, mirrored where the determinant is negative) by the terms of
Neural Congealing's objective that a similarity alone meets: the keys loss (L2 and cosine under atlas saliency
x inside), the saliency loss, the scale term, and the atlas's sparsity and centre terms, each with the config's
weight. The atlas is the one that best fits those warps in closed form (keys and saliency: the mean of the warped
keys and masks over the images that see each atlas pixel), so every set of similarities is scored against its
own best atlas, as training would make it. The common frame is placed in the atlas by a global similarity G,
searched over scales and shifts for each set (the objective depends on where the birds sit in the atlas, the
transfer does not). Rows:

* start: the consensus orientations, no warp;
* learned: the trained model's similarities (its flow switched off), in its own frame;
* keypoints: similarities fitted to the CUB keypoints (``evaluation.keypoint_similarities``);
* keypoints at the learned zoom: the same, placed with the global scale that gives the atlas the learned
  similarities' mean scale in the images (only the shift searched), so that the scale term is level;
* each after ``--steps`` (200) Adam steps of per-image similarity descent on this objective (is it a
  local minimum, and what does the descent do to PCK?), and the last two also after descent with the
  scale held (rotation and translation only, ``se2``). The objective rewards zooming into the middle of
  the birds, held back only by the scale term, so the free descents and searches end zoomed in.

``--model PATH`` keeps the trained model there (and reads it back on the next run with the same class and settings).
PCK@0.1 (box threshold) of every row comes from ``alignment.transfer_via_transforms``; the learned row must
reproduce the model's similarity-only PCK (printed beside it as a check).
"""
import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from congealing import data, evaluation, features, neural, warps
from congealing.alignment import transfer_via_transforms
from congealing.neural.losses import center_loss, keys_loss, keys_sparsity, saliency_loss, saliency_sparsity
from nc_run import quick_class_run

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=200, help="Adam steps of each descent")
parser.add_argument("--model", type=Path, default=None, help="where to keep the trained model (reused if it exists)")
args, overrides, cub, backbone, config = quick_class_run(parser)
size = tuple(cub.images.shape[-2:])
tic = time.process_time()
prepared = neural.prepare(cub.images, data.cub_box_masks(cub), backbone, config, "cpu")
if args.model is not None and args.model.exists():
    saved = torch.load(args.model, weights_only=True)
    assert saved["setting"] == [args.cls, args.seed, args.set], f"{args.model} holds another run: {saved['setting']}"
    model = neural.NeuralCongealing(config, prepared.keys.shape[1])
    model.load_state_dict(saved["state"])
    model.flow_active = True
    result = neural.TrainResult(model, prepared, saved["flipped"])
else:
    result = neural.train(prepared, config)
    if args.model is not None:
        torch.save({"setting": [args.cls, args.seed, args.set], "state": result.model.state_dict(), "flipped": result.flipped}, args.model)
train_cpu = time.process_time() - tic
N, A = len(prepared), config.atlas_size
w = config.weights()
FLIP = warps.hflip(True, 1)[0]
IDENT = warps.identity_grid((A, A), N)


def objective(T: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The similarity-only terms of the objective for image -> frame transforms ``T`` (N, 3, 3), the atlas
    placed by ``G`` (3, 3: atlas -> frame), each set against its closed-form best atlas."""
    flipped = torch.linalg.det(T[:, :2, :2]) < 0
    T_read = torch.where(flipped.view(-1, 1, 1), T @ FLIP, T)  # the mirrored image's coordinates -> frame
    M = torch.linalg.inv(T_read) @ G  # atlas -> image (as the model's T)
    grid = warps.transform_points(M, IDENT.reshape(N, -1, 2)).reshape_as(IDENT)
    _, _, keys, masks = prepared.view(flipped)
    inside = warps.warp_by_grid(torch.ones_like(masks), grid)
    warped_keys = warps.warp_by_grid(keys, grid, padding_mode="border")
    warped_masks = warps.warp_by_grid(masks, grid)
    seen = inside.sum(0).clamp_min(1e-6)
    atlas_keys = (inside * warped_keys).sum(0) / seen
    atlas_sal = ((inside * warped_masks).sum(0) / seen).clamp(1e-4, 1 - 1e-4)
    l2, cos = keys_loss(atlas_keys[None], warped_keys, atlas_sal[None] * inside)
    scale = torch.linalg.det(M[:, :2, :2]).abs().sqrt()
    terms = {
        "keys": w["keys_l2"] * l2 + w["keys_cos"] * cos,
        "saliency": w["saliency"] * saliency_loss(atlas_sal[None], warped_masks, inside, config.huber_delta),
        "scale": w["scale"] * (1.0 - scale).pow(2).mean(),
        "atlas": w["sparsity_saliency"] * saliency_sparsity(atlas_sal[0], config.l0_steepness)
        + w["sparsity_keys"] * keys_sparsity(atlas_keys, atlas_sal[0]) + w["center"] * center_loss(atlas_sal[0], inside.amax(dim=0)[0]),
    }
    return sum(terms.values()), terms


def placement(s: float, tx: float, ty: float) -> torch.Tensor:
    return torch.tensor([[s, 0.0, tx], [0.0, s, ty], [0.0, 0.0, 1.0]])


@torch.no_grad()
def best_placement(T: torch.Tensor) -> torch.Tensor:
    scales, shifts = [0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 2.0], [-0.2, -0.1, 0.0, 0.1, 0.2]
    return min((placement(s, tx, ty) for s, tx, ty in itertools.product(scales, shifts, shifts)), key=lambda G: float(objective(T, G)[0]))


def descend(T: torch.Tensor, G: torch.Tensor, steps: int = 200, group: str = "similarity", lr: float = 0.01) -> torch.Tensor:
    """Adam on per-image parameters of ``group`` composed in the frame after ``T``, on this objective."""
    xi = torch.zeros(N, 8, requires_grad=True)
    optimiser = torch.optim.Adam([xi], lr=lr)
    for _ in range(steps):
        loss, _ = objective(warps.exp(warps.project(xi, group)) @ T, G)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (warps.exp(warps.project(xi, group)) @ T).detach()


def mean_scale(M: torch.Tensor) -> float:
    return float(torch.linalg.det(M[:, :2, :2]).abs().sqrt().mean())


@torch.no_grad()
def shift_only_placement(T: torch.Tensor, scale: float) -> torch.Tensor:
    """The placement whose global scale gives atlas -> image maps of mean scale ``scale``, shift searched."""
    s = scale / mean_scale(torch.linalg.inv(T))
    shifts = [-0.2, -0.1, 0.0, 0.1, 0.2]
    return min((placement(s, s * tx, s * ty) for tx, ty in itertools.product(shifts, shifts)), key=lambda G: float(objective(T, G)[0]))


def pck(T: torch.Tensor) -> float:
    return 100 * evaluation.evaluate_transfer(transfer_via_transforms(T, size[0]), cub, alphas=(0.1,), n_boot=0)["pck"]["0.1"]["mean"]


# The learned similarities as image -> frame transforms: undo the model's T (atlas -> read image), then the mirror.
result.model.flow_active = False
outputs = result.outputs()
learned = torch.linalg.inv(outputs["T"].double()).float()
learned = torch.where(result.flipped.view(-1, 1, 1), learned @ FLIP, learned)
model_sim_pck = 100 * evaluation.evaluate_transfer(result.transfer(size, outputs), cub, alphas=(0.1,), n_boot=0)["pck"]["0.1"]["mean"]
start = warps.hflip(features.consensus_flips((prepared.keys * prepared.masks).cpu()))
rows = {"start (consensus orientations)": (start, None), "learned similarities (flow off)": (learned, torch.eye(3)),
        "keypoint similarities": (evaluation.keypoint_similarities(cub), None)}
print(f"class {args.cls} seed {args.seed} overrides {args.set}; training {train_cpu:.0f} CPU s; model's similarity-only PCK {model_sim_pck:.1f}")
placed = {}
for name, (T, G) in rows.items():
    G = best_placement(T) if G is None else G
    placed[name] = (T, G)
    with torch.no_grad():
        total, terms = objective(T, G)
    print(json.dumps({"row": name, "objective": round(float(total), 4), **{k: round(float(v), 4) for k, v in terms.items()},
                      "placement": [round(float(G[0, 0]), 2), round(float(G[0, 2]), 2), round(float(G[1, 2]), 2)], "pck": round(pck(T), 1)}), flush=True)
learned_zoom = mean_scale(outputs["T"])
T = placed["keypoint similarities"][0]
G = shift_only_placement(T, learned_zoom)
placed["keypoint similarities at the learned zoom"] = (T, G)
with torch.no_grad():
    total, terms = objective(T, G)
print(json.dumps({"row": "keypoint similarities at the learned zoom", "objective": round(float(total), 4), **{k: round(float(v), 4) for k, v in terms.items()},
                  "placement": [round(float(G[0, 0]), 3), round(float(G[0, 2]), 3), round(float(G[1, 2]), 3)], "learned_zoom": round(learned_zoom, 3)}), flush=True)
for name, group in [("start (consensus orientations)", "similarity"), ("learned similarities (flow off)", "similarity"), ("keypoint similarities", "similarity"),
                    ("learned similarities (flow off)", "se2"), ("keypoint similarities at the learned zoom", "se2")]:
    T, G = placed[name]
    moved = descend(T, G, steps=args.steps, group=group)
    with torch.no_grad():
        total, terms = objective(moved, G)
    print(json.dumps({"row": f"{name} + {group} descent", "objective": round(float(total), 4), **{k: round(float(v), 4) for k, v in terms.items()},
                      "pck": round(pck(moved), 1)}), flush=True)
