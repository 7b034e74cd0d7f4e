"""Seconds per iteration of the three classical congealing methods against the set size N.

    python benchmarks/bench_classical.py                      # quick sizes (about a minute on 2 cores)
    python benchmarks/bench_classical.py --mode full --json bench.json

Real MNIST test digits (all classes, perturbed as in ``congeal eval``), a few iterations per size,
the median iteration time reported. Every per-image update is batched, so the cost should grow
linearly in N; the script fits the log-log slope over the sizes from the second one up (the smallest
set is dominated by fixed per-call overhead) and says whether it is within 0.8-1.2.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from congealing import classical, data, mnist, runtime

SIZES = {"quick": [100, 300, 1000, 3000], "full": [100, 300, 1000, 3000, 10000]}
ITERATIONS = 3


def time_per_iteration(images: torch.Tensor, method: str) -> float:
    config = classical.CONFIGS[method](iterations=ITERATIONS)
    result = classical.congeal(images, method, config)
    return statistics.median(result.history["seconds"][1:])


def loglog_slope(sizes, seconds) -> float:
    xs, ys = [math.log(n) for n in sizes], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=runtime.MODES, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated set sizes (default: per mode)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    mode = runtime.get_mode(args.mode)
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else SIZES[mode]
    device = runtime.get_device(args.device)
    digits, _ = data.load_mnist(limit=max(sizes))
    if digits.shape[0] < max(sizes):
        raise SystemExit(f"only {digits.shape[0]} MNIST test digits; the largest size must not exceed that")
    perturbed, _ = mnist.perturb(digits, mnist.Perturbation(), seed=0)
    perturbed = perturbed.to(device)
    table = {}
    for method in classical.METHOD_NAMES:
        table[method] = [time_per_iteration(perturbed[:n], method) for n in sizes]
    slopes = {method: loglog_slope(sizes[1:], seconds[1:]) for method, seconds in table.items()}
    header = f"{'N':>7} " + " ".join(f"{m + ' s/iter':>16}" for m in table)
    print(f"classical congealing, {mode} mode, {device}, {torch.get_num_threads()} threads, median of {ITERATIONS} iterations")
    print(header)
    print("-" * len(header))
    for index, n in enumerate(sizes):
        print(f"{n:>7} " + " ".join(f"{table[m][index]:>16.4f}" for m in table))
    for method, slope in slopes.items():
        verdict = "linear" if 0.8 <= slope <= 1.2 else ("sub-linear (overhead-bound)" if slope < 0.8 else "super-linear")
        print(f"{method:>8}: time ~ N^{slope:.2f} for N >= {sizes[1]}: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": mode, "device": str(device), "threads": torch.get_num_threads(), "sizes": sizes,
                                         "seconds_per_iteration": table, "loglog_slope": slopes}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
