"""``opgrpo-bench plan TASK``: the capacity plan of a real task, computed without allocating anything."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from opgrpo_bench.capacity.defaults import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS


def plan(
    task: Annotated[str, typer.Argument(help="a real-architecture task, e.g. ocr-sd35m-v1 or video-ocr-wan21-v1")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="setting key=value, as for run (repeatable)")]
    = None,
    algorithm: Annotated[str, typer.Option("--algorithm", "-a", help="algorithm preset")] = "flow-grpo",
    num_processes: Annotated[int, typer.Option("--num-processes", help="data-parallel processes (GPUs)")] = 1,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="shard the frozen transformer over the processes")] = False,
    gpu_memory: Annotated[float, typer.Option("--gpu-memory", help="GiB per GPU")] = 80.0,
    mfu: Annotated[float, typer.Option("--mfu", help="model FLOPs utilisation assumed for the time estimate")]
    = DEFAULT_MFU,
    peak_tflops: Annotated[float, typer.Option("--peak-tflops", help="bf16 peak per GPU (H100 SXM: 989)")]
    = DEFAULT_PEAK_TFLOPS,
    depth: Annotated[Optional[int], typer.Option("--depth", help="plan the depth-reduced variant (N blocks per "
                                                 "stack), as the random-weight test folders")] = None,
) -> None:
    """Memory, FLOPs and time of a task's training on GPUs, from its real configuration (nothing is loaded).

    Prints parameters and bytes per component, the activation peak of one training and one sampling call,
    the peak per process with and without FSDP, FLOPs per iteration, the largest micro-batch that fits and
    the predicted time. A configuration that cannot fit is refused with one line (exit 2).
    """
    from diffusers.utils import logging as diffusers_logging

    from opgrpo_bench.capacity.estimate import build_plan
    from opgrpo_bench.capacity.report import refusal, render
    from opgrpo_bench.errors import UserError

    diffusers_logging.set_verbosity_error()  # casting meta models to bf16 warns once per class; nothing is loaded

    result = build_plan(task, algorithm=algorithm, sets=list(set_ or []), num_processes=num_processes, fsdp=fsdp,
                        gpu_memory_gib=gpu_memory, mfu=mfu, peak_tflops=peak_tflops, depth=depth)
    line = refusal(result)
    if line:
        raise UserError(line)
    typer.echo(render(result))
