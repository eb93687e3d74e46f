"""The backbone contract, checked on every registered backbone that builds on a CPU without outside weights.

Whatever the family (SD3 with a VAE, FLUX with packed latents, the pixel-space digits models, Wan's 5-D
video latents, the 5-D video stub), a backbone must:
give velocities and decoded images/videos of the documented shapes; give identical outputs for identical
inputs (and identical weights when built twice); start, after ``add_lora``, exactly at the base model;
give the base model under ``reference()`` whatever the adapters hold; and train nothing but LoRA.
Entries registered with ``external_weights=True`` (``sd3``, ``sd35m``, ``flux``, ``flux1-dev``, ``wan``,
``wan21-t2v-1.3b``) are skipped
with the reason: ``tests/backbones/test_sd35m_weights.py`` covers SD3.5-M where its weights and a GPU exist.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from opgrpo_bench.backbones.base import Backbone
from opgrpo_bench.backbones.diffusers_backbone import DiffusersBackbone
from opgrpo_bench.errors import MissingWeightsError
from opgrpo_bench.registry import BACKBONES

PROMPTS = ["a photo of a cat", "the digit 3", "a red car"]
SIGMA = torch.tensor([0.9, 0.5, 0.2])
GUIDANCES = (1.0, 4.5)


def _build(name: str) -> Any:
    """A fresh backbone (no LoRA), or a skip that says why it cannot be built here."""
    entry = BACKBONES.entry(name)
    if entry.meta.get("external_weights"):
        pytest.skip(f"backbone '{name}' needs weights from outside the package ({entry.meta.get('needs', '')})")
    try:
        return entry.load()()
    except MissingWeightsError as err:  # a plugin without the metadata, whose weights are absent
        pytest.skip(f"backbone '{name}': {err}")


@pytest.fixture(params=BACKBONES.names())
def name(request: pytest.FixtureRequest, cache_dir) -> Iterator[str]:
    """Each registered backbone's name; one torch thread (tiny ops), the tiny SD3 folder in a temporary cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield request.param
    torch.set_num_threads(threads)


def _inputs(bb: Any, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Latents [3, *latent_shape] (seeded) and the conditioning of :data:`PROMPTS`."""
    x = torch.randn((len(PROMPTS), *bb.latent_shape), generator=torch.Generator().manual_seed(seed))
    return x, bb.encode(PROMPTS)


def _velocities(bb: Any, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [bb.velocity(x, SIGMA, cond, g) for g in GUIDANCES]


def _perturb_lora(bb: Any) -> None:
    """Move every adapter weight (lora_B starts at zero) by a seeded amount, so the policy differs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bb.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p))


