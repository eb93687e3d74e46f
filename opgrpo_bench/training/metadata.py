"""What a ``run_start`` record says about the run and the machine it ran on."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import opgrpo_bench
from opgrpo_bench.algorithms.base import Algorithm
from opgrpo_bench.config import TrainConfig
from opgrpo_bench.tasks.spec import TaskSpec


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose code decides a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("opgrpo-bench", "torch", "diffusers", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    """The commit of the installed source tree, when it is a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(opgrpo_bench.__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_start_fields(task: TaskSpec, algorithm: Algorithm, algorithm_name: str, config: TrainConfig,
                     run_id: str, config_hash: str | None, world_size: int, fsdp: bool, precision: str,
                     device: torch.device, setup: str = "", variant: str = "") -> dict[str, Any]:
    """The fields of a run's ``run_start`` record; ``setup`` and ``variant`` (the trainer and algorithm
    settings changed from the task's and preset's defaults) only when there are any, so the records of a
    run at the defaults stay those of earlier versions."""
    return dict(**({"setup": setup} if setup else {}), **({"variant": variant} if variant else {}),
        run_id=run_id, task=task.id, task_version=task.version, prompt_hash=task.prompt_hash,
        num_train_prompts=len(task.train_prompts), num_eval_prompts=len(task.eval_prompts),
        algorithm=algorithm_name, algorithm_class=type(algorithm).__name__, seed=config.seed,
        config={"train": dataclasses.asdict(config), "algorithm": dataclasses.asdict(algorithm.config)},
        config_hash=config_hash, target=task.target, higher_is_better=task.higher_is_better,
        budget_steps=config.steps, reward=task.reward, eval_metric=task.eval_metric, world_size=world_size,
        fsdp=fsdp, gold_reward=task.gold_reward, gold_reward_args=task.gold_reward_args, precision=precision,
        versions=package_versions(), git_sha=git_sha(), device=device_name(device),
        start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def follower_end(rank: int, steps: int | None = None) -> dict[str, Any]:
    """What a data-parallel rank other than 0 returns for a run: the results are rank 0's, so none here."""
    return {"type": "run_end", "status": "completed", "rank": rank, "steps": steps, "steps_to_target": None,
            "censored": None, "best_score": None, "final_score": None, "wall_s": 0.0}
