import torch
from dataclasses import replace
from congealing import data, features, spacejam
bb = features.load_backbone("efficientnet_lite0")
cfg = replace(spacejam.SpaceJAMConfig().scaled(ae_epochs=30, epochs=60, map_size=32, stn_lr=1e-3))
def consensus(keys, profile):
    x = keys.mean(dim=2) if profile else keys  # (N, K, W) column profiles or full maps
    X = torch.stack([x, x.flip(-1)]).flatten(2)  # (2, N, F)
    d = torch.cdist(X.reshape(-1, X.shape[-1]), X.reshape(-1, X.shape[-1])).pow(2).reshape(2, len(keys), 2, len(keys))
    c = torch.zeros(len(keys), dtype=torch.long)
    for _ in range(20):
        changed = False
        for n in range(len(keys)):
            others = torch.arange(len(keys)) != n
            cost = torch.stack([d[a, n, c[others], others.nonzero()[:, 0]].sum() for a in (0, 1)])
            new = int(cost.argmin())
            if new != c[n]: c[n] = new; changed = True
        if not changed: break
    return c
for k in (1, 2, 3, 4, 5, 6):
    cub = data.load_cub_class(k)
    keys, masks = spacejam.prepare_keys(cub.images, bb, cfg)
    kp, vis = cub.keypoints, cub.visible > 0
    facing = torch.where(vis[:, 1] & vis[:, 13], torch.sign(kp[:, 1, 0] - kp[:, 13, 0]), torch.zeros(len(cub)))
    out = []
    for profile in (False, True):
        c = consensus(keys, profile)
        agree = facing * (1 - 2 * c.float())
        a = agree[agree != 0]
        out.append(round(float(max((a > 0).float().mean(), (a < 0).float().mean())), 2))
    print(k, "consistency full-map, column-profile:", out, "known", int((facing != 0).sum()), flush=True)
