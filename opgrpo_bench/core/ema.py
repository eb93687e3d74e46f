"""Exponential moving average of the trainable weights, used for evaluation (Flow-GRPO's EMA).

After optimizer step ``s`` (1-based), when ``s % update_interval == 0``::

    d = min(s / (9 + s), decay)        # warm-up: early averages forget fast (d = 0.1 at s = 1)
    ema <- d * ema + (1 - d) * param

This is Flow-GRPO's EMA rule written with a 1-based step (its ``(1 + k) / (10 + k)`` for the 0-based
step ``k``, updated when ``(k + 1) % interval == 0``); its SD3.5 recipe uses decay 0.9 and an interval
of 8. The warm-up counts optimizer steps, not EMA updates, so the interval does not stretch it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator, Sequence

import torch

__all__ = ["ParameterEMA", "ema_decay_at"]


def ema_decay_at(step: int, decay: float) -> float:
    """The decay applied at optimizer step ``step`` (1-based): ``min(step / (9 + step), decay)``."""
    return min(step / (9 + step), decay)


class ParameterEMA:
    """EMA copies of a list of parameters.

    Args:
        params: the trainable parameters (their current values initialise the average).
        decay: the decay's upper bound (Flow-GRPO: 0.9).
        update_interval: update after every ``update_interval``-th optimizer step (Flow-GRPO's SD3.5: 8).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float, update_interval: int = 1):
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.shadow = [p.detach().clone() for p in params]
        self.updates = 0

    @torch.no_grad()
    def step(self, params: Sequence[torch.nn.Parameter], step: int) -> None:
        """Called after optimizer step ``step`` (1-based); updates the average on the interval."""
        if step % self.update_interval:
            return
        d = ema_decay_at(step, self.decay)
        for s, p in zip(self.shadow, params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1

    def applied(self, params: Sequence[torch.nn.Parameter]) -> AbstractContextManager[None]:
        """Context in which ``params`` hold the average; their own values are restored on exit."""
        return holding(params, self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "update_interval": self.update_interval, "updates": self.updates,
                "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors for {len(self.shadow)} parameters")
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
        self.updates = int(state["updates"])


@contextmanager
@torch.no_grad()
def holding(params: Sequence[torch.nn.Parameter], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Context in which ``params`` hold ``values`` (e.g. an average, or the weights a rollout was sampled
    with); their own values are restored on exit."""
    saved = [p.detach().clone() for p in params]
    for p, v in zip(params, values):
        p.copy_(v)
    try:
        yield
    finally:
        for p, v in zip(params, saved):
            p.copy_(v)
