"""SD3-family backbone: diffusers ``SD3Transformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``.

The same class serves three uses:

- the real Stable Diffusion 3.5 Medium (``SD3Backbone.from_pretrained(path)``: a local diffusers folder
  or a Hugging Face cache entry, never a download), with its three text encoders and its VAE;
- a tiny SD3 pipeline built in code (tests exercise the same loading code on a saved tiny folder);
- the CPU task ``digits-v1``, a tiny SD3 transformer in pixel space with a small CLIP text encoder.

RL trains LoRA adapters added with peft; the reference policy is the same network with the adapters
disabled, so no second copy of the weights is kept.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.errors import MissingWeightsError

PromptEncoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
"""prompts -> (token embeddings [B, L, D], pooled embedding [B, P])."""

# Flow-GRPO's LoRA targets for SD3: joint attention projections of both streams.
SD3_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


class SD3Backbone:
    """Backbone over an SD3 transformer; ``vae=None`` means the model works in pixel space."""

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        prompt_encoder: PromptEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: Any | None = None,
        latent_shape: tuple[int, ...] | None = None,
        negative_prompt: str = "",
    ):
        self.transformer = transformer
        self.prompt_encoder = prompt_encoder
        self.scheduler = scheduler
        self.vae = vae
        if latent_shape is None:
            cfg = transformer.config
            latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        self.latent_shape = tuple(latent_shape)
        self.negative_prompt = negative_prompt
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None
        self._has_lora = False
        transformer.requires_grad_(False)

    # -- adapters -----------------------------------------------------------------------------
    def add_lora(self, rank: int = 32, alpha: int = 64, target_modules: Sequence[str] = SD3_LORA_TARGETS,
                 init: str | bool = "gaussian") -> None:
        """Attach trainable LoRA adapters (peft) to the attention projections."""
        from peft import LoraConfig

        targets = [t for t in target_modules if any(n.endswith(t) for n, _ in self.transformer.named_modules())]
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=targets)
        self.transformer.add_adapter(config)
        for name, p in self.transformer.named_parameters():
            p.requires_grad_("lora_" in name)
        self._has_lora = True

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The base model: LoRA adapters disabled for the duration of the block."""
        if not self._has_lora:
            yield
            return
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    # -- sampling interface -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        embeds, pooled = self.prompt_encoder(list(prompts))
        if self._negative is None:
            self._negative = self.prompt_encoder([self.negative_prompt])
        neg_embeds, neg_pooled = self._negative
        n = len(prompts)
        return {
            "embeds": embeds, "pooled": pooled,
            "neg_embeds": neg_embeds.expand(n, *neg_embeds.shape[1:]),
            "neg_pooled": neg_pooled.expand(n, *neg_pooled.shape[1:]),
        }

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        dtype = self.transformer.dtype
        t = (sigma * 1000).to(dtype)
        if guidance == 1.0:
            return self.transformer(
                hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=cond["embeds"],
                pooled_projections=cond["pooled"], return_dict=False,
            )[0]
        both = self.transformer(
            hidden_states=torch.cat([x, x]).to(dtype), timestep=torch.cat([t, t]),
            encoder_hidden_states=torch.cat([cond["neg_embeds"], cond["embeds"]]),
            pooled_projections=torch.cat([cond["neg_pooled"], cond["pooled"]]), return_dict=False,
        )[0]
        v_uncond, v_cond = both.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def nfe_per_sample(self, guidance: float) -> int:
        return 1 if guidance == 1.0 else 2

    def sigmas(self, num_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.detach().to(torch.float32).clone()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return ((x.float() + 1) / 2).clamp(0, 1)
        cfg = self.vae.config
        latents = x.to(self.vae.dtype) / cfg.scaling_factor + getattr(cfg, "shift_factor", 0.0)
        images = self.vae.decode(latents, return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)

    # -- loading real weights -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", max_sequence_length: int = 256,
                        resolution: int | None = 512) -> "SD3Backbone":
        """Load an SD3 / SD3.5 diffusers folder (local path or Hugging Face cache id), offline only.

        ``resolution`` is the image side in pixels (Flow-GRPO trains SD3.5-M at 512); None keeps the
        transformer's native sample size.

        Raises :class:`MissingWeightsError` with one line naming what is missing when absent.
        """
        from diffusers import StableDiffusion3Pipeline

        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as err:
            where = "folder" if Path(str(path)).exists() else "local path or Hugging Face cache entry"
            raise MissingWeightsError(
                f"SD3 weights not found at {where} '{path}' ({type(err).__name__}); download a diffusers "
                f"SD3/SD3.5 folder (e.g. stabilityai/stable-diffusion-3.5-medium) and pass its path."
            ) from None
        pipe.to(device)

        def encode_prompt(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                device=torch.device(device), max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

        for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae):
            if module is not None:
                module.requires_grad_(False)
        size = resolution // pipe.vae_scale_factor if resolution else pipe.transformer.config.sample_size
        latent_shape = (pipe.transformer.config.in_channels, size, size)
        return cls(pipe.transformer, encode_prompt, pipe.scheduler, vae=pipe.vae, latent_shape=latent_shape)
