"""The common result type (congealing.alignment) and the protocol every registered method answers."""
from __future__ import annotations

import inspect

import pytest
import torch

from congealing import alignment as al
from congealing import classical, neural, registry, spacejam, warps


def shifted_transforms(device, dtype=torch.float32) -> torch.Tensor:
    """Image 0 as is, image 1 shifted right by 1/8 of the width, image 2 mirrored."""
    xi = torch.tensor([[0.0, 0.0], [0.25, 0.0], [0.0, 0.0]], device=device, dtype=dtype)
    T = warps.exp(xi, "translation")
    T[2] = warps.hflip(True, 1, dtype, device)[0]
    return T


def test_transforms_form_agrees_with_the_warps_module(device):
    T = shifted_transforms(device)
    images = torch.rand(3, 3, 16, 16, device=device)
    alignment = al.Alignment("demo", (16, 16), transforms=T)
    assert alignment.flips.tolist() == [False, False, True] and len(alignment) == 3
    assert torch.allclose(alignment.warp(images), warps.warp_image(images, T))
    edit = torch.rand(4, 16, 16, device=device)
    assert torch.allclose(alignment.propagate_edit(edit, images), warps.propagate_edit(images, T, edit))
    points = torch.tensor([[8.0, 8.0], [3.0, 12.0]])
    # image 0 -> image 1: the point moves left by 2 pixels (16 / 8), rows stay; -> image 2: mirrored
    assert torch.allclose(alignment.transfer_points(0, 1, points), points - torch.tensor([2.0, 0.0]))
    assert torch.allclose(alignment.transfer_points(0, 2, points), torch.stack([15 - points[:, 0], points[:, 1]], 1))
    transfer = alignment.transfer()
    assert transfer.flipped.tolist() == [False, False, True] and transfer.parameters == 0


def test_grids_form_agrees_with_its_transforms(device):
    """Grids built from the same transforms give the same warp and, to within the nearest-neighbour
    inverse's half pixel, the same keypoint transfer."""
    T = shifted_transforms(device)
    grids = warps.sampling_grid(T, (16, 16))  # atlas -> image, what a dense method returns
    images = torch.rand(3, 3, 16, 16, device=device)
    dense = al.Alignment("demo", (16, 16), grids=grids, flips=torch.tensor([False, False, True]))
    closed = al.Alignment("demo", (16, 16), transforms=T)
    assert torch.allclose(dense.warp(images), closed.warp(images), atol=1e-5)
    assert dense.warp(images, size=8).shape == (3, 3, 8, 8)
    points = torch.tensor([[8.0, 8.0], [3.0, 12.0], [12.0, 2.0]])
    for src, tgt in ((0, 1), (1, 2), (2, 0)):
        error = (dense.transfer_points(src, tgt, points) - closed.transfer_points(src, tgt, points)).abs().max()
        assert error <= 0.5 + 1e-4, (src, tgt, error)
    edit = torch.zeros(4, 16, 16, device=device)
    edit[:, 6:10, 6:10] = 1.0
    assert torch.allclose(dense.propagate_edit(edit, images), warps.splat_edit(images, grids, edit))


def test_a_method_point_map_takes_precedence():
    calls = []

    def point_map(src, tgt, points):
        calls.append((src, tgt))
        return points + 1

    alignment = al.Alignment("demo", (8, 8), grids=warps.identity_grid((8, 8), 2), point_map=point_map, parameters=7)
    transfer = alignment.transfer()
    assert torch.equal(transfer(0, 1, torch.zeros(1, 2)), torch.ones(1, 2)) and calls == [(0, 1)]
    assert transfer.parameters == 7 and transfer.flipped.tolist() == [False, False]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "point_map with flips"),
    ({"transforms": torch.eye(3)[None], "grids": warps.identity_grid((4, 4))}, "exactly one"),
    ({"transforms": torch.eye(2)[None]}, r"\(N, 3, 3\)"),
    ({"grids": torch.zeros(1, 4, 4, 3)}, r"\(N, h, w, 2\)"),
])
def test_an_alignment_refuses_malformed_mappings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        al.Alignment("demo", (4, 4), **kwargs)


