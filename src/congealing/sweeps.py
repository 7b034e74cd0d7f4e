"""Readers of the recorded quick-mode sweeps (Chapters 4 and 5, "Quick mode on whole classes").

``benchmarks/issue15_sweep.py`` trains a method with some changes to its quick config on CUB classes
and seeds and appends one JSON line per run; ``benchmarks/records/issue15_quick_cpu.json`` collects
them. :func:`sweep_rows` groups the runs by setting and averages the seeds, :func:`format_sweep`
prints them as a table and :func:`shipped_row` finds the setting the library ships.
:func:`two_core_times` reads one ``benchmarks/records/issue15_two_cores_*.json``, the wall time of
``congeal eval`` per class on both cores of a 2-core machine (``benchmarks/bench_two_cores.py``), and
:func:`two_core_summary` puts the machines' records side by side (:func:`two_core_retime`: one
machine timed twice). :func:`lowest_loss_seeds` asks of a record with each run's final loss whether
keeping the seed whose loss ends lowest picks the better alignment. The PCK in each run is
:func:`congealing.evaluation.evaluate_transfer`'s (box threshold, mean over ordered pairs).
"""
from __future__ import annotations

import json

__all__ = ["SWEEP_BACKBONE", "sweep_rows", "format_sweep", "shipped_row", "two_core_times", "two_core_summary", "two_core_retime",
           "lowest_loss_seeds", "spearman", "by_input_size", "margin"]

#: The backbone of the recorded quick-mode sweep's shipped settings (the offline one, Chapter 3).
SWEEP_BACKBONE = "efficientnet_lite0"


def sweep_rows(record: dict, method: str) -> list[dict]:
    """The settings of a recorded sweep of ``method``, seeds averaged (Chapters 4 and 5, "Quick mode
    on whole classes").

    Args:
        record: ``{"runs": [{"method", "tag", "overrides", "cls", "seed", "pck", "nn", "cpu", "masks"?,
            "backbone"?, "machine"?, "input_size"?}]}`` as ``benchmarks/issue15_sweep.py`` writes them (a run
            without ``masks`` used the co-segmentation, one without ``backbone`` EfficientNet-Lite0, one
            without ``input_size`` the backbone's own input side; ``machine`` labels runs timed on another
            machine than the record's first, whose CPU seconds are not comparable).
        method: the method whose runs to read.

    Returns:
        one row per setting (overrides, masks, backbone, input side and machine): ``overrides``, ``masks``, ``backbone``, ``machine``,
        ``input_size`` (None: the backbone's own), ``pck`` (class -> list over seeds), ``nn``
        (class -> nearest neighbours' PCK), ``cpu`` (class -> CPU seconds of each run), ``mean`` and ``nn_mean``
        (over classes 1-3, or None if one is missing), ``cpu_mean`` (seconds per run on classes 1-3, or on
        every class if none of them ran) and ``seeds``.

    Example:
        >>> run = lambda cls, seed, pck: {"method": "m", "tag": "t", "overrides": {"epochs": 90}, "cls": cls,
        ...                               "seed": seed, "pck": pck, "nn": 50.0, "cpu": 30.0}
        >>> row, = sweep_rows({"runs": [run(1, 0, 40.0), run(1, 1, 50.0), run(2, 0, 60.0), run(3, 0, 75.0)]}, "m")
        >>> row["pck"][1], row["mean"], row["seeds"]  # class 1 averages its seeds: (45 + 60 + 75) / 3
        ([40.0, 50.0], 60.0, 2)
    """
    rows: dict[str, dict] = {}
    for run in record["runs"]:
        if run["method"] != method:
            continue
        masks, backbone, machine = run.get("masks", "cosegment"), run.get("backbone", SWEEP_BACKBONE), run.get("machine", "")
        input_size = run.get("input_size")
        key = json.dumps([run["overrides"], masks, backbone, machine, input_size], sort_keys=True)
        row = rows.setdefault(key, {"tag": run["tag"], "overrides": run["overrides"], "masks": masks, "backbone": backbone, "machine": machine,
                                    "input_size": input_size, "pck": {}, "nn": {}, "cpu": {}})
        row["pck"].setdefault(run["cls"], []).append(run["pck"])
        row["nn"][run["cls"]] = run["nn"]
        row["cpu"].setdefault(run["cls"], []).append(run["cpu"])
    for row in rows.values():
        complete = all(c in row["pck"] for c in (1, 2, 3))
        row["mean"] = sum(_seed_mean(row, c) for c in (1, 2, 3)) / 3 if complete else None
        row["nn_mean"] = sum(row["nn"][c] for c in (1, 2, 3)) / 3 if complete else None
        row["seeds"] = max(len(v) for v in row["pck"].values())
        # Classes differ in size (5 and 6 have fewer images), so the time is quoted on classes 1-3 where it can be.
        timed = [t for c in (1, 2, 3) for t in row["cpu"].get(c, [])] or [t for times in row["cpu"].values() for t in times]
        row["cpu_mean"] = sum(timed) / len(timed)
    return list(rows.values())


