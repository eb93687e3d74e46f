"""Optional mirrors of a run's records to TensorBoard and wandb (``opgrpo-bench run --log tensorboard``).

``metrics.jsonl`` stays the source of truth: the leaderboard, resume and every check read only it. A
mirror receives each record after it is written and logs its numeric fields as scalars at the record's
optimizer step (``step/...`` for step records, ``eval/...`` for evaluations). A resumed run replays the
records after its checkpoint, so a mirror may see a step twice; TensorBoard keeps both points and wandb
drops the repeat, neither changes the JSONL.

- ``tensorboard``: event files in ``<run_dir>/tensorboard/`` (package ``tensorboard``, extra ``log``).
- ``wandb``: an *offline* run in ``<run_dir>/wandb/`` (package ``wandb``, extra ``log``); nothing is
  sent anywhere; ``wandb sync`` uploads it later where a network is available.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from opgrpo_bench.errors import UserError
from opgrpo_bench.schema import is_progress, scalars

MIRRORS = ("tensorboard", "wandb")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    prefix = "eval" if record.get("type") == "eval" else "step"
    return {key if key.startswith(("eval/", "gold/")) and prefix == "eval" else f"{prefix}/{key}": value
            for key, value in scalars(record).items()}


class TensorBoardMirror:
    """Scalars of step and eval records into TensorBoard event files."""

    def __init__(self, run_dir: Path, run_start: dict[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if is_progress(record):
            for name, value in _scalars(record).items():
                self.writer.add_scalar(name, value, global_step=int(record["step"]))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


WANDB_MODE_ENV, WANDB_PROJECT_ENV = "OPGRPO_WANDB_MODE", "OPGRPO_WANDB_PROJECT"
"""``offline`` (the default: a local run for ``wandb sync``) or ``online`` where the user has a network; the
project (default ``opgrpo-bench``)."""
RUN_END_SUMMARY = ("steps_to_target", "samples_to_target", "nfe_to_target", "censored", "best_score",
                   "final_score", "steps")


def wandb_run_id(run_start: dict[str, Any], run_dir: Path) -> str:
    """A stable wandb run id for a run: the same run directory and configuration resume one wandb run."""
    import hashlib

    key = f"{run_start.get('run_id', run_dir.name)}|{run_start.get('config_hash')}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class WandbMirror:
    """Scalars of step and eval records into a wandb run: offline unless ``$OPGRPO_WANDB_MODE=online``; one
    wandb run per run (a stable id, resumed when the run continues), grouped by ``task/algorithm``, tagged
    with task, algorithm and seed, the identity and configuration in its config and the outcome of
    ``run_end`` in its summary."""

    def __init__(self, run_dir: Path, run_start: dict[str, Any] | None = None):
        import wandb

        mode = os.environ.get(WANDB_MODE_ENV, "offline")
        if mode not in ("offline", "online"):
            raise UserError(f"${WANDB_MODE_ENV} must be 'offline' or 'online', not {mode!r}")
        os.environ["WANDB_MODE"] = mode
        start = run_start or {}
        task, algorithm, seed = start.get("task"), start.get("algorithm"), start.get("seed")
        identity = {"task": task, "algorithm": algorithm, "seed": seed, "config_hash": start.get("config_hash"),
                    "setup": start.get("setup"), "variant": start.get("variant")}
        self.run = wandb.init(mode=mode, dir=str(run_dir), project=os.environ.get(WANDB_PROJECT_ENV, "opgrpo-bench"),
                              id=wandb_run_id(start, run_dir), resume="allow",
                              name=start.get("run_id", run_dir.name), group=f"{task}/{algorithm}",
                              tags=[str(t) for t in (task, algorithm, f"seed{seed}") if t is not None],
                              config={**identity, **(start.get("config") or {})},
                              settings=wandb.Settings(silent=True, console="off"))
        self.last_step = -1

    def write(self, record: dict[str, Any]) -> None:
        if record.get("type") == "run_end":
            self.summarise({k: record.get(k) for k in RUN_END_SUMMARY})
        if is_progress(record):
            step = int(record["step"])
            if step < self.last_step:  # a resumed run replaying: wandb's steps only grow
                return
            self.last_step = step
            self.run.log(_scalars(record), step=step)

    def summarise(self, outcome: dict[str, Any]) -> None:
        """The run's outcome (steps to target, best and final score) as the wandb run's summary."""
        self.run.summary.update(outcome)

    def close(self) -> None:
        self.run.finish()


def check_mirrors(names: Sequence[str]) -> list[str]:
    """The mirror names, each once; an unknown one or a missing package is one :class:`UserError` line
    (checked before any model loads)."""
    out = []
    for name in names:
        if name not in MIRRORS:
            import difflib

            hint = difflib.get_close_matches(name, MIRRORS, n=1)
            raise UserError(f"unknown --log '{name}'" + (f". Did you mean: {hint[0]}" if hint else "")
                            + f" (choose from {', '.join(MIRRORS)})")
        if name == "wandb" and os.environ.get(WANDB_MODE_ENV, "offline") not in ("offline", "online"):
            raise UserError(f"${WANDB_MODE_ENV} must be 'offline' or 'online', not "
                            f"{os.environ[WANDB_MODE_ENV]!r}")
        module = "tensorboard" if name == "tensorboard" else "wandb"
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--log {name} needs the {module} package: pip install 'opgrpo-bench[log]'") from None
        if name not in out:
            out.append(name)
    return out


def open_mirrors(names: Sequence[str], run_dir: Path, run_start: dict[str, Any] | None) -> list[Any]:
    return [TensorBoardMirror(run_dir, run_start) if n == "tensorboard" else WandbMirror(run_dir, run_start)
            for n in names]
