"""The capacity plan of a task: memory per component and per process, FLOPs and time per iteration.

Everything is measured on the meta device (no memory is allocated, nothing is loaded): the task's transformer
at its published architecture, wrapped in the project's own backbone class with the trainer's LoRA adapters,
makes the trainer's calls (:mod:`opgrpo_bench.capacity.models`) under :class:`~opgrpo_bench.capacity.tracker.LiveBytes`
(peak live bytes) and ``torch.utils.flop_counter`` (FLOPs), with attention as CUDA's fused kernels run it.
Activation memory is exactly linear in the rows of a call (measured at 1 and 2 samples; a test checks a
third point), so the largest micro-batch that fits is solved from the line.

What a process holds (``TrainConfig`` names):

- static: the frozen transformer, text encoders and VAE in the loaders' dtypes; LoRA weights, their
  gradients, AdamW's two moments and the EMA copy (all float32); the rollout's trajectories
  (``prompts_per_iter * group_size`` samples x ``num_steps + 1`` latents in ``latent_dtype``, on the GPU
  unless ``trajectory_device=cpu``); every rank keeps the whole rollout.
- the larger of two phases: rollout (a sampling call of ``micro_batch`` samples, CFG rows included, while
  the previous block is decoded by the VAE on the scoring thread) and training (one call with gradient).
- FSDP (``--fsdp``): the transformer's frozen weights divided by the processes, plus two gathered blocks
  (the one computing and the one prefetched); everything else as without FSDP.
- a fixed reserve for what the caching allocator does not count (CUDA context, cuBLAS workspaces,
  fragmentation): :data:`RESERVE_GIB`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from opgrpo_bench.capacity.defaults import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS  # noqa: F401 (re-exported)
from opgrpo_bench.capacity.models import Geometry, conditioning, meta_backbone, sampling_call, training_call
from opgrpo_bench.capacity.tracker import LiveBytes, gpu_attention

GIB = 2**30
RESERVE_GIB = 3.0
"""[decision] GiB kept free per GPU for the CUDA context (~0.5 GiB), cuBLAS/cuDNN workspaces and the caching
allocator's fragmentation, none of which the planner's tensor count sees."""
@dataclass
class CallCost:
    """A measured call: peak live bytes at 1 and 2 samples (a line), FLOPs per sample."""

    peak_1: int
    peak_2: int
    flops_per_sample: float

    def peak(self, samples: int) -> float:
        """Peak live bytes at ``samples`` samples (linear in the rows)."""
        return self.peak_1 + (self.peak_2 - self.peak_1) * (samples - 1)


@dataclass
class Plan:
    """Everything the report prints (bytes, FLOPs, seconds)."""

    task: str
    family: str
    algorithm: str
    settings: dict[str, Any]
    weights: dict[str, tuple[int, int]]
    """component -> (parameters incl. buffers, bytes)."""
    lora_params: int
    trajectories: int
    train: dict[bool, CallCost]
    """gradient checkpointing -> the training call's cost."""
    sample: CallCost
    decode_per_row: int
    decode_flops: float
    text_peak: int
    text_flops: float
    reward_flops: float
    reward_note: str
    largest_block: int
    num_processes: int
    fsdp: bool
    gpu_memory_gib: float
    mfu: float
    peak_tflops: float
    trained_steps: float
    notes: list[str] = field(default_factory=list)

    # -- memory ---------------------------------------------------------------------------------
    @property
    def lora_bytes(self) -> dict[str, int]:
        n = self.lora_params * 4
        return {"LoRA weights (fp32)": n, "LoRA gradients (fp32)": n, "AdamW moments (2 x fp32)": 2 * n,
                "EMA copy (fp32)": n}

    def frozen_bytes(self, fsdp: bool) -> int:
        total = sum(b for _, b in self.weights.values())
        if fsdp:
            tr = self.weights["transformer"][1]
            total += -tr + math.ceil(tr / self.num_processes) + 2 * self.largest_block
        return total

    def rollout_phase(self, mb: int) -> float:
        rows = min(mb, self.settings["max_batch"])
        return self.sample.peak(mb) + self.decode_per_row * rows + self.text_peak

    def train_phase(self, mb: int, gc: bool) -> float:
        return self.train[gc].peak(mb)

    def peak(self, mb: int, gc: bool, fsdp: bool) -> float:
        """Bytes per process at micro-batch ``mb`` (reserve included)."""
        static = self.frozen_bytes(fsdp) + sum(self.lora_bytes.values()) + self.trajectories
        return static + max(self.rollout_phase(mb), self.train_phase(mb, gc)) + RESERVE_GIB * GIB

    def largest_micro_batch(self, gc: bool, fsdp: bool) -> int:
        """The largest micro-batch whose peak fits ``gpu_memory_gib`` (0: none), capped at a share's rows."""
        cap = self.settings["share_rows"]
        budget = self.gpu_memory_gib * GIB
        best = 0
        for mb in range(1, cap + 1):
            if self.peak(mb, gc, fsdp) <= budget:
                best = mb
            else:
                break
        return best

    # -- compute --------------------------------------------------------------------------------
    @property
    def flops(self) -> dict[str, float]:
        s = self.settings
        samples, steps = s["samples"], s["num_steps"]
        gc = s["gradient_checkpointing"]
        rollout = samples * steps * self.sample.flops_per_sample + samples * self.text_flops
        per_pair = self.train[False].flops_per_sample + (self.sample.flops_per_sample if gc else 0.0)
        if s["beta"] > 0:
            per_pair += self.sample.flops_per_sample  # the reference policy's no-grad call
        training = samples * self.trained_steps * per_pair
        reward = samples * (self.decode_flops + self.reward_flops)
        return {"rollout": rollout, "training": training, "reward": reward}

    @property
    def seconds_per_iteration(self) -> float:
        return sum(self.flops.values()) / (self.num_processes * self.peak_tflops * 1e12 * self.mfu)

    @property
    def iterations(self) -> int:
        return math.ceil(self.settings["steps"] / self.settings["optimizer_steps_per_iter"])

    @property
    def gpu_hours(self) -> float:
        return self.iterations * self.seconds_per_iteration * self.num_processes / 3600


