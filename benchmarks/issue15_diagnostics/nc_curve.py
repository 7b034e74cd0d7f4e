"""Neural Congealing's PCK along its training: is the quick run still improving when it stops?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_curve.py 1 --every 20 [--set epochs=400 --set bootstrap_epochs=160 ...]

Trains the quick config as the sweep does (flips, gradual atlas, relaxed rigidity, box masks) and, every
``--every`` epochs, rebuilds the transfer from the model and the orientations just checkpointed and prints
PCK@0.1 (box threshold, as ``congeal eval``), the PCK of its similarity alone (flow off), with the epoch and the training CPU seconds so far.
"""
import argparse, json, tempfile, time
from dataclasses import replace
from pathlib import Path

import torch

from congealing import checkpoints, data, neural
from congealing.evaluation import evaluate_transfer
from nc_run import quick_class_run

parser = argparse.ArgumentParser()
parser.add_argument("--every", type=int, default=20)
args, overrides, cub, backbone, config = quick_class_run(parser)
config = replace(config, checkpoint_every=args.every)
size = tuple(cub.images.shape[-2:])
cpu0 = time.process_time()
prepared = neural.prepare(cub.images, data.cub_box_masks(cub), backbone, config, "cpu")
spent = {"eval": 0.0}


def evaluate(epoch, model):
    if (epoch + 1) % args.every:
        return
    tic = time.process_time()
    flipped = checkpoints.load(ckpt, map_location="cpu")["flipped"].bool()
    result = neural.TrainResult(model, prepared, flipped)
    pck = evaluate_transfer(result.transfer(size), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"]
    sim = pck
    if model.flow_active:  # the same model with its flow switched off: what the similarity alone gives
        model.flow_active = False
        sim = evaluate_transfer(result.transfer(size), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"]
        model.flow_active = True
    spent["eval"] += time.process_time() - tic
    print(json.dumps(dict(cls=args.cls, seed=args.seed, overrides=args.set, epoch=epoch + 1, pck=round(100 * pck, 1), sim_only=round(100 * sim, 1),
                          cpu=round(time.process_time() - cpu0 - spent["eval"], 1), flow=bool(model.flow_active))), flush=True)


with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "nc.pt"
    with torch.enable_grad():
        neural.train(prepared, config, checkpoint=ckpt, callback=evaluate, callback_every=1)
