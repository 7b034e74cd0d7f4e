"""The helpers the chapters used to carry inline, checked against independent references
(numpy brute force, the formulas the chapters used before, analytic cases)."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from congealing import evaluation, features, mnist, spacejam, warps, widgets
from congealing.data import CUBSet


def unit_descriptors(n=3, d=6, size=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, size, size, generator=generator), dim=1)


def brute_force_best(descriptors, src, tgt, points, allowed=None):
    """numpy: for descriptors at full resolution, the most similar target pixel of each integer point."""
    array = descriptors.numpy()
    out = []
    for k, (x, y) in enumerate(points.long().tolist()):
        query = array[src, :, y, x] / np.linalg.norm(array[src, :, y, x])
        similarity = np.einsum("d,dhw->hw", query, array[tgt])
        if allowed is not None and allowed[k].any():
            similarity = np.where(allowed[k], similarity, -np.inf)
        row, col = np.unravel_index(np.argmax(similarity), similarity.shape)
        out.append([col, row])
    return torch.tensor(out, dtype=torch.float32)


# ----------------------------------------------------------------------------- colours


def test_minmax_rgb_matches_numpy_and_clips_to_a_given_range():
    maps = torch.randn(4, 3, 5, 6)
    array = maps.numpy()
    low, high = array.min(axis=(0, 2, 3), keepdims=True), array.max(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(features.minmax_rgb(maps).numpy(), (array - low) / (high - low), rtol=1e-5, atol=1e-6)
    clipped = features.minmax_rgb(maps, low=torch.zeros(3), high=torch.ones(3))
    np.testing.assert_allclose(clipped.numpy(), np.clip(array, 0, 1), atol=1e-6)


def test_spacejam_codes_to_rgb_is_the_formula_it_had():
    codes = torch.randn(5, 3, 7, 7)
    low, high = codes.amin(dim=(0, 2, 3), keepdim=True), codes.amax(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(spacejam.codes_to_rgb(codes), (codes - low) / (high - low).clamp_min(1e-12))


def test_pca_colours_of_the_set_are_chapter_3s_formula_and_the_components_are_numpys():
    descriptors = torch.randn(3, 10, 6, 6, dtype=torch.float64).float()
    colours = features.PCAColours.fit(descriptors)
    # Chapter 3 before: min-max of pca_project's maps over the whole set.
    maps, _, _ = features.pca_project(descriptors, 3)
    low, high = maps.amin(dim=(0, 2, 3), keepdim=True), maps.amax(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(colours(descriptors), (maps - low) / (high - low), atol=1e-5)
    # The components span numpy's top-3 right singular vectors (up to sign).
    flat = descriptors.permute(0, 2, 3, 1).reshape(-1, 10).double().numpy()
    _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    overlap = np.abs(colours.components.double().numpy() @ vt[:3].T)
    np.testing.assert_allclose(overlap, np.eye(3), atol=1e-4)


def test_pca_colours_of_an_atlas_are_chapter_4s_formula():
    keys, masks = torch.randn(4, 8, 5, 5), (torch.rand(4, 1, 5, 5) > 0.3).float()
    colours = features.PCAColours.fit(keys, masks=masks)
    _, components, mean = features.pca_project(keys, 3, masks=masks)
    projected = torch.einsum("ndhw,kd->nkhw", keys - mean[None, :, None, None], components)
    low, high = projected.amin(dim=(0, 2, 3)), projected.amax(dim=(0, 2, 3))
    atlas = 2.0 * torch.randn(8, 5, 5)  # wider than the images: must be clipped into [0, 1]
    before = ((torch.einsum("dhw,kd->khw", atlas - mean[:, None, None], components) - low[:, None, None]) / (high - low)[:, None, None]).clamp(0, 1)
    assert torch.allclose(colours(atlas[None])[0], before, atol=1e-5)


# ----------------------------------------------------------------------------- restricted transfers


def test_descriptor_similarity_and_transfer_match_brute_force():
    descriptors = unit_descriptors()
    points = torch.tensor([[0.0, 0.0], [5.0, 3.0], [11.0, 7.0]])
    similarity = evaluation.descriptor_similarity(descriptors, 0, 2, points, 12)
    expected = torch.einsum("kd,dhw->khw", descriptors[0, :, points[:, 1].long(), points[:, 0].long()].T, descriptors[2])
    assert torch.allclose(similarity, expected, atol=1e-5)
    assert torch.equal(evaluation.descriptor_transfer(descriptors, 12)(0, 2, points), brute_force_best(descriptors, 0, 2, points))


def test_masked_transfer_searches_only_inside_the_target_mask():
    descriptors = unit_descriptors(seed=1)
    masks = torch.zeros(3, 1, 12, 12)
    masks[1, 0, 2:6, 7:11] = 1.0
    points = torch.tensor([[1.0, 1.0], [4.0, 9.0], [10.0, 2.0]])
    transfer = evaluation.masked_descriptor_transfer(descriptors, 12, masks)
    allowed = masks[1, 0].bool().numpy()[None].repeat(3, axis=0)
    assert torch.equal(transfer(0, 1, points), brute_force_best(descriptors, 0, 1, points, allowed))
    # an empty mask restricts nothing
    assert torch.equal(transfer(0, 2, points), evaluation.descriptor_transfer(descriptors, 12)(0, 2, points))


def test_masked_transfer_reads_coarse_masks_at_the_image_size():
    descriptors = unit_descriptors(seed=2)
    coarse = torch.zeros(3, 1, 3, 3)
    coarse[1, 0, 0, 2] = 1.0  # top-right ninth of the target
    predicted = evaluation.masked_descriptor_transfer(descriptors, 12, coarse)(0, 1, torch.rand(6, 2) * 11)
    assert bool(((predicted[:, 0] >= 8) & (predicted[:, 1] < 4)).all())


def test_windowed_transfer_is_brute_force_within_the_radius_and_keeps_the_guides_flips():
    descriptors = unit_descriptors(seed=3)
    points = torch.tensor([[2.0, 2.0], [9.0, 4.0], [6.0, 10.0]])

    def guide(src, tgt, pts):
        return torch.tensor([[3.0, 3.0], [8.0, 8.0], [0.0, 11.0]])

    guide.flipped = torch.tensor([False, True, False])
    transfer = evaluation.windowed_descriptor_transfer(descriptors, 12, guide, radius=2.5)
    ys, xs = np.mgrid[0:12, 0:12]
    allowed = np.stack([(xs - gx) ** 2 + (ys - gy) ** 2 <= 2.5**2 for gx, gy in guide(0, 1, points).tolist()])
    assert torch.equal(transfer(0, 1, points), brute_force_best(descriptors, 0, 1, points, allowed))
    assert transfer.flipped is guide.flipped
    assert transfer(0, 1, torch.zeros(0, 2)).shape == (0, 2)


# ----------------------------------------------------------------------------- sets, figures, errors, inference


def toy_cub(n=5):
    return CUBSet(torch.rand(n, 3, 8, 8), torch.rand(n, 15, 2) * 8, torch.rand(n, 15) > 0.5, torch.rand(n, 4) * 8,
                  [f"img{k}" for k in range(n)], [f"part{k}" for k in range(15)], "toy")


@pytest.mark.parametrize("index", [slice(0, 3), [4, 0, 2], torch.tensor([True, False, True, False, True])])
def test_cub_subset_keeps_every_field_in_step(index):
    cub = toy_cub()
    positions = torch.arange(5)[index].tolist()
    small = cub.subset(index)
    assert len(small) == len(positions) and small.names == [cub.names[k] for k in positions]
    for name in ("images", "keypoints", "visible", "boxes"):
        assert torch.equal(getattr(small, name), getattr(cub, name)[positions])
    assert small.part_names == cub.part_names and small.class_name == cub.class_name


def test_figure_png_renders_and_closes_the_figure():
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.imshow(np.ones((4, 8)), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    png = widgets.figure_png(fig)
    assert not plt.fignum_exists(fig.number)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and 0 < image.width <= 100 and 0 < image.height <= 50


def test_alignment_errors_on_known_translations():
    # Perturbations shift by +-t; the method undoes them exactly and leaves clean images alone.
    t, size = 0.25, (36, 36)
    known = warps.exp(torch.tensor([[t, 0.0], [-t, 0.0], [0.0, t], [0.0, -t]]), "translation")
    errors = mnist.alignment_errors(warps.invert(known), warps.identity(4), known, size, (28, 28))
    assert errors["baseline_error"] == pytest.approx(t * size[1] / 2, abs=1e-4)  # normalised t -> t * W / 2 px
    assert errors["recovery_error"] == pytest.approx(0.0, abs=1e-4)
    assert errors["residual_error"] == pytest.approx(0.0, abs=1e-4)
    assert errors["clean_motion"] == pytest.approx(0.0, abs=1e-4)


def test_infer_with_fewer_steps_is_the_stn_stopped_early():
    config = spacejam.SpaceJAMConfig.for_mode("quick")
    torch.manual_seed(0)
    ae, stn = spacejam.KeyAutoencoder(config), spacejam.RecurrentLieSTN(config)
    for parameter in stn.parameters():  # leave the identity the STN starts at
        torch.nn.init.normal_(parameter, std=0.05)
    keys = torch.randn(3, config.pca_dim, 16, 16)
    flips = torch.tensor([False, True, False])
    full, history, codes = spacejam.infer(ae, stn, keys, flips)
    with torch.no_grad():
        mirrored = torch.where(flips[:, None, None, None], codes.flip(-1), codes)
        for k in range(1, config.recurrences + 1):
            T, steps, _ = spacejam.infer(ae, stn, keys, flips, steps=k)
            assert torch.allclose(T, stn(mirrored, "homography", steps=k) @ warps.hflip(flips), atol=1e-5)
            assert steps.shape[1] == k
    assert torch.allclose(T, full) and history.shape[1] == config.recurrences
    assert not torch.allclose(spacejam.infer(ae, stn, keys, flips, steps=1)[0], full, atol=1e-4)


def test_glue_stores_plain_python_numbers(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: stored.update({name: (value, display)}))
    widgets.glue("pck", np.float64(49.5))
    widgets.glue("n", torch.tensor(7))
    widgets.glue("text", "class 2")
    assert stored == {"pck": (49.5, False), "n": (7, False), "text": ("class 2", False)}
    assert type(stored["pck"][0]) is float and type(stored["n"][0]) is int
