"""Does Neural Congealing's objective at the end of the rigid bootstrap tell which atlas start ends better?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_start_objective.py --classes 1,2,3 --seeds 0,1,2 --jsonl out.jsonl

Trains the shipped quick config on CUB (the registry's quick settings and box masks, as
``issue15_sweep.py --method neural`` does) up to the end of the bootstrap (``bootstrap_epochs``) twice:
with every image updating the atlas from the start (``gradual_atlas=False``, shipped) and with the
gradual atlas that includes everyone by the end of the bootstrap (``gradual_atlas=True,
gradual_atlas_until="bootstrap"``). Prints each run's training objective (the weighted total, the mean of
the last epoch and of the last ``--window`` epochs) and appends one JSON line per run. A run of the full
schedule from the start with the lower objective is what a "two starts, keep the better" rule would
continue; the full runs' PCK comes from the sweep record (same seeds, same machine: the continuation is
the same computation).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from congealing import data, features, neural, registry

STARTS = {"all": dict(gradual_atlas=False), "gradual-bootstrap": dict(gradual_atlas=True, gradual_atlas_until="bootstrap")}


class _EndOfBootstrap(Exception):
    pass


def bootstrap_objective(prepared, config, folder: Path) -> list[dict]:
    """The per-epoch history of ``config``'s training up to the end of its bootstrap (the checkpoint's)."""
    path = folder / "run.pt"
    last = config.bootstrap_epochs - 1

    def stop(epoch, model):
        if epoch == last:
            raise _EndOfBootstrap

    try:
        neural.train(prepared, config, checkpoint=path, callback=stop, callback_every=1)
    except _EndOfBootstrap:
        pass
    return torch.load(path, weights_only=True)["history"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="1,2,3")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    backbone = features.load_backbone("efficientnet_lite0")
    flags = registry.get("neural").cub.overrides_for("quick")
    for cls in [int(c) for c in args.classes.split(",")]:
        cub = data.load_cub_class(cls)
        masks = data.cub_box_masks(cub)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name, start in STARTS.items():
                config = neural.NeuralCongealingConfig.for_mode("quick", seed=seed, **{**flags, **start})
                prepared = neural.prepare(cub.images, masks, backbone, config, torch.device("cpu"))
                cpu = time.process_time()
                with tempfile.TemporaryDirectory() as folder:
                    history = bootstrap_objective(prepared, config, Path(folder))
                totals = [h["total"] for h in history]
                row = dict(cls=cls, seed=seed, start=name, epochs=len(totals), last=round(totals[-1], 2),
                           window=round(sum(totals[-args.window:]) / args.window, 2), cpu=round(time.process_time() - cpu, 1))
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
