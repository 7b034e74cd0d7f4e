import time, sys
from dataclasses import replace
from congealing import data, features, neural
cub = data.load_cub_class(1)
bb = features.load_backbone("efficientnet_lite0")
over = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
cfg = neural.NeuralCongealingConfig.for_mode("quick", seed=0, flips=True, gradual_atlas=True, relaxed_rigidity=True, **over)
t = time.process_time(); d = neural.prepare(cub.images, data.cub_box_masks(cub), bb, cfg); print("prepare cpu", time.process_time() - t, d.keys.shape)
for e, b in ((4, 1), (4, 3)):
    t = time.process_time(); neural.train(d, replace(cfg, epochs=e, bootstrap_epochs=b)); print("epochs", e, "boot", b, "cpu", time.process_time() - t)

