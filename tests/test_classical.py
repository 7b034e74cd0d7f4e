"""Classical congealing on real MNIST digits: known transforms recovered, objectives fall, bad input."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from congealing import classical, cli, data, warps
from congealing import mnist as ground_truth  # the fixture below is called mnist

pytestmark = pytest.mark.slow  # loads the real MNIST test set


@pytest.fixture(scope="module")
def mnist(data_root):
    images, labels = data.load_mnist(data_root, download=False)
    return images, labels


def copies_of_one_digit(digit: torch.Tensor, count: int, seed: int, translation=2.0, rotation=10.0):
    """``count`` copies of one real digit under known random translations/rotations (exact ground truth:
    any difference left after congealing is misalignment, not shape variation)."""
    perturbation = ground_truth.Perturbation(translation=translation, rotation=rotation, log_scale=0.0, log_aspect=0.0, shear=0.0)
    return ground_truth.perturb(digit.expand(count, -1, -1, -1), perturbation, seed=seed)


def error_px(learned, known, size=(36, 36)):
    return ground_truth.residual_alignment_error(warps.compose(learned, known), size, (28, 28))


@pytest.mark.parametrize("method", ["lsq", "ic-lsq", "entropy"])
def test_known_transforms_are_recovered_on_a_real_digit(mnist, method):
    images, labels = mnist
    digit = images[labels == 3][:1]
    stack, known = copies_of_one_digit(digit, 24, seed=1)
    config = classical.CONFIGS[method](iterations=30)
    result = classical.congeal(stack, method, config)
    before, after = error_px(warps.identity(24), known), error_px(result.transforms, known)
    assert before.mean() > 2.0
    # Gauss-Newton converges to sub-pixel; entropy coordinate descent stops at its smallest step.
    assert after.mean() < (0.3 if method != "entropy" else 0.6), (before.mean(), after.mean())
    assert result.history["objective"][-1] < 0.7 * result.history["objective"][0]


def test_entropy_falls_on_real_digits_and_funnel_aligns_unseen_ones(mnist):
    images, labels = mnist
    twos = images[labels == 2]
    train, train_known = ground_truth.perturb(twos[:60], ground_truth.Perturbation(), seed=0)
    result = classical.congeal_entropy(train, classical.EntropyConfig(iterations=20))
    entropy = result.history["objective"]
    assert entropy[-1] < 0.8 * entropy[0]
    assert all(b <= a * 1.01 for a, b in zip(entropy, entropy[1:])), "entropy should (almost) never rise"
    new, _ = ground_truth.perturb(twos[60:80], ground_truth.Perturbation(), seed=1)
    transforms, aligned = classical.funnel_align(result.funnel, new)
    assert classical.pixel_stack_entropy(aligned).sum() < 0.85 * classical.pixel_stack_entropy(new).sum()
    # Exact ground truth for the funnel: each of three unseen digits, in 8 known poses, must come
    # out in (nearly) one pose.
    errors = []
    for index in (80, 81, 82):
        poses, known = ground_truth.perturb(twos[index : index + 1].expand(8, -1, -1, -1), ground_truth.Perturbation(), seed=2)
        transforms, _ = classical.funnel_align(result.funnel, poses)
        errors.append((error_px(warps.identity(8), known).mean(), error_px(transforms, known).mean()))
    before, after = torch.tensor(errors).mean(0)
    assert after < 0.6 * before, errors
    # Images do not interact in the funnel: one at a time gives the same answer as all together.
    single, _ = classical.funnel_align(result.funnel, poses[:1])
    assert torch.allclose(single, transforms[:1], atol=1e-5)


def test_inverse_compositional_step_matches_forward_step_for_small_motions(mnist):
    images, labels = mnist
    digit = classical.gaussian_blur(F.pad(images[labels == 0][:1], (4,) * 4), 1.0)
    shifts = torch.tensor([[0.02, -0.01, 0.0, 0.0, 0.0, 0.0], [-0.01, 0.02, 0.01, 0.0, 0.0, 0.0], [0.0, -0.01, -0.01, 0.0, 0.0, 0.0]])
    stack = warps.warp_image(digit.expand(3, -1, -1, -1), warps.exp(shifts, "affine"))
    forward = classical.congeal_lsq(stack, classical.LSQConfig(iterations=1, damping=0.0))
    inverse = classical.congeal_ic_lsq(stack, classical.ICLSQConfig(iterations=1, damping=0.0, mask_outside=False))
    moved_forward = forward.transforms - torch.eye(3)
    moved_inverse = inverse.transforms - torch.eye(3)
    assert moved_forward.abs().max() > 5e-3  # both really moved
    assert (moved_forward - moved_inverse).abs().max() < 0.15 * moved_forward.abs().max()


def test_recentring_keeps_the_set_from_shrinking(mnist):
    images, labels = mnist
    result = classical.congeal_lsq(F.pad(images[labels == 7][:40], (4,) * 4), classical.LSQConfig(iterations=10))
    mean = result.transforms.mean(0)
    assert torch.allclose(mean, torch.eye(3), atol=1e-4)
    assert abs(torch.linalg.det(result.transforms[:, :2, :2]).log().mean()) < 0.05


def test_bad_input_is_refused_with_a_clear_message():
    digit = torch.rand(1, 28, 28)
    with pytest.raises(ValueError, match="different sizes"):
        classical.congeal_lsq([digit, torch.rand(1, 20, 20)])
    with pytest.raises(ValueError, match="at least 2 images"):
        classical.congeal_entropy(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 2 images"):
        classical.congeal_lsq([])
    with pytest.raises(ValueError, match="constant"):
        classical.congeal_ic_lsq(torch.zeros(5, 1, 8, 8))
    nan_images = torch.rand(3, 1, 8, 8)
    nan_images[1, 0, 2, 2] = math.nan
    with pytest.raises(ValueError, match=r"images \[1\] contain NaN"):
        classical.congeal_lsq(nan_images)
    with pytest.raises(ValueError, match="greyscale"):
        classical.congeal_entropy(torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown method"):
        classical.congeal(torch.rand(3, 1, 8, 8), "mystery")


def test_non_finite_updates_and_settings_are_caught(mnist):
    images, _ = mnist
    with pytest.raises(FloatingPointError, match="lsq: non-finite warp update in the Gauss-Newton step of iteration 0: residual = "):
        classical.congeal_lsq(images[:5], classical.LSQConfig(iterations=1, max_step=math.nan))
    with pytest.raises(FloatingPointError, match="ic-lsq: .*iteration 0"):
        classical.congeal_ic_lsq(images[:5], classical.ICLSQConfig(iterations=1, damping=math.nan))
    with pytest.raises(ValueError, match="steps must be 6 finite"):
        classical.congeal_entropy(images[:5], classical.EntropyConfig(iterations=1, steps=(math.nan,) * 6))


def test_a_blank_image_in_the_set_is_carried_along(mnist):
    images, labels = mnist
    stack = torch.cat([images[labels == 4][:10], torch.zeros(1, 1, 28, 28)])
    result = classical.congeal_lsq(stack, classical.LSQConfig(iterations=5))
    assert torch.isfinite(result.transforms).all()
    assert result.history["objective"][-1] < result.history["objective"][0]


def test_cli_eval_and_align(mnist, tmp_path, capsys, offline_data):
    images, labels = mnist
    folder = tmp_path / "digits"
    folder.mkdir()
    for index, image in enumerate(images[labels == 5][:6]):
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(folder / f"five_{index}.png")
    assert cli.main(["align", str(folder), "--method", "ic-lsq", "--out", str(tmp_path / "out"), "--size", "28", "--mode", "quick"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "ic-lsq" and len(summary["images"]) == 6
    assert torch.load(tmp_path / "out" / "mappings.pt", weights_only=True)["transforms"].shape == (6, 3, 3)
    assert cli.main(["eval", "--dataset", "mnist", "--method", "ic-lsq", "--classes", "7", "--mode", "quick", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    row = result["per_class"]["7"]
    assert row["images"] == 100 and row["recovery_error"] < row["baseline_error"]
    assert "recovery px" in capsys.readouterr().out
