"""What one epoch of Neural Congealing's quick config costs, by batch size, and whether torch.compile pays.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_step_cost.py --batches 2,4,6,10,15
    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_step_cost.py --batches 2,4
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_step_cost.py --compile

Class 1, box masks, the sweep's flags; 6 epochs of which 1 rigid (so mostly flow epochs), CPU and wall seconds.
``--compile`` times forward + backward of both STNs on a batch of 2 at the quick sizes, eager and under
``torch.compile`` (the compilation itself is timed separately).
"""
import argparse
import time
from dataclasses import replace

import torch

from congealing import data, features, neural

parser = argparse.ArgumentParser()
parser.add_argument("--batches", default="2,4")
parser.add_argument("--compile", action="store_true")
args = parser.parse_args()
cfg = neural.NeuralCongealingConfig.for_mode("quick", seed=0, flips=True, gradual_atlas=True, relaxed_rigidity=True)

if args.compile:
    torch.manual_seed(0)
    rigid, flow = neural.RigidSTN(cfg), neural.FlowSTN(cfg)
    x = torch.rand(2, 3, cfg.stn_input_size, cfg.stn_input_size)

    def step(r, f):
        (r(x).sum() + f(x).sum()).backward()

    def per_step_ms(r, f, n=300):
        for _ in range(20):
            step(r, f)
        t = time.process_time()
        for _ in range(n):
            step(r, f)
        return 1000 * (time.process_time() - t) / n

    print(f"eager: {per_step_ms(rigid, flow):.1f} ms per forward + backward")
    t = time.process_time()
    rigid_c, flow_c = torch.compile(rigid), torch.compile(flow)
    step(rigid_c, flow_c)
    print(f"compiling: {time.process_time() - t:.1f} s; compiled: {per_step_ms(rigid_c, flow_c):.1f} ms per forward + backward")
else:
    cub = data.load_cub_class(1)
    prepared = neural.prepare(cub.images, data.cub_box_masks(cub), features.load_backbone("efficientnet_lite0"), cfg)
    for batch in (int(b) for b in args.batches.split(",")):
        short = replace(cfg, epochs=6, bootstrap_epochs=1, update_every=100, checkpoint_every=100, batch_size=batch)
        cpu, wall = time.process_time(), time.perf_counter()
        neural.train(prepared, short)
        print(f"threads {torch.get_num_threads()} batch {batch}: 6 epochs (1 rigid) {time.process_time() - cpu:.2f} s CPU, "
              f"{time.perf_counter() - wall:.2f} s wall", flush=True)
