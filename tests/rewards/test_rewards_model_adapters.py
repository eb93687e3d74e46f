"""The checkpoint conversions behind hpsv2 and image-reward, checked against independent reference forwards.

The references below are written from the published architectures (OpenCLIP's VisionTransformer and
TextTransformer; BLIP's timm-style ViT), with plain torch ops on the *original* tensor names, so the key
renaming and head splitting done for transformers is checked numerically, not just for loading.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import reward_standins as standins
from opgrpo_bench.rewards.clip import ImagePreprocessor
from opgrpo_bench.rewards.hpsv2 import load_openclip_as_hf
from opgrpo_bench.rewards.image_reward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, ImageRewardModel


def _attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_o: torch.Tensor, b_o: torch.Tensor,
               heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    b, n, d = x.shape
    q, k, v = (x @ w_qkv.t() + b_qkv).split(d, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5
    if mask is not None:
        att = att + mask
    out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return out @ w_o.t() + b_o


def _openclip_blocks(x: torch.Tensor, sd: dict, prefix: str, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    i = 0
    while f"{prefix}resblocks.{i}.ln_1.weight" in sd:
        p = f"{prefix}resblocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + _attention(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"], sd[p + "attn.out_proj.weight"],
                           sd[p + "attn.out_proj.bias"], heads, mask)
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
        i += 1
    return x


def openclip_reference(sd: dict, pixels: torch.Tensor, tokens: torch.Tensor, heads: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCLIP ViT image and text features from an OpenCLIP state dict (pre-LN blocks, exact GELU)."""
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _openclip_blocks(x, sd, "visual.transformer.", heads)
    img = F.layer_norm(x[:, 0], x.shape[-1:], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    t = sd["token_embedding.weight"][tokens] + sd["positional_embedding"][: tokens.shape[1]]
    n = tokens.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    t = _openclip_blocks(t, sd, "transformer.", heads, causal)
    t = F.layer_norm(t, t.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    txt = t[torch.arange(t.shape[0]), tokens.argmax(-1)] @ sd["text_projection"]  # the EOT token has the top id
    return img, txt


def test_openclip_conversion_matches_reference() -> None:
    vocab = 90
    sd = standins.openclip_state_dict(vocab_size=vocab)
    model = load_openclip_as_hf(sd, vision_heads=2, text_heads=2, eos_token_id=vocab - 1)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[vocab - 2, 5, 9, 12, vocab - 1, 0, 0], [vocab - 2, 3, vocab - 1, 0, 0, 0, 0]])
    ref_img, ref_txt = openclip_reference(sd, pixels, tokens)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=tokens)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    assert torch.allclose(img, ref_img, atol=1e-5), (img - ref_img).abs().max()
    assert torch.allclose(txt, ref_txt, atol=1e-5), (txt - ref_txt).abs().max()


def test_hpsv2_score_is_the_cosine(hpsv2_files: tuple[Path, Path]) -> None:
    from opgrpo_bench.registry import REWARDS

    reward = REWARDS.get("hpsv2")(path=hpsv2_files[0], tokenizer_path=hpsv2_files[1], vision_heads=2, text_heads=2)
    images = torch.rand(2, 3, 48, 40)
    out = reward(images, ["a cat", "a dog"])
    sd = {k.removeprefix("module."): v for k, v in torch.load(hpsv2_files[0], weights_only=True)["state_dict"].items()}
    tokens = reward.tokenizer(["a cat", "a dog"], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    img, txt = openclip_reference(sd, ImagePreprocessor(32, 32)(images), tokens)
    expected = F.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(out.scores, expected, atol=1e-5)


def blip_vit_reference(sd: dict, pixels: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """BLIP's ViT (timm layout, LayerNorm eps 1e-6) -> all token states after the final norm."""
    v = "blip.visual_encoder."
    patch = sd[v + "patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=patch)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + sd[v + "pos_embed"]
    i = 0
    while f"{v}blocks.{i}.norm1.weight" in sd:
        p = f"{v}blocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        x = x + _attention(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"], sd[p + "attn.proj.weight"],
                           sd[p + "attn.proj.bias"], heads)
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        x = x + F.gelu(h @ sd[p + "mlp.fc1.weight"].t() + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]
        i += 1
    return F.layer_norm(x, x.shape[-1:], sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)


def test_blip_vision_conversion_matches_reference() -> None:
    sd = standins.imagereward_state_dict(vocab_size=60)
    model = ImageRewardModel.from_state_dict(sd, vision_heads=2, text_heads=2)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states = model.vision(pixel_values=pixels).last_hidden_state
    assert torch.allclose(states, blip_vit_reference(sd, pixels), atol=1e-5)


def test_image_reward_head_and_standardisation() -> None:
    sd = standins.imagereward_state_dict(vocab_size=60)
    model = ImageRewardModel.from_state_dict(sd, vision_heads=2, text_heads=2)
    feats = torch.randn(3, 32)
    raw = feats
    for idx in (0, 2, 4, 6, 7):  # a stack of linear layers without activations, as released
        raw = raw @ sd[f"mlp.layers.{idx}.weight"].t() + sd[f"mlp.layers.{idx}.bias"]
    with torch.no_grad():
        got = (model.mlp(feats).squeeze(-1) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
    assert torch.allclose(got, (raw.squeeze(-1) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD, atol=1e-5)


def test_image_reward_rejects_foreign_checkpoint(tmp_path: Path, image_reward_files: tuple[Path, Path]) -> None:
    from opgrpo_bench.registry import REWARDS
    from opgrpo_bench.rewards.base import MissingWeightsError

    bad = tmp_path / "ImageReward.pt"
    torch.save({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(MissingWeightsError, match="not an ImageReward checkpoint"):
        REWARDS.get("image-reward")(path=bad, tokenizer_path=image_reward_files[1])


def test_image_reward_text_depends_on_prompt(image_reward_files: tuple[Path, Path]) -> None:
    from opgrpo_bench.registry import REWARDS

    reward = REWARDS.get("image-reward")(path=image_reward_files[0], tokenizer_path=image_reward_files[1],
                                         vision_heads=2, text_heads=2)
    images = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
    out = reward(images, ["a red cat", "a blue dog sign"])
    assert out.scores[0] != out.scores[1]
    tokens = reward.tokenizer(["a cat"], padding="max_length", max_length=35)["input_ids"][0]
    assert len(tokens) == 35 and tokens[0] == reward.tokenizer.cls_token_id
