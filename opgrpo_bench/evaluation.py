"""Evaluation of a policy on a task's held-out prompts: the one definition of a run's eval score.

The trainer calls it between optimizer steps; ``opgrpo-bench eval`` calls it on a saved adapter, so a
re-evaluation is the same computation as the run's own evaluations (same prompts, same fixed noises, same
ODE schedule, same reward and gold reward).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opgrpo_bench.backbones.base import Backbone, index_cond
from opgrpo_bench.errors import UserError
from opgrpo_bench.rewards.base import RewardOutput
from opgrpo_bench.sampling import sample_ode
from opgrpo_bench.tasks.spec import TaskSpec

EVAL_NOISE_SEED = 20261126
"""Evaluation noises are the same for every run of a task (seed- and algorithm-independent)."""
SLICE = 256
"""Eval samples sampled, decoded and scored together (the ODE sampler's batch as well)."""


def _concat(outs: list[RewardOutput]) -> RewardOutput:
    """One reward output from the outputs of consecutive slices (per-sample tensors concatenated)."""
    if len(outs) == 1:
        return outs[0]
    return RewardOutput(scores=torch.cat([o.scores for o in outs]),
                        components={k: torch.cat([o.components[k] for o in outs]) for k in outs[0].components})


class Evaluator:
    """Scores ODE samples of ``task.eval_prompts`` (each with ``eval_noises_per_prompt`` fixed noises).

    Args:
        task: the task whose eval prompts, reward component and gold reward are used.
        backbone: the policy (with its adapters; the caller applies EMA weights around the call).
        reward: the task's reward; gold: its gold reward or None.
        num_steps: ODE steps; guidance: CFG scale.
    """

    def __init__(self, task: TaskSpec, backbone: Backbone, reward: Any, gold: Any | None, num_steps: int,
                 guidance: float):
        self.task, self.backbone, self.reward, self.gold, self.guidance = task, backbone, reward, gold, guidance
        device = getattr(backbone, "device", torch.device("cpu"))
        self.sigmas = backbone.sigmas(num_steps).to(device)
        k = task.eval_noises_per_prompt
        self.prompts = [p for p in task.eval_prompts for _ in range(k)]
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)  # CPU draws: the same noises on any device
        self.noise = torch.randn((len(self.prompts), *backbone.latent_shape), generator=gen).to(device)
        rows = torch.arange(len(task.eval_prompts)).repeat_interleave(k).to(device)
        self.cond = index_cond(backbone.encode([p.text for p in task.eval_prompts]), rows)
        self.images: torch.Tensor | None = None
        """The first decoded samples of the last call ([<= GRID_IMAGES, C, H, W] or videos), on the CPU."""

    def __call__(self) -> dict[str, float]:
        """``score`` (the task's eval metric), ``eval/<component>``, and with a gold reward ``gold`` and
        ``gold/<component>``: means over the eval samples, NaN-ignoring.

        Sampled, decoded and scored ``SLICE`` rows at a time, so that decoded videos never all sit in
        memory at once (an eval set of at most ``SLICE`` samples is one slice: the digits tasks' are).
        """
        texts, metas = [p.text for p in self.prompts], [p.meta for p in self.prompts]
        outs: list[RewardOutput] = []
        golds: list[RewardOutput] = []
        self.images = None  # the first GRID_IMAGES decoded samples, for an image grid
        with torch.no_grad():
            for start in range(0, len(self.prompts), SLICE):
                rows = slice(start, start + SLICE)
                x = sample_ode(self.backbone, index_cond(self.cond, rows), self.noise[rows], self.sigmas,
                               self.guidance, batch_size=SLICE)
                images = self.backbone.decode(x)
                if self.images is None:
                    from opgrpo_bench.images import GRID_IMAGES

                    self.images = images[:GRID_IMAGES].detach().cpu()
                outs.append(self.reward(images, texts[rows], metas[rows]))
                if self.gold is not None:
                    golds.append(self.gold(images, texts[rows], metas[rows]))
                del images
        record = self._metrics(_concat(outs), self.task.reward, "score", "eval/")
        if self.gold is not None:
            record.update(self._metrics(_concat(golds), self.task.gold_reward, "gold", "gold/"))
        return record

    def _metrics(self, out: RewardOutput, reward: str | None, main_key: str, prefix: str) -> dict[str, float]:
        metric = self.task.eval_metric
        if metric is not None and metric not in out.components:
            raise UserError(f"task '{self.task.id}' evaluates reward component '{metric}', which reward "
                            f"'{reward}' does not return (it returns: {sorted(out.components)})")
        main = out.scores if metric is None else out.components[metric]
        record = {main_key: torch.nanmean(main.float()).item()}
        record.update({f"{prefix}{k}": torch.nanmean(v.float()).item() for k, v in out.components.items()})
        return record


