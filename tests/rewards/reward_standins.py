"""Random-init stand-ins of the real reward models, built in code and saved in the real file layouts.

Each builder writes what the real release ships (a ``save_pretrained`` folder, an OpenCLIP ``.pt``
state dict, an ``ImageReward.pt`` with BLIP's tensor names, a LAION MLP ``.pth``) so that the rewards'
real loading and scoring code runs offline, in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-")
WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "blue", "sign", "says", "hello", "object", "colored"]
REAL_HF_CACHE: str | None = None  # set by conftest before it points the HF cache at an empty folder
COCO_SUBSET = ["person", "bicycle", "car", "dog", "cat", "mouse", "remote", "bench"]


# -- tokenizers --------------------------------------------------------------------------------------
def save_clip_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer over single characters (no merges); returns its vocabulary size."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in CHARS:
        vocab[c] = len(vocab)
    for c in CHARS:
        vocab[c + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return len(vocab)


def save_bert_vocab(folder: Path) -> int:
    """A WordPiece ``vocab.txt`` (bert-base-uncased's layout, tiny); returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS + WORDS
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return len(tokens)


# -- CLIP (clipscore, pickscore, aesthetic, geneval colours) -------------------------------------------
def tiny_clip_config(vocab_size: int, eos_token_id: int, image_size: int = 32, projection_dim: int = 16):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=eos_token_id,
                         bos_token_id=eos_token_id - 1, pad_token_id=eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )


