"""ImageReward (Xu et al., 2023) without the ``image-reward`` package.

ImageReward is BLIP (ViT-L/16 image encoder, BERT-base text encoder with cross-attention to the image)
plus a small MLP head on the text encoder's [CLS] state, standardised with the training mean and std.
The ``image-reward`` PyPI package does not import beside transformers 5 and downloads at first use, so
this module reads the released ``ImageReward.pt`` (from the ``THUDM/ImageReward`` repo), renames the
BLIP vision tensors to transformers' ``BlipVisionModel`` layout (the BLIP text encoder already uses
transformers' ``BlipTextModel`` names) and runs everything with transformers:

    tokens  = bert-base-uncased tokenizer (max_length 35, padded), [CLS] ... [SEP]
    image   = BlipVisionModel(resize 224 bicubic, centre crop, CLIP statistics) -> all patch states
    text    = BlipTextModel(tokens, cross-attending to the image states, bidirectional) -> [CLS] state
    score   = (MLP(text) - 0.16717362830052426) / 1.0333394966054072

The tokenizer is ``bert-base-uncased``'s (``google-bert/bert-base-uncased`` in the HF cache or
``tokenizer_path=``) with BLIP's two added tokens ``[DEC]`` and ``[ENC]``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from opgrpo_bench.devices import default_device
from opgrpo_bench.rewards.base import BaseReward, MissingWeightsError, RewardOutput
from opgrpo_bench.rewards.clip import AestheticMLP, ImagePreprocessor, _dtype, load_state_dict_file
from opgrpo_bench.rewards.weights import resolve_dir, resolve_file

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072

_VISION_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def blip_vit_to_hf(state: dict[str, torch.Tensor], prefix: str = "blip.visual_encoder.") -> dict[str, torch.Tensor]:
    """Rename BLIP's timm-style ViT tensors (``{prefix}blocks.i.*``) to transformers' ``BlipVisionModel``."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    block = re.compile(r"^blocks\.(\d+)\.(.+)$")
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest in simple:
            out[simple[rest]] = value
            continue
        m = block.match(rest)
        if not m:
            raise ValueError(f"unexpected BLIP vision tensor '{key}'")
        i, sub = m.groups()
        for old, new in _VISION_BLOCK_RENAMES.items():
            if sub.startswith(old + "."):
                out[f"encoder.layers.{i}.{new}{sub[len(old):]}"] = value
                break
        else:
            raise ValueError(f"unexpected BLIP vision tensor '{key}'")
    return out


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def blip_configs(
    state: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None,
    med_config: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``BlipVisionConfig`` and ``BlipTextConfig`` matching an ImageReward state dict's shapes.

    Head counts default to width / 64 (BLIP ViT-L: 16, BERT-base: 12); ``med_config`` (the BERT json
    shipped with the checkpoint) overrides the text side where given.
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    v = "blip.visual_encoder."
    width_v = state[v + "cls_token"].shape[-1]
    patch = state[v + "patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state[v + "pos_embed"].shape[1] - 1)
    vision = BlipVisionConfig(
        hidden_size=width_v, intermediate_size=state[v + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(state, rf"^{re.escape(v)}blocks\.(\d+)\."),
        num_attention_heads=vision_heads or width_v // 64, patch_size=patch, image_size=patch * grid,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )
    t = "blip.text_encoder."
    vocab, width_t = state[t + "embeddings.word_embeddings.weight"].shape
    med = med_config or {}
    text = BlipTextConfig(
        vocab_size=vocab, hidden_size=width_t,
        intermediate_size=state[t + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(state, rf"^{re.escape(t)}encoder\.layer\.(\d+)\."),
        num_attention_heads=text_heads or med.get("num_attention_heads") or width_t // 64,
        max_position_embeddings=state[t + "embeddings.position_embeddings.weight"].shape[0],
        encoder_hidden_size=width_v, layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_act=med.get("hidden_act", "gelu"), is_decoder=True, pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=vocab - 2,  # BLIP's added [DEC]
        sep_token_id=102 if vocab > 102 else None,  # bert-base-uncased's [SEP]
    )
    return vision, text


class ImageRewardModel(torch.nn.Module):
    """BLIP vision + text encoders and the ImageReward head, on transformers' BLIP modules."""

    def __init__(self, vision_config: Any, text_config: Any):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticMLP(text_config.hidden_size)

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], med_config: dict[str, Any] | None = None,
        vision_heads: int | None = None, text_heads: int | None = None,
    ) -> "ImageRewardModel":
        """Build and strictly load from an ``ImageReward.pt`` state dict (original BLIP names)."""
        vision_cfg, text_cfg = blip_configs(state, vision_heads, text_heads, med_config)
        model = cls(vision_cfg, text_cfg)
        pieces = {
            "vision": blip_vit_to_hf(state),
            "text": {k[len("blip.text_encoder."):]: v for k, v in state.items() if k.startswith("blip.text_encoder.")},
            "mlp": {k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")},
        }
        for name, sd in pieces.items():
            module = getattr(model, name)
            missing, unexpected = module.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            unexpected = [k for k in unexpected if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ValueError(f"{name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model.eval()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_states = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=image_states.device)
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_states,
            encoder_attention_mask=image_mask, is_decoder=False,
        ).last_hidden_state[:, 0, :]
        return (self.mlp(text.float()).squeeze(-1) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


class ImageRewardReward(BaseReward):
    """ImageReward v1.0: BLIP-based human-preference score, standardised (about -2..2; higher is better)."""

    name = "image-reward"
    range = (-math.inf, math.inf)
    needs = (
        "GPU recommended; weights: THUDM/ImageReward ImageReward.pt + tokenizer google-bert/bert-base-uncased "
        "(path=/tokenizer_path= or $OPGRPO_IMAGEREWARD_PATH/$OPGRPO_IMAGEREWARD_TOKENIZER_PATH); "
        "no image-reward package needed"
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        device: str | None = None,
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
        max_length: int = 35,
        vision_heads: int | None = None,
        text_heads: int | None = None,
    ):
        """Args:
        path: ``ImageReward.pt``, a folder holding it (and optionally ``med_config.json``), or a cached repo id.
        tokenizer_path: a BERT tokenizer folder or cached repo (default ``google-bert/bert-base-uncased``).
        max_length: prompt tokens kept (ImageReward uses 35).
        """
        ckpt = resolve_file(path, env="OPGRPO_IMAGEREWARD_PATH", default_repo="THUDM/ImageReward",
                            filename="ImageReward.pt", what="reward 'image-reward' checkpoint")
        tok_dir = resolve_dir(tokenizer_path, env="OPGRPO_IMAGEREWARD_TOKENIZER_PATH",
                              default_repo="google-bert/bert-base-uncased", what="reward 'image-reward' tokenizer",
                              required=("vocab.txt",))
        from transformers import BertTokenizer

        tokenizer = BertTokenizer.from_pretrained(tok_dir)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tokenizer
        med_path = Path(ckpt).parent / "med_config.json"
        med = json.loads(med_path.read_text()) if med_path.is_file() else None
        state = load_state_dict_file(Path(ckpt), "reward 'image-reward' checkpoint")
        try:
            model = ImageRewardModel.from_state_dict(state, med, vision_heads, text_heads)
        except (KeyError, ValueError) as exc:
            raise MissingWeightsError(f"reward 'image-reward': '{ckpt}' is not an ImageReward checkpoint ({exc})") from None
        self.device, self.dtype = default_device(device), _dtype(dtype)
        self.model = model.to(self.device, self.dtype)
        size = model.vision.config.image_size
        self.preprocess = ImagePreprocessor(size=size, crop=size)
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        return self.model(pixels, tokens["input_ids"], tokens["attention_mask"]).float()

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        chunks = range(0, len(prompts), self.batch_size)
        scores = torch.cat([self._score(images[i : i + self.batch_size], prompts[i : i + self.batch_size]) for i in chunks])
        return RewardOutput(scores)
