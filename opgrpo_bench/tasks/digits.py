"""``digits-v1``: the embedded CPU task. Real data, a real (tiny) SD3 flow model, no downloads.

- Data: scikit-learn's bundled 1,797 real 8x8 handwritten digits (stratified 80/20 split, seed 0).
- Base model: a 4-layer diffusers ``SD3Transformer2DModel`` in pixel space (8x8x1, patch 2) conditioned
  by a 2-layer CLIP text encoder over a word-level tokenizer, both pretrained by the project with the
  flow-matching loss (:func:`pretrain_base_model`), deliberately short so that the base model is mediocre.
- Reward: probability of the prompted digit under the project's digit classifier (held-out accuracy
  recorded in ``assets/digits-v1/classifier.json``).

The shipped assets (``opgrpo_bench/assets/digits-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_assets.py``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opgrpo_bench.rewards.digits import ASSETS, DIGIT_WORDS, train_digit_classifier
from opgrpo_bench.tasks.spec import Prompt

TRAIN_TEMPLATES = ("a handwritten {d}", "the digit {d}", "a handwritten {w}", "the number {w}")
EVAL_TEMPLATES = ("a {d} written by hand", "the handwritten digit {w}")
MAX_TOKENS = 8
IMAGE_SIZE = 8


def make_prompts(templates: Sequence[str]) -> tuple[Prompt, ...]:
    """Every template for every digit, with the digit in the metadata."""
    return tuple(Prompt(t.format(d=d, w=DIGIT_WORDS[d]), {"digit": d}) for t in templates for d in range(10))


def vocabulary() -> list[str]:
    words = {w for t in TRAIN_TEMPLATES + EVAL_TEMPLATES for w in t.split() if "{" not in w}
    return ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + sorted(words) + [str(d) for d in range(10)] + list(DIGIT_WORDS)


@lru_cache(maxsize=1)
def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images in [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=y.numpy())
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


# -- model components ----------------------------------------------------------------------------
def build_tokenizer(words: Sequence[str] | None = None):
    """Word-level tokenizer built in process (no files): ``[BOS] words [EOS]``, padded to MAX_TOKENS.

    ``words`` is the vocabulary, special tokens first (default: digits-v1's :func:`vocabulary`); other tasks
    (``digits-pair-v1``) pass their own.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary() if words is None else words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int, hidden_size: int = 64):
    """The 2-layer CLIP text encoder of the digits tasks (width ``hidden_size``; ``digits-video-v1``: 32)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                         projection_dim=hidden_size, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return CLIPTextModelWithProjection(cfg)


def build_transformer(sample_size: int = IMAGE_SIZE):
    """The tiny pixel-space SD3 transformer (patch 2, 1 channel) for images up to ``sample_size`` a side.

    The position-embedding grid is ``sample_size // 2`` patches a side; diffusers crops its centre to the
    input's patch grid, so non-square inputs (``digits-pair-v1``: 8x16) work when their longer side fits.
    """
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=1, out_channels=1, num_layers=4,
        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64,
        pooled_projection_dim=64, pos_embed_max_size=sample_size // 2,
    )


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


class ClipPromptEncoder:
    """prompts -> (last hidden states [B, MAX_TOKENS, 64], projected pooled embedding [B, 64])."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt")
        out = self.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return out.last_hidden_state, out.text_embeds


def load_backbone(path: str | Path | None = None):
    """The digits-v1 base model from its saved folder (the same ``from_pretrained`` path as real models)."""
    return load_pixel_backbone(Path(path) if path else ASSETS, task="digits-v1",
                               script="scripts/build_digits_assets.py")


