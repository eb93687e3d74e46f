"""What the planner knows about each real task: its architecture, geometry and precisions, and how to run
its network calls on the meta device through the project's own backbone classes.

The geometry (resolution or frames, text tokens, ``max_batch``, dtypes) is read from the task modules'
constants, the same ones their ``load_*_backbone`` functions pass to ``from_pretrained``, so the planner
needs neither the weights nor the prompt files. The training settings come from the task's spec when its
prompt files are present, else from the same ``*_TRAIN_DEFAULTS`` the spec is built from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

BF16, F32 = torch.bfloat16, torch.float32


@dataclass(frozen=True)
class Geometry:
    """A task's model, shapes and precisions as its backbone loader sets them."""

    family: str
    """An :mod:`opgrpo_bench.arch.configs` family."""
    latent_shape: tuple[int, ...]
    text_tokens: dict[str, int]
    """Tokens per text encoder (``text_encoder`` ... as in the folder)."""
    max_batch: int
    """Rows per no-grad transformer / VAE / text-encoder call (the loader's ``max_batch``)."""
    dtype: torch.dtype = BF16
    """The weights' dtype on a GPU (the loaders: bf16)."""
    vae_dtype: torch.dtype = BF16
    frames: int = 1
    """Frames of a decoded sample (videos)."""
    pixels: tuple[int, int] = (512, 512)
    reward_model: str | None = None
    """A reward network the planner counts on the GPU (``pickscore``), or None (OCR runs on the CPU)."""
    backbone_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanTask:
    """A real task the planner plans: where its settings and geometry come from."""

    task_id: str
    geometry: Callable[[], Geometry]
    stand_in: str
    """The task whose spec stands in when the prompt files are absent (its smoke variant)."""
    train_defaults: Callable[[], dict[str, Any]]
    budget_steps: Callable[[], int]


def _sd35m() -> Geometry:
    from opgrpo_bench.backbones import models as t

    side = t.SD35M_RESOLUTION // 8
    return Geometry("sd3.5-medium", (16, side, side),
                    {"text_encoder": 77, "text_encoder_2": 77, "text_encoder_3": t.SD35M_MAX_SEQUENCE_LENGTH},
                    t.SD35M_MAX_BATCH, BF16, BF16, 1, (t.SD35M_RESOLUTION, t.SD35M_RESOLUTION))


def _flux() -> Geometry:
    from opgrpo_bench.backbones import models as t

    side = t.FLUX_DEV_RESOLUTION // 8
    return Geometry("flux.1-dev", (16, side, side), {"text_encoder": 77, "text_encoder_2": t.FLUX_DEV_MAX_SEQUENCE_LENGTH},
                    t.FLUX_DEV_MAX_BATCH, BF16, F32, 1, (t.FLUX_DEV_RESOLUTION, t.FLUX_DEV_RESOLUTION),
                    reward_model="pickscore", backbone_args={"guidance_scale": t.FLUX_DEV_GUIDANCE})


