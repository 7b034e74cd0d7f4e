"""Does SpaceJAM's final training loss pick the better seed?  Shipped quick config, one class, several seeds.

    PYTHONPATH=src python benchmarks/issue15_diagnostics/seed_select.py 2 --seeds 0,1,2,3,4

Prints one JSON line per seed: PCK@0.1 (box threshold, as ``congeal eval``), the mean joint loss of the last epoch
and of the last five, and the training CPU seconds.  Selection by loss is then read off these lines.
"""
import argparse, json, time
from dataclasses import replace

from congealing import data, features, spacejam
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer

parser = argparse.ArgumentParser()
parser.add_argument("cls", type=int)
parser.add_argument("--seeds", default="0,1,2,3,4")
parser.add_argument("--set", action="append", default=[], help="key=value override of the quick config")
args = parser.parse_args()
overrides = {k: eval(v) for k, v in (s.split("=", 1) for s in args.set)}

cub = data.load_cub_class(args.cls)
backbone = features.load_backbone("efficientnet_lite0")
for seed in map(int, args.seeds.split(",")):
    config = spacejam.SpaceJAMConfig.for_mode("quick", seed=seed)
    if "epochs" in overrides:
        o = dict(overrides)
        config = config.scaled(ae_epochs=o.pop("ae_epochs", config.ae_epochs), epochs=o.pop("epochs"))
        config = replace(config, **o)
    else:
        config = replace(config, **overrides)
    cpu = time.process_time()
    keys, masks = spacejam.prepare_keys(cub.images, backbone, config)
    result = spacejam.train(keys, masks, config)
    cpu = time.process_time() - cpu
    pck = evaluate_transfer(transfer_via_transforms(result.transforms, 256), cub, alphas=(0.1,), n_boot=1)
    print(json.dumps(dict(cls=args.cls, seed=seed, overrides=args.set, pck=round(100 * pck["pck"]["0.1"]["mean"], 1),
                          loss=round(float(result.losses[-1]), 5),
                          loss5=round(sum(result.losses[-5:]) / 5, 5), cpu=round(cpu, 1))), flush=True)
