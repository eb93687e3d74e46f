"""FLUX.1-family backbone: diffusers ``FluxTransformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``.

The same class serves two uses:

- the real FLUX.1-dev (``FluxBackbone.from_pretrained(path)``: a local diffusers folder or a Hugging Face
  cache entry, never a download), with its CLIP-L and T5-XXL text encoders and its 16-channel VAE;
- a tiny FLUX pipeline built in code (:mod:`opgrpo_bench.backbones.tiny_flux`), saved and loaded through
  the same ``from_pretrained`` code path (the ``tiny-flux-jpeg-v1`` task and the tests).

What differs from SD3, and stays inside this class so that the trainer and the SDE math see the same
[C, H, W] latents as for every other image family:

- **Packed latents.** The FLUX transformer works on a sequence of 2x2 latent patches, [B, H/2 * W/2, 4C],
  with rotary position ids per patch. The backbone's latents are the unpacked [B, C, H, W] (what the VAE
  decodes); :meth:`FluxBackbone._forward` packs them, builds the position ids, calls the transformer and
  unpacks the velocity. Packing is a permutation, so per-element SDE math is unchanged by it.
- **Resolution-dependent shift.** FLUX.1's scheduler uses dynamic shifting: the schedule
  ``linspace(1, 1/T, T)`` is warped by ``exp(mu) / (exp(mu) + 1/t - 1)`` with ``mu`` linear in the image's
  sequence length (:func:`flux_mu`), as ``FluxPipeline`` does; :meth:`FluxBackbone.sigmas` applies it.
- **Distilled guidance, no true CFG.** FLUX.1-dev was distilled to take the guidance scale as an input
  (an embedding added to the timestep's); one network call per sample gives the guided velocity. The scale is
  a backbone argument (``guidance_scale``, 3.5 for FLUX.1-dev), sent as the transformer's ``guidance``
  input. The trainer's ``guidance`` must stay 1.0, so ``nfe_per_sample`` is 1. (A ``guidance`` above 1
  still works: it is ``FluxPipeline``'s ``true_cfg_scale``, a second call on the negative prompt, on top
  of the distilled guidance; Flow-GRPO does not use it.)
- **Text conditioning.** T5 token embeddings [B, L, D] are the sequence the transformer attends to; CLIP's
  pooled embedding [B, P] enters with the timestep. Text position ids are zeros, as in ``FluxPipeline``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.backbones.diffusers_backbone import DiffusersBackbone, vae_decode
from opgrpo_bench.backbones.folders import FLUX_FAMILY
from opgrpo_bench.backbones.models import FLUX_DEV_GUIDANCE
from opgrpo_bench.errors import UserError

PromptEncoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
"""prompts -> (T5 token embeddings [B, L, D], CLIP pooled embedding [B, P])."""

# Flow-GRPO's LoRA targets for FLUX (scripts/train_flux.py): the attention projections of both streams and
# the double-stream blocks' feed-forward layers. peft matches them as module-name suffixes, so the
# "attn.to_q/k/v" entries also adapt the single-stream blocks' attention (those have no ``to_out``, and
# their fused ``proj_mlp``/``proj_out`` are not adapted).
FLUX_LORA_TARGETS = (
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)


# -- packing: [B, C, H, W] latents <-> [B, H/2 * W/2, 4C] patch sequences --------------------------------
def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """The transformer's patch sequence [B, (H/2)(W/2), 4C] of latents ``x`` [B, C, H, W] (H, W even).

    Patches are taken in row-major order; each patch's 4C features are channel-major, then the 2x2 offsets
    (c, dy, dx), the layout FLUX.1 was trained on.
    """
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, H/2, dy, W/2, dx]
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Latents [B, C, height, width] from a patch sequence ``tokens`` [B, (height/2)(width/2), 4C]."""
    b, _, features = tokens.shape
    c = features // 4
    patches = tokens.reshape(b, height // 2, width // 2, c, 2, 2)  # [B, H/2, W/2, C, dy, dx]
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def latent_position_ids(rows: int, cols: int, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotary position ids [rows * cols, 3] of a patch grid: (0, row, col) per patch, row-major.

    The first axis is 0 for generated images (FLUX.1 Kontext uses it to tell reference images apart).
    """
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    return torch.stack([torch.zeros_like(r), r, c], dim=1).to(dtype)


# -- schedule ---------------------------------------------------------------------------------------
def flux_mu(image_seq_len: int, scheduler_config: Mapping[str, Any]) -> float:
    """FLUX.1's resolution-dependent shift ``mu``: linear in the number of image tokens.

    ``mu`` is ``base_shift`` at ``base_image_seq_len`` tokens and ``max_shift`` at ``max_image_seq_len``
    (FLUX.1-dev: 0.5 at 256 tokens = 256 px, 1.15 at 4096 tokens = 1024 px; 512 px gives 0.63), and goes on
    linearly outside that range. The defaults are ``FluxPipeline``'s when the config lacks a key.
    """
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (image_seq_len - base_len)


class FluxBackbone(DiffusersBackbone):
    """Backbone over a FLUX transformer, on unpacked latents [C, H, W] (packing happens per call).

    LoRA, the reference policy, devices, row batching and (optional) true CFG come from
    :class:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone`; this class adds FLUX's prompt
    encoding (T5 tokens + CLIP pooled), packing and position ids, the distilled guidance input, the
    resolution-dependent schedule and VAE decoding.

    Args:
        transformer: the flow network; frozen here (``add_lora`` adds the trainable part).
        prompt_encoder: prompts -> (embeds [B, L, D], pooled [B, P]).
        scheduler: a ``FlowMatchEulerDiscreteScheduler`` (FLUX.1: dynamic shifting); provides the schedule,
            never used to step.
        vae: latent decoder with ``scaling_factor`` / ``shift_factor``.
        latent_shape: [C, H, W] of one sample, C = ``in_channels / 4``, H and W even.
        guidance_scale: the distilled guidance sent to the transformer (ignored when the transformer has no
            guidance embedding, as FLUX.1-schnell).
        negative_prompt: the unconditional prompt of (optional) true CFG.
        max_batch: most rows per no-grad network / VAE / text-encoder call; None = one call.
    """

    LORA_TARGETS = FLUX_LORA_TARGETS

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        prompt_encoder: PromptEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: Any,
        latent_shape: Sequence[int],
        guidance_scale: float = FLUX_DEV_GUIDANCE,
        negative_prompt: str = "",
        max_batch: int | None = None,
    ):
        channels, height, width = latent_shape
        if channels * 4 != transformer.config.in_channels:
            raise ValueError(f"latent channels {channels} do not pack into the transformer's "
                             f"{transformer.config.in_channels} input features (4 per channel)")
        if height % 2 or width % 2:
            raise ValueError(f"latent size {height}x{width} must be even (2x2 patches)")
        super().__init__(transformer, scheduler, latent_shape, negative_prompt=negative_prompt, max_batch=max_batch)
        self.prompt_encoder = prompt_encoder
        self.vae = vae
        self.guidance_scale = float(guidance_scale)

    @property
    def image_seq_len(self) -> int:
        """Image tokens the transformer sees: (H/2) * (W/2)."""
        _, height, width = self.latent_shape
        return (height // 2) * (width // 2)

    # -- family hooks -----------------------------------------------------------------------------
    def _encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """``embeds`` [B, L, D] (T5) and ``pooled`` [B, P] (CLIP) of ``prompts``."""
        embeds, pooled = self.prompt_encoder(prompts)
        return {"embeds": embeds, "pooled": pooled}

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One transformer evaluation: velocity [B, C, H, W] of latents ``x`` [B, C, H, W] at ``sigma`` [B].

        FLUX takes the timestep as sigma itself (the transformer multiplies by 1000 internally, after
        casting to its dtype, as it does when ``FluxPipeline`` calls it).
        """
        batch, _, height, width = x.shape
        embeds = cond["embeds"]
        img_ids = latent_position_ids(height // 2, width // 2, device=x.device, dtype=x.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            # float32 like FluxPipeline's; the transformer casts it to its dtype with the timestep
            guidance = torch.full((batch,), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self.transformer(hidden_states=pack_latents(x), timestep=sigma, guidance=guidance,
                               pooled_projections=cond["pooled"], encoder_hidden_states=embeds,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack_latents(out, height, width)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, sH, sW] in [0, 1] from final latents [B, C, H, W] (s: the VAE scale factor, 8).

        FLUX.1 latents are ``(z - shift_factor) * scaling_factor`` (0.1159, 0.3611), undone before the VAE
        decoder, as ``FluxPipeline`` does after unpacking.
        """
        return vae_decode(self.vae, x, self.row_batches(x.shape[0]))

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """FluxPipeline's schedule [num_steps + 1]: ``linspace(1, 1/T, T)``, shifted with ``mu`` of this
        resolution (:func:`flux_mu`), then a final 0. Float32 on the CPU.

        A scheduler without dynamic shifting ignores ``mu`` and applies its static ``shift``, as in
        ``FluxPipeline``.
        """
        base = np.linspace(1.0, 1.0 / num_steps, num_steps)
        self.scheduler.set_timesteps(sigmas=base, mu=flux_mu(self.image_seq_len, self.scheduler.config))
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    # -- loading real weights -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", max_sequence_length: int = 512,
                        resolution: int = 1024, guidance_scale: float = FLUX_DEV_GUIDANCE,
                        negative_prompt: str = "", max_batch: int | None = None,
                        gradient_checkpointing: bool = False, vae_dtype: torch.dtype | None = None,
                        what: str = "FLUX.1 weights", env: str | None = None) -> "FluxBackbone":
        """Load a FLUX.1 diffusers folder (local path or Hugging Face cache id), offline only.

        Args:
            path: a diffusers ``FluxPipeline`` folder, or a repo id looked up in the local Hugging Face cache
                (never downloaded).
            dtype, device: where the pipeline's models live (bf16 on a GPU for FLUX.1-dev).
            max_sequence_length: T5 tokens of the conditioning (Flow-GRPO: 128; ``FluxPipeline``: 512, the
                most FLUX.1-dev takes).
            resolution: image side in pixels (Flow-GRPO trains FLUX.1-dev at 512); the latent side is
                ``resolution // vae_scale_factor`` and must be even.
            guidance_scale: the distilled guidance (FLUX.1-dev: 3.5).
            negative_prompt, max_batch: as for :class:`FluxBackbone`.
            gradient_checkpointing: recompute transformer activations in the backward pass.
            vae_dtype: the VAE's dtype when it differs from ``dtype`` (Flow-GRPO decodes FLUX in float32).
            what, env: name of the weights and the environment variable that provides them, for the error
                message only.

        Raises:
            MissingWeightsError: one line naming what is missing, at once (no network, no retries).
            UserError: a ``resolution`` or ``max_sequence_length`` the model cannot take.
        """
        if not 0 < max_sequence_length <= 512:
            raise UserError(f"max_sequence_length {max_sequence_length} is outside 1..512 (FLUX's T5 context)")

        def check(pipe: Any, folder: Path) -> None:
            # FluxPipeline: latents are VAE-scaled, then packed in 2x2 patches, so the side must divide by both
            step = pipe.vae_scale_factor * 2
            if resolution <= 0 or resolution % step:
                raise UserError(f"resolution {resolution} is not a positive multiple of {step} (VAE scale x 2x2 "
                                f"patches)")

        pipe = FLUX_FAMILY.load(path, what=what, env=env, dtype=dtype, device=device, vae_dtype=vae_dtype,
                                gradient_checkpointing=gradient_checkpointing, check=check)
        torch_device = torch.device(device)

        def encode_prompt(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            """prompts -> (T5 tokens [B, max_sequence_length, D], CLIP pooled [B, P])."""
            embeds, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=torch_device,
                                                   max_sequence_length=max_sequence_length)
            return embeds, pooled

        size = resolution // pipe.vae_scale_factor
        channels = pipe.transformer.config.in_channels // 4
        backbone = cls(pipe.transformer, encode_prompt, pipe.scheduler, pipe.vae, latent_shape=(channels, size, size),
                       guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_batch=max_batch)
        backbone.pipeline = pipe
        return backbone
