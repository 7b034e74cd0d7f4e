"""A text-to-image diffusion model as a shape prior: textual inversion and score distillation (Chapter 6).

3D Congealing (Zhang et al. 2024) gets its canonical shape from a pre-trained diffusion model in two
steps. **Textual inversion** learns one new token embedding ``y*`` so that the frozen model
reconstructs the input photos::

    L_TI = E_{x, t, eps} || eps - eps_phi(x_t, t, c(y*)) ||^2        (only y*'s embedding row trains)

**Score distillation sampling** (SDS, DreamFusion) then optimises a 3-D field ``theta`` so that its
renders look like ``y*`` to the model. With classifier-free guidance (scale ``s``)::

    eps_hat = eps_phi(z_t, t, "") + s (eps_phi(z_t, t, y*) - eps_phi(z_t, t, ""))
    grad_theta L_SDS = E_{t, eps} [ w(t) (eps_hat - eps) dz/dtheta ],   w(t) = 1 - alpha_bar_t

where ``z`` is the render in the model's space: the image scaled to ``[-1, 1]`` for a pixel-space
model, its VAE latent for Stable Diffusion. No gradient flows through the UNet.

Model hubs are out of reach in CI, so :meth:`DiffusionPrior.tiny` builds a randomly initialised
model from small configs (no download) on which the mechanics are tested; the same functions run
on Stable Diffusion given :meth:`DiffusionPrior.from_pretrained` and a GPU. ``import congealing``
does not import diffusers or transformers: they load on first use here.

>>> DiffusionShapeConfig.for_mode("quick").sds_iterations
50
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F

from ._compat import import_timm
from .losses import check_finite
from .runtime import ModeConfig

__all__ = [
    "PIP_INSTALL", "TINY_VOCAB", "DiffusionPrior", "tokenize", "embed_prompts",
    "add_placeholder_token", "to_model_space", "textual_inversion_loss",
    "textual_inversion_optimizer", "textual_inversion_step", "sds_loss", "DiffusionShapeConfig",
    "learn_placeholder", "distil_shape",
]

#: The pinned versions (see requirements.txt); named in the error raised when they are missing.
PIP_INSTALL = "pip install diffusers==0.42.1 transformers==5.23.0"
#: A word-level vocabulary for the tiny model's tokenizer (a real CLIP BPE needs vocab files).
TINY_VOCAB = ("<pad>", "<unk>", "<bos>", "<eos>", "a", "photo", "of", "the", "object", "sculpture",
              "statue", "animal", "bird", "car", "chair", "front", "side", "back", "view")


def _backends():
    """``(diffusers, transformers)``, imported on first use; a clear error names the install command."""
    try:
        import_timm()  # transformers imports torchvision, which needs _compat's fix beside CPU torch
    except ImportError:
        pass  # no timm: then torchvision is either healthy or absent, and transformers copes
    try:
        import diffusers
        import transformers
    except ImportError as error:
        raise ImportError(f"congealing.diffusion_prior needs diffusers and transformers ({error}). "
                          f"Install them with: {PIP_INSTALL}") from error
    return diffusers, transformers


@dataclass
class DiffusionPrior:
    """A frozen text-conditioned diffusion model. ``vae=None`` means the UNet works on pixels."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    vae: torch.nn.Module | None = None

    def __post_init__(self):
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.requires_grad_(False).eval()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def resolution(self) -> int:
        """Image size the model was trained at: the UNet's size times the VAE's downsampling."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    @classmethod
    def from_pretrained(cls, name: str = "stabilityai/stable-diffusion-2-1-base", device="cpu",
                        dtype=torch.float32) -> "DiffusionPrior":
        """Load a Stable-Diffusion-layout model (hub name or local folder) with subfolders unet/, vae/, ...

        It needs the Hugging Face hub, or the model already in the local HF cache.
        """
        diffusers, transformers = _backends()
        try:
            parts = dict(
                unet=diffusers.UNet2DConditionModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype),
                vae=diffusers.AutoencoderKL.from_pretrained(name, subfolder="vae", torch_dtype=dtype),
                text_encoder=transformers.CLIPTextModel.from_pretrained(name, subfolder="text_encoder", dtype=dtype),
                tokenizer=transformers.AutoTokenizer.from_pretrained(name, subfolder="tokenizer"),
                scheduler=diffusers.DDPMScheduler.from_pretrained(name, subfolder="scheduler"),
            )
        except (OSError, ValueError) as error:
            raise OSError(
                f"could not load the diffusion model {name!r}: it needs the Hugging Face model hub or a copy "
                f"in the local HF cache, and neither could be reached (no network, or HF_HUB_OFFLINE=1). "
                f"On a machine with internet run `hf download {name}` (or pass a local folder holding "
                f"unet/, vae/, text_encoder/, tokenizer/, scheduler/), then point HF_HOME at that cache. "
                f"Without it, use DiffusionPrior.tiny() to exercise the mechanics. Cause: {error}") from error
        for key in ("unet", "vae", "text_encoder"):
            parts[key] = parts[key].to(device)
        return cls(**parts)

    @classmethod
    def tiny(cls, seed: int = 0, latent: bool = False) -> "DiffusionPrior":
        """A randomly initialised model at 32 x 32 from small configs, built offline in well under a second.

        ``latent=True`` adds a tiny VAE (8-channel, downsampling 2), as Stable Diffusion has.

        >>> prior = DiffusionPrior.tiny()
        >>> prior.resolution, prior.vae is None
        (32, True)
        """
        diffusers, transformers = _backends()
        with torch.random.fork_rng(devices=[]):  # the constructors draw from the global RNG: keep it untouched
            torch.manual_seed(seed)
            return cls._build_tiny(diffusers, transformers, latent)

    @classmethod
    def _build_tiny(cls, diffusers, transformers, latent: bool) -> "DiffusionPrior":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        vocab = {word: i for i, word in enumerate(TINY_VOCAB)}
        words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        words.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=words, model_max_length=8, pad_token="<pad>", unk_token="<unk>",
            bos_token="<bos>", eos_token="<eos>")
        text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=8, pad_token_id=0, bos_token_id=2, eos_token_id=3))
        channels = 4 if latent else 3
        unet = diffusers.UNet2DConditionModel(
            sample_size=16 if latent else 32, in_channels=channels, out_channels=channels, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2) if latent else None
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's schedule
        return cls(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)


def tokenize(prior: DiffusionPrior, prompts: list[str]) -> torch.Tensor:
    """Token ids ``(N, L)`` of ``N`` prompts, padded to the text encoder's length ``L``."""
    tok = prior.tokenizer
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(prior.device)


