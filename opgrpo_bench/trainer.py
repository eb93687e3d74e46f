"""The one training loop, shared by every algorithm and every backbone.

Read :meth:`Trainer.run` and :meth:`Trainer.iteration` top to bottom: each iteration samples groups of
trajectories with the current weights (theta_old) as the algorithm plans them, scores them, lets the
algorithm turn them into a :class:`TrainBatch` and observe them, then takes ``optimizer_steps_per_iter``
optimizer steps over disjoint shares of the samples. An optimizer step runs the network calls the
algorithm lists for its share and sums the algorithm's losses (:mod:`opgrpo_bench.training.update`); the
trainer knows no algorithm's math. Every ``eval_every`` optimizer steps it evaluates with deterministic
ODE sampling from fixed noises, between the optimizer steps of an iteration if need be, so that an eval
recorded at step ``s`` has seen exactly ``s`` optimizer steps.

Counting conventions (recorded in every ``step``/``eval`` record):

- ``step``: optimizer steps taken; a share whose groups all carry no signal still spends its step, so
  sparse rewards cost steps as they should. Budgets are exact: a run may end inside an iteration.
- ``samples``: fresh samples generated (rows that follow a stored trajectory are not fresh).
- ``nfe``: per-sample network evaluations in rollouts and updates, as run (CFG counts 2, each extra
  velocity of an update counts; evaluation excluded).
- ``wall_s``: training wall-clock seconds, evaluation and checkpointing excluded.

Checkpoints (:mod:`opgrpo_bench.training.state`) are written between iterations: after the step-0
evaluation, after every iteration that contained an evaluation, before an iteration that the budget cuts
short, and at the end. Resuming loads the last one, drops the records after its step and replays from
there with identical records; a checkpoint inside an iteration would have to hold the whole rollout.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opgrpo_bench.algorithms.base import Algorithm, Rollout, SamplerSettings, TrainBatch
from opgrpo_bench.config import TrainConfig
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.errors import RunInterrupted
from opgrpo_bench.evaluation import Evaluator
from opgrpo_bench.export import ADAPTER_DIRS, export_run_adapters
from opgrpo_bench.images import IMAGES_DIR, save_grid
from opgrpo_bench.results import PACKED_FILE, ResultsWriter, read_records, truncate_after_step
from opgrpo_bench.schema import run_outcome
from opgrpo_bench.tasks.spec import TaskSpec
from opgrpo_bench.training.components import LATENT_DTYPES, build_components
from opgrpo_bench.training.metadata import follower_end, run_start_fields
from opgrpo_bench.training.records import MirroredWriter, NoWriter
from opgrpo_bench.training.rollout import Blocks, RolloutSampler
from opgrpo_bench.training.state import CHECKPOINT, RunState, TrainingState
from opgrpo_bench.training.update import CallRunner

__all__ = ["CHECKPOINT", "TrainConfig", "Trainer", "follower_end"]


class Trainer:
    """Trains one (task, algorithm, seed) run and writes ``run_dir/metrics.jsonl``."""

    def __init__(self, task: TaskSpec, algorithm: Algorithm, config: TrainConfig, run_dir: str | Path,
                 algorithm_name: str | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
                 distributed: Distributed | None = None, mirrors: Sequence[str] = (), setup: str = "", variant: str = ""):
        self.task, self.algorithm, self.cfg = task, algorithm, config
        self.algorithm_name, self.setup, self.variant = algorithm_name or algorithm.name, setup, variant
        self.run_dir, self.mirror_names = Path(run_dir), list(mirrors)
        self.progress = progress or (lambda record: None)
        self.dist = distributed or Distributed()
        parts = build_components(task, config, self.dist)
        self.reward, self.gold, self.scorer, self.backbone = parts.reward, parts.gold, parts.scorer, parts.backbone
        self.params, self.optimizer, self.ema = parts.params, parts.optimizer, parts.ema
        self.device = parts.device
        latent_dtype = LATENT_DTYPES[config.latent_dtype]
        self.sampler = algorithm.sampler_settings(SamplerSettings.from_config(config))
        store = self.device if config.trajectory_device == "auto" else torch.device(config.trajectory_device)
        self.sample = RolloutSampler(task, self.backbone, self.scorer, self.dist, self.sampler,
                                     self.backbone.sigmas(config.num_steps).to(self.device), latent_dtype, store,
                                     config.optimizer_steps_per_iter, config.micro_batch, config.cfg_detach_uncond,
                                     config.seed)
        self.call_runner = CallRunner(self.backbone, self.params, self.dist, latent_dtype, config.cfg_detach_uncond)
        self.training_state = TrainingState(self.params, self.optimizer, self.ema, algorithm, parts.prompt_gen,
                                            parts.noise_gen)
        self.state = RunState()
        self.writer: Any = ResultsWriter(self.run_dir) if self.dist.is_main else NoWriter(self.run_dir)
        self._saved_at: int | None = None  # step of the last checkpoint written or loaded
        self.evaluator = Evaluator(task, self.backbone, self.reward, self.gold, config.eval_num_steps,
                                   config.eval_guidance)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """The eval record's metrics (:class:`opgrpo_bench.evaluation.Evaluator`) with the EMA weights."""
        if self.ema is not None:
            with self.ema.applied(self.params):
                return self.evaluator()
        return self.evaluator()

    def _log_eval(self) -> None:
        # rank 0 evaluates and writes; under FSDP every rank evaluates (each forward gathers the weights
        # from all of them) and rank 0 writes
        if not self.dist.is_main and not self.dist.lockstep:
            return
        metrics = self.evaluate()
        if self.dist.is_main:
            s = self.state
            if self.evaluator.images is not None:  # the same fixed noises at every eval: comparable grids
                save_grid(self.evaluator.images, self.run_dir / IMAGES_DIR / f"step{s.step:06d}.png")
            self.progress(self.writer.write("eval", step=s.step, samples=s.samples, nfe=s.nfe,
                                            wall_s=round(s.wall_s, 3), **metrics))

    # -- one iteration -------------------------------------------------------------------------
    def rollout(self) -> tuple[Rollout, Blocks]:
        """Sample and score this iteration's plan; the rollout and the blocks of each optimizer step."""
        cfg, ts = self.cfg, self.training_state
        rollout, shares = self.sample(self.algorithm, cfg.prompts_per_iter, cfg.group_size, self.state.iteration,
                                      ts.prompt_gen, ts.noise_gen)
        self.state.samples += int((rollout.forced_len == 0).sum())
        self.state.nfe += rollout.latents.shape[0] * rollout.num_steps * self.backbone.nfe_per_sample(
            self.sampler.guidance)
        self.call_runner.begin_iteration()
        return rollout, shares

    def update(self, batch: TrainBatch, blocks: list[torch.Tensor], first_block: int = 0) -> dict[str, Any]:
        """One optimizer step over the calls the algorithm lists for ``blocks``; returns its metrics.

        ``first_block`` is the global index of ``blocks[0]`` in the iteration: with several processes, the
        calls of block ``b`` run on rank ``b % world_size`` and the gradients are summed.
        """
        calls = self.algorithm.calls(batch, blocks, first_block)
        total = sum(c.pairs for c in calls)
        self.optimizer.zero_grad(set_to_none=True)
        if total == 0:  # no signal in this share: the step is spent without an update (on every rank)
            return {"loss/total": 0.0, "train/trained_pairs": 0}
        parts = self.call_runner.run(self.algorithm, batch, calls, total)
        self.state.nfe += self.call_runner.nfe(batch, calls)
        self.dist.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        return {**self.algorithm.summarize(parts, batch), "grad_norm": grad_norm.item(), "train/trained_pairs": total}

    def iteration(self) -> None:
        """One rollout, then its optimizer steps (stopping at the budget), with evaluations in between."""
        mark = time.perf_counter()
        rollout, shares = self.rollout()
        batch = self.algorithm.prepare(rollout)
        rewards = rollout.rewards[torch.isfinite(rollout.rewards)]
        common = {"train/reward_mean": rewards.mean().item(),
                  "train/reward_std": rewards.std(unbiased=False).item() if len(rewards) > 1 else None,
                  **batch.metrics}
        # observing never depends on the weights, so it may come before the updates; it must, for a
        # checkpoint at this iteration's end to hold the algorithm state that the next rollout reads
        common.update(self.algorithm.observe(rollout))
        self.state.iteration += 1
        first = 0
        for blocks in shares:
            if self.state.step >= self.cfg.steps:
                break
            metrics = self.update(batch, blocks, first)
            first += len(blocks)
            s = self.state
            s.step += 1
            if self.ema is not None:
                self.ema.step(self.params, s.step)
            s.wall_s += time.perf_counter() - mark
            self.progress(self.writer.write("step", step=s.step, iteration=s.iteration, samples=s.samples,
                                            nfe=s.nfe, wall_s=round(s.wall_s, 3), **common, **metrics))
            if s.step % self.cfg.eval_every == 0:
                self._log_eval()
            mark = time.perf_counter()

    # -- the run -------------------------------------------------------------------------------
    def run_start_record(self, run_id: str, config_hash: str | None = None) -> dict[str, Any]:
        return run_start_fields(self.task, self.algorithm, self.algorithm_name, self.cfg, run_id, config_hash,
                                self.dist.world_size, self.dist.fsdp,
                                str(getattr(self.backbone, "dtype", torch.float32)), self.device, self.setup, self.variant)

    def run(self, run_id: str, resume: bool = False, config_hash: str | None = None) -> dict[str, Any]:
        """Train to the step budget (or continue from the last checkpoint) and write ``run_end``.

        With ``resume`` and a checkpoint, the records after the checkpoint's step are dropped and the run
        replays from there (the budget in ``run_start`` becomes this config's). Ctrl-C raises
        :class:`RunInterrupted` with the last step written.
        """
        mirrors: list[Any] = []
        if self.mirror_names and self.dist.is_main:
            from opgrpo_bench.mirrors import open_mirrors

            mirrors = open_mirrors(self.mirror_names, self.run_dir, self.run_start_record(run_id, config_hash))
            self.writer = MirroredWriter(self.writer, mirrors)
        try:
            if resume and self.load_checkpoint():
                if self.dist.is_main:
                    truncate_after_step(self.writer.path, self.state.step, budget_steps=self.cfg.steps)
            else:
                if self.dist.is_main:  # a new run: nothing of an earlier one may stay beside its records
                    for stale in (self.writer.path, self.run_dir / PACKED_FILE, self.run_dir / CHECKPOINT):
                        stale.unlink(missing_ok=True)
                    for folder in (*ADAPTER_DIRS.values(), IMAGES_DIR):
                        shutil.rmtree(self.run_dir / folder, ignore_errors=True)
                self.writer.write("run_start", **self.run_start_record(run_id, config_hash))
                self._log_eval()
                self.save_checkpoint()
            while self.state.step < self.cfg.steps:
                before = self.state.step
                if before + self.cfg.optimizer_steps_per_iter > self.cfg.steps:  # the budget cuts it short
                    self.save_checkpoint()
                self.iteration()
                if self.state.step // self.cfg.eval_every > before // self.cfg.eval_every:  # evaluated
                    self.save_checkpoint()
            self.save_checkpoint()  # kept, so that a larger budget can continue this run
            if self.dist.is_main:
                export_run_adapters(self.backbone.transformer, self.run_dir, self.ema, self.params)
            return self.finish()
        except KeyboardInterrupt:
            raise RunInterrupted(self.state.step) from None
        finally:
            self.scorer.close()
            for mirror in mirrors:
                mirror.close()

    def finish(self) -> dict[str, Any]:
        """Write ``run_end``: steps (and samples, NFE, seconds) to the target, best and final scores."""
        if not self.dist.is_main:  # the results are rank 0's
            return follower_end(self.dist.rank, self.state.step)
        evals = [r for r in read_records(self.writer.path) if r.get("type") == "eval"]
        rec = self.writer.write("run_end", status="completed",
                                **run_outcome(evals, self.task.target, self.task.higher_is_better),
                                steps=self.state.step, wall_s=round(self.state.wall_s, 3))
        self.progress(rec)
        return rec

    # -- checkpoints (resume) ------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the state between two iterations (rank 0; every rank holds the same state)."""
        at_boundary = self.state.step == self.state.iteration * self.cfg.optimizer_steps_per_iter
        if not at_boundary or self._saved_at == self.state.step:
            return
        if self.dist.is_main:
            self.training_state.save(self.run_dir / CHECKPOINT, self.state)
        self._saved_at = self.state.step

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint; False when there is none. A damaged one is a :class:`UserError`."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        self.state = self.training_state.load(path)
        self._saved_at = self.state.step
        return True
