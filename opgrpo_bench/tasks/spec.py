"""Task specs: what a benchmark run trains on, how it is scored, and what "reaching the target" means.

A task id carries its version (``digits-v1``). Changing prompts, reward, target or base model makes a
new version: results of different versions are never compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One prompt and the metadata a reward may need (e.g. the digit asked for)."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark task.

    Attributes:
        id: versioned id, e.g. ``digits-v1``.
        description: one line for ``opgrpo-bench list tasks``; a built-in task takes it, and ``needs``,
            from its registry entry (:func:`listed`), the one copy.
        backbone: registered backbone name (``opgrpo-bench list backbones``); ``backbone_args`` the kwargs
            of its factory. :meth:`build_backbone` builds it through the ``BACKBONES`` registry.
        reward: registered reward name; ``reward_args`` its constructor kwargs.
        train_prompts / eval_prompts: the RL prompt set and the held-out evaluation set.
        eval_noises_per_prompt: evaluation draws this many fixed initial noises per eval prompt.
        target: eval score that counts as "reached" (main metric = mean reward on eval prompts).
        higher_is_better: direction of the main metric.
        budget_steps: default optimizer-step budget of a run.
        eval_every: evaluation cadence in optimizer steps.
        train_defaults: trainer/algorithm settings scaled to this task (override library defaults).
        eval_metric: the reward component (a key of ``RewardOutput.components``) that is the eval score;
            None = the reward's ``scores``. Lets a task train on a shaped reward and evaluate a strict one
            (GenEval: partial score for training, all-or-nothing correctness for evaluation).
        gold_reward: registered reward scored on the eval images beside the reward and never trained on
            (a held-out "gold" reader, so reward hacking shows as a gap); ``gold_reward_args`` its kwargs.
            Recorded as ``gold`` (and ``gold/<component>``) in every eval record; None = no gold metric.
        needs: what the task needs to run (shown by ``list tasks``).
    """

    id: str
    description: str
    backbone: str
    reward: str
    train_prompts: tuple[Prompt, ...]
    eval_prompts: tuple[Prompt, ...]
    target: float
    reward_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    eval_noises_per_prompt: int = 4
    higher_is_better: bool = True
    budget_steps: int = 200
    eval_every: int = 10
    train_defaults: dict[str, Any] = field(default_factory=dict)
    eval_metric: str | None = None
    gold_reward: str | None = None
    gold_reward_args: dict[str, Any] = field(default_factory=dict)
    needs: str = "CPU"

    def build_backbone(self) -> Any:
        """The task's base model (a Backbone, no LoRA yet), built by its ``BACKBONES`` entry."""
        from opgrpo_bench.registry import BACKBONES

        return BACKBONES.get(self.backbone)(**self.backbone_args)

    @property
    def version(self) -> str:
        return self.id.rsplit("-", 1)[-1]

    @property
    def prompt_hash(self) -> str:
        """Content hash of both prompt sets (recorded in every run)."""
        payload = json.dumps([[(p.text, p.meta) for p in self.train_prompts],
                              [(p.text, p.meta) for p in self.eval_prompts]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def listed(task_id: str) -> dict[str, str]:
    """``description`` and ``needs`` of a built-in task as its ``TASKS`` entry lists them (the one copy:
    ``opgrpo-bench list tasks`` shows the entry without building the spec), for its :class:`TaskSpec`."""
    from opgrpo_bench.registry import TASKS

    entry = TASKS.entry(task_id)
    return {"description": entry.description, "needs": entry.meta.get("needs", "")}