def _modules(obj: Any, depth: int = 2) -> list[torch.nn.Module]:
    """The torch modules an object holds (attributes, and attributes of attributes: pipelines, encoders)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0 or not hasattr(obj, "__dict__"):
        return []
    return [m for value in vars(obj).values() for m in _modules(value, depth - 1)]


# -- shapes -------------------------------------------------------------------------------------------
def test_protocol_latent_and_velocity_shapes(name: str):
    bb = _build(name)
    assert isinstance(bb, Backbone)
    assert isinstance(bb.device, torch.device) and isinstance(bb.dtype, torch.dtype)
    assert len(bb.latent_shape) in (3, 4) and all(isinstance(d, int) and d > 0 for d in bb.latent_shape)
    x, cond = _inputs(bb)
    assert cond and all(v.shape[0] == len(PROMPTS) for v in cond.values())
    for v in _velocities(bb, x, cond):
        assert v.shape == x.shape and v.dtype == x.dtype and v.device == x.device
        assert torch.isfinite(v).all()
    sigmas = bb.sigmas(5)
    assert sigmas.shape == (6,) and sigmas.dtype == torch.float32
    assert torch.isclose(sigmas[0], torch.tensor(1.0)) and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    assert bb.nfe_per_sample(1.0) == 1 and bb.nfe_per_sample(4.5) == 2


def test_decode_gives_images_or_videos_in_the_unit_range(name: str):
    bb = _build(name)
    x = 3 * torch.randn((2, *bb.latent_shape), generator=torch.Generator().manual_seed(0))  # beyond [-1, 1]
    out = bb.decode(x)
    video = len(bb.latent_shape) == 4
    # images [B, C, H, W]; videos [B, F, C, H, W] with latents [C, f, h, w]: F = f unless the backbone
    # says otherwise (Wan's causal VAE decodes f latent frames into 4 (f - 1) + 1 frames: ``num_frames``)
    assert out.ndim == (5 if video else 4) and out.shape[0] == 2 and out.shape[-3] in (1, 3)
    if video:
        assert out.shape[1] == getattr(bb, "num_frames", bb.latent_shape[1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and out.max() > out.min()


# -- determinism --------------------------------------------------------------------------------------
def test_same_inputs_give_identical_outputs(name: str):
    bb = _build(name)
    x, cond = _inputs(bb)
    again = bb.encode(PROMPTS)
    assert cond.keys() == again.keys() and all(torch.equal(cond[k], again[k]) for k in cond)
    first, second = _velocities(bb, x, cond), _velocities(bb, x, cond)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(bb.decode(x), bb.decode(x))
    # a second build holds the same weights
    other = _build(name)
    assert all(torch.equal(a, b) for a, b in zip(first, _velocities(other, x, other.encode(PROMPTS))))


# -- LoRA and the reference policy --------------------------------------------------------------------
def test_lora_starts_as_the_identity(name: str):
    bb = _build(name)
    x, cond = _inputs(bb)
    base = _velocities(bb, x, cond)
    torch.manual_seed(0)
    bb.add_lora(rank=4, alpha=8)
    assert all(torch.equal(a, b) for a, b in zip(base, _velocities(bb, x, cond)))
    with pytest.raises(RuntimeError):
        bb.add_lora(rank=4, alpha=8)


def test_reference_is_the_base_model_and_the_adapted_model_differs(name: str):
    bb = _build(name)
    x, cond = _inputs(bb)
    base = _velocities(bb, x, cond)
    torch.manual_seed(0)
    bb.add_lora(rank=4, alpha=8)
    _perturb_lora(bb)
    adapted = _velocities(bb, x, cond)
    with bb.reference():
        reference = _velocities(bb, x, cond)
    assert all(torch.equal(r, b) for r, b in zip(reference, base))
    assert all(not torch.allclose(a, b, atol=1e-5) for a, b in zip(adapted, base))
    assert all(torch.equal(a, b) for a, b in zip(adapted, _velocities(bb, x, cond)))  # adapters back on


def test_reference_restores_the_adapters_after_an_exception(name: str):
    bb = _build(name)
    x, cond = _inputs(bb)
    torch.manual_seed(0)
    bb.add_lora(rank=4, alpha=8)
    _perturb_lora(bb)
    adapted = _velocities(bb, x, cond)
    with pytest.raises(ValueError), bb.reference():
        raise ValueError("boom")
    assert all(torch.equal(a, b) for a, b in zip(adapted, _velocities(bb, x, cond)))


def test_only_lora_parameters_train_and_they_get_gradients(name: str):
    bb = _build(name)
    assert bb.trainable_parameters() == []
    bb.add_lora(rank=4, alpha=8)
    trainable = bb.trainable_parameters()
    lora = [p for n, p in bb.transformer.named_parameters() if "lora_" in n]
    assert trainable and {id(p) for p in trainable} == {id(p) for p in lora}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainable)
    # nothing else the backbone holds (network, text encoders, VAE, pipeline) requires a gradient
    held = {id(p): p for m in _modules(bb) for p in m.parameters()}
    assert {i for i, p in held.items() if p.requires_grad} == {id(p) for p in trainable}
    _perturb_lora(bb)  # non-zero B so that A gets a gradient too
    x, cond = _inputs(bb)
    bb.velocity(x, SIGMA, cond, 4.5, detach_uncond=True).square().mean().backward()
    grads = [p.grad for p in trainable]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # an adapter may get no gradient (SD3's last block discards its text-stream queries); the policy must
    assert any(g.abs().sum() > 0 for g in grads)


# -- row batching (the diffusers base) ----------------------------------------------------------------
def test_max_batch_splits_calls_without_changing_results(name: str):
    bb = _build(name)
    if not isinstance(bb, DiffusersBackbone):
        pytest.skip(f"backbone '{name}' is not a DiffusersBackbone (no max_batch)")
    x, cond = _inputs(bb)
    whole, decoded = _velocities(bb, x, cond), bb.decode(x)
    bb.max_batch = 1
    chunked = bb.encode(PROMPTS)
    assert all(torch.allclose(cond[k], chunked[k], atol=1e-6) for k in cond)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, _velocities(bb, x, cond)))
    assert torch.allclose(decoded, bb.decode(x), atol=1e-5)


# -- the diffusers families' folders ------------------------------------------------------------------
# (family backbone class, tiny folder fixture, environment variable, the name the message gives the weights,
#  a component whose weights are removed); SD3's other damaged folders are in test_sd3_backbone.py
FOLDERS = {
    "sd3": ("opgrpo_bench.backbones.sd3:SD3Backbone", "tiny_folder", "OPGRPO_SD35M_PATH", "SD3", "text_encoder_3"),
    "flux": ("opgrpo_bench.backbones.flux:FluxBackbone", "tiny_flux_folder", "OPGRPO_FLUX_PATH", "FLUX.1",
             "text_encoder_2"),
    "wan": ("opgrpo_bench.backbones.wan:WanBackbone", "tiny_wan_folder", "OPGRPO_WAN_PATH", "Wan2.1", "text_encoder"),
}


@pytest.mark.parametrize("family", sorted(FOLDERS))
def test_missing_or_incomplete_folders_fail_with_one_line(family: str, tmp_path, request: pytest.FixtureRequest,
                                                         no_network: list):
    """A folder that does not exist, and a copy of the tiny folder without one component's weights: one line
    that says what is missing and how to provide it, without reaching for the network."""
    import importlib
    import shutil

    target, fixture, env, what, component = FOLDERS[family]
    module, cls = target.split(":")
    backbone_cls = getattr(importlib.import_module(module), cls)
    with pytest.raises(MissingWeightsError) as info:
        backbone_cls.from_pretrained(tmp_path / "nope", env=env)
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message and what in message and env in message
    broken = tmp_path / "broken"
    shutil.copytree(request.getfixturevalue(fixture), broken)
    for f in (broken / component).glob("*.safetensors"):
        f.unlink()
    with pytest.raises(MissingWeightsError, match=f"missing: {component}/ weights") as info:
        backbone_cls.from_pretrained(broken)
    assert "\n" not in str(info.value)
    assert no_network == []
