"""Backbones give real, meaningful descriptors offline; the DINO path is mechanically right."""
import os

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from congealing import data, features
from congealing._compat import import_timm


@pytest.fixture(scope="module")
def lite0():
    return features.load_backbone("efficientnet_lite0")


def test_timm_imports_next_to_a_mismatched_torchvision():
    timm = import_timm()
    assert hasattr(timm, "create_model")


@pytest.mark.slow  # loads the backbone
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_weights_are_the_real_imagenet_ones(variant):
    timm = import_timm()
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    model.load_state_dict(features.efficientnet_lite_state_dict(variant), strict=True)
    cat = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        top5 = model.eval()((cat - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}  # ImageNet's domestic-cat classes


def test_descriptor_shapes_and_norm(lite0):
    out = features.extract_descriptors(torch.rand(3, 3, 128, 128), lite0, grid=20, cache=False)
    assert out.shape == (3, 472, 20, 20)
    assert torch.allclose(out.norm(dim=1), torch.ones(3, 20, 20), atol=1e-4)


@pytest.mark.slow  # loads the backbone
def test_efficientnet_lite2_stages_are_wider():
    lite2 = features.load_backbone("efficientnet_lite2")
    out = features.extract_descriptors(torch.rand(2, 3, 128, 128), lite2, grid=16, cache=False)
    assert out.shape == (2, 48 + 120 + 352, 16, 16) and lite2.title.startswith("EfficientNet-Lite2")
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 16, 16), atol=1e-4)


def test_same_part_is_closer_than_background_across_birds(data_root, lite0, isolated_cache):
    """On two different birds, a part's descriptor matches the same part better than the background."""
    cub = data.load_cub_class(1, split="test", root=data_root)
    grid = 64
    desc = features.extract_descriptors(cub.images, lite0, grid=grid)
    scale = grid / 256

    def at(i, xy):
        x, y = (xy * scale).long().clamp(0, grid - 1).tolist()
        return desc[i, :, y, x]

    wins, trials = 0, 0
    for i, j in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]:
        for part in range(15):
            if not (cub.visible[i, part] and cub.visible[j, part]):
                continue
            a, b = at(i, cub.keypoints[i, part]), at(j, cub.keypoints[j, part])
            # Background of bird j: the crop's corners (outside the padded box).
            corners = torch.stack([desc[j, :, 1, 1], desc[j, :, 1, -2], desc[j, :, -2, 1], desc[j, :, -2, -2]])
            wins += int(a @ b > (corners @ a).max())
            trials += 1
    assert trials > 30
    assert wins / trials > 0.8, f"same part closer than background in only {wins}/{trials} cases"


def test_cache_reuses_descriptors(lite0, isolated_cache):
    images = torch.rand(2, 3, 64, 64)
    first = features.extract_descriptors(images, lite0, grid=8)
    files = list((isolated_cache / "features").glob("*.pt"))
    assert len(files) == 1
    assert torch.equal(torch.load(files[0], weights_only=True), first)
    assert torch.equal(features.extract_descriptors(images, lite0, grid=8), first)
    assert len(features.extract_descriptors(images[:1], lite0, grid=8)) == 1  # another set, another file
    assert len(list((isolated_cache / "features").glob("*.pt"))) == 2


def test_vit_keys_at_stride_4_and_saliency_mechanics():
    """DINO weights are not downloadable here: check the architecture with random weights."""
    timm = import_timm()
    spec = features.BACKBONES["dino_vits8"]
    model = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True)
    backbone = features.ViTKeys("dino_vits8", model, spec, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    images = torch.rand(2, 3, 96, 96)
    keys = backbone(images, input_size=96)
    assert keys.shape == (2, 384, (96 - 8) // 4 + 1, (96 - 8) // 4 + 1)
    saliency = backbone.saliency(images, input_size=96)
    assert saliency.shape == (2, 1, 23, 23) and saliency.min() >= 0 and saliency.max() <= 1


@pytest.mark.slow  # loads the backbone
@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="without HF_HUB_OFFLINE=1 this may wait on the network")
def test_auto_falls_back_to_efficientnet_and_says_so(monkeypatch):
    monkeypatch.delenv("CONGEAL_BACKBONE", raising=False)
    monkeypatch.delenv("CONGEAL_DINO_WEIGHTS", raising=False)
    with pytest.warns(UserWarning, match="instead of DINO"):
        backbone = features.load_backbone("auto")
    assert backbone.name == "efficientnet_lite0"
    with pytest.raises(features.WeightsNotAvailableError, match="Hugging Face hub"):
        features.load_backbone("dino_vits8")


def test_unknown_backbone_and_bad_images(lite0):
    with pytest.raises(ValueError, match="unknown backbone"):
        features.load_backbone("resnet9000")
    with pytest.raises(ValueError, match="RGB"):
        features.extract_descriptors(torch.rand(2, 1, 32, 32), lite0, cache=False)
