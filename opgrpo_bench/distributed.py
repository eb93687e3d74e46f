"""Data parallelism: what the trainer needs from N processes, and nothing when there is one.

A run over N processes (``opgrpo-bench run ... --num-processes N``, or ``torchrun`` / ``accelerate
launch`` around ``-m opgrpo_bench.cli run``) computes what the 1-process run computes. The design:

- **One global stream.** Every rank draws every prompt, every initial noise and the row permutation from
  the same generators, exactly as a single process would. The rollout's blocks (``micro_batch`` rows,
  see :mod:`opgrpo_bench.trainer`) are dealt round-robin: block ``j`` of an optimizer step's share
  belongs to rank ``j % N``. A rank samples only its blocks and advances the SDE noise generator past
  the others (:func:`opgrpo_bench.sampling.skip_sde_noise`), so its random state stays the global one.
- **Everything the algorithm sees is global.** After sampling, latents, log-probs and rewards are summed
  across ranks (each row is non-zero on its owner only, so the sum is exact), so every rank holds the
  whole rollout: advantages use the global group statistics, and OP-GRPO's buffer is the same on every
  rank without being sent anywhere.
- **Gradients are summed.** Each rank runs forward/backward for its blocks (the loss is already divided
  by the global pair count), then the gradients are all-reduced; clipping and the optimizer step happen
  on identical gradients, so the weights stay identical. A rank without blocks in a share contributes
  zeros and still takes part in the collective: no rank takes a different control path.
- **Rank 0 writes** results, checkpoints and adapters; every rank reads the checkpoint on resume.
- **FSDP (optional) shards the frozen base weights** (``--fsdp``, or an accelerate config with
  ``distributed_type: FSDP``): each transformer block (the model's ``_no_split_modules``) and then the
  whole model go through torch's ``fully_shard`` (FSDP2), the LoRA parameters excluded, so every rank
  holds 1/N of the base weights and gathers one block's at a time. The LoRA weights stay whole and
  replicated, so gradients, clipping, the optimizer, the EMA, checkpoints and adapters are unchanged.
  The price is *lockstep*: a forward gathers weights from every rank, so every rank makes the same
  sequence of network calls. A rank with fewer blocks than another runs idle one-row calls (result
  unused, loss times 0) until they match, and every rank evaluates (rank 0 writes). The numbers are the
  unsharded run's: the gathered weights are the same values.

Collectives go through ``torch.distributed`` (gloo on CPU, NCCL on GPUs) as set up by accelerate's
``PartialState``; nothing is pickled (every message is a tensor).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from opgrpo_bench.errors import UserError


class Distributed:
    """Rank, world size and the few collectives of a data-parallel run; a no-op for one process.

    Args:
        rank, world_size: this process's index and the number of processes.
        device: where collectives put their tensors (CPU for gloo, the rank's GPU for NCCL).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 fsdp: bool = False, reshard_after_forward: bool = True):
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        self.fsdp = fsdp and world_size > 1
        """Whether the frozen base weights are sharded (:meth:`shard_frozen`); needs several processes."""
        self.reshard_after_forward = reshard_after_forward

    @classmethod
    def from_environment(cls) -> "Distributed":
        """One process unless a launcher (torchrun, accelerate launch) set ``WORLD_SIZE`` > 1; then join
        the process group through accelerate (gloo on CPU, NCCL on GPUs)."""
        raw = os.environ.get("WORLD_SIZE", "1")
        if not raw.strip().isdigit():
            raise UserError(f"the environment sets WORLD_SIZE={raw!r}, not a number of processes; unset it")
        if int(raw) <= 1:
            return cls()
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:  # a WORLD_SIZE left over from another job: joining a group would hang or fail per rank
            raise UserError(f"the environment sets WORLD_SIZE={raw} but no launcher started this process (no "
                            f"{', '.join(missing)}); unset WORLD_SIZE, or use --num-processes {raw}")
        from accelerate import PartialState

        from opgrpo_bench.devices import has_gpu

        state = PartialState(cpu=not has_gpu())
        # accelerate launch sets these from an FSDP config (distributed_type: FSDP, fsdp_config: ...)
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("0", "false")
        return cls(state.process_index, state.num_processes, state.device, fsdp=fsdp, reshard_after_forward=reshard)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def lockstep(self) -> bool:
        """Whether every rank must make the same network calls (FSDP gathers weights in each forward)."""
        return self.fsdp

    def shard_frozen(self, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter]) -> int:
        """Shard ``model``'s frozen weights over the ranks with FSDP2 (a no-op unless :attr:`fsdp`).

        Each module whose class is in ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (accelerate's setting, comma
        separated) or else in the model's ``_no_split_modules`` (diffusers names its transformer blocks
        there) becomes one FSDP unit, then the model itself (the embeddings and output layers). The
        ``trainable`` parameters are left out of every unit: they stay whole on every rank.

        Returns the number of units made (0 when not sharding).
        """
        if not self.fsdp:
            return 0
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or ",".join(
            getattr(model, "_no_split_modules", None) or [])
        wrap = {n.strip() for n in names.split(",") if n.strip()}
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        ignored = set(trainable)
        units = [m for m in model.modules() if type(m).__name__ in wrap and m is not model]
        for unit in units + [model]:
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.reshard_after_forward, ignored_params=ignored)
        return len(units) + 1

    def owns(self, block_index: int) -> bool:
        """Whether block ``block_index`` of a share is this rank's (round-robin)."""
        return block_index % self.world_size == self.rank

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (returns ``tensor``)."""
        if self.active:
            import torch.distributed as dist

            moved = tensor.to(self.device)
            dist.all_reduce(moved)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer (missing gradients count as 0)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.sum_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def gather_calls(self, mine: dict[int, dict[str, torch.Tensor]], owners: Sequence[int],
                     lengths: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Per-call named 1-D tensors, each call computed by one rank, on every rank in call order.

        Args:
            mine: this rank's calls: call index -> {name: [lengths[i]] tensor} (same names and dtypes in
                every call of every rank).
            owners: [num_calls] the rank that computed each call; lengths: [num_calls] rows of each call
                (both known on every rank, so only the values travel).

        Values travel as float64, exact for float32, bool and integer indices below 2^53.
        """
        if not self.active:
            return [mine[i] for i in range(len(owners))]
        import torch.distributed as dist

        schema = self._agree_on_schema(mine)
        names = [n for n, _ in schema]
        totals = [sum(n for n, o in zip(lengths, owners) if o == r) for r in range(self.world_size)]
        buffer = torch.zeros((max(totals), len(names)), dtype=torch.float64)
        offset = 0
        for i in sorted(mine):
            n = lengths[i]
            if n:
                buffer[offset:offset + n] = torch.stack([mine[i][name].detach().double().cpu() for name in names], 1)
            offset += n
        parts = [torch.zeros_like(buffer, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(parts, buffer.to(self.device))
        out, cursor = [], [0] * self.world_size
        for n, o in zip(lengths, owners):
            block = parts[o][cursor[o]:cursor[o] + n].cpu()
            cursor[o] += n
            out.append({name: block[:, j].to(dtype) for j, (name, dtype) in enumerate(schema)})
        return out

    def _agree_on_schema(self, mine: dict[int, dict[str, torch.Tensor]]) -> list[tuple[str, torch.dtype]]:
        """The (name, dtype) list of the calls' tensors, from the lowest rank that has a call (a rank
        without calls in this optimizer step cannot know it). Sent as bytes in a tensor, not pickled."""
        import torch.distributed as dist

        size = 4096
        text = ""
        if mine:
            first = mine[min(mine)]
            text = ";".join(f"{n}:{str(first[n].dtype).removeprefix('torch.')}" for n in sorted(first))
        raw = text.encode()
        if len(raw) > size:
            raise ValueError(f"too many per-pair statistics to gather ({len(raw)} bytes of names)")
        mine_t = torch.zeros(size, dtype=torch.uint8)
        mine_t[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        everyone = [torch.zeros_like(mine_t, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine_t.to(self.device))
        for t in everyone:
            found = bytes(t.cpu().tolist()).rstrip(b"\0").decode()
            if found:
                return [(n, getattr(torch, d)) for n, d in (item.split(":") for item in found.split(";"))]
        return []
