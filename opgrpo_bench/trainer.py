"""The one training loop, shared by every algorithm and every backbone.

Read :meth:`Trainer.run` and :meth:`Trainer.iteration` top to bottom: each iteration samples groups of
SDE trajectories with the current weights (theta_old), scores them, lets the algorithm turn them into a
:class:`TrainBatch` and observe them, then takes ``optimizer_steps_per_iter`` optimizer steps over
disjoint shares of the samples. Every ``eval_every`` optimizer steps it evaluates with deterministic ODE
sampling from fixed noises, between the optimizer steps of an iteration if need be, so that an eval
recorded at step ``s`` has seen exactly ``s`` optimizer steps.

Micro-batches (the one rule that makes the first ratio exactly 1 on any CPU): the rows of an iteration
are shuffled once, cut into the optimizer steps' shares, and each share into blocks of ``micro_batch``
rows. The sampler runs block by block, and the training forward of step ``k`` of a block evaluates the
same rows, in the same order, at the same noise level, as the sampler's call did: the same shapes and
inputs, hence bit-identical log-probs before the first update, whatever a BLAS library does with batch
sizes (Flow-GRPO's rule "train batch = sample batch", made exact).

Counting conventions (recorded in every ``step``/``eval`` record):

- ``step``: optimizer steps taken (a "training step"); a share whose groups all carry no signal still
  spends its step (nothing to optimise), so sparse rewards cost steps as they should. Budgets are exact:
  a run may end in the middle of an iteration.
- ``samples``: fresh samples generated (rows that follow a stored trajectory are not fresh).
- ``nfe``: per-sample network evaluations in rollouts and updates, as run (CFG counts 2, the reference
  forward of the KL term counts; evaluation excluded).
- ``wall_s``: training wall-clock seconds, evaluation and checkpointing excluded.

Checkpoints (for exact resume) are written at iteration boundaries: after the step-0 evaluation, after
every iteration that contained an evaluation, before an iteration that the budget cuts short, and at
the end of a run. Resuming loads the last one, drops the records after its step and replays from
there; every random draw comes from generators stored in the checkpoint, so the replayed records are
identical to an uninterrupted run's (except wall-clock fields). A checkpoint between the optimizer
steps of an iteration would have to store the whole rollout; replaying it costs at most one eval period.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import opgrpo_bench
from opgrpo_bench.algorithms.base import Algorithm, PairLoss, Rollout, TrainBatch
from opgrpo_bench.backbones.base import Backbone, index_cond
from opgrpo_bench.config import TrainConfig
from opgrpo_bench.checkpoint import CheckpointError, load_state, save_state
from opgrpo_bench.core.ema import ParameterEMA, holding
from opgrpo_bench.core.sde import transition_function
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.errors import RunInterrupted, UserError
from opgrpo_bench.evaluation import Evaluator
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.worker import AsyncRewardWorker
from opgrpo_bench.results import PACKED_FILE, ResultsWriter, first_reaching, read_records, truncate_after_step
from opgrpo_bench.sampling import sample_sde, skip_sde_noise
from opgrpo_bench.tasks.spec import TaskSpec

CHECKPOINT = "checkpoint.safetensors"
"""Tensors + JSON (never a pickle): :mod:`opgrpo_bench.checkpoint`."""

Blocks = list[list[torch.Tensor]]
"""Per optimizer step, the row blocks (each [<= micro_batch] indices into the rollout) it trains."""


@dataclass
class RunState:
    """Counters of a run (checkpointed)."""

    iteration: int = 0
    step: int = 0
    samples: int = 0
    nfe: int = 0
    wall_s: float = 0.0


def plan_blocks(order: torch.Tensor, num_shares: int, micro_batch: int) -> Blocks:
    """Cut a permutation of the rollout's rows into ``num_shares`` shares and each share into blocks.

    Args:
        order: [N] a permutation of ``range(N)``.
        num_shares: optimizer steps of the iteration.
        micro_batch: most rows per block.

    Returns:
        ``num_shares`` lists of [<= micro_batch] long tensors; a share may be empty when N < num_shares.
    """
    return [list(torch.split(share, micro_batch)) for share in torch.tensor_split(order, num_shares)]


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


def follower_end(rank: int, steps: int | None = None) -> dict[str, Any]:
    """What a data-parallel rank other than 0 returns for a run: the results are rank 0's, so none here."""
    return {"type": "run_end", "status": "completed", "rank": rank, "steps": steps, "steps_to_target": None,
            "censored": None, "best_score": None, "final_score": None, "wall_s": 0.0}


