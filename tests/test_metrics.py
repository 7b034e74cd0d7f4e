"""The PCK metric, bootstrap and box IoU on synthetic inputs with known answers."""
import math

import pytest
import torch

from congealing import metrics


def test_pck_boundary_is_inclusive():
    target = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[10.0, 0.0], [0.0, 10.0001], [6.0, 8.0]]])  # distances 10, 10.0001, 10
    correct = metrics.correct_keypoints(pred, target, torch.tensor([100.0]), alpha=0.1)
    assert correct.tolist() == [[True, False, True]]


def test_pck_counts_only_visible_keypoints():
    target = torch.zeros(2, 2, 2)
    pred = torch.tensor([[[0.0, 0.0], [50.0, 0.0]], [[50.0, 0.0], [0.0, 0.0]]])
    visible = torch.tensor([[True, False], [True, True]])
    assert metrics.pck(pred, target, visible, torch.tensor([100.0, 100.0]), 0.1) == pytest.approx(2 / 3)
    assert math.isnan(metrics.pck(pred, target, torch.zeros(2, 2, dtype=torch.bool), torch.tensor([1.0, 1.0]), 0.1))


def test_known_shift_gives_computed_fraction():
    # 100 keypoints on a line, each predicted d_k = k px away; threshold 0.1 * 200 = 20 px -> k = 0..20 correct.
    k = torch.arange(100, dtype=torch.float32)
    target = torch.zeros(1, 100, 2)
    pred = torch.stack([k, torch.zeros(100)], dim=-1)[None]
    visible = torch.ones(1, 100, dtype=torch.bool)
    assert metrics.pck(pred, target, visible, torch.tensor([200.0]), 0.1) == pytest.approx(21 / 100)
    assert metrics.pck(pred, target, visible, torch.tensor([200.0]), 0.05) == pytest.approx(11 / 100)


def test_per_pair_and_per_part():
    correct = torch.tensor([[True, True, False], [False, False, False]])
    visible = torch.tensor([[True, True, True], [True, False, False]])
    assert metrics.pck_per_pair(correct, visible).tolist() == pytest.approx([2 / 3, 0.0])
    assert metrics.pck_per_part(correct, visible).tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean(device):
    generator = torch.Generator().manual_seed(1)
    n = 12
    pairs = torch.tensor([(i, j) for i in range(n) for j in range(n) if i != j])
    values = torch.rand(pairs.shape[0], generator=generator)
    low, high = metrics.pair_bootstrap_ci(values, pairs, n, n_boot=500, seed=3)
    assert (low, high) == pytest.approx(metrics.pair_bootstrap_ci(values.to(device), pairs.to(device), n, n_boot=500, seed=3))
    assert (low, high) == metrics.pair_bootstrap_ci(values, pairs, n, n_boot=500, seed=3)
    assert low < float(values.mean()) < high
    assert high - low < 0.3


def test_bootstrap_skips_nan_and_rejects_bad_shapes():
    pairs = torch.tensor([[0, 1], [1, 0]])
    assert metrics.pair_bootstrap_ci(torch.tensor([0.5, math.nan]), pairs, 2, n_boot=50) == (0.5, 0.5)
    assert all(math.isnan(v) for v in metrics.pair_bootstrap_ci(torch.tensor([0.5, 0.5]), pairs, 2, n_boot=0))
    with pytest.raises(ValueError, match="pairs"):
        metrics.pair_bootstrap_ci(torch.zeros(3), pairs, 2)


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [2.0, 2.0, 3.0, 3.0]])
    assert metrics.box_iou(a, b).tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_mask_to_box_at_image_scale(device):
    masks = torch.zeros(2, 1, 8, 8, device=device)
    masks[0, 0, 2:5, 1:7] = 1
    boxes = metrics.mask_to_box(masks, size=32)  # each mask cell is 4 x 4 image pixels
    assert boxes.device == masks.device
    assert boxes[0].tolist() == [4.0, 8.0, 27.0, 19.0]
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]
