"""The ``opgrpo-bench`` command line: a thin Typer layer over :mod:`opgrpo_bench.runner`,
:mod:`opgrpo_bench.suite`, the leaderboard and the rewards.

User mistakes (unknown names, bad settings, missing weights) print one line to stderr and exit with
code 2; they never show a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import time by huggingface_hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402

from opgrpo_bench.leaderboard.cli import DEFAULT_OUT as LEADERBOARD_OUT, leaderboard  # noqa: E402
from opgrpo_bench.rewards.cli import score  # noqa: E402
from opgrpo_bench.capacity.cli import plan  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark RL post-training of flow-matching models: steps to a target reward.")
app.command("leaderboard")(leaderboard)
app.command("score")(score)
app.command("plan")(plan)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"opgrpo-bench {version('opgrpo-bench')}")
        except PackageNotFoundError:  # run from a source tree without installing
            typer.echo("opgrpo-bench (not installed)")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Benchmark RL post-training of flow-matching models: steps to a target reward."""


@app.command("run")
def run(
    spec: Annotated[Optional[Path], typer.Argument(help="a run or suite file in TOML (instead of the flags; "
                                                   "see opgrpo_bench/specs.py)")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="task id (repeatable)")] = None,
    algorithm: Annotated[Optional[list[str]], typer.Option("--algorithm", "-a", help="algorithm (repeatable)")] = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", "-s", help="seed (repeatable)")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="optimizer-step budget (default: task's)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="results directory [default: runs]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="setting key=value (repeatable)")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="parallel worker processes [default: 2]")]
    = None,
    quick: Annotated[bool, typer.Option("--quick", help="the ~2-minute suite (same as --suite quick)")] = False,
    suite: Annotated[Optional[str], typer.Option("--suite", help="a named suite: default, quick, reference, regime")]
    = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="retrain runs that already exist")] = False,
    leaderboard_out: Annotated[Optional[Path], typer.Option(
        "--leaderboard-out", help=f"report directory (suites) [default: {LEADERBOARD_OUT}]")] = None,
    log: Annotated[Optional[list[str]], typer.Option(
        "--log", help="also mirror the records to tensorboard or wandb (offline); repeatable")] = None,
    num_processes: Annotated[int, typer.Option(
        "--num-processes", help="data-parallel processes per run (gloo on CPU, NCCL on GPUs); results do not "
                                "depend on it")] = 1,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", help="with --num-processes: shard the frozen base weights over the processes (FSDP2); same "
                       "numbers, less memory per process")] = False,
    launcher: Annotated[Optional[str], typer.Option(
        "--launcher", help="where the runs train: local worker processes, slurm (submitit; extra 'slurm') or ray "
                           "(extra 'ray') [default: local]")] = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="slurm: the partition")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="slurm: the account")] = None,
    gpus_per_run: Annotated[Optional[int], typer.Option(
        "--gpus-per-run", help="slurm, ray: GPUs per run (several: accelerate launch inside the job)")] = None,
    cpus_per_run: Annotated[Optional[int], typer.Option("--cpus-per-run", help="slurm, ray: CPUs per run")] = None,
    time_limit: Annotated[Optional[int], typer.Option(
        "--time-limit", help="slurm: minutes per job; a run cut by it resumes when requeued [default: 240]")] = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="slurm, ray: submit and return; 'opgrpo-bench status OUT' or the same command again "
                          "reports")] = False,
    slurm_cluster: Annotated[Optional[str], typer.Option(
        "--slurm-cluster", help="slurm: sbatch (slurm), or submitit's local executor (local: jobs as local "
                                "processes, for trying a setup) [default: slurm]")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="ray: the cluster's address (default: a local Ray instance)")] = None,
) -> None:
    """Train runs. With no --task/--algorithm/--seed: the default suite (or --quick), then the leaderboard."""
    from rich.console import Console

    from opgrpo_bench.errors import UserError
    from opgrpo_bench.registry import ALGORITHMS, TASKS
    from opgrpo_bench.suite import SUITES, Suite, run_grid
    from opgrpo_bench.validation import check_output_dir, check_positive

    from opgrpo_bench.distributed import Distributed

    check_positive("--num-processes", num_processes)
    dist = Distributed.from_environment()
    if fsdp and num_processes < 2 and not dist.active:
        raise UserError("--fsdp shards the weights over several processes: add --num-processes N (N >= 2)")
    if fsdp:  # what accelerate's FSDP configuration sets; read by every rank (Distributed.from_environment)
        os.environ["ACCELERATE_USE_FSDP"] = "true"
    # ranks other than 0 train in step with rank 0 but print nothing
    console = Console(stderr=True) if dist.is_main else Console(file=open(os.devnull, "w"))
    grids: list = []
    if spec is not None:
        from opgrpo_bench.specs import load_spec

        flags = [name for name, given in (
            ("--task", task), ("--algorithm", algorithm), ("--seed", seed), ("--steps", steps is not None),
            ("--out", out is not None), ("--set", set_), ("-j/--jobs", jobs is not None), ("--quick", quick),
            ("--suite", suite is not None), ("--fresh", fresh), ("--leaderboard-out", leaderboard_out is not None),
            *_launch_flags(launcher, partition, account, gpus_per_run, cpus_per_run, time_limit, no_wait,
                           slurm_cluster, ray_address))
            if given]
        if flags:
            raise UserError(f"a spec file cannot be combined with {', '.join(flags)}; put them in {spec}")
        loaded = load_spec(spec)
        task, algorithm, seed = loaded.tasks or None, loaded.algorithms or None, loaded.seeds or None
        steps, out, set_, jobs = loaded.steps, loaded.out, loaded.sets or None, loaded.jobs
        suite, fresh, leaderboard_out, grids = loaded.suite, loaded.fresh, loaded.leaderboard_out, loaded.grids
        launch = _launch_options(loaded.launcher, **loaded.launch, max_parallel=jobs)
    else:
        launch = _launch_options(launcher, partition=partition, account=account, gpus_per_run=gpus_per_run,
                                 cpus_per_run=cpus_per_run, time_limit=time_limit, wait=not no_wait,
                                 slurm_cluster=slurm_cluster, ray_address=ray_address, max_parallel=jobs)
    out = out if out is not None else Path("runs")
    jobs = jobs if jobs is not None else 2
    leaderboard_out = leaderboard_out if leaderboard_out is not None else Path(LEADERBOARD_OUT)
    check_positive("-j/--jobs", jobs)
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be positive, got {steps}")
    if num_processes > 1 and launch.launcher != "local":
        raise UserError(f"--num-processes trains on this machine; on {launch.launcher} ask for --gpus-per-run N")
    if dist.active or num_processes > 1:
        jobs = 1  # the processes of one run are the parallelism; runs follow one another
    if num_processes > 1 and not dist.active:
        _check_runs_then_launch(spec, task, algorithm, seed, steps, set_, out, num_processes, fsdp, fresh)
        return
    if grids:  # a suite file: its own grids, with its budget and settings
        check_output_dir(out, "--out")
        check_output_dir(leaderboard_out, "--leaderboard-out")
        custom = Suite(suite or spec.stem, tuple(grids), steps=steps, sets=tuple(set_ or []))
        _run_named_suite(custom, out, leaderboard_out, jobs, fresh, console, launch)
        return
    grid_options = [name for name, given in (("--task", task), ("--algorithm", algorithm), ("--seed", seed),
                                             ("--steps", steps is not None), ("--set", set_)) if given]
    if suite is not None and quick and suite != "quick":
        raise UserError(f"--quick is the suite 'quick'; it cannot be combined with --suite {suite}")
    if (suite is not None or quick) and grid_options:
        raise UserError(f"{'--suite' if suite is not None else '--quick'} runs a fixed grid; it cannot be combined "
                        f"with {', '.join(grid_options)}")
    if suite is not None or not grid_options:
        name = suite or ("quick" if quick else "default")
        if name not in SUITES:
            import difflib

            from opgrpo_bench.registry import UnknownNameError

            raise UnknownNameError("suite", name, difflib.get_close_matches(name, list(SUITES), n=2), list(SUITES))
        check_output_dir(out, "--out")
        check_output_dir(leaderboard_out, "--leaderboard-out")
        _run_named_suite(SUITES[name], out, leaderboard_out, jobs, fresh, console, launch)
        return
    from opgrpo_bench.tasks.digits import DIGITS_V1

    # canonical names, each once (an alias and its name, or a repeated option, are one run)
    tasks = list(dict.fromkeys(TASKS.entry(t).name for t in task or [DIGITS_V1.id]))
    algorithms = list(dict.fromkeys(ALGORITHMS.entry(a).name for a in algorithm or ["flow-grpo"]))
    seeds = list(dict.fromkeys(seed or [0]))
    check_output_dir(out, "--out")
    combos = [(t, a, s) for t in tasks for a in algorithms for s in seeds]
    if log:
        from opgrpo_bench.mirrors import check_mirrors

        log = check_mirrors(log)
    ends = run_grid(combos, out, steps, list(set_ or []), jobs=min(jobs, len(combos)), resume=not fresh,
                    console=console, log=log, **_launch_kwarg(launch))
    if not dist.is_main:
        return
    for (t, a, s), end in zip(combos, ends):
        reached = f"step {end['steps_to_target']}" if not end["censored"] else "not reached (censored)"
        typer.echo(f"{t} {a} seed {s}: target {reached}; best {_score(end.get('best_score'))}, "
                   f"final {_score(end.get('final_score'))}, {end['wall_s']:.1f} s")


