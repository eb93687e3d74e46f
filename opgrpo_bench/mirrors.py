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


class WandbMirror:
    """Scalars of step and eval records into an offline wandb run (never online)."""

    def __init__(self, run_dir: Path, run_start: dict[str, Any] | None = None):
        import wandb

        os.environ["WANDB_MODE"] = "offline"
        start = run_start or {}
        self.run = wandb.init(mode="offline", dir=str(run_dir), project="opgrpo-bench",
                              name=start.get("run_id", run_dir.name), config=start.get("config") or {},
                              settings=wandb.Settings(silent=True, console="off"))
        self.last_step = -1

    def write(self, record: dict[str, Any]) -> None:
        if is_progress(record):
            step = int(record["step"])
            if step < self.last_step:  # a resumed run replaying: wandb's steps only grow
                return
            self.last_step = step
            self.run.log(_scalars(record), step=step)

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
