"""``digits-number-v1``: a CPU miniature of the OP-GRPO paper's visual-text (OCR) task.

- Prompts: ``"the number 374"``, a 3-digit number from 000-999 to render. A seeded permutation
  (:func:`number_split`) gives 800 training numbers and 100 held-out eval numbers, disjoint; the other
  100 are unused. The tokenizer splits every run of numerals into single digits (``the number 3 7 4``),
  so a held-out number is a new composition of digit tokens the model has learnt, not an unknown word.
- Images: 8x24 pixels, 1 channel: three of scikit-learn's 8x8 handwritten digits side by side (the same
  stratified 80/20 split as ``digits-v1``, :func:`opgrpo_bench.tasks.digits.load_split`).
- Base model: the ``digits-v1`` architecture (4-layer pixel-space diffusers ``SD3Transformer2DModel``,
  patch 2, + 2-layer CLIP text encoder) on an 8x24 input: the position-embedding grid is 12x12 patches
  (``pos_embed_max_size`` 12), which diffusers crops to the input's 4x12 patch grid. The tokenizer has
  digits-v1's vocabulary, so both networks start from the digits-v1 base model's weights (all but the
  fixed sincos position grid), then 500 flow-matching steps (batch 32, lr 3e-3) on composed images of
  the *training* numbers only (:func:`pretrain_number_model`): eval numbers are unseen in pretraining
  and in RL.
- Reward ``digit-number``: the digits-v1 classifier reads each 8x8 position; score
  ``1 - edit_distance(read, target) / 3``; components ``success`` (all three right) and ``char_acc``
  (:class:`opgrpo_bench.rewards.digits.DigitNumberReward`). The eval score is the mean reward, as in
  Flow-GRPO's OCR task; ``success`` and ``char_acc`` are logged beside it (``eval/success``).
- Pool variants for a regime map: ``digits-number-pool20-v1`` and ``digits-number-pool100-v1`` train on
  the first 20 / 100 training numbers of the same permutation (nested subsets of each other and of the
  800); base model, eval set, target and settings are the same.

The shipped assets (``opgrpo_bench/assets/digits-number-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_number_assets.py`` (54 s on one core; checked: same safetensors).

Measured on this machine (2 cores, one per process, ``nice -n 10``), eval = 100 held-out numbers x 2
fixed noises, 20 ODE steps:

- Pretraining (why these settings): held-out score / success (100 eval numbers x 2 noises of its own)
  after N steps of the shipped recipe, measured by a ``callback`` of :func:`pretrain_number_model`, from
  digits-v1 weights: 300: 0.18 / 0.00, 400: 0.33 / 0.04, 500: 0.56 / 0.13, 600: 0.68 / 0.30,
  700: 0.70 / 0.32, 800: 0.86 / 0.64 (composition is learnt abruptly; 500 leaves success under 20%).
  The same recipe from random weights reaches only 0.25 / 0.01 after 1000 steps.
- Base model (the step-0 eval of the runs below): score 0.547, success 0.145, char_acc 0.547. Its fresh
  SDE rollouts (T = 10, noise level 0.7; 128 groups of 8 over the training numbers): success 0.121,
  reward 0.511; 48% of the groups have no success at all, none has zero reward variance (the reward is
  graded by thirds).
- Flow-GRPO, ``nice -n 10 opgrpo-bench run -t digits-number-v1 -a flow-grpo -s SEED --steps 150``:
  seeds 0 / 1 / 2 reach the target 0.63 at steps 100 / 90 / 90 (score at 150: 0.668 / 0.633 / 0.702;
  best 0.670 / 0.647 / 0.702). A 300-step seed-0 run (with 4 noises per eval prompt then, base 0.543)
  plateaus at 0.68-0.70 from step ~160 on (best 0.696).
- One seed each, indicative only (140 steps, target 0.63): Flow-GRPO seed 0 on pool20 / pool100 reaches
  it at step 140 / 110 (full pool: 100); OP-GRPO seed 0 at step 90 on the full pool and 130 on pool20.
- Cost: a 150-step Flow-GRPO run takes 305 s wall on one core (220 s training, 16 evals of ~5.3 s),
  hence the 140-step budget (about 290 s; 314-332 s when two runs share the 2 cores with other load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from opgrpo_bench.rewards.digits import ASSETS
from opgrpo_bench.tasks.digits import (
    MAX_TOKENS,
    PIXEL_TASK_DEFAULTS,
    ClipPromptEncoder,
    build_scheduler,
    build_text_encoder,
    build_transformer,
    flow_matching_step,
    load_pixel_backbone,
    load_split,
    vocabulary,
)
from opgrpo_bench.tasks.spec import Prompt, TaskSpec

NUMBER_ASSETS = ASSETS.parent / "digits-number-v1"
TEMPLATE = "the number {n}"
N_DIGITS = 3
IMAGE_SHAPE = (1, 8, 8 * N_DIGITS)
"""[C, H, W] of one image (and one latent: the model works in pixel space)."""
SPLIT_SEED = 0
N_TRAIN, N_EVAL = 800, 100
POOL_SIZES = (20, 100)
"""Training-pool sizes of the nested variants (the first this many training numbers)."""
PRETRAIN_STEPS = 500
JITTER_STEPS = 0
PRETRAIN_LR = 3e-3
PRETRAIN_BATCH = 32


def number_split(seed: int = SPLIT_SEED) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training numbers, eval numbers) as 3-character strings, from a seeded permutation of 000-999.

    numpy's legacy ``RandomState`` is used because its stream is frozen across numpy versions.
    """
    import numpy as np

    perm = np.random.RandomState(seed).permutation(10 ** N_DIGITS).tolist()
    numbers = [f"{i:0{N_DIGITS}d}" for i in perm]
    return tuple(numbers[:N_TRAIN]), tuple(numbers[N_TRAIN:N_TRAIN + N_EVAL])


