"""The ``digits-video-v1`` base model: a 2-block pixel-space Wan transformer with coordinate maps as channel
conditioning, pretrained on moving training-split digits (``python scripts/build_digits_video_assets.py``
regenerates it; the reward reuses the digits-v1 classifiers). The task's module docstring gives the
measurements behind the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from opgrpo_bench.backbones.digits import VIDEO_ASSETS, VIDEO_SHAPE, WanClipPromptEncoder, video_backbone
from opgrpo_bench.pretraining import common
from opgrpo_bench.pretraining.common import adamw, build_scheduler, flow_matching_step, trainable, trained
from opgrpo_bench.rewards.digits import DIGIT_WORDS, DIRECTIONS
from opgrpo_bench.tasks.digits_video import EVAL_TEMPLATES, FRAME_WIDTH, N_FRAMES, SPEED, TRAIN_TEMPLATES

TEXT_WIDTH = 32
"""Width of the CLIP text encoder (and the transformer's ``text_dim``)."""
PRETRAIN_STEPS = 850
FRAME_STEPS = 800
"""The first ``FRAME_STEPS`` of the ``PRETRAIN_STEPS`` train on the videos' first frames alone (1-frame
videos: 28 tokens, a third of a video step's cost), the rest on whole videos (:func:`pretrain_video_model`)."""
PRETRAIN_LR = 3e-3
PRETRAIN_BATCH = 64


def video_vocabulary() -> list[str]:
    """Special tokens, the template words, the directions, the ten numerals and the ten number words."""
    words = {w for t in TRAIN_TEMPLATES + EVAL_TEMPLATES for w in t.split() if "{" not in w}
    return (common.special_tokens() + sorted(words) + list(DIRECTIONS) + [str(d) for d in range(10)]
            + list(DIGIT_WORDS))


def moving_videos(images: torch.Tensor, directions: torch.Tensor, width: int = FRAME_WIDTH,
                  frames: int = N_FRAMES, speed: int = SPEED, background: float = 0.0) -> torch.Tensor:
    """Videos [N, 1, F, 8, width] of 8x8 digits ``images`` [N, 1, 8, 8] sliding ``speed`` px per frame.

    ``directions`` [N]: +1 moves right from the left edge (offsets 0, speed, 2 speed, ...), -1 moves left
    from the right edge (offsets ``width - 8``, ``width - 8 - speed``, ...). The rest of each frame is
    ``background``. ``width`` must hold the whole path: ``width >= 8 + (frames - 1) * speed``.
    """
    last = width - 8
    if last < (frames - 1) * speed:
        raise ValueError(f"{frames} frames at {speed} px per frame do not fit in a frame {width} px wide")
    n = images.shape[0]
    out = torch.full((n, 1, frames, 8, width), background, dtype=images.dtype)
    for i in range(n):
        for f in range(frames):
            x = f * speed if int(directions[i]) > 0 else last - f * speed
            out[i, :, f, :, x:x + 8] = images[i]
    return out


def build_video_transformer(num_layers: int = 2, num_attention_heads: int = 4, ffn_dim: int = 128):
    """The tiny pixel-space Wan transformer: ``num_layers`` blocks of ``num_attention_heads`` x 16 channels
    (rotary split 8/4/4 over frame/row/column), FFN ``ffn_dim``, 1x2x2 patches; input: the pixel channel
    and the 3 :func:`~opgrpo_bench.backbones.digits.coordinate_maps` channels, output: the pixel channel's
    velocity; text width :data:`TEXT_WIDTH`."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_attention_heads, attention_head_dim=16, in_channels=1 + 3,
        out_channels=1, text_dim=TEXT_WIDTH, freq_dim=32, ffn_dim=ffn_dim, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def pretrain_video_model(steps: int = PRETRAIN_STEPS, frame_steps: int = FRAME_STEPS, seed: int = 0,
                         batch_size: int = PRETRAIN_BATCH, lr: float = PRETRAIN_LR, caption_dropout: float = 0.1,
                         callback: Callable[[int, Any, Any, Any], None] | None = None):
    """Flow-matching pretraining of the Wan transformer + text encoder on moving training-split digits.

    Each example is a random training digit crossing the frame in a random direction (:func:`moving_videos`,
    pixels in [-1, 1]), captioned by a random template of all six (train and eval; ``""`` with probability
    ``caption_dropout``, for CFG); the first ``frame_steps`` steps keep only its first frame (a 1-frame
    video, whose coordinate maps are frame 0's). One step is
    :func:`opgrpo_bench.pretraining.common.flow_matching_step`.
    ``callback(step, transformer, text_encoder, tokenizer)`` runs after every step (measurements only).
    Returns (transformer, text_encoder, tokenizer, scheduler), in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, _, _ = common.load_split()
    tokenizer = common.build_tokenizer(video_vocabulary())
    text_encoder = common.build_text_encoder(len(tokenizer), hidden_size=TEXT_WIDTH)
    transformer = build_video_transformer()
    scheduler = build_scheduler()
    encoder = WanClipPromptEncoder(tokenizer, text_encoder)
    # the first frame_steps train on 1-frame videos: a backbone whose condition is frame 0's coordinate maps
    videos = trainable(video_backbone(transformer, encoder, scheduler))
    first_frames = trainable(video_backbone(transformer, encoder, scheduler, (*VIDEO_SHAPE[:1], 1, *VIDEO_SHAPE[2:])))
    templates = TRAIN_TEMPLATES + EVAL_TEMPLATES
    params, opt = adamw(videos, lr)
    for step in range(steps):
        idx = torch.randint(len(y_train), (batch_size,), generator=gen)
        directions = torch.randint(2, (batch_size,), generator=gen)  # index into DIRECTIONS: 0 left, 1 right
        x0 = moving_videos(x_train[idx], directions * 2 - 1) * 2 - 1
        if step < frame_steps:
            x0 = x0[:, :, :1].contiguous()  # the first frame alone (see FRAME_STEPS)
        t_idx = torch.randint(len(templates), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        labels = y_train[idx].tolist()
        prompts = ["" if drop[k] else templates[int(t_idx[k])].format(d=labels[k], w=DIGIT_WORDS[labels[k]],
                                                                      dir=DIRECTIONS[int(directions[k])])
                   for k in range(batch_size)]
        flow_matching_step(first_frames if step < frame_steps else videos, params, opt, x0, prompts, gen)
        if callback is not None:
            callback(step + 1, transformer, text_encoder, tokenizer)
    return trained(videos)


def build_video_assets(out: str | Path = VIDEO_ASSETS, steps: int = PRETRAIN_STEPS, frame_steps: int = FRAME_STEPS,
                       seed: int = 0, lr: float = PRETRAIN_LR, batch_size: int = PRETRAIN_BATCH) -> dict:
    """Pretrain the base model and save it under ``out`` (safetensors folders + ``base_model.json``).

    The reward reuses the digits-v1 classifiers (``assets/digits-v1``); nothing else is trained.
    """
    transformer, text_encoder, tokenizer, scheduler = pretrain_video_model(steps, frame_steps, seed=seed,
                                                                           batch_size=batch_size, lr=lr)
    meta = {"pretrain_steps": steps, "frame_steps": frame_steps, "pretrain_lr": lr, "pretrain_batch": batch_size,
            "seed": seed, "video_shape": list(VIDEO_SHAPE), "speed": SPEED,
            "classifier": "digits-v1/classifier.safetensors"}
    return common.save_base_model(out, transformer, text_encoder, tokenizer, scheduler, meta)