def _wan() -> Geometry:
    from opgrpo_bench.backbones import models as t

    frames = (t.WAN21_NUM_FRAMES - 1) // 4 + 1
    return Geometry("wan2.1-t2v-1.3b", (16, frames, t.WAN21_HEIGHT // 8, t.WAN21_WIDTH // 8),
                    {"text_encoder": t.WAN21_MAX_SEQUENCE_LENGTH}, t.WAN21_MAX_BATCH, BF16, F32, t.WAN21_NUM_FRAMES,
                    (t.WAN21_HEIGHT, t.WAN21_WIDTH))


def _sd35m_defaults(family: str) -> Callable[[], dict[str, Any]]:
    def get() -> dict[str, Any]:
        from opgrpo_bench.tasks import sd3_tasks as t

        return dict(t.SD35M_TRAIN_DEFAULTS, beta=t.FAMILIES[family][1])
    return get


def _sd35m_budget(family: str) -> Callable[[], int]:
    def get() -> int:
        from opgrpo_bench.tasks import sd3_tasks as t

        return t.FAMILIES[family][3]
    return get


def _const(module: str, name: str) -> Callable[[], Any]:
    def get() -> Any:
        import importlib

        value = getattr(importlib.import_module(module), name)
        return dict(value) if isinstance(value, dict) else value
    return get


PLAN_TASKS: dict[str, PlanTask] = {
    **{f"{f}-sd35m-v1": PlanTask(f"{f}-sd35m-v1", _sd35m, f"{f}-sd35m-smoke-v1", _sd35m_defaults(f), _sd35m_budget(f))
       for f in ("ocr", "pickscore", "geneval")},
    "pickscore-flux-v1": PlanTask("pickscore-flux-v1", _flux, "pickscore-flux-smoke-v1",
                                  _const("opgrpo_bench.tasks.flux_tasks", "FLUX_DEV_TRAIN_DEFAULTS"),
                                  _const("opgrpo_bench.tasks.flux_tasks", "PICKSCORE_FLUX_BUDGET")),
    "video-ocr-wan21-v1": PlanTask("video-ocr-wan21-v1", _wan, "video-ocr-wan21-smoke-v1",
                                   _const("opgrpo_bench.tasks.wan_tasks", "WAN21_TRAIN_DEFAULTS"),
                                   _const("opgrpo_bench.tasks.wan_tasks", "VIDEO_OCR_WAN21_BUDGET")),
}
"""The real tasks; their smoke variants plan as the full task (same model and calls)."""
for _smoke in [p.stand_in for p in PLAN_TASKS.values()]:
    _full = next(p for p in PLAN_TASKS.values() if p.stand_in == _smoke)
    PLAN_TASKS[_smoke] = dataclasses.replace(_full, task_id=_smoke)
del _smoke, _full


def task_spec(plan_task: PlanTask) -> Any:
    """The task's spec; without its prompt files, its smoke spec with the full task's id, settings and budget
    (prompts change no memory or FLOP figure)."""
    from opgrpo_bench.errors import MissingWeightsError
    from opgrpo_bench.registry import TASKS

    try:
        return TASKS.get(plan_task.task_id)
    except MissingWeightsError:
        smoke = TASKS.get(plan_task.stand_in)
        return dataclasses.replace(smoke, id=plan_task.task_id, train_defaults=plan_task.train_defaults(),
                                   budget_steps=plan_task.budget_steps())


# -- meta-device models ------------------------------------------------------------------------------------
def meta_backbone(geometry: Geometry, lora_rank: int, lora_alpha: int, gradient_checkpointing: bool,
                  depth: int | None = None, device: str = "meta", overrides: dict[str, Any] | None = None) -> Any:
    """The task's backbone class around its transformer at the published architecture (``depth`` blocks per
    stack if given), on ``device`` (meta: no memory), with the trainer's LoRA adapters (float32).

    ``overrides`` replaces transformer settings (a check at tiny sizes shrinks SD3's 384x384 position table,
    whose computation dominates building a small model on a CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from opgrpo_bench.arch.configs import build_module, family_components

    comp = family_components(geometry.family, depth)["transformer"]
    if overrides:
        comp = dataclasses.replace(comp, kwargs={**comp.kwargs, **overrides})
    transformer = build_module(comp, device).to(geometry.dtype)
    transformer.requires_grad_(False)
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if geometry.family == "sd3.5-medium":
        from opgrpo_bench.backbones.sd3 import SD3Backbone

        backbone = SD3Backbone(transformer, None, scheduler, vae=None, latent_shape=geometry.latent_shape)
    elif geometry.family == "flux.1-dev":
        from opgrpo_bench.backbones.flux import FluxBackbone

        backbone = FluxBackbone(transformer, None, scheduler, vae=None, latent_shape=geometry.latent_shape,
                                **geometry.backbone_args)
    else:
        from opgrpo_bench.backbones.wan import WanBackbone

        backbone = WanBackbone(transformer, None, scheduler, vae=None, latent_shape=geometry.latent_shape)
    backbone.add_lora(lora_rank, lora_alpha)
    return backbone


def text_width(geometry: Geometry) -> tuple[int, int | None]:
    """(token embedding width, pooled width or None) of the transformer's text conditioning."""
    from opgrpo_bench.arch.configs import transformer_kwargs

    tr = transformer_kwargs(geometry.family)
    if geometry.family == "sd3.5-medium":
        return tr["joint_attention_dim"], tr["pooled_projection_dim"]
    if geometry.family == "flux.1-dev":
        return tr["joint_attention_dim"], tr["pooled_projection_dim"]
    return tr["text_dim"], None


def conditioning(geometry: Geometry, rows: int, device: str = "meta",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The backbone's conditioning of ``rows`` prompts (and the negative prompt's, expanded), as ``encode``
    returns it: SD3 ``embeds`` [B, 77 + L_t5, 4096] and ``pooled``; FLUX T5 ``embeds`` and CLIP ``pooled``;
    Wan UMT5 ``embeds`` [B, 512, 4096]."""
    width, pooled = text_width(geometry)
    if geometry.family == "sd3.5-medium":
        tokens = geometry.text_tokens["text_encoder"] + geometry.text_tokens["text_encoder_3"]
    elif geometry.family == "flux.1-dev":
        tokens = geometry.text_tokens["text_encoder_2"]
    else:
        tokens = geometry.text_tokens["text_encoder"]

    def make(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta", dtype=geometry.dtype)
        return torch.randn(shape, generator=generator).to(device, geometry.dtype)

    cond = {"embeds": make(rows, tokens, width)}
    neg = {"embeds": make(1, tokens, width)}
    if pooled is not None:
        cond["pooled"] = make(rows, pooled)
        neg["pooled"] = make(1, pooled)
    cond.update({"neg_" + k: v.expand(rows, *v.shape[1:]) for k, v in neg.items()})
    return cond


def training_call(backbone: Any, rows: int, guidance: float, noise_level: float, detach_uncond: bool,
                  device: str = "meta", generator: torch.Generator | None = None) -> torch.Tensor:
    """One training call as the trainer makes it: the sampler's batched [uncond; cond] velocity of ``rows``
    samples with gradient, the SDE transition's log-prob of the stored next latent, a surrogate, backward."""
    from opgrpo_bench.core.sde import sde_step_with_logprob

    geometry_shape = backbone.latent_shape

    def latent() -> torch.Tensor:
        if device == "meta":
            return torch.empty((rows, *geometry_shape), device="meta")
        return torch.randn((rows, *geometry_shape), generator=generator).to(device)

    x, prev = latent(), latent()
    sigma = torch.full((rows,), 0.8, device=device)
    sigma_next = torch.full((rows,), 0.7, device=device)
    v = backbone.velocity(x, sigma, backbone._plan_cond, guidance, detach_uncond=detach_uncond)
    _, logp, _, _ = sde_step_with_logprob(v, sigma, sigma_next, x, noise_level, prev_sample=prev,
                                          sigma_max=torch.tensor(0.9, device=device))
    loss = -(torch.exp(logp - logp.detach())).mean()
    loss.backward()
    return loss.detach()


def sampling_call(backbone: Any, rows: int, guidance: float, device: str = "meta") -> torch.Tensor:
    """One sampling call (no gradient) of ``rows`` samples with CFG as configured."""
    with torch.no_grad():
        x = torch.empty((rows, *backbone.latent_shape), device=device)
        sigma = torch.full((rows,), 0.8, device=device)
        return backbone.velocity(x, sigma, backbone._plan_cond, guidance)