def _check_runs_then_launch(spec, task, algorithm, seed, steps, sets, out, num_processes: int,
                            fsdp: bool = False, fresh: bool = False) -> None:
    """Validate the runs here (one line and exit 2 for a mistake, before any process starts), then run this
    same command in ``num_processes`` processes and exit with their status.

    On GPUs the processes are started by ``accelerate launch --multi_gpu`` (NCCL); on a CPU by
    ``torch.distributed.run`` (the launcher accelerate uses for several GPUs; accelerate's own CPU launcher
    needs MPI), with gloo. Either way each process joins the group through accelerate's ``PartialState``.
    ``fsdp`` sets ``ACCELERATE_USE_FSDP``, the variable accelerate's own FSDP configuration sets, which
    :meth:`opgrpo_bench.distributed.Distributed.from_environment` reads.
    """
    import subprocess

    from opgrpo_bench.devices import has_gpu
    from opgrpo_bench.runner import resolve
    from opgrpo_bench.validation import check_output_dir

    if not (task or algorithm or seed):
        from opgrpo_bench.errors import UserError

        raise UserError("--num-processes trains given runs (--task/--algorithm/--seed or a run file), not a suite")
    # every run is checked here, from the flags or the run file, so that a mistake is one line, not one per rank
    from opgrpo_bench.results import RunLock
    from opgrpo_bench.runner import plan_run

    check_output_dir(out, "--out")
    for t in task or ["digits-v1"]:
        for a in algorithm or ["flow-grpo"]:
            for s_ in seed or [0]:
                resolved = resolve(t, a, s_, steps, list(sets or []))
                run_dir = Path(out) / resolved.run_id
                plan_run(resolved, run_dir, resume=not fresh)  # a refusal (budget, configuration) is one line
                if run_dir.is_dir():
                    with RunLock(run_dir):  # held by another process: one line naming it
                        pass
    argv = [a for a in sys.argv[1:]]
    i = next(k for k, a in enumerate(argv) if a == "--num-processes" or a.startswith("--num-processes="))
    del argv[i: i + (1 if "=" in argv[i] else 2)]
    if has_gpu():
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "-m", "opgrpo_bench.cli", *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(num_processes), "-m", "opgrpo_bench.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if fsdp:
        env["ACCELERATE_USE_FSDP"] = "true"
    code = _call_ranks(cmd, env)
    if code:
        raise SystemExit(code)


