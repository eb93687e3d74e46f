"""The published configurations build the published models: parameter counts on the meta device."""

import pytest

from opgrpo_bench.arch.configs import FAMILIES, PUBLISHED_PARAMS, build_module, family_components, variant_name

# component -> (published size, source): the model cards' and papers' stated sizes
PUBLISHED_COMPONENTS = {
    "CLIPTextModelWithProjection-768": 123.7e6,   # CLIP ViT-L/14 text tower + projection
    "CLIPTextModelWithProjection-1280": 694.7e6,  # OpenCLIP bigG/14 text tower (~695M)
    "CLIPTextModel-768": 123.1e6,
    "T5EncoderModel-4096": 4.76e9,                # T5 v1.1 XXL encoder (4.7B of the 11B model)
    "UMT5EncoderModel-4096": 5.68e9,              # UMT5-XXL encoder
    "AutoencoderKL": 83.8e6,
    "AutoencoderKLWan": 126.9e6,                  # Wan2.1 VAE (127M)
}


def _count(module):
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers() if b.is_floating_point())


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_has_the_published_size(family):
    transformer = build_module(family_components(family)["transformer"])
    assert transformer.device.type == "meta"
    # SD3.5-Medium's "2.5B" includes its 226M-value position-embedding table (a saved buffer)
    assert abs(_count(transformer) / PUBLISHED_PARAMS[family] - 1) < 0.10


@pytest.mark.parametrize("family", FAMILIES)
def test_every_text_encoder_and_vae_has_its_published_size(family):
    for name, comp in family_components(family).items():
        if comp.tokenizer or "Scheduler" in comp.cls or name == "transformer":
            continue
        width = comp.kwargs.get("hidden_size") or comp.kwargs.get("d_model")
        key = f"{comp.cls}-{width}" if width else comp.cls
        assert abs(_count(build_module(comp)) / PUBLISHED_COMPONENTS[key] - 1) < 0.01, (family, name)


def test_depth_reduces_stacks_and_keeps_widths_and_layer_types():
    full, small = family_components("sd3.5-medium"), family_components("sd3.5-medium", depth=2)
    assert small["transformer"].kwargs["num_layers"] == 2
    assert small["transformer"].kwargs["dual_attention_layers"] == (0,)  # one MMDiT-X block kept
    assert full["transformer"].kwargs["dual_attention_layers"] == tuple(range(13))
    for name in ("text_encoder", "text_encoder_2"):
        assert small[name].kwargs["num_hidden_layers"] == 2
        assert small[name].kwargs["hidden_size"] == full[name].kwargs["hidden_size"]
    assert small["text_encoder_3"].kwargs["num_layers"] == 2
    assert small["text_encoder_3"].kwargs["vocab_size"] == 32128
    flux = family_components("flux.1-dev", depth=3)["transformer"].kwargs
    assert (flux["num_layers"], flux["num_single_layers"], flux["attention_head_dim"]) == (3, 3, 128)
    assert family_components("wan2.1-t2v-1.3b", depth=1)["text_encoder"].kwargs["vocab_size"] == 256384
    assert variant_name("flux.1-dev", 3) == "flux.1-dev-depth3" and variant_name("flux.1-dev", None) == "flux.1-dev"


def test_tokenizers_have_the_real_vocabulary_sizes():
    from opgrpo_bench.arch.tokenizers import build_tokenizer

    clip = build_tokenizer("clip", 77)
    assert len(clip) == 49408 and clip.bos_token_id == 49406 and clip.eos_token_id == 49407
    ids = clip("a photo of a cat").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and max(ids) < 49408  # no id outside the embedding table
    assert len(clip("x " * 200, truncation=True).input_ids) == 77
    t5 = build_tokenizer("t5", 512)
    assert len(t5) == 32100 and (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert len(build_tokenizer("umt5", 512)) == 256300
