"""Issue 15 sweep: SpaceJAM / Neural Congealing in quick mode on CUB classes, against nearest neighbours.

    python benchmarks/issue15_sweep.py --method spacejam --classes 1,2,3 --seeds 0 --set epochs=60 --set stn_lr=2e-3

``--set key=value`` overrides a field of the quick config (value parsed as a Python literal). Prints one
line per (class, seed): PCK@0.1 (box threshold, mean over ordered pairs, as ``congeal eval``), the
nearest-neighbour baseline on the same backbone, wall and CPU seconds of keys + training, the final training
loss and every epoch's (``losses``). Appends a JSON line per run to ``--jsonl``.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import resource
import sys
import time
from dataclasses import replace

import torch

from congealing import data, features, neural, registry, spacejam
from congealing.evaluation import descriptor_transfer, evaluate_transfer

_NN: dict = {}
MASKS = "cosegment"


def box_pck(transfer, cub) -> float:
    return round(100 * evaluate_transfer(transfer, cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1)


def run_spacejam(cub, backbone, overrides, seed, input_size=0):
    """As ``evaluation.fit_on_cub("spacejam", ...)`` (co-segmented masks), with overrides of the quick config;
    ``epochs`` (and ``ae_epochs``) rescale every epoch-based schedule, as ``SpaceJAMConfig.scaled`` does.
    ``input_size`` (0: the config's) replaces the config's input side. Returns the transfer, wall and CPU
    seconds, the descriptor grid and the input side the descriptors were made at, and every epoch's loss."""
    overrides = dict(overrides)
    config = spacejam.SpaceJAMConfig.for_mode("quick", seed=seed)
    if input_size:
        config = replace(config, input_size=input_size)
    if "epochs" in overrides:
        config = config.scaled(ae_epochs=overrides.pop("ae_epochs", config.ae_epochs), epochs=overrides.pop("epochs"))
    config = replace(config, **overrides)
    given = None
    if MASKS == "box":  # diagnostic only: the ground-truth boxes (not a method setting)
        given = data.cub_box_masks(cub)
    elif MASKS == "ones":
        given = torch.ones(len(cub), 1, 8, 8)
    tic, cpu = time.perf_counter(), time.process_time()
    if MASKS.startswith("cosegment:"):  # the co-segmentation with another vote_fraction (timed: fit would do it)
        descriptors = features.extract_descriptors(cub.images, backbone, grid=config.descriptor_grid, input_size=config.backbone_input_size)
        given = features.cosegment(descriptors, vote_fraction=float(MASKS.split(":")[1]))
    alignment = spacejam.fit(cub.images, config, masks=given, backbone=backbone, device="cpu")
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu
    side = config.backbone_input_size or backbone.spec.input_size
    return alignment.transfer(), wall, cpu, config.descriptor_grid, side, [entry["loss"] for entry in alignment.history]


def run_neural(cub, backbone, overrides, seed):
    """As ``evaluation.fit_on_cub("neural", ...)`` (its registry entry's quick settings and box masks), with overrides;
    it reads the descriptors at the backbone's input side (``--input-size`` replaces the backbone's). Returns what
    :func:`run_spacejam` returns."""
    flags = registry.get("neural").cub.overrides_for("quick")
    flags.update(overrides)
    config = neural.NeuralCongealingConfig.for_mode("quick", seed=seed, **flags)
    tic, cpu = time.perf_counter(), time.process_time()
    alignment = neural.fit(cub.images, config, masks=data.cub_box_masks(cub), backbone=backbone, device="cpu")
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu
    return alignment.transfer(), wall, cpu, 64, backbone.spec.input_size, [entry["total"] for entry in alignment.history]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="spacejam")
    parser.add_argument("--classes", default="1,2,3")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--tag", default="")
    parser.add_argument("--channels", default="", help="START:STOP, a slice of the descriptor channels (EfficientNet-Lite0: 0:40 stage 3, 40:152 stage 5, 152:472 stage 7)")
    parser.add_argument("--masks", default="cosegment", help="cosegment (the method), cosegment:F (its vote_fraction F instead of 0.75), box (diagnostic: ground truth), ones")
    parser.add_argument("--input-size", type=int, default=0, help="the side images are resized to before the backbone, method and NN alike "
                        "(default: SpaceJAM's config's input_size; for Neural Congealing the backbone's own, 256 for EfficientNet-Lite)")
    parser.add_argument("--machine", default="", help="a label for runs timed on another machine than the record's first")
    parser.add_argument("--jsonl", default="/tmp/i15/runs.jsonl")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    global MASKS
    MASKS = args.masks
    if args.channels:  # experiment: a subset of the descriptor channels (for the method AND the NN baseline)
        start, stop = (int(v) for v in args.channels.split(":"))
        original = features.extract_descriptors

        def sliced(*a, **k):
            return torch.nn.functional.normalize(original(*a, **k)[:, start:stop], dim=1)

        features.extract_descriptors = sliced
    backbone = features.load_backbone(args.backbone)
    own = backbone.spec.input_size
    if args.input_size and args.method != "spacejam":  # experiment: another input resolution (the descriptor cache keys on it)
        backbone.spec = replace(backbone.spec, input_size=args.input_size)
    runner = functools.partial(run_spacejam, input_size=args.input_size) if args.method == "spacejam" else run_neural
    rows = []
    for c in [int(c) for c in args.classes.split(",")]:
        cub = data.load_cub_class(c)
        for seed in [int(s) for s in args.seeds.split(",")]:
            transfer, wall, cpu, grid, side, losses = runner(cub, backbone, overrides, seed)  # side: the method's and the baseline's
            ours = box_pck(transfer, cub)
            key = (c, grid, side)
            if key not in _NN:
                descriptors = features.extract_descriptors(cub.images, backbone, grid=grid, input_size=side)
                _NN[key] = box_pck(descriptor_transfer(descriptors, cub.images.shape[-1]), cub)
            row = dict(method=args.method, tag=args.tag, masks=args.masks, channels=args.channels, overrides=overrides, backbone=args.backbone, cls=c, seed=seed, pck=ours, nn=_NN[key],
                       final_loss=round(float(losses[-1]), 5), losses=[round(float(loss), 5) for loss in losses], wall=round(wall, 1), cpu=round(cpu, 1), rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
            if args.machine:
                row["machine"] = args.machine
            if side != own:
                row["input_size"] = side
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    mean = sum(r["pck"] for r in rows) / len(rows)
    nn = sum(r["nn"] for r in rows) / len(rows)
    print(f"SUMMARY {args.method} {args.tag} {overrides}: " + " ".join(f"c{r['cls']}s{r['seed']}={r['pck']}" for r in rows)
          + f" mean={mean:.1f} nn={nn:.1f} wall/class={sum(r['wall'] for r in rows)/len(rows):.0f} cpu/class={sum(r['cpu'] for r in rows)/len(rows):.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
