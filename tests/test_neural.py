"""Neural Congealing: every loss term, the networks' identity start, the schedule, transfer, edits,
checkpoints and failure modes. Synthetic data only (no backbone), a few seconds per test."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from congealing import losses, neural, warps
from congealing.data import cub_box_masks
from congealing.features import extract_descriptors, pca_project

TINY = dict(image_size=32, stn_input_size=16, flow_input_size=16, atlas_size=8, coarse_flow_size=4, stn_width=4, stn_max_width=8, stn_hidden=8, batch_size=3, update_every=2, checkpoint_every=2)


def tiny_cfg(**overrides):
    return neural.NeuralCongealingConfig.for_mode("quick", **{**TINY, **overrides})


def blob_images(n=4, size=32, seed=0):
    """A bright square at a random shift in each image, masks = the square."""
    g = torch.Generator().manual_seed(seed)
    images, masks = torch.zeros(n, 3, size, size), torch.zeros(n, 1, size, size)
    for i in range(n):
        x, y = torch.randint(4, size - 16, (2,), generator=g).tolist()
        images[i, :, y : y + 12, x : x + 12] = torch.tensor([1.0, 0.5, 0.2])[:, None, None]
        masks[i, :, y : y + 12, x : x + 12] = 1.0
    return images, masks


def synthetic_data(cfg, n=4, dim=6):
    images, masks = blob_images(n, cfg.image_size)
    A = cfg.atlas_size
    small_masks = F.interpolate(masks, size=(A, A), mode="area")
    keys = torch.cat([small_masks, 1 - small_masks, 0.1 * torch.randn(n, dim - 2, A, A, generator=torch.Generator().manual_seed(1))], 1)
    keys = F.normalize(keys, dim=1)
    stn = F.interpolate(keys if cfg.stn_reads == "keys" else images, size=(cfg.stn_input_size,) * 2, mode="area")
    flips = dict(flipped_stn_images=stn.flip(-1), flipped_images=images.flip(-1), flipped_keys=keys.flip(-1), flipped_masks=small_masks.flip(-1)) if cfg.flips else {}
    return neural.NeuralData(images, stn, keys, small_masks, **flips)


# ----------------------------------------------------------------------------- config


def test_full_defaults_are_the_published_coefficients():
    """The official configs/config.yaml (dolev104/neural_congealing): keys 3500 + 4000, saliency 5000,
    centre 3000, sparsity 450 (saliency) and 10 (keys), scale 800, magnitude 8000, rigidity 100 / 350."""
    w = neural.NeuralCongealingConfig().weights()
    expected = {"keys_l2": 3500, "keys_cos": 4000, "saliency": 5000, "center": 3000, "sparsity_saliency": 450, "sparsity_keys": 10, "scale": 800, "magnitude": 8000, "rigidity_local": 100, "rigidity_global": 350}
    for name, value in expected.items():
        assert w[name] == pytest.approx(value, rel=1e-6), name
    relaxed = neural.NeuralCongealingConfig(relaxed_rigidity=True).weights()
    assert relaxed["rigidity_local"] == pytest.approx(25) and relaxed["rigidity_global"] == pytest.approx(90)
    full = neural.NeuralCongealingConfig.for_mode("full")
    assert (full.atlas_size, full.epochs, full.bootstrap_epochs, full.lr_stn, full.lr_atlas, full.upsample_factor) == (128, 8000, 1000, 1e-4, 8e-4, 8)
    assert full.global_delta_px == 20 and neural.NeuralCongealingConfig.for_mode("quick").global_delta_px == 5


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="power of two"):
        neural.NeuralCongealingConfig(atlas_size=100)
    with pytest.raises(ValueError, match="bootstrap"):
        neural.NeuralCongealingConfig(epochs=10, bootstrap_epochs=20)
    with pytest.raises(ValueError, match="gradual_atlas_until"):
        neural.NeuralCongealingConfig(gradual_atlas_until="end")


# ----------------------------------------------------------------------------- losses


def test_rigidity_is_minimal_for_rotations_and_larger_for_shear_and_stretch():
    ident = warps.identity_grid((16, 16))
    mask = torch.ones(1, 16, 16)
    baseline = losses.rigidity_loss(ident, mask).item()
    assert baseline == pytest.approx(2 * math.sqrt(2), abs=2e-2)
    for delta in (1, 5):
        for angle in (0.3, 2.0):
            T = neural.similarity_matrix(torch.tensor([[math.atanh(angle / math.pi), 0.0, 0.2, -0.1]]))
            rotated = warps.transform_points(T, ident.reshape(1, -1, 2)).reshape_as(ident)
            assert losses.rigidity_loss(rotated, mask, delta).item() == pytest.approx(baseline, abs=1e-3)
        shear = ident.clone()
        shear[..., 0] += 0.4 * ident[..., 1]
        stretch = ident * torch.tensor([1.5, 1.0])
        assert losses.rigidity_loss(shear, mask, delta).item() > baseline + 0.1
        assert losses.rigidity_loss(stretch, mask, delta).item() > baseline + 0.1


def test_rigidity_only_counts_masked_pixels():
    grid = warps.identity_grid((16, 16))
    grid[:, :, 8:, 0] = grid[:, :, 8:, 0] * 3  # stretch the right half
    left = torch.zeros(1, 16, 16)
    left[:, :, :7] = 1
    assert losses.rigidity_loss(grid, left).item() == pytest.approx(2 * math.sqrt(2), abs=2e-2)
    assert losses.rigidity_loss(grid, 1 - left).item() > 3.5


def test_l0_approximation_counts_nonzeros():
    values = torch.tensor([0.0, 0.01, 0.5, 1.0, 3.0])
    l0 = neural.l0_approx(values)
    assert l0[0] == 0 and l0[1] < 0.05 and l0[2] > 0.8 and l0[4] > 0.99
    assert torch.all(l0[1:] > l0[:-1])  # monotone
    sparse, dense = torch.zeros(8, 8), torch.full((8, 8), 0.9)
    sparse[2:4, 2:4] = 0.9
    assert neural.saliency_sparsity(sparse) < neural.saliency_sparsity(dense)


def test_center_loss_zero_when_centred_positive_when_not():
    s = torch.zeros(16, 16)
    s[6:10, 6:10] = 1
    assert neural.center_loss(s).item() == pytest.approx(0.0, abs=1e-10)
    shifted = torch.roll(s, 4, dims=1)
    # centroid at x = 4 px * 2/16 = 0.5 -> 0.5 * 0.5^2
    assert neural.center_loss(shifted).item() == pytest.approx(0.125, abs=1e-6)
    inside = torch.ones(16, 16)
    inside[:, 8:] = 0  # pixels no image reaches do not count
    assert neural.center_loss(shifted, inside).item() == pytest.approx(0.0, abs=1e-10)


def test_keys_loss_matches_direct_formulas():
    g = torch.Generator().manual_seed(0)
    a, k = torch.randn(1, 7, 5, 5, generator=g), torch.randn(3, 7, 5, 5, generator=g)
    mask = torch.rand(3, 1, 5, 5, generator=g)
    l2, cos = neural.keys_loss(a, k, mask)
    direct_l2 = (mask * (a - k).pow(2).mean(1, keepdim=True)).sum() / mask.sum()
    direct_cos = (mask * (1 - F.cosine_similarity(a.expand_as(k), k, dim=1)[:, None])).sum() / mask.sum()
    assert l2.item() == pytest.approx(direct_l2.item(), rel=1e-5)
    assert cos.item() == pytest.approx(direct_cos.item(), rel=1e-5)


def test_keys_sparsity_and_saliency_loss():
    keys = torch.ones(4, 6, 6)
    salient = torch.ones(6, 6)
    background = torch.zeros(6, 6)
    assert neural.keys_sparsity(keys, background).item() == pytest.approx(4.0)  # L1 sums channels
    assert neural.keys_sparsity(keys * 0, background).item() == 0.0
    assert neural.keys_sparsity(keys, salient).item() == 0.0  # keys are free where the atlas is salient
    s = torch.rand(2, 1, 6, 6)
    assert neural.saliency_loss(s[:1], s[:1], torch.ones(1, 1, 6, 6)).item() == 0.0
    # Huber: quadratic below delta, linear above
    big = neural.saliency_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), delta=0.7)
    assert big.item() == pytest.approx(0.7 * (1 - 0.35))


# ----------------------------------------------------------------------------- networks and warps


@pytest.mark.parametrize("reads", ["images", "keys"])
def test_networks_start_at_the_identity_and_inverse_is_exact(reads):
    cfg = tiny_cfg(stn_reads=reads)
    model = neural.NeuralCongealing(cfg, 5)
    images, _ = blob_images(2, cfg.image_size)
    stn = F.interpolate(images, size=(cfg.stn_input_size,) * 2) if reads == "images" else torch.randn(2, 5, cfg.stn_input_size, cfg.stn_input_size)
    out = model.mapping(stn, images, use_flow=True)
    ident = warps.identity_grid((cfg.atlas_size,) * 2, 2)
    assert torch.allclose(out["grid"], ident, atol=1e-6) and torch.allclose(out["delta"], torch.zeros_like(out["delta"]))
    raw = torch.tensor([[0.3, -0.2, 0.1, 0.05]])
    T = neural.similarity_matrix(raw)
    assert torch.allclose(neural.similarity_inverse(T), torch.linalg.inv(T), atol=1e-6)
    assert torch.linalg.det(T[0, :2, :2]).item() == pytest.approx(math.exp(-0.4), rel=1e-5)


def test_both_orientations_in_one_pass_are_the_two_passes():
    """train_epoch maps both orientations of a batch in one pass: the STNs must treat images alone."""
    from congealing.neural.training import _mappings

    cfg = tiny_cfg(flips=True)
    data = synthetic_data(cfg)
    torch.manual_seed(0)
    model = neural.NeuralCongealing(cfg, data.keys.shape[1]).double()
    with torch.no_grad():  # away from the identity start, so every output depends on the weights
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    idx, flipped = torch.tensor([2, 0, 3]), torch.tensor([True, False, False, True])
    views = [[t.double() for t in data.view_at(idx, orientation)] for orientation in (flipped, ~flipped)]
    merged = _mappings(model, views, True)
    for view, out in zip(views, merged):
        alone = model.mapping(view[0], view[1], True)
        assert set(out) == set(alone)
        for name, value in alone.items():
            assert torch.allclose(out[name], value, atol=1e-12), name
    grads = torch.autograd.grad(sum(o["grid"].square().sum() for o in merged), list(model.parameters()), allow_unused=True)
    alone = torch.autograd.grad(sum(model.mapping(v[0], v[1], True)["grid"].square().sum() for v in views), list(model.parameters()), allow_unused=True)
    for merged_grad, alone_grad in zip(grads, alone):
        assert (merged_grad is None) == (alone_grad is None)
        if merged_grad is not None:
            assert torch.allclose(merged_grad, alone_grad, atol=1e-10)


def test_convex_upsampling_of_a_constant_flow_is_constant_inside():
    flow = torch.full((1, 2, 4, 4), 0.1)
    up = neural.convex_upsample(flow, torch.randn(1, 9 * 4, 4, 4), 2)
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 0.2))


def test_stns_read_the_keys_when_told(isolated_cache, colour_backbone):
    """``stn_reads="keys"``: prepare hands the STNs the keys (one scale for the set, both
    orientations), the rigid STN reads them and the flow STN reads them warped by the similarity."""
    images, masks = blob_images(3, 32)
    cfg = tiny_cfg(stn_reads="keys", flips=True, keys_pca_dim=0, atlas_size=8, stn_input_size=8, flow_input_size=8, coarse_flow_size=4)
    data = neural.prepare(images, masks, colour_backbone, cfg)
    scale = data.keys.std()
    assert data.stn_images.shape == data.keys.shape == (3, 4, 8, 8)
    assert torch.allclose(data.stn_images * scale, data.keys) and torch.allclose(data.flipped_stn_images * scale, data.flipped_keys)
    model = neural.NeuralCongealing(cfg, data.keys.shape[1])
    assert model.rigid.trunk[0].in_channels == model.flow.trunk[0].in_channels == 4
    seen = []
    model.flow.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model.rigid.out.bias.copy_(torch.tensor([0.0, 0.0, 0.25, 0.0]))  # a shift, so the warp is not the identity
        out = model.mapping(data.stn_images, data.images, use_flow=True)
    small = warps.identity_grid((8, 8), 3)
    expected = warps.warp_by_grid(data.stn_images, warps.transform_points(out["T"], small.reshape(3, -1, 2)).reshape_as(small), padding_mode="border")
    assert torch.allclose(seen[0], expected)
    with pytest.raises(ValueError, match="stn_reads"):
        tiny_cfg(stn_reads="rgb")


@pytest.mark.parametrize("fit", ["all", "foreground"])
def test_keys_pca_is_fitted_where_told(isolated_cache, colour_backbone, fit):
    """``keys_pca_fit``: the components are fitted on every location or inside the masks only; every
    location is projected either way, and the mirrored keys on the same basis."""
    images, masks = blob_images(3, 32)
    cfg = tiny_cfg(flips=True, keys_pca_dim=2, keys_pca_fit=fit, atlas_size=8, stn_input_size=8, flow_input_size=8, coarse_flow_size=4)
    data = neural.prepare(images, masks, colour_backbone, cfg)
    raw = extract_descriptors(images, colour_backbone, grid=8)
    inside = (warps.resize(masks, 8).clamp(0, 1) > 0.5).float()
    expected, components, mean = pca_project(raw, 2, inside if fit == "foreground" else None)
    assert torch.allclose(data.keys, expected, atol=1e-5)
    mirrored = extract_descriptors(images.flip(-1), colour_backbone, grid=8)
    assert torch.allclose(data.flipped_keys, torch.einsum("ndhw,kd->nkhw", mirrored - mean.view(1, -1, 1, 1), components), atol=1e-5)
    other, _, _ = pca_project(raw, 2, None if fit == "foreground" else inside)
    assert not torch.allclose(data.keys, other, atol=1e-3)  # the two fits differ on these images


def test_keys_pca_fit_falls_back_to_every_location_and_rejects_unknown_values(isolated_cache, colour_backbone):
    images, _ = blob_images(3, 32)
    cfg = tiny_cfg(keys_pca_dim=2, keys_pca_fit="foreground", atlas_size=8, stn_input_size=8, flow_input_size=8, coarse_flow_size=4)
    data = neural.prepare(images, torch.zeros(3, 1, 32, 32), colour_backbone, cfg)  # empty masks: too few locations to fit on
    assert torch.allclose(data.keys, pca_project(extract_descriptors(images, colour_backbone, grid=8), 2)[0], atol=1e-5)
    with pytest.raises(ValueError, match="keys_pca_fit"):
        tiny_cfg(keys_pca_fit="inside")


def test_atlas_initialisation_from_the_set():
    cfg = tiny_cfg()
    data = synthetic_data(cfg)
    model = neural.NeuralCongealing(cfg, data.keys.shape[1])
    model.init_atlas(data.keys, data.masks)
    assert torch.allclose(model.atlas_keys, data.keys.mean(0))
    sal = model.atlas_saliency
    assert sal.min().item() == pytest.approx(0.1, abs=1e-5) and sal.max().item() == pytest.approx(0.9, abs=1e-5)
    model.init_atlas(data.keys, torch.ones_like(data.masks))  # constant masks: no division by zero
    assert torch.allclose(model.atlas_saliency, torch.full_like(sal, 0.5))


# ----------------------------------------------------------------------------- training


def on(data, device):
    """The same NeuralData on ``device``."""
    return neural.NeuralData(*(None if t is None else t.to(device) for t in (getattr(data, f.name) for f in dataclasses.fields(data))))


def test_fit_reduces_the_keys_loss_and_runs_the_schedule(tmp_path, device):
    cfg = tiny_cfg(epochs=12, bootstrap_epochs=4, lr_stn=3e-3, lr_atlas=1e-2)
    data = on(synthetic_data(cfg), device)
    seen = []
    result = neural.train(data, cfg, callback=lambda epoch, model: seen.append((epoch, model.flow_active)), callback_every=4)
    h = result.history
    assert len(h) == 12 and "magnitude" not in h[3] and "magnitude" in h[4] and "keys_l2_sim" in h[4]
    assert h[-1]["keys_cos"] < h[0]["keys_cos"]
    assert seen == [(0, False), (4, True), (8, True), (11, True)]
    grids = result.grids()
    assert grids.shape == (4, cfg.atlas_size, cfg.atlas_size, 2) and torch.isfinite(grids).all()


def test_relaxed_rigidity_weights_are_the_ones_trained_with():
    """The logged total is the weighted sum of the logged terms with the relaxed weights (local x0.25,
    global x90/350), for the main and the mirrored pass alike."""
    cfg = tiny_cfg(epochs=5, bootstrap_epochs=2, flips=True, gradual_atlas=True, relaxed_rigidity=True)
    last = neural.train(synthetic_data(cfg), cfg).history[-1]
    assert "keys_cos_mirror" in last and last["rigidity_local"] > 0 and last["rigidity_global"] > 0

    def weighted_total(weights):
        terms = {k: v for k, v in last.items() if k not in ("epoch", "total")}
        return sum(weights[k.removesuffix("_mirror").removesuffix("_sim")] * v for k, v in terms.items())

    assert weighted_total(cfg.weights()) == pytest.approx(last["total"], rel=1e-4)
    assert weighted_total(tiny_cfg(relaxed_rigidity=False).weights()) != pytest.approx(last["total"], rel=1e-3)
    with pytest.raises(ValueError, match="mirrored"):
        neural.train(synthetic_data(tiny_cfg()), cfg)


def _known_keys_data(keys, masks):
    """NeuralData around given keys ``(N, D, A, A)`` (images: the keys' first 3 channels, upsampled;
    the STNs read the keys, as in quick mode)."""
    images = F.interpolate(keys[:, :3], size=(32, 32), mode="nearest")
    stn = F.interpolate(keys, size=(16, 16), mode="nearest")
    return neural.NeuralData(images, stn, keys, masks, flipped_stn_images=stn.flip(-1), flipped_images=images.flip(-1), flipped_keys=keys.flip(-1), flipped_masks=masks.flip(-1))


def _asymmetric_keys(n, A=8, dim=4):
    x = torch.linspace(-1, 1, A).expand(A, A)
    key = torch.stack([x, x.pow(2), (x > 0.3).float(), torch.ones(A, A)][:dim])
    return F.normalize(key, dim=0).expand(n, -1, -1, -1).clone()


def test_flips_pick_the_mirrored_image():
    """Three copies of an asymmetric key map and one mirrored copy: at the first update the mirrored
    one (and only it) is trained mirrored; with no mirrored copy nothing is."""
    cfg = tiny_cfg(epochs=3, bootstrap_epochs=3, update_every=2, flips=True, lr_stn=1e-6, lr_atlas=1e-6)
    keys, masks = _asymmetric_keys(4), torch.ones(4, 1, 8, 8)
    assert neural.train(_known_keys_data(keys, masks), cfg).flipped.tolist() == [False] * 4
    keys[3] = keys[3].flip(-1)
    assert neural.train(_known_keys_data(keys, masks), cfg).flipped.tolist() == [False, False, False, True]


_START, _AFTER_FIRST, _EVERYONE = [True, False, False, False], [True, True, False, True], [True] * 4


@pytest.mark.parametrize("until, bootstrap_epochs, expected", [
    ("half", 4, [_START] * 2 + [_AFTER_FIRST] * 2 + [_EVERYONE] * 4),  # two per update: everyone in by mid-training
    ("bootstrap", 4, [_START] * 2 + [_AFTER_FIRST] * 2 + [_EVERYONE] * 4),  # the 4-epoch bootstrap: the same
    ("bootstrap", 2, [_START] * 2 + [_EVERYONE] * 6),  # a 2-epoch bootstrap: all three join at the first update
])
def test_gradual_atlas_adds_the_closest_images_first(tmp_path, until, bootstrap_epochs, expected):
    """Image 2 is an outlier: it joins the atlas last. 4 images, 8 epochs, updates every 2 epochs."""
    cfg = tiny_cfg(epochs=8, bootstrap_epochs=bootstrap_epochs, update_every=2, checkpoint_every=1, gradual_atlas=True,
                   gradual_atlas_until=until)
    keys = _asymmetric_keys(4)
    keys[2] = F.normalize(torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0)), dim=0)
    path, included = tmp_path / "ckpt.pt", []
    neural.train(_known_keys_data(keys, torch.ones(4, 1, 8, 8)), cfg, checkpoint=path, callback_every=1,
                 callback=lambda epoch, model: included.append(torch.load(path, weights_only=True)["included"].tolist()))
    assert included == expected


def test_flipped_image_grid_reads_the_original_image():
    cfg = tiny_cfg(epochs=1, bootstrap_epochs=1, flips=True)
    data = synthetic_data(cfg)
    result = neural.train(data, cfg)
    result.flipped = torch.tensor([True, False, False, False])
    # the congealed original equals the congealed mirrored image the model was trained on
    trained_frame = warps.warp_by_grid(data.flipped_images[:1], result.outputs()["grid"][:1], padding_mode="border")
    assert torch.allclose(result.congeal(data.images)[:1], trained_frame, atol=1e-5)


class _Stop(Exception):
    pass


def _stop_at(epoch_to_stop):
    def callback(epoch, model):
        if epoch == epoch_to_stop:
            raise _Stop

    return callback


def test_resume_continues_from_a_plain_checkpoint(tmp_path):
    cfg = tiny_cfg(epochs=6, bootstrap_epochs=2, checkpoint_every=3)
    data = synthetic_data(cfg)
    straight = neural.train(data, cfg)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Stop):  # interrupted after 3 epochs, just after the checkpoint
        neural.train(data, cfg, checkpoint=path, callback=_stop_at(2), callback_every=1)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and isinstance(state["model"], dict) and len(state["history"]) == 3
    resumed = neural.train(data, cfg, checkpoint=path, resume=True)
    assert len(resumed.history) == 6
    assert resumed.history[-1]["total"] == pytest.approx(straight.history[-1]["total"], rel=1e-4)
    with pytest.raises(ValueError, match="other settings"):
        neural.train(data, tiny_cfg(epochs=7, bootstrap_epochs=2, checkpoint_every=3), checkpoint=path, resume=True)


def test_resume_with_flips_and_the_gradual_atlas_on_every_device(tmp_path, device):
    cfg = tiny_cfg(epochs=4, bootstrap_epochs=1, checkpoint_every=2, update_every=1, flips=True, gradual_atlas=True)
    data = on(synthetic_data(cfg), device)
    straight = neural.train(data, cfg)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Stop):
        neural.train(data, cfg, checkpoint=path, callback=_stop_at(1), callback_every=1)
    resumed = neural.train(data, cfg, checkpoint=path, resume=True)
    assert resumed.history[-1]["total"] == pytest.approx(straight.history[-1]["total"], rel=1e-4)
    assert torch.equal(resumed.flipped.cpu(), straight.flipped.cpu())
    assert resumed.grids().device.type == device.type


def test_divergence_names_the_step_and_the_terms():
    cfg = tiny_cfg(epochs=2, bootstrap_epochs=1)
    data = synthetic_data(cfg)
    data.keys[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 0: total = nan.*keys_l2 = nan"):
        neural.train(data, cfg)


def test_a_set_of_one_is_refused_clearly():
    cfg = tiny_cfg()
    data = synthetic_data(cfg, n=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        neural.train(data, cfg)
    with pytest.raises(ValueError, match="at least 2 images"):
        neural.prepare(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32), None, cfg)


# ----------------------------------------------------------------------------- transfer and edits


def _shifted_result(cfg):
    """A TrainResult whose mappings are known: image 1's rigid STN output is a translation."""
    data = synthetic_data(cfg, n=2)
    model = neural.NeuralCongealing(cfg, data.keys.shape[1])
    model.flow_active = True
    with torch.no_grad():
        model.rigid.out.bias.copy_(torch.tensor([0.0, 0.0, 0.25, 0.0]))  # every image: t_x = 0.25
    return neural.TrainResult(model, data, torch.zeros(2, dtype=torch.bool))


