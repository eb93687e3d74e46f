"""Real Wan2.1-T2V-1.3B weights (``-m weights``; skipped unless ``$OPGRPO_WAN_PATH`` is set).

``OPGRPO_WAN_PATH`` is a diffusers folder (or a repo id in the local Hugging Face cache), e.g. a copy of
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``. On a GPU the model runs in bf16 at Flow-GRPO's 240x416 x 33 frames with
a float32 VAE; on a CPU at 160x160 x 5 frames to bound time. Not run in this project's CI (no weights).
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.weights

SOURCE = os.environ.get("OPGRPO_WAN_PATH")


@pytest.fixture(scope="module")
def wan21():
    if not SOURCE:
        pytest.skip("set OPGRPO_WAN_PATH to a Wan2.1-T2V-1.3B diffusers folder")
    from opgrpo_bench.backbones.wan import WanBackbone

    cuda = torch.cuda.is_available()
    height, width, frames = (240, 416, 33) if cuda else (160, 160, 5)
    backbone = WanBackbone.from_pretrained(
        SOURCE, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=512, height=height,
        width=width, num_frames=frames, max_batch=2, vae_dtype=torch.float32, what="Wan2.1-T2V-1.3B weights",
        env="OPGRPO_WAN_PATH",
    )
    return backbone, (height, width, frames)


def test_wan21_layout_and_schedule(wan21):
    from diffusers import FlowMatchEulerDiscreteScheduler

    wan21, (height, width, frames) = wan21
    cfg = wan21.transformer.config
    assert cfg.in_channels == 16 and cfg.num_layers == 30 and cfg.text_dim == 4096  # the 1.3B model, UMT5-XXL
    assert wan21.vae.dtype == torch.float32 and wan21.vae.config.z_dim == 16
    c, f, h, w = wan21.latent_shape
    assert (c, f, h, w) == (16, (frames - 1) // 4 + 1, height // 8, width // 8) and wan21.num_frames == frames
    # the folder's UniPC scheduler is replaced by Euler at its flow shift (3.0 for the 1.3B folder)
    assert isinstance(wan21.scheduler, FlowMatchEulerDiscreteScheduler)
    assert wan21.scheduler.config.shift == pytest.approx(wan21.pipeline.scheduler.config.get("flow_shift") or 3.0)
    sigmas = wan21.sigmas(20)
    assert sigmas.shape == (21,) and sigmas[0] == 1 and sigmas[-1] == 0


def test_wan21_forward_with_cfg_and_lora(wan21):
    wan21, _ = wan21
    cond = wan21.encode(['A wooden sign that says "NORTH RIDGE"'])
    assert cond["embeds"].shape == (1, 512, 4096)
    x = torch.randn((1, *wan21.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8])
    with torch.no_grad():
        base = wan21.velocity(x, sigma, cond, guidance=4.5)
    assert base.shape == x.shape and base.dtype == torch.float32 and torch.isfinite(base).all()
    # the velocity of mostly-noise latents points away from the data: it correlates with the noise
    assert torch.nn.functional.cosine_similarity(base.flatten(), x.flatten(), dim=0) > 0
    wan21.add_lora(rank=32, alpha=64)
    params = wan21.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
        adapted = wan21.velocity(x, sigma, cond, guidance=4.5)
        with wan21.reference():
            reference = wan21.velocity(x, sigma, cond, guidance=4.5)
    assert torch.equal(reference, base) and not torch.equal(adapted, base)


def test_wan21_decode(wan21):
    wan21, _ = wan21
    videos = wan21.decode(torch.zeros((1, *wan21.latent_shape)))
    _, _, h, w = wan21.latent_shape
    assert videos.shape == (1, wan21.num_frames, 3, 8 * h, 8 * w)
    assert videos.min() >= 0 and videos.max() <= 1 and torch.isfinite(videos).all()
