"""Classical congealing: joint alignment of a set of images with no network and no labels.

Taught in Chapter 2, "Classical congealing"; run through the common fit protocol in Chapter 7,
"One protocol, every method".

Three methods, one call signature (a stack ``(N, C, H, W)`` in, a :class:`CongealResult` out):

* :func:`congeal_entropy`: Learned-Miller's entropy congealing ("Data driven image models through
  continuous joint alignment", TPAMI 2006). Coordinate descent over each image's affine parameters
  to lower the summed entropy of the *pixel stacks* (the values one pixel takes across the set).
* :func:`congeal_lsq`: least-squares congealing (Cox, Sridharan, Lucey, Cohn, CVPR 2008):
  Gauss-Newton on the sum of squared differences of every image to the others.
* :func:`congeal_ic_lsq`: the inverse-compositional form (same authors, ICCV 2009): the Jacobian
  and per-pixel Hessian terms come from the one shared mean image, so they are computed once per
  iteration for the whole set instead of once per image.

The sequence of pixel-stack distributions learned by entropy congealing is an *image funnel*
(:class:`Funnel`, :func:`funnel_align`) that aligns new images one at a time, with no set around.
:func:`congeal` runs any of the three by name; :func:`fit` returns a
:class:`congealing.alignment.Alignment` like every other method.

Conventions follow :mod:`congealing.warps`: transforms ``(N, 3, 3)`` map each input image to the
common (aligned) frame, normalised coordinates, ``aligned = warp_image(images, transforms)``. The
six affine generators of :func:`congealing.warps.lie_basis` are the parameters (x/y translation,
rotation, log-scale, log-aspect, shear). The paper uses seven (two translations, rotation, two
log-scales, two shears), one more than the affine group has; these six span the same transforms.

All per-image updates are batched over the whole set (one ``grid_sample`` call per candidate warp),
so the cost of an iteration grows linearly in ``N``.

Layout: :mod:`.configs` (settings and results), :mod:`.common` (the shared pieces),
:mod:`.entropy` (entropy congealing, the funnel), :mod:`.least_squares` (LSQ and IC-LSQ),
:mod:`.protocol` (:func:`congeal` by name and :func:`fit`).
"""
from __future__ import annotations

from .configs import AFFINE_DIM, METHOD_NAMES, EntropyConfig, LSQConfig, ICLSQConfig, CONFIGS, CongealResult, Funnel
from .common import (
    as_image_stack, affine_generators, recentre, generator_fields, image_gradient, gaussian_blur, steepest_descent_images,
)
from .entropy import soft_bins, pixel_stack_entropy, warp_affine, congeal_entropy, funnel_align
from .least_squares import congeal_lsq, congeal_ic_lsq
from .protocol import congeal, method_of, fit

__all__ = [
    "AFFINE_DIM", "METHOD_NAMES", "EntropyConfig", "LSQConfig", "ICLSQConfig", "CONFIGS",
    "CongealResult", "Funnel", "as_image_stack", "affine_generators", "recentre",
    "generator_fields", "image_gradient", "gaussian_blur", "steepest_descent_images", "soft_bins",
    "pixel_stack_entropy", "warp_affine", "congeal_entropy", "funnel_align", "congeal_lsq",
    "congeal_ic_lsq", "congeal", "method_of", "fit",
]
