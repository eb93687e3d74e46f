"""A run's counters and the checkpoint that resumes it exactly.

A checkpoint holds everything that changes during a run: the counters, the trainable weights, the
optimizer and EMA states, the algorithm's state and the random generators (safetensors + JSON through
:mod:`opgrpo_bench.checkpoint`, never a pickle). It is written only between two iterations; resuming
replays from there, and since every random draw comes from the stored generators the replayed records are
identical to an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from opgrpo_bench.algorithms.base import Algorithm
from opgrpo_bench.checkpoint import CheckpointError, load_state, save_state
from opgrpo_bench.core.ema import ParameterEMA
from opgrpo_bench.errors import UserError

CHECKPOINT = "checkpoint.safetensors"
"""The checkpoint's file name in a run directory."""


@dataclass
class RunState:
    """Counters of a run (checkpointed); see :mod:`opgrpo_bench.trainer` for their conventions."""

    iteration: int = 0
    step: int = 0
    samples: int = 0
    nfe: int = 0
    wall_s: float = 0.0


def counters(saved: Any) -> RunState:
    """The :class:`RunState` of a loaded checkpoint, each counter checked (a hand-edited header with a string
    step would otherwise fail far from its cause); :class:`CheckpointError` naming the first bad one."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError("its 'state' is not an object of counters")
    state = RunState(**saved["state"])
    for f in dataclasses.fields(RunState):
        value = getattr(state, f.name)
        real = f.type in ("float", float)
        if isinstance(value, bool) or not isinstance(value, (int, float) if real else int) or value < 0:
            raise CheckpointError(f"'{f.name}' is {value!r}, expected a non-negative "
                                  f"{'number' if real else 'integer'}")
    return state


@dataclass
class TrainingState:
    """The mutable objects of a run that a checkpoint captures and restores."""

    params: Sequence[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: ParameterEMA | None
    algorithm: Algorithm
    prompt_gen: torch.Generator
    noise_gen: torch.Generator

    def save(self, path: Path, state: RunState) -> None:
        """Write ``state`` and every captured object to ``path`` (atomically)."""
        save_state(path, {
            "state": dataclasses.asdict(state),
            "params": [p.detach() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "algorithm": self.algorithm.state_dict(),
            "prompt_gen": self.prompt_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
        })

    def load(self, path: Path) -> RunState:
        """Restore every captured object from ``path`` and return its counters; a damaged or mismatched
        checkpoint is a :class:`UserError` naming the way out."""
        try:
            saved = load_state(path)
            state = counters(saved)
            if len(saved["params"]) != len(self.params):
                raise CheckpointError(f"{path} holds {len(saved['params'])} tensors for {len(self.params)} "
                                      "trainable parameters")
            with torch.no_grad():
                for p, value in zip(self.params, saved["params"]):
                    p.copy_(value)
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.ema is not None and saved["ema"] is not None:
                self.ema.load_state_dict(saved["ema"])
            self.algorithm.load_state_dict(saved["algorithm"])
            self.prompt_gen.set_state(saved["prompt_gen"])
            self.noise_gen.set_state(saved["noise_gen"])
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError,
                RecursionError) as err:
            raise UserError(f"cannot resume from {path}: {str(err).splitlines()[0]}; run with --fresh to "
                            "retrain this run") from None
        return state
