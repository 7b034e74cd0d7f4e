"""Properties of congealing.warps: the conventions every chapter relies on."""
import math

import pytest
import torch

from congealing import warps

GEN = torch.Generator().manual_seed(0)


def random_xi(batch=16, dims=8, scale=0.3):
    return scale * torch.randn(batch, dims, generator=GEN)


@pytest.mark.parametrize("group", list(warps.GROUP_DIMS))
def test_exp_inverse_is_exp_of_minus(group):
    xi = random_xi(dims=warps.GROUP_DIMS[group])
    T = warps.exp(xi, group)
    assert torch.allclose(warps.compose(T, warps.exp(-xi, group)), warps.identity(len(xi)), atol=1e-5)
    assert torch.allclose(warps.invert(T), warps.exp(-xi, group), atol=1e-5)


def test_groups_are_nested():
    xi = random_xi(dims=8)
    for small, big in zip(list(warps.GROUP_DIMS)[:-1], list(warps.GROUP_DIMS)[1:]):
        k = warps.GROUP_DIMS[small]
        padded = torch.cat([xi[:, :k], torch.zeros(len(xi), warps.GROUP_DIMS[big] - k)], dim=1)
        assert torch.allclose(warps.exp(xi[:, :k], small), warps.exp(padded, big), atol=1e-6)
        assert torch.allclose(warps.exp(warps.project(xi, small)), warps.exp(padded), atol=1e-6)


