"""How far SpaceJAM's autoencoder pretraining gets in the quick config's epochs, and what an epoch of it costs.

    PYTHONPATH=src python benchmarks/issue15_diagnostics/sj_ae_pretraining.py 1,2,3 [EPOCHS] ["dict(ae_lr=3e-3)"]

For each CUB class: the quick config's keys (co-segmented masks), the autoencoder pretrained alone for EPOCHS epochs (default
100, seed 0, the schedule of ``SpaceJAMConfig.quick`` with the optional overrides), its reconstruction loss after 10, 30, 68 and EPOCHS epochs, and the
CPU seconds of one pretraining epoch next to one joint epoch (one thread: run with ``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

from congealing import data, features, spacejam


def main() -> None:
    classes = [int(c) for c in sys.argv[1].split(",")]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    backbone = features.load_backbone("efficientnet_lite0")
    overrides = eval(sys.argv[3]) if len(sys.argv) > 3 else {}  # a dict of config fields, from the command line
    config = spacejam.SpaceJAMConfig.for_mode("quick", seed=0, **overrides)
    for cls in classes:
        keys, masks = spacejam.prepare_keys(data.load_cub_class(cls).images, backbone, config)
        cpu = time.process_time()
        result = spacejam.train(keys, masks, replace(config, ae_epochs=epochs, epochs=2))
        cpu = time.process_time() - cpu
        per_ae = result.seconds["ae"] / epochs
        marks = [e for e in (10, 30, 68, epochs) if e <= epochs]
        print(f"class {cls}: reconstruction loss " + ", ".join(f"{result.ae_losses[e - 1]:.3f} after {e}" for e in marks)
              + f"; s per epoch (wall, one thread): pretraining {per_ae:.2f}, joint {result.seconds['joint'] / 2:.2f} (process CPU {cpu:.0f} s)")


if __name__ == "__main__":
    main()
