"""Dense semantic descriptors from pretrained backbones, and what the book does with them.

Layout
------
Four modules, whose public names are all re-exported here (``from congealing.features import
cosegment``):

* :mod:`congealing.features.backbones`: DINO ViT-S/8, DINOv2 ViT-S/14 and EfficientNet-Lite0
  behind one interface (:func:`load_backbone`) and cached descriptor extraction
  (:func:`extract_descriptors`) (Chapter 3, "1. Descriptors from a Vision Transformer" and "The
  same for a CNN");
* :mod:`congealing.features.pca`: descriptors shown as colour (:func:`pca_project`,
  :class:`PCAColours`) and the object's own basis (:func:`foreground_locations`) (Chapter 3, "2. Looking at 472 dimensions: PCA as colour");
* :mod:`congealing.features.cosegmentation`: saliency, k-means and co-segmentation masks
  (:func:`cosegment`, :func:`saliency_masks`) (Chapter 3, "4. Saliency and co-segmentation masks");
* :mod:`congealing.features.flips`: the consensus mirror choices of a set
  (:func:`consensus_flips`) (Chapter 4, "Quick mode on whole classes"; Chapter 5, "Reflections").
"""
from __future__ import annotations

from .backbones import (
    WeightsNotAvailableError, BackboneSpec, BACKBONES, AUTO_ORDER, Backbone, ViTKeys, EfficientNetStages,
    efficientnet_lite_state_dict, LITE_STAGE_BLOCKS, load_backbone, extract_descriptors,
)
from .pca import pca_project, channel_spread, foreground_locations, minmax_rgb, PCAColours
from .cosegmentation import commonness, border_contrast, kmeans, cosegment, saliency_masks, border_band, valid_on_grid
from .flips import consensus_flips

__all__ = [
    "WeightsNotAvailableError", "BackboneSpec", "BACKBONES", "AUTO_ORDER", "Backbone", "ViTKeys",
    "EfficientNetStages", "efficientnet_lite_state_dict", "LITE_STAGE_BLOCKS", "load_backbone", "extract_descriptors",
    "pca_project", "channel_spread", "foreground_locations", "minmax_rgb", "PCAColours", "commonness", "border_contrast", "kmeans",
    "cosegment", "saliency_masks", "border_band", "valid_on_grid", "consensus_flips",
]
