"""Descriptor extraction on CPU: seconds per image and peak memory, per backbone and stride.

    python benchmarks/bench_features.py [--images N] [--batch-size B] [--json out.json]

Each configuration runs in its own process (so its peak resident memory, ``ru_maxrss``, is its
own) and extracts ``N`` CUB class-1 test images at 256 px to a 64 x 64 grid with
:func:`congealing.features.extract_descriptors` (cache off). The ViTs are built with random weights
(``pretrained=False``): the timing and memory of a forward pass do not depend on the weights, and
this way the benchmark runs offline. Quick mode (``CONGEAL_MODE``) times 4 images, full mode a whole
class of 30, which is the memory figure that matters (it must stay under 4 GB).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch

#: (backbone, patch stride) pairs; the ViTs at their patch size (no overlap) and at the denser stride.
CONFIGS = (("efficientnet_lite0", 8), ("dino_vits8", 8), ("dino_vits8", 4), ("dinov2_vits14", 14), ("dinov2_vits14", 7))


def build(name: str, stride: int):
    from congealing import features
    from congealing._compat import import_timm

    spec = dataclasses.replace(features.BACKBONES[name], stride=stride)
    if spec.kind == "cnn":
        return features.load_backbone(name)
    model = import_timm().create_model(spec.timm_name, pretrained=False, dynamic_img_size=True)
    cfg = model.pretrained_cfg
    return features.ViTKeys(name, model, spec, cfg["mean"], cfg["std"])


def measure(name: str, stride: int, images: int, batch_size: int) -> dict:
    from congealing.data import load_cub_class
    from congealing.features import extract_descriptors

    backbone = build(name, stride)
    batch = load_cub_class(1, "test", size=256).images[:images]
    extract_descriptors(batch[:1], backbone, cache=False)  # warm-up
    start = time.perf_counter()
    descriptors = extract_descriptors(batch, backbone, grid=64, batch_size=batch_size, cache=False)
    seconds = time.perf_counter() - start
    return {
        "backbone": name,
        "stride": stride,
        "input_size": backbone.spec.input_size,
        "dim": descriptors.shape[1],
        "images": images,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "seconds_per_image": seconds / images,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv=None) -> int:
    from congealing import runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="images to extract (default: 4 quick, 30 full)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("NAME", "STRIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    images = args.images or runtime.pick({"quick": 4, "full": 30})
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), images, args.batch_size)))
        return 0
    rows = []
    print(f"{'backbone':<20} {'stride':>6} {'input':>6} {'dim':>5} {'s/image':>8} {'peak GB':>8}   ({images} images, batch {args.batch_size}, CPU)")
    for name, stride in CONFIGS:
        command = [sys.executable, __file__, "--one", name, str(stride), "--images", str(images), "--batch-size", str(args.batch_size)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:<20} {stride:>6} {row['input_size']:>6} {row['dim']:>5} {row['seconds_per_image']:>8.2f} {row['peak_rss_gb']:>8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
