"""The one training loop, shared by every algorithm and every backbone.

Read :func:`train` top to bottom: each iteration samples groups of SDE trajectories with the current
weights (theta_old), scores them, lets the algorithm turn them into a :class:`TrainBatch`, takes
``optimizer_steps_per_iter`` optimizer steps over disjoint shares of the samples, and evaluates every
``eval_every`` optimizer steps with deterministic ODE sampling from fixed noises.

Counting conventions (recorded in every ``step``/``eval`` record):

- ``step``: optimizer steps taken (a "training step"); an iteration whose groups all carry no signal still
  spends its steps (nothing to optimise), so sparse rewards cost steps as they should.
- ``samples``: fresh samples generated (replayed samples are not fresh).
- ``nfe``: per-sample network evaluations in rollouts and updates (CFG counts 2; evaluation excluded).
- ``wall_s``: training wall-clock seconds, evaluation excluded.

Known limitation: evaluations run at the end of an iteration. With two optimizer steps per iteration
and an odd ``eval_every`` (digits tasks: 5), the evaluation recorded at an odd step ``s`` sees the weights
after step ``s + 1``; even steps are exact. The bias is at most one step and the same for every
algorithm. Fixing it (evaluating between the optimizer steps of an iteration) changes the recorded scores
at odd steps, so it waits for the next re-run of the reference suite.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import opgrpo_bench
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, Rollout, TrainBatch
from opgrpo_bench.backbones.base import Backbone, index_cond
from opgrpo_bench.core.losses import approx_kl, clipped_surrogate, kl_to_reference
from opgrpo_bench.core.sde import sde_step_with_logprob
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.worker import AsyncRewardWorker
from opgrpo_bench.results import ResultsWriter, first_reaching, read_records, truncate_after_step
from opgrpo_bench.sampling import Trajectories, sample_ode, sample_sde
from opgrpo_bench.tasks.spec import TaskSpec

EVAL_NOISE_SEED = 20261126
"""Evaluation noises are the same for every run of a task (seed- and algorithm-independent)."""
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Trainer settings (algorithm-independent). Tasks scale these in ``TaskSpec.train_defaults``."""

    steps: int = 200
    """Budget in optimizer steps."""
    prompts_per_iter: int = 8
    """Groups (prompts) per iteration."""
    group_size: int = 8
    """Samples per group, G."""
    num_steps: int = 10
    """SDE denoising steps per rollout, T."""
    noise_level: float = 0.7
    """SDE noise level a."""
    guidance: float = 1.0
    """CFG scale during rollouts and training (1 = no CFG)."""
    eval_num_steps: int = 20
    """ODE steps for evaluation."""
    eval_guidance: float = 1.0
    """CFG scale for evaluation."""
    eval_every: int = 10
    """Evaluate every this many optimizer steps (and at step 0)."""
    rollout_chunks: int = 1
    """Sample each iteration in this many batches; scoring of batch c (on a background thread) overlaps
    the sampling of batch c + 1. Worth it for slow rewards (OCR, GenEval); 1 for the digits task."""
    optimizer_steps_per_iter: int = 2
    """Optimizer steps per iteration, each over a disjoint share of the samples."""
    train_micro_batch: int = 0
    """(sample, step) pairs per forward/backward inside an optimizer step (0 = all at once)."""
    lr: float = 3e-4
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    lora_rank: int = 32
    lora_alpha: int = 64
    ema_decay: float = 0.9
    """EMA of the trainable weights used for evaluation; 0 evaluates the raw weights."""
    logprob_reduction: str = "mean"
    """"mean" (Flow-GRPO's scale) or "sum" over latent dimensions."""
    seed: int = 0
    num_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""


