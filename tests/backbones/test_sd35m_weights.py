"""Real Stable Diffusion 3.5 Medium weights (``-m weights``; skipped unless ``$OPGRPO_SD35M_PATH`` is set): the
model's own layout. What every family's checkpoint must do (forward, LoRA, reference, decode) is in
``test_family_weights.py``; the loader is ``real_weights.py`` (bf16, 512 px on a GPU, 256 px on a CPU).
"""

from __future__ import annotations

import pytest

from real_weights import load_real

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def sd35m():
    return load_real("sd35m")


def test_sd35m_layout(sd35m):
    backbone, resolution = sd35m
    cfg = backbone.transformer.config
    assert cfg.in_channels == 16 and cfg.patch_size == 2 and cfg.num_layers == 24
    assert len(cfg.dual_attention_layers) > 0  # SD3.5-M's MMDiT-X blocks
    assert backbone.pipeline.vae_scale_factor == 8
    assert backbone.latent_shape == (16, resolution // 8, resolution // 8)
    sigmas = backbone.sigmas(10)
    assert sigmas.shape == (11,) and sigmas[0] == 1 and sigmas[-1] == 0
