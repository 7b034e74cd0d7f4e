"""Transforms: planar warps as points of a Lie algebra, their exponential, composition and inverse.

The eight generators below span sl(3) (up to the identity, see :func:`lie_basis`). Their prefixes
are the nested algebras of the groups translation (2) < SE(2) (3) < similarity (4) < affine (6) <
homography (8), so a parameter vector of a small group is a parameter vector of every bigger group,
and projecting onto a smaller group is just zeroing the tail (:func:`project`). ``exp`` of any
algebra element is invertible, with inverse ``exp(-xi)``: no parameter value can make a warp
singular, which is why the later chapters optimise in the algebra. Taught in Chapter 1, "1.2
Transforms as points of a Lie algebra" and "1.3 Composing, inverting, nesting, flipping".

The module also holds the two coordinate systems of points (pixel and normalised, Chapter 1, "1.1
Where is a pixel?") and :func:`transform_points`, which maps points by a transform (Chapter 1, "1.4
Warping points and images agree"). The conventions are those of :mod:`congealing.warps`.

>>> xi = torch.tensor([[0.2, -0.1, 0.3]])          # se(2): tx, ty, rotation
>>> T = exp(xi, "se2")
>>> torch.allclose(compose(T, exp(-xi, "se2")), torch.eye(3).expand(1, 3, 3), atol=1e-6)
True
"""
from __future__ import annotations

import torch

__all__ = [
    "GROUP_DIMS", "GENERATOR_NAMES", "lie_basis", "project", "hat", "exp", "identity", "compose",
    "invert", "hflip", "pixel_to_normalized", "normalized_to_pixel", "transform_points", "fit_similarity", "W_MIN",
]


#: Number of Lie-algebra parameters of each group, in nesting order (Chapter 1, "1.3 Composing,
#: inverting, nesting, flipping").
#: The smallest ``|w|`` :func:`transform_points` divides by (points on a line at infinity stay finite).
W_MIN = 1e-6

GROUP_DIMS = {"translation": 2, "se2": 3, "similarity": 4, "affine": 6, "homography": 8}
#: Human-readable names of the eight generators, in order.
GENERATOR_NAMES = (
    "translate x",
    "translate y",
    "rotate",
    "scale",
    "aspect",
    "shear",
    "perspective x",
    "perspective y",
)


def lie_basis(dtype=torch.float32, device=None) -> torch.Tensor:
    """The eight generators ``(8, 3, 3)``: tx, ty, rotation, scale, aspect, shear, 2 x perspective.

    The scale generator is ``diag(1, 1, 0)``. Its traceless sl(3) version ``diag(1, 1, -2) / 3``
    differs from it by a multiple of the identity, which commutes with everything and so only
    rescales ``exp`` by a scalar: the same homography. Using ``diag(1, 1, 0)`` keeps the affine
    subgroup's matrices with last row exactly ``(0, 0, 1)``. The order is :data:`GENERATOR_NAMES`'s.

    Taught in Chapter 1, "1.2 Transforms as points of a Lie algebra".

    Args:
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the generators ``(8, 3, 3)``; ``G[k]`` is the algebra matrix of parameter ``k``.

    Example:
        >>> lie_basis().shape
        torch.Size([8, 3, 3])
        >>> lie_basis()[2]                                  # rotate
        tensor([[ 0., -1.,  0.],
                [ 1.,  0.,  0.],
                [ 0.,  0.,  0.]])
    """
    G = torch.zeros(8, 3, 3, dtype=dtype, device=device)
    G[0, 0, 2] = 1.0  # translate x
    G[1, 1, 2] = 1.0  # translate y
    G[2, 0, 1], G[2, 1, 0] = -1.0, 1.0  # rotate
    G[3, 0, 0], G[3, 1, 1] = 1.0, 1.0  # isotropic scale
    G[4, 0, 0], G[4, 1, 1] = 1.0, -1.0  # aspect (area-preserving stretch)
    G[5, 0, 1], G[5, 1, 0] = 1.0, 1.0  # shear (symmetric)
    G[6, 2, 0] = 1.0  # perspective x
    G[7, 2, 1] = 1.0  # perspective y
    return G


def _check_group(group: str) -> int:
    if group not in GROUP_DIMS:
        raise ValueError(f"unknown group {group!r}; choose one of {list(GROUP_DIMS)}")
    return GROUP_DIMS[group]


