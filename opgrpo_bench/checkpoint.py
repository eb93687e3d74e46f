"""Checkpoints as one safetensors file: tensors in the file's body, everything else as JSON in its header.

A checkpoint is a nested structure of dicts, lists, tuples, strings, numbers, booleans, None and
tensors (LoRA weights, optimizer moments, EMA weights, replay latents, generator states as uint8 tensors).
:func:`save_state` flattens it: each tensor is stored under its path in the structure (``"optimizer/
state/0/exp_avg"``) and replaced in the structure by ``{"__tensor__": path}``; the structure itself goes
into the safetensors metadata as JSON. Loading never unpickles anything: safetensors parses a JSON
header and raw little-endian buffers, and :func:`load_state` puts the tensors back in place.

Tuples come back as lists (JSON has no tuple), which every consumer here accepts (e.g. Adam's betas).

Writes are atomic: the file is written under a temporary name, fsynced and renamed over the old one, so
a crash or a full disk leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from opgrpo_bench.storage import atomic_write

__all__ = ["CheckpointError", "save_state", "load_state"]

_TENSOR = "__tensor__"
_META_KEY = "opgrpo_bench_state"


class CheckpointError(Exception):
    """The checkpoint file is missing a part, truncated or not one of ours."""


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {type(k).__name__} at '{path}'")
            # int keys (optimizer state) are kept apart from str keys so they round-trip
            out[f"{'i:' if isinstance(k, int) else 's:'}{k}"] = _flatten(v, f"{path}/{k}" if path else str(k),
                                                                         tensors)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at '{path}' in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            kind, _, name = k.partition(":")
            out[int(name) if kind == "i" else name] = _unflatten(v, tensors)
        return out
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write the nested ``state`` to ``path`` (safetensors + JSON header), atomically."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "", tensors)
    meta = {_META_KEY: json.dumps(structure)}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as err:  # safetensors reports I/O failures as its own type, not OSError
            text = str(err)
            code = errno.ENOSPC if ("code: 28" in text or "StorageFull" in text or "No space" in text) else errno.EIO
            raise OSError(code, f"{os.strerror(code)} while writing {tmp.name} ({text.splitlines()[0]})",
                          str(path)) from None

    atomic_write(path, write)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state`; raises :class:`CheckpointError` if it is damaged."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        structure = json.loads(meta[_META_KEY])
        return _unflatten(structure, tensors)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is damaged or not an opgrpo-bench checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
