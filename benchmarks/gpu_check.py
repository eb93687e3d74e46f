"""One GPU check: the planner against measurement, a training iteration per family, trainer vs eager, bf16 vs fp32.

    python benchmarks/gpu_check.py              # one CUDA GPU, at most about 8 minutes
    python benchmarks/gpu_check.py --dry-run    # the same code paths on the CPU at tiny sizes (a test runs it)

Prints one table (check, what was predicted or required, what was measured, ok) and exits 1 if any check
fails. Random weights at the real architectures (``opgrpo_bench/arch``): nothing is downloaded.

1. ``plan/<family>``: the planner (``opgrpo-bench plan``'s code, nothing allocated) against a real call on the
   GPU for SD3.5-Medium at 512 px (micro-batch 2, CFG) and Wan2.1-T2V-1.3B at 33 frames of 240x416
   (micro-batch 1, CFG), full published transformers in bf16 with LoRA r32: the activation peak of one
   training call (``torch.cuda.max_memory_allocated`` above what was allocated before it; within 15%),
   and the seconds of an iteration of the task's settings predicted at the planner's assumed MFU against
   the same iteration timed from its calls (reported with the MFU it implies; not a pass/fail).
2. ``iteration/<family>``: one training iteration of each family through the project's ``Trainer`` on CUDA
   (random-weight folders of depth 2 loaded by the backbones' ``from_pretrained``, bf16, a CPU reward),
   with its records written (``metrics.jsonl`` holds ``run_start``, a ``step`` and ``run_end``).
3. ``trainer-vs-eager``: ``benchmarks/gpu_iteration.py``'s comparison on SD3.5-M's transformer (P=2, G=4):
   the trainer within 1.3x of the eager loop, and its peak memory against the planner's for the same run.
4. ``logprob bf16/fp32``: the SDE log-prob of the same transitions with the transformer in bf16 and in
   float32 (depth-2 SD3.5-M at 512 px): the largest difference, which must be finite and below 0.05.

With ``--dry-run`` every check runs on the CPU at tiny sizes (depth 1, a few latent pixels, the tiny
pipelines for the iterations); memory is then not measured ("-") and only the code paths are checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

MEMORY_TOLERANCE = 0.15
TRAINER_VS_EAGER = 1.3
LOGPROB_TOLERANCE = 0.05


@dataclasses.dataclass
class Row:
    check: str
    expected: str
    measured: str
    ok: bool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 2, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _small(family: str) -> dict[str, Any] | None:
    """Dry run: SD3's position table for 16x16 patches instead of 384x384 (seconds to build on a CPU)."""
    return {"pos_embed_max_size": 16} if family == "sd3.5-medium" else None


