"""Tests of congealing.diffusion_prior on tiny random models: offline build, textual inversion, SDS."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")  # a guard only: requirements.txt installs diffusers and transformers
pytest.importorskip("transformers")

from congealing import diffusion_prior as dp  # noqa: E402
from congealing.diffusion_prior import DiffusionPrior, DiffusionShapeConfig  # noqa: E402

PROMPT = "a photo of <congealed>"


def _text(prior, prompt=PROMPT):
    """``(cond, uncond)`` embeddings ``(1, L, D)`` each, detached."""
    with torch.no_grad():
        both = dp.embed_prompts(prior, dp.tokenize(prior, [prompt, ""]))
    return both[:1], both[1:]


def test_import_congealing_does_not_import_the_diffusion_packages():
    code = "import sys, congealing, congealing.diffusion_prior; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("latent", [False, True])
def test_tiny_prior_builds_offline_and_encodes(latent):
    prior = DiffusionPrior.tiny(seed=0, latent=latent)
    assert prior.resolution == 32 and (prior.vae is not None) == latent
    assert not any(p.requires_grad for p in prior.unet.parameters())
    ids = dp.tokenize(prior, [PROMPT, ""])
    assert ids.shape == (2, 8) and ids[0, 0] == prior.tokenizer.bos_token_id
    assert dp.embed_prompts(prior, ids).shape == (2, 8, 32)
    z = dp.to_model_space(prior, torch.rand(2, 3, 48, 48))  # resized to the model's 32 x 32
    assert z.shape == ((2, 4, 16, 16) if latent else (2, 3, 32, 32))
    twin = DiffusionPrior.tiny(seed=0, latent=latent)
    assert all(torch.equal(a, b) for a, b in zip(prior.unet.parameters(), twin.unet.parameters()))


def test_from_pretrained_loads_a_local_stable_diffusion_layout(tmp_path):
    state = torch.random.get_rng_state()
    saved = DiffusionPrior.tiny(seed=2, latent=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # tiny() leaves the global RNG alone
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(saved, part).save_pretrained(tmp_path / part)
    loaded = DiffusionPrior.from_pretrained(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(saved.unet.parameters(), loaded.unet.parameters()))
    assert torch.equal(dp.tokenize(loaded, [PROMPT]), dp.tokenize(saved, [PROMPT]))
    assert loaded.resolution == 32 and not any(p.requires_grad for p in loaded.vae.parameters())


@pytest.mark.parametrize("latent", [False, True])
def test_textual_inversion_step_changes_only_the_placeholder_row(latent):
    prior = DiffusionPrior.tiny(latent=latent)
    token_id = dp.add_placeholder_token(prior, "<congealed>", init_token="object")
    table = prior.text_encoder.get_input_embeddings().weight
    assert token_id == len(dp.TINY_VOCAB) and table.shape[0] == token_id + 1
    assert torch.equal(table[token_id], table[dp.TINY_VOCAB.index("object")])
    before = table.detach().clone()
    table.requires_grad_(True)
    # weight decay would shrink every row: the step must still leave all but the placeholder untouched
    optimizer = torch.optim.AdamW([table], lr=1e-2, weight_decay=0.1)
    images, ids = torch.rand(2, 3, 32, 32), dp.tokenize(prior, [PROMPT])
    generator = torch.Generator().manual_seed(0)
    losses = [dp.textual_inversion_step(prior, optimizer, images, ids, [token_id], generator) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    others = torch.arange(table.shape[0]) != token_id
    assert torch.equal(table.detach()[others], before[others])
    assert not torch.equal(table.detach()[token_id], before[token_id])
    assert not any(p.requires_grad for p in prior.unet.parameters())


def test_learn_placeholder_runs_the_configured_steps():
    prior = DiffusionPrior.tiny()
    config = DiffusionShapeConfig.for_mode("quick", ti_steps=2, ti_batch_size=2)
    token_id, losses = dp.learn_placeholder(prior, torch.rand(3, 3, 32, 32), config, torch.Generator().manual_seed(1))
    assert len(losses) == 2 and prior.tokenizer.convert_tokens_to_ids(config.placeholder) == token_id


def test_sds_gradient_is_weighted_noise_residual():
    prior = DiffusionPrior.tiny()
    cond, uncond = _text(prior)
    rendered = torch.rand(2, 3, 32, 32, requires_grad=True)
    scale, t_range = 7.5, (0.02, 0.98)
    dp.sds_loss(prior, rendered, (cond, uncond), scale, t_range, torch.Generator().manual_seed(3)).backward()

    # the same draws by hand: t first, then eps, from a generator seeded alike
    generator, schedule = torch.Generator().manual_seed(3), prior.scheduler
    t = torch.randint(20, 981, (2,), generator=generator)
    noise = torch.randn(2, 3, 32, 32, generator=generator)
    z_t = schedule.add_noise(2 * rendered.detach() - 1, noise, t)
    with torch.no_grad():
        eps_cond = prior.unet(z_t, t, encoder_hidden_states=cond.expand(2, -1, -1)).sample
        eps_uncond = prior.unet(z_t, t, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
    eps_hat = eps_uncond + scale * (eps_cond - eps_uncond)
    w = (1 - schedule.alphas_cumprod[t]).view(2, 1, 1, 1)
    expected = 2 * w * (eps_hat - noise) / 2  # dz/drendered = 2 (z = 2x - 1), then the 1/B
    torch.testing.assert_close(rendered.grad, expected, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in prior.unet.parameters())


@pytest.mark.parametrize("latent", [False, True])
def test_sds_steps_move_a_toy_voxel_renderer(latent):
    prior = DiffusionPrior.tiny(latent=latent)
    dp.add_placeholder_token(prior)
    voxels = torch.nn.Parameter(torch.zeros(1, 3, 32, 32, 32))  # (B, C, D, H, W) colour logits
    start = voxels.detach().clone()

    def render(step):  # two "cameras": average along depth, or along width
        return torch.sigmoid(voxels.mean(dim=2 if step % 2 == 0 else 4))

    config = DiffusionShapeConfig.for_mode("quick", sds_iterations=3, guidance_scale=7.5)
    losses = dp.distil_shape(prior, render, [voxels], config, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(voxels.detach(), start)


def test_distil_shape_raises_on_nan_renders():
    prior = DiffusionPrior.tiny()
    field = torch.nn.Parameter(torch.zeros(1, 3, 32, 32))
    config = DiffusionShapeConfig.for_mode("quick", sds_iterations=2)
    with pytest.raises(FloatingPointError, match="step 0"):
        dp.distil_shape(prior, lambda step: field * float("nan"), [field], config, prompt="a photo of the object")


def test_clear_errors(monkeypatch, tmp_path):
    prior = DiffusionPrior.tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        dp.sds_loss(prior, torch.rand(3, 32, 32), _text(prior, "a photo"))
    with pytest.raises(ValueError, match="one known token"):
        dp.add_placeholder_token(prior, "<x>", init_token="zebra")
    token_id = dp.add_placeholder_token(prior, "<x>")
    with pytest.raises(ValueError, match="textual_inversion_optimizer"):
        dp.textual_inversion_step(prior, None, torch.rand(1, 3, 32, 32), dp.tokenize(prior, ["<x>"]), [token_id])
    with pytest.raises(ValueError, match="already has"):
        dp.add_placeholder_token(prior, "<x>")
    with pytest.raises(OSError, match="hf download"):
        DiffusionPrior.from_pretrained(str(tmp_path / "no-such-model"))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install diffusers==0.42.1"):
        DiffusionPrior.tiny()
