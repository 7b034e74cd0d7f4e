"""Does Neural Congealing's quick config throw an image of a small set out of the frame?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_small_sets.py

With its STNs reading the keys, batches of 2 threw 2 of Chapter 4's 10 images out of the frame (the losses are masked
means over the whole batch, so an image that leaves drops out of them). A set of 2 or 3 images is one batch of 2 or 3,
whatever ``batch_size``: this trains the quick config as ``congeal align`` does (co-segmented masks, the config's
defaults) on a few such sets of CUB classes 1, 2, 3 and 7 and prints, per image, the fraction of its sampling grid
inside the image (1: the whole atlas reads the image; 0: thrown out), and the CPU seconds.
"""
import json
import time

from congealing import data, features, neural

bb = features.load_backbone("efficientnet_lite0")
for cls, n, start in [(1, 2, 0), (1, 2, 2), (1, 3, 0), (2, 2, 0), (2, 3, 3), (7, 2, 0), (7, 3, 0), (3, 2, 5)]:
    cub = data.load_cub_class(cls)
    imgs = cub.images[start:start + n]
    cfg = neural.NeuralCongealingConfig.for_mode("quick", seed=0)
    t = time.process_time()
    al = neural.fit(imgs, cfg, backbone=bb, device="cpu")
    res = al.state["result"]
    grids = res.grids(res.outputs()).cpu()
    inside = ((grids.abs() <= 1).all(-1)).float().mean(dim=(1, 2))
    print(json.dumps({"cls": cls, "n": n, "start": start, "inside": [round(float(v), 2) for v in inside], "cpu": round(time.process_time() - t, 1)}), flush=True)
