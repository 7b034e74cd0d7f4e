"""Image sets: a user's folder, MNIST, CUB-200-2011 and NeRF-synthetic, in their official layouts.

Layout
------
Three modules, whose public names are all re-exported here (``from congealing.data import
load_cub_class``):

* :mod:`congealing.data.sources`: where each dataset comes from and where it is found
  (:func:`find_dataset`: an explicit root, then ``$CONGEAL_DATA``, then the download cache);
* :mod:`congealing.data.images`: reading any common image file, squaring it, and a user's folder
  as an :class:`ImageSet` (:func:`load_image_folder`, :func:`load_masks`);
* :mod:`congealing.data.datasets`: the readers of MNIST (:func:`load_mnist`), CUB-200-2011
  (:func:`load_cub_class`) and NeRF-synthetic (:func:`load_nerf_synthetic`).

Images come out as float tensors in ``[0, 1]``, ``(N, 3, S, S)``; keypoints in pixel coordinates of
those tensors (centres at integers, the convention of :mod:`congealing.warps`).
"""
from __future__ import annotations

from .sources import DatasetNotFoundError, DatasetSource, DATASETS, find_dataset
from .images import (
    IMAGE_SUFFIXES, ImageSetError, read_image, to_square, to_tensor, ImageSet, load_image_folder, load_masks,
)
from .datasets import (
    load_mnist, CUBSet, cub_crop_box, cub_classes_on_disk, cub_box_masks, load_cub_class, NerfScene,
    load_nerf_synthetic,
)

__all__ = [
    "IMAGE_SUFFIXES", "DatasetNotFoundError", "ImageSetError", "DatasetSource", "DATASETS",
    "find_dataset", "read_image", "to_square", "to_tensor", "ImageSet", "load_image_folder",
    "load_masks", "load_mnist", "CUBSet", "cub_crop_box", "cub_classes_on_disk", "cub_box_masks",
    "load_cub_class", "NerfScene", "load_nerf_synthetic",
]
