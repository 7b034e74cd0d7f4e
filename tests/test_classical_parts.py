"""The pieces of classical congealing, each against an independent reference: soft binning by the
hat-function formula, the blur against scipy, generator fields and steepest-descent images against
finite differences of the library's own warp and against autograd through an analytic image, the
damped Gauss-Newton solve against numpy. Synthetic inputs only (fast, no data)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from congealing import classical, mnist, warps


@pytest.mark.parametrize("bins", [2, 3, 5, 16])
def test_soft_bins_are_the_hat_functions_of_the_bin_centres(bins):
    values = torch.tensor([0.0, 1.0, 0.5, 0.3, 0.999, 0.001, 2 / 3, -0.2, 1.3]).view(-1, 1, 1, 1)
    weights = classical.soft_bins(values, bins)[:, :, 0, 0]  # (V, K)
    centres = torch.linspace(0, 1, bins)
    clamped = values.view(-1, 1).clamp(0, 1)
    hats = (1 - (clamped - centres).abs() * (bins - 1)).clamp_min(0)  # w_j(v) = max(0, 1 - |v - c_j| / spacing)
    assert torch.allclose(weights, hats, atol=1e-6)
    assert torch.allclose(weights.sum(1), torch.ones(len(values)), atol=1e-6)
    assert torch.allclose((weights * centres).sum(1), clamped[:, 0], atol=1e-6)  # the bins reconstruct the value


def test_pixel_stack_entropy_of_three_equally_likely_levels():
    stack = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    assert classical.pixel_stack_entropy(stack, bins=3).item() == pytest.approx(math.log2(3), rel=1e-5)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.3])
def test_gaussian_blur_matches_scipy(sigma):
    images = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blurred = classical.gaussian_blur(images, sigma)
    radius = max(1, math.ceil(3 * sigma))
    # scipy: the same sampled Gaussian (radius int(truncate * sigma + 0.5)), replicated edges ("nearest")
    reference = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=radius / sigma)
    assert np.allclose(blurred.numpy(), reference, atol=1e-10)
    assert classical.gaussian_blur(images, 0) is images


def _generic_affine(seed=0, scale=0.3, dtype=torch.float64):
    return (torch.rand(classical.AFFINE_DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype) - 0.5) * scale


def test_generator_fields_are_the_velocities_of_the_affine_exponential():
    size, eps = (6, 9), 1e-6
    fields = classical.generator_fields(size, torch.float64)
    assert fields.shape == (classical.AFFINE_DIM, *size, 2)
    points = warps.identity_grid(size, 1, torch.float64).reshape(1, -1, 2)
    for k in range(classical.AFFINE_DIM):
        step = torch.zeros(1, classical.AFFINE_DIM, dtype=torch.float64)
        step[0, k] = eps
        moved = warps.transform_points(warps.exp(step, "affine"), points) - warps.transform_points(warps.exp(-step, "affine"), points)
        assert torch.allclose(fields[k].reshape(-1, 2), moved[0] / (2 * eps), atol=1e-7), k


def _smooth_image(size=32):
    """An analytic image f(x, y) (normalised coordinates) and its samples at the pixel centres."""
    f = lambda p: torch.sin(2.0 * p[..., 0] + 1.0 * p[..., 1]) + 0.5 * torch.cos(1.5 * p[..., 0] * p[..., 1] - 1.0)  # noqa: E731
    grid = warps.identity_grid((size, size), 1, torch.float64)
    return f, grid, f(grid)[:, None]


def test_steepest_descent_images_are_the_jacobian_of_the_warp():
    """J[p, k] = d/dxi_k of I(exp(xi) x_p) at xi = 0: against autograd through the analytic image
    (independent of any sampling), and against central differences of the library's own warp."""
    f, grid, image = _smooth_image()
    J = classical.steepest_descent_images(image, classical.generator_fields(image.shape[-2:], torch.float64))[0]  # (P, 6)
    points = grid.reshape(1, -1, 2)
    analytic = torch.autograd.functional.jacobian(lambda xi: f(warps.transform_points(warps.exp(xi[None], "affine"), points))[0], torch.zeros(6, dtype=torch.float64), vectorize=True)
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[1:-1, 1:-1] = True  # the border uses one-sided differences
    inner = inner.flatten()
    # central differences of a smooth image: O(h^2) from the exact derivative
    assert (J[inner] - analytic[inner]).abs().max() < 0.01 * analytic.abs().max()
    # the library's warp samples I at T^-1 x: its derivative in xi at exp(-xi) is J, to rounding
    eps = 1e-6
    for k in range(6):
        step = torch.zeros(1, 6, dtype=torch.float64)
        step[0, k] = eps
        difference = (warps.warp_image(image, warps.exp(-step, "affine")) - warps.warp_image(image, warps.exp(step, "affine"))).flatten() / (2 * eps)
        assert torch.allclose(J[inner, k], difference[inner], atol=1e-5), k


def test_solve_damped_against_numpy():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 10, 6, generator=g, dtype=torch.float64)
    hessian, rhs = A.transpose(1, 2) @ A, torch.randn(3, 6, generator=g, dtype=torch.float64)
    undamped = classical.common._solve_damped(hessian, rhs, 0.0, 1e9)
    assert np.allclose(undamped.numpy(), np.linalg.solve(hessian.numpy(), rhs.numpy()[..., None])[..., 0], rtol=1e-9)
    damping = 0.3
    scale = np.trace(hessian.numpy(), axis1=1, axis2=2) / 6  # relative to each Hessian's mean diagonal
    damped = classical.common._solve_damped(hessian, rhs, damping, 1e9).numpy()
    expected = np.stack([np.linalg.solve(h + damping * s * np.eye(6), r) for h, s, r in zip(hessian.numpy(), scale, rhs.numpy())])
    assert np.allclose(damped, expected, rtol=1e-9)
    # steps longer than max_step are shortened to exactly max_step, in the same direction; shorter ones are kept
    max_step = 0.5 * float(np.linalg.norm(expected, axis=1).min())
    clipped = classical.common._solve_damped(hessian, rhs, damping, max_step).numpy()
    assert np.allclose(np.linalg.norm(clipped, axis=1), max_step)
    assert np.allclose(clipped / max_step, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    # an image with nothing to align (zero Hessian, zero gradient) gets no step, not NaN
    assert torch.equal(classical.common._solve_damped(torch.zeros(1, 6, 6), torch.zeros(1, 6), 0.1, 1.0), torch.zeros(1, 6))


@pytest.mark.parametrize("method", ["lsq", "ic-lsq", "entropy"])
def test_congealing_recovers_known_shifts_on_every_device(method, device):
    """Copies of one smooth blob under known translations: congealing brings them together, on
    the CPU and (when present) on CUDA."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
    blob = torch.exp(-((xs + 0.1) ** 2 / 0.08 + (ys - 0.05) ** 2 / 0.15))[None, None]
    shifts = torch.tensor([[0.1, 0.0], [-0.1, 0.05], [0.0, -0.1], [0.05, 0.1], [0.0, 0.0], [-0.05, -0.05]])
    known = warps.exp(shifts, "translation")
    images = warps.warp_image(blob.expand(6, -1, -1, -1), known).to(device)
    result = classical.congeal(images, method, classical.CONFIGS[method](iterations=25))
    assert result.transforms.device.type == device.type
    error = lambda T: mnist.residual_alignment_error(warps.compose(T.cpu(), known), (24, 24)).mean()  # noqa: E731
    assert error(result.transforms) < 0.5 * error(warps.identity(6)), (float(error(result.transforms)), float(error(warps.identity(6))))
