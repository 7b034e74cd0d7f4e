"""A text-to-image diffusion model as a shape prior: textual inversion and score distillation (Chapter 6).

Taught in Chapter 6, "The canonical shape, two routes" (the paper's route; the chapter runs one
SDS step through :meth:`DiffusionPrior.tiny`). 3D Congealing (Zhang et al. 2024) gets its
canonical shape from a pre-trained diffusion model in two steps. **Textual inversion** learns one
new token embedding ``y*`` so that the frozen model reconstructs the input photos::

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
does not import diffusers or transformers: they load on first use here. The functions that need
a model have no doctest besides :meth:`DiffusionPrior.tiny`'s (building even the tiny model
takes longer than a doctest may); ``tests/test_diffusion_prior.py`` checks them.

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
    """A frozen text-conditioned diffusion model: UNet, text encoder, tokenizer, noise schedule, VAE.

    Every module is frozen (``requires_grad_(False)``, eval mode) on construction; textual inversion
    unfreezes only the token-embedding table (:func:`textual_inversion_optimizer`). Build one with
    :meth:`from_pretrained` or :meth:`tiny`. Chapter 6, "The canonical shape, two routes".

    Attributes:
        unet: a diffusers ``UNet2DConditionModel``.
        text_encoder: a transformers ``CLIPTextModel``.
        tokenizer: its tokenizer.
        scheduler: a diffusers noise schedule (``DDPMScheduler``).
        vae: a diffusers ``AutoencoderKL``, or None: the UNet then works on pixels.
    """

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
        """The device of the UNet's parameters."""
        return next(self.unet.parameters()).device

    @property
    def resolution(self) -> int:
        """Image size the model was trained at: the UNet's sample size times the VAE's downsampling."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    @classmethod
    def from_pretrained(cls, name: str = "stabilityai/stable-diffusion-2-1-base", device="cpu",
                        dtype=torch.float32) -> "DiffusionPrior":
        """Load a Stable-Diffusion-layout model (hub name or local folder with unet/, vae/, ...).

        It needs the Hugging Face hub, or the model already in the local HF cache. Chapter 6, "The
        canonical shape, two routes" names it for readers with a GPU.

        Args:
            name: a hub name or a local folder holding ``unet/``, ``vae/``, ``text_encoder/``,
                ``tokenizer/`` and ``scheduler/``.
            device: where the networks go.
            dtype: their dtype (e.g. ``torch.float16`` on a GPU).

        Returns:
            the :class:`DiffusionPrior`, latent (with its VAE).

        Raises:
            ImportError: diffusers or transformers is missing (the message gives :data:`PIP_INSTALL`).
            OSError: the model could not be loaded (no network and not cached); the message says how
                to get it.
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

        Its scores are random: it exercises the mechanics only (Chapter 6, "The canonical shape, two
        routes"). The global random state is left untouched.

        Args:
            seed: seed of the random initialisation.
            latent: add a tiny VAE (4 latent channels, downsampling 2), as Stable Diffusion has one.

        Returns:
            the :class:`DiffusionPrior`, with a word-level tokenizer over :data:`TINY_VOCAB`.

        Raises:
            ImportError: diffusers or transformers is missing.

        Example:
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
    """Token ids of prompts, padded (or truncated) to the text encoder's length ``L``.

    Chapter 6, "The canonical shape, two routes".

    Args:
        prior: the :class:`DiffusionPrior`.
        prompts: ``N`` strings.

    Returns:
        the ids ``(N, L)`` on the prior's device.
    """
    tok = prior.tokenizer
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(prior.device)


def embed_prompts(prior: DiffusionPrior, prompt_ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings (the text encoder's last hidden states) of token ids.

    Chapter 6, "The canonical shape, two routes".

    Args:
        prior: the :class:`DiffusionPrior`.
        prompt_ids: ``(N, L)`` from :func:`tokenize`.

    Returns:
        the embeddings ``(N, L, D)``.
    """
    return prior.text_encoder(prompt_ids.to(prior.device))[0]


def add_placeholder_token(prior: DiffusionPrior, token: str = "<congealed>", init_token: str = "object") -> int:
    """Add ``token`` to the vocabulary, its embedding row a copy of ``init_token``'s.

    The new word ``y*`` of textual inversion (:func:`learn_placeholder`).
    Chapter 6, "The canonical shape, two routes" describes textual inversion; no cell runs it (it
    needs real model weights to mean anything).

    Args:
        prior: the :class:`DiffusionPrior`; its tokenizer and text encoder grow by one row.
        token: the new word.
        init_token: a single known token whose embedding starts the new one.

    Returns:
        the new token's id.

    Raises:
        ValueError: ``init_token`` is not one known token, or ``token`` is already in the vocabulary.
    """
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
    """Images in ``[0, 1]`` to the model's input ``z``, differentiably.

    Images are resized to the model's resolution ``R`` first, since a UNet's score is only
    meaningful at the size it was trained on. :func:`sds_loss` calls it (Chapter 6, "The canonical
    shape, two routes").

    Args:
        prior: the :class:`DiffusionPrior`.
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        generator: draws the VAE posterior's sample (latent models only), or None.

    Returns:
        pixel space: ``2 x - 1``, ``(B, 3, R, R)``; latent space: a sample of the VAE posterior
        times ``scaling_factor``, ``(B, 4, R/8, R/8)`` for Stable Diffusion.

    Raises:
        ValueError: ``images`` is not ``(B, 3, H, W)``.
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
    """The denoising loss of images under a prompt: textual inversion's objective ``L_TI``.

    ``t`` is uniform over all training steps and the target is the scheduler's own (``eps``, or the
    velocity for v-prediction models), as in the diffusers textual-inversion example. Gradients reach
    the text encoder's embeddings; the image encoding is not differentiated. Draws ``t``, then the
    noise, from ``generator``.
    Chapter 6, "The canonical shape, two routes" describes textual inversion; no cell runs it (it
    needs real model weights to mean anything).

    Args:
        prior: the :class:`DiffusionPrior`.
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        prompt_ids: ``(1 or B, L)`` from :func:`tokenize`.
        generator: the random draws' generator, or None (the global one).

    Returns:
        the mean squared error, a scalar tensor.
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
    """AdamW over the token-embedding table, which it unfreezes.

    Only the table gets gradients; :func:`textual_inversion_step` keeps every row but the
    placeholder's unchanged.
    Chapter 6, "The canonical shape, two routes" describes textual inversion; no cell runs it (it
    needs real model weights to mean anything).

    Args:
        prior: the :class:`DiffusionPrior`.
        lr: the learning rate (weight decay 0).

    Returns:
        the optimiser.
    """
    table = prior.text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)
    return torch.optim.AdamW([table], lr=lr, weight_decay=0.0)


def textual_inversion_step(prior: DiffusionPrior, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                           prompt_ids: torch.Tensor, token_ids: list[int],
                           generator: torch.Generator | None = None) -> float:
    """One optimiser step on the embedding rows ``token_ids``; every other row stays bit-identical.

    The gradient of the other rows is zeroed and, since an optimiser may still move them (weight
    decay, momentum from earlier steps), their values are restored after the step, as the diffusers
    example does.
    Chapter 6, "The canonical shape, two routes" describes textual inversion; no cell runs it (it
    needs real model weights to mean anything).

    Args:
        prior: the :class:`DiffusionPrior`.
        optimizer: from :func:`textual_inversion_optimizer`.
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        prompt_ids: ``(1 or B, L)`` of a prompt holding the placeholder.
        token_ids: the rows that train.
        generator: the random draws' generator, or None.

    Returns:
        the loss before the step.

    Raises:
        ValueError: the table is frozen (the optimiser was not built by
            :func:`textual_inversion_optimizer`).
        FloatingPointError: the loss is not finite.
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
    """Score-distillation loss of renders: its gradient is SDS's.

    The loss is ``0.5 ||z - sg(z - w(t)(eps_hat - eps))||^2 / B``, so ``dL/dz = w(t)(eps_hat - eps) / B``
    with ``w(t) = 1 - alpha_bar_t``, ``t`` uniform in ``t_range`` times the training steps, and ``z``
    the render in model space (:func:`to_model_space`; ``dz/drendered = 2`` in pixel space). Its value
    is not a quantity to minimise, only its gradient matters. Draws ``t``, then ``eps``, from
    ``generator``. Taught in Chapter 6, "The canonical shape, two routes".

    Args:
        prior: the :class:`DiffusionPrior`.
        rendered: renders ``(B, 3, H, W)`` in ``[0, 1]``, differentiable in the 3-D field.
        text_embeddings: ``(cond, uncond)``, each ``(1 or B, L, D)`` (:func:`embed_prompts`).
        guidance_scale: the classifier-free guidance scale ``s``.
        t_range: the fractions of the training steps ``t`` is drawn between.
        generator: the random draws' generator, or None.

    Returns:
        the loss, a scalar tensor.
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

    A frozen :class:`congealing.runtime.ModeConfig`. Step counts are 3D Congealing's (1000
    textual-inversion steps, 10 000 SDS iterations, as a summary of the paper reports them; not
    checked against the paper's appendix). The rest follows the diffusers textual-inversion example
    (AdamW 5e-4, batch 4) on SD 2.1-base, where the paper uses MVDream, and DreamFusion / threestudio
    for SDS: ``t ~ U(0.02, 0.98) T``, guidance 100 (score distillation needs far stronger guidance
    than sampling's 7.5; MVDream uses 50), Adam 1e-2 on the field, 64 x 64 renders resized to the
    model's 512. Quick mode, run on :meth:`DiffusionPrior.tiny` whose scores are random, only shows
    the mechanics: 50 steps of each and 32 x 32 renders. Chapter 6, "The canonical shape, two
    routes" quotes ``sds_iterations``.

    Attributes:
        model: the model :meth:`DiffusionPrior.from_pretrained` loads.
        placeholder, init_token, prompt: the new word, the token it starts from, and the prompt
            around it (``prompt.format(placeholder)``).
        ti_steps, ti_lr, ti_batch_size: textual inversion's steps, rate and images per step.
        sds_iterations, sds_lr: score distillation's steps and Adam's rate on the field.
        guidance_scale, t_range: see :func:`sds_loss`.
        render_size: side of the renders fed to the model.

    Example:
        >>> quick = DiffusionShapeConfig.for_mode("quick")
        >>> quick.ti_steps, quick.render_size, DiffusionShapeConfig().sds_iterations
        (50, 32, 10000)
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
    """Textual inversion: add ``config.placeholder`` to the vocabulary and train its embedding.

    Each step draws ``min(ti_batch_size, N)`` of the images and takes one
    :func:`textual_inversion_step` on the prompt ``config.prompt.format(config.placeholder)``; the
    table is frozen again at the end.
    Chapter 6, "The canonical shape, two routes" describes textual inversion; no cell runs it (it
    needs real model weights to mean anything).

    Args:
        prior: the :class:`DiffusionPrior` (its vocabulary grows by the placeholder).
        images: the input photos ``(N, 3, H, W)`` in ``[0, 1]``.
        config: a :class:`DiffusionShapeConfig` (``placeholder``, ``init_token``, ``prompt``,
            ``ti_steps``, ``ti_lr``, ``ti_batch_size``).
        generator: the random draws' generator, or None.

    Returns:
        ``(token_id, losses)``: the placeholder's id and the loss of every step.

    Raises:
        ValueError: see :func:`add_placeholder_token`.
        FloatingPointError: a loss is not finite.
    """
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
    """Optimise a 3-D representation's ``params`` by score distillation (Adam at ``config.sds_lr``).

    ``render_fn`` owns the 3-D representation and its cameras (draw a random pose per call, seeded by
    ``step`` for reproducibility); this loop only needs the renders to depend differentiably on
    ``params``. Chapter 6, "The canonical shape, two routes" takes one step by hand with
    :func:`sds_loss`, then runs three steps of this loop on :meth:`DiffusionPrior.tiny`; a real
    shape needs real model weights.

    Args:
        prior: the :class:`DiffusionPrior`.
        render_fn: ``render_fn(step)`` returns renders ``(B, 3, H, W)`` in ``[0, 1]``.
        params: the tensors to optimise.
        config: a :class:`DiffusionShapeConfig` (``sds_iterations``, ``sds_lr``, ``guidance_scale``,
            ``t_range``).
        prompt: the conditioning prompt (default: ``config.prompt`` around the placeholder).
        negative_prompt: the unconditional prompt of classifier-free guidance.
        generator: the random draws' generator, or None.

    Returns:
        the loss of every step.

    Raises:
        FloatingPointError: a loss is not finite (the message names the step).
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