def project(xi: torch.Tensor, group: str) -> torch.Tensor:
    """Project algebra parameters ``(B, k)`` onto ``group``'s sub-algebra: keep its prefix, zero the rest.

    The result has the same shape as ``xi``; this is the curriculum step of SpaceJAM
    (se(2) -> aff(2) -> sl(3)) in one line. Taught in Chapter 1, "1.3 Composing, inverting,
    nesting, flipping"; the curriculum in Chapter 5, "Lie groups, the curriculum and the cascade".

    Args:
        xi: algebra parameters ``(B, k)``, ``k <= 8``, in :data:`GENERATOR_NAMES` order.
        group: one of :data:`GROUP_DIMS`'s keys.

    Returns:
        ``xi`` with every parameter past the group's ``GROUP_DIMS[group]`` set to zero, ``(B, k)``.

    Raises:
        ValueError: ``group`` is not a key of :data:`GROUP_DIMS`.

    Example:
        >>> project(torch.ones(1, 8), "similarity")
        tensor([[1., 1., 1., 1., 0., 0., 0., 0.]])
    """
    dim = _check_group(group)
    keep = torch.zeros(xi.shape[-1], dtype=xi.dtype, device=xi.device)
    keep[:dim] = 1.0
    return xi * keep


def hat(xi: torch.Tensor) -> torch.Tensor:
    """Algebra parameters ``(B, k)``, ``k <= 8``, to algebra matrices ``(B, 3, 3)``.

    The "hat" map ``xi -> sum_k xi[k] * G[k]`` over the first ``k`` generators of :func:`lie_basis`;
    :func:`exp` exponentiates its result. Taught in Chapter 1, "1.2 Transforms as points of a Lie
    algebra".

    Args:
        xi: algebra parameters ``(B, k)`` with ``k <= 8``, in :data:`GENERATOR_NAMES` order.

    Returns:
        the algebra matrices ``(B, 3, 3)``, same dtype and device as ``xi``.

    Raises:
        ValueError: ``xi`` is not 2-D or has more than 8 parameters.

    Example:
        >>> hat(torch.tensor([[0.0, 0.0, 1.0]]))            # a unit rotation generator
        tensor([[[ 0., -1.,  0.],
                 [ 1.,  0.,  0.],
                 [ 0.,  0.,  0.]]])
    """
    if xi.ndim != 2 or xi.shape[-1] > 8:
        raise ValueError(f"expected parameters of shape (B, k<=8), got {tuple(xi.shape)}")
    G = lie_basis(xi.dtype, xi.device)[: xi.shape[-1]]
    return torch.einsum("bk,kij->bij", xi, G)


