"""HPSv2 / HPSv2.1 (Wu et al., 2023) without the ``hpsv2`` package.

HPSv2 is OpenCLIP ViT-H-14 fine-tuned on human preferences; its score is the cosine similarity of the
image and prompt embeddings (no logit scale), about 0.2-0.35 for typical images. The ``hpsv2`` PyPI
package pins ``pytest==7.2.0``, pulls torchvision and ``open_clip_torch`` and downloads at first use, so
it cannot live in this environment. Instead this module reads the released checkpoint
(``HPS_v2.1_compressed.pt`` or ``HPS_v2_compressed.pt`` from the ``xswu/HPSv2`` repo, an OpenCLIP state
dict), renames its tensors to transformers' ``CLIPModel`` layout (:func:`openclip_to_hf`), and runs it
with transformers. The tokenizer is OpenCLIP's, which is CLIP's BPE: it is read from a local copy of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (or any CLIP tokenizer folder via ``tokenizer_path=``).
Image preprocessing is OpenCLIP's for ViT-H-14: bicubic resize to 224, centre crop, OpenAI CLIP
statistics.

The conversion is checked in the tests against an independent OpenCLIP-style forward pass written there.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from opgrpo_bench.devices import default_device
from opgrpo_bench.rewards.base import BaseReward, MissingWeightsError, RewardOutput
from opgrpo_bench.rewards.clip import ImagePreprocessor, _dtype, _features, load_state_dict_file
from opgrpo_bench.rewards.weights import resolve_dir, resolve_file

HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def _split_in_proj(prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """OpenCLIP fuses q, k, v into ``in_proj_*``; transformers keeps three projections."""
    out = {}
    for name, w in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0)):
        out[f"{prefix}.self_attn.{name}.weight"] = w.clone()
    if bias is not None:
        for name, b in zip(("q_proj", "k_proj", "v_proj"), bias.chunk(3, dim=0)):
            out[f"{prefix}.self_attn.{name}.bias"] = b.clone()
    return out


_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _convert_tower(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Rename one OpenCLIP transformer's residual blocks (``{src}resblocks.i.*`` -> ``{dst}layers.i.*``)."""
    out: dict[str, torch.Tensor] = {}
    pattern = re.compile(rf"^{re.escape(src)}resblocks\.(\d+)\.(.+)$")
    for key, value in state.items():
        m = pattern.match(key)
        if not m:
            continue
        i, rest = m.group(1), m.group(2)
        prefix = f"{dst}layers.{i}"
        if rest == "attn.in_proj_weight":
            out.update(_split_in_proj(prefix, value, state.get(f"{src}resblocks.{i}.attn.in_proj_bias")))
            continue
        if rest == "attn.in_proj_bias":
            continue
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old + "."):
                out[f"{prefix}.{new}{rest[len(old):]}"] = value
                break
        else:
            raise ValueError(f"unexpected OpenCLIP tensor '{key}'")
    return out


def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP ViT CLIP state dict (standard text tower) to transformers' ``CLIPModel`` names."""
    out = _convert_tower(state, "visual.transformer.", "vision_model.encoder.")
    out.update(_convert_tower(state, "transformer.", "text_model.encoder."))
    simple = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for old, new in simple.items():
        if old in state:
            out[new] = state[old]
    out["visual_projection.weight"] = state["visual.proj"].t().contiguous()
    out["text_projection.weight"] = state["text_projection"].t().contiguous()
    return out


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(prefix)}resblocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def clip_config_from_openclip(
    state: dict[str, torch.Tensor], vision_heads: int, text_heads: int, eos_token_id: int = 49407,
    hidden_act: str = "gelu",
) -> Any:
    """A transformers ``CLIPConfig`` matching the shapes of an OpenCLIP state dict.

    Head counts are not recoverable from shapes and are given (ViT-H-14: 16 and 16); the activation is
    exact GELU for OpenCLIP's LAION models (OpenAI's own CLIP uses quick GELU).
    """
    from transformers import CLIPConfig

    width_v = state["visual.class_embedding"].shape[-1]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    vocab, width_t = state["token_embedding.weight"].shape
    vision = dict(
        hidden_size=width_v, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state, "visual.transformer."), num_attention_heads=vision_heads,
        patch_size=patch, image_size=patch * grid, hidden_act=hidden_act, layer_norm_eps=1e-5,
        projection_dim=state["visual.proj"].shape[1],
    )
    text = dict(
        vocab_size=vocab, hidden_size=width_t,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state, "transformer."), num_attention_heads=text_heads,
        max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=hidden_act,
        layer_norm_eps=1e-5, eos_token_id=eos_token_id, projection_dim=state["text_projection"].shape[1],
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