def _call_ranks(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher; pass on the ranks' one-line messages (``error: ...``, ``interrupted ...``) once each and
    drop the launcher's own report of a failed rank (a traceback of its own, dozens of lines), saying
    instead in one line which rank stopped and how to resume. Standard output (progress) is untouched."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    said: list[str] = []
    stopped: list[str] = []  # a surviving rank's "interrupted/terminated ..." line: said only if nothing better
    failed_rank = exit_code = None
    assert proc.stderr is not None
    for line in proc.stderr:
        text = line.rstrip("\n")
        if text.startswith("error: "):
            if text not in said:
                said.append(text)
                sys.stderr.write(text + "\n")
        elif text.startswith(("interrupted", "terminated")):
            if text not in stopped:
                stopped.append(text)
        elif "Root Cause" in text:  # torchrun's report: the first failure comes after this heading
            failed_rank = exit_code = None
        elif text.strip().startswith("rank") and failed_rank is None and ":" in text:
            failed_rank = text.split(":", 1)[1].split("(")[0].strip()
        elif text.strip().startswith("exitcode") and exit_code is None and ":" in text:
            exit_code = text.split(":", 1)[1].split("(")[0].strip()
    code = proc.wait()
    if code and not said:
        own_stop = exit_code in (None, "130", "143")  # the ranks stopped on a signal to the whole run
        if stopped and own_stop:
            sys.stderr.write(stopped[0] + "\n")
        else:  # a rank died (killed, crashed): name it, not the survivors' reaction
            how = f"exit code {exit_code or code}"
            if exit_code and exit_code.lstrip("-").isdigit() and int(exit_code) < 0:
                how = f"signal {signal.Signals(-int(exit_code)).name}"
            sys.stderr.write(f"error: training process {failed_rank or '?'} stopped ({how}); run the same "
                             "command again to resume from the last checkpoint\n")
    return 2 if code and any(s.startswith("error: ") for s in said) else code


def _run_named_suite(s, out: Path, leaderboard_out: Path, jobs: int, fresh: bool, console, launch=None) -> None:
    """Run a :class:`opgrpo_bench.suite.Suite`, then print where the report went and the verdict table."""
    from opgrpo_bench.suite import run_suite

    where = f"{jobs} jobs" if launch is None or launch.launcher == "local" else f"on {launch.launcher}"
    console.print(f"suite '{s.name}': {len(s.combos())} runs ({s.describe()}; {s.steps or 'task budget'} steps "
                  f"each), {where} -> {out}")
    result = run_suite(s, out, leaderboard_out, jobs=jobs, console=console, resume=not fresh,
                       **_launch_kwarg(launch))
    console.print(f"suite '{s.name}' finished in {result['wall_s']:.0f} s; report in {leaderboard_out}/")
    _print_verdict(result.get("leaderboard"))


def _launch_flags(launcher, partition, account, gpus_per_run, cpus_per_run, time_limit, no_wait, slurm_cluster,
                  ray_address) -> list[tuple[str, bool]]:
    """The launcher flags, each with whether it was given (a spec file holds them in its own keys)."""
    return [("--launcher", launcher is not None), ("--partition", partition is not None),
            ("--account", account is not None), ("--gpus-per-run", gpus_per_run is not None),
            ("--cpus-per-run", cpus_per_run is not None), ("--time-limit", time_limit is not None),
            ("--no-wait", no_wait), ("--slurm-cluster", slurm_cluster is not None),
            ("--ray-address", ray_address is not None)]


def _launch_options(launcher: str | None, **given):
    """:class:`opgrpo_bench.launchers.LaunchOptions` from flags or a file's keys (None: the default), checked
    before anything runs: an unknown launcher or a missing extra is one line."""
    from opgrpo_bench.launchers import LaunchOptions

    options = LaunchOptions(launcher=launcher or "local", **{k: v for k, v in given.items() if v is not None})
    options.check()
    return options


def _launch_kwarg(launch) -> dict:
    """``launch=`` for the grid functions when a cluster launcher is asked for (the local path: unchanged)."""
    return {} if launch is None or launch.launcher == "local" else {"launch": launch}


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_verdict(doc: dict | None) -> None:
    """The verdict table on stdout (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    from opgrpo_bench.leaderboard.verdict import verdict_rows

    rows = verdict_rows(doc or {})
    if not rows:
        return

    def ci(pair: tuple) -> str:
        return "—" if None in pair else f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    table = Table(title="verdict against flow-grpo (steps to target)", title_justify="left")
    for col in ("task", "algorithm", "seeds", "steps ratio", "95% CI", "P(faster)", "95% CI ", "verdict"):
        table.add_column(col)
    for r in rows:
        p = "—" if r["p_improvement"] is None else f"{r['p_improvement']:.2f}"
        table.add_row(r["task"], r["algorithm"], str(r["seeds"]), f"{r['ratio']:.2f}x", ci(r["ci"]), p, ci(r["p_ci"]),
                      r["verdict"])
    Console(width=140).print(table)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a finished run's directory (it holds lora/ and lora_ema/)")],
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="evaluate on this task's eval prompts "
                                                "(default: the run's own task)")] = None,
    adapter: Annotated[str, typer.Option("--adapter", help="ema (what the run's evaluations used) or final")] = "ema",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON object")] = False,
    save_images: Annotated[Optional[Path], typer.Option("--save-images", help="write a PNG grid of the first "
                                                        "evaluation samples to this file")] = None,
) -> None:
    """Re-evaluate a run's saved LoRA adapter on a task's held-out prompts and print the score."""
    import json

    from opgrpo_bench.evaluation import evaluate_saved_run

    if save_images is not None and save_images.suffix.lower() != ".png":
        from opgrpo_bench.errors import UserError

        raise UserError(f"--save-images writes a PNG file; '{save_images}' does not end in .png")
    record = evaluate_saved_run(run_dir, task, adapter, save_images)
    if as_json:
        print(json.dumps(record, sort_keys=True))
        return
    print(f"{record['task']}: score {record['score']:.4f}"
          + (f", gold {record['gold']:.4f}" if "gold" in record else "")
          + f" ({adapter} adapter of {run_dir}, trained on {record['run_task']})")
    for key in sorted(k for k in record if "/" in k):
        print(f"  {key} {record[key]:.4f}")


@app.command("status")
def status(
    runs_dir: Annotated[Path, typer.Argument(help="a results directory (--out of opgrpo-bench run)")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per run")] = False,
) -> None:
    """What each run under RUNS_DIR is doing: finished, running, queued, failed (and why), interrupted or
    stopped; read from the run directories, whichever launcher placed the runs."""
    import json

    from opgrpo_bench.errors import UserError
    from opgrpo_bench.status import grid_status, report_lines

    if not runs_dir.is_dir():
        raise UserError(f"'{runs_dir}' is not a directory")
    statuses = grid_status(runs_dir)
    if as_json:
        for s in statuses:
            print(json.dumps(s.as_dict(), sort_keys=True))
        return
    for line in report_lines(statuses):
        print(line)


@app.command("pack")
def pack(
    runs_dir: Annotated[Path, typer.Argument(help="directory searched recursively for finished runs")],
) -> None:
    """Compress each finished run's metrics.jsonl to metrics.jsonl.gz (the same records, about a sixth of the
    size; every reader accepts both). Unfinished runs, and runs another process is writing, stay as they are."""
    from opgrpo_bench.errors import UserError
    from opgrpo_bench.results import pack_tree

    if not runs_dir.is_dir():
        raise UserError(f"'{runs_dir}' is not a directory")
    packed, left = pack_tree(runs_dir)
    size = sum(p.stat().st_size for p in packed)
    print(f"packed {len(packed)} finished run(s) under {runs_dir} ({size / 1e6:.2f} MB now)"
          + (f"; {len(left)} unfinished or busy run(s) left unpacked" if left else ""))


@app.command("list")
def list_(
    kind: Annotated[Optional[str], typer.Argument(help="algorithms | rewards | tasks | backbones")] = None,
) -> None:
    """List registered algorithms, rewards, tasks and backbones."""
    from rich.console import Console
    from rich.table import Table

    from opgrpo_bench.registry import REGISTRIES, UnknownNameError

    kinds = [kind] if kind else list(REGISTRIES)
    console = Console()
    for k in kinds:
        if k not in REGISTRIES:
            import difflib

            close = difflib.get_close_matches(k, list(REGISTRIES), n=1)
            raise UnknownNameError("list kind", k, close, list(REGISTRIES))
        table = Table(title=k, title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("aliases")
        table.add_column("description")
        table.add_column("needs")
        for entry in REGISTRIES[k].entries():
            table.add_row(entry.name, ", ".join(entry.aliases), entry.description, str(entry.meta.get("needs", "")))
        console.print(table)


INTERRUPTED = "interrupted; finished runs are kept and unfinished ones resume from their last checkpoint"

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
"""Exit codes after Ctrl-C (128 + SIGINT) and after SIGTERM (128 + SIGTERM: Slurm preemption, ``docker stop``,
Kubernetes), the shells' convention."""


