"""Would "train several seeds, keep the lowest loss" pick SpaceJAM's better alignments? Read from sweep records
(one setting; their runs pooled) whose runs carry every epoch's loss (``benchmarks/issue15_sweep.py`` writes ``losses``).

    python benchmarks/issue15_diagnostics/sj_loss_select.py benchmarks/records/issue15_sj_384_losses_e.json [MORE.json ...] [EPOCH ...]

For the loss at the end of each curriculum stage of the quick config, the final epoch's and each EPOCH's (1 = the
first joint epoch), per class: Spearman's
rank correlation of that loss with the final PCK@0.1 over the seeds (negative: the lower loss, the better
alignment), and the mean PCK a rule "keep the lowest loss of k seeds" would get over every k-subset of the seeds,
against the mean over seeds (k = 1).
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from congealing import spacejam
from congealing.sweeps import spearman


def main(*args: str) -> int:
    paths, epochs = [a for a in args if a.endswith(".json")], [a for a in args if not a.endswith(".json")]
    runs = [run for path in paths for run in json.loads(Path(path).read_text())["runs"] if run["method"] == "spacejam" and "losses" in run]
    overrides = runs[0]["overrides"]
    assert all(run["overrides"] == overrides for run in runs), "one setting per record"
    config = spacejam.SpaceJAMConfig.for_mode("quick")
    if "epochs" in overrides:  # as issue15_sweep.py does: every epoch-based schedule rescaled
        config = config.scaled(ae_epochs=overrides.get("ae_epochs", config.ae_epochs), epochs=overrides["epochs"])
    checkpoints = {f"end of {group}": epoch - 1 for group, epoch in zip(config.curriculum_groups, config.curriculum_epochs)}
    checkpoints["final"] = config.epochs - 1
    checkpoints.update({f"epoch {int(e)}": int(e) - 1 for e in epochs})  # more epochs to compare at (1 = the first)
    by_class: dict[int, list[dict]] = {}
    for run in runs:
        by_class.setdefault(run["cls"], []).append(run)
    print(f"{'class':>5} {'seeds':>5} {'NN':>5} {'mean':>5} | " + " | ".join(f"{name:^24}" for name in checkpoints))
    print(f"{'':>5} {'':>5} {'':>5} {'':>5} | " + " | ".join(f"{'rho':>6} {'best-of-2':>9} {'of-3':>6}" for _ in checkpoints))
    kept: dict[str, dict[int, dict[int, float]]] = {name: {2: {}, 3: {}} for name in checkpoints}  # checkpoint -> k -> class -> PCK
    means = {}
    for cls, group in sorted(by_class.items()):
        pcks = [run["pck"] for run in group]
        means[cls] = sum(pcks) / len(pcks)
        cells = []
        for name, epoch in checkpoints.items():
            losses = [run["losses"][epoch] for run in group]
            for k in (2, 3):
                picks = [min(subset)[1] for subset in itertools.combinations(zip(losses, pcks), k)]
                kept[name][k][cls] = sum(picks) / len(picks) if picks else float("nan")
            cells.append(f"{spearman(losses, pcks):6.2f} {kept[name][2][cls]:9.1f} {kept[name][3][cls]:6.1f}")
        print(f"{cls:5d} {len(group):5d} {group[0]['nn']:5.1f} {means[cls]:5.1f} | " + " | ".join(cells))
    development = [c for c in means if c <= 3]  # the classes every quick setting was chosen on
    for label, classes in (("1-3", development), ("other", [c for c in means if c not in development])):
        if classes:
            average = lambda values: sum(values[c] for c in classes) / len(classes)  # noqa: E731
            nn = sum(by_class[c][0]["nn"] for c in classes) / len(classes)
            print(f"{label:>5} {'':>5} {nn:5.1f} {average(means):5.1f} | "
                  + " | ".join(f"{'':6} {average(kept[name][2]):9.1f} {average(kept[name][3]):6.1f}" for name in checkpoints))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
