"""Real FLUX.1-dev weights (``-m weights``; skipped unless ``$OPGRPO_FLUX_PATH`` is set): the model's own layout
and schedule. What every family's checkpoint must do (forward, LoRA, reference, decode) is in
``test_family_weights.py``; the loader is ``real_weights.py`` (bf16 with a float32 VAE, 512 px on a GPU,
256 px on a CPU).
"""

from __future__ import annotations

import pytest
import torch

from real_weights import load_real

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def flux_dev():
    return load_real("flux-dev")


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
