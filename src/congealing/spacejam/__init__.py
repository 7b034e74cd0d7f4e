"""SpaceJAM: fast joint alignment with a ~16K-parameter network (Barel et al., ECCV 2024).

The pipeline, as in the official code (``BGU-CS-VIL/SpaceJAM``), with the changes listed below:

1. **Keys** (:func:`prepare_keys`): dense descriptors of every image, PCA to ``K = 25`` components
   fitted on all locations of the whole set, multiplied by the set's foreground masks.
2. **Autoencoder** (:class:`KeyAutoencoder`): a per-pixel MLP of 1x1 convolutions, 25 -> 3 -> 25
   channels, 3,036 parameters. Its 3-channel code (the "low-dimensional keys", shown as RGB) is what
   the alignment network reads. Pretrained with a masked L2 reconstruction loss.
3. **Alignment network** (:class:`RecurrentLieSTN`): a small CNN (13,271 parameters) that reads a
   code map and predicts a Lie-algebra element ``xi`` in sl(3) (8 numbers). It runs 5 times with
   the same weights (3 in quick mode); each step re-warps the *original* code with the transform so
   far (so the network never sees an interpolation of an interpolation), and the steps compose as
   matrix products of exponentials, ``T = exp(xi_5) ... exp(xi_1)``. The last layer starts at zero, so
   every transform is the identity at initialisation.
4. **Curriculum**: ``xi`` is projected onto se(2), then aff(2), then sl(3)
   (:func:`congealing.warps.project`), using the nesting of the algebras.
5. **Inverse-compositional loss** (:func:`ic_loss`): for every ordered pair ``(i, j)`` of a batch,
   the keys of ``i`` carried into ``j``'s own frame by ``T_j^-1 T_i`` must reproduce ``j``'s keys.
   Nothing is measured in the atlas frame, so shrinking every image does not lower the loss, and no
   regulariser is needed.
6. **Reflections**: every image is also seen mirrored, and both configurations of every target
   are trained (the loss averages over them); each source may also be mirrored in the common frame
   (the "atlas flip"), and each pair keeps the better of the two. Each image's flip configuration
   ``c_n`` (used when it is the source of a pair, and in its final transform) is updated every 20
   epochs from a 20-epoch history, between 10 % and 90 % of training.

Transforms follow :mod:`congealing.warps`: ``T_n`` ``(3, 3)`` maps image ``n``'s normalised
coordinates to the common frame (flip included), so a keypoint moves from ``a`` to ``b`` by
``T_b^-1 T_a`` in closed form.

Differences from the official code, and why
-------------------------------------------
* Pairs are warped **once**, directly by ``T_j^-1 T_i``, instead of forward into an atlas and back
  (two interpolations), and the *decoded* keys are warped rather than the codes (the decoder is
  per-pixel, so it runs on ``B`` maps instead of ``4 B^2``). Outside the source image the
  prediction is ``Dec(0)``, what the official code's zero-padded code warp decodes to there
  (``decoded_padding``). This removes the official code's giant temporaries (22 GB on CPU, see the
  book's anchors) and is what makes it fast.
* The history that drives the flip update is recorded from the training losses instead of an
  extra evaluation pass against one random image's atlas.
* The encoder's global scalar normaliser keeps running statistics for evaluation (the official one
  uses the statistics of whichever 2 maps it is given at test time).
* The network predicts the 8 sl(3) coordinates of :func:`congealing.warps.lie_basis` (the official
  one predicts 9 matrix entries), so the STN has 13,271 instead of 13,304 parameters.
* PCA: each descriptor channel is z-scored once before the PCA (the official code, by accident,
  standardises twice: an extra per-channel affine map), and the keys are divided by one scalar
  (their foreground standard deviation) so losses are O(1) for any backbone.

>>> cfg = SpaceJAMConfig.for_mode("quick")
>>> cfg.pca_dim, cfg.low_dim, cfg.recurrences, cfg.batch_size
(25, 3, 3, 10)
>>> ae, stn = KeyAutoencoder(cfg), RecurrentLieSTN(cfg)
>>> count_parameters(ae), count_parameters(stn)
(3036, 13271)
"""
from __future__ import annotations

from .model import (
    GROUPS,
    SpaceJAMConfig,
    count_parameters,
    GlobalNorm,
    KeyAutoencoder,
    ChannelsLastAdaptiveMaxPool2d,
    RecurrentLieSTN,
)
from .losses import pair_predictions, ic_loss, atlas_loss
from .training import (
    DIVERGED_ADVICE,
    prepare_keys,
    keys_from_descriptors,
    TrainResult,
    infer,
    pretrain_epoch,
    joint_loss,
    joint_epoch,
    update_flips,
    train,
    atlas,
    codes_to_rgb,
    fit,
)

__all__ = [
    "GROUPS", "DIVERGED_ADVICE", "SpaceJAMConfig", "count_parameters", "prepare_keys",
    "keys_from_descriptors", "GlobalNorm", "KeyAutoencoder", "ChannelsLastAdaptiveMaxPool2d", "RecurrentLieSTN", "pair_predictions",
    "ic_loss", "atlas_loss", "TrainResult", "infer", "pretrain_epoch", "joint_loss", "joint_epoch",
    "update_flips", "train", "atlas", "codes_to_rgb", "fit",
]
