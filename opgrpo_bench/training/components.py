"""Building what a run trains with: reward, backbone with adapters, optimizer, EMA and generators.

The order matters and is kept here: the reward first (a missing reward model fails before a large
backbone loads), the LoRA initialisation from the run's seed, then FSDP sharding of the frozen weights
and ``torch.compile`` (both in place, so module and parameter names stay those of checkpoints and
exported adapters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opgrpo_bench.backbones.base import Backbone
from opgrpo_bench.config import TrainConfig
from opgrpo_bench.core.ema import ParameterEMA
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.worker import AsyncRewardWorker
from opgrpo_bench.tasks.spec import TaskSpec

LATENT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``TrainConfig.latent_dtype`` -> torch dtype."""

NOISE_SEED_OFFSET = 1_000_003
"""The SDE noise generator's seed is the run's seed plus this (the prompt generator's is the seed)."""


@dataclass
class Components:
    """A run's reward (and gold reward), backbone, trainable parameters, optimizer, EMA and generators."""

    reward: Any
    gold: Any | None
    scorer: AsyncRewardWorker
    backbone: Backbone
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: ParameterEMA | None
    prompt_gen: torch.Generator
    noise_gen: torch.Generator

    @property
    def device(self) -> torch.device:
        return getattr(self.backbone, "device", torch.device("cpu"))


def build_components(task: TaskSpec, config: TrainConfig, dist: Distributed) -> Components:
    """Everything a run of ``task`` trains with, under ``config`` and the process layout ``dist``."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    reward = REWARDS.get(task.reward)(**task.reward_args)
    # evaluation only, never trained on: a second reader that makes reward hacking visible
    gold = REWARDS.get(task.gold_reward)(**task.gold_reward_args) if task.gold_reward else None
    if dist.lockstep and task.backbone_args.get("max_batch"):
        # a call split by row count would make a different number of weight gathers on each rank
        raise UserError("--fsdp needs the backbone's max_batch unset (micro_batch bounds a training call's "
                        f"rows); task {task.id} sets max_batch={task.backbone_args['max_batch']}")
    torch.manual_seed(config.seed)  # LoRA initialisation
    backbone: Backbone = task.build_backbone()
    backbone.add_lora(config.lora_rank, config.lora_alpha)
    if config.gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    dist.shard_frozen(backbone.transformer, backbone.trainable_parameters())
    if config.compile:
        backbone.transformer.compile()
    params = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=config.adam_betas)
    ema = ParameterEMA(params, config.ema_decay, config.ema_update_interval) if config.ema_decay > 0 else None
    return Components(reward, gold, AsyncRewardWorker(reward, max_pending=2), backbone, params, optimizer, ema,
                      torch.Generator().manual_seed(config.seed),
                      torch.Generator().manual_seed(config.seed + NOISE_SEED_OFFSET))
