"""Benchmark: SpaceJAM on one 30-image CUB class (descriptors cached, training included).

    python benchmarks/bench_spacejam.py --class 1 --mode quick --json out.json

Prints a table and (with ``--json``) writes the numbers: seconds to align (keys + AE pretraining +
joint training + inference; the backbone's descriptors are extracted once beforehand and cached,
as the target says), peak resident memory of the process, trainable parameters, and PCK@0.1/0.05
of SpaceJAM next to the nearest-neighbour baseline on the same descriptors (official CUB protocol:
all ordered pairs, keypoints visible in both images, threshold alpha x 256 px).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from congealing import data, features, runtime, spacejam
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import descriptor_transfer, evaluate_transfer

TARGET_SECONDS = {"quick": 60.0, "full": 30.0}  # quick: issue 15 (a 30-image class on 2 CPU cores, training included)


def pck(transfer, cub) -> dict:
    """PCK (%) with the book's protocol (:func:`congealing.evaluation.evaluate_transfer`): ``box@a`` = mean over
    pairs, threshold a x the target's box; ``image@a`` = pooled, a x 256 px (the papers' CUB number)."""
    result = evaluate_transfer(transfer, cub, alphas=(0.1, 0.05), n_boot=100)
    out = {}
    for a in ("0.1", "0.05"):
        out[f"box@{a}"] = round(100 * result["pck"][a]["mean"], 1)
        out[f"image@{a}"] = round(100 * result["pck_image"][a]["pooled"], 1)
    return out


def run(class_id: int, mode: str, device: str | None, seed: int) -> dict:
    cub = data.load_cub_class(class_id)
    device = runtime.get_device(device)
    backbone = features.load_backbone("efficientnet_lite0" if os.environ.get("CONGEAL_BACKBONE") is None else None, device=device)
    config = spacejam.SpaceJAMConfig.for_mode(mode, seed=seed)
    # the descriptors SpaceJAM reads, at its config's input side: cached (excluded), and the baseline's too
    descriptors = features.extract_descriptors(cub.images, backbone, grid=config.descriptor_grid, input_size=config.backbone_input_size)
    tic, cpu_tic = time.perf_counter(), time.process_time()
    keys, masks = spacejam.prepare_keys(cub.images, backbone, config)
    result = spacejam.train(keys, masks, config, device=device)
    seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu_tic
    size = cub.images.shape[-1]
    ours = pck(transfer_via_transforms(result.transforms, size), cub)
    nn = pck(descriptor_transfer(descriptors, size), cub)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_mb = max(peak_mb, torch.cuda.max_memory_allocated() / 2**20)
    return {
        "class": class_id, "class_name": cub.class_name, "images": len(cub), "mode": mode, "backbone": backbone.name,
        "device": str(device), "threads": torch.get_num_threads(), "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "seconds_ae": round(result.seconds["ae"], 1), "seconds_joint": round(result.seconds["joint"], 1),
        "target_seconds": TARGET_SECONDS[mode], "peak_rss_mb": round(peak_mb),
        "parameters": result.parameters, "flipped": int(result.flips.sum()),
        "spacejam_pck": ours, "nn_pck": nn,
        "masks": "co-segmentation" if hasattr(features, "cosegment") else "whole image",
        "config": config.plain(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--class", dest="class_id", type=int, default=1)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a machine shared with other jobs)")
    args = parser.parse_args(argv)
    mode = runtime.get_mode(args.mode)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args.class_id, mode, args.device, args.seed)
    verdict = "met" if r["seconds"] < r["target_seconds"] else "MISSED"
    print(f"SpaceJAM on CUB class {r['class']:03d} ({r['images']} images), {mode} mode, {r['backbone']}, {r['device']} ({r['threads']} threads), masks: {r['masks']}")
    o, n = r["spacejam_pck"], r["nn_pck"]
    print("seconds = wall clock; cpu = CPU time of this process (on a machine shared with other jobs, wall >> cpu / threads)")
    print("| seconds | cpu s | target | peak RSS MB | params | PCK@0.1 box (NN) | PCK@0.05 box (NN) | PCK@0.1 img (NN) | PCK@0.05 img (NN) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['target_seconds']:.0f} | {r['peak_rss_mb']} | {r['parameters']['total']} | "
          f"{o['box@0.1']} ({n['box@0.1']}) | {o['box@0.05']} ({n['box@0.05']}) | {o['image@0.1']} ({n['image@0.1']}) | {o['image@0.05']} ({n['image@0.05']}) |")
    print(f"time target {verdict}; PCK@0.1 {'at/above' if o['box@0.1'] >= n['box@0.1'] else 'BELOW'} the NN baseline")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(r, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
