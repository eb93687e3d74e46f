"""FluxBackbone on a tiny FLUX pipeline built in code, checked against diffusers' own FluxPipeline.

The independent computations are diffusers' code: ``FluxPipeline._pack_latents`` / ``_unpack_latents`` /
``_prepare_latent_image_ids``, ``calculate_shift`` and ``retrieve_timesteps`` for the schedule, direct
transformer calls with the pipeline's own prompt encoding, position ids and guidance, and a whole
``FluxPipeline.__call__`` from the same initial noise (sampling, VAE shift and scale, postprocessing).
The generic properties (shapes, determinism, LoRA identity, reference policy) are the contract test's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from opgrpo_bench.backbones.flux import (
    FLUX_LORA_TARGETS,
    FluxBackbone,
    flux_mu,
    latent_position_ids,
    pack_latents,
    unpack_latents,
)
from opgrpo_bench.backbones.folders import missing_components
from opgrpo_bench.errors import UserError
from opgrpo_bench.sampling import sample_ode

PROMPTS = ["a photo of a cat", "a red car on a street"]
MAX_SEQ = 16
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _noise(backbone: FluxBackbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed))


def _pipeline_embeds(pipe: FluxPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=torch.device("cpu"),
                                           max_sequence_length=MAX_SEQ)
    return embeds, pooled


# -- folder and loading ----------------------------------------------------------------------------
def test_tiny_folder_is_a_complete_flux_pipeline(tiny_flux_folder: Path, flux: FluxBackbone):
    index = json.loads((tiny_flux_folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    for name in COMPONENTS:
        assert (tiny_flux_folder / name).is_dir() and index[name][1] is not None, name
    assert missing_components(tiny_flux_folder) == []
    pipe = flux.pipeline
    assert isinstance(pipe, FluxPipeline) and pipe.vae_scale_factor == 4
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    cfg = pipe.transformer.config
    assert cfg.guidance_embeds and cfg.in_channels == 64 and cfg.num_layers >= 1 and cfg.num_single_layers >= 1
    assert pipe.scheduler.config.use_dynamic_shifting  # FLUX.1-dev's resolution-dependent shift
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    assert flux.latent_shape == (16, 8, 8)  # 32 px / VAE scale 4; the trainer sees unpacked latents
    assert flux.image_seq_len == 16 and flux.guidance_scale == 3.5
    assert flux.nfe_per_sample(1.0) == 1 and not flux.trainable_parameters()


def test_encode_is_the_pipelines_prompt_encoding(flux: FluxBackbone):
    cond = flux.encode(PROMPTS)
    embeds, pooled = _pipeline_embeds(flux.pipeline, PROMPTS)
    assert cond["embeds"].shape == (2, MAX_SEQ, 32) and cond["pooled"].shape == (2, 32)
    assert torch.equal(cond["embeds"], embeds) and torch.equal(cond["pooled"], pooled)
    neg_embeds, neg_pooled = _pipeline_embeds(flux.pipeline, [""])
    assert torch.equal(cond["neg_embeds"], neg_embeds.expand(2, -1, -1))
    assert torch.equal(cond["neg_pooled"], neg_pooled.expand(2, -1))


# -- packing and position ids ----------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(8, 8), (4, 12)])
def test_packing_and_position_ids_match_flux_pipeline(h: int, w: int):
    x = torch.randn(3, 16, h, w, generator=torch.Generator().manual_seed(h * w))
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 3, 16, h, w))
    assert torch.equal(unpack_latents(packed, h, w), x)
    # FluxPipeline unpacks from pixel sizes: latent size x VAE scale factor (any, e.g. 8)
    assert torch.equal(FluxPipeline._unpack_latents(packed, h * 8, w * 8, 8), x)
    ids = latent_position_ids(h // 2, w // 2)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(3, h // 2, w // 2, "cpu", torch.float32))


# -- one network evaluation ------------------------------------------------------------------------
def test_velocity_is_a_direct_transformer_call_on_packed_latents(flux: FluxBackbone):
    """The pipeline's own inputs: packed latents and ids from ``prepare_latents``, guidance 3.5 in float32,
    timestep = scheduler timestep / 1000, txt_ids zeros; the output unpacked."""
    pipe, x = flux.pipeline, _noise(flux)
    embeds, pooled = _pipeline_embeds(pipe, PROMPTS)
    packed, img_ids = pipe.prepare_latents(2, 16, 32, 32, embeds.dtype, torch.device("cpu"), None,
                                           latents=FluxPipeline._pack_latents(x, 2, 16, 8, 8))
    sigma = torch.tensor([0.9, 0.35])
    with torch.no_grad():
        raw = pipe.transformer(hidden_states=packed, timestep=sigma, guidance=torch.full([2], 3.5),
                               pooled_projections=pooled, encoder_hidden_states=embeds,
                               txt_ids=torch.zeros(MAX_SEQ, 3), img_ids=img_ids, return_dict=False)[0]
        v = flux.velocity(x, sigma, flux.encode(PROMPTS))
    assert torch.equal(v, FluxPipeline._unpack_latents(raw, 32, 32, pipe.vae_scale_factor))


def test_distilled_guidance_is_the_backbone_argument_not_cfg(flux: FluxBackbone):
    x, sigma, cond = _noise(flux), torch.tensor([0.7, 0.7]), flux.encode(PROMPTS)
    with torch.no_grad():
        at_35 = flux.velocity(x, sigma, cond)
        flux.guidance_scale = 1.0
        at_1 = flux.velocity(x, sigma, cond)
    assert not torch.allclose(at_35, at_1, atol=1e-4)  # the guidance embedding enters the network
    assert flux.nfe_per_sample(1.0) == 1  # one call per sample and step at the trainer's guidance 1


# -- schedule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 6, 28])
def test_sigmas_are_flux_pipelines_schedule(flux: FluxBackbone, steps: int):
    """FluxPipeline: sigmas = linspace(1, 1/T, T), mu = calculate_shift(image tokens), the scheduler's
    set_timesteps; and by hand: exp(mu) / (exp(mu) + 1/s - 1)."""
    import numpy as np

    cfg = flux.scheduler.config
    mu = calculate_shift(flux.image_seq_len, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                         cfg.max_shift)
    assert flux_mu(flux.image_seq_len, cfg) == pytest.approx(mu, abs=1e-12)
    sigmas = flux.sigmas(steps)
    reference = type(flux.scheduler).from_config(cfg)
    retrieve_timesteps(reference, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert torch.equal(sigmas, reference.sigmas.float())
    s = torch.linspace(1.0, 1 / steps, steps, dtype=torch.float64)
    by_hand = torch.cat([np.exp(mu) / (np.exp(mu) + 1 / s - 1), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(sigmas.double(), by_hand, atol=1e-6)


def test_shift_depends_on_the_resolution(tiny_flux_folder: Path, flux: FluxBackbone):
    big = FluxBackbone.from_pretrained(tiny_flux_folder, resolution=64, max_sequence_length=MAX_SEQ)
    assert big.latent_shape == (16, 16, 16) and big.image_seq_len == 64
    cfg = flux.scheduler.config
    mu_small, mu_big = (flux_mu(n, cfg) for n in (16, 64))
    assert mu_big > mu_small
    assert mu_big == pytest.approx(calculate_shift(64, 256, 4096, 0.5, 1.15))
    # more image tokens, larger mu: every intermediate sigma is higher (more time at high noise)
    assert (big.sigmas(6)[1:-1] > flux.sigmas(6)[1:-1]).all()
    # FLUX.1-dev at Flow-GRPO's 512 px: 32 x 32 tokens
    assert flux_mu(1024, cfg) == pytest.approx(0.63)


# -- whole sampling against FluxPipeline.__call__ ----------------------------------------------------
@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_sampling_and_decoding_match_flux_pipeline(flux: FluxBackbone, true_cfg: float):
    """Euler ODE sampling through the backbone + decode equals FluxPipeline from the same packed noise:
    the schedule with its mu, the guidance embedding, unpacking, VAE shift/scale and postprocessing.
    ``true_cfg`` 2 is FluxPipeline's true CFG on the negative prompt "" (the trainer's ``guidance``)."""
    x0, steps = _noise(flux), 4
    pipe = flux.pipeline
    cfg_kwargs = dict(true_cfg_scale=true_cfg, negative_prompt="") if true_cfg != 1.0 else {}
    images = pipe(prompt=PROMPTS, height=32, width=32, num_inference_steps=steps, guidance_scale=3.5,
                  latents=FluxPipeline._pack_latents(x0, 2, 16, 8, 8), max_sequence_length=MAX_SEQ,
                  output_type="pt", **cfg_kwargs).images
    x = sample_ode(flux, flux.encode(PROMPTS), x0, flux.sigmas(steps), guidance=true_cfg)
    ours = flux.decode(x)
    assert ours.shape == images.shape == (2, 3, 32, 32)
    # the timestep reaches the transformer as sigma (ours) or (1000 sigma) / 1000 (the pipeline's): equal
    # up to float32 rounding
    assert torch.allclose(ours, images, atol=1e-5)


def test_decode_undoes_flux_latent_normalisation(flux: FluxBackbone):
    z = _noise(flux)
    vae = flux.vae
    with torch.no_grad():
        direct = vae.decode(z / 0.3611 + 0.1159, return_dict=False)[0]
    assert torch.allclose(flux.decode(z), ((direct + 1) / 2).clamp(0, 1), atol=1e-6)


# -- LoRA ------------------------------------------------------------------------------------------
def test_lora_targets_are_flow_grpos(flux: FluxBackbone):
    flux.add_lora(rank=4, alpha=8)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in flux.transformer.named_parameters() if ".lora_A" in n}
    double = {f"transformer_blocks.0.{t}" for t in FLUX_LORA_TARGETS}
    single = {f"single_transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v")}
    assert adapted == double | single
    assert all(p.dtype == torch.float32 for p in flux.trainable_parameters())


# -- bad settings ----------------------------------------------------------------------------------------
def test_bad_resolution_or_sequence_length_is_a_user_error(tiny_flux_folder: Path):
    with pytest.raises(UserError, match="multiple of 8"):  # VAE scale 4 x 2x2 patches
        FluxBackbone.from_pretrained(tiny_flux_folder, resolution=36)
    with pytest.raises(UserError, match="max_sequence_length"):
        FluxBackbone.from_pretrained(tiny_flux_folder, max_sequence_length=1024)
