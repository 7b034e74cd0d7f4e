"""Benchmark: seconds per stage of 3-D congealing on NeRF-synthetic lego.

    python benchmarks/bench_congeal3d.py --mode quick --inputs 16 --json out.json

Stages as in the paper's timing (about 1 h shape, 15 min pose search, 45 min refinement and maps per
scene on an A5000, with the diffusion prior): here the shape is the offline route (a voxel field
fitted to 8 anchor views), then the 768 candidate renders, the search, the IoU refinement and the
coordinate maps. Prints a table and (with ``--json``) writes the numbers with the peak resident memory.

    python benchmarks/bench_congeal3d.py --capture --mode quick --inputs 16

``--capture``: the capture-like lego instead (:func:`congealing.lego.evaluate_capture`: brick
wall, portrait crops, close-ups, front arc), posed once with the true masks and once with the
co-segmentation masks a user without masks gets; frame-free camera errors and seconds of each.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from congealing import congeal3d, features, lego, runtime

PAPER_SECONDS = {"shape": 3600, "pose_search": 900, "refinement + mappings": 2700}


def run(mode: str, inputs: int | None, seed: int) -> dict:
    config = congeal3d.Congeal3DConfig.for_mode(mode, seed=seed)
    backbone = features.load_backbone()
    bench = lego.load_lego_benchmark(config, inputs=inputs, seed=seed)
    seconds = {}
    tic = time.perf_counter()
    field = congeal3d.fit_shape(bench.anchor_images, bench.anchor_masks, bench.anchor_c2w, bench.fov, config)
    seconds["shape"] = time.perf_counter() - tic
    tic = time.perf_counter()
    candidates = congeal3d.render_candidates(field, config)
    seconds["candidate_renders"] = time.perf_counter() - tic
    alignment = congeal3d.fit(bench.varied, config, masks=bench.masks, backbone=backbone, shape=field, candidates=candidates)
    seconds.update(alignment.state["seconds"])
    errors = congeal3d.pose_errors(alignment.state["c2w"], bench.c2w)
    return {
        "mode": mode, "inputs": len(bench), "image_size": config.image_size, "backbone": backbone.name,
        "threads": torch.get_num_threads(), "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rotation_error_mean": round(errors["rotation_mean"], 2), "rotation_error_median": round(errors["rotation_median"], 2),
        "paper_seconds_a5000": PAPER_SECONDS,
    }


def run_capture(mode: str, inputs: int | None, seed: int) -> dict:
    config = congeal3d.Congeal3DConfig.for_mode(mode, seed=seed)
    backbone = features.load_backbone()
    bench = lego.make_capture_benchmark(config.image_size, seed=seed)
    out = {"mode": mode, "backbone": backbone.name, "threads": torch.get_num_threads(), "masks": {}}
    for masks in ("true", "cosegment"):
        tic = time.perf_counter()
        result = lego.evaluate_capture(config, backbone, seed=seed, inputs=inputs, masks=masks, bench=bench)
        out["masks"][masks] = {**{k: v for k, v in result.items() if k != "anchors"}, "anchors": result["anchors"], "total_seconds": round(time.perf_counter() - tic, 1)}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def print_capture(result: dict) -> None:
    print(f"capture-like lego, {result['mode']} mode, {result['threads']} threads, backbone {result['backbone']}; frame-free errors (median, deg)")
    print(f"  {'masks':10s} {'mask IoU':>8s} {'method':20s} {'rel rot':>8s} {'view':>6s}")
    for masks, r in result["masks"].items():
        iou = "-" if r["mask_iou"] is None else f"{r['mask_iou']:.3f}"
        rows = [(name, e) for name, e in r["poses"].items()] + [(f"  {name} ({e['count']})", e) for name, e in r["by_view"].items()]
        for name, e in rows:
            print(f"  {masks:10s} {iou:>8s} {name:20s} {e['relative_rotation_median']:8.1f} {e['view_angle_median']:6.1f}")
        print(f"  {masks:10s} seconds {r['total_seconds']} ({', '.join(f'{k} {v}' for k, v in r['seconds'].items())})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default=None)
    parser.add_argument("--inputs", type=int, default=None, help="number of non-anchor views (default: 16 quick, all 92 full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--capture", action="store_true", help="the capture-like lego, with true and co-segmented masks")
    args = parser.parse_args(argv)
    mode = runtime.get_mode(args.mode)
    inputs = args.inputs if args.inputs is not None else runtime.pick({"quick": 16, "full": None}, mode)
    if args.capture:
        result = run_capture(mode, inputs, args.seed)
        print_capture(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    result = run(mode, inputs, args.seed)
    print(f"3-D congealing on lego, {result['inputs']} inputs at {result['image_size']} px, {mode} mode, {result['threads']} threads, backbone {result['backbone']}")
    for stage, s in result["seconds"].items():
        print(f"  {stage:18s} {s:8.1f} s")
    print(f"  {'total':18s} {result['total_seconds']:8.1f} s   peak memory {result['peak_rss_mb']} MB   "
          f"rotation error {result['rotation_error_mean']:.1f} deg mean / {result['rotation_error_median']:.1f} median")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
