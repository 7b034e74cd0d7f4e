"""The readers of recorded sweeps (:mod:`congealing.sweeps`)."""
from dataclasses import dataclass

import pytest

from congealing import sweeps


def test_sweep_rows_average_seeds_and_find_the_shipped_config():
    @dataclass(frozen=True)
    class Config:
        epochs: int = 60
        pools: tuple = (26, 8)

    run = lambda overrides, cls, seed, pck: {"method": "m", "tag": "t", "overrides": overrides, "cls": cls, "seed": seed, "pck": pck, "nn": 50.0, "cpu": 10.0}  # noqa: E731
    record = {"runs": [
        run({}, 1, 0, 20.0),
        run({"epochs": 60}, 1, 0, 30.0), run({"epochs": 60}, 1, 1, 40.0), run({"epochs": 60}, 2, 0, 50.0), run({"epochs": 60}, 3, 0, 60.0),
        run({"epochs": 60, "pools": [26, 8]}, 1, 0, 10.0), run({"epochs": 60, "pools": [26, 8]}, 2, 0, 20.0), run({"epochs": 60, "pools": [26, 8]}, 3, 0, 30.0),
        run({"epochs": 90}, 1, 0, 99.0),
        # the same setting timed on another machine: its own row, not a second seed
        dict(run({"epochs": 90}, 1, 0, 11.0), machine="b"),
        # another backbone, same settings as the shipped row: its own row, never the shipped one
        *[dict(run({"epochs": 60, "pools": [26, 8]}, c, 0, 90.0), backbone="efficientnet_lite1") for c in (1, 2, 3)],
        # the backbone at another input side: its own row, never the shipped one
        *[dict(run({"epochs": 60, "pools": [26, 8]}, c, s, 80.0), input_size=384) for c in (1, 2, 3) for s in (0, 1, 2)],
    ]}
    rows = sweeps.sweep_rows(record, "m")
    shipped = sweeps.shipped_row(rows, Config())
    assert shipped["overrides"] == {"epochs": 60, "pools": [26, 8]}  # the most specific setting the config has
    assert shipped["mean"] == pytest.approx(20.0) and shipped["nn_mean"] == pytest.approx(50.0)
    table = sweeps.format_sweep(rows)
    assert "epochs=60 [2 seeds]" in table and "35.0" in table  # seeds 0 and 1 of class 1 averaged
    assert [row["mean"] for row in rows][:2] == [None, pytest.approx((35.0 + 50.0 + 60.0) / 3)]  # class 1 alone has no mean
    assert rows[-2]["backbone"] == "efficientnet_lite1" and rows[-2]["mean"] == pytest.approx(90.0)
    assert "pools=[26, 8] [backbone: efficientnet_lite1]" in table
    resized, = (row for row in rows if row["input_size"] == 384)
    assert resized["mean"] == pytest.approx(80.0) and resized["seeds"] == 3 and "pools=[26, 8] [3 seeds] [input: 384 px]" in table
    assert [row["pck"] for row in rows if row["overrides"] == {"epochs": 90}] == [{1: [99.0]}, {1: [11.0]}]
    assert "epochs=90 [machine: b]" in table
    held_out = sweeps.sweep_rows({"runs": [run({}, 1, 0, 1.0), run({}, 2, 0, 1.0), run({}, 3, 0, 1.0), dict(run({}, 5, 0, 1.0), cpu=100.0)]}, "m")
    assert held_out[0]["cpu_mean"] == pytest.approx(10.0)  # time quoted on classes 1-3, not on a held-out class
    assert sweeps.sweep_rows({"runs": [dict(run({}, 5, 0, 1.0), cpu=100.0)]}, "m")[0]["cpu_mean"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="shipped config"):
        sweeps.shipped_row(rows, Config(epochs=10, pools=(1, 1)))
    # the shipped setting rerun on another machine with fewer seeds, recorded first: the row with more seeds stays the shipped one
    elsewhere = [dict(run({"epochs": 60, "pools": [26, 8]}, c, 0, 70.0), machine="e") for c in (1, 2, 3)]
    both = sweeps.sweep_rows({"runs": elsewhere + [run({"epochs": 60, "pools": [26, 8]}, c, s, 20.0) for c in (1, 2, 3) for s in (0, 1)]}, "m")
    assert sweeps.shipped_row(both, Config())["machine"] == ""
    # a config that reads its descriptors at another side is shipped only by the rows at that side
    @dataclass(frozen=True)
    class SizedConfig(Config):
        input_size: int = 384

        @property
        def backbone_input_size(self):  # as SpaceJAMConfig's: None for 0, the backbone's own side
            return self.input_size or None

    assert sweeps.shipped_row(rows, SizedConfig())["input_size"] == 384 and sweeps.shipped_row(rows, SizedConfig())["mean"] == pytest.approx(80.0)
    assert sweeps.shipped_row(rows, SizedConfig(input_size=0))["mean"] == pytest.approx(20.0)  # 0: the backbone's own side
    with pytest.raises(ValueError, match="shipped config"):
        sweeps.shipped_row(rows, SizedConfig(input_size=512))


