"""A run's trained adapters as diffusers/peft LoRA files, and loading them back.

At the end of a run the trainer writes, in the run directory,

- ``lora/pytorch_lora_weights.safetensors``: the final LoRA weights of the transformer;
- ``lora_ema/pytorch_lora_weights.safetensors``: the EMA weights the run's evaluations used (when the
  run keeps an EMA, ``ema_decay > 0``).

Both are diffusers' LoRA format (keys ``transformer.<module>.lora_A.weight`` / ``lora_B``, the peft
``LoraConfig`` in the safetensors metadata, so rank and alpha travel with the weights): a pipeline of
the same family takes them with ``pipe.load_lora_weights(run_dir / "lora_ema")``. ``opgrpo-bench eval``
loads them with :func:`load_adapter`, the same diffusers code path, into a freshly built task backbone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from opgrpo_bench.storage import atomic_folder

ADAPTER_DIRS = {"final": "lora", "ema": "lora_ema"}
"""Which adapter -> its folder in the run directory."""
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (``load_lora_weights`` finds it without ``weight_name``)."""
ADAPTER_NAME = "default"
"""peft's adapter name: the one the trainer's ``add_lora`` creates."""


def save_adapter(transformer: Any, directory: str | os.PathLike[str]) -> Path:
    """Write ``transformer``'s current LoRA weights to ``directory`` in diffusers' format, atomically.

    Uses diffusers' own writer (``StableDiffusion3Pipeline.save_lora_weights``; its format is the one
    every diffusers LoRA loader reads: SD3, FLUX and Wan pipelines alike) into a temporary sibling folder,
    then renames it over ``directory``, so a kill never leaves half a file.
    """
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict

    weights = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME).items()}
    metadata = transformer.peft_config[ADAPTER_NAME].to_dict()
    return atomic_folder(directory, lambda tmp: StableDiffusion3Pipeline.save_lora_weights(
        tmp, transformer_lora_layers=weights, weight_name=WEIGHT_NAME,
        transformer_lora_adapter_metadata=metadata)) / WEIGHT_NAME


def load_adapter(transformer: Any, directory: str | os.PathLike[str]) -> None:
    """Load a LoRA folder written by :func:`save_adapter` (or by diffusers) into ``transformer``.

    ``transformer`` must not have an adapter yet: diffusers creates it from the file's own
    ``LoraConfig`` (rank, alpha, target modules), as ``pipe.load_lora_weights`` would.
    """
    from diffusers import StableDiffusion3Pipeline

    # the pipelines' loader path: the state dict with the LoraConfig from the file's metadata (without it,
    # diffusers would infer alpha = rank and scale the adapter wrongly)
    state, metadata = StableDiffusion3Pipeline.lora_state_dict(str(directory), weight_name=WEIGHT_NAME,
                                                               return_lora_metadata=True)
    StableDiffusion3Pipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=ADAPTER_NAME,
                                                        metadata=metadata)


def export_run_adapters(transformer: Any, run_dir: str | os.PathLike[str], ema: Any | None,
                        params: Any) -> None:
    """A finished run's adapters: the final LoRA weights, and with an EMA the EMA weights its evaluations
    used (swapped in around the write), each in its :data:`ADAPTER_DIRS` folder of ``run_dir``."""
    run_dir = Path(run_dir)
    save_adapter(transformer, run_dir / ADAPTER_DIRS["final"])
    if ema is not None:
        with ema.applied(params):
            save_adapter(transformer, run_dir / ADAPTER_DIRS["ema"])
