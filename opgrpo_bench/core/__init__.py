"""Pure tensor math shared by every algorithm and backbone (no diffusers imports)."""

from opgrpo_bench.core.advantages import group_advantages, nonzero_std_group_mask
from opgrpo_bench.core.losses import approx_kl, clipped_surrogate, kl_to_reference, sequence_log_weight
from opgrpo_bench.core.replay import ReplayBuffer, ReplayEntry
from opgrpo_bench.core.sde import cps_step_with_logprob, expand_like, ode_step, sde_step_with_logprob

__all__ = [
    "ReplayBuffer",
    "ReplayEntry",
    "approx_kl",
    "clipped_surrogate",
    "cps_step_with_logprob",
    "expand_like",
    "group_advantages",
    "kl_to_reference",
    "nonzero_std_group_mask",
    "ode_step",
    "sde_step_with_logprob",
    "sequence_log_weight",
]
