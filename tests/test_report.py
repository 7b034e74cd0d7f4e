"""The alignment report (congealing.report): its scores, transform descriptions, exported mappings
and documented summary, checked against independent computations."""
from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
import torch

from congealing import report, report_page, report_scores, warps


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    cov = np.average((x - mx) * (y - my), weights=w)
    return cov / math.sqrt(np.average((x - mx) ** 2, weights=w) * np.average((y - my) ** 2, weights=w))


def test_agreement_is_the_weighted_correlation_with_the_other_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=generator)
    weights = (torch.rand(4, 1, 16, 16, generator=generator) > 0.3).float()
    got = report_scores.agreement(images, weights, side=16)
    x, w = images.numpy().astype(np.float64), weights.numpy().astype(np.float64)
    for n in range(4):
        others = [k for k in range(4) if k != n]
        mean_others = sum(w[k] * x[k] for k in others) / np.maximum(sum(w[k] for k in others), 1e-6)
        pixel_weight = np.broadcast_to(w[n] * sum(w[k] for k in others) / 3, x[n].shape)
        assert got[n].item() == pytest.approx(weighted_pearson(x[n].ravel(), mean_others.ravel(), pixel_weight.ravel()), abs=1e-5)


def test_agreement_rises_when_shifted_copies_are_aligned():
    blob = torch.zeros(1, 3, 32, 32)
    blob[..., 10:20, 12:22] = 1.0
    shifts = warps.exp(torch.tensor([[0.3, 0.0], [-0.2, 0.25], [0.0, -0.3], [0.15, 0.15]]), "translation")
    shifted = warps.warp_image(blob.expand(4, -1, -1, -1), shifts)
    before = report_scores.agreement(shifted).mean()
    after = report_scores.agreement(warps.warp_image(shifted, warps.invert(shifts))).mean()
    assert after > 0.99 and before < 0.5


def test_transform_in_words_matches_the_matrix_it_came_from():
    angle, scale = math.radians(30.0), 1.5
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    T = torch.eye(3, dtype=torch.float64)
    T[:2, :2] = scale * rotation @ torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))  # mirror first, then turn and grow
    T[:2, 2] = torch.tensor([0.2, -0.1])
    row = report_page.describe_transforms(T[None])[0]
    assert row["mirrored"] and row["rotation_deg"] == pytest.approx(30.0, abs=1e-3)  # +x turns towards +y (down): clockwise on screen
    assert row["scale"] == pytest.approx(1.5, abs=1e-4) and row["stretch"] == pytest.approx(1.0, abs=1e-4)
    assert (row["shift_x"], row["shift_y"]) == pytest.approx((0.1, -0.05))
    assert row["words"] == "mirrored, turned 30° clockwise, enlarged ×1.50, moved 10% right, 5% up"


def test_grids_are_described_by_the_transform_they_sample():
    T = warps.exp(torch.tensor([[0.1, 0.2, 0.05, 0.1, -0.05, 0.02]]), "affine")
    grid = warps.sampling_grid(T, (16, 16))  # aligned -> input, the grid of the warp by T
    from_grid, from_matrix = report_page.describe_grids(grid)[0], report_page.describe_transforms(T)[0]
    for key in ("rotation_deg", "scale", "stretch", "shift_x", "shift_y"):
        assert from_grid[key] == pytest.approx(from_matrix[key], abs=2e-3), key
    assert from_grid["nonrigid"] < 1e-4


def test_exported_grids_keep_small_grids_and_shrink_large_ones():
    small = warps.identity_grid((8, 8), 2)
    assert torch.allclose(report.export_grids(small), small, atol=1e-5)
    assert report.export_grids(warps.identity_grid((128, 128), 1)).shape == (1, report.BROWSER_GRID, report.BROWSER_GRID, 2)
    mapped = report.browser_mappings(64, grids=small)
    assert mapped["kind"] == "grids" and (mapped["h"], mapped["w"]) == (8, 8) and len(mapped["grids"][1]) == 8 * 8 * 2


def test_every_summary_field_must_be_documented():
    with pytest.raises(KeyError, match="surprise"):
        report.field_documentation({"method": "lsq", "surprise": 1})


def test_report_folder_documents_scores_and_mappings(tmp_path):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 24, 24, generator=generator)
    T = warps.exp(torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.1], [-0.1, -0.1, -0.2]]), "se2")
    T[2] = T[2] @ warps.hflip(True, 1)[0]
    out = report.write_alignment(
        tmp_path / "report", method="lsq", names=["a.png", "b.jpg", "c.png"], inputs=images, aligned=warps.warp_image(images, T),
        atlas={"mean": images.mean(0)}, mode="quick", transforms=T, summary={"seconds": 1.0},
        masks=torch.ones(3, 1, 12, 12), objective={"name": "squared error", "before": 2.0, "after": 1.0, "better": "lower"},
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["fields"]) == set(summary)
    assert [row["mirrored"] for row in summary["per_image"]] == [False, False, True]
    assert all(-1 <= row["agreement"] <= 1 and "words" in row["transform"] for row in summary["per_image"])
    assert summary["verdict"]["objective"]["before"] == 2.0 and summary["verdict"]["warnings"]  # 3 images: too few
    script = (out / "mappings.js").read_text()
    exported = json.loads(script.removeprefix("window.CONGEAL_MAPPINGS = ").rstrip().removesuffix(";"))
    assert torch.allclose(torch.tensor(exported["transforms"]).view(3, 3, 3), T, atol=1e-6)
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "summary.json" in links and "mappings.js" in links and "report.js" in links
    assert not [link for link in links if ":" in link], "the page must not load anything from the network"
    for name in ("report.js", "report.css", "mean_inputs.png", "mean_aligned.png", "masks/a_png.png"):
        assert (out / name).exists(), name


