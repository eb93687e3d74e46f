"""Random-weight diffusers folders at the real architectures (SD3.5-Medium, FLUX.1-dev, Wan2.1-T2V-1.3B).

:func:`build_arch_folder` writes a complete diffusers pipeline folder of a family (transformer, VAE, every
text encoder, scheduler, tokenizers; the published configurations of :mod:`opgrpo_bench.arch.configs`) with
seeded random weights, loadable by the family's ``from_pretrained`` exactly as a downloaded copy would be.
Nothing is downloaded.

``depth`` gives a depth-reduced variant (every stack capped at ``depth`` blocks, widths and layer types
kept; its name says ``-depthN``): the full FLUX.1-dev transformer (12B) and the T5-XXL / UMT5-XXL encoders
(4.8B / 5.7B) do not fit a 24 GB machine, and the tests use a few blocks of each.
:func:`arch_folder` caches a folder under ``$OPGRPO_ARCH_CACHE`` (else ``<opgrpo cache>/arch``) keyed by
family, depth, seed, dtype and library versions, written atomically.

Weights are drawn directly in the saved dtype (bf16 by default): matrices from N(0, 1/fan_in), norm scales 1,
biases 0, so activations keep a sane scale through a forward pass. Buffers (position tables, rotary
frequencies) are the classes' own. Scheduler and tokenizer configurations are the published ones.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from opgrpo_bench.arch.configs import FAMILIES, Component, family_components, variant_name

ARCH_CACHE_ENV = "OPGRPO_ARCH_CACHE"
PIPELINES = {"sd3.5-medium": "StableDiffusion3Pipeline", "flux.1-dev": "FluxPipeline",
             "wan2.1-t2v-1.3b": "WanPipeline"}
"""The diffusers pipeline class of each family (its ``from_pretrained`` reads the folder)."""
META_FILE = "opgrpo_arch.json"


def _fill_(module: torch.nn.Module, dtype: torch.dtype, generator: torch.Generator) -> torch.nn.Module:
    """Materialise every meta parameter of ``module`` on the CPU in ``dtype`` with random values.

    A parameter shared by several modules (T5's input embedding is ``shared`` and ``encoder.embed_tokens``)
    stays shared: one new tensor replaces it everywhere, so it is saved once and loads tied."""
    made: dict[int, torch.nn.Parameter] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        for pname, p in list(sub.named_parameters(recurse=False)):
            if id(p) in made:
                setattr(sub, pname, made[id(p)])
                continue
            full = f"{name}.{pname}" if name else pname
            shape = tuple(p.shape)
            if len(shape) >= 2:
                fan_in = math.prod(shape[1:])
                # drawn in the saved dtype directly: half the memory and time of float32 for bf16 folders
                value = torch.empty(shape, dtype=dtype).normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif pname == "bias" or "bias" in full:
                value = torch.zeros(shape)
            else:  # norm scales and other vectors
                value = torch.ones(shape)
            made[id(p)] = torch.nn.Parameter(value.to(dtype), requires_grad=False)
            setattr(sub, pname, made[id(p)])
    return module


def build_component(component: Component, dtype: torch.dtype, seed: int) -> Any:
    """A model (random weights in ``dtype``), tokenizer or scheduler of the given specification."""
    from accelerate import init_empty_weights

    if component.tokenizer:
        from opgrpo_bench.arch.tokenizers import build_tokenizer

        return build_tokenizer(component.tokenizer, component.max_length or 77)
    lib = importlib.import_module(component.library)
    cls = getattr(lib, component.cls)
    if "Scheduler" in component.cls:
        return cls(**component.kwargs)
    # parameters on the meta device (no time spent on the classes' own initialisation), buffers real
    with init_empty_weights(include_buffers=False):
        if component.config_class:
            model = cls(getattr(lib, component.config_class)(**component.kwargs))
        else:
            model = cls(**component.kwargs)
    generator = torch.Generator().manual_seed(seed)
    model = _fill_(model, dtype, generator)
    if hasattr(model, "tie_weights"):  # transformers: the input embedding is shared (T5's ``shared``)
        model.tie_weights()
    return model.eval()


def build_arch_pipeline(family: str, depth: int | None = None, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """The family's diffusers pipeline object with random weights (see the module docstring)."""
    import diffusers

    comps = family_components(family, depth)
    parts = {name: build_component(c, dtype, seed + i) for i, (name, c) in enumerate(comps.items())}
    return getattr(diffusers, PIPELINES[family])(**parts)


def build_arch_folder(path: str | os.PathLike[str], family: str, depth: int | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the family's pipeline folder to ``path`` (``save_pretrained``, safetensors) and describe it in
    ``opgrpo_arch.json`` (family, depth, seed, dtype, parameter counts, library versions)."""
    path = Path(path)
    pipe = build_arch_pipeline(family, depth, seed, dtype)
    pipe.save_pretrained(path, safe_serialization=True)
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    meta = {"variant": variant_name(family, depth), "family": family, "depth": depth, "seed": seed,
            "dtype": str(dtype).replace("torch.", ""), "parameters": counts, "versions": _versions(),
            "note": "random weights at the published architecture; not a trained model"}
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def arch_cache_root() -> Path:
    """``$OPGRPO_ARCH_CACHE``, else ``<opgrpo-bench cache>/arch``."""
    if os.environ.get(ARCH_CACHE_ENV):
        return Path(os.environ[ARCH_CACHE_ENV]).expanduser()
    from opgrpo_bench.backbones.tiny import cache_root

    return cache_root() / "arch"


def arch_folder(family: str, depth: int | None = 2, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                root: str | os.PathLike[str] | None = None) -> Path:
    """The cached folder of ``(family, depth, seed, dtype)``, built on first use (atomically)."""
    from opgrpo_bench.backbones.tiny import cached_folder

    if family not in FAMILIES:
        raise KeyError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")
    payload = json.dumps({"family": family, "depth": depth, "seed": seed, "dtype": str(dtype),
                          "components": {k: repr(v) for k, v in family_components(family, depth).items()},
                          "versions": _versions()}, sort_keys=True)
    key = f"{variant_name(family, depth)}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
    return cached_folder("", key, lambda tmp: build_arch_folder(tmp, family, depth, seed, dtype),
                         root if root is not None else arch_cache_root())
