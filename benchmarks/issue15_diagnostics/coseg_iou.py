"""Co-segmentation masks (as SpaceJAM's prepare_keys makes them) against the CUB boxes, classes 1-6.

    PYTHONPATH=src python benchmarks/issue15_diagnostics/coseg_iou.py [BACKBONE] [CLASSES]   # efficientnet_lite0, 1,2,3,4,5,6
"""
import sys

import torch.nn.functional as F
from congealing import data, features
bb = features.load_backbone(sys.argv[1] if len(sys.argv) > 1 else "efficientnet_lite0")
for c in (map(int, sys.argv[2].split(",")) if len(sys.argv) > 2 else range(1, 7)):
    cub = data.load_cub_class(c)
    d = features.extract_descriptors(cub.images, bb, grid=64)
    m = features.cosegment(d).float()
    box = F.interpolate(data.cub_box_masks(cub).float(), size=m.shape[-2:], mode="area") > 0.5
    m = m > 0.5
    inter = (m & box).flatten(1).sum(1).float(); union = (m | box).flatten(1).sum(1).float()
    iou = inter / union; prec = inter / m.flatten(1).sum(1).clamp(min=1); rec = inter / box.flatten(1).sum(1)
    frac = m.flatten(1).float().mean(1); bfrac = box.flatten(1).float().mean(1)
    print(f"class {c}: n={len(cub)} IoU mean {iou.mean():.2f} (<0.3: {(iou < 0.3).sum().item()}), precision {prec.mean():.2f}, recall {rec.mean():.2f}, "
          f"mask fraction {frac.min():.2f}-{frac.max():.2f}, box fraction {bfrac.min():.2f}-{bfrac.max():.2f}")
