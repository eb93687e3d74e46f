"""What the tasks on real, external weights share, whatever the model family (SD3.5, FLUX.1, Wan2.1).

- Where a model's weights come from is its :class:`~opgrpo_bench.backbones.folders.WeightsSource`, beside
  its loader in :mod:`opgrpo_bench.backbones.models`; the prompt check below names it when they are missing.
- Flow-GRPO's prompt files (``$OPGRPO_PROMPTS_DIR``, a copy of its ``dataset/`` folder) and the built-in
  SAMPLE prompts of the smoke variants: :func:`load_prompt_sets`, :data:`SAMPLES`.
- :func:`paper_task_spec`: one paper task or its smoke variant from a family's settings (the fields every
  such task sets the same way: one eval noise per prompt, a 4-step smoke budget, evaluation every 40 steps).
- :func:`lazy_specs`: a module ``__getattr__`` that builds those specs on first access, because building
  one reads the prompt files and a missing file must raise :class:`~opgrpo_bench.errors.MissingWeightsError`
  with one line before anything heavy is loaded.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.backbones.folders import WeightsSource
from opgrpo_bench.errors import MissingWeightsError
from opgrpo_bench.tasks.spec import Prompt, TaskSpec, listed

PROMPTS_ENV = "OPGRPO_PROMPTS_DIR"


# -- prompts -------------------------------------------------------------------------------------------
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


def load_prompt_sets(family: str, task_id: str, model: str, weights: WeightsSource,
                     smoke_task: str) -> tuple[tuple[Prompt, ...], tuple[Prompt, ...]]:
    """(train, eval) prompts of a family from ``$OPGRPO_PROMPTS_DIR``; MissingWeightsError when absent.

    The message also says whether the task's model weights are missing (a cheap check naming their
    environment variable), so that one attempt tells the user everything to provide, and names the smoke
    variant that runs without the files.
    """
    root = os.environ.get(PROMPTS_ENV)
    names = PROMPT_FILES[family]
    wanted = " and ".join(f"{PROMPTS_ENV}/{n}" for n in names)
    also = f" (the {model} weights are missing too: set {weights.env})" if weights.missing() else ""
    if not root:
        raise MissingWeightsError(
            f"task '{task_id}' needs Flow-GRPO's prompt files: set {PROMPTS_ENV}=DIR to a copy of Flow-GRPO's "
            f"dataset/ folder holding {', '.join(names)}{also}; '{smoke_task}' runs on built-in sample prompts"
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


# -- specs ---------------------------------------------------------------------------------------------
def paper_task_spec(task_id: str, *, smoke: bool, smoke_task: str, family: str, weights: WeightsSource,
                    model: str, backbone: str, reward: str, target: float, budget: int,
                    train_defaults: dict[str, Any], **fields: Any) -> TaskSpec:
    """A paper task (Flow-GRPO's prompt files) or, with ``smoke``, its variant on the built-in samples.

    Args:
        task_id: this spec's id; ``smoke_task``: the id of the smoke variant (named in error messages).
        family: the prompt family (``ocr``, ``pickscore``, ``geneval``).
        weights: where the model's weights come from; ``model`` names the model in messages ("FLUX.1-dev").
        target, budget: steps-to-target's target and the full task's step budget (a smoke run has 4).
        train_defaults: the task's training settings (the caller picks the smoke ones).
        **fields: further :class:`TaskSpec` fields (``reward_args``, ``eval_metric``).

    Description and needs are the task's registry entry's (:func:`~opgrpo_bench.tasks.spec.listed`).
    """
    if smoke:
        train, evals = SAMPLES[family]
    else:
        train, evals = load_prompt_sets(family, task_id, model=model, weights=weights, smoke_task=smoke_task)
    return TaskSpec(
        id=task_id,
        **listed(task_id),
        backbone=backbone,
        reward=reward,
        train_prompts=train,
        eval_prompts=evals,
        eval_noises_per_prompt=1,  # Flow-GRPO evaluates each held-out prompt once, from a fixed noise
        target=target,
        budget_steps=4 if smoke else budget,
        # [decision] every 40 optimizer steps (Flow-GRPO evaluates every 60 epochs = 120 steps; the finer
        # cadence makes steps-to-target sharper at about 20% extra compute)
        eval_every=2 if smoke else 40,
        train_defaults=dict(train_defaults),
        **fields,
    )


def lazy_specs(module: str, builders: dict[str, Callable[[], TaskSpec]]
               ) -> tuple[Callable[[str], TaskSpec], Callable[[str], TaskSpec]]:
    """``(spec, __getattr__)`` for a module whose task specs are built on first access.

    ``builders`` maps a module attribute (what the registry names, "module:ATTRIBUTE") to its builder.
    ``spec`` caches successes only (``spec.cache_clear()`` empties it): a MissingWeightsError is raised
    again, and the files re-checked, at the next access.
    """

    @lru_cache(maxsize=None)
    def spec(name: str) -> TaskSpec:
        return builders[name]()

    def getattr_(name: str) -> TaskSpec:
        if name in builders:
            return spec(name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return spec, getattr_