# -- 1. the planner against one real call ----------------------------------------------------------------
def check_plan(task: str, samples: int, device: torch.device, dry: bool) -> list[Row]:
    from opgrpo_bench.capacity.estimate import GIB, build_plan
    from opgrpo_bench.capacity.models import PLAN_TASKS, conditioning, meta_backbone, sampling_call, training_call

    depth = 1 if dry else None
    geometry = PLAN_TASKS[task].geometry()
    if dry:  # a few latent pixels, a few tokens: the code path only
        small = (16, 8, 8) if len(geometry.latent_shape) == 3 else (16, 2, 4, 4)
        geometry = dataclasses.replace(geometry, latent_shape=small, dtype=torch.float32,
                                       text_tokens={k: 8 for k in geometry.text_tokens})
    plan = build_plan(task, sets=[f"micro_batch={samples}"], depth=depth)
    settings = plan.settings
    cfg_scale, noise = settings["guidance"], settings["noise_level"]
    torch.manual_seed(0)
    backbone = meta_backbone(geometry, settings["lora_rank"], 2 * settings["lora_rank"], False, depth=depth,
                             device=str(device), overrides=_small(geometry.family) if dry else None)
    generator = torch.Generator().manual_seed(0)
    backbone._plan_cond = conditioning(geometry, samples, device=str(device), generator=generator)
    family = plan.family
    rows = []

    def train() -> None:
        training_call(backbone, samples, cfg_scale, noise, True, device=str(device), generator=generator)
        for p in backbone.trainable_parameters():
            p.grad = None

    def sample() -> None:
        sampling_call(backbone, samples, cfg_scale, device=str(device))

    train()  # warm-up (kernel choice, lazy state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train()
        measured = torch.cuda.max_memory_allocated(device) - before
        predicted = plan.train[False].peak(samples)
        if dry:  # the planner measured the task's geometry, not this tiny one
            predicted = measured
        ratio = measured / predicted
        rows.append(Row(f"plan/{family} training-call peak", f"{predicted / GIB:.2f} GiB",
                        f"{measured / GIB:.2f} GiB ({ratio:.2f}x)", abs(ratio - 1) <= MEMORY_TOLERANCE))
    else:
        train()
        rows.append(Row(f"plan/{family} training-call peak", f"{plan.train[False].peak(samples) / GIB:.2f} GiB",
                        "- (CPU)", True))
    t_train = _timed(train, device, repeats=1 if dry else 2, warm_up=not dry)
    t_sample = _timed(sample, device, repeats=1 if dry else 2, warm_up=not dry)
    # the task's iteration timed from its calls: every sampling call, every trained pair's call with
    # gradient and (beta > 0) its reference call
    n, steps, trained = settings["samples"], settings["num_steps"], plan.trained_steps
    calls = n / samples
    measured_s = calls * steps * t_sample + calls * trained * (t_train + (t_sample if settings["beta"] > 0 else 0))
    flops = plan.flops
    transformer_flops = flops["training"] + n * steps * plan.sample.flops_per_sample
    predicted_s = transformer_flops / (plan.peak_tflops * 1e12 * plan.mfu)
    implied = plan.mfu * predicted_s / measured_s
    rows.append(Row(f"plan/{family} s/iteration (transformer)", f"{predicted_s:.1f} s at MFU {plan.mfu:.0%}",
                    f"{measured_s:.1f} s (MFU {implied:.0%})", measured_s > 0))
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- 2. one iteration per family through the trainer ---------------------------------------------------
def _folder(family: str, dry: bool, root: Path) -> tuple[Path, Callable[..., Any]]:
    if dry:
        from opgrpo_bench.backbones import tiny, tiny_flux, tiny_wan

        folder = {"sd3.5-medium": lambda: tiny.tiny_sd3_folder(),
                  "flux.1-dev": lambda: tiny_flux.tiny_flux_folder(),
                  "wan2.1-t2v-1.3b": lambda: tiny_wan.tiny_wan_folder()}[family]()
    else:
        from opgrpo_bench.arch.folders import arch_folder

        folder = arch_folder(family, depth=2, root=root)
    return folder, {"sd3.5-medium": _load_sd3, "flux.1-dev": _load_flux, "wan2.1-t2v-1.3b": _load_wan}[family]


def _load_sd3(folder, device, dtype, dry):
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    return SD3Backbone.from_pretrained(folder, dtype=dtype, device=device, resolution=32 if dry else 256,
                                       max_sequence_length=16 if dry else 128)


def _load_flux(folder, device, dtype, dry):
    from opgrpo_bench.backbones.flux import FluxBackbone

    return FluxBackbone.from_pretrained(folder, dtype=dtype, device=device, resolution=32 if dry else 256,
                                        max_sequence_length=16 if dry else 128)


def _load_wan(folder, device, dtype, dry):
    from opgrpo_bench.backbones.wan import WanBackbone

    return WanBackbone.from_pretrained(folder, dtype=dtype, device=device, height=32 if dry else 240,
                                       width=32 if dry else 416, num_frames=9, max_sequence_length=16 if dry else 512)