def test_transfer_round_trip_and_translation():
    cfg = tiny_cfg(atlas_size=32, coarse_flow_size=8, flips=True)
    result = _shifted_result(cfg)
    transfer = result.transfer((32, 32))
    points = torch.tensor([[14.0, 10.0], [20.0, 16.0]])
    # both images have the same mapping, so transfer is the identity up to the atlas pixel (1 px here)
    assert (transfer(0, 1, points) - points).abs().max() <= 0.51
    assert transfer.flipped.tolist() == [False, False]
    result.flipped = torch.tensor([True, False])
    mirrored = result.transfer((32, 32))(0, 1, points)
    # image 0 was trained mirrored: its point x lands where x' = 31 - x lands
    assert (mirrored[:, 0] - (31 - points[:, 0])).abs().max() <= 0.51


@pytest.mark.parametrize("flip_source", [False, True])
def test_transfer_follows_known_different_similarities_and_flows(flip_source):
    """Images with different known similarities (rotation, scale, shift) and smooth flows: a point
    that atlas pixel p sends to image A must land where p sends it in image B (up to the atlas
    quantisation of the nearest-neighbour flow inverse: half an atlas pixel, times the scale)."""
    A, N, size = 32, 2, (256, 256)
    T = neural.similarity_matrix(torch.tensor([[0.1, 0.2, 0.1, -0.05], [-0.15, -0.1, -0.1, 0.08]]))
    ident = warps.identity_grid((A, A), N)
    delta = torch.zeros(N, A, A, 2)
    delta[0, ..., 0] = 0.03 * torch.sin(math.pi * ident[0, ..., 1])
    delta[1, ..., 1] = 0.02 * torch.cos(math.pi * ident[1, ..., 0])
    grid = warps.transform_points(T, (ident + delta).reshape(N, -1, 2)).reshape(N, A, A, 2)

    class Known(neural.TrainResult):
        def outputs(self, batch=16):
            return {"T": T, "delta": delta, "grid": grid}

    flipped = torch.tensor([flip_source, False])
    result = Known(None, neural.NeuralData(torch.zeros(N, 3, 8, 8), None, None, None), flipped)
    grids = result.grids()  # into the original (unmirrored) images
    atlas_points = torch.rand(1, 64, 2, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.7
    in_a = warps.normalized_to_pixel(warps.grid_points(atlas_points, grids[0:1]), size)[0]
    in_b = warps.normalized_to_pixel(warps.grid_points(atlas_points, grids[1:2]), size)[0]
    error = (result.transfer(size)(0, 1, in_a) - in_b).norm(dim=1)
    atlas_pixel = size[0] / A  # 8 px
    assert error.max() <= 0.75 * atlas_pixel and error.mean() <= 0.5 * atlas_pixel


def test_edit_propagation_lands_where_the_grid_says():
    cfg = tiny_cfg(atlas_size=32, coarse_flow_size=8)
    result = _shifted_result(cfg)
    images = torch.zeros(2, 3, 32, 32)
    edit = torch.zeros(4, 32, 32)
    edit[0, 12:20, 12:20] = 1.0  # red square at the atlas centre
    edit[3, 12:20, 12:20] = 1.0
    edited = warps.splat_edit(images, result.grids(), edit)
    red = edited[0, 0] > 0.5
    ys, xs = torch.nonzero(red, as_tuple=True)
    # atlas x maps to image x + 0.25 * 16 px = +4 px
    assert xs.float().mean().item() == pytest.approx(15.5 + 4, abs=0.6) and ys.float().mean().item() == pytest.approx(15.5, abs=0.6)
    assert edited[:, 1:].abs().max() < 1e-6  # only red was painted
    with pytest.raises(ValueError, match="RGBA"):
        warps.splat_edit(images, result.grids(), edit[:3])


def test_cub_box_masks_cover_the_boxes():
    class FakeCUB:
        images = torch.zeros(2, 3, 16, 16)
        boxes = torch.tensor([[2.0, 3.0, 9.0, 12.0], [-4.0, 0.0, 20.0, 5.0]])

    masks = cub_box_masks(FakeCUB())
    assert masks.shape == (2, 1, 16, 16)
    assert masks[0, 0].sum() == 8 * 10 and masks[0, 0, 3, 2] == 1 and masks[0, 0, 2, 2] == 0
    assert masks[1, 0, :6].all() and masks[1, 0, 6:].sum() == 0  # clipped to the crop


def test_lr_factor_holds_through_the_bootstrap_then_falls_to_lr_final():
    cfg = tiny_cfg(epochs=20, bootstrap_epochs=5, lr_final=0.1)
    factors = [neural.lr_factor(e, cfg) for e in range(cfg.epochs)]
    assert factors[: cfg.bootstrap_epochs + 1] == [1.0] * (cfg.bootstrap_epochs + 1)
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert factors[-1] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 14)))
    official = neural.NeuralCongealingConfig(epochs=20, bootstrap_epochs=5)
    assert {neural.lr_factor(e, official) for e in range(20)} == {1.0}  # the paper's rates are constant


def test_lr_final_is_the_rate_the_run_ends_with_and_survives_a_resume(tmp_path):
    cfg = tiny_cfg(epochs=6, bootstrap_epochs=2, checkpoint_every=3, lr_final=0.25)
    data = synthetic_data(cfg)
    path = tmp_path / "ckpt.pt"
    straight = neural.train(data, cfg, checkpoint=path)
    rates = {name: opt["param_groups"][0]["lr"] for name, opt in torch.load(path, weights_only=True)["optimizers"].items()}
    assert rates == pytest.approx({"rigid": 0.25 * cfg.lr_stn, "flow": 0.25 * cfg.lr_stn, "atlas": 0.25 * cfg.lr_atlas})
    path.unlink()
    with pytest.raises(_Stop):
        neural.train(data, cfg, checkpoint=path, callback=_stop_at(2), callback_every=1)
    resumed = neural.train(data, cfg, checkpoint=path, resume=True)
    assert resumed.history[-1]["total"] == pytest.approx(straight.history[-1]["total"], rel=1e-4)
    with pytest.raises(ValueError, match="lr_final"):
        tiny_cfg(lr_final=0.0)
