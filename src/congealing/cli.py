"""The ``congeal`` command: align a user's images, evaluate methods on benchmarks, show the setup.

    congeal info                                   # mode, device, data location, backbone
    congeal align DIR --method entropy --out OUT   # align a folder of images
    congeal eval --dataset mnist --method lsq      # measure a method on a benchmark

Every subcommand takes ``--mode quick|full`` (default: ``$CONGEAL_MODE``, else quick). Methods and
benchmarks live in their chapters' modules, imported only when used; this file only routes to
them (``METHODS``, ``EVALUATIONS``), so the CLI holds no algorithm code.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from . import runtime

#: ``congeal align --method NAME`` -> "module:function(image_set, args) -> None" (writes args.out).
METHODS: dict[str, str] = {
    "entropy": "congealing.classical:align_folder",
    "lsq": "congealing.classical:align_folder",
    "ic-lsq": "congealing.classical:align_folder",
    "neural": "congealing.neural:align_folder",
    "spacejam": "congealing.spacejam:align_folder",
    "congeal3d": "congealing.congeal3d:align_folder",
}
#: ``congeal eval --dataset NAME`` -> "module:function(args) -> dict" (JSON-ready, plus a 'table' string).
EVALUATIONS: dict[str, str] = {
    "mnist": "congealing.classical:evaluate_mnist",
    "cub": "congealing.eval:evaluate_cub",
    "lego": "congealing.congeal3d:evaluate_lego",
}


def _resolve(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="congeal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--mode", choices=runtime.MODES, default=None, help="quick (CPU, minutes) or full (paper settings, GPU); default $CONGEAL_MODE or quick")
        p.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--backbone", default=None, help="dino_vits8, dinov2_vits14, efficientnet_lite0 or auto")
        p.add_argument("--data", default=None, help="data folder (default $CONGEAL_DATA, else the download cache)")

    info = sub.add_parser("info", help="show mode, device, data location and the backbone that would be used")
    common(info)

    align = sub.add_parser("align", help="jointly align a folder of images")
    align.add_argument("folder", type=Path)
    align.add_argument("--method", required=True, help="one of: " + ", ".join(sorted(METHODS)) if METHODS else "alignment method")
    align.add_argument("--out", type=Path, required=True)
    align.add_argument("--size", type=int, default=256)
    align.add_argument("--resume", action="store_true", help="continue from a checkpoint in OUT")
    align.add_argument("--shape", type=Path, default=None, help="congeal3d only: the canonical shape checkpoint (congealing.congeal3d.save_shape)")
    common(align)

    evaluate = sub.add_parser("eval", help="evaluate a method on a benchmark and print a table")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--method", required=True)
    evaluate.add_argument("--classes", default=None, help="comma-separated class ids (dataset-specific)")
    evaluate.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    common(evaluate)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.mode = runtime.get_mode(args.mode)
    os.environ["CONGEAL_MODE"] = args.mode  # so library defaults agree with the flag
    if args.data:
        os.environ["CONGEAL_DATA"] = str(args.data)
    runtime.seed_everything(args.seed)
    if args.command == "info":
        return _info(args)
    if args.command == "align":
        if args.method not in METHODS:
            print(f"congeal: unknown method {args.method!r}; available: {', '.join(sorted(METHODS)) or 'none'}", file=sys.stderr)
            return 2
        from .data import ImageSetError, load_image_folder

        try:
            images = load_image_folder(args.folder, size=args.size, min_images=2, max_images=None)
        except ImageSetError as error:
            print(f"congeal: {error}", file=sys.stderr)
            return 2
        _resolve(METHODS[args.method])(images, args)
        print(f"wrote {args.out}")
        return 0
    if args.dataset not in EVALUATIONS:
        print(f"congeal: unknown dataset {args.dataset!r}; available: {', '.join(sorted(EVALUATIONS)) or 'none'}", file=sys.stderr)
        return 2
    result = _resolve(EVALUATIONS[args.dataset])(args)
    print(result.get("table", json.dumps(result, indent=2)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in result.items() if k != "table"}
        record["provenance"] = runtime.provenance("congeal " + " ".join(argv if argv is not None else sys.argv[1:]), args.mode, getattr(args, "device", None))
        args.json.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")
    return 0


def _info(args) -> int:
    from .data import DATASETS, DatasetNotFoundError, find_dataset
    from .features import load_backbone

    print(f"mode:    {args.mode}")
    print(f"device:  {runtime.get_device(args.device)}")
    for key in DATASETS:
        try:
            where = find_dataset(key, args.data, download=False)
        except DatasetNotFoundError:
            where = "not found (downloaded on first use)"
        print(f"data:    {key:15s} {where}")
    backbone = load_backbone(args.backbone)
    print(f"backbone: {backbone.name} ({backbone.title})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