def load_openclip_as_hf(
    state: dict[str, torch.Tensor], vision_heads: int, text_heads: int, eos_token_id: int = 49407
) -> Any:
    """Build a transformers ``CLIPModel`` holding an OpenCLIP checkpoint's weights (strict load)."""
    from transformers import CLIPModel

    config = clip_config_from_openclip(state, vision_heads, text_heads, eos_token_id)
    model = CLIPModel(config)
    converted = openclip_to_hf({k: v for k, v in state.items() if k != "attn_mask"})
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match CLIP: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


class HPSv2Reward(BaseReward):
    """HPSv2.1 human-preference score: cosine(image, prompt) under the fine-tuned OpenCLIP ViT-H-14."""

    name = "hpsv2"
    range = (-1.0, 1.0)
    needs = (
        "GPU recommended; weights: xswu/HPSv2 HPS_v2.1_compressed.pt + tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
        "(path=/tokenizer_path= or $OPGRPO_HPSV2_PATH/$OPGRPO_HPSV2_TOKENIZER_PATH); no hpsv2 package needed"
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        version: str = "v2.1",
        device: str | None = None,
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
        vision_heads: int = 16,
        text_heads: int = 16,
    ):
        """Args:
        path: the checkpoint file, a folder holding it, or a repo id in the HF cache (default ``xswu/HPSv2``).
        tokenizer_path: a CLIP tokenizer folder or cached repo (default the LAION ViT-H-14 repo).
        version: ``v2.1`` (default, Flow-GRPO's) or ``v2``.
        vision_heads, text_heads: attention heads (ViT-H-14: 16/16; only stand-ins change them).
        """
        if version not in HPS_FILES:
            raise ValueError(f"hpsv2 version must be one of {sorted(HPS_FILES)}, got '{version}'")
        ckpt = resolve_file(path, env="OPGRPO_HPSV2_PATH", default_repo="xswu/HPSv2", filename=HPS_FILES[version],
                            what="reward 'hpsv2' checkpoint")
        tok_dir = resolve_dir(tokenizer_path, env="OPGRPO_HPSV2_TOKENIZER_PATH",
                              default_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", what="reward 'hpsv2' tokenizer",
                              required=("tokenizer_config.json",))
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        state = load_state_dict_file(Path(ckpt), "reward 'hpsv2' checkpoint")
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 49407
        try:
            model = load_openclip_as_hf(state, vision_heads, text_heads, eos_token_id=eos)
        except (KeyError, ValueError) as exc:
            raise MissingWeightsError(f"reward 'hpsv2': '{ckpt}' is not an OpenCLIP ViT checkpoint ({exc})") from None
        self.device, self.dtype = default_device(device), _dtype(dtype)
        self.model = model.to(self.device, self.dtype)
        self.preprocess = ImagePreprocessor(size=model.config.vision_config.image_size,
                                            crop=model.config.vision_config.image_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.batch_size = batch_size

    @torch.no_grad()
    def _cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        img = _features(self.model.get_image_features(pixel_values=pixels)).float()
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.context_length,
                                return_tensors="pt").to(self.device)
        txt = _features(self.model.get_text_features(input_ids=tokens["input_ids"])).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (img * txt).sum(-1)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        chunks = range(0, len(prompts), self.batch_size)
        scores = torch.cat([self._cosine(images[i : i + self.batch_size], prompts[i : i + self.batch_size]) for i in chunks])
        return RewardOutput(scores)
