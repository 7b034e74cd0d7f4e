"""Co-segmentation settings against the CUB boxes, classes 1-6: mean IoU, precision, recall per setting."""
import torch.nn.functional as F
from congealing import data, features
bb = features.load_backbone("efficientnet_lite0")
SETTINGS = [dict(), dict(vote_fraction=0.5), dict(vote_threshold=0.2), dict(vote_threshold=0.2, vote_fraction=0.5), dict(border_prior=False)] + [dict(vote_fraction=0.9), dict(vote_threshold=0.4)] * ("--tight" in __import__("sys").argv)
sets = [data.load_cub_class(c) for c in range(1, 7)]
descs = [features.extract_descriptors(cub.images, bb, grid=64) for cub in sets]
for s in SETTINGS:
    row = []
    for cub, d in zip(sets, descs):
        m = features.cosegment(d, **s) > 0.5
        box = F.interpolate(data.cub_box_masks(cub).float(), size=m.shape[-2:], mode="area") > 0.5
        inter = (m & box).flatten(1).sum(1).float()
        iou = inter / (m | box).flatten(1).sum(1).float()
        prec = inter / m.flatten(1).sum(1).clamp(min=1)
        rec = inter / box.flatten(1).sum(1)
        row.append(f"{iou.mean():.2f}/{prec.mean():.2f}/{rec.mean():.2f}")
    print(s or "defaults", "  ".join(row))
