"""WanBackbone on a tiny Wan2.1 pipeline built in code, checked against diffusers' own WanPipeline.

The independent computations are diffusers' code: ``WanPipeline.encode_prompt``, direct transformer calls
with the pipeline's own inputs (its scheduler's timesteps, its separate conditional / unconditional calls),
the pipeline scheduler's ``set_timesteps``, and a whole ``WanPipeline.__call__`` from the same initial noise
(Euler steps, CFG, ``latents_mean`` / ``latents_std``, the causal VAE, postprocessing). The generic
properties (shapes, determinism, LoRA identity, reference policy) are the contract test's.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

from opgrpo_bench.backbones.folders import missing_components
from opgrpo_bench.backbones.wan import WanBackbone, euler_scheduler
from opgrpo_bench.errors import UserError
from opgrpo_bench.sampling import sample_ode

PROMPTS = ["a photo of a cat", "a red car on a street"]
MAX_SEQ = 16
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")


def _noise(backbone: WanBackbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed))


def _pipeline_embeds(pipe: WanPipeline, prompts: list[str]) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=MAX_SEQ,
                                   device=torch.device("cpu"))
    return embeds


# -- folder and loading ----------------------------------------------------------------------------
def test_tiny_folder_is_a_complete_wan_pipeline(tiny_wan_folder: Path, wan: WanBackbone):
    index = json.loads((tiny_wan_folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for name in COMPONENTS:
        assert (tiny_wan_folder / name).is_dir() and index[name][1] is not None, name
    assert missing_components(tiny_wan_folder) == []
    pipe = wan.pipeline
    assert isinstance(pipe, WanPipeline)
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (4, 8)
    assert len(pipe.vae.config.latents_mean) == len(pipe.vae.config.latents_std) == 16
    # 9 frames of 32x32 px -> 3 latent frames of 4x4 (the first frame alone, then 4 per latent frame)
    assert wan.latent_shape == (16, 3, 4, 4) and wan.num_frames == 9
    assert isinstance(wan.scheduler, FlowMatchEulerDiscreteScheduler) and wan.scheduler.config.shift == 3.0
    assert wan.nfe_per_sample(4.5) == 2 and not wan.trainable_parameters()


def test_encode_is_the_pipelines_prompt_encoding(wan: WanBackbone):
    cond = wan.encode(PROMPTS)
    embeds = _pipeline_embeds(wan.pipeline, PROMPTS)
    assert cond["embeds"].shape == (2, MAX_SEQ, 32) and torch.equal(cond["embeds"], embeds)
    assert torch.equal(cond["neg_embeds"], _pipeline_embeds(wan.pipeline, [""]).expand(2, -1, -1))
    # padding positions are zero (how WanPipeline masks them): the empty prompt is its EOS token only
    assert cond["neg_embeds"][:, 1:].abs().max() == 0 and cond["neg_embeds"][:, 0].abs().max() > 0


# -- one network evaluation ------------------------------------------------------------------------
def test_velocity_is_a_direct_transformer_call_with_the_pipelines_inputs(wan: WanBackbone):
    """The pipeline's own inputs: its scheduler's timestep t = 1000 sigma (float32), the latents as they
    are; with CFG its two separate calls, combined as ``uncond + 4.5 (cond - uncond)``."""
    pipe, x = wan.pipeline, _noise(wan)
    embeds, neg = _pipeline_embeds(pipe, PROMPTS), _pipeline_embeds(pipe, ["", ""])
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(6)
    cond = wan.encode(PROMPTS)
    for i in (0, 3):
        t, sigma = scheduler.timesteps[i], scheduler.sigmas[i]
        with torch.no_grad():
            raw = pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=embeds,
                                   return_dict=False)[0]
            raw_uncond = pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=neg,
                                          return_dict=False)[0]
            v = wan.velocity(x, sigma.expand(2), cond)
            v_cfg = wan.velocity(x, sigma.expand(2), cond, guidance=4.5)
        # 1000 * sigma (ours) and the scheduler's float timestep agree to float32 rounding
        assert torch.allclose(v, raw, atol=1e-5)
        assert torch.allclose(v_cfg, raw_uncond + 4.5 * (raw - raw_uncond), atol=1e-4)


# -- schedule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_sigmas_are_wan_pipelines_schedule(wan: WanBackbone, steps: int):
    reference = copy.deepcopy(wan.pipeline.scheduler)
    reference.set_timesteps(steps)
    assert torch.equal(wan.sigmas(steps), reference.sigmas.float())


def test_unipc_folders_get_an_euler_scheduler_with_their_flow_shift(tmp_path: Path, tiny_wan_folder: Path):
    """Real Wan2.1 folders ship UniPC with flow_shift; the backbone samples with Euler at that shift, and the
    two schedulers warp their sigmas by the same ``shift * s / (1 + (shift - 1) * s)``."""
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                    num_train_timesteps=1000)
    folder = tmp_path / "unipc"
    shutil.copytree(tiny_wan_folder, folder)
    shutil.rmtree(folder / "scheduler")
    unipc.save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    bb = WanBackbone.from_pretrained(folder, height=32, width=32, num_frames=9, max_sequence_length=MAX_SEQ)
    assert isinstance(bb.pipeline.scheduler, UniPCMultistepScheduler)
    assert isinstance(bb.scheduler, FlowMatchEulerDiscreteScheduler) and bb.scheduler.config.shift == 5.0
    sigmas = bb.sigmas(4).double()[:-1]
    # Euler's schedule is evenly spaced sigmas from 1, warped by the shift: the inverse warp
    # s = sigma / (shift - (shift - 1) sigma) gives them back
    unshifted = sigmas / (5.0 - 4.0 * sigmas)
    assert torch.isclose(unshifted[0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(unshifted.diff(), unshifted.diff()[0].expand(3), atol=1e-6)
    same = euler_scheduler(bb.scheduler)
    assert same is bb.scheduler


# -- whole sampling against WanPipeline.__call__ -----------------------------------------------------
def test_sampling_and_decoding_match_wan_pipeline(wan: WanBackbone):
    """Euler ODE sampling through the backbone + decode equals WanPipeline from the same noise, with CFG 4.5
    on the negative prompt "": the latents (output_type "latent") and the frames (output_type "np",
    [B, F, H, W, C]), i.e. the schedule, CFG, latents_mean / latents_std, the VAE and postprocessing."""
    x0, steps, pipe = _noise(wan), 4, wan.pipeline
    kwargs = dict(prompt=PROMPTS, height=32, width=32, num_frames=9, num_inference_steps=steps, guidance_scale=4.5,
                  max_sequence_length=MAX_SEQ)
    latents = pipe(latents=x0.clone(), output_type="latent", **kwargs).frames
    frames = pipe(latents=x0.clone(), output_type="np", **kwargs).frames
    x = sample_ode(wan, wan.encode(PROMPTS), x0, wan.sigmas(steps), guidance=4.5)
    assert torch.allclose(x, latents, atol=1e-5)
    videos = wan.decode(x)
    assert videos.shape == (2, 9, 3, 32, 32) and frames.shape == (2, 9, 32, 32, 3)
    assert torch.allclose(videos.permute(0, 1, 3, 4, 2), torch.from_numpy(frames), atol=1e-5)


def test_decode_undoes_wan_latent_normalisation(wan: WanBackbone):
    z = _noise(wan)
    cfg = wan.vae.config
    mean, std = (torch.tensor(v).view(1, 16, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    with torch.no_grad():
        direct = wan.vae.decode(z * std + mean, return_dict=False)[0]  # [B, 3, F, H, W]
    assert torch.allclose(wan.decode(z), ((direct + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4), atol=1e-6)


# -- LoRA ------------------------------------------------------------------------------------------
def test_lora_targets_are_flow_grpos(wan: WanBackbone):
    """Flow-GRPO's list; in the text-to-video transformer it means q/k/v/out of both attentions per block
    (its add_* entries belong to image-conditioned Wan and match nothing here)."""
    wan.add_lora(rank=4, alpha=8)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in wan.transformer.named_parameters() if ".lora_A" in n}
    expected = {f"blocks.{i}.attn{a}.{p}" for i in range(2) for a in (1, 2)
                for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert adapted == expected
    assert all(p.dtype == torch.float32 for p in wan.trainable_parameters())


# -- bad settings ----------------------------------------------------------------------------------------
def test_bad_sizes_are_user_errors(tiny_wan_folder: Path):
    with pytest.raises(UserError, match="multiple of 16"):  # VAE scale 8 x 2x2 patches
        WanBackbone.from_pretrained(tiny_wan_folder, height=40, width=32, num_frames=9)
    with pytest.raises(UserError, match="num_frames"):
        WanBackbone.from_pretrained(tiny_wan_folder, height=32, width=32, num_frames=8)


def _unipc_folder(tmp_path: Path, tiny_wan_folder: Path) -> Path:
    """The tiny folder with Wan2.1-T2V-1.3B's scheduler: UniPC, flow sigmas, flow shift 3, final sigma 0."""
    folder = tmp_path / "unipc"
    shutil.copytree(tiny_wan_folder, folder)
    shutil.rmtree(folder / "scheduler")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                            num_train_timesteps=1000, final_sigmas_type="zero").save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_the_wan_paper_tasks_sample_flow_grpos_wan_sde_on_the_unipc_grid(tmp_path: Path, tiny_wan_folder: Path):
    """video-ocr-wan21-v1's sampler is Flow-GRPO's Wan code: the folder's UniPC flow-sigma grid and the step
    ``std = sigma_min + (sigmas[1] - sigma_min) * sigma``; its per-step log-probs equal the reference formula
    (written here from flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py) within 1e-5."""
    import math

    from opgrpo_bench.algorithms.base import SamplerSettings
    from opgrpo_bench.runner import resolve
    from opgrpo_bench.sampling import sample_sde

    train = resolve("video-ocr-wan21-smoke-v1", "flow-grpo", 0).train_config
    settings = SamplerSettings.from_config(train)
    assert settings.transition == "sde-wan" and settings.guidance == 4.5
    bb = WanBackbone.from_pretrained(_unipc_folder(tmp_path, tiny_wan_folder), height=32, width=32, num_frames=9,
                                     max_sequence_length=MAX_SEQ, schedule="unipc")
    reference = UniPCMultistepScheduler.from_pretrained(tmp_path / "unipc" / "scheduler")
    reference.set_timesteps(6)
    sigmas = bb.sigmas(6)
    assert torch.equal(sigmas, reference.sigmas.float()) and sigmas[-1] == 0  # the folder's own grid

    cond = bb.encode(["a sign that says HI", "a sign that says NO"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        traj = sample_sde(bb, cond, _noise(bb), sigmas, settings.noise_level, settings.guidance, gen,
                          transition=settings.transition)
        sigma_max, sigma_min = reference.sigmas[1].item(), reference.sigmas[-1].item()
        for i in range(len(sigmas) - 1):
            x, x_next = traj.latents[:, i].float(), traj.latents[:, i + 1].float()
            v = bb.velocity(traj.latents[:, i], sigmas[i].expand(2), cond, settings.guidance).float()
            sigma, dt = reference.sigmas[i].float(), (reference.sigmas[i + 1] - reference.sigmas[i]).float()
            std = sigma_min + (sigma_max - sigma_min) * sigma
            mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
            logp = (-((x_next - mean) ** 2) / (2 * ((std * torch.sqrt(-1 * dt)) ** 2))
                    - torch.log(std * torch.sqrt(-1 * dt)) - math.log(math.sqrt(2 * math.pi)))
            assert torch.allclose(traj.log_probs[:, i], logp.mean(dim=tuple(range(1, logp.ndim))), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="UniPCMultistepScheduler"):
        WanBackbone.from_pretrained(tiny_wan_folder, height=32, width=32, num_frames=9, max_sequence_length=MAX_SEQ,
                                    schedule="unipc")