def make_number_prompts(numbers: Sequence[str]) -> tuple[Prompt, ...]:
    """One prompt per number, with the number (a string: leading zeros count) in the metadata."""
    return tuple(Prompt(TEMPLATE.format(n=n), {"number": n}) for n in numbers)


def number_vocabulary() -> list[str]:
    """digits-v1's vocabulary (it has the template words and the ten numerals), so that its text encoder's
    token embeddings can initialise this task's (:func:`pretrain_number_model`)."""
    words = vocabulary()
    assert all(w in words for w in TEMPLATE.split() if "{" not in w) and all(str(d) in words for d in range(10))
    return words


def build_number_tokenizer():
    """Word-level tokenizer that splits runs of numerals into single digits: ``[BOS] the number 3 7 4 [EOS]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(number_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=MAX_TOKENS)


def compose(*digits: torch.Tensor) -> torch.Tensor:
    """[N, 1, 8, 8] digit images, left to right -> [N, 1, 8, 8 * len(digits)]."""
    return torch.cat(digits, dim=-1)


def load_number_backbone(path: str | Path | None = None):
    """The digits-number-v1 base model from its saved folder (latents [1, 8, 24])."""
    return load_pixel_backbone(Path(path) if path else NUMBER_ASSETS, task="digits-number-v1",
                               script="scripts/build_digits_number_assets.py", latent_shape=IMAGE_SHAPE)


# -- pretraining (the project's own base model) ----------------------------------------------------
class NumberImages:
    """Draws composed images of given numbers from the digits of scikit-learn's training split."""

    def __init__(self, numbers: Sequence[str]):
        x_train, y_train, _, _ = load_split()
        order = torch.argsort(y_train, stable=True)
        self.data = (x_train * 2 - 1)[order]  # pixel space in [-1, 1], grouped by label
        counts = torch.bincount(y_train, minlength=10)
        self.counts, self.starts = counts, torch.cumsum(counts, 0) - counts
        self.numbers = list(numbers)
        self.digits = torch.tensor([[int(c) for c in n] for n in self.numbers])  # [M, N_DIGITS]

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """(images [B, 1, 8, 8 * N_DIGITS] in [-1, 1], their numbers)."""
        which = torch.randint(len(self.numbers), (batch_size,), generator=generator)
        labels = self.digits[which]  # [B, N_DIGITS]
        u = torch.rand(labels.shape, generator=generator)
        idx = self.starts[labels] + (u * self.counts[labels]).long().clamp_max(self.counts[labels] - 1)
        images = compose(*(self.data[idx[:, j]] for j in range(labels.shape[1])))
        return images, [self.numbers[i] for i in which.tolist()]