def _other_schema(metrics: Path) -> str:
    """``" (written by schema X; this version reads Y)"`` when the file's first record names another schema,
    else ""."""
    import json

    from opgrpo_bench import SCHEMA
    from opgrpo_bench.results import read_bytes

    try:
        first = json.loads(read_bytes(metrics).split(b"\n", 1)[0])
    except (OSError, ValueError):
        return ""
    schema = first.get("schema") if isinstance(first, dict) else None
    return f" (written by schema {schema!r}; this version reads {SCHEMA!r})" if schema and schema != SCHEMA else ""


def evaluate_saved_run(run_dir: str | Path, task_id: str | None = None, adapter: str = "ema",
                       save_images: str | Path | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run's saved adapter on a task's eval prompts (its own task by default).

    With the run's own task, the ODE steps and CFG scale are the run's (from its ``run_start``), so the
    score equals the run's last evaluation; another task uses its own defaults. Returns the eval record's
    metrics plus ``task``, ``adapter`` and ``run_task``. Every input problem is a one-line
    :class:`UserError`, raised before any model loads.
    """
    import dataclasses
    import zlib

    from opgrpo_bench.export import ADAPTER_DIRS, WEIGHT_NAME, load_adapter
    from opgrpo_bench.registry import REWARDS, TASKS
    from opgrpo_bench.config import TrainConfig
    from opgrpo_bench.results import METRICS_FILE, ResultsFileError, read_run, results_file
    from opgrpo_bench.schema import record_problem, train_settings

    run_dir = Path(run_dir)
    metrics = results_file(run_dir)
    if metrics is None:
        raise UserError(f"{run_dir} is not a run directory (no {METRICS_FILE} or {METRICS_FILE}.gz)")
    if adapter not in ADAPTER_DIRS:
        raise UserError(f"--adapter must be one of {', '.join(ADAPTER_DIRS)}, not '{adapter}'")
    try:
        records = read_run(metrics)
    except ResultsFileError as exc:  # a damaged or oversized packed file: say which, and what
        raise UserError(str(exc)) from None
    except (OSError, EOFError, zlib.error):  # unreadable
        records = None
    start = records.start if records is not None else None
    if start is None:
        raise UserError(f"{metrics} has no readable run_start record{_other_schema(metrics)}")
    # every field eval reads back (config.train included) is checked before it is used
    problem = record_problem(start)
    if problem:
        raise UserError(f"{metrics} has an unusable run_start record ({problem})")
    run_task = start["task"]
    task = TASKS.get(task_id or run_task)  # an unknown name: one line with suggestions
    weights = run_dir / ADAPTER_DIRS[adapter] / WEIGHT_NAME
    if not weights.is_file():
        raise UserError(f"{run_dir} has no {adapter} adapter ({weights.relative_to(run_dir)} is missing: the run "
                        "did not finish" + (", or kept no EMA; try --adapter final)" if adapter == "ema" else ")"))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if task.id == run_task:
        settings = train_settings((start.get("config") or {}).get("train") or {})
    else:
        settings = {k: v for k, v in task.train_defaults.items() if k in fields}
    cfg = TrainConfig(**settings)
    # the recorded settings are data from a file: the same bounds as on the command line, before they are used
    from opgrpo_bench.validation import check_config

    check_config(cfg, {name: f"the run_start record of {metrics}" for name in settings})
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    reward = REWARDS.get(task.reward)(**task.reward_args)
    gold = REWARDS.get(task.gold_reward)(**task.gold_reward_args) if task.gold_reward else None
    backbone = task.build_backbone()
    try:
        load_adapter(backbone.transformer, weights.parent)
    except (ValueError, RuntimeError, KeyError) as err:
        raise UserError(f"the {adapter} adapter of {run_dir} does not fit task '{task.id}''s backbone: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    evaluator = Evaluator(task, backbone, reward, gold, cfg.eval_num_steps, cfg.eval_guidance)
    record = evaluator()
    out = {"task": task.id, "run_task": run_task, "adapter": adapter, **record}
    if save_images is not None and evaluator.images is not None:
        from opgrpo_bench.images import save_grid

        out["images"] = str(save_grid(evaluator.images, save_images))
    return out
