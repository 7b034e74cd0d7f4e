"""The geometry and statistics under every method, against independent implementations: homography
warps against scikit-image, se(3) exponentials against scipy's rotations and the closed-form
translation, the pair bootstrap against a naive resampling loop, and float64 gradchecks of the
differentiable pieces (warp, rigidity loss, renderer, se(3) exponential)."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from skimage.transform import ProjectiveTransform
from skimage.transform import warp as skimage_warp

from congealing import congeal3d, losses, metrics, warps


def _pixel_to_normalised(H, W):
    """x_norm = (2u + 1) / W - 1 (align_corners=False), as a 3 x 3 matrix on (u, v, 1)."""
    return np.array([[2.0 / W, 0.0, 1.0 / W - 1.0], [0.0, 2.0 / H, 1.0 / H - 1.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_homography_warp_matches_scikit_image(seed):
    g = torch.Generator().manual_seed(seed)
    H, W = 23, 31
    image = torch.rand(1, 1, H, W, generator=g, dtype=torch.float64)
    xi = (torch.rand(1, 8, generator=g, dtype=torch.float64) - 0.5) * 0.4  # sl(3): perspective included
    T = warps.exp(xi, "homography")
    assert T[0, 2, :2].abs().max() > 1e-3
    ours = warps.warp_image(image, T)[0, 0].numpy()
    S = _pixel_to_normalised(H, W)
    # scikit-image takes the map from output to input pixels (col, row): S^-1 T^-1 S
    inverse_map = ProjectiveTransform(matrix=np.linalg.inv(S) @ np.linalg.inv(T[0].numpy()) @ S)
    reference = skimage_warp(image[0, 0].numpy(), inverse_map, order=1, mode="constant", cval=0.0, clip=False)
    assert np.abs(ours - reference).max() < 1e-9


def _translation_of_se3(omega, v):
    """The closed-form translation V v of exp([omega, v]) (Rodrigues' V matrix)."""
    theta = np.linalg.norm(omega)
    K = np.array([[0, -omega[2], omega[1]], [omega[2], 0, -omega[0]], [-omega[1], omega[0], 0]])
    V = np.eye(3) + (1 - math.cos(theta)) / theta**2 * K + (theta - math.sin(theta)) / theta**3 * K @ K
    return V @ v


def test_se3_exp_matches_scipy_rotations_and_the_closed_form_translation():
    xi = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xi[0, :3] *= 1e-3  # a tiny rotation too
    xi[1, :3] = xi[1, :3] / xi[1, :3].norm() * 3.0  # and one near pi
    T = congeal3d.se3_exp(xi).numpy()
    for k, (omega, v) in enumerate(zip(xi[:, :3].numpy(), xi[:, 3:].numpy())):
        assert np.allclose(T[k, :3, :3], Rotation.from_rotvec(omega).as_matrix(), atol=1e-10), k
        assert np.allclose(T[k, :3, 3], _translation_of_se3(omega, v), atol=1e-9), k
        assert np.allclose(T[k, 3], [0, 0, 0, 1])


def _naive_pair_bootstrap(values, pairs, n_images, n_boot, seed, level=0.95):
    """Resample images with replacement (the same draws as the library's seeded generator); each
    replicate's value is the mean over every ordered pair of *draws* whose images form a scored pair."""
    draws = torch.randint(0, n_images, (n_boot, n_images), generator=torch.Generator().manual_seed(seed)).tolist()
    lookup = {}
    for value, (i, j) in zip(values.tolist(), pairs.tolist()):
        if not math.isnan(value):
            lookup[(i, j)] = value
    means = []
    for drawn in draws:
        collected = [lookup[(a, b)] for p, a in enumerate(drawn) for q, b in enumerate(drawn) if p != q and (a, b) in lookup]
        if collected:
            means.append(sum(collected) / len(collected))
    return tuple(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("seed", [0, 5])
def test_pair_bootstrap_matches_a_naive_resampling_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = 7
    pairs = torch.tensor([(i, j) for i in range(n) for j in range(n) if i != j and (i + j) % 3])  # not every pair is scored
    values = torch.rand(len(pairs), generator=g, dtype=torch.float64)
    values[3] = math.nan
    ours = metrics.pair_bootstrap_ci(values, pairs, n, n_boot=300, seed=seed)
    assert ours == pytest.approx(_naive_pair_bootstrap(values, pairs, n, 300, seed), abs=1e-12)


# ----------------------------------------------------------------------------- float64 gradchecks


def test_gradcheck_warp_image():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    xi = ((torch.rand(1, 8, generator=g, dtype=torch.float64) - 0.5) * 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda im, x: warps.warp_image(im, warps.exp(x, "homography")), (image, xi))


def test_gradcheck_rigidity_loss():
    g = torch.Generator().manual_seed(0)
    grid = (warps.identity_grid((6, 6), 2, torch.float64) + 0.05 * torch.randn(2, 6, 6, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(2, 6, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: losses.rigidity_loss(x, mask, 1), (grid,))
    assert torch.autograd.gradcheck(lambda x: losses.rigidity_loss(x, mask, 2), (grid,))


def test_gradcheck_se3_exp():
    xi = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(congeal3d.se3_exp, (xi,))


def test_gradcheck_render_in_the_camera_and_the_field():
    torch.manual_seed(0)
    field = congeal3d.VoxelField(resolution=5, bound=1.0).double()
    with torch.no_grad():
        field.density.normal_(0.0, 2.0)
        field.colour.normal_()
    xi = (0.1 * torch.randn(1, 6, dtype=torch.float64)).requires_grad_(True)
    base = congeal3d.spherical_cameras(torch.tensor([20.0]), torch.tensor([15.0]), 2.5).double()
    fov = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)

    def rendered(x, f):
        out = congeal3d.render(field, congeal3d.se3_exp(x) @ base, f, 3, samples=6)
        return torch.cat([out["rgb"].flatten(), out["mask"].flatten(), out["depth"].flatten()])

    assert torch.autograd.gradcheck(rendered, (xi, fov), atol=1e-6)
    density, colour = field.density.detach().clone().requires_grad_(True), field.colour.detach().clone().requires_grad_(True)
    del field.density, field.colour  # plain tensors in their place, so gradcheck can vary them

    def through_the_field(d, c):
        field.density, field.colour = d, c
        out = congeal3d.render(field, base, fov.detach(), 3, samples=6)
        return torch.cat([out["rgb"].flatten(), out["mask"].flatten()])

    assert torch.autograd.gradcheck(through_the_field, (density, colour), atol=1e-6)
