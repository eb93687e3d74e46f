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

Collectives go through ``torch.distributed`` (gloo on CPU, NCCL on GPUs) as set up by accelerate's
``PartialState``; nothing is pickled (every message is a tensor).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch


class Distributed:
    """Rank, world size and the few collectives of a data-parallel run; a no-op for one process.

    Args:
        rank, world_size: this process's index and the number of processes.
        device: where collectives put their tensors (CPU for gloo, the rank's GPU for NCCL).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")

    @classmethod
    def from_environment(cls) -> "Distributed":
        """One process unless a launcher (torchrun, accelerate launch) set ``WORLD_SIZE`` > 1; then join
        the process group through accelerate (gloo on CPU, NCCL on GPUs)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

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
