"""A TEST STUB video backbone: 5-D latents [B, C, F, H, W] through the same base as SD3 (and FLUX, Wan).

It exists so that the sampler, the trainer and the backbone contract are exercised on video-shaped latents
on a CPU in a second, before a real video family (Wan) is wired in. Its numbers mean nothing.

- Network: :class:`StubVideoNet`, a diffusers ``ModelMixin`` of three ``Conv3d`` layers over pixel-space
  latents [B, 3, F, H, W]; the timestep (sinusoidal features of ``1000 * sigma``) and the prompt embedding
  enter as a per-channel bias after the first convolution. Randomly initialised from a fixed seed.
- Text: :class:`HashedWordEncoder`, a frozen ``nn.Embedding`` over words hashed into a small vocabulary
  (CRC-32, stable across processes), averaged over the prompt's words; the empty prompt gives zeros.
- LoRA: peft adapters on the convolutions and the two projections, through
  :class:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone` like every diffusers backbone.
- Decoding: the latents are pixels in [-1, 1]; videos [B, F, 3, H, W] in [0, 1].
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.backbones.diffusers_backbone import DiffusersBackbone


class StubVideoNet(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Velocity network on video latents [B, C, F, H, W], conditioned on a timestep and a prompt embedding.

    Args:
        in_channels: latent channels C (3: the latents are RGB pixels).
        hidden_channels: channels of the two hidden convolutions.
        text_dim: width of the prompt embedding.
        time_dim: number of sinusoidal timestep features.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, hidden_channels: int = 8, text_dim: int = 16, time_dim: int = 16):
        super().__init__()
        self.time_proj = nn.Linear(time_dim, hidden_channels)
        self.text_proj = nn.Linear(text_dim, hidden_channels)
        self.conv_in = nn.Conv3d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.conv_mid = nn.Conv3d(hidden_channels, hidden_channels, kernel_size=3, padding=1)
        self.conv_out = nn.Conv3d(hidden_channels, in_channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Velocity [B, C, F, H, W] of ``hidden_states`` [B, C, F, H, W] at ``timestep`` [B] (in [0, 1000])
        for prompt embeddings ``encoder_hidden_states`` [B, text_dim]."""
        # float32 sinusoids as diffusers' own networks build them, then the network's dtype
        t = get_timestep_embedding(timestep.float(), self.config.time_dim).to(hidden_states.dtype)
        emb = nn.functional.silu(self.time_proj(t)) + self.text_proj(encoder_hidden_states)  # [B, hidden]
        h = nn.functional.silu(self.conv_in(hidden_states) + emb[:, :, None, None, None])
        h = nn.functional.silu(self.conv_mid(h))
        return self.conv_out(h)


class HashedWordEncoder(nn.Module):
    """prompts -> mean embedding of their words [B, dim]; words hashed (CRC-32) into ``vocab_size`` rows."""

    def __init__(self, vocab_size: int = 64, dim: int = 16):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim)

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        device = self.embedding.weight.device
        out = torch.zeros(len(prompts), self.embedding.embedding_dim, device=device)
        for i, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if words:  # Python's hash() is salted per process; CRC-32 gives the same ids everywhere
                ids = torch.tensor([zlib.crc32(w.encode()) % self.vocab_size for w in words], device=device)
                out[i] = self.embedding(ids).mean(0)
        return out


class StubVideoBackbone(DiffusersBackbone):
    """TEST STUB: :class:`StubVideoNet` on pixel-space video latents [3, F, H, W]; see the module docstring."""

    LORA_TARGETS = ("time_proj", "text_proj", "conv_in", "conv_mid", "conv_out")

    def __init__(self, net: StubVideoNet, text_encoder: HashedWordEncoder, scheduler: FlowMatchEulerDiscreteScheduler,
                 latent_shape: Sequence[int], negative_prompt: str = "", max_batch: int | None = None):
        super().__init__(net, scheduler, latent_shape, negative_prompt=negative_prompt, max_batch=max_batch)
        self.text_encoder = text_encoder.requires_grad_(False).eval()

    def _encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """``embeds`` [B, text_dim]."""
        return {"embeds": self.text_encoder(list(prompts))}

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.transformer(x, sigma * 1000, cond["embeds"])

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Videos [B, F, C, H, W] in [0, 1] (float32, on ``x``'s device) from latents [B, C, F, H, W]."""
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)


def build_stub_video_backbone(frames: int = 4, size: int = 8, hidden_channels: int = 8, seed: int = 0,
                              max_batch: int | None = None) -> StubVideoBackbone:
    """The stub with random weights from ``seed``: latents [3, frames, size, size].

    The global RNG is left as it was (the trainer seeds it for the LoRA initialisation just before it
    builds the backbone).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = StubVideoNet(in_channels=3, hidden_channels=hidden_channels).eval()
        text_encoder = HashedWordEncoder(dim=net.config.text_dim)
    # shift 3, as video models (Wan) sample: more steps at high noise
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StubVideoBackbone(net, text_encoder, scheduler, latent_shape=(3, frames, size, size), max_batch=max_batch)
