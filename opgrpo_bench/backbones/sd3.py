"""SD3-family backbone: diffusers ``SD3Transformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``.

The same class serves three uses:

- the real Stable Diffusion 3.5 Medium (``SD3Backbone.from_pretrained(path)``: a local diffusers folder
  or a Hugging Face cache entry, never a download), with its three text encoders and its VAE;
- a tiny SD3 pipeline built in code (:mod:`opgrpo_bench.backbones.tiny`), saved and loaded through the
  same ``from_pretrained`` code path (the ``tiny-sd3-jpeg-v1`` task and the tests);
- the CPU task ``digits-v1``, a tiny SD3 transformer in pixel space with a small CLIP text encoder.

RL trains LoRA adapters added with peft; the reference policy is the same network with the adapters
disabled, so no second copy of the weights is kept.

Devices and dtypes: the trainer may hand in latents on the CPU in float32; :meth:`SD3Backbone.velocity`
moves them to the transformer's device and dtype and returns the velocity on the caller's device and
dtype, so the SDE math (``core/sde.py``) always runs at the caller's precision.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from opgrpo_bench.backbones.base import Cond
from opgrpo_bench.errors import MissingWeightsError, UserError

PromptEncoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
"""prompts -> (token embeddings [B, L, D], pooled embedding [B, P])."""

# Flow-GRPO's LoRA targets for SD3: joint attention projections of both streams. SD3.5-Medium's
# second, image-only attention ("attn2", MMDiT-X blocks) is not adapted, as in Flow-GRPO.
SD3_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


def _batches(n: int, size: int | None) -> list[slice]:
    """Row slices of at most ``size`` rows covering ``range(n)`` (one slice when ``size`` is None)."""
    if not size or n <= size:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class SD3Backbone:
    """Backbone over an SD3 transformer; ``vae=None`` means the model works in pixel space.

    Args:
        transformer: the flow network; frozen here (``add_lora`` adds the trainable part).
        prompt_encoder: prompts -> (embeds [B, L, D], pooled [B, P]).
        scheduler: provides the sampling schedule (its ``shift``), never used to step.
        vae: latent decoder with ``scaling_factor`` / ``shift_factor``; None for pixel-space models.
        latent_shape: [C, H, W] of one sample; default the transformer's native sample size.
        negative_prompt: the unconditional prompt of classifier-free guidance ("" as SD3 and Flow-GRPO).
        max_batch: most rows per network call when no gradient is needed (sampling, evaluation, VAE
            decoding, text encoding); None = one call. Bounds peak memory of large rollouts.
    """

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        prompt_encoder: PromptEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: Any | None = None,
        latent_shape: tuple[int, ...] | None = None,
        negative_prompt: str = "",
        max_batch: int | None = None,
    ):
        self.transformer = transformer
        self.prompt_encoder = prompt_encoder
        self.scheduler = scheduler
        self.vae = vae
        if latent_shape is None:
            cfg = transformer.config
            latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        self.latent_shape = tuple(latent_shape)
        self.negative_prompt = negative_prompt
        self.max_batch = max_batch
        # The base weights' dtype, read before LoRA adds float32 parameters (``ModelMixin.dtype`` reports the
        # first parameter's dtype, which need not be the base weights' afterwards).
        self.dtype: torch.dtype = transformer.dtype
        self.pipeline: Any | None = None
        """The whole diffusers pipeline when loaded by :meth:`from_pretrained` (e.g. to save samples)."""
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None
        self._has_lora = False
        transformer.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the transformer's weights are."""
        return next(self.transformer.parameters()).device

    # -- adapters -----------------------------------------------------------------------------
    def add_lora(self, rank: int = 32, alpha: int = 64, target_modules: Sequence[str] = SD3_LORA_TARGETS,
                 init: str | bool = "gaussian") -> None:
        """Attach trainable LoRA adapters (peft) to the attention projections.

        peft's "gaussian" init makes ``lora_B`` zero, so the adapted model starts equal to the base model.
        Adapter weights are kept in float32 whatever the base dtype (Flow-GRPO does the same): AdamW updates
        of bf16 weights would lose most of their precision.
        """
        from peft import LoraConfig

        if self._has_lora:
            raise RuntimeError("add_lora was already called on this backbone")
        names = [n for n, _ in self.transformer.named_modules()]
        targets = [t for t in target_modules if any(n == t or n.endswith("." + t) for n in names)]
        if not targets:
            raise ValueError(f"none of the LoRA targets {list(target_modules)} exists in the transformer")
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=targets)
        self.transformer.add_adapter(config)
        for name, p in self.transformer.named_parameters():
            is_lora = "lora_" in name
            if is_lora and p.dtype != torch.float32:
                p.data = p.data.float()
            p.requires_grad_(is_lora)
        self._has_lora = True

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The base model: LoRA adapters disabled for the duration of the block."""
        if not self._has_lora:
            yield
            return
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    # -- sampling interface -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        """Conditioning of ``prompts`` plus the negative prompt's, expanded to the batch.

        Returns ``embeds`` [B, L, D], ``pooled`` [B, P], ``neg_embeds`` [B, L, D], ``neg_pooled`` [B, P] on the
        text encoders' device and dtype. The negative rows are expanded views (no copies).
        """
        prompts = list(prompts)
        parts = [self.prompt_encoder(prompts[s]) for s in _batches(len(prompts), self.max_batch)]
        embeds = torch.cat([e for e, _ in parts])
        pooled = torch.cat([p for _, p in parts])
        if self._negative is None:
            self._negative = self.prompt_encoder([self.negative_prompt])
        neg_embeds, neg_pooled = self._negative
        n = len(prompts)
        return {
            "embeds": embeds, "pooled": pooled,
            "neg_embeds": neg_embeds.expand(n, *neg_embeds.shape[1:]),
            "neg_pooled": neg_pooled.expand(n, *neg_pooled.shape[1:]),
        }

    def _forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """One transformer evaluation [B, *latent_shape], split into ``max_batch`` rows when no grad is needed."""
        # Splitting under autograd would not lower peak memory (every chunk's activations are kept).
        slices = [slice(0, x.shape[0])] if torch.is_grad_enabled() else _batches(x.shape[0], self.max_batch)
        outs = [
            self.transformer(hidden_states=x[s], timestep=t[s], encoder_hidden_states=embeds[s],
                             pooled_projections=pooled[s], return_dict=False)[0]
            for s in slices
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0,
                 detach_uncond: bool = False) -> torch.Tensor:
        """Velocity [B, *latent_shape] at noise level ``sigma`` [B] (or a scalar), on ``x``'s device and dtype.

        With ``guidance != 1``: one batched call over [uncond; cond] rows and
        ``v = v_uncond + guidance * (v_cond - v_uncond)``, combined in float32. ``detach_uncond`` stops the
        gradient through the unconditional branch (Flow-GRPO's training forward): the value is unchanged,
        the gradient loses the ``-(guidance - 1) * grad v_uncond`` term. The call keeps its [uncond; cond]
        shape either way, so training evaluates exactly the rows the sampler evaluated.
        """
        device, dtype = self.device, self.dtype
        n = x.shape[0]
        # The timestep stays float32: the transformer builds its sinusoidal embedding in float32 (as the
        # diffusers pipeline feeds it); casting 1000 * sigma to bf16 first would round it (e.g. 937.5 -> 936).
        t = (sigma.to(device=device, dtype=torch.float32) * 1000).expand(n)
        h = x.to(device=device, dtype=dtype)
        embeds = cond["embeds"].to(device=device, dtype=dtype)
        pooled = cond["pooled"].to(device=device, dtype=dtype)
        if guidance == 1.0:
            v = self._forward(h, t, embeds, pooled).float()
        else:
            neg_embeds = cond["neg_embeds"].to(device=device, dtype=dtype)
            neg_pooled = cond["neg_pooled"].to(device=device, dtype=dtype)
            both = self._forward(torch.cat([h, h]), torch.cat([t, t]), torch.cat([neg_embeds, embeds]),
                                 torch.cat([neg_pooled, pooled])).float()
            v_uncond, v_cond = both.chunk(2)
            if detach_uncond:
                v_uncond = v_uncond.detach()
            v = v_uncond + guidance * (v_cond - v_uncond)
        return v.to(device=x.device, dtype=x.dtype)

    def nfe_per_sample(self, guidance: float) -> int:
        return 1 if guidance == 1.0 else 2

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The scheduler's sigmas [num_steps + 1] (shift applied, ending at 0), float32 on the CPU."""
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (float32, on ``x``'s device) from final latents [B, *latent_shape].

        SD3 latents are normalised as ``(z - shift_factor) * scaling_factor``; this undoes it before the
        VAE decoder, as ``StableDiffusion3Pipeline`` does.
        """
        if self.vae is None:
            return ((x.float() + 1) / 2).clamp(0, 1)
        cfg = self.vae.config
        # AutoencoderKL's default shift_factor is None (SD1/SDXL VAEs); SD3's is 0.0609.
        shift = getattr(cfg, "shift_factor", None) or 0.0
        vae_param = next(self.vae.parameters())
        latents = x.to(device=vae_param.device, dtype=vae_param.dtype) / cfg.scaling_factor + shift
        images = torch.cat([self.vae.decode(latents[s], return_dict=False)[0]
                            for s in _batches(latents.shape[0], self.max_batch)])
        return ((images.float() + 1) / 2).clamp(0, 1).to(x.device)

    # -- loading real weights -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", max_sequence_length: int = 256,
                        resolution: int | None = 512, negative_prompt: str = "", max_batch: int | None = None,
                        gradient_checkpointing: bool = False, what: str = "SD3 weights",
                        env: str | None = None) -> "SD3Backbone":
        """Load an SD3 / SD3.5 diffusers folder (local path or Hugging Face cache id), offline only.

        Args:
            path: a diffusers ``StableDiffusion3Pipeline`` folder, or a repo id looked up in the local
                Hugging Face cache (never downloaded).
            dtype, device: where the pipeline's models live (bf16 on a GPU for SD3.5-M).
            max_sequence_length: T5 tokens of the conditioning (Flow-GRPO: 128; diffusers' default: 256).
            resolution: image side in pixels (Flow-GRPO trains SD3.5-M at 512); the latent side is
                ``resolution // vae_scale_factor``. None keeps the transformer's native sample size.
            negative_prompt, max_batch: as for :class:`SD3Backbone`.
            gradient_checkpointing: recompute transformer activations in the backward pass.
            what, env: name of the weights and the environment variable that provides them, for the error
                message only.

        Raises:
            MissingWeightsError: one line naming what is missing, at once (no network, no retries).
            UserError: a ``resolution`` the model cannot take.
        """
        from diffusers import StableDiffusion3Pipeline

        folder = resolve_sd3_folder(path, what=what, env=env)
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True,
                                                            **_dtype_kwarg(dtype))
        except (OSError, ValueError) as err:  # diffusers: OSError for absent/broken files, ValueError for bad ids
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MissingWeightsError(f"{what}: cannot load the SD3 pipeline in '{folder}': {first}") from None
        pipe.to(device)
        for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        if gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        torch_device = torch.device(device)

        def encode_prompt(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            """prompts -> (CLIP-L|CLIP-G padded to T5 width ++ T5 tokens [B, 77 + L_t5, D], pooled [B, P])."""
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                device=torch_device, max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

        cfg = pipe.transformer.config
        if resolution:
            step = pipe.vae_scale_factor * cfg.patch_size
            if resolution % step:
                raise UserError(f"resolution {resolution} is not a multiple of {step} (VAE scale x patch size)")
            size = resolution // pipe.vae_scale_factor
            if size // cfg.patch_size > cfg.pos_embed_max_size:
                raise UserError(f"resolution {resolution} exceeds the transformer's position embeddings "
                                f"({cfg.pos_embed_max_size * step} px at most)")
        else:
            size = cfg.sample_size
        backbone = cls(pipe.transformer, encode_prompt, pipe.scheduler, vae=pipe.vae,
                       latent_shape=(cfg.in_channels, size, size), negative_prompt=negative_prompt,
                       max_batch=max_batch)
        backbone.pipeline = pipe
        return backbone


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Recent diffusers take ``dtype=`` (``torch_dtype=`` warns); older releases only know ``torch_dtype=``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


# -- offline weight lookup -------------------------------------------------------------------------
def _looks_like_path(value: str) -> bool:
    """Repo ids look like ``owner/name``; anything else is a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") != 1 or "\\" in value


def _hint(env: str | None) -> str:
    return f"set {env}=DIR or pass the path of" if env else "pass the path of"


def resolve_sd3_folder(path: str | os.PathLike[str], what: str = "SD3 weights", env: str | None = None) -> Path:
    """The local folder of an SD3 diffusers pipeline: ``path`` itself, or its snapshot in the HF cache.

    Checks that ``model_index.json`` and every component it lists are present (config and weights files),
    because diffusers/transformers either fail with a message that does not name the component or, for a
    missing tokenizer folder, silently build an empty tokenizer.

    Raises:
        MissingWeightsError: one line saying what is missing and how to provide it.
    """
    value = str(path)
    local = Path(value).expanduser()
    if local.is_dir():
        folder = local
    elif _looks_like_path(value) or local.exists():
        raise MissingWeightsError(
            f"{what}: folder '{value}' does not exist; {_hint(env)} a diffusers SD3/SD3.5 folder "
            f"(e.g. a copy of stabilityai/stable-diffusion-3.5-medium)"
        )
    else:
        folder = _cached_snapshot(value, what, env)
    missing = missing_components(folder)
    if missing:
        raise MissingWeightsError(
            f"{what}: '{folder}' is not a complete diffusers SD3 folder (missing: {', '.join(missing)}); "
            f"{_hint(env)} a complete copy"
        )
    return folder


def _cached_snapshot(repo_id: str, what: str, env: str | None) -> Path:
    """The cached snapshot of ``repo_id`` (local files only: fails at once, no network, no retries)."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, ...: all mean "not here"
        raise MissingWeightsError(
            f"{what}: '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); run "
            f"`hf download {repo_id}` where the hub is reachable and copy the cache here, or {_hint(env)} "
            f"a local diffusers folder"
        ) from None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def missing_components(folder: str | os.PathLike[str]) -> list[str]:
    """What a diffusers pipeline folder lacks: ``model_index.json`` or, per listed component, its files.

    Tokenizers need ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json`` or ``spiece.model``;
    schedulers ``scheduler_config.json``; models ``config.json`` and a weights file.
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
            if not files & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model"}:
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