def test_warp_refuses_another_number_of_images():
    with pytest.raises(ValueError, match="2 images but the alignment has 3"):
        al.Alignment("demo", (4, 4), transforms=torch.eye(3).expand(3, 3, 3)).warp(torch.rand(2, 1, 4, 4))


def test_closed_form_transfer_round_trips():
    """The closed-form transfer is exact: a round trip src -> tgt -> src returns the points."""
    T = warps.exp(torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.2, "affine")
    transfer = al.transfer_via_transforms(T, (24, 32))
    points = torch.rand(5, 2, dtype=torch.float64) * 20
    assert torch.allclose(transfer(1, 3, transfer(3, 1, points)), points, atol=1e-10)


# ----------------------------------------------------------------------------- the protocol


def blobs(n: int = 4, size: int = 32) -> torch.Tensor:
    """Coloured discs at different places on grey: something to align."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.full((n, 3, size, size), 0.5)
    for k in range(n):
        disc = ((xx - 12 - 2 * k) ** 2 + (yy - 14 - k) ** 2) < 36
        images[k, 0][disc], images[k, 1][disc], images[k, 2][disc] = 0.9, 0.2, 0.1
    return images


TINY = {
    "entropy": classical.EntropyConfig(iterations=3, bins=8),
    "lsq": classical.LSQConfig(iterations=3),
    "ic-lsq": classical.ICLSQConfig(iterations=3),
    "neural": neural.NeuralCongealingConfig.for_mode("quick", image_size=32, stn_input_size=16, flow_input_size=16, atlas_size=16,
                                                     coarse_flow_size=4, epochs=4, bootstrap_epochs=2, update_every=2, keys_pca_dim=0),
    "spacejam": spacejam.SpaceJAMConfig.for_mode("quick", ae_epochs=2, epochs=3, map_size=16, loss_size=8, pca_dim=4, descriptor_grid=16),
}


def test_every_registered_method_has_the_protocol_signature():
    for name, method in registry.METHODS.items():
        parameters = inspect.signature(method.fit).parameters
        assert list(parameters)[:2] == ["images", "config"], name
        keyword_only = {p for p, v in parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        assert {"masks", "backbone", "device", "callback"} <= keyword_only, name
        assert method.config.for_mode("quick") != method.config.for_mode("full"), f"{name}: quick mode changes nothing"
        assert method.config.for_mode("full") == method.config(), f"{name}: full mode must be the published defaults"


@pytest.mark.parametrize("name", registry.names(needs_shape=False))
def test_every_registered_method_returns_an_alignment(name, isolated_cache, colour_backbone):
    """Every 2-D method (3-D congealing's point-map alignment: tests/test_congeal3d.py)."""
    method = registry.get(name)
    images = blobs()
    if not method.features:
        images = images.mean(1, keepdim=True) if name == "entropy" else images
    steps = []
    result = method.fit(images, TINY[name], masks=torch.ones(4, 1, 32, 32) if method.features else None,
                        backbone=colour_backbone if method.features else None, device="cpu", callback=lambda done, total: steps.append((done, total)))
    assert isinstance(result, al.Alignment) and result.method == name and len(result) == 4 and result.size == (32, 32)
    assert result.flips.shape == (4,) and result.seconds > 0 and result.parameters > 0
    assert result.history and all(isinstance(h, dict) and method.loss_key in h for h in result.history)
    assert steps and steps[-1][0] == steps[-1][1], "the callback reports progress up to the total"
    aligned = result.warp(images)
    assert aligned.shape[:2] == images.shape[:2] and torch.isfinite(aligned).all()
    moved = result.transfer_points(0, 1, torch.tensor([[16.0, 16.0]]))
    assert moved.shape == (1, 2) and torch.isfinite(moved).all()
    assert result.propagate_edit(torch.rand(4, 32, 32), images[:, :3].expand(-1, 3, -1, -1)).shape == (4, 3, 32, 32)
    if result.report is not None:  # what the congeal align report shows of the method
        rgb = images[:, :3].expand(-1, 3, -1, -1)
        views = result.report(rgb, 16)
        assert isinstance(views, al.ReportViews)
        assert all(picture.ndim == 3 and torch.isfinite(picture).all() for picture in views.atlas.values())
        assert all(column.shape[0] == 4 for column in views.images.values())
        assert views.masks is None or views.masks.shape[:2] == (4, 1)
        assert views.scores is None or (views.scores["values"].shape == (4,) and views.scores["better"] in ("lower", "higher"))
        assert views.edit_region is None or views.edit_region.shape[-1] in (16, 32)


def test_transfer_points_builds_the_transfer_once_and_again_for_new_transforms(monkeypatch):
    T = warps.exp(torch.tensor([[0.0, 0.0], [0.25, 0.0]]), "translation")
    alignment = al.Alignment("demo", (16, 16), transforms=T)
    built = []
    original = al.transfer_via_transforms
    monkeypatch.setattr(al, "transfer_via_transforms", lambda *args: built.append(1) or original(*args))
    point = torch.tensor([[8.0, 8.0]])
    first = alignment.transfer_points(0, 1, point)
    assert torch.equal(alignment.transfer_points(0, 1, point), first) and len(built) == 1
    alignment.transforms = warps.identity(2)  # a new mapping is seen, and transferred through
    assert torch.equal(alignment.transfer_points(0, 1, point), point) and len(built) == 2
    assert "_transfer_cache" not in repr(alignment)
    assert al.Alignment("demo", (16, 16), transforms=T).transfer_points(0, 1, point).tolist() == first.tolist()


def test_neural_point_map_is_the_transfer_of_the_trained_model(isolated_cache, colour_backbone):
    images = blobs()
    result = neural.fit(images, TINY["neural"], masks=torch.ones(4, 1, 32, 32), backbone=colour_backbone, device="cpu")
    fresh = result.state["result"].transfer((32, 32))  # the model's outputs computed again
    points = torch.tensor([[5.0, 9.0], [20.0, 16.0]])
    for src, tgt in ((0, 1), (2, 3), (3, 0)):
        assert torch.equal(result.transfer_points(src, tgt, points), fresh(src, tgt, points))
    assert torch.equal(result.grids, result.state["result"].grids().cpu())


def test_registry_names_its_choices():
    with pytest.raises(Exception, match="choose one of entropy, lsq, ic-lsq, neural, spacejam, congeal3d"):
        registry.get("nope")
    assert registry.names(needs_shape=True) == ("congeal3d",)
    assert registry.names(features=True, needs_shape=False) == ("neural", "spacejam")


def test_the_point_map_form_transfers_points_and_refuses_to_warp():
    moves = []

    def point_map(src, tgt, points):
        moves.append((src, tgt))
        return points.flip(-1)

    alignment = al.Alignment("3d", (8, 8), flips=torch.zeros(3, dtype=torch.bool), point_map=point_map, parameters=5)
    assert len(alignment) == 3 and alignment.transforms is None and alignment.grids is None
    assert torch.equal(alignment.transfer_points(2, 0, torch.tensor([[1.0, 6.0]])), torch.tensor([[6.0, 1.0]])) and moves == [(2, 0)]
    transfer = alignment.transfer()
    assert transfer.flipped.tolist() == [False] * 3 and transfer.parameters == 5
    with pytest.raises(ValueError, match="warp needs a 2-D alignment"):
        alignment.warp(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="propagate_edit needs a 2-D alignment"):
        alignment.propagate_edit(torch.rand(4, 8, 8), torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="point_map with flips"):
        al.Alignment("3d", (8, 8), point_map=point_map)  # no flips: the number of images is unknown
