import torch
from congealing import data, features
from congealing.evaluation import descriptor_transfer, evaluate_transfer
bb = features.load_backbone("efficientnet_lite0")
for c in (1, 2, 3):
    cub = data.load_cub_class(c)
    d = features.extract_descriptors(cub.images, bb, grid=64)
    row = []
    for s, e in ((0, 472), (40, 472), (152, 472), (40, 152)):
        x = torch.nn.functional.normalize(d[:, s:e], dim=1)
        row.append((f"{s}:{e}", round(100 * evaluate_transfer(descriptor_transfer(x, 256), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1)))
    print(c, row, flush=True)
