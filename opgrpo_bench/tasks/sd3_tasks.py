"""Tasks on SD3-family backbones.

- ``tiny-sd3-jpeg-v1``: the tiny SD3 pipeline built in code (:mod:`opgrpo_bench.backbones.tiny`; three text
  encoders, VAE, CFG) with the JPEG-compressibility reward. It exercises the whole SD3 path end to end on
  a CPU in seconds; its numbers say nothing about algorithms on real models.
- ``ocr-sd35m-v1``, ``pickscore-sd35m-v1``, ``geneval-sd35m-v1``: the papers' Stable Diffusion 3.5 Medium
  tasks (Flow-GRPO's settings, ALGORITHMS.md sections 2 and 4). They need the SD3.5-M weights
  (``$OPGRPO_SD35M_PATH`` = a diffusers folder or a repo id, else ``stabilityai/stable-diffusion-3.5-medium``
  in the local Hugging Face cache) and Flow-GRPO's prompt files (``$OPGRPO_PROMPTS_DIR`` = a copy of
  Flow-GRPO's ``dataset/`` folder: ``ocr/{train,test}.txt``, ``pickscore/{train,test}.txt``,
  ``geneval/{train,test}_metadata.jsonl``), which cannot be shipped here.
- ``ocr-sd35m-smoke-v1``, ``pickscore-sd35m-smoke-v1``, ``geneval-sd35m-smoke-v1``: SMOKE variants with a
  handful of built-in sample prompts (written for this project, not Flow-GRPO's) and a few steps, to check
  the wiring on a GPU with the real weights. Their scores are not comparable with anything.

The SD3.5-M specs are built on first access (module ``__getattr__``), because building one reads the prompt
files: a missing file raises :class:`~opgrpo_bench.errors.MissingWeightsError` with one line, which the CLI
prints before anything heavy is loaded.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from opgrpo_bench.errors import MissingWeightsError
from opgrpo_bench.tasks.spec import Prompt, TaskSpec

# -- tiny-sd3-jpeg-v1 --------------------------------------------------------------------------------
TINY_RESOLUTION = 32
TINY_MAX_SEQUENCE_LENGTH = 16
TINY_SEED = 0

TINY_TRAIN_PROMPTS = (
    "a photo of a cat", "a red car on a street", "a blue sky over the sea", "a small house in a field",
    "a yellow flower", "a dog next to a tree", "a painting of a mountain", "a cup on a table",
)
TINY_EVAL_PROMPTS = ("a photo of a dog", "a green field under a blue sky", "a white cup", "a city street")


def load_tiny_sd3_backbone():
    """The tiny SD3 pipeline (cached folder, built on first use) through ``SD3Backbone.from_pretrained``."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone
    from opgrpo_bench.backbones.tiny import TinySD3Config, tiny_sd3_folder

    folder = tiny_sd3_folder(TinySD3Config(resolution=TINY_RESOLUTION), seed=TINY_SEED)
    return SD3Backbone.from_pretrained(folder, resolution=TINY_RESOLUTION,
                                       max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, what="tiny SD3 pipeline")


TINY_SD3_JPEG_V1 = TaskSpec(
    id="tiny-sd3-jpeg-v1",
    description="tiny in-code SD3 pipeline (3 text encoders, VAE, CFG 4.5), 32 px; reward = -JPEG kB",
    backbone="tiny-sd3",
    reward="jpeg-compressibility",
    train_prompts=tuple(Prompt(p) for p in TINY_TRAIN_PROMPTS),
    eval_prompts=tuple(Prompt(p) for p in TINY_EVAL_PROMPTS),
    eval_noises_per_prompt=2,
    # The model is random-init: its VAE decoder adds its own texture, so the JPEG size moves little
    # (base eval score -1.546 kB; flat latents decode to about -1.39 kB). With Flow-GRPO's clip range
    # (1e-4) and KL (0.04) nothing moves within hundreds of steps; with the settings below Flow-GRPO
    # reaches about -1.50 in 100-200 steps (25 s on 2 CPU cores).
    target=-1.50,
    budget_steps=200,
    eval_every=10,
    train_defaults=dict(prompts_per_iter=4, group_size=8, num_steps=4, eval_num_steps=4, guidance=4.5,
                        eval_guidance=4.5, lora_rank=4, lora_alpha=8, lr=1e-2, clip_range=1e-2, beta=0.0,
                        num_threads=1),
    needs="CPU; built in code on first use (cached under ~/.cache/opgrpo-bench or $OPGRPO_CACHE_DIR)",
)