class _Termination:
    """SIGTERM handled like Ctrl-C: the run stops at the next Python instruction with its last good
    checkpoint kept (checkpoints and records are written atomically), prints the resume line and exits
    143. A second SIGTERM while stopping is ignored, so the clean-up is not cut short."""

    received = False

    @classmethod
    def install(cls) -> Any:
        """Handle SIGTERM (main thread only); returns the previous handler, for :meth:`restore`."""
        import signal
        import threading

        cls.received = False
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, cls._handle)

    @staticmethod
    def restore(previous: Any) -> None:
        import signal

        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    @classmethod
    def _handle(cls, signum: int, frame: object) -> None:
        import signal

        cls.received = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt


def _interrupted(message: str) -> None:
    """Print ``message`` (terminated or interrupted) and exit with the matching code."""
    if _Termination.received:
        typer.echo(message.replace("interrupted", "terminated (SIGTERM)", 1), err=True)
        sys.exit(EXIT_TERMINATED)
    typer.echo(message, err=True)
    sys.exit(EXIT_INTERRUPTED)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _click_kind(err: BaseException) -> str | None:
    """Which of click's user-facing exceptions ``err`` is (by class name: Typer may vendor its own click)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    for kind in ("NoArgsIsHelpError", "UsageError", "ClickException", "Abort"):
        if kind in names:
            return kind
    return None


def main() -> None:
    """Console-script entry point: runs the app; a user error is one ``error: ...`` line and exit code 2
    (click's usage errors too), Ctrl-C one line and exit code 130, SIGTERM one line and exit code 143."""
    previous = _Termination.install()
    try:
        _run_app()
    finally:
        _Termination.restore(previous)


def _run_app() -> None:
    """:func:`main` without the SIGTERM handler's installation."""
    from opgrpo_bench.errors import RunInterrupted, UserError
    from opgrpo_bench.launchers.grid import GridSubmitted
    from opgrpo_bench.registry import UnknownNameError

    try:
        code = app(standalone_mode=False)
    except GridSubmitted as note:  # --no-wait: submitted, not an error
        typer.echo(str(note))
        sys.exit(0)
    except (UserError, UnknownNameError) as err:
        typer.echo(f"error: {_one_line(str(err))}", err=True)
        sys.exit(2)
    except RunInterrupted as err:  # also GridInterrupted (several runs)
        _interrupted(str(err))
    except KeyboardInterrupt:
        _interrupted(INTERRUPTED)
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # results and checkpoints are written atomically: the last good ones are intact
        typer.echo(f"error: no space left on the device ({err.filename or 'writing results'}); the last "
                   "checkpoint and metrics are intact: free some space and run the same command again", err=True)
        sys.exit(2)
    except Exception as err:
        kind = _click_kind(err)
        if kind is None:
            raise
        if kind == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(getattr(err, "exit_code", 2))
        if kind == "Abort":
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        message = _one_line(err.format_message())  # type: ignore[attr-defined]
        ctx = getattr(err, "ctx", None)
        if kind == "UsageError" and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        typer.echo(f"error: {message}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    if code == EXIT_INTERRUPTED:  # typer turns a KeyboardInterrupt into exit code 130
        _interrupted(INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
