"""Which EfficientNet-Lite0 stages SpaceJAM's 25 PCA components read, with and without the z-score.

For each CUB class given, the quick config's descriptors (384-px images) and co-segmentation: the
share of the descriptor variance in each stage (3, 5, 7: channels 0-39, 40-151, 152-471), and each
stage's share of the 25 components' squared loadings, for the plain centred PCA and for the PCA of
z-scored channels (``SpaceJAMConfig.pca_standardise``), both fitted on the foreground.

    PYTHONPATH=src python benchmarks/issue15_diagnostics/pca_stage_share.py 1,2,3
"""
import sys
import warnings

import torch
import torch.nn.functional as F

from congealing import data, features
from congealing.spacejam import SpaceJAMConfig

STAGES = {"3": (0, 40), "5": (40, 152), "7": (152, 472)}


def main(classes: list[int]) -> None:
    config = SpaceJAMConfig.for_mode("quick")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = features.load_backbone("efficientnet_lite0")
    for c in classes:
        cub = data.load_cub_class(c)
        descriptors = features.extract_descriptors(cub.images, backbone, grid=config.descriptor_grid, input_size=config.backbone_input_size)
        masks = features.cosegment(descriptors)
        fit = features.foreground_locations(F.interpolate(masks.float(), size=descriptors.shape[-2:], mode="bilinear", align_corners=False), config.pca_dim)
        inside = fit.permute(0, 2, 3, 1).reshape(-1) > 0.5
        x = descriptors.permute(0, 2, 3, 1).reshape(-1, descriptors.shape[1])[inside].double()
        x = x - x.mean(0)
        variance = x.var(0)
        print(f"class {c}: variance share per stage " + ", ".join(f"{s}: {float(variance[a:b].sum() / variance.sum()):.3f}" for s, (a, b) in STAGES.items()))
        for name, z in (("plain PCA", x), ("z-scored PCA", x / x.std(0).clamp_min(1e-9))):
            _, vectors = torch.linalg.eigh(z.T @ z)
            loading = (vectors[:, -config.pca_dim:] ** 2).sum(1) / config.pca_dim
            print(f"  {name}: share of the {config.pca_dim} components' loadings per stage "
                  + ", ".join(f"{s}: {float(loading[a:b].sum()):.3f}" for s, (a, b) in STAGES.items()))


if __name__ == "__main__":
    main([int(c) for c in sys.argv[1].split(",")])
