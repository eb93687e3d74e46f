"""Sampling an algorithm's plan into a scored rollout, block by block.

The rows of an iteration (P groups of G, group-major) are shuffled once, cut into the optimizer steps'
shares and each share into blocks of ``micro_batch`` rows (:func:`plan_blocks`). The sampler runs block by
block, and every training call that repeats a sampler call (``Call.sampler``) uses the same block, so a
call's shapes and inputs are the sampler's: bit-identical log-probs before the first update, whatever a
BLAS library does with batch sizes (Flow-GRPO's rule "train batch = sample batch", made exact).

With several processes, block ``b`` is sampled by rank ``b % world_size``; a rank skips the noise of the
blocks it does not own so that every rank's random stream is the 1-process stream, and the trajectories,
log-probs and rewards are summed so that every rank holds the whole rollout.
"""

from __future__ import annotations

from typing import Callable

import torch

from opgrpo_bench.algorithms.base import Algorithm, Rollout, RolloutPlan, SamplerSettings
from opgrpo_bench.backbones.base import Backbone, index_cond
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.errors import UserError
from opgrpo_bench.rewards.worker import AsyncRewardWorker
from opgrpo_bench.sampling import sample_sde, skip_sde_noise
from opgrpo_bench.tasks.spec import TaskSpec
from opgrpo_bench.training.lockstep import idle_calls

Blocks = list[list[torch.Tensor]]
"""Per optimizer step, the row blocks (each [<= micro_batch] indices into the rollout) it trains."""


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