def check_iteration(family: str, device: torch.device, dry: bool, root: Path) -> Row:
    from opgrpo_bench.algorithms import PRESETS
    from opgrpo_bench.config import TrainConfig
    from opgrpo_bench.results import read_records
    from opgrpo_bench.tasks.spec import Prompt, TaskSpec
    from opgrpo_bench.trainer import Trainer

    folder, load = _folder(family, dry, root)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    video = family.startswith("wan")

    class CheckTask(TaskSpec):
        def build_backbone(self):
            return load(folder, device, dtype, dry)

    prompts = ('a sign that says "OPEN"', 'a cup printed with "HELLO"')
    task = CheckTask(id=f"gpu-check-{family}-v1", description="gpu check", backbone="tiny-sd3",
                     reward="video" if video else "jpeg-compressibility",
                     reward_args={"reward": "jpeg-compressibility", "aggregate": "mean"} if video else {},
                     train_prompts=tuple(Prompt(p) for p in prompts), eval_prompts=(Prompt(prompts[0]),),
                     target=0.0, eval_noises_per_prompt=1, budget_steps=1, eval_every=10**6)
    guidance = 1.0 if family == "flux.1-dev" else 4.5
    cfg = TrainConfig(steps=1, prompts_per_iter=2, group_size=2, num_steps=3, guidance=guidance, eval_guidance=guidance,
                      eval_num_steps=2, eval_every=10**6, optimizer_steps_per_iter=1, micro_batch=2, lora_rank=4,
                      lora_alpha=8, lr=1e-4, num_threads=1 if device.type == "cpu" else 0)
    algo = PRESETS["flow-grpo"].build(clip_range=1e-3)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            Trainer(task, algo, cfg, tmp).run("gpu-check")
            records = read_records(Path(tmp) / "metrics.jsonl")
        except Exception as err:  # any failure is a failed check, reported in the table
            return Row(f"iteration/{family}", "records written", f"{type(err).__name__}: {str(err)[:60]}", False)
    kinds = [r.get("type") for r in records]
    ok = kinds[0] == "run_start" and "step" in kinds and kinds[-1] == "run_end"
    step = next((r for r in records if r.get("type") == "step"), {})
    loss = step.get("train/loss", step.get("loss"))
    return Row(f"iteration/{family}", "run_start, step, run_end",
               f"{len(records)} records, {time.perf_counter() - start:.0f} s" + (f", loss {loss:.3g}" if loss is not None else ""),
               ok)


# -- 3. trainer vs eager (benchmarks/gpu_iteration.py) ---------------------------------------------------
def check_trainer_vs_eager(device: torch.device, dry: bool) -> list[Row]:
    import gpu_iteration as gi

    from opgrpo_bench.capacity.estimate import GIB, build_plan

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    P, G = 2, 4
    micro = P * G
    prompts = [f"benchmark prompt {i}" for i in range(16)]
    results = {}
    for name in ("trainer", "eager"):
        backbone = gi.build(dry, device, dtype)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = gi.time_trainer(backbone, prompts, P, G, micro, 1) if name == "trainer" else \
            gi.time_eager(backbone, prompts, P, G, 1)
        results[name] = (statistics.median(times), torch.cuda.max_memory_allocated(device) if cuda else None)
        del backbone
        if cuda:
            torch.cuda.empty_cache()
    ratio = results["trainer"][0] / results["eager"][0]
    rows = [Row("trainer-vs-eager time", f"<= {TRAINER_VS_EAGER}x eager",
                f"{results['trainer'][0]:.2f} s vs {results['eager'][0]:.2f} s ({ratio:.2f}x)",
                dry or ratio <= TRAINER_VS_EAGER)]
    if cuda:
        # the same run as the planner sees it: transformer only (random text embeddings, no VAE), beta 0
        plan = build_plan("ocr-sd35m-v1", sets=[f"prompts_per_iter={P}", f"group_size={G}", f"micro_batch={micro}",
                                                "optimizer_steps_per_iter=1", "beta=0"])
        predicted = (plan.weights["transformer"][1] + sum(plan.lora_bytes.values()) + plan.trajectories
                     + max(plan.sample.peak(micro), plan.train[False].peak(micro)))
        measured = results["trainer"][1]
        r = measured / predicted
        rows.append(Row("trainer peak vs plan (SD3.5-M 512 px)", f"{predicted / GIB:.2f} GiB",
                        f"{measured / GIB:.2f} GiB ({r:.2f}x)", abs(r - 1) <= MEMORY_TOLERANCE))
    return rows