# -- SD3.5-Medium tasks ------------------------------------------------------------------------------
SD35M_ENV = "OPGRPO_SD35M_PATH"
SD35M_REPO = "stabilityai/stable-diffusion-3.5-medium"
PROMPTS_ENV = "OPGRPO_PROMPTS_DIR"
SD35M_RESOLUTION = 512
SD35M_MAX_SEQUENCE_LENGTH = 128
"""Flow-GRPO encodes prompts (and the empty negative prompt) with 128 T5 tokens."""
SD35M_MAX_BATCH = 32
"""Rows per no-grad transformer/VAE call (CFG rows count): bounds the memory of 1,152-sample rollouts."""


def sd35m_source() -> str:
    """``$OPGRPO_SD35M_PATH`` (folder or repo id) or the default repo id in the Hugging Face cache."""
    return os.environ.get(SD35M_ENV) or SD35M_REPO


def _default_device() -> torch.device:
    if torch.cuda.is_available():  # one process per GPU under accelerate/torchrun
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_sd35m_backbone():
    """SD3.5-Medium at 512 px: bf16 on a GPU (Flow-GRPO's precision; LoRA stays float32), float32 on a CPU."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    device = _default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return SD3Backbone.from_pretrained(
        sd35m_source(), dtype=dtype, device=device, max_sequence_length=SD35M_MAX_SEQUENCE_LENGTH,
        resolution=SD35M_RESOLUTION, max_batch=SD35M_MAX_BATCH, what="SD3.5-Medium weights", env=SD35M_ENV,
    )


def sd35m_weights_missing() -> str | None:
    """Why the SD3.5-M weights cannot be found (a one-line reason), or None when they can. Cheap: no loading."""
    from opgrpo_bench.backbones.sd3 import resolve_sd3_folder

    try:
        resolve_sd3_folder(sd35m_source(), what="SD3.5-Medium weights", env=SD35M_ENV)
    except MissingWeightsError as err:
        return str(err)
    return None


# Flow-GRPO's prompt files, relative to $OPGRPO_PROMPTS_DIR (its ``dataset/`` folder).
PROMPT_FILES = {
    "ocr": ("ocr/train.txt", "ocr/test.txt"),
    "pickscore": ("pickscore/train.txt", "pickscore/test.txt"),
    "geneval": ("geneval/train_metadata.jsonl", "geneval/test_metadata.jsonl"),
}


def read_prompt_file(path: Path) -> tuple[Prompt, ...]:
    """Prompts of a ``.txt`` file (one per line) or a ``.jsonl`` file (records with a ``prompt`` key; the
    other keys become the prompt's metadata, e.g. GenEval's ``tag``/``include``/``exclude``)."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                    text = record.pop("prompt")
                except (json.JSONDecodeError, KeyError, AttributeError):
                    raise MissingWeightsError(f"prompt file '{path}' line {number}: expected a JSON object "
                                              f"with a \"prompt\" key") from None
                prompts.append(Prompt(str(text), record))
            else:
                prompts.append(Prompt(line))
    if not prompts:
        raise MissingWeightsError(f"prompt file '{path}' holds no prompts")
    return tuple(prompts)


def load_prompt_sets(family: str, task_id: str, model: str = "SD3.5-M",
                     weights_missing: Callable[[], str | None] = sd35m_weights_missing,
                     weights_env: str = SD35M_ENV,
                     smoke_task: str | None = None) -> tuple[tuple[Prompt, ...], tuple[Prompt, ...]]:
    """(train, eval) prompts of a family from ``$OPGRPO_PROMPTS_DIR``; MissingWeightsError when absent.

    The message also says whether the task's model weights are missing (``weights_missing``, a cheap
    check naming ``weights_env``), so that one attempt tells the user everything to provide, and names the
    smoke variant (``smoke_task``, default ``<family>-sd35m-smoke-v1``) that runs without the files.
    """
    root = os.environ.get(PROMPTS_ENV)
    names = PROMPT_FILES[family]
    wanted = " and ".join(f"{PROMPTS_ENV}/{n}" for n in names)
    weights = weights_missing()
    also = f" (the {model} weights are missing too: set {weights_env})" if weights else ""
    smoke = smoke_task or f"{family}-sd35m-smoke-v1"
    if not root:
        raise MissingWeightsError(
            f"task '{task_id}' needs Flow-GRPO's prompt files: set {PROMPTS_ENV}=DIR to a copy of Flow-GRPO's "
            f"dataset/ folder holding {', '.join(names)}{also}; '{smoke}' runs on built-in sample prompts"
        )
    missing = [n for n in names if not (Path(root).expanduser() / n).is_file()]
    if missing:
        raise MissingWeightsError(f"task '{task_id}': {', '.join(missing)} not found under {PROMPTS_ENV}='{root}' "
                                  f"(expected {wanted}){also}")
    base = Path(root).expanduser()
    return read_prompt_file(base / names[0]), read_prompt_file(base / names[1])