def load_pixel_backbone(folder: Path, task: str, script: str, latent_shape: tuple[int, ...] | None = None):
    """A pixel-space SD3 backbone (transformer, CLIP text encoder, tokenizer, scheduler) saved in ``folder``.

    ``latent_shape`` [C, H, W] defaults to the transformer's square ``sample_size``; ``task`` and ``script``
    only name what is missing and how to rebuild it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

    from opgrpo_bench.backbones.sd3 import SD3Backbone
    from opgrpo_bench.errors import MissingWeightsError

    if not (folder / "transformer").is_dir():
        raise MissingWeightsError(f"{task} base model not found in '{folder}'; regenerate it with "
                                  f"'python {script}'.")
    transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder").eval()
    text_encoder.requires_grad_(False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    return SD3Backbone(transformer, ClipPromptEncoder(tokenizer, text_encoder), scheduler,
                       latent_shape=latent_shape)


# -- pretraining (the project's own base model) ----------------------------------------------------
def pretrain_base_model(steps: int, seed: int = 0, batch_size: int = 128, lr: float = 1e-3,
                        caption_dropout: float = 0.1):
    """Flow-matching pretraining of transformer + text encoder on the training split.

    Captions are random train/eval templates of each image's label (the base model knows every phrasing;
    RL later trains on the train templates only). Returns (transformer, text_encoder, tokenizer, scheduler).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, _, _ = load_split()
    data = x_train * 2 - 1  # pixel space in [-1, 1]
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer()
    encoder = ClipPromptEncoder(tokenizer, text_encoder)
    templates = TRAIN_TEMPLATES + EVAL_TEMPLATES
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x0 = data[idx]
        t_idx = torch.randint(len(templates), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        prompts = ["" if drop[i] else templates[t_idx[i]].format(d=int(y_train[j]), w=DIGIT_WORDS[int(y_train[j])])
                   for i, j in enumerate(idx.tolist())]
        flow_matching_step(transformer, encoder, params, opt, x0, prompts, gen)
    transformer.eval()
    text_encoder.eval()
    return transformer, text_encoder, tokenizer, build_scheduler()


def sd3_velocity(transformer: Any, encoder: Any, x_t: torch.Tensor, sigma: torch.Tensor,
                 prompts: list[str]) -> torch.Tensor:
    """The pixel-space SD3 transformer's velocity at ``x_t`` [B, 1, H, W], noise level ``sigma`` [B]
    (timestep ``1000 sigma``), conditioned by ``encoder(prompts)`` = (embeds, pooled)."""
    embeds, pooled = encoder(prompts)
    return transformer(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=embeds,
                       pooled_projections=pooled, return_dict=False)[0]


def flow_matching_step(transformer: Any, encoder: Any, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                       x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                       velocity: Callable[..., torch.Tensor] = sd3_velocity) -> float:
    """One step of the digits base models' pretraining (shared by every digits task's build): a
    logit-normal sigma per image (SD3's training density), the flow-matching velocity target
    ``noise - x0`` at ``x_sigma = (1 - sigma) x0 + sigma noise``, AdamW with gradient clipping at 1.

    ``x0`` [B, 1, H, W] (videos: [B, 1, F, H, W]) in [-1, 1]; draws sigma, then the noise, from ``gen``.
    ``velocity(transformer, encoder, x_t, sigma, prompts)`` is the network call (default: the SD3 digits
    models'; ``digits-video-v1`` passes its Wan transformer's). Returns the loss.
    """
    batch_size = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * noise
    v = velocity(transformer, encoder, x_t, sigma, prompts)
    loss = torch.nn.functional.mse_loss(v, noise - x0)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def build_assets(out: str | Path = ASSETS, steps: int = 200, seed: int = 0) -> dict:
    """Train the classifier and the base model and save them under ``out`` (safetensors folders)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_split()
    classifier, acc = train_digit_classifier(x_train, y_train, x_test, y_test, seed=seed)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / "classifier.safetensors")
    info = {"heldout_accuracy": acc, "n_train": len(y_train), "n_test": len(y_test), "seed": seed}
    (out / "classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    transformer, text_encoder, tokenizer, scheduler = pretrain_base_model(steps, seed=seed)
    transformer.save_pretrained(out / "transformer")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    meta = {"pretrain_steps": steps, "seed": seed, **{f"classifier_{k}": v for k, v in info.items()}}
    (out / "base_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# -- the task spec ---------------------------------------------------------------------------------
DIGITS_V1 = None  # set below; kept at module level so the registry can point at it


PIXEL_TASK_DEFAULTS = dict(prompts_per_iter=8, group_size=8, num_steps=10, eval_num_steps=20, lora_rank=16,
                           lora_alpha=32, lr=3e-3, num_threads=1)
"""Flow-GRPO's recipe scaled to the tiny pixel-space digits models (shared by the digits tasks)."""


def _digits_v1():
    from opgrpo_bench.tasks.spec import TaskSpec

    return TaskSpec(
        id="digits-v1",
        description="8x8 handwritten digits (scikit-learn) with a tiny SD3 transformer; reward = p(prompted digit)",
        backbone="digits-v1-base",
        reward="digit-classifier",
        gold_reward="digit-classifier",
        gold_reward_args={"classifier": "gold"},
        train_prompts=make_prompts(TRAIN_TEMPLATES),
        eval_prompts=make_prompts(EVAL_TEMPLATES),
        eval_noises_per_prompt=4,
        target=0.70,
        budget_steps=150,
        eval_every=5,
        train_defaults=dict(PIXEL_TASK_DEFAULTS),
        needs="CPU; assets shipped in the package",
    )


DIGITS_V1 = _digits_v1()
