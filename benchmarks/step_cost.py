"""Wall-clock cost of one optimizer step, per algorithm, on a task (default digits-v1).

    python benchmarks/step_cost.py [--task digits-v1] [--algorithms flow-grpo op-grpo] [--iters 10] [--rounds 3]
                                   [--set key=value ...]

On a GPU (e.g. ``--task ocr-sd35m-v1 --set micro_batch=8``) it also prints the peak GPU memory of each
algorithm's timed iterations, which is how a ``micro_batch`` that fits is chosen; the weight-needing
tasks print one line naming what is missing when their weights are absent.

Each round builds a fresh trainer per algorithm, runs ``--warmup`` iterations (so OP-GRPO's buffer is
filled and replays), then times ``--iters`` iterations (evaluation excluded). Algorithms alternate within
a round so that machine drift hits them alike. Prints the median seconds per optimizer step and the
ratio to the first algorithm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def time_algorithm(task: str, algorithm: str, warmup: int, iters: int, seed: int,
                   sets: list[str] | None = None) -> tuple[float, float | None]:
    """(seconds per optimizer step, peak GPU memory in GiB or None on a CPU) of ``iters`` iterations."""
    import torch

    from opgrpo_bench.runner import resolve
    from opgrpo_bench.trainer import Trainer

    r = resolve(task, algorithm, seed, 10_000, sets or [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(r.task, r.algorithm, r.train_config, tmp, algorithm_name=r.algorithm_name)
        trainer.cfg.eval_every = 10**9  # no evaluation inside the timed loop
        cuda = trainer.device.type == "cuda"
        for _ in range(warmup):
            trainer.iteration()
        if cuda:
            torch.cuda.synchronize(trainer.device)
            torch.cuda.reset_peak_memory_stats(trainer.device)
        steps0, t0 = trainer.state.step, time.perf_counter()
        for _ in range(iters):
            trainer.iteration()
        if cuda:
            torch.cuda.synchronize(trainer.device)
        per_step = (time.perf_counter() - t0) / (trainer.state.step - steps0)
        peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if cuda else None
        return per_step, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits-v1")
    p.add_argument("--algorithms", nargs="+", default=["flow-grpo", "op-grpo"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="a setting key=value, as for opgrpo-bench run")
    args = p.parse_args()
    import torch

    from opgrpo_bench.errors import UserError

    times: dict[str, list[float]] = {a: [] for a in args.algorithms}
    peaks: dict[str, list[float]] = {a: [] for a in args.algorithms}
    try:
        for rnd in range(args.rounds):
            for alg in args.algorithms:
                per_step, peak = time_algorithm(args.task, alg, args.warmup, args.iters, rnd, args.set)
                times[alg].append(per_step)
                if peak is not None:
                    peaks[alg].append(peak)
    except UserError as err:  # missing weights, a bad setting: one line
        raise SystemExit(f"error: {err}")
    base = statistics.median(times[args.algorithms[0]])
    print(f"task {args.task}, torch threads {torch.get_num_threads()}, {args.iters} timed iterations x "
          f"{args.rounds} rounds")
    gpu = any(peaks.values())
    print(f"{'algorithm':<24}{'s/step (median)':>16}{'min':>8}{'max':>8}{'ratio':>8}"
          + (f"{'peak GPU GiB':>14}" if gpu else ""))
    for alg, ts in times.items():
        med = statistics.median(ts)
        print(f"{alg:<24}{med:>16.3f}{min(ts):>8.3f}{max(ts):>8.3f}{med / base:>8.3f}"
              + (f"{max(peaks[alg]):>14.2f}" if gpu else ""))


if __name__ == "__main__":
    main()