# Built-in SAMPLE prompts for the smoke tasks: written for this project, a few per family, NOT the
# benchmark's prompt sets (those are Flow-GRPO's files). Quoted text is the OCR target.
SAMPLE_OCR_PROMPTS = (
    'A wooden sign at a trail head that says "NORTH RIDGE"',
    'A coffee cup printed with the word "MORNING"',
    'A neon shop sign reading "OPEN LATE" on a brick wall',
    'A birthday cake with "HAPPY 30" written in icing',
    'A street banner that says "SUMMER FAIR"',
    'A chalkboard menu with the title "SOUP OF THE DAY"',
)
SAMPLE_OCR_EVAL_PROMPTS = (
    'A book cover with the title "QUIET RIVERS"',
    'A parking sign that says "NO STOPPING"',
)
SAMPLE_PICKSCORE_PROMPTS = (
    "a cozy reading nook by a rainy window, warm light",
    "a red fox in fresh snow at dawn, detailed fur",
    "a lighthouse on a cliff during a storm, dramatic sky",
    "a bowl of ramen with steam rising, studio photo",
    "an astronaut tending a small garden on the moon",
    "a watercolor painting of a harbor town at sunset",
)
SAMPLE_PICKSCORE_EVAL_PROMPTS = (
    "a glass teapot with blooming tea on a wooden table",
    "a mountain lake reflecting autumn trees",
)


def _geneval(prompt: str, tag: str, include: list[dict[str, Any]],
             exclude: list[dict[str, Any]] | None = None) -> Prompt:
    meta: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    return Prompt(prompt, meta)