def test_two_core_times_name_the_classes_over_the_target():
    row = lambda method, cls, seconds: {"method": method, "class": cls, "seconds": seconds, "target_seconds": 60.0}  # noqa: E731
    record = {"machine": "d", "rows": [row("a", 1, 67.5), row("a", 2, 59.0), row("a", 3, 62.8), row("b", 1, 30.0)]}
    assert sweeps.two_core_times(record, "a") == {"seconds": "68 / 59 / 63", "machine": "d", "verdict": "over the 60-second target on class(es) 1, 3"}
    assert sweeps.two_core_times(record, "b")["verdict"] == "within the 60-second target on every class"
    with pytest.raises(ValueError, match="no row of 'c'"):
        sweeps.two_core_times(record, "c")


def test_two_core_summary_names_every_machine_in_order():
    row = lambda cls, seconds: {"method": "a", "class": cls, "seconds": seconds, "target_seconds": 300.0}  # noqa: E731
    slow, fast = {"machine": "d", "rows": [row(1, 310.0), row(2, 250.0)]}, {"machine": "e", "rows": [row(1, 150.0), row(2, 140.0)]}
    summary = sweeps.two_core_summary([slow, fast], "a")
    assert summary["seconds"] == "310 / 250 s on machine d, 150 / 140 s on machine e"
    assert summary["verdict"] == "on machine d over the 300-second target on class(es) 1; on machine e within the 300-second target on every class"
    assert summary["speedup"] == "1.9"  # (310 / 150 + 250 / 140) / 2
    assert (summary["first"], summary["last"]) == ("d", "e")  # no CPU in either record
    fast["cpu"] = "AMD EPYC, family 26 model 2, 2 cores, AVX-512"
    assert sweeps.two_core_summary([slow, fast], "a")["last"] == "e (AMD EPYC, family 26 model 2, 2 cores, AVX-512)"
    assert sweeps.two_core_summary([fast, slow], "a")["seconds"].startswith("150 / 140 s on machine e")
    with pytest.raises(ValueError, match="no two-core record"):
        sweeps.two_core_summary([], "a")


def test_two_core_retime_compares_one_computation_on_one_machine():
    row = lambda cls, s, pck=50.0: {"method": "a", "class": cls, "seconds": s, "target_seconds": 60.0, "pck@0.1": pck}  # noqa: E731
    earlier = {"machine": "g", "rows": [row(1, 69.3), row(2, 63.1), row(3, 61.6)]}
    later = {"machine": "g", "rows": [row(1, 50.0), row(2, 49.9), row(3, 45.3)]}
    assert sweeps.two_core_retime(earlier, later, "a") == {"earlier": "69 / 63 / 62", "later": "50 / 50 / 45", "ratio": "1.3"}
    with pytest.raises(ValueError, match="one machine"):
        sweeps.two_core_retime(earlier, dict(later, machine="f"), "a")
    with pytest.raises(ValueError, match="PCK differs on class"):
        sweeps.two_core_retime(earlier, {"machine": "g", "rows": [row(1, 50.0), row(2, 49.9, pck=51.0), row(3, 45.3)]}, "a")
    with pytest.raises(ValueError, match="classes"):
        sweeps.two_core_retime(earlier, {"machine": "g", "rows": [row(1, 50.0)]}, "a")


def test_lowest_loss_seeds_keeps_the_lowest_loss_and_ranks_it_against_pck():
    run = lambda cls, seed, loss, pck: {"method": "a", "cls": cls, "seed": seed, "final_loss": loss, "pck": pck}  # noqa: E731
    runs = [run(1, 0, 0.2, 50.0), run(1, 1, 0.1, 60.0), run(1, 2, 0.3, 40.0),  # the loss ranks the alignments rightly
            run(2, 0, 0.2, 50.0), run(2, 1, 0.1, 40.0), run(2, 2, 0.3, 60.0),  # ... and wrongly
            {"method": "b", "cls": 1, "seed": 0, "pck": 1.0}]
    picked = sweeps.lowest_loss_seeds({"runs": runs}, "a")
    assert picked[1] == {"kept": 60.0, "mean": 50.0, "best": 60.0, "best_loss_rank": 1, "seeds": 3, "spearman": -1.0}
    assert picked[2]["kept"] == 40.0 and picked[2]["best_loss_rank"] == 3 and picked[2]["spearman"] == 1.0  # it prefers the worst
    with pytest.raises(ValueError, match="at least 2"):
        sweeps.lowest_loss_seeds({"runs": runs[:1]}, "a")
    with pytest.raises(ValueError, match="no final_loss"):
        sweeps.lowest_loss_seeds({"runs": runs}, "b")


def test_by_input_size_keys_rows_by_side_and_refuses_two_at_one_side():
    run = lambda overrides, side, pck: {"method": "m", "tag": "t", "overrides": overrides, "cls": 1, "seed": 0, "pck": pck,  # noqa: E731
                                        "nn": 50.0, "cpu": 1.0, **({"input_size": side} if side else {})}
    rows = sweeps.sweep_rows({"runs": [run({}, None, 40.0), run({}, 384, 55.0), run({"loss_size": 32}, 384, 45.0)]}, "m")
    with pytest.raises(ValueError, match="two settings at input side 384"):
        sweeps.by_input_size(rows, own=256)
    sides = sweeps.by_input_size([row for row in rows if row["overrides"] == {}], own=256)
    assert {side: row["pck"][1] for side, row in sides.items()} == {256: [40.0], 384: [55.0]}
    assert sweeps.margin(sides[384], (1,)) == pytest.approx(5.0) and sweeps.margin(sides[256], (1,)) == pytest.approx(-10.0)
