"""Real Wan2.1-T2V-1.3B weights (``-m weights``; skipped unless ``$OPGRPO_WAN_PATH`` is set): the model's own
layout and schedule. What every family's checkpoint must do (forward, LoRA, reference, decode) is in
``test_family_weights.py``; the loader is ``real_weights.py`` (bf16 with a float32 VAE, Flow-GRPO's
240x416 x 33 frames on a GPU, 160x160 x 5 frames on a CPU). Not run in this project's CI (no weights).
"""

from __future__ import annotations

import pytest
import torch

from real_weights import load_real

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def wan21():
    return load_real("wan21")


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