def save_clip(folder: Path, with_tokenizer: bool = True, seed: int = 0) -> Path:
    """A random-init tiny ``CLIPModel`` folder (+ tokenizer and image-processor config)."""
    from transformers import CLIPImageProcessor, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_clip_tokenizer(folder / "_tok")
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size, eos_token_id=vocab_size - 1))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    model.save_pretrained(folder)
    if with_tokenizer:
        save_clip_tokenizer(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_aesthetic_mlp(path: Path, input_size: int = 16, seed: int = 0) -> Path:
    from opgrpo_bench.rewards.clip import AestheticMLP

    torch.manual_seed(seed)
    torch.save(AestheticMLP(input_size).state_dict(), path)
    return path


# -- HPSv2 (OpenCLIP state dict) -------------------------------------------------------------------------
def openclip_state_dict(vocab_size: int, width_v: int = 32, width_t: int = 32, layers: int = 2, patch: int = 8,
                        image_size: int = 32, embed_dim: int = 16, context: int = 77, seed: int = 0
                        ) -> dict[str, torch.Tensor]:
    """Random tensors with OpenCLIP ViT names and shapes (what ``HPS_v2.1_compressed.pt`` holds)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    def ln(width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 + r(width, scale=0.1), r(width, scale=0.1)

    def blocks(prefix: str, width: int) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = ln(width)
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = r(3 * width, width), r(3 * width)
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = r(width, width), r(width)
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = ln(width)
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = r(4 * width, width), r(4 * width)
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = r(width, 4 * width), r(width)
        return sd

    grid = image_size // patch
    sd = {
        "visual.class_embedding": r(width_v, scale=0.5),
        "visual.positional_embedding": r(grid * grid + 1, width_v, scale=0.5),
        "visual.conv1.weight": r(width_v, 3, patch, patch),
        "visual.proj": r(width_v, embed_dim, scale=0.3),
        "token_embedding.weight": r(vocab_size, width_t, scale=0.5),
        "positional_embedding": r(context, width_t, scale=0.1),
        "text_projection": r(width_t, embed_dim, scale=0.3),
        "logit_scale": torch.tensor(math.log(100.0)),
        "attn_mask": torch.full((context, context), float("-inf")).triu(1),
    }
    sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"] = ln(width_v)
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = ln(width_v)
    sd["ln_final.weight"], sd["ln_final.bias"] = ln(width_t)
    sd.update(blocks("visual.transformer.", width_v))
    sd.update(blocks("transformer.", width_t))
    return sd


def save_hpsv2(folder: Path) -> tuple[Path, Path]:
    """(checkpoint file, tokenizer folder) of a random-init HPSv2 stand-in (2 heads per tower)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_clip_tokenizer(folder / "tokenizer")
    ckpt = folder / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": openclip_state_dict(vocab_size)}, ckpt)
    return ckpt, folder / "tokenizer"


# -- ImageReward (BLIP names) ----------------------------------------------------------------------------
def imagereward_state_dict(vocab_size: int, width_v: int = 32, width_t: int = 32, layers: int = 2,
                           patch: int = 8, image_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of ``ImageReward.pt`` (BLIP ViT, BERT with cross-attention, MLP)."""
    from transformers import BlipTextConfig, BlipTextModel

    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    v = "blip.visual_encoder."
    grid = image_size // patch
    sd = {
        v + "cls_token": r(1, 1, width_v, scale=0.5),
        v + "pos_embed": r(1, grid * grid + 1, width_v, scale=0.5),
        v + "patch_embed.proj.weight": r(width_v, 3, patch, patch),
        v + "patch_embed.proj.bias": r(width_v),
        v + "norm.weight": 1 + r(width_v), v + "norm.bias": r(width_v),
    }
    for i in range(layers):
        p = f"{v}blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(width_v), p + "norm1.bias": r(width_v),
            p + "attn.qkv.weight": r(3 * width_v, width_v), p + "attn.qkv.bias": r(3 * width_v),
            p + "attn.proj.weight": r(width_v, width_v), p + "attn.proj.bias": r(width_v),
            p + "norm2.weight": 1 + r(width_v), p + "norm2.bias": r(width_v),
            p + "mlp.fc1.weight": r(4 * width_v, width_v), p + "mlp.fc1.bias": r(4 * width_v),
            p + "mlp.fc2.weight": r(width_v, 4 * width_v), p + "mlp.fc2.bias": r(width_v),
        })
    # BLIP's text encoder (med.py BertModel) uses the BERT names that transformers' BlipTextModel keeps.
    text_cfg = BlipTextConfig(vocab_size=vocab_size, hidden_size=width_t, intermediate_size=4 * width_t,
                              num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
                              encoder_hidden_size=width_v, is_decoder=True)
    torch.manual_seed(seed)
    text = BlipTextModel(text_cfg, add_pooling_layer=False)
    for name, tensor in text.state_dict().items():
        sd["blip.text_encoder." + name] = (r(*tensor.shape, scale=0.1) + (1 if "LayerNorm.weight" in name else 0))
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    for i, (n_in, n_out) in enumerate([(width_t, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]):
        idx = [0, 2, 4, 6, 7][i]
        sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"] = r(n_out, n_in, scale=0.1), r(n_out)
    return sd


def save_image_reward(folder: Path) -> tuple[Path, Path]:
    """(checkpoint file, tokenizer folder) of a random-init ImageReward stand-in."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_bert_vocab(folder / "tokenizer") + 2  # BLIP adds [DEC] and [ENC]
    ckpt = folder / "ImageReward.pt"
    torch.save(imagereward_state_dict(vocab), ckpt)
    return ckpt, folder / "tokenizer"


# -- GenEval detector ----------------------------------------------------------------------------------
def save_mask2former(folder: Path, seed: int = 0) -> Path:
    """A random-init tiny Mask2Former (Swin backbone) with a few COCO labels, as a ``save_pretrained`` folder."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, num_queries=8, encoder_layers=1, decoder_layers=2, feature_size=32,
        mask_feature_size=32, dim_feedforward=32, encoder_feedforward_dim=32, num_attention_heads=2,
        id2label=dict(enumerate(COCO_SUBSET)), label2id={n: i for i, n in enumerate(COCO_SUBSET)},
    )
    torch.manual_seed(seed)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    return folder


# -- images ----------------------------------------------------------------------------------------------
def render_text(text: str, size: tuple[int, int] = (320, 128), font_size: int = 48) -> torch.Tensor:
    """[3, H, W] float image of dark text on a light background (DejaVu/Pillow's bundled font)."""
    img = Image.new("RGB", size, (236, 228, 210))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top), text,
              fill=(25, 25, 60), font=font)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
