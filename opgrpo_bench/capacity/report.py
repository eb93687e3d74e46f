"""The plan as text: one table of components, calls, per-process peaks, FLOPs and time."""

from __future__ import annotations

from opgrpo_bench.capacity.estimate import GIB, RESERVE_GIB, Plan


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _count(n: float) -> str:
    return f"{n / 1e9:7.3f} B" if n >= 1e8 else f"{n / 1e6:7.2f} M"


def render(plan: Plan) -> str:
    """The report ``opgrpo-bench plan`` prints."""
    s = plan.settings
    mb, gc = s["micro_batch"], s["gradient_checkpointing"]
    n = plan.num_processes
    lines = [
        f"capacity plan: {plan.task} ({plan.family}, {plan.algorithm}); {n} process(es)"
        + (", FSDP" if plan.fsdp else "") + f", {plan.gpu_memory_gib:g} GiB per GPU",
        f"  {s['samples']} samples/iteration ({s['num_steps']} SDE steps, {plan.trained_steps:g} trained), "
        f"CFG {s['guidance']:g}, micro_batch {mb}, LoRA r{s['lora_rank']}, gradient_checkpointing {gc}, "
        f"max_batch {s['max_batch']}",
        "",
        f"{'component':<34}{'parameters':>12}{'memory':>14}",
    ]
    for name, (params, nbytes) in plan.weights.items():
        lines.append(f"{'frozen ' + name:<34}{_count(params):>12}{_gib(nbytes):>14}")
    for name, nbytes in plan.lora_bytes.items():
        lines.append(f"{name:<34}{_count(plan.lora_params):>12}{_gib(nbytes):>14}")
    lines.append(f"{'rollout trajectories (' + s['latent_dtype'] + ')':<34}{'':>12}{_gib(plan.trajectories):>14}")
    lines += ["", f"{'one call (activation peak)':<44}{'no ckpt':>14}{'ckpt':>14}"]
    lines.append(f"{'training call, micro_batch ' + str(mb):<44}{_gib(plan.train_phase(mb, False)):>14}"
                 f"{_gib(plan.train_phase(mb, True)):>14}")
    lines.append(f"{'sampling call, micro_batch ' + str(mb) + ' (no grad)':<44}{_gib(plan.sample.peak(mb)):>14}"
                 f"{'':>14}")
    lines.append(f"{'VAE decode of min(micro_batch, max_batch)':<44}"
                 f"{_gib(plan.decode_per_row * min(mb, s['max_batch'])):>14}")
    lines.append(f"{'text encoding of one block':<44}{_gib(plan.text_peak):>14}")
    lines += ["", f"{'peak per process':<44}{'no ckpt':>14}{'ckpt':>14}"]
    modes = [(False, "without FSDP")] + ([(True, f"with FSDP over {n}")] if n > 1 else [])
    for fsdp, label in modes:
        lines.append(f"{label + ', micro_batch ' + str(mb):<44}{_gib(plan.peak(mb, False, fsdp)):>14}"
                     f"{_gib(plan.peak(mb, True, fsdp)):>14}")
        lines.append(f"{'  largest micro_batch that fits':<44}{plan.largest_micro_batch(False, fsdp):>14}"
                     f"{plan.largest_micro_batch(True, fsdp):>14}")
    lines.append(f"  (peaks include a {RESERVE_GIB:g} GiB reserve for the CUDA context, workspaces and fragmentation; "
                 f"micro_batch is capped at a share's {s['share_rows']} rows)")
    flops = plan.flops
    total = sum(flops.values())
    lines += ["", f"{'FLOPs per iteration':<44}{'PFLOP':>14}{'share':>10}"]
    for name, value in flops.items():
        lines.append(f"{name:<44}{value / 1e15:>14.2f}{value / total:>10.1%}")
    lines.append(f"{'total':<44}{total / 1e15:>14.2f}")
    lines += [
        "",
        f"time at MFU {plan.mfu:.0%} of {plan.peak_tflops:g} TFLOPS per GPU (bf16; MFU is an assumption, "
        f"see opgrpo_bench/capacity/estimate.py DEFAULT_MFU, or pass the measured one with --mfu):",
        f"  {plan.seconds_per_iteration:.1f} s per iteration over {n} GPU(s); {plan.iterations} iterations to the "
        f"{s['steps']}-step budget: {plan.gpu_hours:.1f} GPU-hours",
        f"  {plan.reward_note}",
    ]
    lines += [f"  note: {note}" for note in plan.notes]
    fsdp = plan.fsdp
    need = plan.peak(mb, gc, fsdp)
    fits = need <= plan.gpu_memory_gib * GIB
    best = plan.largest_micro_batch(gc, fsdp)
    verdict = (f"fits: {need / GIB:.1f} GiB of {plan.gpu_memory_gib:g} GiB at micro_batch {mb}; largest fitting "
               f"micro_batch {best}" if fits else
               f"DOES NOT FIT at micro_batch {mb} ({need / GIB:.1f} GiB > {plan.gpu_memory_gib:g} GiB): use "
               f"--set micro_batch={best}" + ("" if gc else
                                              f" or --set gradient_checkpointing=true (fits micro_batch "
                                              f"{plan.largest_micro_batch(True, fsdp)})"))
    lines += ["", verdict]
    return "\n".join(lines)


def refusal(plan: Plan) -> str | None:
    """One line when nothing fits (not even micro_batch 1 with the configured checkpointing), else None."""
    s = plan.settings
    gc = s["gradient_checkpointing"]
    if plan.largest_micro_batch(gc, plan.fsdp) > 0:
        return None
    need = plan.peak(1, gc, plan.fsdp) / GIB
    hint = ""
    if not gc and plan.largest_micro_batch(True, plan.fsdp) > 0:
        hint = "; --set gradient_checkpointing=true fits"
    elif plan.num_processes == 1:
        hint = "; try --num-processes N --fsdp"
    return (f"{plan.task} cannot fit {plan.gpu_memory_gib:g} GiB per GPU: {need:.1f} GiB per process at "
            f"micro_batch 1 (gradient_checkpointing {gc}{', FSDP over ' + str(plan.num_processes) if plan.fsdp else ''})"
            f"{hint}")