def _measure_call(fn: Any) -> int:
    with gpu_attention(), LiveBytes() as tracker:
        fn()
    return tracker.peak


def _count_flops(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    # separate from the memory pass: the FLOP counter's module tracking keeps activations alive and would
    # defeat gradient checkpointing
    counter = FlopCounterMode(display=False)
    with gpu_attention(), counter:
        fn()
    return float(counter.get_total_flops())


def _module_bytes(module: torch.nn.Module) -> tuple[int, int]:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def _text_encoders(geometry: Geometry, rows: int, depth: int | None = None
                   ) -> tuple[dict[str, tuple[int, int]], int, float]:
    """Weights of each text encoder, peak bytes of encoding ``rows`` prompts, FLOPs per prompt (all encoders)."""
    from opgrpo_bench.arch.configs import build_module, family_components

    weights, peak, flops = {}, 0, 0.0
    for name, comp in family_components(geometry.family, depth).items():
        if not name.startswith("text_encoder"):
            continue
        model = build_module(comp).to(geometry.dtype)
        weights[name] = _module_bytes(model)
        tokens = geometry.text_tokens[name]

        def run(n: int, model: Any = model, tokens: int = tokens) -> None:
            with torch.no_grad():
                model(input_ids=torch.zeros((n, tokens), dtype=torch.long, device="meta"))

        peak = max(peak, _measure_call(lambda: run(rows)))
        flops += _count_flops(lambda: run(1))
        del model
    return weights, peak, flops


def _vae(geometry: Geometry) -> tuple[tuple[int, int], int, float, str | None]:
    """VAE weights, peak bytes and FLOPs of decoding one sample (None note when measured)."""
    from opgrpo_bench.arch.configs import build_module, family_components

    vae = build_module(family_components(geometry.family)["vae"]).to(geometry.vae_dtype)
    size = _module_bytes(vae)
    z = torch.empty((1, *geometry.latent_shape), device="meta", dtype=geometry.vae_dtype)

    def run() -> None:
        with torch.no_grad():
            vae.decode(z, return_dict=False)

    try:
        return size, _measure_call(run), _count_flops(run), None
    except Exception as err:  # a decoder the meta device cannot run: counted as zero, and said so
        return size, 0, 0.0, f"VAE decode not measured on the meta device ({type(err).__name__})"


def _reward(geometry: Geometry, reward: str) -> tuple[dict[str, tuple[int, int]], float, str]:
    """Reward-model weights on the GPU and FLOPs per sample, with a note on what is counted."""
    if reward in ("pickscore", "clipscore"):
        from transformers import CLIPConfig, CLIPModel

        # PickScore is a fine-tuned OpenCLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json)
        cfg = CLIPConfig(text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, hidden_act="gelu", vocab_size=49408),
                         vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                            num_attention_heads=16, patch_size=14, image_size=224, hidden_act="gelu"),
                         projection_dim=1024)
        with torch.device("meta"):
            model = CLIPModel(cfg).to(torch.bfloat16)

        def run() -> None:
            with torch.no_grad():
                model(input_ids=torch.zeros((1, 77), dtype=torch.long, device="meta"),
                      pixel_values=torch.empty((1, 3, 224, 224), device="meta", dtype=torch.bfloat16))

        return {"reward model (CLIP-H, bf16)": _module_bytes(model)}, _count_flops(run), \
            "reward: PickScore's CLIP-H/14 on the GPU (one image and its prompt per sample)"
    if reward in ("ocr", "video-ocr"):
        return {}, 0.0, "reward: OCR runs on the CPU (onnxruntime); its time overlaps sampling and is not modelled"
    return {}, 0.0, f"reward '{reward}': not counted (no GPU model known to the planner)"