def test_congeal_align_shows_a_progress_bar_from_the_start(tmp_path, capsys):
    from congealing import align, classical
    from congealing.data import ImageSet

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    align.align(ImageSet(images, ["a.png", "b.png", "c.png"]), align.AlignRequest(method="lsq", out=tmp_path / "out", mode="quick", device="cpu"))
    stderr = capsys.readouterr().err
    iterations = classical.LSQConfig.for_mode("quick").iterations
    assert stderr.index("congeal align lsq: starting") < stderr.index("congeal align lsq: aligning")
    assert f"{iterations}/{iterations}" in stderr and "writing the report" in stderr
    # stderr is not a terminal here: plain lines, no redraws, at most ten lines a stage
    assert "\r" not in stderr and len(stderr.splitlines()) <= 4 + 10


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_is_redrawn_in_place_on_a_terminal():
    terminal = _Terminal()
    bar = report.AlignProgress("lsq", file=terminal)
    bar.stage("aligning", 3)
    for done in (1, 2, 3):
        bar.step(done, 3)
    bar.close()
    assert bar.interactive and "\r" in terminal.getvalue() and "congeal align lsq: aligning" in terminal.getvalue()


def test_descriptor_agreement_is_the_mean_cosine_with_the_other_images():
    generator = torch.Generator().manual_seed(3)
    descriptors = torch.randn(3, 5, 6, 6, generator=generator)
    weights = (torch.rand(3, 1, 6, 6, generator=generator) > 0.4).float()
    got = report_scores.descriptor_agreement(descriptors, weights)
    d = descriptors.numpy().astype(np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    w = weights.numpy().astype(np.float64)[:, 0]
    for n in range(3):
        others = [k for k in range(3) if k != n]
        mean = sum(w[k][None] * d[k] for k in others)
        cosine = (d[n] * mean).sum(0) / np.maximum(np.linalg.norm(mean, axis=0), 1e-12)
        weight = w[n] * sum(w[k] for k in others) / 2
        assert got[n].item() == pytest.approx((weight * cosine).sum() / weight.sum(), abs=1e-4)


@pytest.mark.parametrize("undo, status", [(True, "good"), (False, "bad")])
def test_verdict_says_whether_the_set_became_more_consistent(tmp_path, undo, status):
    blob = torch.zeros(1, 3, 32, 32)
    blob[..., 10:20, 12:22] = 1.0
    shifts = warps.exp(torch.tensor([[0.3, 0.0], [-0.2, 0.25], [0.0, -0.3], [0.15, 0.15]]), "translation")
    centred = blob.expand(4, -1, -1, -1)
    inputs, transforms = (warps.warp_image(centred, shifts), warps.invert(shifts)) if undo else (centred, shifts)
    out = report.write_alignment(
        tmp_path / "report", method="lsq", names=[f"{k}.png" for k in range(4)], inputs=inputs, aligned=warps.warp_image(inputs, transforms),
        atlas={"mean": inputs.mean(0)}, mode="quick", transforms=transforms,
    )
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    assert verdict["status"] == status, verdict
    assert (verdict["agreement_after"] > verdict["agreement_before"]) == undo


def test_a_set_made_consistent_by_squeezing_is_not_called_good():
    from congealing.report import _warn_if_squeezed
    from congealing.report_page import describe_transforms

    squeeze = torch.diag(torch.tensor([0.4, 0.4, 1.0]))  # every image shrunk to 16 % of its area
    moves = describe_transforms(torch.stack([squeeze, squeeze, torch.eye(3)]))
    verdict = {"status": "good", "headline": "The alignment made the set clearly more consistent.", "warnings": []}
    _warn_if_squeezed(verdict, moves, ["a.png", "b.png", "c.png"])
    assert verdict["status"] == "unclear" and verdict["squeezed"] == ["a.png", "b.png"]
    assert "2 of 3 images" in verdict["warnings"][0]
    honest = {"status": "good", "headline": "x", "warnings": []}
    _warn_if_squeezed(honest, describe_transforms(torch.eye(3).repeat(3, 1, 1)), ["a.png", "b.png", "c.png"])
    assert honest == {"status": "good", "headline": "x", "warnings": []}
