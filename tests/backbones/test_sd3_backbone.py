"""SD3Backbone on a tiny SD3 pipeline built in code: loading, the schedule, CFG, LoRA targets, errors, checked
against diffusers' own StableDiffusion3Pipeline. The generic properties (shapes, determinism, LoRA identity,
the reference policy, row batching, folder errors) are the contract test's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from opgrpo_bench.backbones.base import Backbone
from opgrpo_bench.backbones.folders import missing_components
from opgrpo_bench.backbones.sd3 import SD3Backbone
from opgrpo_bench.backbones.tiny import TinySD3Config, build_tiny_sd3_pipeline, config_hash, tiny_sd3_folder
from opgrpo_bench.errors import MissingWeightsError, UserError
from opgrpo_bench.sampling import sample_ode

PROMPTS = ["a photo of a cat", 'a sign that says "hello"']
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "text_encoder_3",
              "tokenizer", "tokenizer_2", "tokenizer_3")


def _inputs(backbone: SD3Backbone, n: int = 2, sigma: float = 0.7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *backbone.latent_shape), generator=gen)
    return x, torch.full((n,), sigma)


def _raw_transformer(backbone: SD3Backbone, x: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
                     pooled: torch.Tensor) -> torch.Tensor:
    """One direct transformer call, as the diffusers pipeline makes it (timestep = 1000 * sigma)."""
    return backbone.transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=embeds,
                                pooled_projections=pooled, return_dict=False)[0]


# -- folder and loading ----------------------------------------------------------------------------
def test_tiny_folder_is_a_complete_sd3_pipeline(tiny_folder: Path, backbone: SD3Backbone):
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    for name in COMPONENTS:
        assert (tiny_folder / name).is_dir(), name
        assert index[name][1] is not None
    assert missing_components(tiny_folder) == []
    assert isinstance(backbone, Backbone)
    assert backbone.latent_shape == (16, 8, 8)  # 32 px / VAE scale factor 4, 16 latent channels
    pipe = backbone.pipeline
    assert pipe is not None and pipe.vae_scale_factor == 4
    assert {type(m).__name__ for m in (pipe.text_encoder, pipe.text_encoder_2)} == {"CLIPTextModelWithProjection"}
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
    assert tuple(pipe.transformer.config.dual_attention_layers) == (0,)  # an SD3.5 MMDiT-X block
    assert not backbone.trainable_parameters()


def test_tiny_folder_is_cached_and_deterministic(tiny_folder: Path):
    config = TinySD3Config(resolution=32)
    assert tiny_sd3_folder(config, seed=0) == tiny_folder  # second call: the cached folder, no rebuild
    assert tiny_folder.name == config_hash(config, 0)
    assert config_hash(config, 1) != config_hash(config, 0)
    assert config_hash(TinySD3Config(resolution=64), 0) != config_hash(config, 0)
    a = build_tiny_sd3_pipeline(config, seed=0).transformer.state_dict()
    b = build_tiny_sd3_pipeline(config, seed=0).transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigmas_follow_the_shifted_schedule(backbone: SD3Backbone):
    sigmas = backbone.sigmas(4)
    assert sigmas.shape == (5,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    # diffusers' SD3 schedule, as Flow-GRPO samples it: T points from 1 to the scheduler's sigma_min, linear
    # in t, then shifted (SD3.5: shift 3, sigma' = 3 s / (1 + 2 s)), then a final 0
    u = torch.linspace(1.0, float(backbone.scheduler.sigma_min), 4, dtype=torch.float64)
    expected = torch.cat([3 * u / (1 + 2 * u), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(sigmas.double(), expected, atol=1e-6)


# -- shapes -----------------------------------------------------------------------------------------
def test_encode_shapes_and_negative_prompt(backbone: SD3Backbone):
    cond = backbone.encode(PROMPTS)
    # context = CLIP-L|CLIP-G (16 tokens, padded to T5's width 64) ++ T5 (16 tokens)
    assert cond["embeds"].shape == (2, 32, 64)
    assert cond["pooled"].shape == (2, 64)  # CLIP-L and CLIP-G projections concatenated
    assert cond["neg_embeds"].shape == (2, 32, 64) and cond["neg_pooled"].shape == (2, 64)
    empty = backbone.encode([""])
    assert torch.allclose(cond["neg_embeds"][1], empty["embeds"][0])
    assert torch.allclose(cond["neg_pooled"][0], empty["pooled"][0])
    assert not torch.allclose(cond["embeds"][0], cond["embeds"][1])


def test_decode_undoes_the_sd3_latent_normalisation(backbone: SD3Backbone):
    x, _ = _inputs(backbone)
    vae = backbone.vae
    assert vae.config.shift_factor == pytest.approx(0.0609) and vae.config.scaling_factor == pytest.approx(1.5305)
    with torch.no_grad():
        expected = vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    assert torch.allclose(backbone.decode(x), ((expected + 1) / 2).clamp(0, 1))


def test_ode_sampling_matches_the_diffusers_pipeline(backbone: SD3Backbone):
    """Euler sampling with CFG over the backbone reproduces StableDiffusion3Pipeline.__call__ on the same noise."""
    x, _ = _inputs(backbone, seed=3)
    steps, guidance = 4, 4.5
    ours = backbone.decode(sample_ode(backbone, backbone.encode(PROMPTS), x, backbone.sigmas(steps), guidance))
    pipe = backbone.pipeline
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS, latents=x.clone(), num_inference_steps=steps, guidance_scale=guidance, height=32,
                  width=32, max_sequence_length=16, output_type="pt").images
    assert torch.allclose(ours, theirs.float(), atol=1e-4)


# -- classifier-free guidance -----------------------------------------------------------------------
def test_guidance_one_is_the_conditional_branch(backbone: SD3Backbone):
    cond = backbone.encode(PROMPTS)
    x, sigma = _inputs(backbone)
    with torch.no_grad():
        direct = _raw_transformer(backbone, x, sigma, cond["embeds"], cond["pooled"])
    assert torch.equal(backbone.velocity(x, sigma, cond, 1.0), direct)


@pytest.mark.parametrize("guidance", [0.0, 2.0, 4.5])
def test_cfg_combines_two_separate_passes(backbone: SD3Backbone, guidance: float):
    cond = backbone.encode(PROMPTS)
    x, sigma = _inputs(backbone, sigma=0.4)
    with torch.no_grad():
        v_cond = _raw_transformer(backbone, x, sigma, cond["embeds"], cond["pooled"])
        v_uncond = _raw_transformer(backbone, x, sigma, cond["neg_embeds"], cond["neg_pooled"])
    expected = v_uncond + guidance * (v_cond - v_uncond)
    got = backbone.velocity(x, sigma, cond, guidance)
    # one batched [uncond; cond] call against two calls: equal up to kernel rounding
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(v_cond, v_uncond)  # the test would be vacuous otherwise


# -- LoRA and the reference policy ------------------------------------------------------------------
def test_add_lora_trains_only_adapters_of_the_joint_attention(backbone: SD3Backbone):
    backbone.add_lora(rank=4, alpha=8)
    trainable = {n for n, p in backbone.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(backbone.trainable_parameters()) == len(trainable)
    assert all(p.dtype == torch.float32 for p in backbone.trainable_parameters())
    assert not any(".attn2." in n for n in trainable)  # SD3.5's second attention is not adapted (Flow-GRPO)
    for target in ("attn.to_q", "attn.add_k_proj", "attn.to_out.0"):
        assert any(f".{target}.lora_A" in n for n in trainable), target
    # the text encoders and the VAE stay frozen
    for module in (backbone.pipeline.text_encoder, backbone.pipeline.text_encoder_3, backbone.vae):
        assert not any(p.requires_grad for p in module.parameters())
    with pytest.raises(RuntimeError):
        backbone.add_lora(rank=4, alpha=8)


def test_gradients_reach_lora_through_cfg(backbone: SD3Backbone):
    backbone.add_lora(rank=4, alpha=8)
    for p in backbone.trainable_parameters():  # non-zero B so that A gets a gradient too
        torch.nn.init.normal_(p, std=0.01)
    cond = backbone.encode(PROMPTS)
    x, sigma = _inputs(backbone)
    backbone.velocity(x, sigma, cond, 4.5).square().mean().backward()
    grads = [p.grad for p in backbone.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_bfloat16_weights_keep_float32_adapters_and_outputs(tiny_folder: Path):
    bb = SD3Backbone.from_pretrained(tiny_folder, dtype=torch.bfloat16, resolution=32, max_sequence_length=16)
    assert bb.dtype == torch.bfloat16 and bb.pipeline.text_encoder_3.dtype == torch.bfloat16
    bb.add_lora(rank=4, alpha=8)
    assert bb.dtype == torch.bfloat16
    assert {p.dtype for p in bb.trainable_parameters()} == {torch.float32}
    cond = bb.encode(PROMPTS)
    x, sigma = _inputs(bb)
    v = bb.velocity(x, sigma, cond, 4.5)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()


# -- resolution -------------------------------------------------------------------------------------
def test_resolution_sets_the_latent_side(tiny_folder: Path):
    bb = SD3Backbone.from_pretrained(tiny_folder, resolution=64, max_sequence_length=16)
    assert bb.latent_shape == (16, 16, 16)
    x = torch.randn(1, *bb.latent_shape)
    v = bb.velocity(x, torch.tensor([0.5]), bb.encode(["a cat"]), 4.5)
    assert v.shape == x.shape
    assert bb.decode(x).shape == (1, 3, 64, 64)
    assert SD3Backbone.from_pretrained(tiny_folder, resolution=None).latent_shape == (16, 8, 8)
    with pytest.raises(UserError, match="multiple of 8"):
        SD3Backbone.from_pretrained(tiny_folder, resolution=36)
    with pytest.raises(UserError, match="position embeddings"):
        SD3Backbone.from_pretrained(tiny_folder, resolution=128)


# -- missing weights --------------------------------------------------------------------------------
def _assert_fast_one_line(fn, tried: list, *match: str) -> str:
    """``fn`` fails with one line, and fast: without reaching for the network (``tried``: the hosts the
    ``no_network`` fixture refused), rather than within a wall-time limit a loaded machine could break."""
    with pytest.raises(MissingWeightsError) as info:
        fn()
    assert tried == []
    message = str(info.value)
    assert "\n" not in message
    for m in match:
        assert m in message, message
    assert isinstance(info.value, UserError)
    return message


def test_missing_folder_and_cache_entry_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _assert_fast_one_line(lambda: SD3Backbone.from_pretrained(tmp_path / "nope"), no_network, "does not exist",
                          "nope")
    _assert_fast_one_line(lambda: SD3Backbone.from_pretrained("./relative/nope"), no_network, "does not exist")
    _assert_fast_one_line(lambda: SD3Backbone.from_pretrained("stabilityai/stable-diffusion-3.5-medium",
                                                              env="OPGRPO_SD35M_PATH"), no_network,
                          "not in the Hugging Face cache", "hf download", "OPGRPO_SD35M_PATH")
    (tmp_path / "empty").mkdir()
    _assert_fast_one_line(lambda: SD3Backbone.from_pretrained(tmp_path / "empty"), no_network, "model_index.json")


@pytest.mark.parametrize("damage, expected", [
    ("rm:text_encoder_3", "text_encoder_3/"),
    ("rm:tokenizer_3", "tokenizer_3/"),  # transformers would silently build an empty tokenizer here
    ("rm:transformer/diffusion_pytorch_model.safetensors", "transformer/ weights"),
    ("rm:vae/config.json", "vae/config.json"),
    ("rm:scheduler/scheduler_config.json", "scheduler/"),
    ("corrupt:transformer/diffusion_pytorch_model.safetensors", "cannot load"),
])
def test_partial_folder_names_what_is_missing(tiny_folder: Path, tmp_path: Path, damage: str, expected: str,
                                              no_network: list):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_folder, folder)
    action, rel = damage.split(":")
    target = folder / rel
    if action == "rm":
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:
        target.write_bytes(b"not a safetensors file")
    _assert_fast_one_line(lambda: SD3Backbone.from_pretrained(folder), no_network, expected)


def test_loads_from_a_hugging_face_cache_snapshot(tiny_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """A repo id resolves to its cached snapshot, offline (the layout `hf download` leaves)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--opgrpo-test--tiny-sd3"
    commit = "0" * 40
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    bb = SD3Backbone.from_pretrained("opgrpo-test/tiny-sd3", resolution=32, max_sequence_length=16)
    assert bb.latent_shape == (16, 8, 8)
