"""What every family's real checkpoint must do (``-m weights``; each family skips unless its environment
variable names its weights, see ``real_weights.py``): encode a prompt into the model's text embeddings,
give a finite velocity that points away from the data, start LoRA in float32 and keep the base model under
``reference()``, and decode into the unit range at the model's size. The families' own layouts and
schedules are checked in ``test_sd35m_weights.py``, ``test_flux_dev_weights.py`` and
``test_wan21_weights.py``."""

from __future__ import annotations

import pytest
import torch

from real_weights import REAL, load_real

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request: pytest.FixtureRequest):
    """(family name, backbone, sizes); one family's model in memory at a time (module scope, by param)."""
    backbone, sizes = load_real(request.param)
    yield request.param, backbone, sizes
    del backbone


def _velocity(backbone, family, x, sigma, cond):
    if family.guidance is None:
        return backbone.velocity(x, sigma, cond)
    return backbone.velocity(x, sigma, cond, family.guidance)


def test_forward_with_guidance_and_lora(real):
    name, backbone, _ = real
    family = REAL[name]
    cond = backbone.encode([family.prompt])
    assert {k: tuple(cond[k].shape) for k in family.cond_shapes} == family.cond_shapes
    x = torch.randn((1, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8])
    with torch.no_grad():
        base = _velocity(backbone, family, x, sigma, cond)
    assert base.shape == x.shape and base.dtype == torch.float32 and torch.isfinite(base).all()
    # the velocity of mostly-noise latents points away from the data: it correlates with the noise
    assert torch.nn.functional.cosine_similarity(base.flatten(), x.flatten(), dim=0) > 0
    rank, alpha = family.lora
    backbone.add_lora(rank=rank, alpha=alpha)
    params = backbone.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
        adapted = _velocity(backbone, family, x, sigma, cond)
        with backbone.reference():
            reference = _velocity(backbone, family, x, sigma, cond)
    assert torch.equal(reference, base) and not torch.equal(adapted, base)


def test_decode_into_the_unit_range_at_the_models_size(real):
    _, backbone, sizes = real
    out = backbone.decode(torch.zeros((1, *backbone.latent_shape)))
    if isinstance(sizes, tuple):  # video (height, width, frames): [B, F, C, H, W]
        height, width, frames = sizes
        assert out.shape == (1, frames, 3, height, width) and backbone.num_frames == frames
    else:  # square images of side ``sizes``
        assert out.shape == (1, 3, sizes, sizes)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
