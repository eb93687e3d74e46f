"""Measuring a network call without running it: live bytes of every tensor it makes, and its FLOPs.

The planner runs the real diffusers/transformers modules on the meta device (shapes and dtypes, no data, no
memory). :class:`LiveBytes` is a ``TorchDispatchMode`` that sees every tensor an operator returns and keeps
the set of storages still alive (``StorageWeakRef``: a storage dies when its last tensor, view or autograd
saved value is gone), so its ``peak`` is the most bytes that were alive at once: the activations autograd
saves, temporaries, gradients made in the backward pass. A storage is counted once, whatever its views.

:func:`gpu_attention` models what a GPU does and this CPU does not: on CUDA, ``scaled_dot_product_attention``
runs the flash (or memory-efficient) kernel, which never materialises the [B, H, L, L] attention matrix and
saves only the output and a [B, H, L] log-sum-exp for the backward pass. Inside the context, SDPA calls go to
``aten._scaled_dot_product_flash_attention``, whose meta implementation gives exactly those outputs, and
whose FLOP formula ``torch.utils.flop_counter`` knows (forward and backward).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Peak and current bytes of the tensors created while the mode is active.

    Exact at operator granularity (the peak is taken after each operator's outputs exist, with its inputs
    still alive, as on a GPU), without workspaces inside fused kernels. To stay fast it checks which
    storages died only when the running upper bound could set a new peak.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._bound = 0  # bytes of storages not yet known to be dead: >= the live bytes
        self.peak = 0

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self._live.items() if ref.expired()]
        for k in dead:
            self._bound -= self._live.pop(k)[1]

    @property
    def current(self) -> int:
        """Bytes alive now (exact)."""
        self._sweep()
        return self._bound

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs: set[int] | None = None
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self._live:
                    if inputs is None:
                        inputs = {a.untyped_storage()._cdata for a in tree_flatten((args, kwargs))[0]
                                  if isinstance(a, torch.Tensor)}
                    if ref.cdata in inputs:  # a view of (or in-place op on) a tensor made outside: not ours
                        continue
                    nbytes = storage.nbytes()
                    self._live[ref.cdata] = (ref, nbytes)
                    self._bound += nbytes
        if self._bound > self.peak:
            self._sweep()
            self.peak = max(self.peak, self._bound)
        return out


def _flash_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False) -> torch.Tensor:
    if attn_mask is not None or enable_gqa:
        # the flash kernel takes no mask; CUDA's memory-efficient kernel does, with the same saved outputs
        out = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            if attn_mask is not None else None, True, dropout_p, is_causal, scale=scale)
        return out[0]
    return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                              scale=scale)[0]


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` as CUDA runs it (a fused kernel, no attention matrix kept)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class Measured:
    """Peak live bytes and FLOPs of what ran inside :func:`measure`."""

    peak: int = 0
    flops: int = 0


@contextlib.contextmanager
def measure() -> Iterator[Measured]:
    """Count live bytes (:class:`LiveBytes`) and FLOPs (``torch.utils.flop_counter``) of the block."""
    from torch.utils.flop_counter import FlopCounterMode

    result = Measured()
    tracker = LiveBytes()
    counter = FlopCounterMode(display=False)
    with counter, tracker:
        yield result
    result.peak = tracker.peak
    result.flops = counter.get_total_flops()