def build_plan(task: str, algorithm: str = "flow-grpo", sets: list[str] | None = None, num_processes: int = 1,
               fsdp: bool = False, gpu_memory_gib: float = 80.0, mfu: float = DEFAULT_MFU,
               peak_tflops: float = DEFAULT_PEAK_TFLOPS, depth: int | None = None) -> Plan:
    """The plan of ``task`` with the settings ``run`` would use (``--set`` included); nothing is allocated.

    ``depth`` plans the depth-reduced variant (every stack capped at ``depth`` blocks, as the random-weight
    folders of :mod:`opgrpo_bench.arch.folders`); None plans the published model.

    Raises:
        UserError: an unknown task (or one the planner does not know), a bad setting.
    """
    from opgrpo_bench.capacity.models import PLAN_TASKS, task_spec
    from opgrpo_bench.errors import UserError
    from opgrpo_bench.registry import ALGORITHMS, TASKS
    from opgrpo_bench.runner import parse_sets
    from opgrpo_bench.validation import build_settings

    if task not in PLAN_TASKS:
        TASKS.entry(task)  # an unknown name: the registry's one line with suggestions
        raise UserError(f"the planner knows the real-architecture tasks only ({', '.join(sorted(PLAN_TASKS))}), "
                        f"not '{task}'")
    if num_processes < 1:
        raise UserError(f"--num-processes must be positive, got {num_processes}")
    if fsdp and num_processes < 2:
        raise UserError("--fsdp shards the weights over several processes: add --num-processes N (N >= 2)")
    for name, value in (("--gpu-memory", gpu_memory_gib), ("--mfu", mfu), ("--peak-tflops", peak_tflops)):
        if not value > 0:
            raise UserError(f"{name} must be positive, got {value}")
    if depth is not None and depth < 1:
        raise UserError(f"--depth must be positive, got {depth}")
    if mfu > 1:
        raise UserError(f"--mfu is a fraction of the peak (0-1], got {mfu}")
    pt = PLAN_TASKS[task]
    spec = task_spec(pt)
    preset = ALGORITHMS.get(algorithm)
    name = ALGORITHMS.entry(algorithm).name
    cfg, algo = build_settings(spec, preset, name, 0, None, parse_sets(sets))
    geometry = pt.geometry()
    samples = cfg.prompts_per_iter * cfg.group_size
    mask = algo.trained_steps(cfg.num_steps).float()
    trained = float(mask.sum(-1).mean())
    cfg_scale = cfg.guidance
    settings = dict(micro_batch=cfg.micro_batch, gradient_checkpointing=cfg.gradient_checkpointing,
                    samples=samples, num_steps=cfg.num_steps, guidance=cfg_scale, steps=cfg.steps,
                    optimizer_steps_per_iter=cfg.optimizer_steps_per_iter, lora_rank=cfg.lora_rank,
                    beta=float(getattr(algo.config, "beta", 0.0)), latent_dtype=cfg.latent_dtype,
                    trajectory_device=cfg.trajectory_device, max_batch=geometry.max_batch,
                    share_rows=max(1, samples // cfg.optimizer_steps_per_iter), noise_level=cfg.noise_level,
                    cfg_detach_uncond=cfg.cfg_detach_uncond)
    notes: list[str] = []

    backbone = meta_backbone(geometry, cfg.lora_rank, cfg.lora_alpha, gradient_checkpointing=False, depth=depth)
    transformer = backbone.transformer
    frozen = [t for t in list(transformer.parameters()) + list(transformer.buffers()) if not t.requires_grad]
    weights = {"transformer": (sum(t.numel() for t in frozen), sum(t.numel() * t.element_size() for t in frozen))}
    lora_params = sum(p.numel() for p in backbone.trainable_parameters())
    block_names = set(getattr(transformer, "_no_split_modules", None) or [])
    largest_block = max((sum(p.numel() * p.element_size() for p in m.parameters() if not p.requires_grad)
                         for m in transformer.modules() if type(m).__name__ in block_names), default=0)

    def train_cost(gc: bool) -> CallCost:
        if gc:
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
        peaks = []
        for n in (1, 2):
            backbone._plan_cond = conditioning(geometry, n)
            peaks.append(_measure_call(lambda: training_call(backbone, n, cfg_scale, cfg.noise_level,
                                                             cfg.cfg_detach_uncond)))
        flops = 0.0
        if not gc:
            backbone._plan_cond = conditioning(geometry, 1)
            flops = _count_flops(lambda: training_call(backbone, 1, cfg_scale, cfg.noise_level, cfg.cfg_detach_uncond))
        return CallCost(peaks[0], peaks[1], flops)

    train = {False: train_cost(False), True: train_cost(True)}
    transformer.disable_gradient_checkpointing()
    sample_peaks = []
    for n in (1, 2):
        backbone._plan_cond = conditioning(geometry, n)
        sample_peaks.append(_measure_call(lambda: sampling_call(backbone, n, cfg_scale)))
    backbone._plan_cond = conditioning(geometry, 1)
    sample = CallCost(sample_peaks[0], sample_peaks[1], _count_flops(lambda: sampling_call(backbone, 1, cfg_scale)))
    del backbone, transformer

    text_weights, text_peak, text_flops = _text_encoders(geometry, min(geometry.max_batch, cfg.micro_batch), depth)
    weights.update(text_weights)
    vae_size, decode_peak, decode_flops, vae_note = _vae(geometry)
    weights["vae"] = vae_size
    if vae_note:
        notes.append(vae_note)
    reward_weights, reward_flops, reward_note = _reward(geometry, spec.reward)
    weights.update(reward_weights)
    latent_bytes = math.prod(geometry.latent_shape) * torch.tensor([], dtype=getattr(torch, cfg.latent_dtype)).element_size()
    trajectories = samples * (cfg.num_steps + 1) * latent_bytes if cfg.trajectory_device != "cpu" else 0
    notes.append("evaluation (ODE sampling of the held-out prompts every eval_every steps) is not in the "
                 "per-iteration FLOPs")
    if depth is not None:
        notes.append(f"depth-reduced variant: every stack capped at {depth} blocks (not the published model)")
    return Plan(task=task, family=geometry.family if depth is None else f"{geometry.family}-depth{depth}", algorithm=name, settings=settings, weights=weights,
                lora_params=lora_params, trajectories=trajectories, train=train, sample=sample,
                decode_per_row=decode_peak, decode_flops=decode_flops, text_peak=text_peak, text_flops=text_flops,
                reward_flops=reward_flops, reward_note=reward_note, largest_block=largest_block,
                num_processes=num_processes, fsdp=fsdp, gpu_memory_gib=gpu_memory_gib, mfu=mfu,
                peak_tflops=peak_tflops, trained_steps=trained, notes=notes)
