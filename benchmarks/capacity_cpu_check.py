"""The capacity planner against real execution on this CPU: FLOPs and peak memory of a training call.

    python benchmarks/capacity_cpu_check.py [--family wan2.1-t2v-1.3b ...] [--quick]

For each family, a depth-reduced transformer at the real widths (random weights, float32, on the CPU) makes
the trainer's training call (LoRA r32, one sample, no CFG) on a reduced geometry:

- FLOPs: ``torch.utils.flop_counter`` around the real execution (the CPU's own attention kernel) against
  the planner's count on the meta device (:mod:`opgrpo_bench.capacity`, attention as CUDA's fused kernel).
- memory: the process's peak resident memory during the call (``/proc/self/status`` VmHWM after resetting
  it through ``/proc/self/clear_refs``, in a fresh subprocess with glibc's mmap threshold fixed at 64 KiB
  so that freed tensors go back to the system) minus the resident memory before it, against the planner's
  peak live bytes of the same call on the meta device.

Prints one table with the ratios (measured / predicted). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

GEOMETRIES = {
    # family: (depth, latent shape, text tokens per encoder)
    "sd3.5-medium": (2, (16, 48, 48), {"text_encoder": 77, "text_encoder_2": 77, "text_encoder_3": 128}),
    "flux.1-dev": (1, (16, 32, 32), {"text_encoder": 77, "text_encoder_2": 128}),
    "wan2.1-t2v-1.3b": (1, (16, 3, 30, 52), {"text_encoder": 512}),
}
QUICK = {
    "sd3.5-medium": (2, (16, 8, 8), {"text_encoder": 77, "text_encoder_2": 77, "text_encoder_3": 8}),
    "flux.1-dev": (1, (16, 4, 4), {"text_encoder": 77, "text_encoder_2": 8}),
    "wan2.1-t2v-1.3b": (1, (16, 1, 4, 4), {"text_encoder": 8}),
}
TASK = {"sd3.5-medium": "ocr-sd35m-v1", "flux.1-dev": "pickscore-flux-v1", "wan2.1-t2v-1.3b": "video-ocr-wan21-v1"}


def _geometry(family: str, quick: bool):
    import torch

    from opgrpo_bench.capacity.models import PLAN_TASKS

    depth, latent, tokens = (QUICK if quick else GEOMETRIES)[family]
    geometry = dataclasses.replace(PLAN_TASKS[TASK[family]].geometry(), latent_shape=latent, text_tokens=tokens,
                                   dtype=torch.float32)
    return depth, geometry


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def one(family: str, quick: bool) -> dict[str, float]:
    """Predicted and measured FLOPs and peak bytes of one training call (run in a fresh process)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from opgrpo_bench.capacity.estimate import _count_flops, _measure_call
    from opgrpo_bench.capacity.models import conditioning, meta_backbone, training_call

    torch.set_num_threads(1)
    depth, geometry = _geometry(family, quick)
    meta = meta_backbone(geometry, 32, 64, gradient_checkpointing=False, depth=depth)
    meta._plan_cond = conditioning(geometry, 1)
    call = dict(rows=1, guidance=1.0, noise_level=0.7, detach_uncond=True)
    predicted_peak = _measure_call(lambda: training_call(meta, **call))
    predicted_flops = _count_flops(lambda: training_call(meta, **call))
    del meta

    torch.manual_seed(0)
    real = meta_backbone(geometry, 32, 64, gradient_checkpointing=False, depth=depth, device="cpu")
    generator = torch.Generator().manual_seed(0)
    real._plan_cond = conditioning(geometry, 1, device="cpu", generator=generator)
    training_call(real, device="cpu", generator=generator, **call)  # warm-up: lazy inits, kernel choice
    for p in real.trainable_parameters():
        p.grad = None
    before = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        resettable = True
    except OSError:  # a kernel or sandbox without it: no memory figure (NaN), FLOPs still compared
        resettable = False
    training_call(real, device="cpu", generator=generator, **call)
    measured_peak = _status("VmHWM") - before if resettable else float("nan")
    for p in real.trainable_parameters():
        p.grad = None
    counter = FlopCounterMode(display=False)
    # the counter has no formula for the CPU's fused attention kernel: count its matmuls through the math
    # backend (the same arithmetic; flash kernels' FLOP formulas count these matmuls, not their recompute)
    with sdpa_kernel(SDPBackend.MATH), counter:
        training_call(real, device="cpu", generator=generator, **call)
    return {"family": family, "depth": depth, "latent": list(geometry.latent_shape),
            "predicted_flops": predicted_flops, "measured_flops": float(counter.get_total_flops()),
            "predicted_peak": predicted_peak, "measured_peak": measured_peak}


def run(families: list[str], quick: bool) -> list[dict[str, float]]:
    """One subprocess per family (a fresh allocator and resident-memory high-water mark each)."""
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    for family in families:
        out = subprocess.run([sys.executable, __file__, "--one", family] + (["--quick"] if quick else []),
                             env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict[str, float]]) -> str:
    lines = [f"{'family':<18}{'depth':>6}{'latent':>16}{'GFLOP pred':>12}{'GFLOP meas':>12}{'ratio':>8}"
             f"{'MiB pred':>10}{'MiB meas':>10}{'ratio':>8}"]
    for r in rows:
        lines.append(f"{r['family']:<18}{r['depth']:>6}{'x'.join(map(str, r['latent'])):>16}"
                     f"{r['predicted_flops'] / 1e9:>12.2f}{r['measured_flops'] / 1e9:>12.2f}"
                     f"{r['measured_flops'] / r['predicted_flops']:>8.3f}"
                     f"{r['predicted_peak'] / 2**20:>10.1f}{r['measured_peak'] / 2**20:>10.1f}"
                     f"{r['measured_peak'] / max(r['predicted_peak'], 1):>8.3f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", action="append", choices=list(GEOMETRIES))
    p.add_argument("--quick", action="store_true", help="tiny shapes (seconds; memory ratios are then noise)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.quick)))
        return
    rows = run(args.family or list(GEOMETRIES), args.quick)
    print(table(rows))


if __name__ == "__main__":
    main()