class RolloutSampler:
    """Samples and scores one iteration's rollout of a plan.

    Args:
        task: prompts and reward name; backbone: the policy; scorer: the reward on a worker thread.
        dist: the process layout; sampler: how to sample (the algorithm's :class:`SamplerSettings`).
        sigmas: [T+1] the schedule on the compute device; latent_dtype: dtype of the stored latents.
        trajectory_device: where the trajectories are kept; num_shares / micro_batch: block dealing.
        cfg_detach_uncond: passed to lockstep idle calls (same network call as a training call's).
        seed: the run's seed, carried by the rollout.
    """

    def __init__(self, task: TaskSpec, backbone: Backbone, scorer: AsyncRewardWorker, dist: Distributed,
                 sampler: SamplerSettings, sigmas: torch.Tensor, latent_dtype: torch.dtype,
                 trajectory_device: torch.device, num_shares: int, micro_batch: int, cfg_detach_uncond: bool,
                 seed: int):
        self.task, self.backbone, self.scorer, self.dist, self.sampler = task, backbone, scorer, dist, sampler
        self.sigmas, self.latent_dtype, self.store = sigmas, latent_dtype, trajectory_device
        self.device = sigmas.device
        self.num_shares, self.micro_batch, self.detach_uncond, self.seed = num_shares, micro_batch, \
            cfg_detach_uncond, seed

    def __call__(self, algorithm: Algorithm, num_groups: int, group_size: int, iteration: int,
                 prompt_gen: torch.Generator, noise_gen: torch.Generator) -> tuple[Rollout, Blocks]:
        """Sample ``num_groups`` groups of ``group_size`` trajectories as ``algorithm.plan`` says, and score
        them. Returns the rollout (rows in group order) and the blocks of each optimizer step's share."""
        task, T, P, G = self.task, len(self.sigmas) - 1, num_groups, group_size
        plan = algorithm.plan(P, G, T, iteration, prompt_gen, self._prompt_drawer(prompt_gen))
        N = P * G
        order = torch.randperm(N, generator=prompt_gen)
        shares = plan_blocks(order, self.num_shares, self.micro_batch)
        noise = torch.randn((N, *self.backbone.latent_shape), generator=noise_gen).to(self.device, self.latent_dtype)
        if plan.shared_noise:  # every member of a group starts from its first member's noise (drawn anyway)
            noise = noise[torch.arange(N, device=noise.device) // G * G]
        forced, forced_len, behaviour_prefix, ode_after = self._forced_rows(plan, N, T)
        sde_steps = None if plan.sde_steps is None else plan.sde_steps.to(torch.bool)
        group_prompts = list(plan.prompt_ids)
        prompt_ids = torch.tensor(group_prompts).repeat_interleave(G)
        group_cond = self.backbone.encode([task.train_prompts[i].text for i in group_prompts])
        group_ids = torch.arange(P).repeat_interleave(G)
        cond_index = group_ids.to(self.device)
        cond = index_cond(group_cond, cond_index)
        prompts = [task.train_prompts[i] for i in prompt_ids.tolist()]
        # zeros, not empty: with several processes each row is filled by its owner only, then summed
        shape = self.backbone.latent_shape
        latents = torch.zeros((N, T + 1, *shape), device=self.store, dtype=self.latent_dtype)
        log_probs = torch.zeros((N, T), device=self.device)
        means = torch.zeros((N, T, *shape), device=self.store) if self.sampler.keep_means else None
        s = self.sampler
        pending, blocks, owned = [], [b for share in shares for b in share], 0
        for g, block in enumerate(blocks):
            if not self.dist.owns(g):  # another rank samples it; keep the global noise stream
                skip_sde_noise(noise_gen, len(block), T, tuple(shape))
                continue
            owned += 1
            rows = block.to(self.device)
            traj = sample_sde(self.backbone, index_cond(cond, rows), noise[rows], self.sigmas, s.noise_level,
                              s.guidance, noise_gen, None if forced is None else forced[rows], forced_len[rows],
                              ode_after_forced=ode_after[rows], logprob_reduction=s.logprob_reduction,
                              sde_steps=sde_steps, transition=s.transition, return_means=s.keep_means)
            latents[block.to(self.store)] = traj.latents.to(self.store, latents.dtype)
            log_probs[rows] = traj.log_probs
            if means is not None:
                means[block.to(self.store)] = traj.means.to(self.store)
            # scoring this block (on the worker thread) overlaps the sampling of the next one
            idx = block.tolist()
            pending.append((rows, self.scorer.submit(self.backbone.decode(traj.latents[:, -1]),
                                                     [prompts[i].text for i in idx], [prompts[i].meta for i in idx])))
        if self.dist.lockstep:  # as many network calls as the rank with the most blocks
            busiest = -(-len(blocks) // self.dist.world_size)
            with torch.no_grad():
                idle_calls(self.backbone, group_cond, self.sigmas[:1], (busiest - owned) * T, s.guidance,
                           self.latent_dtype, self.detach_uncond)
        for t in (latents, log_probs) + ((means,) if means is not None else ()):
            self.dist.sum_(t)  # every rank now holds the whole rollout
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
        if not bool(torch.isfinite(rewards).any()):  # most likely a task/reward mismatch
            raise UserError(f"every reward of iteration {iteration} is NaN: reward '{task.reward}' found nothing "
                            f"to score, e.g. for the prompt {prompts[0].text!r}")
        rollout = Rollout(prompt_ids, group_ids, [p.text for p in prompts], [p.meta for p in prompts],
                          latents, self.sigmas, log_probs, behaviour, forced_len, rewards, iteration=iteration,
                          cond=group_cond, cond_index=cond_index, sde_steps=sde_steps, means=means,
                          sampler=self.sampler, seed=self.seed)
        return rollout, shares

    def _prompt_drawer(self, prompt_gen: torch.Generator) -> Callable[[int], list[int]]:
        """``draw_prompts(n)``: n distinct training prompts (with replacement when there are fewer)."""
        count = len(self.task.train_prompts)

        def draw_prompts(n: int) -> list[int]:
            ids = torch.randperm(count, generator=prompt_gen)[:n]
            if len(ids) < n:
                ids = torch.randint(count, (n,), generator=prompt_gen)
            return ids.tolist()

        return draw_prompts

    def _forced_rows(self, plan: RolloutPlan, N: int, T: int
                     ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The plan's rows that follow a stored trajectory: ``(forced [N, K+1, *shape] or None, forced_len
        [N], behaviour log-probs of the prefixes [N, T] or None, ode_after [N] bool)``."""
        forced_len = torch.zeros(N, dtype=torch.long, device=self.device)
        ode_after = torch.zeros(N, dtype=torch.bool, device=self.device)
        if not plan.forced:
            return None, forced_len, None, ode_after
        K = max(len(f.log_probs) for f in plan.forced.values())
        forced = torch.zeros((N, K + 1, *self.backbone.latent_shape), device=self.device)
        behaviour_prefix = torch.zeros((N, T), device=self.device)
        for i, row in plan.forced.items():
            k = len(row.log_probs)
            forced[i, : k + 1] = row.latents.to(self.device)
            forced_len[i] = k
            behaviour_prefix[i, :k] = row.log_probs.to(self.device)
            ode_after[i] = row.then == "ode"
        return forced, forced_len, behaviour_prefix, ode_after
