"""Diffusers pipeline folders, found and checked offline, for any pipeline family (SD3, FLUX, Wan, ...).

A backbone's ``from_pretrained`` takes a local diffusers folder or a Hugging Face repo id. This module turns
either into a local folder and checks that it is complete *before* diffusers loads anything, because
diffusers/transformers either fail with a message that does not name the missing component or, for a
missing tokenizer folder, silently build an empty tokenizer. Nothing here touches the network: a repo id
is looked up in the local Hugging Face cache only.

Every failure is a :class:`~opgrpo_bench.errors.MissingWeightsError` with one line that names what is
missing, which pipeline family was expected, and how to provide it (the CLI prints it and exits 2).

:class:`PipelineFamily` is the one loading skeleton of the diffusers families (SD3, FLUX, Wan): locate
and check the folder, load the pipeline offline in a dtype, the family's own size checks, devices, frozen
text encoders and VAE, gradient checkpointing. Each family's ``from_pretrained`` adds only its prompt
encoding and latent shape. :class:`WeightsSource` says where a named model's weights come from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from opgrpo_bench.errors import MissingWeightsError
from opgrpo_bench.storage import cached_snapshot, looks_like_path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model"}


def _hint(env: str | None) -> str:
    return f"set {env}=DIR or pass the path of" if env else "pass the path of"


def resolve_pipeline_folder(path: str | os.PathLike[str], family: str, what: str, env: str | None = None,
                            example: str | None = None) -> Path:
    """The local folder of a diffusers pipeline: ``path`` itself, or its snapshot in the HF cache.

    Checks that ``model_index.json`` and every component it lists are present (:func:`missing_components`).

    Args:
        path: a local folder, or a repo id (``owner/name``) looked up in the local Hugging Face cache.
        family: the pipeline family the message names, e.g. ``"SD3/SD3.5"`` or ``"FLUX.1"``.
        what: human name of the weights (``"SD3.5-Medium weights"``), the message's first words.
        env: the environment variable that provides ``path``, named in the message's hint.
        example: a repo id whose copy would do, shown in the message (e.g. the family's reference model).

    Raises:
        MissingWeightsError: one line saying what is missing and how to provide it.
    """
    value = str(path)
    local = Path(value).expanduser()
    if local.is_dir():
        folder = local
    elif looks_like_path(value) or local.exists():
        eg = f" (e.g. a copy of {example})" if example else ""
        raise MissingWeightsError(f"{what}: folder '{value}' does not exist; {_hint(env)} a diffusers {family} "
                                  f"folder{eg}")
    else:
        folder = cached_snapshot(value, what, f"{_hint(env)} a local diffusers folder")
    missing = missing_components(folder)
    if missing:
        raise MissingWeightsError(
            f"{what}: '{folder}' is not a complete diffusers {family} folder (missing: {', '.join(missing)}); "
            f"{_hint(env)} a complete copy"
        )
    return folder


def missing_components(folder: str | os.PathLike[str]) -> list[str]:
    """What a diffusers pipeline folder lacks: ``model_index.json`` or, per listed component, its files.

    Tokenizers need ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json`` or ``spiece.model``;
    schedulers ``scheduler_config.json``; models ``config.json`` and a weights file. Components listed as
    ``[null, null]`` (optional parts a pipeline was saved without) need nothing.
    """
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    try:
        spec = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return ["a readable model_index.json"]
    missing = []
    for name, value in spec.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
            continue
        cls_name, sub = str(value[1]), folder / name
        files = {p.name for p in sub.iterdir()} if sub.is_dir() else set()
        if not files:
            missing.append(f"{name}/")
        elif "Tokenizer" in cls_name:
            if not files & _TOKENIZER_FILES:
                missing.append(f"{name}/tokenizer files")
        elif "Scheduler" in cls_name:
            if "scheduler_config.json" not in files:
                missing.append(f"{name}/scheduler_config.json")
        else:
            if "config.json" not in files:
                missing.append(f"{name}/config.json")
            if not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
                missing.append(f"{name}/ weights")
    return missing


def load_pipeline(pipeline_cls: Any, folder: Path, family: str, what: str, dtype: torch.dtype) -> Any:
    """``pipeline_cls.from_pretrained(folder)`` offline, in ``dtype``; a damaged file is one line.

    Call it on a folder that :func:`resolve_pipeline_folder` accepted: what is left to fail is a file
    that is present but unreadable (a truncated download, a corrupt safetensors file).

    Raises:
        MissingWeightsError: "<what>: cannot load the <family> pipeline in '<folder>': <first line>".
    """
    try:
        return pipeline_cls.from_pretrained(str(folder), local_files_only=True, **dtype_kwarg(dtype))
    except (OSError, ValueError) as err:  # diffusers: OSError for absent/broken files, ValueError for bad ids
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingWeightsError(f"{what}: cannot load the {family} pipeline in '{folder}': {first}") from None


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Recent diffusers take ``dtype=`` (``torch_dtype=`` warns); older releases only know ``torch_dtype=``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


@dataclass(frozen=True)
class PipelineFamily:
    """A diffusers pipeline family and the steps every one of its backbones loads with (:meth:`load`)."""

    name: str
    """How messages name the family, e.g. ``"SD3/SD3.5"``."""
    example: str
    """A repo whose copy is a valid folder, shown in the "does not exist" message."""
    pipeline: str
    """The diffusers pipeline class, e.g. ``"StableDiffusion3Pipeline"``."""
    frozen: tuple[str, ...]
    """Pipeline components frozen (no grad, eval mode) after loading: the text encoders and the VAE."""

    def resolve(self, path: str | os.PathLike[str], what: str, env: str | None = None) -> Path:
        """:func:`resolve_pipeline_folder` for this family: the checked local folder of ``path``."""
        return resolve_pipeline_folder(path, family=self.name, what=what, env=env, example=self.example)

    def load(self, path: str | os.PathLike[str], *, what: str, env: str | None, dtype: torch.dtype,
             device: str | torch.device, vae_dtype: torch.dtype | None = None, gradient_checkpointing: bool = False,
             check: Callable[[Any, Path], None] | None = None) -> Any:
        """The pipeline in ``path`` (a folder or a cached repo id), offline, ready for a backbone.

        Resolves and checks the folder, loads it in ``dtype``, runs ``check(pipe, folder)`` (the family's
        size checks: a UserError there is raised before anything moves to ``device``), puts the VAE in
        ``vae_dtype`` when given, moves everything to ``device``, freezes :attr:`frozen` and turns on the
        transformer's gradient checkpointing when asked.

        Raises:
            MissingWeightsError: one line naming what is missing, at once (no network, no retries).
        """
        import diffusers

        folder = self.resolve(path, what=what, env=env)
        pipe = load_pipeline(getattr(diffusers, self.pipeline), folder, self.name, what, dtype)
        if check is not None:
            check(pipe, folder)
        if vae_dtype is not None:
            pipe.vae.to(dtype=vae_dtype)
        pipe.to(device)
        for name in self.frozen:
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        if gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return pipe


SD3_FAMILY = PipelineFamily("SD3/SD3.5", "stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline",
                            ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"))
FLUX_FAMILY = PipelineFamily("FLUX.1", "black-forest-labs/FLUX.1-dev", "FluxPipeline",
                             ("text_encoder", "text_encoder_2", "vae"))
WAN_FAMILY = PipelineFamily("Wan2.1", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", ("text_encoder", "vae"))


@dataclass(frozen=True)
class WeightsSource:
    """A named model's weights: ``$env`` (a folder or a repo id) or ``repo`` in the Hugging Face cache."""

    env: str
    repo: str
    what: str
    """How messages name them, e.g. "FLUX.1-dev weights"."""
    family: PipelineFamily
    """The pipeline family the folder must be (checked by :meth:`missing` without importing diffusers)."""

    def source(self) -> str:
        """``$env`` (folder or repo id) or the default repo id."""
        return os.environ.get(self.env) or self.repo

    def missing(self) -> str | None:
        """Why the weights cannot be found (a one-line reason), or None when they can. No loading."""
        try:
            self.family.resolve(self.source(), what=self.what, env=self.env)
        except MissingWeightsError as err:
            return str(err)
        return None
