"""The command line and setup the Neural Congealing diagnostics share (``nc_curve.py``, ``nc_inverse_resolution.py``).

``quick_class_run(parser)`` adds ``cls``, ``--seed`` and ``--set key=value`` (overrides of the quick config, values as
Python literals) to a script's parser and returns its arguments, the CUB class, EfficientNet-Lite0 and the quick config
with the sweep's flags (flips, gradual atlas, relaxed rigidity), as ``issue15_sweep.py --method neural`` trains it.
"""
import argparse
import ast

from congealing import data, features, neural


def quick_class_run(parser: argparse.ArgumentParser):
    parser.add_argument("cls", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="key=value override of the quick config")
    args = parser.parse_args()
    overrides = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.set)}
    cub = data.load_cub_class(args.cls)
    backbone = features.load_backbone("efficientnet_lite0")
    config = neural.NeuralCongealingConfig.for_mode("quick", seed=args.seed, flips=True, gradual_atlas=True,
                                                     relaxed_rigidity=True, **overrides)
    return args, overrides, cub, backbone, config
