"""RL algorithms. Importing this package registers the built-ins; classes are imported on first use.

Each entry is a :class:`Preset`: an algorithm class and the config fields it changes. OP-GRPO's ablations
(ALGORITHMS.md 3.4) differ from ``op-grpo`` in exactly one field each. A ``*-ref`` preset is an
algorithm's reference recipe (its public code's settings), beside the common-footing preset of the same
name without the suffix (ALGORITHMS.md, "Reference recipes").
"""

from opgrpo_bench.algorithms.presets import Preset
from opgrpo_bench.registry import ALGORITHMS

_FLOW = "opgrpo_bench.algorithms.flow_grpo:FlowGRPO"
_OP = "opgrpo_bench.algorithms.op_grpo:OPGRPO"

PRESETS = {
    "flow-grpo": Preset(_FLOW, {}, "Flow-GRPO: on-policy GRPO over SDE trajectories (baseline)"),
    "flow-grpo-ref": Preset(_FLOW, {}, "Flow-GRPO's reference recipe: its SD3.5 defaults, which are the "
                                       "common footing (the same settings as flow-grpo)"),
    "op-grpo": Preset(_OP, {}, "OP-GRPO: replay + truncation at t_off + sequence-level weight"),
    "op-grpo-no-replay": Preset(_OP, {"replay_proportion": 0.0}, "ablation: no replay (equals flow-grpo)"),
    "op-grpo-no-correction": Preset(_OP, {"correction": "none"}, "ablation: replayed samples weighted w = 1"),
    "op-grpo-naive-is": Preset(_OP, {"correction": "naive"}, "ablation: per-step ratio p_theta/p_off on the prefix"),
    "op-grpo-no-truncation": Preset(_OP, {"t_off": 10**9}, "ablation: whole stored trajectory, stored reward"),
    "op-grpo-rho5": Preset(_OP, {"replay_proportion": 0.05}, "ablation: replay proportion 5%"),
    "op-grpo-rho25": Preset(_OP, {"replay_proportion": 0.25}, "ablation: replay proportion 25%"),
    "flow-grpo-fast": Preset("opgrpo_bench.algorithms.flow_grpo_fast:FlowGRPOFast", {},
                             "Flow-GRPO-Fast: SDE in a random 2-step window of the first half, ODE elsewhere"),
    "flow-grpo-fast-ref": Preset("opgrpo_bench.algorithms.flow_grpo_fast:FlowGRPOFastRef", {},
                                 "Flow-GRPO-Fast's reference recipe: clip 1e-5, no KL, noise level 0.8"),
    "flow-grpo-cps-ref": Preset("opgrpo_bench.algorithms.flow_grpo_cps:FlowGRPOCPSRef", {},
                                "Flow-GRPO's fast_nocfg CPS recipe: CPS in a random 3-step window of the first "
                                "half, noise level 0.8, clip 1e-5, no KL"),
    "flow-grpo-cps": Preset("opgrpo_bench.algorithms.flow_grpo_cps:FlowGRPOCPS", {},
                            "Flow-GRPO with the coefficient-preserving sampler (CPS), clip 1e-5, no KL"),
    "dance-grpo": Preset("opgrpo_bench.algorithms.dance_grpo:DanceGRPO", {},
                         "DanceGRPO: constant-noise SDE, shared group noise, a random 60% of each sample's "
                         "steps trained (never the last)"),
    "dance-grpo-ref": Preset("opgrpo_bench.algorithms.dance_grpo:DanceGRPO", {"global_std": False, "beta": 0.0},
                             "DanceGRPO's reference recipe: dance-grpo with per-group advantages and no KL"),
    "grpo-guard": Preset("opgrpo_bench.algorithms.grpo_guard:GRPOGuard", {},
                         "GRPO-Guard: Flow-GRPO on a regulated, step-normalised ratio"),
    "grpo-guard-ref": Preset("opgrpo_bench.algorithms.grpo_guard:GRPOGuardRef", {},
                             "GRPO-Guard's reference recipe: per-step 1/|dt| gradient weight, clip 2e-6"),
    "flow-dppo": Preset("opgrpo_bench.algorithms.flow_dppo:FlowDPPO", {},
                        "Flow-DPPO: unclipped ratio, masked where the exact transition KL leaves the trust region"),
    "diffusion-nft": Preset("opgrpo_bench.algorithms.diffusion_nft:DiffusionNFT", {},
                            "DiffusionNFT: likelihood-free regression on the forward process (v+ / v-)"),
    "diffusion-nft-ref": Preset("opgrpo_bench.algorithms.diffusion_nft:DiffusionNFTRef", {},
                                "DiffusionNFT's reference recipe: x0-space adaptive loss, schedule timesteps, "
                                "reference KL, sampling CFG in training, ODE rollouts, equal groups at r = 1/2"),
    "mixgrpo": Preset("opgrpo_bench.algorithms.mixgrpo:MixGRPO", {},
                      "MixGRPO: a sliding SDE window that advances over training, ODE elsewhere"),
    "mixgrpo-ref": Preset("opgrpo_bench.algorithms.mixgrpo:MixGRPORef", {},
                          "MixGRPO's reference recipe: shared group noise, per-group advantages, no KL"),
}

for _name, _preset in PRESETS.items():
    ALGORITHMS.register(_name, _preset, description=_preset.description)

__all__ = ["PRESETS", "Preset"]
