"""One result type for every method: :class:`Alignment` (what every method's ``fit`` returns;
taught in Chapter 7, "One protocol, every method").

Every method module exposes the same entry point::

    fit(images, config, *, masks=None, backbone=None, device=None, callback=None) -> Alignment

``images`` ``(N, C, H, W)`` in ``[0, 1]``; ``config`` the method's frozen config
(``Config.for_mode(mode, **overrides)``); ``masks`` ``(N, 1, h, w)`` foreground in ``[0, 1]`` (None:
the method finds them, or needs none); ``backbone`` a :class:`congealing.features.Backbone` (None:
the default one, for methods that use features); ``callback(done, total)`` after every
iteration or epoch. The returned :class:`Alignment` says where every image goes in the common frame
(the *atlas*), in one of three forms:

* ``transforms`` ``(N, 3, 3)``: image -> atlas in normalised coordinates (the :mod:`congealing.warps`
  convention), a mirror included as a negative determinant. Classical congealing and SpaceJAM.
* ``grids`` ``(N, h, w, 2)``: atlas -> image sampling grids into the original (unmirrored) images.
  Neural Congealing. Going from an image to the atlas then needs an inverse: by nearest
  neighbours over the atlas pixels (:func:`congealing.warps.invert_grid_points`), unless the
  method supplies an exact ``point_map``.
* ``point_map`` only (with ``flips`` ``(N,)``, which gives the number of images): the common frame
  is not a plane, so there is no 2-D warp, only image-to-image correspondence. 3-D congealing
  (:func:`congealing.congeal3d.fit`), whose common frame is a canonical 3-D shape; its ``state``
  holds the cameras and the coordinate maps.

The same three uses work on the first two forms: :meth:`Alignment.warp` (images into the atlas
frame), :meth:`Alignment.transfer_points` (a keypoint of one image to another, through the atlas:
how PCK is measured) and :meth:`Alignment.propagate_edit` (an edit drawn once on the atlas, pasted
onto every image). The point-map form answers :meth:`Alignment.transfer_points` only; ``warp`` and
``propagate_edit`` raise ``ValueError``.

>>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.25, 0.0]]), "translation")  # image 1 is shifted by 1/8 of its width
>>> alignment = Alignment("demo", (16, 16), transforms=T)
>>> alignment.transfer_points(0, 1, torch.tensor([[8.0, 8.0]]))
tensor([[6., 8.]])
>>> alignment.flips.tolist()
[False, False]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import warps

__all__ = ["Alignment", "PointMap", "ReportViews", "transfer_via_transforms", "transfer_via_grids"]

#: ``(src, tgt, points (K, 2) pixel xy in image src) -> (K, 2) pixel xy in image tgt``.
PointMap = Callable[[int, int, torch.Tensor], torch.Tensor]


@dataclass
class ReportViews:
    """What a method shows in the ``congeal align`` report besides what every method shows (the
    inputs, the aligned images, their mean and the propagated edit).

    A method's ``fit`` fills :attr:`Alignment.report` with a function ``report(images, side) ->
    ReportViews``; the report (:func:`congealing.align.align`) calls it once, so nothing here is
    computed when an alignment is only evaluated.

    Attributes:
        atlas: named atlas-frame pictures ``(C, h, w)``, shown after the mean of the aligned images.
        images: named per-image columns ``(N, C, H, W)``, shown beside the aligned images.
        masks: ``(N, 1, h, w)`` in ``[0, 1]``, what the method treated as the object, or None.
        scores: a per-image score ``{"name", "values" (N,), "better": "lower" | "higher", "doc"}``,
            or None.
        edit_region: ``(side, side)`` where the demo edit is drawn in the atlas frame (> 0.5), or
            None: a disk at the centre.

    Example:
        >>> views = ReportViews(atlas={"saliency": torch.ones(1, 4, 4)})
        >>> list(views.atlas), views.images, views.masks, views.scores, views.edit_region
        (['saliency'], {}, None, None, None)
    """

    atlas: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    masks: torch.Tensor | None = None
    scores: dict | None = None
    edit_region: torch.Tensor | None = None


@dataclass
class Alignment:
    """What every method's ``fit`` returns: where every image goes in the common frame (the atlas).

    Holds exactly one of ``transforms`` (image -> atlas) or ``grids`` (atlas -> image), or neither
    and a ``point_map`` with ``flips`` (the point-map form of 3-D congealing); the methods below
    work on the first two, :meth:`transfer_points` on all three. No chapter section is about the class itself: Chapter 4, "A set of your
    choice", fits one with ``neural.fit`` and warps with :meth:`warp`; Chapter 7's table and the
    ``congeal align`` command (:mod:`congealing.align`) are built from them.

    Attributes:
        method: the registry name of the method that made it.
        size: ``(H, W)`` of the images it was fitted on; pixel coordinates refer to this size.
        transforms: ``(N, 3, 3)`` image -> atlas (normalised coordinates), or None.
        grids: ``(N, h, w, 2)`` atlas -> image sampling grids into the original images, or None.
        flips: ``(N,)`` bool, the images the method mirrored (None: read from ``transforms``'
            determinants, or all False); required in the point-map form, where it also gives ``N``.
        atlas: named atlas pictures ``(C, h, w)`` (e.g. ``"mean"``, ``"saliency"``).
        masks: ``(N, 1, h, w)`` the foreground masks the method used, or None.
        history: one dict per iteration or epoch (at least the method's loss).
        seconds: wall time of the fit.
        parameters: trainable parameters (6 per image for an affine transform each).
        state: the method's own trained objects (models, keys, configs) for the chapters.
        point_map: an exact image-to-image map to use instead of the generic one, or None.
        report: ``report(images (N, C, H, W), side) -> ReportViews``, what the ``congeal align``
            report shows of the method at atlas side ``side``, or None (nothing method-specific).

    Raises:
        ValueError: both ``transforms`` and ``grids`` are given; neither, without a ``point_map``
            and ``flips``; or one has the wrong shape.

    Example:
        >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), "translation")  # image 1: one pixel right
        >>> alignment = Alignment("demo", (4, 4), transforms=T)
        >>> len(alignment), alignment.flips.tolist()
        (2, [False, False])
        >>> points_only = Alignment("demo", (4, 4), flips=torch.zeros(3, dtype=torch.bool), point_map=lambda s, t, p: p + 1)
        >>> len(points_only), points_only.transfer_points(0, 2, torch.tensor([[1.0, 1.0]]))
        (3, tensor([[2., 2.]]))
    """

    method: str
    size: tuple[int, int]
    transforms: torch.Tensor | None = None
    grids: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    atlas: dict = field(default_factory=dict)
    masks: torch.Tensor | None = None
    history: list = field(default_factory=list)
    seconds: float = 0.0
    parameters: int = 0
    state: dict = field(default_factory=dict, repr=False)
    point_map: PointMap | None = field(default=None, repr=False)
    report: Callable[[torch.Tensor, int], ReportViews] | None = field(default=None, repr=False, compare=False)
    # transfer_points' transfer, built on first use for the mapping it was built from (see _cached_transfer)
    _transfer_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.transforms is not None and self.grids is not None:
            raise ValueError("an Alignment holds exactly one of transforms (N, 3, 3) or grids (N, h, w, 2)")
        if self.transforms is None and self.grids is None and (self.point_map is None or self.flips is None):
            raise ValueError("an Alignment holds transforms (N, 3, 3), grids (N, h, w, 2), or a point_map with flips (N,)")
        if self.transforms is not None and (self.transforms.ndim != 3 or self.transforms.shape[1:] != (3, 3)):
            raise ValueError(f"transforms must be (N, 3, 3), got {tuple(self.transforms.shape)}")
        if self.grids is not None and (self.grids.ndim != 4 or self.grids.shape[-1] != 2):
            raise ValueError(f"grids must be (N, h, w, 2), got {tuple(self.grids.shape)}")
        self.size = (int(self.size[0]), int(self.size[1]))
        if self.flips is None:
            self.flips = (torch.linalg.det(self.transforms[:, :2, :2].detach().double().cpu()) < 0 if self.transforms is not None
                          else torch.zeros(len(self.grids), dtype=torch.bool))
        self.flips = self.flips.bool().cpu()

    def __len__(self) -> int:
        return len(self.transforms if self.transforms is not None else self.grids if self.grids is not None else self.flips)

    def _check_planar(self, use: str) -> None:
        if self.transforms is None and self.grids is None:
            raise ValueError(f"{use} needs a 2-D alignment (transforms or grids); this {self.method} alignment maps points only "
                             "(3-D congealing: see state['maps'], e.g. congealing.congeal3d.propagate_nocs_edit)")

    def warp(self, images: torch.Tensor, size: int | None = None, padding_mode: str = "zeros") -> torch.Tensor:
        """Images, maps or masks ``(N, C, H, W)`` warped into the atlas frame.

        Transforms go through :func:`congealing.warps.warp_image`; grids through
        :func:`congealing.warps.warp_by_grid`, resampled first (:func:`congealing.warps.resize_grid`) when
        ``size`` differs from theirs.

        Args:
            images: ``(N, C, H, W)``, in the original orientation, one per aligned image.
            size: the output side (grids are resampled to it); None: the input's size for
                transforms, the grids' size for grids.
            padding_mode: what is read outside an image (``grid_sample``'s ``"zeros"`` or ``"border"``).

        Returns:
            ``(N, C, size, size)`` (or the input's ``(H, W)``).

        Raises:
            ValueError: ``images`` does not hold one image per aligned image, or the alignment
                has the point-map form (no 2-D warp).

        Example:
            >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), "translation")
            >>> img = torch.zeros(2, 1, 4, 4); img[:, 0, 1, 1] = 1.0
            >>> Alignment("demo", (4, 4), transforms=T).warp(img)[:, 0, 1]
            tensor([[0., 1., 0., 0.],
                    [0., 0., 1., 0.]])
        """
        self._check_planar("warp")
        if len(images) != len(self):
            raise ValueError(f"{len(images)} images but the alignment has {len(self)}")
        if self.transforms is not None:
            out_size = (size, size) if size is not None else None
            return warps.warp_image(images, self.transforms.to(images.device), size=out_size, padding_mode=padding_mode)
        grids = self.grids.to(images.device)
        if size is not None and size != grids.shape[1]:
            grids = warps.resize_grid(grids, size)
        return warps.warp_by_grid(images, grids, padding_mode=padding_mode)

    def transfer_points(self, src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        """Keypoints ``(K, 2)`` (pixel ``x, y`` in image ``src``) to image ``tgt``, through the atlas.

        Args:
            src: index of the image the points are in.
            tgt: index of the image to carry them to.
            points: ``(K, 2)`` pixel ``(x, y)`` in images of ``size``.

        Returns:
            ``(K, 2)`` pixel ``x, y`` in image ``tgt``. See :meth:`transfer`.

        Example:
            >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), "translation")
            >>> Alignment("demo", (4, 4), transforms=T).transfer_points(0, 1, torch.tensor([[1.0, 1.0]]))
            tensor([[0., 1.]])
        """
        return self._cached_transfer()(src, tgt, points)

    def _cached_transfer(self) -> PointMap:
        """:meth:`transfer`, built once (it inverts every transform or holds every grid) and rebuilt
        only if ``transforms``, ``grids``, ``point_map``, ``size`` or ``flips`` is replaced by
        another object. Editing one of those tensors in place is not seen: assign a new one."""
        key = (self.transforms, self.grids, self.point_map, self.size, self.flips)
        cached = self._transfer_cache
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            cached = self._transfer_cache = (key, self.transfer())
        return cached[1]

    def transfer(self) -> PointMap:
        """The keypoint transfer ``(src, tgt, points (K, 2)) -> (K, 2)`` in pixels of ``size``.

        :func:`transfer_via_transforms` or :func:`transfer_via_grids`, or the method's exact
        ``point_map``. The function carries ``flipped`` ``(N,)`` (the evaluator relabels left/right
        parts of mirrored pairs) and ``parameters``; :func:`congealing.evaluation.evaluate_transfer`
        scores it (Chapter 3, "5. The yardstick: keypoint transfer and PCK").

        Returns:
            the :data:`PointMap`, with attributes ``flipped`` and ``parameters``.

        Example:
            >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), "translation")
            >>> transfer = Alignment("demo", (4, 4), transforms=T).transfer()
            >>> transfer(0, 1, torch.tensor([[1.0, 1.0]])), transfer.flipped.tolist()
            (tensor([[0., 1.]]), [False, False])
        """
        if self.point_map is not None:
            point_map = self.point_map

            def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
                return point_map(src, tgt, points)
        elif self.transforms is not None:
            transfer = transfer_via_transforms(self.transforms, self.size)
        else:
            transfer = transfer_via_grids(self.grids, self.size)
        transfer.flipped = self.flips.clone()
        transfer.parameters = self.parameters
        return transfer

    def propagate_edit(self, edit: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Paste an RGBA ``edit`` drawn on the atlas onto every image, in its original orientation.

        Transforms reach each image through ``T^-1`` (:func:`congealing.warps.propagate_edit`);
        grids splat every edit pixel along its image's grid (:func:`congealing.warps.splat_edit`,
        Chapter 4, "Edit propagation"). The ``congeal align`` report uses it.

        Args:
            edit: RGBA ``(4, h, w)`` in the atlas frame; alpha (channel 3) in ``[0, 1]``.
            images: the aligned images ``(N, 3, H, W)``, values in ``[0, 1]``.

        Returns:
            the edited images ``(N, 3, H, W)``.

        Raises:
            ValueError: the alignment has the point-map form (no atlas plane to draw on).

        Example:
            >>> edit = torch.zeros(4, 4, 4); edit[:, 1, 1] = 1.0                 # one opaque white pixel
            >>> alignment = Alignment("demo", (4, 4), transforms=warps.identity(1))
            >>> alignment.propagate_edit(edit, torch.zeros(1, 3, 4, 4))[0, 0, 1].tolist()
            [0.0, 1.0, 0.0, 0.0]
        """
        self._check_planar("propagate_edit")
        if self.transforms is not None:
            return warps.propagate_edit(images, self.transforms.to(images.device), edit)
        return warps.splat_edit(images, self.grids.to(images.device), edit)