def embed_prompts(prior: DiffusionPrior, prompt_ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings ``(N, L, D)`` (the text encoder's last hidden states) of token ids ``(N, L)``."""
    return prior.text_encoder(prompt_ids.to(prior.device))[0]


def add_placeholder_token(prior: DiffusionPrior, token: str = "<congealed>", init_token: str = "object") -> int:
    """Add ``token`` to the vocabulary, its embedding row a copy of ``init_token``'s; return its id."""
    tok, encoder = prior.tokenizer, prior.text_encoder
    init_ids = tok.encode(init_token, add_special_tokens=False)
    if len(init_ids) != 1 or init_ids[0] == tok.unk_token_id:
        raise ValueError(f"init_token {init_token!r} must be one known token of the vocabulary, got ids {init_ids}")
    if tok.add_tokens([token]) == 0:
        raise ValueError(f"the tokenizer already has {token!r}; choose another placeholder")
    token_id = tok.convert_tokens_to_ids(token)
    encoder.resize_token_embeddings(len(tok), mean_resizing=False)  # the new row is overwritten below
    with torch.no_grad():
        encoder.get_input_embeddings().weight[token_id] = encoder.get_input_embeddings().weight[init_ids[0]]
    return token_id


def _draw(generator, shape, device, high=None, low=0):
    """Normal noise (or integers in ``[low, high)``) from ``generator`` on its own device, moved to ``device``."""
    where = generator.device if generator is not None else device
    if high is None:
        return torch.randn(shape, generator=generator, device=where).to(device)
    return torch.randint(low, high, shape, generator=generator, device=where).to(device)


def to_model_space(prior: DiffusionPrior, images: torch.Tensor, generator=None) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in ``[0, 1]`` to the model's input ``z``, differentiably.

    Pixel space: ``2 x - 1`` ``(B, 3, R, R)``. Latent space: the VAE latent (a sample of its posterior,
    times ``scaling_factor``) ``(B, 4, R/8, R/8)`` for SD. Images are resized to the model's resolution
    ``R`` first, since a UNet's score is only meaningful at the size it was trained on.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    size = prior.resolution
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = 2.0 * images - 1.0
    if prior.vae is None:
        return x
    x = x.to(next(prior.vae.parameters()).dtype)
    return prior.vae.encode(x).latent_dist.sample(generator) * prior.vae.config.scaling_factor


def _batch(embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    return embeddings.expand(batch, -1, -1) if embeddings.shape[0] == 1 else embeddings


def textual_inversion_loss(prior: DiffusionPrior, images: torch.Tensor, prompt_ids: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising loss (a scalar) of images ``(B, 3, H, W)`` in ``[0, 1]`` under prompt ids ``(1 or B, L)``.

    ``t`` is uniform over all training steps and the target is the scheduler's own (``eps``, or the
    velocity for v-prediction models), as in the diffusers textual-inversion example. Gradients reach
    the text encoder's embeddings; the image encoding is not differentiated.
    """
    with torch.no_grad():
        z0 = to_model_space(prior, images, generator)
    batch, schedule = z0.shape[0], prior.scheduler
    t = _draw(generator, (batch,), z0.device, high=schedule.config.num_train_timesteps)
    noise = _draw(generator, z0.shape, z0.device).to(z0.dtype)
    z_t = schedule.add_noise(z0, noise, t)
    text = _batch(embed_prompts(prior, prompt_ids), batch).to(z0.dtype)
    prediction = prior.unet(z_t, t, encoder_hidden_states=text).sample
    target = schedule.get_velocity(z0, noise, t) if schedule.config.prediction_type == "v_prediction" else noise
    return F.mse_loss(prediction.float(), target.float())


def textual_inversion_optimizer(prior: DiffusionPrior, lr: float = 5e-4) -> torch.optim.Optimizer:
    """AdamW over the token-embedding table (only it gets gradients); :func:`textual_inversion_step` masks the rows."""
    table = prior.text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)
    return torch.optim.AdamW([table], lr=lr, weight_decay=0.0)


def textual_inversion_step(prior: DiffusionPrior, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                           prompt_ids: torch.Tensor, token_ids: list[int],
                           generator: torch.Generator | None = None) -> float:
    """One optimiser step on the embedding rows ``token_ids``; every other row stays bit-identical.

    The gradient of the other rows is zeroed and, since an optimiser may still move them (weight
    decay, momentum from earlier steps), their values are restored after the step, as the diffusers
    example does. Returns the loss; a non-finite loss raises :class:`FloatingPointError`.
    """
    table = prior.text_encoder.get_input_embeddings().weight
    if not table.requires_grad:
        raise ValueError("the embedding table is frozen: build the optimizer with textual_inversion_optimizer(prior)")
    frozen = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
    frozen[list(token_ids)] = False
    optimizer.zero_grad(set_to_none=True)
    loss = textual_inversion_loss(prior, images, prompt_ids, generator)
    check_finite(loss, "textual inversion diverged", {"denoising loss": loss})
    loss.backward()
    table.grad[frozen] = 0.0
    kept = table.detach()[frozen].clone()
    optimizer.step()
    with torch.no_grad():
        table[frozen] = kept
    return loss.item()


def sds_loss(prior: DiffusionPrior, rendered: torch.Tensor, text_embeddings: tuple[torch.Tensor, torch.Tensor],
             guidance_scale: float = 100.0, t_range: tuple[float, float] = (0.02, 0.98),
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Score-distillation loss (a scalar) of renders ``(B, 3, H, W)`` in ``[0, 1]``.

    ``text_embeddings`` is ``(cond, uncond)``, each ``(1 or B, L, D)``. The loss is
    ``0.5 ||z - sg(z - w(t)(eps_hat - eps))||^2 / B``, so ``dL/dz = w(t)(eps_hat - eps) / B`` with
    ``w(t) = 1 - alpha_bar_t``, ``t`` uniform in ``t_range`` times the training steps, and ``z`` the
    render in model space (:func:`to_model_space`; ``dz/drendered = 2`` in pixel space). Its value is
    not a quantity to minimise, only its gradient matters. Draws ``t``, then ``eps`` from ``generator``.
    """
    cond, uncond = text_embeddings
    z = to_model_space(prior, rendered, generator)
    batch, schedule = z.shape[0], prior.scheduler
    steps = schedule.config.num_train_timesteps
    t = _draw(generator, (batch,), z.device, low=int(steps * t_range[0]), high=int(steps * t_range[1]) + 1)
    noise = _draw(generator, z.shape, z.device).to(z.dtype)
    with torch.no_grad():  # the UNet's Jacobian is what SDS leaves out
        z_t = schedule.add_noise(z.detach(), noise, t)
        text = torch.cat([_batch(uncond, batch), _batch(cond, batch)]).to(z.dtype)
        out = prior.unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=text).sample
        alpha_bar = schedule.alphas_cumprod.to(z.device)[t].view(-1, 1, 1, 1).to(z.dtype)
        if schedule.config.prediction_type == "v_prediction":  # SD 2.1 (768): eps = sqrt(a) v + sqrt(1-a) z_t
            a = alpha_bar.repeat(2, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * torch.cat([z_t, z_t])
        eps_uncond, eps_cond = out.chunk(2)
        eps_hat = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        grad = torch.nan_to_num((1.0 - alpha_bar) * (eps_hat - noise))
    target = (z - grad).detach()
    return 0.5 * F.mse_loss(z.float(), target.float(), reduction="sum") / batch


@dataclass(frozen=True)
class DiffusionShapeConfig(ModeConfig):
    """Defaults for the diffusion-prior route to the canonical shape (``full``: the reference setups).

    Step counts are 3D Congealing's (1000 textual-inversion steps, 10 000 SDS iterations, as a summary
    of the paper reports them; the book could not check the paper's appendix). The rest follows the
    diffusers textual-inversion example (AdamW 5e-4, batch 4) on SD 2.1-base, where the paper uses
    MVDream, and DreamFusion / threestudio for SDS: ``t ~ U(0.02, 0.98) T``, guidance 100
    (score distillation needs far stronger guidance than sampling's 7.5; MVDream uses 50), Adam 1e-2
    on the field, 64 x 64 renders resized to the model's 512. Quick mode, run on
    :meth:`DiffusionPrior.tiny` whose scores are random, only shows the mechanics: 50 steps of each
    and 32 x 32 renders.
    """

    model: str = "stabilityai/stable-diffusion-2-1-base"
    placeholder: str = "<congealed>"
    init_token: str = "object"
    prompt: str = "a photo of {}"
    ti_steps: int = 1000
    ti_lr: float = 5e-4
    ti_batch_size: int = 4
    sds_iterations: int = 10_000
    sds_lr: float = 1e-2
    guidance_scale: float = 100.0
    t_range: tuple = (0.02, 0.98)
    render_size: int = 64
    QUICK: ClassVar[dict] = {"ti_steps": 50, "sds_iterations": 50, "render_size": 32}



def learn_placeholder(prior: DiffusionPrior, images: torch.Tensor, config: DiffusionShapeConfig,
                      generator: torch.Generator | None = None) -> tuple[int, list[float]]:
    """Textual inversion on images ``(N, 3, H, W)``: add ``config.placeholder``, train it; return ``(id, losses)``."""
    token_id = add_placeholder_token(prior, config.placeholder, config.init_token)
    prompt_ids = tokenize(prior, [config.prompt.format(config.placeholder)])
    optimizer = textual_inversion_optimizer(prior, config.ti_lr)
    losses = []
    for _ in range(config.ti_steps):
        pick = _draw(generator, (min(config.ti_batch_size, len(images)),), images.device, high=len(images))
        losses.append(textual_inversion_step(prior, optimizer, images[pick], prompt_ids, [token_id], generator))
    prior.text_encoder.get_input_embeddings().weight.requires_grad_(False)
    return token_id, losses


def distil_shape(prior: DiffusionPrior, render_fn: Callable[[int], torch.Tensor], params: Iterable[torch.Tensor],
                 config: DiffusionShapeConfig, prompt: str | None = None, negative_prompt: str = "",
                 generator: torch.Generator | None = None) -> list[float]:
    """Optimise ``params`` by SDS; ``render_fn(step)`` returns renders ``(B, 3, H, W)`` in ``[0, 1]``.

    ``render_fn`` owns the 3-D representation and its cameras (draw a random pose per call, seeded by
    ``step`` for reproducibility); this loop only needs the renders to depend differentiably on
    ``params``. The prompt defaults to ``config.prompt`` around the placeholder. Returns the losses.
    """
    prompt = config.prompt.format(config.placeholder) if prompt is None else prompt
    with torch.no_grad():
        text = embed_prompts(prior, tokenize(prior, [prompt, negative_prompt]))
    cond, uncond = text[:1], text[1:]
    optimizer = torch.optim.Adam(params, lr=config.sds_lr)
    losses = []
    for step in range(config.sds_iterations):
        loss = sds_loss(prior, render_fn(step), (cond, uncond), config.guidance_scale, config.t_range, generator)
        check_finite(loss, f"score distillation diverged at step {step}", {"SDS loss": loss})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
