import time, sys
from dataclasses import replace
from congealing import data, features, spacejam
cub = data.load_cub_class(1)
bb = features.load_backbone("efficientnet_lite0")
cfg = spacejam.SpaceJAMConfig.for_mode("quick", seed=0)
keys, masks = spacejam.prepare_keys(cub.images, bb, cfg)
for over in sys.argv[1:]:
    c = replace(cfg, ae_epochs=0, epochs=6, **eval(over))
    spacejam.train(keys, masks, replace(c, epochs=1))
    t = time.process_time(); spacejam.train(keys, masks, c); print(over, "joint epoch cpu", (time.process_time() - t) / 6, flush=True)