def _pixel_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def transfer_via_transforms(transforms: torch.Tensor, size: int | tuple[int, int]) -> PointMap:
    """Transfer keypoints through a common frame given by transforms ``(N, 3, 3)`` (image -> atlas).

    Closed form: ``p_tgt = T_tgt^-1 (T_src p_src)`` in normalised coordinates of images of ``size``
    (a side, or ``(H, W)``), computed in float64 on the CPU. Transforms with a negative determinant
    are mirrors; the returned function's ``flipped`` attribute says which images they are. Shown in
    Chapter 3, "5. The yardstick: keypoint transfer and PCK"; SpaceJAM's in Chapter 5, "Results on
    CUB".

    Args:
        transforms: ``(N, 3, 3)``, image -> atlas.
        size: the images' side or ``(H, W)``, in pixels.

    Returns:
        ``transfer(src, tgt, points (K, 2) pixel xy) -> (K, 2)``, with ``flipped`` ``(N,)`` bool.

    Raises:
        ValueError: ``transforms`` is not ``(N, 3, 3)``.

    Example:
        >>> T = warps.exp(torch.tensor([[0.0, 0.0], [0.25, 0.0]]), "translation")  # image 1 is shifted by 1/8 of its width
        >>> transfer_via_transforms(T, 16)(0, 1, torch.tensor([[8.0, 8.0]]))
        tensor([[6., 8.]])
    """
    if transforms.ndim != 3 or transforms.shape[1:] != (3, 3):
        raise ValueError(f"transforms must be (N, 3, 3), got {tuple(transforms.shape)}")
    size = _pixel_size(size)
    transforms = transforms.detach().cpu().double()
    inverses = warps.invert(transforms)

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        normalised = warps.pixel_to_normalized(points.double().cpu()[None], size)
        canonical = warps.transform_points(transforms[src : src + 1], normalised)
        mapped = warps.transform_points(inverses[tgt : tgt + 1], canonical)
        return warps.normalized_to_pixel(mapped, size)[0].to(points.dtype)

    transfer.flipped = torch.linalg.det(transforms[:, :2, :2]) < 0
    return transfer