class _NoWriter:
    """A data-parallel rank other than 0: records are built (for progress) but not written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, **fields}


class _MirroredWriter:
    """The results writer, then each mirror (``--log``): the JSONL record is written first, and stays the
    source of truth."""

    def __init__(self, writer: Any, mirrors: list[Any]):
        self.inner, self.mirrors, self.path = writer, mirrors, writer.path

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = self.inner.write(type_, **fields)
        for mirror in self.mirrors:
            mirror.write(record)
        return record


class Trainer:
    """Trains one (task, algorithm, seed) run and writes ``run_dir/metrics.jsonl``."""

    def __init__(self, task: TaskSpec, algorithm: Algorithm, config: TrainConfig, run_dir: str | Path,
                 algorithm_name: str | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 distributed: Distributed | None = None, mirrors: Sequence[str] = ()):
        self.task, self.algorithm, self.cfg = task, algorithm, config
        self.mirror_names = list(mirrors)
        # the stochastic step's noise level: the trainer's setting unless the algorithm has its own
        self.noise_level = algorithm.noise_level(config.noise_level)
        self.latent_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            config.latent_dtype]  # --log: TensorBoard / wandb copies of the records (mirrors.py)
        self.dist = distributed or Distributed()
        self.algorithm_name = algorithm_name or algorithm.name
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda record: None)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        # the reward first: a missing reward model should fail before a large backbone loads
        self.reward = REWARDS.get(task.reward)(**task.reward_args)
        # evaluation only, never trained on: a second reader that makes reward hacking visible
        self.gold = REWARDS.get(task.gold_reward)(**task.gold_reward_args) if task.gold_reward else None
        self.scorer = AsyncRewardWorker(self.reward, max_pending=2)
        if self.dist.lockstep and task.backbone_args.get("max_batch"):
            # a call split by row count would make a different number of weight gathers on each rank
            raise UserError("--fsdp needs the backbone's max_batch unset (micro_batch bounds a training call's "
                            f"rows); task {task.id} sets max_batch={task.backbone_args['max_batch']}")
        torch.manual_seed(config.seed)  # LoRA initialisation
        self.backbone: Backbone = task.build_backbone()
        self.device = getattr(self.backbone, "device", torch.device("cpu"))
        self.trajectory_device = self.device if config.trajectory_device == "auto" else torch.device(
            config.trajectory_device)
        self.backbone.add_lora(config.lora_rank, config.lora_alpha)
        if config.gradient_checkpointing:
            self.backbone.transformer.enable_gradient_checkpointing()
        # FSDP: the frozen base weights sharded over the ranks, the LoRA weights kept whole on each
        self.dist.shard_frozen(self.backbone.transformer, self.backbone.trainable_parameters())
        if config.compile:  # in place: module and parameter names (checkpoints, adapters) stay the same
            self.backbone.transformer.compile()
        self.params = self.backbone.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=config.adam_betas)
        self.ema = ParameterEMA(self.params, config.ema_decay, config.ema_update_interval) \
            if config.ema_decay > 0 else None
        self.prompt_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1_000_003)
        self.sigmas = self.backbone.sigmas(config.num_steps).to(self.device)
        self.state = RunState()
        self.writer = ResultsWriter(self.run_dir) if self.dist.is_main else _NoWriter(self.run_dir)
        self._saved_at: int | None = None  # step of the last checkpoint written or loaded
        self._sampling_weights: list[torch.Tensor] | None = None  # see iteration()
        self.evaluator = Evaluator(task, self.backbone, self.reward, self.gold, config.eval_num_steps,
                                   config.eval_guidance)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """The eval record's metrics (:class:`opgrpo_bench.evaluation.Evaluator`) with the EMA weights."""
        if self.ema is not None:
            with self.ema.applied(self.params):
                return self.evaluator()
        return self.evaluator()

    def _log_eval(self) -> dict[str, Any]:
        # rank 0 evaluates and writes; under FSDP every rank evaluates (each forward gathers the weights
        # from all of them) and rank 0 writes
        if not self.dist.is_main and not self.dist.lockstep:
            return {}
        metrics = self.evaluate()
        if not self.dist.is_main:
            return {}
        s = self.state
        rec = self.writer.write("eval", step=s.step, samples=s.samples, nfe=s.nfe, wall_s=round(s.wall_s, 3),
                                **metrics)
        self.progress(rec)
        return rec

    # -- one iteration -------------------------------------------------------------------------
    def rollout(self) -> tuple[Rollout, Blocks]:
        """Sample P groups of G trajectories with the current weights, block by block, and score them.

        Returns the rollout (rows in group order) and the blocks of each optimizer step's share.
        """
        cfg, task = self.cfg, self.task
        P, G, T = cfg.prompts_per_iter, cfg.group_size, cfg.num_steps

        def draw_prompts(n: int) -> list[int]:
            ids = torch.randperm(len(task.train_prompts), generator=self.prompt_gen)[:n]
            if len(ids) < n:  # fewer prompts than groups: sample with replacement
                ids = torch.randint(len(task.train_prompts), (n,), generator=self.prompt_gen)
            return ids.tolist()

        plan = self.algorithm.plan(P, G, T, self.state.iteration, self.prompt_gen, draw_prompts)
        group_prompts = list(plan.prompt_ids)
        prompt_ids = torch.tensor(group_prompts).repeat_interleave(G)
        group_ids = torch.arange(P).repeat_interleave(G)
        N = P * G
        order = torch.randperm(N, generator=self.prompt_gen)
        shares = plan_blocks(order, cfg.optimizer_steps_per_iter, cfg.micro_batch)
        noise = torch.randn((N, *self.backbone.latent_shape), generator=self.noise_gen).to(self.device,
                                                                                           self.latent_dtype)
        if plan.shared_noise:  # every member of a group starts from its first member's noise (drawn anyway)
            noise = noise[torch.arange(N, device=noise.device) // G * G]

        # rows that follow a stored trajectory for their first transitions
        forced_len = torch.zeros(N, dtype=torch.long, device=self.device)
        forced = behaviour_prefix = None
        ode_after = torch.zeros(N, dtype=torch.bool, device=self.device)
        if plan.forced:
            K = max(len(f.log_probs) for f in plan.forced.values())
            forced = torch.zeros((N, K + 1, *self.backbone.latent_shape), device=self.device)
            behaviour_prefix = torch.zeros((N, T), device=self.device)
            for i, row in plan.forced.items():
                k = len(row.log_probs)
                forced[i, : k + 1] = row.latents.to(self.device)
                forced_len[i] = k
                behaviour_prefix[i, :k] = row.log_probs.to(self.device)
                ode_after[i] = row.then == "ode"
        sde_steps = None if plan.sde_steps is None else plan.sde_steps.to(torch.bool)
        group_cond = self.backbone.encode([task.train_prompts[i].text for i in group_prompts])
        cond_index = group_ids.to(self.device)
        cond = index_cond(group_cond, cond_index)
        prompts = [task.train_prompts[i] for i in prompt_ids.tolist()]
        # zeros, not empty: with several processes each row is filled by its owner only, then summed
        store = self.trajectory_device
        latents = torch.zeros((N, T + 1, *self.backbone.latent_shape), device=store, dtype=self.latent_dtype)
        log_probs = torch.zeros((N, T), device=self.device)
        keep_means = self.algorithm.needs_behaviour_means
        means = torch.zeros((N, T, *self.backbone.latent_shape), device=store) if keep_means else None
        pending = []
        blocks = [b for share in shares for b in share]
        owned = 0
        for g, block in enumerate(blocks):
            if not self.dist.owns(g):  # another rank samples it; keep the global noise stream
                skip_sde_noise(self.noise_gen, len(block), T, tuple(self.backbone.latent_shape))
                continue
            owned += 1
            rows = block.to(self.device)
            traj = sample_sde(self.backbone, index_cond(cond, rows), noise[rows], self.sigmas, self.noise_level,
                              cfg.guidance, self.noise_gen, None if forced is None else forced[rows],
                              forced_len[rows], ode_after_forced=ode_after[rows],
                              logprob_reduction=cfg.logprob_reduction, sde_steps=sde_steps,
                              transition=self.algorithm.transition, return_means=keep_means)
            latents[block.to(store)] = traj.latents.to(store, latents.dtype)
            log_probs[rows] = traj.log_probs
            if means is not None:
                means[block.to(store)] = traj.means.to(store)
            # scoring this block (on the worker thread) overlaps the sampling of the next one
            idx = block.tolist()
            pending.append((rows, self.scorer.submit(self.backbone.decode(traj.latents[:, -1]),
                                                     [prompts[i].text for i in idx],
                                                     [prompts[i].meta for i in idx])))
        if self.dist.lockstep:  # as many network calls as the rank with the most blocks
            busiest = -(-len(blocks) // self.dist.world_size)
            with torch.no_grad():
                self._idle_calls(group_cond, (busiest - owned) * T, cfg.guidance)
        self.dist.sum_(latents)  # every rank now holds the whole rollout
        self.dist.sum_(log_probs)
        if means is not None:
            self.dist.sum_(means)
        behaviour = log_probs.clone()
        if behaviour_prefix is not None:
            prefix = torch.arange(T, device=self.device)[None, :] < forced_len[:, None]
            behaviour = torch.where(prefix, behaviour_prefix, behaviour)
        rewards = torch.zeros(N, device=self.device)
        for rows, result in pending:
            rewards[rows] = result.result().scores.float().to(self.device)
        self.dist.sum_(rewards)
        for i, row in plan.forced.items():  # a row that follows a whole stored trajectory keeps its reward
            if row.reward is not None:
                rewards[i] = row.reward

        self.state.samples += int((forced_len == 0).sum())
        self.state.nfe += N * T * self.backbone.nfe_per_sample(cfg.guidance)
        rollout = Rollout(prompt_ids, group_ids, [p.text for p in prompts], [p.meta for p in prompts],
                          latents, self.sigmas, log_probs, behaviour, forced_len, rewards,
                          iteration=self.state.iteration, cond=group_cond, cond_index=cond_index,
                          sde_steps=sde_steps, means=means)
        return rollout, shares

    def update(self, batch: TrainBatch, blocks: list[torch.Tensor], first_block: int = 0) -> dict[str, Any]:
        """One optimizer step over the trained (sample, step) pairs of ``blocks``; returns its metrics.

        One forward (and backward) per block and trained denoising step, over the block's rows exactly
        as the sampler evaluated them; rows that are not trained at that step are evaluated but masked.
        ``first_block`` is the global index of ``blocks[0]`` in the iteration: with several processes,
        block ``first_block + j`` is computed by rank ``(first_block + j) % N`` and the gradients summed.
        """
        if self.algorithm.objective == "forward":
            return self._update_forward(batch, blocks, first_block)
        mask = batch.train_mask
        total = sum(int(mask[b].sum()) for b in blocks)
        self.optimizer.zero_grad(set_to_none=True)
        if total == 0:  # no signal in this share: the step is spent without an update (on every rank)
            return {"loss/total": 0.0, "train/trained_pairs": 0}
        calls = [(b.to(self.device), k, (first_block + j) % self.dist.world_size) for j, b in enumerate(blocks)
                 for k in range(batch.rollout.num_steps) if bool(mask[b, k].any())]
        mine = [i for i, (_, _, owner) in enumerate(calls) if owner == self.dist.rank]
        spare = self._spare_calls([owner for _, _, owner in calls])
        # the reference velocities, all under one switch of the adapters (toggling them costs a walk over
        # the model's modules); the same calls as below, so the same numbers
        v_refs: dict[int, torch.Tensor | None] = {i: None for i in mine}
        if self.algorithm.needs_reference and (mine or spare):
            with torch.no_grad(), self.backbone.reference():
                v_refs = {i: self._velocity(batch.rollout, calls[i][0], calls[i][1]) for i in mine}
                self._idle_calls(batch.rollout.cond, spare, self.cfg.guidance)
        own = {i: self._micro_step(batch, calls[i][0], calls[i][1], total, v_refs[i]) for i in mine}
        self._idle_calls(batch.rollout.cond, spare, self.cfg.guidance, backward=True)
        per_call = 2 if self.algorithm.needs_reference else 1  # counted for every call, whoever ran it
        self.state.nfe += sum(len(rows) for rows, _, _ in calls) * self.backbone.nfe_per_sample(self.cfg.guidance) \
            * per_call
        self.dist.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        parts = [own[i] for i in range(len(calls))] if not self.dist.active else self._gather_parts(
            own, [o for _, _, o in calls], [int(mask[rows.cpu(), k].sum()) for rows, k, _ in calls])
        return {**self.algorithm.summarize(parts, batch), "grad_norm": grad_norm.item(),
                "train/trained_pairs": total}

    def _update_forward(self, batch: TrainBatch, blocks: list[torch.Tensor], first_block: int) -> dict[str, Any]:
        """One optimizer step of a forward-process objective (``algorithm.objective == "forward"``, e.g.
        DiffusionNFT): per block, ``algorithm.forward_points`` points ``x_t = (1 - t) x_0 + t eps`` on the
        noising path of the rollout's final samples, the velocity there with gradient and under the sampling
        weights without, and ``algorithm.forward_loss``. No log-probability is involved.

        ``t`` and ``eps`` come from a generator seeded by (seed, iteration, global block index), so they do
        not depend on the process count. Blocks are dealt to ranks as in :meth:`update`.
        """
        ro = batch.rollout
        K = self.algorithm.forward_points
        keep = batch.train_mask.any(1)  # samples that carry signal
        total = sum(int(keep[b].sum()) for b in blocks) * K
        self.optimizer.zero_grad(set_to_none=True)
        if total == 0:
            return {"loss/total": 0.0, "train/trained_pairs": 0}
        calls = [((first_block + j) % self.dist.world_size, j, kk) for j in range(len(blocks)) for kk in range(K)]
        own: dict[int, PairLoss] = {}
        for j, b in enumerate(blocks):
            if (first_block + j) % self.dist.world_size != self.dist.rank:
                continue
            rows = b.to(self.device)
            kept = keep[b].to(self.device)
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + ro.iteration * 7919 + first_block + j)
            x0 = self._latents(ro, rows, ro.num_steps).float()
            cond = index_cond(ro.cond, ro.cond_index[rows])
            for kk in range(K):
                t = self.algorithm.forward_time(len(rows), gen).to(self.device)
                eps = torch.randn(x0.shape, generator=gen).to(self.device)
                s = t.view(-1, *([1] * (x0.ndim - 1)))
                x_t = (1 - s) * x0 + s * eps
                with torch.no_grad(), holding(self.params, self._sampling_weights):
                    v_old = self.backbone.velocity(x_t, t, cond, 1.0)
                v = self.backbone.velocity(x_t, t, cond, 1.0)
                part = self.algorithm.forward_loss(batch, rows[kept], v[kept], v_old[kept], (eps - x0)[kept])
                (part.loss.sum() / total).backward()
                own[j * K + kk] = part
        spare = self._spare_calls([(first_block + j) % self.dist.world_size for j in range(len(blocks))]) * K
        for _ in range(spare):  # lockstep: the no-gradient call, then the call with a backward
            with torch.no_grad():
                self._idle_calls(ro.cond, 1, 1.0)
            self._idle_calls(ro.cond, 1, 1.0, backward=True)
        self.state.nfe += sum(len(b) for b in blocks) * K * 2 * self.backbone.nfe_per_sample(1.0)
        self.dist.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        parts = [own[i] for i in range(len(calls))] if not self.dist.active else self._gather_parts(
            own, [o for o, _, _ in calls], [int(keep[blocks[j]].sum()) for _, j, _ in calls])
        return {**self.algorithm.summarize(parts, batch), "grad_norm": grad_norm.item(),
                "train/trained_pairs": total}

    def _spare_calls(self, owners: Sequence[int]) -> int:
        """Lockstep (FSDP): how many idle calls this rank owes, given the owner of every call of a phase
        (the busiest rank's count minus this rank's); 0 without lockstep."""
        if not self.dist.lockstep:
            return 0
        counts = [0] * self.dist.world_size
        for owner in owners:
            counts[owner] += 1
        return max(counts) - counts[self.dist.rank]

    def _idle_calls(self, cond: dict[str, torch.Tensor], calls: int, guidance: float, backward: bool = False) -> None:
        """``calls`` network calls on one zero row whose velocity is thrown away: under FSDP each forward
        gathers the sharded weights from every rank, so a rank with less work still takes part. With
        ``backward`` each is differentiated times 0 (the gradients gain exact zeros, the backward's gathers
        match the busy ranks'). Runs in the caller's grad mode and adapter state."""
        for _ in range(calls):
            x = torch.zeros((1, *self.backbone.latent_shape), device=self.device, dtype=self.latent_dtype)
            v = self.backbone.velocity(x, self.sigmas[:1], index_cond(cond, [0]), guidance,
                                       detach_uncond=self.cfg.cfg_detach_uncond)
            if backward:
                (v.float().sum() * 0).backward()

    def _gather_parts(self, own: dict[int, PairLoss], owners: list[int], lengths: list[int]) -> list[PairLoss]:
        """Every call's per-pair statistics on every rank, in call order (for the step's metrics)."""
        fields = {i: {"rows": p.rows, **p.stats} for i, p in own.items()}
        gathered = self.dist.gather_calls(fields, owners, lengths)
        return [PairLoss(loss=torch.zeros(0), rows=f.pop("rows").long(), stats=f) for f in gathered]

    def _latents(self, ro: Rollout, rows: torch.Tensor, k: int) -> torch.Tensor:
        """``ro.latents[rows, k]`` on the compute device (the trajectories may be kept on the CPU)."""
        if ro.latents.device == self.device:
            return ro.latents[rows, k]
        return ro.latents[rows.to(ro.latents.device), k].to(self.device)

    def _velocity(self, ro: Rollout, rows: torch.Tensor, k: int) -> torch.Tensor:
        """The network call the sampler made for ``rows`` at denoising step ``k`` (same inputs and shape)."""
        n = len(rows)
        cond = index_cond(ro.cond, ro.cond_index[rows])
        return self.backbone.velocity(self._latents(ro, rows, k), ro.sigmas[k].expand(n), cond, self.cfg.guidance,
                                      detach_uncond=self.cfg.cfg_detach_uncond)

    def _micro_step(self, batch: TrainBatch, rows: torch.Tensor, k: int, total: int,
                    v_ref: torch.Tensor | None = None) -> PairLoss:
        """Forward + backward of denoising step ``k`` of one block of ``rows``: the algorithm's loss of the
        trained rows, scaled by their share of ``total`` pairs so that the accumulated gradient is that of
        the mean. ``v_ref``: the reference model's velocity for the same call (when the algorithm needs it)."""
        cfg, ro = self.cfg, batch.rollout
        n = len(rows)
        trained = batch.train_mask[rows, k]
        x, x_next = self._latents(ro, rows, k), self._latents(ro, rows, k + 1)
        sigma, sigma_next = ro.sigmas[k].expand(n), ro.sigmas[k + 1].expand(n)
        v = self._velocity(ro, rows, k)
        step_fn = transition_function(self.algorithm.transition)
        _, logp, mean, std = step_fn(v, sigma, sigma_next, x, self.noise_level, prev_sample=x_next,
                                                   sigma_max=ro.sigmas[1], logprob_reduction=cfg.logprob_reduction)
        ref_mean = None
        if v_ref is not None:
            ref_mean = step_fn(v_ref, sigma, sigma_next, x, self.noise_level, prev_sample=x_next,
                                             sigma_max=ro.sigmas[1])[2][trained]
        part = self.algorithm.loss(batch, rows[trained], k, logp[trained], mean[trained], std[trained], ref_mean,
                                   (sigma_next - sigma)[trained])
        (part.loss.sum() / total).backward()
        return part

    def _check_rewards(self, rollout: Rollout) -> None:
        """Every reward NaN: nothing to learn from, and most likely a task/reward mismatch."""
        if not bool(torch.isfinite(rollout.rewards).any()):
            raise UserError(f"every reward of iteration {rollout.iteration} is NaN: reward '{self.task.reward}' "
                            f"found nothing to score, e.g. for the prompt {rollout.prompts[0]!r}")

    def iteration(self) -> None:
        """One rollout, then its optimizer steps (stopping at the budget), with evaluations in between."""
        mark = time.perf_counter()
        rollout, shares = self.rollout()
        # the weights the rollout was sampled with, for an algorithm that evaluates that policy again
        self._sampling_weights = [p.detach().clone() for p in self.params] \
            if self.algorithm.needs_sampling_weights else None
        self._check_rewards(rollout)
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
            rec = self.writer.write("step", step=s.step, iteration=s.iteration, samples=s.samples, nfe=s.nfe,
                                    wall_s=round(s.wall_s, 3), **common, **metrics)
            self.progress(rec)
            if s.step % self.cfg.eval_every == 0:
                self._log_eval()
            mark = time.perf_counter()

    # -- the run -------------------------------------------------------------------------------
    def run_start_record(self, run_id: str, config_hash: str | None = None) -> dict[str, Any]:
        algo_cfg = dataclasses.asdict(self.algorithm.config)
        return dict(
            run_id=run_id, task=self.task.id, task_version=self.task.version, prompt_hash=self.task.prompt_hash,
            num_train_prompts=len(self.task.train_prompts), num_eval_prompts=len(self.task.eval_prompts),
            algorithm=self.algorithm_name, algorithm_class=type(self.algorithm).__name__, seed=self.cfg.seed,
            config={"train": dataclasses.asdict(self.cfg), "algorithm": algo_cfg}, config_hash=config_hash,
            target=self.task.target, higher_is_better=self.task.higher_is_better, budget_steps=self.cfg.steps,
            reward=self.task.reward, eval_metric=self.task.eval_metric, world_size=self.dist.world_size,
            fsdp=self.dist.fsdp,
            gold_reward=self.task.gold_reward, gold_reward_args=self.task.gold_reward_args,
            precision=str(getattr(self.backbone, "dtype", torch.float32)),
            versions=_versions(), git_sha=_git_sha(), device=self._device_name(),
            start_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

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
            self.writer = _MirroredWriter(self.writer, mirrors)
        try:
            if resume and self.load_checkpoint():
                if self.dist.is_main:
                    truncate_after_step(self.writer.path, self.state.step, budget_steps=self.cfg.steps)
            else:
                if self.dist.is_main:
                    for stale in (self.writer.path, self.run_dir / PACKED_FILE, self.run_dir / CHECKPOINT):
                        stale.unlink(missing_ok=True)
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
            self.export_adapters()
            return self.finish()
        except KeyboardInterrupt:
            raise RunInterrupted(self.state.step) from None
        finally:
            self.scorer.close()
            for mirror in mirrors:
                mirror.close()

    def export_adapters(self) -> None:
        """The final LoRA weights and (with an EMA) the EMA weights the evaluations used, as diffusers LoRA
        folders in the run directory (:mod:`opgrpo_bench.export`)."""
        from opgrpo_bench.export import ADAPTER_DIRS, save_adapter

        if not self.dist.is_main:
            return
        transformer = self.backbone.transformer
        save_adapter(transformer, self.run_dir / ADAPTER_DIRS["final"])
        if self.ema is not None:
            with self.ema.applied(self.params):
                save_adapter(transformer, self.run_dir / ADAPTER_DIRS["ema"])

    def _at_boundary(self) -> bool:
        """Whether the last iteration ran all its optimizer steps (the state is between iterations)."""
        return self.state.step == self.state.iteration * self.cfg.optimizer_steps_per_iter

    def finish(self) -> dict[str, Any]:
        if not self.dist.is_main:  # the results are rank 0's
            return follower_end(self.dist.rank, self.state.step)
        evals = [r for r in read_records(self.writer.path) if r.get("type") == "eval"]
        hit = first_reaching(evals, self.task.target, self.task.higher_is_better)
        scores = [e["score"] for e in evals if e.get("score") is not None]
        rec = self.writer.write(
            "run_end", status="completed", steps_to_target=hit["step"] if hit else None,
            samples_to_target=hit["samples"] if hit else None, nfe_to_target=hit["nfe"] if hit else None,
            wall_s_to_target=hit["wall_s"] if hit else None, censored=hit is None,
            final_score=evals[-1]["score"] if evals else None,
            best_score=(max(scores) if self.task.higher_is_better else min(scores)) if scores else None,
            steps=self.state.step, wall_s=round(self.state.wall_s, 3),
        )
        self.progress(rec)
        return rec

    # -- checkpoints (resume) ------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the state between two iterations (atomically; safetensors + JSON, no pickle)."""
        if not self._at_boundary() or self._saved_at == self.state.step:
            return
        if not self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            self._saved_at = self.state.step
            return
        state = {
            "state": dataclasses.asdict(self.state),
            "params": [p.detach() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "algorithm": self.algorithm.state_dict(),
            "prompt_gen": self.prompt_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
        }
        save_state(self.run_dir / CHECKPOINT, state)
        self._saved_at = self.state.step

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint; False when there is none. A damaged one is a :class:`UserError`."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = load_state(path)
            self.state = RunState(**state["state"])
            if len(state["params"]) != len(self.params):
                raise CheckpointError(f"{path} holds {len(state['params'])} tensors for {len(self.params)} "
                                      "trainable parameters")
            with torch.no_grad():
                for p, saved in zip(self.params, state["params"]):
                    p.copy_(saved)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.algorithm.load_state_dict(state["algorithm"])
            self.prompt_gen.set_state(state["prompt_gen"])
            self.noise_gen.set_state(state["noise_gen"])
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot resume from {path}: {str(err).splitlines()[0]}; run with --fresh to "
                            "retrain this run") from None
        self._saved_at = self.state.step
        return True
