"""Wan2.1 text-to-video backbone: diffusers ``WanTransformer3DModel`` + ``AutoencoderKLWan`` + UMT5.

The same class serves three uses:

- the real Wan2.1-T2V-1.3B (``WanBackbone.from_pretrained(path)``: a local diffusers folder or a Hugging
  Face cache entry, never a download), with its UMT5-XXL text encoder and its causal 3-D VAE;
- a tiny Wan pipeline built in code (:mod:`opgrpo_bench.backbones.tiny_wan`), saved and loaded through
  the same ``from_pretrained`` code path (the ``tiny-wan-video-v1`` task and the tests);
- the CPU ``digits-video-v1`` task, a tiny Wan transformer in pixel space (``vae=None``: the latents are
  the frames' pixels in [-1, 1], as the SD3 digits models do for images) with a small CLIP text encoder
  and fixed coordinate maps as channel conditioning (``condition``, below).

What the family adds to :class:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone`:

- **5-D latents.** One sample's latents are [C, f, h, w] = [16, (F - 1) / 4 + 1, H / 8, W / 8]: the VAE
  compresses 4 frames into one latent frame (the first frame alone, it is causal) and 8x8 pixels into one
  latent pixel. The transformer patchifies them itself (1x2x2 patches, 3-D rotary embeddings), so
  :meth:`WanBackbone._forward` hands it the latents as they are.
- **Timestep convention.** ``WanPipeline`` passes the scheduler's timestep, ``1000 * sigma``; so does
  :meth:`WanBackbone._forward` (float32, the transformer builds its sinusoids from it).
- **True CFG.** Wan2.1 is not guidance-distilled: guidance is two calls, on the prompt and on the negative
  prompt, combined by the base class (Flow-GRPO's Wan recipe: 4.5).
- **Text conditioning.** UMT5 token embeddings [B, L, D] with the padding positions set to zero, exactly as
  ``WanPipeline.encode_prompt`` returns them (the transformer attends to all L positions; zeros are how the
  pipeline masks the padding).
- **Latent normalisation.** Wan's latents are ``(z - latents_mean) / latents_std`` per channel (the VAE
  config's two 16-vectors), undone in :meth:`WanBackbone.decode` before the VAE decoder, as ``WanPipeline``
  does after its loop.
- **Channel conditioning.** An optional fixed tensor ``condition`` [C_c, f, h, w] is concatenated after the
  latents' channels at every transformer call, as ``WanImageToVideoPipeline`` concatenates its image
  condition (Wan2.1-I2V: 16 latent + 20 condition channels); the transformer's ``in_channels`` is then
  C + C_c and its output stays C channels. ``digits-video-v1`` uses it for frame/row/column coordinate maps.
- **Scheduler.** Real Wan2.1 folders ship a ``UniPCMultistepScheduler`` (a multistep ODE solver, with
  ``flow_shift`` 3.0 for 480p). The SDE samplers here need a plain Euler flow schedule, so the backbone uses a
  ``FlowMatchEulerDiscreteScheduler`` with the pipeline's shift (:func:`euler_scheduler`); a folder that
  already has a ``FlowMatchEulerDiscreteScheduler`` (the tiny one) is used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.backbones.diffusers_backbone import DiffusersBackbone
from opgrpo_bench.backbones.folders import WAN_FAMILY
from opgrpo_bench.errors import UserError
WAN_DEFAULT_SHIFT = 3.0
"""Wan2.1's flow shift at 480p and below (``WanPipeline``'s docs: 3.0 for 480p, 5.0 for 720p)."""

PromptEncoder = Callable[[Sequence[str]], torch.Tensor]
"""prompts -> UMT5 token embeddings [B, L, D], padding positions zero."""

# Flow-GRPO's LoRA targets for Wan2.1 (scripts/train_wan2_1.py). peft matches them as module-name suffixes:
# "to_q/k/v" and "to_out.0" adapt both the self-attention (attn1) and the text cross-attention (attn2) of
# every block. The "add_*" / "to_add_out" entries exist only in image-conditioned Wan (added K/V for the
# image tokens); in the text-to-video transformer they match nothing and ``add_lora`` drops them.
WAN_LORA_TARGETS = (
    "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out",
    "to_k", "to_out.0", "to_q", "to_v",
)


def _schedule(scheduler: Any, kind: str) -> Any:
    """The scheduler whose ``sigmas`` the backbone samples along: :func:`euler_scheduler`, or the folder's
    UniPC scheduler itself when it uses flow sigmas (``kind == "unipc"``; anything else is refused)."""
    if kind == "euler":
        return euler_scheduler(scheduler)
    from diffusers import UniPCMultistepScheduler

    if not isinstance(scheduler, UniPCMultistepScheduler) or not scheduler.config.get("use_flow_sigmas"):
        raise UserError(f"schedule 'unipc' needs a folder whose scheduler is a UniPCMultistepScheduler with flow "
                        f"sigmas (Wan2.1's), not {type(scheduler).__name__}")
    return scheduler


def euler_scheduler(scheduler: Any) -> FlowMatchEulerDiscreteScheduler:
    """A ``FlowMatchEulerDiscreteScheduler`` with ``scheduler``'s flow shift (``scheduler`` itself if it is one).

    Wan2.1 folders ship a ``UniPCMultistepScheduler`` whose ``flow_shift`` warps the sigmas as
    ``shift * s / (1 + (shift - 1) * s)``, the same warp as the Euler scheduler's static ``shift``; the
    Euler one is what the SDE (``core/sde.py``) discretises. A scheduler with neither key gets Wan's 480p
    shift, 3.0.
    """
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    cfg = scheduler.config
    shift = cfg.get("flow_shift") or cfg.get("shift") or WAN_DEFAULT_SHIFT
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.get("num_train_timesteps", 1000), shift=float(shift))


class WanBackbone(DiffusersBackbone):
    """Backbone over a Wan transformer, on video latents [C, f, h, w] (see the module docstring).

    Args:
        transformer: the flow network (``WanTransformer3DModel``); frozen here (``add_lora`` adds the
            trainable part).
        prompt_encoder: prompts -> UMT5 embeddings [B, L, D].
        scheduler: a ``FlowMatchEulerDiscreteScheduler`` (the schedule; never used to step).
        vae: ``AutoencoderKLWan`` with ``latents_mean`` / ``latents_std`` and ``scale_factor_temporal``; None
            for pixel-space models (latents [C, F, H, W] are the frames' pixels in [-1, 1]).
        latent_shape: [C, f, h, w] of one sample.
        negative_prompt: the unconditional prompt of CFG ("" as Flow-GRPO's Wan training).
        max_batch: most rows per no-grad network / VAE / text-encoder call; None = one call.
        condition: fixed channels [C_c, f, h, w] concatenated after the latents' at every call (see the
            module docstring); None = none.
    """

    LORA_TARGETS = WAN_LORA_TARGETS

    def __init__(self, transformer: Any, prompt_encoder: PromptEncoder, scheduler: FlowMatchEulerDiscreteScheduler,
                 vae: Any | None, latent_shape: Sequence[int], negative_prompt: str = "",
                 max_batch: int | None = None, condition: torch.Tensor | None = None):
        channels, frames, height, width = latent_shape
        extra = 0
        if condition is not None:
            if condition.dim() != 4 or tuple(condition.shape[1:]) != (frames, height, width):
                raise ValueError(f"condition {tuple(condition.shape)} is not [C_c, {frames}, {height}, {width}]")
            extra = condition.shape[0]
        if channels + extra != transformer.config.in_channels:
            raise ValueError(f"latent channels {channels} (+ {extra} condition channels) != the transformer's "
                             f"in_channels {transformer.config.in_channels}")
        _, p_h, p_w = transformer.config.patch_size
        if height % p_h or width % p_w:
            raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {p_h}x{p_w}")
        super().__init__(transformer, scheduler, latent_shape, negative_prompt=negative_prompt, max_batch=max_batch)
        self.prompt_encoder = prompt_encoder
        self.vae = vae
        self.condition = condition

    @property
    def num_frames(self) -> int:
        """Frames of a decoded video: ``(f - 1) * scale_factor_temporal + 1`` (the causal VAE's first frame
        is its own latent frame); ``f`` in pixel space."""
        if self.vae is None:
            return self.latent_shape[1]
        return (self.latent_shape[1] - 1) * self.vae.config.scale_factor_temporal + 1

    # -- family hooks -----------------------------------------------------------------------------
    def _encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """``embeds`` [B, L, D] (UMT5, padding zeroed) of ``prompts``."""
        return {"embeds": self.prompt_encoder(prompts)}

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One transformer evaluation: velocity [B, C, f, h, w] of latents ``x`` [B, C, f, h, w] at ``sigma`` [B].

        The timestep is ``1000 * sigma`` in float32, the scheduler's timestep that ``WanPipeline`` passes.
        A ``condition`` is concatenated after the latents' channels first.
        """
        if self.condition is not None:
            extra = self.condition.to(device=x.device, dtype=x.dtype)
            x = torch.cat([x, extra.expand(x.shape[0], *extra.shape)], dim=1)
        return self.transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["embeds"],
                                return_dict=False)[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Videos [B, F, 3, H, W] in [0, 1] (float32, on ``x``'s device) from final latents [B, C, f, h, w].

        F = :attr:`num_frames`, H and W = 8 h and 8 w for Wan2.1's VAE. The latents are first mapped back to
        the VAE's scale, ``z = x * latents_std + latents_mean`` per channel, as ``WanPipeline`` does; the VAE's
        output in [-1, 1] ([B, 3, F, H, W]) is mapped to [0, 1] and its frame axis moved before the channels.
        Without a VAE (pixel space) the latents [B, C, F, H, W] in [-1, 1] are the videos: mapped to [0, 1],
        clamped, frame axis first ([B, F, C, H, W]).
        """
        if self.vae is None:
            return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)
        cfg = self.vae.config
        param = next(self.vae.parameters())
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=param.device, dtype=param.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=param.device, dtype=param.dtype).view(shape)
        z = x.to(device=param.device, dtype=param.dtype) * std + mean
        videos = torch.cat([self.vae.decode(z[s], return_dict=False)[0] for s in self.row_batches(x.shape[0])])
        return ((videos.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4).to(x.device)

    # -- loading real weights -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", max_sequence_length: int = 512, height: int = 480,
                        width: int = 832, num_frames: int = 81, negative_prompt: str = "",
                        max_batch: int | None = None, gradient_checkpointing: bool = False,
                        vae_dtype: torch.dtype | None = None, what: str = "Wan2.1 weights",
                        env: str | None = None, schedule: str = "euler") -> "WanBackbone":
        """Load a Wan2.1 text-to-video diffusers folder (local path or Hugging Face cache id), offline only.

        Args:
            path: a diffusers ``WanPipeline`` folder, or a repo id looked up in the local Hugging Face cache
                (never downloaded).
            dtype, device: where the pipeline's models live (bf16 on a GPU for Wan2.1-T2V-1.3B).
            max_sequence_length: UMT5 tokens of the conditioning (``WanPipeline`` and Flow-GRPO: 512).
            height, width: pixels of a frame, multiples of 16 (VAE scale 8 x 2x2 patches).
            num_frames: frames of a video; ``num_frames - 1`` must divide by the VAE's temporal factor (4).
            negative_prompt, max_batch: as for :class:`WanBackbone`.
            gradient_checkpointing: recompute transformer activations in the backward pass.
            vae_dtype: the VAE's dtype when it differs from ``dtype`` (Flow-GRPO decodes Wan in float32).
            what, env: name of the weights and the environment variable that provides them, for the error
                message only.
            schedule: ``"euler"`` (a flow-matching Euler grid at the folder's flow shift) or ``"unipc"``
                (the folder's own ``UniPCMultistepScheduler`` flow-sigma grid, which Flow-GRPO's Wan code
                samples on; the SDE still takes single Euler-Maruyama steps along it).

        Raises:
            MissingWeightsError: one line naming what is missing, at once (no network, no retries).
            UserError: a size, frame count or ``max_sequence_length`` the model cannot take.
        """
        if max_sequence_length <= 0:
            raise UserError(f"max_sequence_length {max_sequence_length} must be positive")
        if schedule not in ("euler", "unipc"):
            raise UserError(f"schedule must be 'euler' or 'unipc', not {schedule!r}")

        def check(pipe: Any, folder: Path) -> None:
            if pipe.transformer is None:
                raise UserError(f"{what}: '{folder}' has no transformer (a Wan2.2 low-noise-only folder?)")
            step = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
            if height <= 0 or width <= 0 or height % step or width % step:
                raise UserError(f"frame size {height}x{width} is not a positive multiple of {step} "
                                f"(VAE scale x 2x2 patches)")
            temporal = pipe.vae_scale_factor_temporal
            if num_frames <= 0 or (num_frames - 1) % temporal:
                raise UserError(f"num_frames {num_frames}: num_frames - 1 must be a multiple of {temporal} "
                                f"(the VAE's temporal compression)")

        pipe = WAN_FAMILY.load(path, what=what, env=env, dtype=dtype, device=device, vae_dtype=vae_dtype,
                               gradient_checkpointing=gradient_checkpointing, check=check)
        torch_device = torch.device(device)

        def encode_prompt(prompts: Sequence[str]) -> torch.Tensor:
            """prompts -> UMT5 tokens [B, max_sequence_length, D], padding zeroed (WanPipeline's encoding)."""
            embeds, _ = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False,
                                           max_sequence_length=max_sequence_length, device=torch_device)
            return embeds

        temporal = pipe.vae_scale_factor_temporal
        latent_shape = (pipe.transformer.config.in_channels, (num_frames - 1) // temporal + 1,
                        height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
        backbone = cls(pipe.transformer, encode_prompt, _schedule(pipe.scheduler, schedule), pipe.vae,
                       latent_shape, negative_prompt=negative_prompt, max_batch=max_batch)
        backbone.pipeline = pipe
        return backbone