def _seed_mean(row: dict, cls: int) -> float:
    return sum(row["pck"][cls]) / len(row["pck"][cls])


def by_input_size(rows: list[dict], own: int) -> dict[int, dict]:
    """:func:`sweep_rows`' rows by the backbone's input side (Chapters 4 and 5, "Quick mode on whole classes").

    Args:
        rows: :func:`sweep_rows`' rows of one setting measured at several input sides.
        own: the backbone's own input side, that of the rows without ``input_size``.

    Returns:
        side -> row.

    Raises:
        ValueError: two rows have the same side (they differ in another setting: filter them first).

    Example:
        >>> run = lambda side, pck: {"method": "m", "tag": "t", "overrides": {}, "cls": 1, "seed": 0, "pck": pck,  # noqa: E731
        ...                          "nn": 50.0, "cpu": 1.0, **({"input_size": side} if side else {})}
        >>> sides = by_input_size(sweep_rows({"runs": [run(None, 40.0), run(384, 55.0)]}, "m"), own=256)
        >>> sorted(sides), sides[384]["pck"]
        ([256, 384], {1: [55.0]})
    """
    sides: dict[int, dict] = {}
    for row in rows:
        side = row["input_size"] or own
        if side in sides:
            raise ValueError(f"two settings at input side {side}: {sides[side]['overrides']} and {row['overrides']}")
        sides[side] = row
    return sides


def margin(row: dict, classes) -> float:
    """How far a :func:`sweep_rows` row is above nearest neighbours, in PCK points: the mean over ``classes``
    of its seed mean minus the baseline (negative: below it) (Chapters 4 and 5, "Quick mode on whole classes").

    Example:
        >>> margin({"pck": {1: [40.0, 50.0], 2: [60.0]}, "nn": {1: 50.0, 2: 50.0}}, (1, 2))
        2.5
    """
    return sum(_seed_mean(row, c) - row["nn"][c] for c in classes) / len(classes)


