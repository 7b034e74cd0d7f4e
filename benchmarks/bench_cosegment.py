"""Co-segmentation quality: how well :func:`congealing.features.cosegment` finds the object.

    python benchmarks/bench_cosegment.py [--classes 1-10] [--backbone efficientnet_lite0] [--vote-fraction 0.75] [--json out.json]

Two kinds of sets, each with a reference:

* **CUB** classes (test split, 256 px box crops, as every chapter uses them): the reference is the
  ground-truth box. A mask's *box IoU* is its IoU with the box region; a bird fills part of its box,
  so a good mask scores well below 1 (about 0.5-0.7), a mask of the background near 0, and a mask
  of the whole crop the box's share of the crop. *Inside* is the share of the mask within the box.
  An image *fails* when its box IoU is under 0.3.
* **A shared background** (the case of a real capture in one room): 16 lego views composited on
  one real texture (scikit-image's ``brick``, the same for every view), cropped to 4:3 and padded
  to squares as ``congeal align`` loads photos. The reference is lego's alpha channel (IoU).

Each set runs with three settings, so the table shows what each change buys: ``before`` (the
saliency :func:`congealing.features.commonness`, no border prior, padding included: the
co-segmentation of earlier versions), ``+ border prior`` (clusters found more on the photos'
borders than inside are background; for the lego set, whose photos are padded to squares, the
padding is left out), and ``default`` (also the saliency :func:`congealing.features.border_contrast`).
The CUB crops are given no ``valid`` area (as in the chapters' evaluations): measured with the
photo's extent inside each crop as ``valid``, the default scored worse (box IoU 0.514, 12 of 243
failures, against 0.538 and 7 without it), as the zero-filled strip where a crop runs past its
photo is itself a border cue. Descriptors: EfficientNet-Lite0 (offline; ``--backbone`` another),
64 x 64 grid, cached under ``$CONGEAL_CACHE``. ``--vote-fraction`` sets ``cosegment``'s
``vote_fraction`` for every setting; *recall* is the share of the box the mask covers.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from congealing import data, features


def box_masks(cub, grid: int) -> torch.Tensor:
    """The CUB boxes as masks ``(N, 1, grid, grid)``."""
    size = cub.images.shape[-1]
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * size / grid
    x0, y0, x1, y1 = cub.boxes.T[:, :, None, None]
    inside = (centres[None, None, :] >= x0) & (centres[None, None, :] <= x1) & (centres[None, :, None] >= y0) & (centres[None, :, None] <= y1)
    return inside[:, None].float()


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of binary masks ``(N, 1, h, w)``."""
    a, b = a > 0.5, b > 0.5
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)


def shared_background_scene(size: int = 256, views: int = 16):
    """Lego on one real texture, cropped to 4:3 and padded back to squares: images, alpha, valid."""
    from skimage import data as skdata

    scene = data.load_nerf_synthetic("lego", "train", size=size, views=list(range(0, 100, 100 // views))[:views])
    texture = torch.from_numpy(skdata.brick().astype(np.float32) / 255.0)[None, None]
    texture = F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False).expand(1, 3, size, size)
    composite = scene.masks * scene.images + (1 - scene.masks) * texture * torch.tensor([0.8, 0.6, 0.5])[:, None, None]
    top = size // 8  # a 4:3 landscape photo: rows top .. size - top
    images, masks, valid = torch.zeros_like(composite), torch.zeros_like(scene.masks), torch.zeros_like(scene.masks)
    images[:, :, top : size - top] = composite[:, :, top : size - top]
    masks[:, :, top : size - top] = scene.masks[:, :, top : size - top]
    valid[:, :, top : size - top] = 1.0
    return images, masks, valid


SETTINGS = ("before", "+ border prior", "default")


def _settings(name: str, descriptors: torch.Tensor, valid, vote_fraction: float) -> dict:
    if name == "default":
        settings = {"valid": valid}
    elif name == "before":
        settings = {"saliency": features.commonness(descriptors), "border_prior": False}
    else:
        settings = {"saliency": features.commonness(descriptors), "border_prior": True, "valid": valid}
    return dict(settings, vote_fraction=vote_fraction)


def run(classes, grid: int = 64, backbone_name: str = "efficientnet_lite0", vote_fraction: float = 0.75) -> dict:
    backbone = features.load_backbone(backbone_name)
    rows = {}
    for class_id in classes:
        cub = data.load_cub_class(class_id, "test", size=256)
        descriptors = features.extract_descriptors(cub.images, backbone, grid=grid)
        boxes = box_masks(cub, grid)
        for prior in SETTINGS:
            tic = time.perf_counter()
            masks = features.cosegment(descriptors, **_settings(prior, descriptors, None, vote_fraction))
            scores = iou(masks, boxes)
            overlap = ((masks > 0.5) & (boxes > 0.5)).flatten(1).sum(1)
            inside = overlap / (masks > 0.5).flatten(1).sum(1).clamp(min=1)
            recall = overlap / (boxes > 0.5).flatten(1).sum(1).clamp(min=1)
            rows[f"cub {class_id:03d}", prior] = {
                "images": len(cub), "box_iou": float(scores.mean()), "inside": float(inside.mean()), "recall": float(recall.mean()),
                "failures": int((scores < 0.3).sum()), "seconds": round(time.perf_counter() - tic, 2),
            }
    images, alpha, valid = shared_background_scene()
    descriptors = features.extract_descriptors(images, backbone, grid=grid)
    alpha_small = F.interpolate(alpha, size=(grid, grid), mode="area")
    valid_small = (F.interpolate(valid, size=(grid, grid), mode="area") > 0.5).float()
    for prior in SETTINGS:
        masks = features.cosegment(descriptors, **_settings(prior, descriptors, valid_small, vote_fraction))
        scores = iou(masks, alpha_small)
        rows["lego on a shared wall", prior] = {
            "images": images.shape[0], "alpha_iou": float(scores.mean()), "failures": int((scores < 0.3).sum()),
            "foreground_share": float((masks > 0.5).float().sum() / valid_small.sum()),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="1-10", help="CUB classes, e.g. 1-10 or 1,2,3")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--vote-fraction", type=float, default=0.75, help="cosegment's vote_fraction (its default 0.75)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if "-" in args.classes:
        low, high = map(int, args.classes.split("-"))
        classes = list(range(low, high + 1))
    else:
        classes = [int(c) for c in args.classes.split(",")]
    rows = run(classes, backbone_name=args.backbone, vote_fraction=args.vote_fraction)
    print(f"{args.backbone}, vote_fraction {args.vote_fraction:g}")
    print(f"{'set':24} {'settings':>15} {'IoU':>6} {'inside':>7} {'recall':>7} {'fail':>5}")
    for (name, prior), r in rows.items():
        score = r.get("box_iou", r.get("alpha_iou"))
        print(f"{name:24} {prior:>15} {score:6.3f} {r.get('inside', float('nan')):7.3f} {r.get('recall', float('nan')):7.3f} {r['failures']:>3}/{r['images']}")
    for prior in SETTINGS:
        cub = [r for (name, p), r in rows.items() if p == prior and name.startswith("cub")]
        print(f"{'CUB mean':24} {prior:>15} {np.mean([r['box_iou'] for r in cub]):6.3f} "
              f"{np.mean([r['inside'] for r in cub]):7.3f} {np.mean([r['recall'] for r in cub]):7.3f} "
              f"{sum(r['failures'] for r in cub):>3}/{sum(r['images'] for r in cub)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{"set": name, "settings": prior, **r} for (name, prior), r in rows.items()], handle, indent=2)


if __name__ == "__main__":
    main()
