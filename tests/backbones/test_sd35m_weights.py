"""Real Stable Diffusion 3.5 Medium weights (``-m weights``; skipped unless ``$OPGRPO_SD35M_PATH`` is set).

``OPGRPO_SD35M_PATH`` is a diffusers folder (or a repo id in the local Hugging Face cache). On a GPU the
model runs in bf16 at 512 px; on a CPU in bf16 at 256 px to keep memory (about 16 GB) and time bounded.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.weights

SOURCE = os.environ.get("OPGRPO_SD35M_PATH")


@pytest.fixture(scope="module")
def sd35m():
    if not SOURCE:
        pytest.skip("set OPGRPO_SD35M_PATH to a Stable Diffusion 3.5 Medium diffusers folder")
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    cuda = torch.cuda.is_available()
    resolution = 512 if cuda else 256
    backbone = SD3Backbone.from_pretrained(
        SOURCE, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=128,
        resolution=resolution, max_batch=8, what="SD3.5-Medium weights", env="OPGRPO_SD35M_PATH",
    )
    return backbone, resolution


def test_sd35m_layout(sd35m):
    backbone, resolution = sd35m
    cfg = backbone.transformer.config
    assert cfg.in_channels == 16 and cfg.patch_size == 2 and cfg.num_layers == 24
    assert len(cfg.dual_attention_layers) > 0  # SD3.5-M's MMDiT-X blocks
    assert backbone.pipeline.vae_scale_factor == 8
    assert backbone.latent_shape == (16, resolution // 8, resolution // 8)
    sigmas = backbone.sigmas(10)
    assert sigmas.shape == (11,) and sigmas[0] == 1 and sigmas[-1] == 0


def test_sd35m_forward_with_cfg_and_lora(sd35m):
    backbone, resolution = sd35m
    cond = backbone.encode(['A sign that says "HELLO"'])
    assert cond["embeds"].shape == (1, 77 + 128, 4096)  # CLIP-L|CLIP-G (77 tokens) ++ T5 (128 tokens)
    assert cond["pooled"].shape == (1, 2048)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, *backbone.latent_shape), generator=gen)
    sigma = torch.tensor([0.8])
    with torch.no_grad():
        base = backbone.velocity(x, sigma, cond, 4.5)
    assert base.shape == x.shape and base.dtype == torch.float32 and torch.isfinite(base).all()
    # the velocity of pure-ish noise points away from the data: it correlates with the noise itself
    assert torch.nn.functional.cosine_similarity(base.flatten(), x.flatten(), dim=0) > 0

    backbone.add_lora(rank=32, alpha=64)
    params = backbone.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
        adapted = backbone.velocity(x, sigma, cond, 4.5)
        with backbone.reference():
            reference = backbone.velocity(x, sigma, cond, 4.5)
    assert torch.equal(reference, base)
    assert not torch.equal(adapted, base)


def test_sd35m_decode(sd35m):
    backbone, resolution = sd35m
    x = torch.zeros((1, *backbone.latent_shape))
    images = backbone.decode(x)
    assert images.shape == (1, 3, resolution, resolution)
    assert images.min() >= 0 and images.max() <= 1 and torch.isfinite(images).all()