def exp(xi: torch.Tensor, group: str | None = None) -> torch.Tensor:
    """The transform ``(B, 3, 3)`` of algebra parameters ``xi`` ``(B, k)`` (the matrix exponential).

    With ``group`` given, ``xi`` must have exactly that group's number of parameters. Homographies
    (``k > 6``) are normalised so that ``T[2, 2] = 1``. Differentiable. Taught in Chapter 1, "1.2
    Transforms as points of a Lie algebra".

    Args:
        xi: algebra parameters ``(B, k)``, ``k <= 8``, in :data:`GENERATOR_NAMES` order.
        group: optional group name (a key of :data:`GROUP_DIMS`) that ``k`` is checked against.

    Returns:
        the transforms ``(B, 3, 3)``, same dtype and device as ``xi``; ``exp(-xi)`` is the inverse.

    Raises:
        ValueError: ``group`` is unknown, ``k`` does not match it, or ``xi`` is not ``(B, k<=8)``.
        FloatingPointError: ``xi`` holds NaN or inf (an optimisation diverged).

    Example:
        >>> exp(torch.tensor([[0.5, 0.0]]), "translation")[0]
        tensor([[1.0000, 0.0000, 0.5000],
                [0.0000, 1.0000, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    if group is not None and xi.shape[-1] != _check_group(group):
        raise ValueError(f"group {group!r} has {GROUP_DIMS[group]} parameters, got {xi.shape[-1]}")
    if not torch.isfinite(xi).all():
        raise FloatingPointError("non-finite Lie-algebra parameters (NaN or inf): the optimisation diverged")
    T = torch.linalg.matrix_exp(hat(xi))
    if xi.shape[-1] > 6:
        T = T / T[:, 2:3, 2:3]
    return T


def identity(batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """``batch`` identity transforms ``(B, 3, 3)``.

    A fresh tensor (not a view), so callers may write into it. Used throughout Chapter 1, "1.3
    Composing, inverting, nesting, flipping"; classical congealing starts from it.

    Args:
        batch: ``B``, the number of transforms.
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        ``B`` copies of the 3 x 3 identity, ``(B, 3, 3)``.

    Example:
        >>> identity(2).shape
        torch.Size([2, 3, 3])
    """
    return torch.eye(3, dtype=dtype, device=device).expand(batch, 3, 3).clone()


def compose(*transforms: torch.Tensor) -> torch.Tensor:
    """``compose(A, B, C) = A @ B @ C``: apply ``C`` first, then ``B``, then ``A``.

    The product is normalised so that ``T[2, 2] = 1``. Taught in Chapter 1, "1.3 Composing,
    inverting, nesting, flipping".

    Args:
        *transforms: one or more transforms, each ``(B, 3, 3)`` (or broadcastable to it).

    Returns:
        the composed transform ``(B, 3, 3)``.

    Raises:
        ValueError: no transform was given.

    Example:
        >>> shift = exp(torch.tensor([[0.5, 0.0]]), "translation")
        >>> transform_points(compose(shift, hflip(True)), torch.tensor([[[0.5, 0.0]]]))  # flip, then shift
        tensor([[[0., 0.]]])
    """
    if not transforms:
        raise ValueError("compose needs at least one transform")
    out = transforms[0]
    for T in transforms[1:]:
        out = out @ T
    return _normalise(out)


def invert(T: torch.Tensor) -> torch.Tensor:
    """The inverse transform ``(B, 3, 3)``.

    ``torch.linalg.inv``, normalised so that ``T[2, 2] = 1``. Taught in Chapter 1, "1.3 Composing,
    inverting, nesting, flipping".

    Args:
        T: transforms ``(B, 3, 3)``.

    Returns:
        ``T^-1`` ``(B, 3, 3)``, so that ``compose(T, invert(T))`` is the identity.

    Example:
        >>> T = exp(torch.tensor([[0.1, 0.2, 0.3, 0.1, 0.05, -0.05, 0.1, 0.0]]))
        >>> torch.allclose(compose(T, invert(T)), identity(1), atol=1e-5)
        True
    """
    return _normalise(torch.linalg.inv(T))


def _normalise(T: torch.Tensor) -> torch.Tensor:
    # Homographies are defined up to scale; keep T[2, 2] = 1 so affine matrices stay affine.
    return T / T[..., 2:3, 2:3]


def hflip(flip: torch.Tensor | bool, batch: int | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Horizontal-flip transforms ``(B, 3, 3)``: ``diag(-1, 1, 1)`` where ``flip`` is true, else identity.

    In normalised coordinates the flip is ``x -> -x`` about the image centre. It is not in the
    identity component of any group above (its determinant is -1), so it is handled as a discrete
    choice composed with a group element: ``T = exp(xi) @ hflip(f)``. Taught in Chapter 1, "1.3
    Composing, inverting, nesting, flipping"; SpaceJAM's flips in Chapter 5, "Reflections".

    Args:
        flip: one flag per image ``(B,)`` (bool or 0/1), or a single flag.
        batch: with a single flag, repeat it ``batch`` times.
        dtype: dtype of the result.
        device: device of the result (default: the CPU).

    Returns:
        the flip transforms ``(B, 3, 3)``.

    Example:
        >>> hflip(torch.tensor([True, False]))[:, 0, 0]
        tensor([-1.,  1.])
    """
    flip = torch.as_tensor(flip, device=device).reshape(-1)
    if batch is not None and flip.numel() == 1:
        flip = flip.expand(batch)
    T = identity(flip.numel(), dtype=dtype, device=device)
    T[:, 0, 0] = 1.0 - 2.0 * flip.to(dtype)
    return T


