"""SD3-family backbone: diffusers ``SD3Transformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``.

The same class serves three uses:

- the real Stable Diffusion 3.5 Medium (``SD3Backbone.from_pretrained(path)``: a local diffusers folder
  or a Hugging Face cache entry, never a download), with its three text encoders and its VAE;
- a tiny SD3 pipeline built in code (:mod:`opgrpo_bench.backbones.tiny`), saved and loaded through the
  same ``from_pretrained`` code path (the ``tiny-sd3-jpeg-v1`` task and the tests);
- the CPU digits tasks, a tiny SD3 transformer in pixel space with a small CLIP text encoder.

Only SD3 specifics live here (prompt encoding, the transformer call, VAE decoding, loading a pipeline
folder). LoRA, the reference policy, devices and dtypes, row batching and CFG are the family-independent
:class:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone`; the folder checks are
:mod:`opgrpo_bench.backbones.folders`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.backbones.diffusers_backbone import DiffusersBackbone, vae_decode
from opgrpo_bench.backbones.folders import SD3_FAMILY
from opgrpo_bench.errors import UserError

PromptEncoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
"""prompts -> (token embeddings [B, L, D], pooled embedding [B, P])."""

# Flow-GRPO's LoRA targets for SD3: joint attention projections of both streams. SD3.5-Medium's
# second, image-only attention ("attn2", MMDiT-X blocks) is not adapted, as in Flow-GRPO.
SD3_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


class SD3Backbone(DiffusersBackbone):
    """Backbone over an SD3 transformer; ``vae=None`` means the model works in pixel space.

    LoRA, the reference policy, devices, row batching, CFG and the schedule come from
    :class:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone`; this class adds SD3's prompt
    encoding (token embeddings + pooled embedding), its transformer call and its VAE decoding.

    Args:
        transformer: the flow network; frozen here (``add_lora`` adds the trainable part).
        prompt_encoder: prompts -> (embeds [B, L, D], pooled [B, P]).
        scheduler: provides the sampling schedule (its ``shift``), never used to step.
        vae: latent decoder with ``scaling_factor`` / ``shift_factor``; None for pixel-space models.
        latent_shape: [C, H, W] of one sample; default the transformer's native sample size.
        negative_prompt: the unconditional prompt of classifier-free guidance ("" as SD3 and Flow-GRPO).
        max_batch: most rows per network call when no gradient is needed (sampling, evaluation, VAE
            decoding, text encoding); None = one call. Bounds peak memory of large rollouts.
    """

    LORA_TARGETS = SD3_LORA_TARGETS

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        prompt_encoder: PromptEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: Any | None = None,
        latent_shape: tuple[int, ...] | None = None,
        negative_prompt: str = "",
        max_batch: int | None = None,
    ):
        if latent_shape is None:
            cfg = transformer.config
            latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        super().__init__(transformer, scheduler, latent_shape, negative_prompt=negative_prompt, max_batch=max_batch)
        self.prompt_encoder = prompt_encoder
        self.vae = vae

    def _encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """``embeds`` [B, L, D] and ``pooled`` [B, P] of ``prompts``."""
        embeds, pooled = self.prompt_encoder(prompts)
        return {"embeds": embeds, "pooled": pooled}

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One transformer evaluation [B, *latent_shape]; SD3 takes the timestep as ``1000 * sigma``."""
        return self.transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["embeds"],
                                pooled_projections=cond["pooled"], return_dict=False)[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (float32, on ``x``'s device) from final latents [B, *latent_shape].

        SD3 latents are normalised as ``(z - shift_factor) * scaling_factor``; this undoes it before the
        VAE decoder, as ``StableDiffusion3Pipeline`` does.
        """
        if self.vae is None:
            return ((x.float() + 1) / 2).clamp(0, 1)
        return vae_decode(self.vae, x, self.row_batches(x.shape[0]))

    # -- loading real weights -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", max_sequence_length: int = 256,
                        resolution: int | None = 512, negative_prompt: str = "", max_batch: int | None = None,
                        gradient_checkpointing: bool = False, what: str = "SD3 weights",
                        env: str | None = None) -> "SD3Backbone":
        """Load an SD3 / SD3.5 diffusers folder (local path or Hugging Face cache id), offline only.

        Args:
            path: a diffusers ``StableDiffusion3Pipeline`` folder, or a repo id looked up in the local
                Hugging Face cache (never downloaded).
            dtype, device: where the pipeline's models live (bf16 on a GPU for SD3.5-M).
            max_sequence_length: T5 tokens of the conditioning (Flow-GRPO: 128; diffusers' default: 256).
            resolution: image side in pixels (Flow-GRPO trains SD3.5-M at 512); the latent side is
                ``resolution // vae_scale_factor``. None keeps the transformer's native sample size.
            negative_prompt, max_batch: as for :class:`SD3Backbone`.
            gradient_checkpointing: recompute transformer activations in the backward pass.
            what, env: name of the weights and the environment variable that provides them, for the error
                message only.

        Raises:
            MissingWeightsError: one line naming what is missing, at once (no network, no retries).
            UserError: a ``resolution`` the model cannot take.
        """
        def check(pipe: Any, folder: Path) -> None:
            cfg = pipe.transformer.config
            if resolution:
                step = pipe.vae_scale_factor * cfg.patch_size
                if resolution % step:
                    raise UserError(f"resolution {resolution} is not a multiple of {step} (VAE scale x patch size)")
                if resolution // pipe.vae_scale_factor // cfg.patch_size > cfg.pos_embed_max_size:
                    raise UserError(f"resolution {resolution} exceeds the transformer's position embeddings "
                                    f"({cfg.pos_embed_max_size * step} px at most)")

        pipe = SD3_FAMILY.load(path, what=what, env=env, dtype=dtype, device=device,
                               gradient_checkpointing=gradient_checkpointing, check=check)
        torch_device = torch.device(device)

        def encode_prompt(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            """prompts -> (CLIP-L|CLIP-G padded to T5 width ++ T5 tokens [B, 77 + L_t5, D], pooled [B, P])."""
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                device=torch_device, max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

        cfg = pipe.transformer.config
        size = resolution // pipe.vae_scale_factor if resolution else cfg.sample_size
        backbone = cls(pipe.transformer, encode_prompt, pipe.scheduler, vae=pipe.vae,
                       latent_shape=(cfg.in_channels, size, size), negative_prompt=negative_prompt,
                       max_batch=max_batch)
        backbone.pipeline = pipe
        return backbone
