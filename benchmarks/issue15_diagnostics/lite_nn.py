"""Nearest neighbours on CUB classes 1-3 with each EfficientNet-Lite, after checking Lite1/Lite2's ImageNet weights on a cat.

    PYTHONPATH=src python benchmarks/issue15_diagnostics/lite_nn.py efficientnet_lite0,efficientnet_lite1,efficientnet_lite2
"""
import sys, torch, torch.nn.functional as F
from skimage import data as skdata
from congealing import data, features
from congealing._compat import import_timm
from congealing.evaluation import descriptor_transfer, evaluate_transfer
timm = import_timm()
for v in (1, 2):
    m = timm.create_model(f"tf_efficientnet_lite{v}", pretrained=False)
    m.load_state_dict(features.efficientnet_lite_state_dict(v), strict=True)
    cat = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    cat = F.interpolate(cat, size=(240 + 20 * v,) * 2, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        print("lite", v, "top5", m.eval()((cat - 0.5) / 0.5).topk(5).indices[0].tolist(), flush=True)
for name in sys.argv[1].split(","):
    bb = features.load_backbone(name)
    row = []
    for c in (1, 2, 3):
        cub = data.load_cub_class(c)
        d = features.extract_descriptors(cub.images, bb, grid=64)
        row.append(round(100 * evaluate_transfer(descriptor_transfer(d, 256), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1))
    print(name, d.shape[1], row, round(sum(row) / 3, 1), flush=True)
