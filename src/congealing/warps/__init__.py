"""Planar warps: Lie-algebra parameters, matrix exponentials, and dense sampling grids.

Conventions (used by every chapter)
-----------------------------------
* Images, feature maps and masks are ``(B, C, H, W)`` tensors.
* Points are ``(B, N, 2)`` tensors of ``(x, y)``.
* **Normalised coordinates** run from -1 to 1 across the image: -1 and +1 are the *outer edges* of
  the first and last pixel, exactly as ``F.grid_sample(..., align_corners=False)`` reads them. All
  transforms act on normalised coordinates, so one matrix works at any resolution.
* **Pixel coordinates** put pixel centres at integers ``0 .. W-1`` (x) and ``0 .. H-1`` (y).
* A **transform** is a ``(B, 3, 3)`` matrix ``T`` acting on homogeneous normalised coordinates. It
  maps a point of the *input* image to the *output* (aligned) frame: ``p_out ~ T @ p_in``. Warping
  an image by ``T`` therefore samples the input at ``T^-1(p)`` for every output pixel ``p``
  (:func:`warp_image`), which is what makes image warps and point warps agree.
* ``compose(A, B)`` is ``A @ B``: first ``B``, then ``A``.
* A **sampling grid** ``(B, H, W, 2)`` is the dense, non-parametric warp: for every output pixel,
  the normalised input coordinate to read (the ``grid_sample`` convention, a *backward* map).

Layout
------
Two modules, whose public names are all re-exported here (``from congealing.warps import exp``):

* :mod:`congealing.warps.transforms`: the Lie algebra (:func:`lie_basis`, :func:`exp`,
  :func:`project`), :func:`compose`, :func:`invert`, :func:`hflip`, points in pixel and
  normalised coordinates (Chapter 1, sections 1.1-1.4), and :func:`fit_similarity` (points to points);
* :mod:`congealing.warps.grids`: sampling grids: :func:`warp_image`, dense warps, grid inversion,
  and edits painted through transforms or grids (Chapter 1, sections 1.4-1.5; Chapter 4, "Edit
  propagation").
"""
from __future__ import annotations

from .transforms import (
    GROUP_DIMS, GENERATOR_NAMES, lie_basis, project, hat, exp, identity, compose, invert, hflip,
    pixel_to_normalized, normalized_to_pixel, transform_points, fit_similarity, W_MIN,
)
from .grids import (
    identity_grid, sampling_grid, warp_image, warp_by_grid, flow_to_grid, grid_points, resize, resize_grid,
    propagate_edit, splat_edit, invert_grid_points, invert_grid,
)

__all__ = [
    "GROUP_DIMS", "GENERATOR_NAMES", "lie_basis", "project", "hat", "exp", "identity", "compose",
    "invert", "hflip", "pixel_to_normalized", "normalized_to_pixel", "transform_points", "fit_similarity", "W_MIN",
    "identity_grid", "sampling_grid", "warp_image", "warp_by_grid", "flow_to_grid", "grid_points",
    "resize", "resize_grid", "propagate_edit", "splat_edit", "invert_grid_points", "invert_grid",
]