def format_sweep(rows: list[dict]) -> str:
    """:func:`sweep_rows` as a table: each setting (its changes to the earlier quick config), then
    PCK@0.1 on CUB classes 1-6, the mean over 1-3, nearest neighbours' mean and CPU seconds per
    class (``cpu_mean``) (Chapters 4 and 5, "Quick mode on whole classes").

    Args:
        rows: :func:`sweep_rows`' rows.

    Returns:
        the table (two lines per setting).
    """
    lines = [
        "each setting (its changes to the earlier quick config), then PCK@0.1 on CUB classes 1-6, the mean over 1-3, nearest neighbours' mean, CPU s per class (1-3 where run)",
        f"{'':<4}" + "".join(f"{'c' + str(c):>7}" for c in range(1, 7)) + f"{'mean 1-3':>10}{'NN 1-3':>8}{'CPU s':>7}",
    ]
    for row in rows:
        cells = "".join(f"{_seed_mean(row, c):7.1f}" if c in row["pck"] else f"{'-':>7}" for c in range(1, 7))
        label = (", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "none (the earlier quick config)") + (f" [{row['seeds']} seeds]" if row["seeds"] > 1 else "")
        label += "" if row["masks"] == "cosegment" else f" [masks: {row['masks']}]"
        label += "" if row.get("backbone", SWEEP_BACKBONE) == SWEEP_BACKBONE else f" [backbone: {row['backbone']}]"
        label += f" [input: {row['input_size']} px]" if row.get("input_size") else ""
        label += f" [machine: {row['machine']}]" if row.get("machine") else ""
        means = f"{row['mean']:10.1f}{row['nn_mean']:8.1f}" if row["mean"] is not None else f"{'-':>10}{'-':>8}"
        lines += [label, f"{'':<4}{cells}{means}{row['cpu_mean']:7.0f}"]
    return "\n".join(lines)


def shipped_row(rows: list[dict], shipped) -> dict:
    """The row of :func:`sweep_rows` that is the ``shipped`` config: the one with the most overrides
    that ``shipped`` all has, with co-segmented masks and the offline backbone (:data:`SWEEP_BACKBONE`) at the config's
    ``backbone_input_size`` (None or no such property: the backbone's own side; Chapters 4 and 5, "Quick mode on whole classes"); of rows alike but for the machine,
    the one with the most seeds, then the first recorded.

    Args:
        rows: :func:`sweep_rows`' rows.
        shipped: the config the library ships (e.g. ``SpaceJAMConfig.for_mode("quick")``).

    Returns:
        the row.

    Raises:
        ValueError: no recorded setting is the shipped config.
    """
    matches = [row for row in rows if row["masks"] == "cosegment" and row.get("backbone", SWEEP_BACKBONE) == SWEEP_BACKBONE
               and row.get("input_size") == getattr(shipped, "backbone_input_size", None) and row["overrides"]
               and all(getattr(shipped, k) == (tuple(v) if isinstance(v, list) else v) for k, v in row["overrides"].items())]
    if not matches:
        raise ValueError("no recorded setting is the shipped config; rerun the sweep")
    return max(matches, key=lambda row: (len(row["overrides"]), row["seeds"]))


def two_core_times(record: dict, method: str) -> dict[str, str]:
    """What Chapters 4 and 5 say of ``method``'s time per class on both cores ("Quick mode on whole classes").

    Args:
        record: the JSON of ``benchmarks/bench_two_cores.py`` (``rows`` with ``method``, ``class``,
            ``seconds`` and ``target_seconds``; ``machine``).
        method: the method's name, e.g. ``"spacejam"``.

    Returns:
        ``{"seconds": "67 / 63", "machine": ..., "verdict": ...}``: the wall seconds of each class in the
        record's order, the machine's label, and whether every class is within the target (or which are not).

    Raises:
        ValueError: the record has no row of ``method``.

    >>> record = {"machine": "d", "rows": [{"method": "m", "class": 1, "seconds": 67.4, "target_seconds": 60.0},
    ...                                    {"method": "m", "class": 2, "seconds": 58.0, "target_seconds": 60.0}]}
    >>> two_core_times(record, "m")["verdict"]
    'over the 60-second target on class(es) 1'
    """
    timed = [row for row in record["rows"] if row["method"] == method]
    if not timed:
        raise ValueError(f"the two-core record has no row of {method!r}; rerun benchmarks/bench_two_cores.py --methods {method}")
    over = [str(row["class"]) for row in timed if row["seconds"] > row["target_seconds"]]
    target = f"the {timed[0]['target_seconds']:.0f}-second target"
    return {"seconds": " / ".join(f"{row['seconds']:.0f}" for row in timed), "machine": record["machine"],
            "verdict": f"over {target} on class(es) {', '.join(over)}" if over else f"within {target} on every class"}


def two_core_summary(records: list[dict], method: str) -> dict[str, str]:
    """``method``'s time per class on each machine that was timed, in one sentence's parts
    (Chapters 4 and 5, "Quick mode on whole classes"): machines differ by more than the margins
    of the targets, so the book names each.

    Args:
        records: the JSON of ``benchmarks/bench_two_cores.py`` on each machine, in the order to show.
        method: the method's name, e.g. ``"spacejam"``.

    Returns:
        ``{"seconds": ..., "verdict": ..., "speedup": ..., "first": ..., "last": ...}``: each machine's
        wall seconds per class (:func:`two_core_times`) and its verdict, joined; how many times as fast
        the last machine ran ``method`` as the first (the mean ratio of their seconds over the classes
        both timed); and the first and last machines' labels with the CPU their record names.

    Raises:
        ValueError: no record, or a record without a row of ``method``.

    >>> row = lambda cls, s: {"method": "m", "class": cls, "seconds": s, "target_seconds": 60.0}
    >>> two_core_summary([{"machine": "d", "rows": [row(1, 67.0), row(2, 55.0)]}, {"machine": "e", "rows": [row(1, 40.0), row(2, 38.0)]}], "m")
    {'seconds': '67 / 55 s on machine d, 40 / 38 s on machine e', 'verdict': 'on machine d over the 60-second target on class(es) 1; on machine e within the 60-second target on every class', 'speedup': '1.6', 'first': 'd', 'last': 'e'}
    """
    if not records:
        raise ValueError("no two-core record given; run benchmarks/bench_two_cores.py")
    timed = [two_core_times(record, method) for record in records]
    first, last = ({row["class"]: row["seconds"] for row in record["rows"] if row["method"] == method} for record in (records[0], records[-1]))
    ratios = [first[c] / last[c] for c in first if c in last]
    return {"seconds": ", ".join(f"{t['seconds']} s on machine {t['machine']}" for t in timed),
            "verdict": "; ".join(f"on machine {t['machine']} {t['verdict']}" for t in timed),
            "speedup": f"{sum(ratios) / len(ratios):.1f}",
            **{end: record["machine"] + (f" ({record['cpu']})" if "cpu" in record else "") for end, record in (("first", records[0]), ("last", records[-1]))}}


def two_core_retime(earlier: dict, later: dict, method: str) -> dict[str, str]:
    """One machine timed twice (Chapters 4 and 5, "Quick mode on whole classes"): how much a shared
    virtual machine's wall time moves between two runs of the same code.

    Args:
        earlier, later: two JSON records of ``benchmarks/bench_two_cores.py`` from the same machine.
        method: the method's name, e.g. ``"spacejam"``.

    Returns:
        ``{"earlier": "69 / 63", "later": "48 / 49", "ratio": "1.4"}``: each record's seconds per class
        (:func:`two_core_times`) and the mean ratio of the earlier to the later seconds.

    Raises:
        ValueError: the records name different machines, time other classes, or their PCK differs
            (then it is not the same computation timed twice).

    >>> row = lambda cls, s: {"method": "m", "class": cls, "seconds": s, "target_seconds": 60.0, "pck@0.1": 50.0}
    >>> two_core_retime({"machine": "g", "rows": [row(1, 69.0), row(2, 63.0)]}, {"machine": "g", "rows": [row(1, 48.0), row(2, 49.0)]}, "m")
    {'earlier': '69 / 63', 'later': '48 / 49', 'ratio': '1.4'}
    """
    if earlier["machine"] != later["machine"]:
        raise ValueError(f"records of machines {earlier['machine']!r} and {later['machine']!r}: a retiming compares one machine")
    rows = [{row["class"]: row for row in record["rows"] if row["method"] == method} for record in (earlier, later)]
    if list(rows[0]) != list(rows[1]):
        raise ValueError(f"the records time classes {list(rows[0])} and {list(rows[1])}")
    changed = [c for c in rows[0] if rows[0][c].get("pck@0.1") != rows[1][c].get("pck@0.1")]
    if changed:
        raise ValueError(f"the records' PCK differs on class(es) {changed}: not the same computation timed twice")
    ratios = [rows[0][c]["seconds"] / rows[1][c]["seconds"] for c in rows[0]]
    return {"earlier": two_core_times(earlier, method)["seconds"], "later": two_core_times(later, method)["seconds"],
            "ratio": f"{sum(ratios) / len(ratios):.1f}"}


def lowest_loss_seeds(record: dict, method: str) -> dict[int, dict]:
    """Per class, the seed a "train several, keep the lowest final loss" rule would keep, against all
    the seeds (Chapter 5, "What the loss prefers").

    Args:
        record: ``{"runs": [...]}`` as :func:`sweep_rows` reads them, each run with its ``final_loss``
            (``benchmarks/issue15_sweep.py`` records it).
        method: the method whose runs to read.

    Returns:
        ``{class: {"kept": PCK of the seed with the lowest final loss, "mean": mean PCK over the seeds,
        "best": the highest PCK, "best_loss_rank": where the best seed's loss ranks (1 = lowest),
        "seeds": how many, "spearman": :func:`spearman` of final loss and PCK}}`` (a positive correlation
        means the loss prefers worse alignments).

    Raises:
        ValueError: a class has fewer than 2 runs of ``method``, or a run has no ``final_loss``.

    >>> run = lambda seed, loss, pck: {"method": "m", "cls": 1, "seed": seed, "final_loss": loss, "pck": pck}
    >>> lowest_loss_seeds({"runs": [run(0, 0.30, 40.0), run(1, 0.28, 35.0), run(2, 0.31, 45.0)]}, "m")[1]
    {'kept': 35.0, 'mean': 40.0, 'best': 45.0, 'best_loss_rank': 3, 'seeds': 3, 'spearman': 1.0}
    """
    classes: dict[int, list[dict]] = {}
    for run in record["runs"]:
        if run["method"] == method:
            if "final_loss" not in run:
                raise ValueError(f"run {run.get('tag', '')} class {run['cls']} seed {run['seed']} has no final_loss")
            classes.setdefault(run["cls"], []).append(run)
    out = {}
    for cls, runs in sorted(classes.items()):
        if len(runs) < 2:
            raise ValueError(f"class {cls} has {len(runs)} run(s) of {method}: a choice between seeds needs at least 2")
        runs = sorted(runs, key=lambda r: r["seed"])
        loss_rank = _ranks([r["final_loss"] for r in runs])
        n = len(runs)
        best = max(range(n), key=lambda i: runs[i]["pck"])
        out[cls] = {"kept": runs[loss_rank.index(0)]["pck"], "mean": round(sum(r["pck"] for r in runs) / n, 2),
                    "best": runs[best]["pck"], "best_loss_rank": loss_rank[best] + 1, "seeds": n,
                    "spearman": round(spearman([r["final_loss"] for r in runs], [r["pck"] for r in runs]), 2)}
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation of ``xs`` and ``ys``: Pearson's correlation of their ranks, tied values
    sharing their average rank (Chapter 5, "What the loss prefers"); NaN if either is constant.

    >>> spearman([0.3, 0.1, 0.2], [40.0, 60.0, 50.0]), round(spearman([1, 2, 3, 4], [1, 1, 2, 2]), 3)
    (-1.0, 0.894)
    """
    def average_ranks(values):
        ordered = sorted(values)
        return [ordered.index(v) + (ordered.count(v) - 1) / 2 for v in values]

    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    spread = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / spread if spread else float("nan")


def _ranks(values: list[float]) -> list[int]:
    """0-based ranks of ``values`` (ties in their order)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks
