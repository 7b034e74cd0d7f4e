import torch, sys
from dataclasses import replace
from congealing import data, features, spacejam
from congealing.alignment import transfer_via_transforms
from congealing.evaluation import evaluate_transfer
c = int(sys.argv[1]); over = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
cub = data.load_cub_class(c)
bb = features.load_backbone("efficientnet_lite0")
cfg = replace(spacejam.SpaceJAMConfig().scaled(ae_epochs=30, epochs=60, map_size=32, stn_lr=1e-3), loss_size=16, stn_pools=(26, 8), seed=0, **over)
keys, masks = spacejam.prepare_keys(cub.images, bb, cfg)
print("mask fraction per image", [round(float(m), 2) for m in masks.mean(dim=(1, 2, 3))])
r = spacejam.train(keys, masks, cfg)
kp, vis = cub.keypoints, cub.visible > 0
beak, tail = 1, 13
facing = torch.where(vis[:, beak] & vis[:, tail], torch.sign(kp[:, beak, 0] - kp[:, tail, 0]), torch.zeros(len(cub)))
det = torch.sign(torch.linalg.det(r.transforms[:, :2, :2]))
agree = (facing * det)
print("facing*det", agree.tolist())
print("consistent fraction", float((agree == agree[agree != 0].mode().values).float().sum() / (agree != 0).sum()))
print("scale", [round(float(v), 2) for v in torch.linalg.det(r.transforms[:, :2, :2]).abs().sqrt()])
print("pck", evaluate_transfer(transfer_via_transforms(r.transforms, 256), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"])
for g, T in r.stages.items():
    print("stage", g, "pck", round(100 * evaluate_transfer(transfer_via_transforms(T, 256), cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1))
