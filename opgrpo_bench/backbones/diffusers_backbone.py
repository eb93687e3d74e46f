"""``DiffusersBackbone``: what every diffusers + peft flow backbone shares, whatever the model family.

A family (SD3, the digits models, FLUX, Wan, the video test stub) subclasses it and provides three hooks:

- :meth:`DiffusersBackbone._encode_prompts`: prompts -> conditioning tensors (frozen text encoders);
- :meth:`DiffusersBackbone._forward`: one network evaluation on inputs already on the network's device
  and dtype;
- :meth:`DiffusersBackbone.decode`: final latents -> images [B, C, H, W] or videos [B, F, C, H, W] in [0, 1].

Everything else lives here: the frozen network, LoRA adapters (peft, through diffusers'
``PeftAdapterMixin.add_adapter``), the reference policy (the same network with its adapters disabled, so no
second copy of the weights is kept), device and dtype handling, row batching (``max_batch``), the
sampling schedule of a ``FlowMatchEulerDiscreteScheduler``, and classifier-free guidance.

Conditioning convention: :meth:`DiffusersBackbone.encode` returns the family's tensors (say ``embeds``)
and, for CFG, the negative prompt's under the same names prefixed ``neg_`` (``neg_embeds``), every tensor
with the batch as its first dimension. ``velocity`` splits the dict into the two branches by that prefix.

Devices and dtypes: callers (the trainer, the samplers) may hand in latents on the CPU in float32;
``velocity`` moves them to the network's device and dtype and returns the velocity on the caller's device
and dtype, combined in float32, so the SDE math (``core/sde.py``) always runs at the caller's precision.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Sequence

import torch

from opgrpo_bench.backbones.base import Cond, cat_cond, index_cond

NEGATIVE_PREFIX = "neg_"
"""Conditioning keys of CFG's unconditional branch: ``neg_<key>`` pairs with ``<key>``."""


