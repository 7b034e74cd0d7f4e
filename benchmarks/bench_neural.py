"""Seconds per epoch of Neural Congealing vs the number of images (CPU, and CUDA when present).

    python benchmarks/bench_neural.py                      # quick-mode settings, N = 4 8 16 32
    python benchmarks/bench_neural.py --mode full --device cuda --sizes 10 20 --json out.json

Synthetic inputs of the configured sizes (random images, unit keys with ``--dim`` channels), so
no backbone or data set is needed: the cost of an epoch does not depend on the pictures. Each
setting runs ``--warmup`` untimed epochs, then ``--epochs`` timed ones (median reported), in each
phase (rigid bootstrap, and rigid + flow); "schedule h" extrapolates to the mode's whole schedule; peak memory is the CUDA allocator's peak, or the process's peak
resident set on CPU (which includes the interpreter and torch, ~0.3-0.5 GB).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from congealing import neural, runtime


def synthetic(cfg: neural.NeuralCongealingConfig, n: int, dim: int, device) -> neural.NeuralData:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g)
    keys = F.normalize(torch.randn(n, dim, cfg.atlas_size, cfg.atlas_size, generator=g), dim=1)
    masks = torch.rand(n, 1, cfg.atlas_size, cfg.atlas_size, generator=g)
    stn = F.interpolate(images, size=(cfg.stn_input_size,) * 2, mode="area")
    return neural.NeuralData(images.to(device), stn.to(device), keys.to(device), masks.to(device))


def seconds_per_epoch(cfg, data, flow: bool, warmup: int, epochs: int, device) -> float:
    """Median wall time of the timed epochs (a callback stamps the end of every epoch)."""
    stamps = []

    def stamp(epoch, model):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    total = warmup + epochs
    c = replace(cfg, epochs=total, bootstrap_epochs=0 if flow else total, checkpoint_every=10**9)
    neural.train(data, c, callback=stamp, callback_every=1)
    durations = torch.tensor(stamps).diff()[max(0, warmup - 1) :]
    return float(durations.median())


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    scale = 1e9 if sys.platform != "darwin" else 1e12  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3 / scale


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default=None, help="quick or full (default $CONGEAL_MODE, else quick)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--dim", type=int, default=472, help="descriptor channels (472 = EfficientNet-Lite0, 384 = DINO ViT-S)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    mode, device = runtime.get_mode(args.mode), runtime.get_device(args.device)
    cfg = neural.NeuralCongealingConfig.for_mode(mode)
    rows = []
    print(f"Neural Congealing, {mode} mode, D={args.dim}, atlas {cfg.atlas_size}, {device}, torch threads {torch.get_num_threads()}")
    print(f"{'N':>4} {'rigid s/epoch':>14} {'rigid+flow s/epoch':>19} {'s/image/epoch':>14} {'schedule h':>16} {'peak GB':>8}")
    for n in args.sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        data = synthetic(cfg, n, args.dim, device)
        rigid = seconds_per_epoch(cfg, data, False, args.warmup, args.epochs, device)
        both = seconds_per_epoch(cfg, data, True, args.warmup, args.epochs, device)
        schedule_h = (cfg.bootstrap_epochs * rigid + (cfg.epochs - cfg.bootstrap_epochs) * both) / 3600
        row = {"n_images": n, "rigid_s_per_epoch": rigid, "both_s_per_epoch": both, "s_per_image_epoch": both / n, "schedule_hours": schedule_h, "peak_gb": peak_memory_gb(device)}
        rows.append(row)
        print(f"{n:>4} {rigid:>14.3f} {both:>19.3f} {both / n:>14.4f} {schedule_h:>16.2f} {row['peak_gb']:>8.2f}", flush=True)
    result = {"benchmark": "neural", "mode": mode, "device": str(device), "dim": args.dim, "threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__, "config": {"atlas_size": cfg.atlas_size, "epochs": cfg.epochs, "bootstrap_epochs": cfg.bootstrap_epochs, "batch_size": cfg.batch_size}, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
