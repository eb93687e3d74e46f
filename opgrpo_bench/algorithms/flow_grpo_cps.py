"""Flow-GRPO with the coefficient-preserving sampler (CPS; Flow-GRPO's ``sde_type="cps"``).

The rollouts take :func:`opgrpo_bench.core.sde.cps_step_with_logprob` instead of the SDE step: the
next latent is ``(1 - sigma') x0_hat + sqrt(sigma'^2 - s^2) eps_hat + s eps`` with
``s = sigma' sin(a pi / 2)``, so the noise and signal coefficients stay those of the flow's marginal at
``sigma'`` (docs/ALGORITHMS.md, section 1). Its "log-prob" is ``-mean((x' - mean)^2)``, without the
variance and constants, so ratios live on another scale than the SDE's: Flow-GRPO's CPS configurations
clip at 1e-5 (and sample with noise level 0.8, a trainer setting: ``--set noise_level=0.8``). The update
is Flow-GRPO's without the KL term: every public CPS configuration sets ``beta = 0``, and the term cannot
work here. It divides by ``s^2`` and ``s = sigma' sin(a pi / 2)`` vanishes with ``sigma'``: at the last
trained step of digits-v1 (``s`` about 9e-4) its gradient was about 500 times the whole policy gradient
and no seed learned. A ``beta > 0`` is refused.

:class:`FlowGRPOCPSRef` (preset ``flow-grpo-cps-ref``) is the reference recipe, Flow-GRPO's
``*_fast_nocfg`` CPS configurations: the CPS step only in a random 3-step window of the first half of the
schedule (ODE elsewhere, only the window trained), noise level 0.8, clip 1e-5, no KL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from opgrpo_bench.algorithms.base import SamplerSettings
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.algorithms.flow_grpo_fast import FlowGRPOFastRef, FlowGRPOFastRefConfig


@dataclass
class FlowGRPOCPSConfig(FlowGRPOConfig):
    """Flow-GRPO's settings with CPS's own clip range and no KL term."""

    clip_range: float = 1e-5
    """The PPO clip on CPS's ratio scale (Flow-GRPO's CPS configurations)."""
    beta: float = 0.0
    """No KL term (every public CPS configuration; see the module docstring)."""


def refuse_cps_kl(beta: float) -> None:
    """Raise ValueError for a KL weight ``beta > 0`` on the CPS step (see the module docstring)."""
    if beta > 0:
        raise ValueError(f"beta={beta}: the KL term of the CPS step divides by s^2 with "
                         "s = sigma' sin(a pi/2), which vanishes at the last steps; use beta=0, as every "
                         "public CPS configuration does")


class FlowGRPOCPS(FlowGRPO):
    """Flow-GRPO sampling and training with the coefficient-preserving step."""

    name = "flow-grpo-cps"
    config_cls = FlowGRPOCPSConfig

    def __init__(self, config: FlowGRPOCPSConfig | None = None):
        super().__init__(config)
        refuse_cps_kl(self.config.beta)

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        return replace(defaults, transition="cps")


@dataclass
class FlowGRPOCPSRefConfig(FlowGRPOFastRefConfig):
    """Flow-GRPO's ``*_fast_nocfg`` CPS configuration: a 3-step window in the first half, noise level 0.8,
    clip 1e-5, no KL, batch-std advantages."""

    window_size: int = 3
    """Consecutive CPS transitions per iteration (the configurations' ``sde_window_size``)."""


class FlowGRPOCPSRef(FlowGRPOFastRef, FlowGRPOCPS):
    """The coefficient-preserving step inside Flow-GRPO-Fast's random window (ODE elsewhere): Flow-GRPO-Fast's
    recipe (window, noise level, clip, no KL) with CPS's transition and its refusal of a KL term."""

    name = "flow-grpo-cps-ref"
    config_cls = FlowGRPOCPSRefConfig
    config: FlowGRPOCPSRefConfig