def pixel_to_normalized(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates (centres at integers) to normalised ``[-1, 1]`` coordinates.

    Pixel ``x`` maps to ``(2x + 1) / W - 1`` (the ``align_corners=False`` convention of the module
    docstring). Taught in Chapter 1, "1.1 Where is a pixel?".

    Args:
        points: pixel ``(x, y)`` points ``(..., 2)``, e.g. ``(B, N, 2)``, floating point.
        size: the image's ``(H, W)``.

    Returns:
        the normalised points, same shape as ``points``.

    Example:
        >>> pixel_to_normalized(torch.tensor([[[0.0, 0.0], [3.0, 1.0]]]), (2, 4))
        tensor([[[-0.7500, -0.5000],
                 [ 0.7500,  0.5000]]])
    """
    H, W = size
    scale = points.new_tensor([W, H])
    return (2.0 * points + 1.0) / scale - 1.0


def normalized_to_pixel(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixel_to_normalized`: normalised ``[-1, 1]`` points to pixel coordinates.

    Used in Chapter 1, "1.4 Warping points and images agree".

    Args:
        points: normalised ``(x, y)`` points ``(..., 2)``, e.g. ``(B, N, 2)``.
        size: the image's ``(H, W)``.

    Returns:
        the pixel points (centres at integers), same shape as ``points``.

    Example:
        >>> normalized_to_pixel(torch.tensor([[[-0.75, -0.5], [0.75, 0.5]]]), (2, 4))
        tensor([[[0., 0.],
                 [3., 1.]]])
    """
    H, W = size
    scale = points.new_tensor([W, H])
    return ((points + 1.0) * scale - 1.0) / 2.0


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map normalised points ``(B, N, 2)`` by transforms ``(B, 3, 3)`` (input frame -> output frame).

    Homogeneous multiplication followed by the perspective division. A point on (or within 1e-6 of)
    the homography's line at infinity, where ``w = 0``, is divided by ``w`` clamped to ``+-1e-6``:
    it lands far outside the frame (sampled there as padding) instead of at ``inf``, which
    ``grid_sample`` would turn into NaN. Taught in Chapter 1, "1.4 Warping points and images agree".

    Args:
        T: transforms ``(B, 3, 3)``.
        points: normalised ``(x, y)`` points ``(B, N, 2)`` of the input frame.

    Returns:
        the mapped points ``(B, N, 2)`` in the output frame.

    Example:
        >>> transform_points(exp(torch.tensor([[0.5, -0.5]]), "translation"), torch.zeros(1, 1, 2))
        tensor([[[ 0.5000, -0.5000]]])
    """
    ones = torch.ones_like(points[..., :1])
    homogeneous = torch.cat([points, ones], dim=-1) @ T.transpose(1, 2)
    w = homogeneous[..., 2:3]
    w = torch.where(w.abs() < W_MIN, torch.copysign(torch.full_like(w, W_MIN), w), w)
    return homogeneous[..., :2] / w


def fit_similarity(source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The similarity ``(3, 3)`` that best maps points ``source`` ``(K, 2)`` onto ``target`` ``(K, 2)``.

    Weighted least squares in closed form (Umeyama 1991): the rotation from the SVD of the weighted
    cross-covariance (never a reflection), then the scale and the translation. Points of weight 0
    play no part. Chapter 5 fits one per bird to its keypoints ("What the loss prefers",
    :func:`congealing.evaluation.keypoint_similarities`).

    Args:
        source: ``(K, 2)`` points.
        target: ``(K, 2)`` points.
        weight: ``(K,)`` non-negative weights with at least two points' positive; None: all 1.

    Returns:
        ``(3, 3)`` in ``source``'s dtype.

    Example:
        >>> S = torch.tensor([[0.0, -2.0, 1.0], [2.0, 0.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> torch.allclose(fit_similarity(p, transform_points(S[None], p[None])[0]), S)
        True
    """
    w = (torch.ones(len(source), device=source.device) if weight is None else weight).to(source.dtype)[:, None]
    mean_s, mean_t = (w * source).sum(0) / w.sum(), (w * target).sum(0) / w.sum()
    s, t = source - mean_s, target - mean_t
    U, sigma, Vh = torch.linalg.svd((w * t).T @ s)  # the weighted cross-covariance, target x source
    d = torch.ones(2, dtype=source.dtype, device=source.device)
    d[1] = torch.sign(torch.linalg.det(U @ Vh))  # a rotation, not a reflection
    rotation = U @ torch.diag(d) @ Vh
    scale = (sigma * d).sum() / (w * s.pow(2)).sum()
    out = torch.eye(3, dtype=source.dtype, device=source.device)
    out[:2, :2], out[:2, 2] = scale * rotation, mean_t - scale * rotation @ mean_s
    return out