def row_batches(n: int, size: int | None) -> list[slice]:
    """Row slices of at most ``size`` rows covering ``range(n)`` (one slice when ``size`` is None)."""
    if not size or n <= size:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def vae_decode(vae: Any, x: torch.Tensor, slices: Sequence[slice]) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] (float32, on ``x``'s device) from normalised VAE latents [B, C, h, w].

    SD3 and FLUX both store latents as ``(z - shift_factor) * scaling_factor``; this undoes it before the
    VAE decoder and maps the decoder's [-1, 1] to [0, 1], as their diffusers pipelines do. ``slices`` cut the
    batch into decoder calls (row batching bounds the decoder's activation memory).
    """
    cfg = vae.config
    # AutoencoderKL's default shift_factor is None (SD1/SDXL VAEs); SD3's is 0.0609, FLUX.1's 0.1159.
    shift = getattr(cfg, "shift_factor", None) or 0.0
    vae_param = next(vae.parameters())
    latents = x.to(device=vae_param.device, dtype=vae_param.dtype) / cfg.scaling_factor + shift
    images = torch.cat([vae.decode(latents[s], return_dict=False)[0] for s in slices])
    return ((images.float() + 1) / 2).clamp(0, 1).to(x.device)


class DiffusersBackbone:
    """Model-family-independent part of a backbone over a diffusers network with peft LoRA adapters.

    Args:
        transformer: the flow network (a diffusers ``ModelMixin`` with ``PeftAdapterMixin``); frozen here,
            :meth:`add_lora` adds the trainable part.
        scheduler: a ``FlowMatchEulerDiscreteScheduler``; provides the sampling schedule (its ``shift``),
            never used to step.
        latent_shape: shape of one sample's latents: [C, H, W] for images, [C, F, H, W] for videos.
        negative_prompt: the unconditional prompt of classifier-free guidance ("" as SD3 and Flow-GRPO).
        max_batch: most rows per network call when no gradient is needed (sampling, evaluation, decoding,
            text encoding); None = one call. Bounds the peak memory of large rollouts.

    Subclasses set :attr:`LORA_TARGETS` and implement :meth:`_encode_prompts`, :meth:`_forward` and
    :meth:`decode`.
    """

    LORA_TARGETS: ClassVar[tuple[str, ...]] = ()
    """Module-name suffixes that get LoRA adapters by default (the family's Flow-GRPO choice)."""

    def __init__(self, transformer: Any, scheduler: Any, latent_shape: Sequence[int], negative_prompt: str = "",
                 max_batch: int | None = None):
        self.transformer = transformer
        self.scheduler = scheduler
        self.latent_shape: tuple[int, ...] = tuple(latent_shape)
        self.negative_prompt = negative_prompt
        self.max_batch = max_batch
        # The base weights' dtype, read before LoRA adds float32 parameters (``ModelMixin.dtype`` reports the
        # first parameter's dtype, which need not be the base weights' afterwards).
        self.dtype: torch.dtype = transformer.dtype
        self.pipeline: Any | None = None
        """The whole diffusers pipeline when a ``from_pretrained`` loaded one (e.g. to save samples)."""
        self._negative: Cond | None = None
        self._has_lora = False
        transformer.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.transformer.parameters()).device

    def row_batches(self, n: int) -> list[slice]:
        """Row slices of at most ``max_batch`` rows covering ``range(n)``."""
        return row_batches(n, self.max_batch)

    # -- family hooks ---------------------------------------------------------------------------
    def _encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Conditioning of ``prompts`` (no ``neg_`` keys), each tensor [len(prompts), ...]."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One network evaluation: the velocity [B, *latent_shape] in the network's dtype.

        Args:
            x: [B, *latent_shape] on the network's device and dtype.
            sigma: [B] float32 noise levels in [0, 1] (the family scales them to its timestep convention).
            cond: conditioning tensors [B, ...] (one branch, no ``neg_`` keys), floating ones in the network's
                dtype.
        """
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (videos [B, F, C, H, W]) in [0, 1] from final latents [B, *latent_shape]."""
        raise NotImplementedError

    # -- adapters -------------------------------------------------------------------------------
    def add_lora(self, rank: int = 32, alpha: int = 64, target_modules: Sequence[str] | None = None,
                 init: str | bool = "gaussian") -> None:
        """Attach trainable LoRA adapters (peft) to the modules named by ``target_modules``.

        Args:
            rank, alpha: LoRA rank and scale numerator (the update is ``alpha / rank * B @ A``).
            target_modules: module-name suffixes; default the family's :attr:`LORA_TARGETS`. Suffixes that
                match no module are dropped (e.g. SD3's ``add_*`` projections in a last block without them).
            init: peft's ``init_lora_weights``. "gaussian" makes ``lora_B`` zero, so the adapted model starts
                equal to the base model.

        Adapter weights are kept in float32 whatever the base dtype (Flow-GRPO does the same): AdamW updates
        of bf16 weights would lose most of their precision.
        """
        from peft import LoraConfig

        if self._has_lora:
            raise RuntimeError("add_lora was already called on this backbone")
        wanted = self.LORA_TARGETS if target_modules is None else tuple(target_modules)
        names = [n for n, _ in self.transformer.named_modules()]
        targets = [t for t in wanted if any(n == t or n.endswith("." + t) for n in names)]
        if not targets:
            raise ValueError(f"none of the LoRA targets {list(wanted)} exists in the {type(self.transformer).__name__}")
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=targets)
        self.transformer.add_adapter(config)
        for name, p in self.transformer.named_parameters():
            is_lora = "lora_" in name
            if is_lora and p.dtype != torch.float32:
                p.data = p.data.float()
            p.requires_grad_(is_lora)
        self._has_lora = True

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA parameters (empty before :meth:`add_lora`), in the network's module order."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The base model: LoRA adapters disabled for the duration of the block (restored on exceptions)."""
        if not self._has_lora:
            yield
            return
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    # -- sampling interface ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        """Conditioning of ``prompts`` plus the negative prompt's (keys ``neg_*``), expanded to the batch.

        The prompts are encoded ``max_batch`` at a time; the negative prompt once per backbone, its rows are
        expanded views (no copies). Tensors stay on the text encoders' device and dtype.
        """
        prompts = list(prompts)
        cond = cat_cond(self._encode_prompts(prompts[s]) for s in self.row_batches(len(prompts)))
        if self._negative is None:
            self._negative = self._encode_prompts([self.negative_prompt])
        n = len(prompts)
        cond.update({NEGATIVE_PREFIX + k: v.expand(n, *v.shape[1:]) for k, v in self._negative.items()})
        return cond

    def conditioning(self, prompts: Sequence[str]) -> Cond:
        """Conditioning of ``prompts`` alone (no ``neg_`` keys, one call), with gradient through the text
        encoders: what base-model pretraining (:mod:`opgrpo_bench.pretraining`) trains through. Sampling
        and RL use :meth:`encode`."""
        return self._encode_prompts(list(prompts))

    def _branch(self, cond: Cond, negative: bool) -> Cond:
        """One CFG branch of ``cond`` under the unprefixed names, floating tensors in the network's dtype."""
        device, dtype = self.device, self.dtype
        keys = [k for k in cond if not k.startswith(NEGATIVE_PREFIX)]
        out = {}
        for k in keys:
            v = cond[NEGATIVE_PREFIX + k] if negative else cond[k]
            out[k] = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        return out

    def _network(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """:meth:`_forward` over all rows, split into ``max_batch`` rows when no gradient is needed."""
        # Splitting under autograd would not lower peak memory (every chunk's activations are kept).
        slices = [slice(0, x.shape[0])] if torch.is_grad_enabled() else self.row_batches(x.shape[0])
        outs = [self._forward(x[s], sigma[s], index_cond(cond, s)) for s in slices]
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
        n = x.shape[0]
        # sigma stays float32: networks build their sinusoidal timestep embeddings in float32 (as diffusers
        # pipelines feed them); casting to bf16 first would round the timestep (e.g. 937.5 -> 936).
        s = sigma.to(device=self.device, dtype=torch.float32).expand(n)
        h = x.to(device=self.device, dtype=self.dtype)
        pos = self._branch(cond, negative=False)
        if guidance == 1.0:
            v = self._network(h, s, pos).float()
        else:
            both = cat_cond([self._branch(cond, negative=True), pos])
            v_uncond, v_cond = self._network(torch.cat([h, h]), torch.cat([s, s]), both).float().chunk(2)
            if detach_uncond:
                v_uncond = v_uncond.detach()
            v = v_uncond + guidance * (v_cond - v_uncond)
        return v.to(device=x.device, dtype=x.dtype)

    def nfe_per_sample(self, guidance: float) -> int:
        """Network evaluations per sample and step: 2 with CFG (one batched call over both branches)."""
        return 1 if guidance == 1.0 else 2

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The scheduler's sigmas [num_steps + 1] (shift applied, ending at 0), float32 on the CPU."""
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()