@dataclass
class RunState:
    """Counters of a run (checkpointed)."""

    iteration: int = 0
    step: int = 0
    samples: int = 0
    nfe: int = 0
    wall_s: float = 0.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("opgrpo-bench", "torch", "diffusers", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(opgrpo_bench.__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Trainer:
    """Trains one (task, algorithm, seed) run and writes ``run_dir/metrics.jsonl``."""

    def __init__(self, task: TaskSpec, algorithm: FlowGRPO, config: TrainConfig, run_dir: str | Path,
                 algorithm_name: str | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None):
        self.task, self.algorithm, self.cfg = task, algorithm, config
        self.algorithm_name = algorithm_name or algorithm.name
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda record: None)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        # the reward first: a missing reward model should fail before a large backbone loads
        self.reward = REWARDS.get(task.reward)(**task.reward_args)
        self.scorer = AsyncRewardWorker(self.reward, max_pending=2)
        torch.manual_seed(config.seed)  # LoRA initialisation
        self.backbone: Backbone = task.build_backbone()
        self.device = getattr(self.backbone, "device", torch.device("cpu"))
        self.backbone.add_lora(config.lora_rank, config.lora_alpha)
        self.params = self.backbone.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=config.adam_betas)
        self.ema = None
        if config.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=config.ema_decay)
        self.prompt_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1_000_003)
        self.sigmas = self.backbone.sigmas(config.num_steps).to(self.device)
        self.eval_sigmas = self.backbone.sigmas(config.eval_num_steps).to(self.device)
        self.state = RunState()
        self.writer = ResultsWriter(self.run_dir)
        self._build_eval_set()

    # -- evaluation ----------------------------------------------------------------------------
    def _build_eval_set(self) -> None:
        k = self.task.eval_noises_per_prompt
        self.eval_prompts = [p for p in self.task.eval_prompts for _ in range(k)]
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)  # CPU draws: the same noises on any device
        self.eval_noise = torch.randn((len(self.eval_prompts), *self.backbone.latent_shape),
                                      generator=gen).to(self.device)
        rows = torch.arange(len(self.task.eval_prompts)).repeat_interleave(k).to(self.device)
        self.eval_cond = index_cond(self.backbone.encode([p.text for p in self.task.eval_prompts]), rows)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Mean reward of ODE samples of the held-out prompts from fixed noises (EMA weights)."""
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            x = sample_ode(self.backbone, self.eval_cond, self.eval_noise, self.eval_sigmas,
                           self.cfg.eval_guidance, batch_size=256)
            out = self.reward(self.backbone.decode(x), [p.text for p in self.eval_prompts],
                              [p.meta for p in self.eval_prompts])
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)
        record = {"score": torch.nanmean(out.scores.float()).item()}
        record.update({f"eval/{k}": torch.nanmean(v.float()).item() for k, v in out.components.items()})
        return record

    def _log_eval(self) -> dict[str, Any]:
        s = self.state
        rec = self.writer.write("eval", step=s.step, samples=s.samples, nfe=s.nfe, wall_s=round(s.wall_s, 3),
                                **self.evaluate())
        self.progress(rec)
        return rec

    # -- one iteration -------------------------------------------------------------------------
    def rollout(self) -> Rollout:
        """Sample P groups of G trajectories with the current weights and score them."""
        cfg, task = self.cfg, self.task
        P, G, T = cfg.prompts_per_iter, cfg.group_size, cfg.num_steps
        replay = self.algorithm.replay_entries(P, self.state.iteration, self.prompt_gen)
        n_fresh = P - len(replay)
        fresh_ids = torch.randperm(len(task.train_prompts), generator=self.prompt_gen)[:n_fresh]
        if len(fresh_ids) < n_fresh:  # fewer prompts than groups: sample with replacement
            fresh_ids = torch.randint(len(task.train_prompts), (n_fresh,), generator=self.prompt_gen)
        group_prompts = fresh_ids.tolist() + [e.prompt_id for e in replay]
        prompt_ids = torch.tensor(group_prompts).repeat_interleave(G)
        group_ids = torch.arange(P).repeat_interleave(G)
        N = P * G
        noise = torch.randn((N, *self.backbone.latent_shape), generator=self.noise_gen).to(self.device)

        # the last sample of each replay group follows the stored prefix
        forced_len = torch.zeros(N, dtype=torch.long, device=self.device)
        forced = behaviour_prefix = None
        if replay:
            K = max(len(e.log_probs) for e in replay)
            forced = torch.zeros((N, K + 1, *self.backbone.latent_shape), device=self.device)
            behaviour_prefix = torch.zeros((N, T), device=self.device)
            for g, entry in enumerate(replay):
                i = (n_fresh + g) * G + G - 1
                k = len(entry.log_probs)
                forced[i, : k + 1] = entry.latents
                forced_len[i] = k
                behaviour_prefix[i, :k] = entry.log_probs
        # conditioning is encoded per iteration, one row per group (real prompt sets are too large to
        # keep encoded); samples index their group's row
        group_cond = self.backbone.encode([task.train_prompts[i].text for i in group_prompts])
        cond_index = group_ids.to(self.device)
        cond = index_cond(group_cond, cond_index)
        prompts = [task.train_prompts[i] for i in prompt_ids.tolist()]
        ode_suffix = getattr(self.algorithm.config, "suffix", "sde") == "ode"
        latents, log_probs, pending = [], [], []
        for rows in torch.tensor_split(torch.arange(N), max(1, min(cfg.rollout_chunks, N))):
            traj = sample_sde(self.backbone, index_cond(cond, rows), noise[rows], self.sigmas, cfg.noise_level,
                              cfg.guidance, self.noise_gen, None if forced is None else forced[rows],
                              forced_len[rows], ode_after_forced=ode_suffix,
                              logprob_reduction=cfg.logprob_reduction)
            latents.append(traj.latents)
            log_probs.append(traj.log_probs)
            # scoring this batch overlaps the sampling of the next one
            pending.append(self.scorer.submit(self.backbone.decode(traj.latents[:, -1]),
                                              [prompts[i].text for i in rows], [prompts[i].meta for i in rows]))
        traj = Trajectories(torch.cat(latents), torch.cat(log_probs))
        behaviour = traj.log_probs.clone()
        if behaviour_prefix is not None:
            prefix = torch.arange(T, device=self.device)[None, :] < forced_len[:, None]
            behaviour = torch.where(prefix, behaviour_prefix, behaviour)
        scores = torch.cat([p.result().scores for p in pending]).to(self.device)
        rewards = scores.float().clone()
        for g, entry in enumerate(replay):  # a fully replayed trajectory keeps its stored reward
            if len(entry.log_probs) >= T:
                rewards[(n_fresh + g) * G + G - 1] = entry.reward

        self.state.samples += int((forced_len == 0).sum())
        self.state.nfe += N * T * self.backbone.nfe_per_sample(cfg.guidance)
        return Rollout(prompt_ids, group_ids, [p.text for p in prompts], [p.meta for p in prompts],
                       traj.latents, self.sigmas, traj.log_probs, behaviour, forced_len, rewards,
                       iteration=self.state.iteration, cond=group_cond, cond_index=cond_index)

    def update(self, batch: TrainBatch, rows: torch.Tensor) -> dict[str, Any]:
        """One optimizer step over the trained (sample, step) pairs of ``rows``; returns its metrics."""
        cfg, alg_cfg, ro = self.cfg, self.algorithm.config, batch.rollout
        mask = batch.train_mask[rows]
        pair_rows, pair_steps = torch.nonzero(mask, as_tuple=True)
        idx = rows[pair_rows]
        self.optimizer.zero_grad(set_to_none=True)
        if len(idx) == 0:  # no signal in this share: the step is spent without an update
            return {"loss/total": 0.0, "train/trained_pairs": 0}
        micro = self.cfg.train_micro_batch or len(idx)
        parts = [self._micro_step(batch, idx[s:s + micro], pair_steps[s:s + micro], len(idx))
                 for s in range(0, len(idx), micro)]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.params)
        pg, ratio, clipped, logp, old, kl = (torch.cat([p[i] for p in parts]) for i in range(6))
        self.state.nfe += len(idx) * self.backbone.nfe_per_sample(cfg.guidance) * (2 if alg_cfg.beta > 0 else 1)
        loss = pg.mean() + alg_cfg.beta * kl.mean()
        off = ro.replayed[idx]
        return {
            "loss/total": loss.item(), "loss/policy": pg.mean().item(), "loss/kl": kl.mean().item(),
            "ratio/mean": ratio.mean().item(), "ratio/min": ratio.min().item(), "ratio/max": ratio.max().item(),
            "clipfrac/on_policy": clipped[~off].float().mean().item() if (~off).any() else None,
            "clipfrac/off_policy": clipped[off].float().mean().item() if off.any() else None,
            "approx_kl": approx_kl(logp, old).item(), "grad_norm": grad_norm.item(),
            "train/trained_pairs": len(idx),
        }

    def _micro_step(self, batch: TrainBatch, idx: torch.Tensor, steps: torch.Tensor, total: int):
        """Forward + backward of one micro-batch of (sample, step) pairs; the loss is scaled by its share of
        ``total`` pairs so that the accumulated gradient is that of the mean over all pairs."""
        cfg, alg_cfg, ro = self.cfg, self.algorithm.config, batch.rollout
        x, x_next = ro.latents[idx, steps], ro.latents[idx, steps + 1]
        sigma, sigma_next = ro.sigmas[steps], ro.sigmas[steps + 1]
        cond = index_cond(ro.cond, ro.cond_index[idx])
        v = self.backbone.velocity(x, sigma, cond, cfg.guidance)
        _, logp, mean, std = sde_step_with_logprob(v, sigma, sigma_next, x, cfg.noise_level, prev_sample=x_next,
                                                   sigma_max=ro.sigmas[1], logprob_reduction=cfg.logprob_reduction)
        old = batch.old_log_probs[idx, steps]
        pg, ratio, clipped = clipped_surrogate(logp, old, batch.advantages[idx], alg_cfg.clip_range,
                                               weight=batch.weights[idx])
        loss = pg.sum()
        kl = torch.zeros_like(pg)
        if alg_cfg.beta > 0:
            with torch.no_grad(), self.backbone.reference():
                v_ref = self.backbone.velocity(x, sigma, cond, cfg.guidance)
            ref_mean = sde_step_with_logprob(v_ref, sigma, sigma_next, x, cfg.noise_level, prev_sample=x_next,
                                             sigma_max=ro.sigmas[1])[2]
            dt = (sigma_next - sigma) if alg_cfg.kl_include_dt else None
            kl = kl_to_reference(mean, ref_mean, std, dt)
            loss = loss + alg_cfg.beta * kl.sum()
        (loss / total).backward()
        return pg.detach(), ratio.detach(), clipped, logp.detach(), old, kl.detach()

    def iteration(self) -> None:
        t0 = time.perf_counter()
        rollout = self.rollout()
        batch = self.algorithm.prepare(rollout)
        rewards = rollout.rewards[torch.isfinite(rollout.rewards)]
        common = {"train/reward_mean": rewards.mean().item() if len(rewards) else None,
                  "train/reward_std": rewards.std(unbiased=False).item() if len(rewards) > 1 else None,
                  **batch.metrics}
        order = torch.randperm(len(rollout.rewards), generator=self.prompt_gen)
        shares = torch.tensor_split(order, self.cfg.optimizer_steps_per_iter)
        step_metrics = [self.update(batch, rows) for rows in shares]
        common.update(self.algorithm.observe(rollout))
        self.state.iteration += 1
        self.state.wall_s += time.perf_counter() - t0
        for metrics in step_metrics:
            self.state.step += 1
            s = self.state
            rec = self.writer.write("step", step=s.step, iteration=s.iteration, samples=s.samples, nfe=s.nfe,
                                    wall_s=round(s.wall_s, 3), **common, **metrics)
            self.progress(rec)
            if s.step % self.cfg.eval_every == 0:
                self._log_eval()
                self.save_checkpoint()

    # -- the run -------------------------------------------------------------------------------
    def run_start_record(self, run_id: str) -> dict[str, Any]:
        algo_cfg = dataclasses.asdict(self.algorithm.config)
        return dict(
            run_id=run_id, task=self.task.id, task_version=self.task.version, prompt_hash=self.task.prompt_hash,
            algorithm=self.algorithm_name, algorithm_class=type(self.algorithm).__name__, seed=self.cfg.seed,
            config={"train": dataclasses.asdict(self.cfg), "algorithm": algo_cfg},
            target=self.task.target, higher_is_better=self.task.higher_is_better, budget_steps=self.cfg.steps,
            reward=self.task.reward, world_size=1, precision=str(getattr(self.backbone, "dtype", torch.float32)),
            versions=_versions(), git_sha=_git_sha(), device=self._device_name(),
            start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def run(self, run_id: str, resume: bool = False) -> dict[str, Any]:
        """Train to the step budget (or continue a checkpointed run) and write ``run_end``."""
        if resume and self.load_checkpoint():
            truncate_after_step(self.writer.path, self.state.step)
        else:
            if self.writer.path.exists():
                self.writer.path.unlink()
            self.writer.write("run_start", **self.run_start_record(run_id))
            self._log_eval()
        while self.state.step < self.cfg.steps:
            self.iteration()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        evals = [r for r in read_records(self.writer.path) if r.get("type") == "eval"]
        hit = first_reaching(evals, self.task.target, self.task.higher_is_better)
        rec = self.writer.write(
            "run_end", status="completed", steps_to_target=hit["step"] if hit else None,
            samples_to_target=hit["samples"] if hit else None, nfe_to_target=hit["nfe"] if hit else None,
            wall_s_to_target=hit["wall_s"] if hit else None, censored=hit is None,
            final_score=evals[-1]["score"] if evals else None,
            best_score=max((e["score"] for e in evals), default=None), steps=self.state.step,
            wall_s=round(self.state.wall_s, 3),
        )
        self.progress(rec)
        self.scorer.close()
        ckpt = self.run_dir / CHECKPOINT
        if ckpt.exists():
            ckpt.unlink()
        return rec

    # -- checkpoints (resume) ------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "state": dataclasses.asdict(self.state),
            "params": [p.detach().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "algorithm": self.algorithm.state_dict(),
            "prompt_gen": self.prompt_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
        }
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / CHECKPOINT)

    def load_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, weights_only=False)
        self.state = RunState(**state["state"])
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.prompt_gen.set_state(state["prompt_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        return True

