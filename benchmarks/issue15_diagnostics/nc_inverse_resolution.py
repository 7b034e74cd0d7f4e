"""Neural Congealing's keypoint transfer: at which resolution is the flow inverted?

    PYTHONPATH=src python benchmarks/issue15_diagnostics/nc_inverse_resolution.py 1 --seed 0 [--set stn_reads='keys' ...]

Trains the quick config as the sweep does (flips, gradual atlas, relaxed rigidity, box masks), then scores
PCK@0.1 (box threshold, as ``congeal eval``) with the flow grid ``Id + delta`` inverted by nearest neighbours
on the atlas grid itself (``TrainResult.transfer``: 32 x 32 in quick mode, 8 px of a 256-px image per cell)
and on the same grid bilinearly resampled to 64, 128 and 256 (the official inversion is on its 128-px
atlas: 2 px per cell). Prints one JSON line.
"""
import argparse, json, time

from congealing import data, neural, warps
from congealing.evaluation import evaluate_transfer
from nc_run import quick_class_run

args, overrides, cub, backbone, config = quick_class_run(argparse.ArgumentParser())
size = tuple(cub.images.shape[-2:])
cpu = time.process_time()
alignment = neural.fit(cub.images, config, masks=data.cub_box_masks(cub), backbone=backbone, device="cpu")
cpu = time.process_time() - cpu
result = alignment.state["result"]
outputs = result.outputs()
row = {"cls": args.cls, "seed": args.seed, "overrides": overrides, "cpu": round(cpu, 1)}


def transfer_at(resolution):
    out = {k: v.cpu() for k, v in outputs.items()}
    flow_grid = warps.identity_grid(out["delta"].shape[1:3], len(result.data)) + out["delta"]
    if resolution != flow_grid.shape[1]:
        flow_grid = warps.resize_grid(flow_grid, resolution)
    T_inv = neural.similarity_inverse(out["T"])
    grids, flipped = result.grids(outputs).cpu(), result.flipped.cpu()

    def transfer(src, tgt, points):
        p = warps.pixel_to_normalized(points.float().cpu()[None], size)
        if flipped[src]:
            p = p * p.new_tensor([-1.0, 1.0])
        q = warps.transform_points(T_inv[src : src + 1], p)
        atlas_point = warps.invert_grid_points(q, flow_grid[src : src + 1])
        return warps.normalized_to_pixel(warps.grid_points(atlas_point, grids[tgt : tgt + 1]), size)[0]

    transfer.flipped = flipped.clone()
    return transfer


def pck(transfer):
    return round(100 * evaluate_transfer(transfer, cub, alphas=(0.1,), n_boot=1)["pck"]["0.1"]["mean"], 1)


row["shipped_transfer"] = pck(alignment.transfer())
for resolution in (outputs["delta"].shape[1], 64, 128, 256):
    row[f"inverse_{resolution}"] = pck(transfer_at(resolution))
print(json.dumps(row), flush=True)