def pretrain_number_model(steps: int = PRETRAIN_STEPS, jitter_steps: int = JITTER_STEPS, seed: int = 0,
                          batch_size: int = PRETRAIN_BATCH, lr: float = PRETRAIN_LR, caption_dropout: float = 0.1,
                          numbers: Sequence[str] | None = None, init_from: str | Path | None = ASSETS,
                          callback=None):
    """Flow-matching pretraining of transformer + text encoder on composed images of the training numbers.

    Each example is a random training number drawn as three random training-split digits, captioned
    ``"the number 374"`` (or ``""`` with probability ``caption_dropout``). The last ``jitter_steps`` shift
    every digit by up to one pixel (:func:`opgrpo_bench.tasks.digits_pair.jitter`). ``callback(step,
    transformer, text_encoder, tokenizer)`` is called after every step (for measurements; None in the build).
    ``numbers`` defaults to the training numbers of :func:`number_split`. ``init_from`` is a digits-v1 base
    model folder whose text encoder and transformer weights (all but the fixed position grid, which is
    sized by the image) start the training; None starts from random weights.
    Returns (transformer, text_encoder, tokenizer, scheduler).
    """
    from opgrpo_bench.tasks.digits_pair import jitter

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    source = NumberImages(number_split()[0] if numbers is None else numbers)
    tokenizer = build_number_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer(sample_size=max(IMAGE_SHAPE[1:]))
    encoder = ClipPromptEncoder(tokenizer, text_encoder)
    if init_from is not None:
        from safetensors.torch import load_file

        folder = Path(init_from)
        text_encoder.load_state_dict(load_file(folder / "text_encoder" / "model.safetensors"))
        weights = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
        weights.pop("pos_embed.pos_embed")  # a fixed sincos grid, rebuilt for this image size
        missing, unexpected = transformer.load_state_dict(weights, strict=False)
        assert missing == ["pos_embed.pos_embed"] and not unexpected, (missing, unexpected)
    text_encoder.train()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    for step in range(steps):
        x0, numbers = source.draw(batch_size, gen)
        if step >= steps - jitter_steps:
            cells = x0.reshape(batch_size, 1, 8, N_DIGITS, 8).permute(0, 3, 1, 2, 4).reshape(-1, 1, 8, 8)
            cells = jitter(cells, gen)
            x0 = cells.reshape(batch_size, N_DIGITS, 1, 8, 8).permute(0, 2, 3, 1, 4).reshape(x0.shape)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        prompts = ["" if drop[k] else TEMPLATE.format(n=n) for k, n in enumerate(numbers)]
        flow_matching_step(transformer, encoder, params, opt, x0, prompts, gen)
        if callback is not None:
            callback(step + 1, transformer, text_encoder, tokenizer)
    transformer.eval()
    text_encoder.eval()
    return transformer, text_encoder, tokenizer, build_scheduler()


def build_number_assets(out: str | Path = NUMBER_ASSETS, steps: int = PRETRAIN_STEPS,
                        jitter_steps: int = JITTER_STEPS, seed: int = 0, lr: float = PRETRAIN_LR,
                        batch_size: int = PRETRAIN_BATCH, init_from: str | Path | None = ASSETS) -> dict:
    """Pretrain the base model and save it under ``out`` (safetensors folders + ``base_model.json``).

    The reward reuses the digits-v1 classifier (``assets/digits-v1/classifier.safetensors``); the weights
    start from the digits-v1 base model in ``init_from`` (None: random).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer, text_encoder, tokenizer, scheduler = pretrain_number_model(
        steps, jitter_steps, seed=seed, lr=lr, batch_size=batch_size, init_from=init_from)
    transformer.save_pretrained(out / "transformer")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    meta = {"pretrain_steps": steps, "jitter_steps": jitter_steps, "pretrain_lr": lr, "pretrain_batch": batch_size,
            "seed": seed, "init_from": None if init_from is None else Path(init_from).name,
            "image_shape": list(IMAGE_SHAPE), "split_seed": SPLIT_SEED, "n_train_numbers": N_TRAIN,
            "classifier": "digits-v1/classifier.safetensors"}
    (out / "base_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# -- the task specs --------------------------------------------------------------------------------
TARGET = 0.63
"""Between the base model's eval score (0.547) and what Flow-GRPO reaches in the budget (0.63-0.70); see
the module docstring."""
BUDGET_STEPS = 140


def number_task(task_id: str, pool: int | None = None) -> TaskSpec:
    """The digits-number spec training on the first ``pool`` training numbers (None: all of them)."""
    train, evals = number_split()
    train = train if pool is None else train[:pool]
    return TaskSpec(
        id=task_id,
        description=f"render a 3-digit number (8x24), tiny SD3 transformer; {len(train)} train / {len(evals)} "
                    "held-out numbers; reward = 1 - edit distance / 3 (OCR-like)",
        backbone="digits-number-v1-base",
        reward="digit-number",
        gold_reward="digit-number",
        gold_reward_args={"classifier": "gold"},
        train_prompts=make_number_prompts(train),
        eval_prompts=make_number_prompts(evals),
        eval_noises_per_prompt=2,
        target=TARGET,
        budget_steps=BUDGET_STEPS,
        eval_every=10,
        train_defaults=dict(PIXEL_TASK_DEFAULTS),
        needs="CPU; assets shipped in the package",
    )


DIGITS_NUMBER_V1 = number_task("digits-number-v1")
DIGITS_NUMBER_POOL20_V1 = number_task("digits-number-pool20-v1", pool=POOL_SIZES[0])
DIGITS_NUMBER_POOL100_V1 = number_task("digits-number-pool100-v1", pool=POOL_SIZES[1])
