"""Does a weak SpaceJAM seed mirror birds against the others' facing?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_flip_consistency.py CLASS SEED ["dict(flip_window=20)"]

Trains the shipped quick config (with the optional overrides) on one CUB class as ``congeal eval`` does (co-segmented
masks, one process) and prints its PCK@0.1, how many flip decisions the history updates changed from the consensus start,
and, after each curriculum stage and at the end, the fraction of birds (beak and tail visible) whose facing times the
sign of their transform's determinant agrees with the majority: 1.0 when every bird is mirrored consistently.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch

from congealing import data, features, spacejam
from congealing.evaluation import evaluate_transfer

BEAK, TAIL = 1, 13  # CUB keypoint indices


def facing_consistency(transforms: torch.Tensor, facing: torch.Tensor) -> float:
    """Fraction of the birds with a known facing whose facing x orientation agrees with the majority's."""
    agree = (facing * torch.sign(torch.linalg.det(transforms[:, :2, :2])))[facing != 0]
    return float((agree == agree.mode().values).float().mean())


def main() -> None:
    cls, seed = int(sys.argv[1]), int(sys.argv[2])
    overrides = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
    cub = data.load_cub_class(cls)
    config = replace(spacejam.SpaceJAMConfig.for_mode("quick", seed=seed), **overrides)
    fitted = spacejam.fit(cub.images, config, backbone=features.load_backbone("efficientnet_lite0"), device="cpu")
    result = fitted.state["result"]
    visible = (cub.visible[:, BEAK] > 0) & (cub.visible[:, TAIL] > 0)
    facing = torch.where(visible, torch.sign(cub.keypoints[:, BEAK, 0] - cub.keypoints[:, TAIL, 0]), torch.zeros(len(cub)))
    pck = 100 * evaluate_transfer(fitted.transfer(), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"]
    start = features.consensus_flips(result.keys) if config.flip_init == "consensus" else torch.zeros(len(cub), dtype=torch.bool)
    print(f"class {cls} seed {seed} {overrides}: PCK@0.1 {pck:.1f}; mirrored {int(result.flips.sum())} of {len(cub)}, "
          f"{int((start != result.flips).sum())} changed by the history updates")
    for group, transforms in result.stages.items():
        print(f"  after {group}: facing consistency {facing_consistency(transforms, facing):.2f}")
    print(f"  final: facing consistency {facing_consistency(result.transforms, facing):.2f} ({int((facing != 0).sum())} birds)")


if __name__ == "__main__":
    main()