# -- 4. bf16 vs fp32 log-probs ---------------------------------------------------------------------------
def check_logprob(device: torch.device, dry: bool) -> Row:
    from opgrpo_bench.capacity.models import PLAN_TASKS, conditioning, meta_backbone
    from opgrpo_bench.core.sde import sde_step_with_logprob

    geometry = PLAN_TASKS["ocr-sd35m-v1"].geometry()
    if dry:
        geometry = dataclasses.replace(geometry, latent_shape=(16, 8, 8), text_tokens={k: 8 for k in geometry.text_tokens})
    geometry = dataclasses.replace(geometry, dtype=torch.float32)
    torch.manual_seed(0)
    backbone = meta_backbone(geometry, 4, 8, False, depth=1 if dry else 2, device=str(device),
                             overrides=_small(geometry.family) if dry else None)
    generator = torch.Generator().manual_seed(0)
    cond = conditioning(geometry, 4, device=str(device), generator=generator)
    sigmas = backbone.sigmas(10).to(device)
    x = torch.randn((4, *geometry.latent_shape), generator=generator).to(device)
    out = {}
    with torch.no_grad():
        v = backbone.velocity(x, sigmas[3].expand(4), cond, 4.5)
        nxt, _, _, _ = sde_step_with_logprob(v, sigmas[3], sigmas[4], x, 0.7, generator=generator, sigma_max=sigmas[1])
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            backbone.transformer.to(dt)
            backbone.dtype = dt  # the backbone casts its inputs to the weights' dtype, read at construction
            c = {k: t.to(dt) for k, t in cond.items()}
            v = backbone.velocity(x, sigmas[3].expand(4), c, 4.5)
            out[name] = sde_step_with_logprob(v, sigmas[3], sigmas[4], x, 0.7, prev_sample=nxt, sigma_max=sigmas[1])[1]
    diff = (out["bf16"] - out["fp32"]).abs().max().item()
    return Row("logprob bf16 vs fp32 (max |diff|)", f"< {LOGPROB_TOLERANCE}", f"{diff:.2e}",
               diff == diff and diff < LOGPROB_TOLERANCE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the code paths only")
    p.add_argument("--cache", type=Path, default=None, help="where the depth-2 folders are built (default: the arch cache)")
    args = p.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    start = time.perf_counter()
    rows: list[Row] = []

    def guarded(name: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            rows.extend(result if isinstance(result, list) else [result])
        except Exception as err:  # one failing check must not hide the others
            rows.append(Row(name, "runs", f"{type(err).__name__}: {str(err).splitlines()[0][:70] if str(err) else ''}",
                            False))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or Path(tmp)
        guarded("plan/sd3.5-medium", lambda: check_plan("ocr-sd35m-v1", 2, device, dry))
        guarded("plan/wan2.1", lambda: check_plan("video-ocr-wan21-v1", 1, device, dry))
        for family in ("sd3.5-medium", "flux.1-dev", "wan2.1-t2v-1.3b"):
            guarded(f"iteration/{family}", lambda f=family: check_iteration(f, device, dry, root))
        guarded("trainer-vs-eager", lambda: check_trainer_vs_eager(device, dry))
        guarded("logprob", lambda: check_logprob(device, dry))
    width = max(len(r.check) for r in rows) + 2
    device_name = "CPU (dry run)" if dry else torch.cuda.get_device_name(device)
    print(f"gpu check on {device_name}, {time.perf_counter() - start:.0f} s")
    print(f"{'check':<{width}}{'expected':<26}{'measured':<40}ok")
    for r in rows:
        print(f"{r.check:<{width}}{r.expected:<26}{r.measured:<40}{'yes' if r.ok else 'FAIL'}")
    print(json.dumps({"failed": [r.check for r in rows if not r.ok]}))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