SAMPLE_GENEVAL_PROMPTS = (
    _geneval("a photo of a bicycle", "single_object", [{"class": "bicycle", "count": 1}]),
    _geneval("a photo of a cup and a laptop", "two_object",
             [{"class": "cup", "count": 1}, {"class": "laptop", "count": 1}]),
    _geneval("a photo of three apples", "counting", [{"class": "apple", "count": 3}],
             [{"class": "apple", "count": 4}]),
    _geneval("a photo of a green umbrella", "colors", [{"class": "umbrella", "count": 1, "color": "green"}]),
    _geneval("a photo of a dog left of a chair", "position",
             [{"class": "chair", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]),
    _geneval("a photo of a red bus and a white clock", "color_attr",
             [{"class": "bus", "count": 1, "color": "red"}, {"class": "clock", "count": 1, "color": "white"}]),
)
SAMPLE_GENEVAL_EVAL_PROMPTS = (
    _geneval("a photo of two cats", "counting", [{"class": "cat", "count": 2}], [{"class": "cat", "count": 3}]),
    _geneval("a photo of a vase above a bench", "position",
             [{"class": "bench", "count": 1}, {"class": "vase", "count": 1, "position": ["above", 0]}]),
)
SAMPLES: dict[str, tuple[tuple[Prompt, ...], tuple[Prompt, ...]]] = {
    "ocr": (tuple(Prompt(p) for p in SAMPLE_OCR_PROMPTS), tuple(Prompt(p) for p in SAMPLE_OCR_EVAL_PROMPTS)),
    "pickscore": (tuple(Prompt(p) for p in SAMPLE_PICKSCORE_PROMPTS),
                  tuple(Prompt(p) for p in SAMPLE_PICKSCORE_EVAL_PROMPTS)),
    "geneval": (SAMPLE_GENEVAL_PROMPTS, SAMPLE_GENEVAL_EVAL_PROMPTS),
}

# Flow-GRPO's SD3.5-M settings (its config/grpo.py: 48 groups x 24 images per epoch, two optimizer steps
# per epoch, T = 10, CFG 4.5, 40 evaluation steps, LoRA r32/alpha64, lr 3e-4, 512 px).
SD35M_TRAIN_DEFAULTS: dict[str, Any] = dict(
    prompts_per_iter=48, group_size=24, num_steps=10, noise_level=0.7, guidance=4.5, eval_num_steps=40,
    eval_guidance=4.5, optimizer_steps_per_iter=2, lora_rank=32, lora_alpha=64, lr=3e-4, ema_decay=0.9,
    ema_update_interval=8, cfg_detach_uncond=True, micro_batch=8, global_std=True,
)
"""Flow-GRPO's SD3.5-M recipe (EMA every 8 steps, CFG's unconditional branch detached in training).
``micro_batch=8`` is the size of Flow-GRPO's per-GPU sample = train batch: 16 transformer rows per call
with CFG, with gradient for one denoising step at a time, which is meant to fit one 80 GB GPU at 512 px.
Not measured here (no GPU in this project's CI); lower it with ``--set micro_batch=4`` if it does not."""
# Smoke: the same model and sampler, two groups of four, a short evaluation.
SMOKE_TRAIN_DEFAULTS: dict[str, Any] = dict(SD35M_TRAIN_DEFAULTS, prompts_per_iter=2, group_size=4,
                                            eval_num_steps=10)

# family -> (reward, beta, target, budget steps, description)
#   targets: Flow-GRPO's best (ALGORITHMS.md section 4); beta: 0.04 GenEval/OCR, 0.01 PickScore.
#   budget_steps [decision]: chosen above Flow-GRPO's reported training lengths; change with --steps.
#   eval_every [decision]: 40 optimizer steps (Flow-GRPO evaluates every 60 epochs = 120 steps; finer
#   cadence makes steps-to-target sharper at about 20% extra compute).
FAMILIES: dict[str, tuple[str, float, float, int, str]] = {
    "ocr": ("ocr", 0.04, 0.92, 2000, "text rendering; reward = OCR similarity of the quoted text"),
    "pickscore": ("pickscore", 0.01, 23.32, 4000, "human preference; reward = PickScore"),
    "geneval": ("geneval", 0.04, 0.95, 6000, "compositional generation; reward = GenEval correctness"),
}


def _sd35m_spec(family: str, smoke: bool) -> TaskSpec:
    reward, beta, target, budget, what = FAMILIES[family]
    task_id = f"{family}-sd35m-smoke-v1" if smoke else f"{family}-sd35m-v1"
    if smoke:
        train, evals = SAMPLES[family]
        description = f"SMOKE (built-in sample prompts, not comparable): SD3.5-Medium {what}"
    else:
        train, evals = load_prompt_sets(family, task_id)
        description = f"SD3.5-Medium 512 px, {what} (Flow-GRPO prompts)"
    return TaskSpec(
        id=task_id,
        description=description,
        backbone="sd35m",
        reward=reward,
        # GenEval: train on Flow-GRPO's partial score, evaluate GenEval's strict correctness (docs/REWARDS.md).
        reward_args={"mode": "partial"} if family == "geneval" else {},
        eval_metric="correct" if family == "geneval" else None,
        train_prompts=train,
        eval_prompts=evals,
        eval_noises_per_prompt=1,  # Flow-GRPO evaluates each held-out prompt once, from a fixed noise
        target=target,
        budget_steps=4 if smoke else budget,
        eval_every=2 if smoke else 40,
        train_defaults=dict(SMOKE_TRAIN_DEFAULTS if smoke else SD35M_TRAIN_DEFAULTS, beta=beta),
        needs=(f"GPU; SD3.5-M weights (${SD35M_ENV} or HF cache {SD35M_REPO}); reward '{reward}' weights"
               + ("" if smoke else f"; Flow-GRPO prompt files (${PROMPTS_ENV})")),
    )


# Module attribute -> builder; the registry imports "opgrpo_bench.tasks.sd3_tasks:<NAME>".
_LAZY_SPECS: dict[str, Callable[[], TaskSpec]] = {
    "OCR_SD35M_V1": lambda: _sd35m_spec("ocr", smoke=False),
    "PICKSCORE_SD35M_V1": lambda: _sd35m_spec("pickscore", smoke=False),
    "GENEVAL_SD35M_V1": lambda: _sd35m_spec("geneval", smoke=False),
    "OCR_SD35M_SMOKE_V1": lambda: _sd35m_spec("ocr", smoke=True),
    "PICKSCORE_SD35M_SMOKE_V1": lambda: _sd35m_spec("pickscore", smoke=True),
    "GENEVAL_SD35M_SMOKE_V1": lambda: _sd35m_spec("geneval", smoke=True),
}


@lru_cache(maxsize=None)
def _spec(name: str) -> TaskSpec:
    # lru_cache keeps successes only: a MissingWeightsError is raised again (and re-checked) next time.
    return _LAZY_SPECS[name]()


def __getattr__(name: str) -> TaskSpec:
    if name in _LAZY_SPECS:
        return _spec(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
