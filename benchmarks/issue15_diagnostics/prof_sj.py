import time, torch, sys
from congealing import data, features, spacejam
torch.manual_seed(0)
cub = data.load_cub_class(1)
bb = features.load_backbone("efficientnet_lite0")
overrides = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
cfg = spacejam.SpaceJAMConfig.for_mode("quick", seed=0, **overrides)
t = time.process_time(); keys, masks = spacejam.prepare_keys(cub.images, bb, cfg); print("keys cpu", time.process_time() - t, keys.shape)
c1 = replace = __import__("dataclasses").replace
def timed(c):
    t = time.process_time(); r = spacejam.train(keys, masks, c); return time.process_time() - t, r
a, _ = timed(c1(cfg, ae_epochs=10, epochs=0, curriculum_epochs=(1, 2)))
print("ae 10 epochs cpu", a)
b, _ = timed(c1(cfg, ae_epochs=0, epochs=5))
print("joint 5 epochs cpu", b)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    spacejam.train(keys, masks, c1(cfg, ae_epochs=0, epochs=2))
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