def test_group_structure_of_each_subgroup():
    xi = random_xi(dims=8, scale=0.5)
    se2 = warps.exp(xi[:, :3], "se2")
    rotation = se2[:, :2, :2]
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(2).expand(len(xi), 2, 2), atol=1e-5)
    similarity = warps.exp(xi[:, :4], "similarity")[:, :2, :2]
    scale = torch.exp(xi[:, 3])
    assert torch.allclose(torch.linalg.det(similarity), scale**2, rtol=1e-4)
    affine = warps.exp(xi[:, :6], "affine")
    assert torch.allclose(affine[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(len(xi), 3))
    homography = warps.exp(xi, "homography")
    assert not torch.allclose(homography[:, 2, :2], torch.zeros(len(xi), 2))
    assert torch.allclose(homography[:, 2, 2], torch.ones(len(xi)))


def test_rotation_generator_is_counterclockwise_in_image_terms():
    # x to the right, y down: +90 degrees maps the right-pointing unit vector to the down-pointing one.
    T = warps.exp(torch.tensor([[0.0, 0.0, math.pi / 2]]), "se2")
    assert torch.allclose(warps.transform_points(T, torch.tensor([[[0.5, 0.0]]])), torch.tensor([[[0.0, 0.5]]]), atol=1e-6)


def test_invert_general_matrices():
    T = warps.exp(random_xi(dims=8)) @ warps.hflip(torch.tensor([True] * 8 + [False] * 8))
    assert torch.allclose(warps.compose(T, warps.invert(T)), warps.identity(16), atol=1e-5)
    assert torch.allclose(warps.compose(warps.invert(T), T), warps.identity(16), atol=1e-5)


def test_hflip_is_an_involution_outside_exp():
    F = warps.hflip(torch.tensor([True]))
    assert torch.allclose(F @ F, warps.identity(1))
    assert torch.linalg.det(F).item() == -1.0


def test_pixel_normalized_round_trip():
    points = torch.rand(2, 10, 2) * torch.tensor([63.0, 31.0])
    assert torch.allclose(warps.normalized_to_pixel(warps.pixel_to_normalized(points, (32, 64)), (32, 64)), points, atol=1e-5)


def test_identity_grid_reproduces_the_image():
    image = torch.rand(2, 3, 17, 23)
    assert torch.allclose(warps.warp_by_grid(image, warps.identity_grid((17, 23), 2)), image, atol=1e-6)
    assert torch.allclose(warps.warp_image(image, warps.identity(2)), image, atol=1e-5)


@pytest.mark.parametrize("group", ["se2", "similarity", "affine", "homography"])
def test_image_and_point_warps_agree(group):
    """A bright dot warped as an image lands where the point warped by the same transform lands."""
    H = W = 96
    xi = 0.25 * torch.randn(1, warps.GROUP_DIMS[group], generator=GEN)
    if group == "homography":
        xi[:, 6:] *= 0.3  # keep the dots inside the frame
    T = warps.exp(xi, group)
    points = torch.tensor([[[40.0, 35.0], [55.0, 60.0], [48.0, 48.0]]])
    dots = torch.zeros(1, 3, H, W)
    for c, (x, y) in enumerate(points[0].long().tolist()):
        dots[0, c, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    warped = warps.warp_image(dots, T)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    mass = warped[0].sum(dim=(1, 2))
    found = torch.stack([(warped[0] * xs).sum((1, 2)) / mass, (warped[0] * ys).sum((1, 2)) / mass], -1)
    expected = warps.normalized_to_pixel(warps.transform_points(T, warps.pixel_to_normalized(points, (H, W))), (H, W))[0]
    assert (found - expected).norm(dim=-1).max() < 0.3


def test_warp_shapes_masks_and_features():
    T = warps.exp(random_xi(batch=2, dims=6), "affine")
    features = torch.rand(2, 40, 16, 16)
    assert warps.warp_image(features, T, size=(8, 12)).shape == (2, 40, 8, 12)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    warped_mask = warps.warp_image(mask, T, mode="nearest")
    assert set(warped_mask.unique().tolist()) <= {0.0, 1.0}


def test_gradients_flow_to_parameters_and_image():
    xi = torch.zeros(1, 8, requires_grad=True)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    target = warps.warp_image(image.detach(), warps.exp(torch.tensor([[0.1, 0.0, 0.2, 0, 0, 0, 0, 0]])))
    loss = (warps.warp_image(image, warps.exp(xi)) - target).pow(2).mean()
    loss.backward()
    assert xi.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
    assert torch.isfinite(xi.grad).all()


def test_nan_parameters_raise():
    with pytest.raises(FloatingPointError):
        warps.exp(torch.tensor([[float("nan"), 0.0]]), "translation")


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        warps.exp(torch.zeros(1, 3), "affine")
    with pytest.raises(ValueError):
        warps.warp_image(torch.zeros(3, 8, 8), warps.identity(1))
    with pytest.raises(ValueError):
        warps.warp_image(torch.zeros(2, 1, 8, 8), warps.identity(3))
    with pytest.raises(ValueError):
        warps.project(torch.zeros(1, 8), "projective")


def test_grid_nn_inverse():
    flow = 0.1 * torch.nn.functional.interpolate(torch.randn(1, 2, 4, 4, generator=GEN), size=(40, 40), mode="bilinear")
    grid = warps.flow_to_grid(flow)
    points = 1.6 * torch.rand(1, 50, 2, generator=GEN) - 0.8
    back = warps.invert_grid_points(warps.grid_points(points, grid), grid)
    assert (back - points).norm(dim=-1).max() < 2 * (2.0 / 40)  # within about a pixel
    inverse = warps.invert_grid(grid, (40, 40))
    assert inverse.shape == (1, 40, 40, 2)


def test_affine_grid_matches_torch_affine_grid():
    # The library's sampling grid equals torch's affine_grid with the inverse affine (a cross-check).
    T = warps.exp(random_xi(batch=3, dims=6), "affine")
    theta = warps.invert(T)[:, :2]
    ours = warps.sampling_grid(T, (20, 30))
    torchs = torch.nn.functional.affine_grid(theta, (3, 1, 20, 30), align_corners=False)
    assert torch.allclose(ours, torchs, atol=1e-5)


def test_perspective_parameters_get_gradients_at_zero():
    # The affine fast path must not cut the gradient to perspective entries that are exactly zero.
    xi = torch.zeros(1, 8, requires_grad=True)
    image = torch.rand(1, 1, 16, 16, generator=GEN)
    warps.warp_image(image, warps.exp(xi)).mul(torch.linspace(0, 1, 16)).sum().backward()
    assert xi.grad[0, 6:].abs().sum() > 0


def test_fast_affine_path_matches_general_path():
    T = warps.exp(random_xi(batch=3, dims=6), "affine")
    with torch.no_grad():
        fast = warps.sampling_grid(T, (12, 20))
    general = warps.transform_points(warps.invert(T), warps.identity_grid((12, 20), 3).reshape(3, -1, 2)).reshape(3, 12, 20, 2)
    assert torch.allclose(fast, general, atol=1e-5)


def test_warp_across_a_line_at_infinity_stays_finite():
    # Sampling at S p with S's last row (4, 0, 1): w = 1 + 4 x vanishes at x = -0.25, exactly the
    # centre of pixel 1 of a 4-pixel row (centres -0.75, -0.25, 0.25, 0.75). Dividing by that zero
    # gave inf, which grid_sample turned into NaN (a SpaceJAM run diverged in its final inference).
    sampling = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [4.0, 0.0, 1.0]]])
    points = warps.transform_points(sampling, torch.tensor([[[-0.25, 0.0], [0.75, 0.0]]]))
    assert torch.isfinite(points).all() and points[0, 0, 0].abs() >= 0.25 / warps.W_MIN
    assert torch.allclose(points[0, 1], torch.tensor([0.1875, 0.0]))  # away from the line: the plain division
    warped = warps.warp_image(torch.rand(1, 2, 4, 4), warps.invert(sampling))  # samples the input at sampling @ p
    assert torch.isfinite(warped).all()
    assert (warped[0, :, :, 1] == 0).all() and (warped[0, :, :, 2] != 0).all()  # the column on the line reads padding


def test_fit_similarity_recovers_a_similarity_ignores_zero_weights_and_never_reflects(device):
    S = warps.exp(torch.tensor([[0.3, -0.2, 0.7, 0.4]], dtype=torch.float64), "similarity")[0].to(device)
    source = torch.randn(9, 2, generator=GEN, dtype=torch.float64).to(device)
    target = warps.transform_points(S[None], source[None])[0]
    target[0] += 5.0  # an outlier, weighted out
    weight = torch.ones(9, device=device)
    weight[0] = 0
    assert torch.allclose(warps.fit_similarity(source, target, weight), S, atol=1e-10)
    mirrored = source * torch.tensor([-1.0, 1.0], dtype=torch.float64, device=device)
    fitted = warps.fit_similarity(source, mirrored)
    assert torch.linalg.det(fitted[:2, :2]) > 0  # the best rotation and scale, not the mirror
    assert torch.allclose(fitted[:2, :2] @ fitted[:2, :2].T, torch.eye(2, dtype=torch.float64, device=device) * torch.linalg.det(fitted[:2, :2]))