def transfer_via_grids(grids: torch.Tensor, size: int | tuple[int, int], flipped: torch.Tensor | None = None) -> PointMap:
    """Transfer keypoints through dense sampling grids ``(N, h, w, 2)`` (atlas -> image).

    A source point goes to the atlas by the nearest-neighbour inverse of its grid
    (:func:`congealing.warps.invert_grid_points`, so it lands on an atlas pixel centre), and from the
    atlas to the target by sampling the target's grid (:func:`congealing.warps.grid_points`).
    Described in Chapter 3, "5. The yardstick: keypoint transfer and PCK"; the alignment report
    (:mod:`congealing.report`) uses it for saved grids, and its click-to-transfer page follows it.

    Args:
        grids: ``(N, h, w, 2)``, e.g. the ``grids`` a Neural Congealing report saves in ``mappings.pt``.
        size: the images' side or ``(H, W)``, in pixels.
        flipped: ``(N,)`` the images the aligner mirrored (if its grids include a flip), or None.

    Returns:
        ``transfer(src, tgt, points (K, 2) pixel xy) -> (K, 2)``, with ``flipped`` ``(N,)`` bool.

    Raises:
        ValueError: ``grids`` is not ``(N, h, w, 2)``.

    Example:
        >>> grid = warps.identity_grid((8, 8), 2)
        >>> transfer_via_grids(grid, 8)(0, 1, torch.tensor([[2.0, 5.0]]))
        tensor([[2., 5.]])
    """
    if grids.ndim != 4 or grids.shape[-1] != 2:
        raise ValueError(f"grids must be (N, h, w, 2), got {tuple(grids.shape)}")
    size = _pixel_size(size)
    grids = grids.detach().cpu().float()

    def transfer(src: int, tgt: int, points: torch.Tensor) -> torch.Tensor:
        normalised = warps.pixel_to_normalized(points.float().cpu()[None], size)
        atlas = warps.invert_grid_points(normalised, grids[src : src + 1])
        mapped = warps.grid_points(atlas, grids[tgt : tgt + 1])
        return warps.normalized_to_pixel(mapped, size)[0].to(points.dtype)

    transfer.flipped = torch.zeros(grids.shape[0], dtype=torch.bool) if flipped is None else flipped.bool().cpu()
    return transfer
