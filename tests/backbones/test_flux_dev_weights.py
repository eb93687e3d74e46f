"""Real FLUX.1-dev weights (``-m weights``; skipped unless ``$OPGRPO_FLUX_PATH`` is set).

``OPGRPO_FLUX_PATH`` is a diffusers folder (or a repo id in the local Hugging Face cache). On a GPU the
model runs in bf16 at 512 px (Flow-GRPO's size) with a float32 VAE; on a CPU in bf16 at 256 px to bound
time and memory (the 12B transformer alone is about 24 GB in bf16).
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.weights

SOURCE = os.environ.get("OPGRPO_FLUX_PATH")


@pytest.fixture(scope="module")
def flux_dev():
    if not SOURCE:
        pytest.skip("set OPGRPO_FLUX_PATH to a FLUX.1-dev diffusers folder")
    from opgrpo_bench.backbones.flux import FluxBackbone

    cuda = torch.cuda.is_available()
    resolution = 512 if cuda else 256
    backbone = FluxBackbone.from_pretrained(
        SOURCE, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=128,
        resolution=resolution, max_batch=4, vae_dtype=torch.float32, what="FLUX.1-dev weights",
        env="OPGRPO_FLUX_PATH",
    )
    return backbone, resolution


def test_flux_dev_layout_and_schedule(flux_dev):
    from opgrpo_bench.backbones.flux import flux_mu

    backbone, resolution = flux_dev
    cfg = backbone.transformer.config
    assert cfg.in_channels == 64 and cfg.num_layers == 19 and cfg.num_single_layers == 38
    assert cfg.guidance_embeds  # FLUX.1-dev is guidance-distilled
    assert backbone.pipeline.vae_scale_factor == 8 and backbone.vae.dtype == torch.float32
    assert backbone.latent_shape == (16, resolution // 8, resolution // 8)
    assert backbone.scheduler.config.use_dynamic_shifting
    sigmas = backbone.sigmas(6)
    assert sigmas.shape == (7,) and sigmas[0] == 1 and sigmas[-1] == 0
    if resolution == 512:
        assert flux_mu(backbone.image_seq_len, backbone.scheduler.config) == pytest.approx(0.63)


def test_flux_dev_forward_with_guidance_and_lora(flux_dev):
    backbone, _ = flux_dev
    cond = backbone.encode(["a red fox in fresh snow at dawn"])
    assert cond["embeds"].shape == (1, 128, 4096) and cond["pooled"].shape == (1, 768)  # T5-XXL, CLIP-L
    x = torch.randn((1, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8])
    with torch.no_grad():
        base = backbone.velocity(x, sigma, cond)
    assert base.shape == x.shape and base.dtype == torch.float32 and torch.isfinite(base).all()
    # the velocity of mostly-noise latents points away from the data: it correlates with the noise
    assert torch.nn.functional.cosine_similarity(base.flatten(), x.flatten(), dim=0) > 0
    backbone.add_lora(rank=64, alpha=128)
    params = backbone.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
        adapted = backbone.velocity(x, sigma, cond)
        with backbone.reference():
            reference = backbone.velocity(x, sigma, cond)
    assert torch.equal(reference, base) and not torch.equal(adapted, base)


def test_flux_dev_decode(flux_dev):
    backbone, resolution = flux_dev
    images = backbone.decode(torch.zeros((1, *backbone.latent_shape)))
    assert images.shape == (1, 3, resolution, resolution)
    assert images.min() >= 0 and images.max() <= 1 and torch.isfinite(images).all()
