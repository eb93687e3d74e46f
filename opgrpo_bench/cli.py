"""The ``opgrpo-bench`` command line: a thin Typer layer over :mod:`opgrpo_bench.runner`,
:mod:`opgrpo_bench.suite`, the leaderboard and the rewards.

User mistakes (unknown names, bad settings, missing weights) print one line to stderr and exit with
code 2; they never show a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import time by huggingface_hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402

from opgrpo_bench.leaderboard.cli import leaderboard  # noqa: E402
from opgrpo_bench.rewards.cli import score  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark RL post-training of flow-matching models: steps to a target reward.")
app.command("leaderboard")(leaderboard)
app.command("score")(score)


@app.command("run")
def run(
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="task id (repeatable)")] = None,
    algorithm: Annotated[Optional[list[str]], typer.Option("--algorithm", "-a", help="algorithm (repeatable)")] = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", "-s", help="seed (repeatable)")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="optimizer-step budget (default: task's)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="results directory")] = Path("runs"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="setting key=value (repeatable)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="parallel worker processes")] = 2,
    quick: Annotated[bool, typer.Option("--quick", help="the ~2-minute suite (same as --suite quick)")] = False,
    suite: Annotated[Optional[str], typer.Option("--suite", help="a named suite: default, quick, reference")]
    = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="retrain runs that already exist")] = False,
    leaderboard_out: Annotated[Path, typer.Option("--leaderboard-out", help="report directory (suites)")]
    = Path("leaderboard-out"),
) -> None:
    """Train runs. With no --task/--algorithm/--seed: the default suite (or --quick), then the leaderboard."""
    from rich.console import Console

    from opgrpo_bench.suite import SUITES, run_grid, run_suite

    console = Console(stderr=True)
    if suite is not None or (not task and not algorithm and not seed and not set_ and steps is None):
        name = suite or ("quick" if quick else "default")
        if name not in SUITES:
            import difflib

            from opgrpo_bench.registry import UnknownNameError

            raise UnknownNameError("suite", name, difflib.get_close_matches(name, list(SUITES), n=2), list(SUITES))
        s = SUITES[name]
        console.print(f"suite '{name}': {len(s.combos())} runs ({s.describe()}; {s.steps or 'task budget'} steps "
                      f"each), {jobs} jobs -> {out}")
        result = run_suite(name, out, leaderboard_out, jobs=jobs, console=console, resume=not fresh)
        console.print(f"suite '{name}' finished in {result['wall_s']:.0f} s; report in {leaderboard_out}/")
        return
    from opgrpo_bench.tasks.digits import DIGITS_V1

    tasks = task or [DIGITS_V1.id]
    algorithms = algorithm or ["flow-grpo"]
    seeds = seed or [0]
    combos = [(t, a, s) for t in tasks for a in algorithms for s in seeds]
    ends = run_grid(combos, out, steps, list(set_ or []), jobs=min(jobs, len(combos)), resume=not fresh,
                    console=console)
    for (t, a, s), end in zip(combos, ends):
        reached = f"step {end['steps_to_target']}" if not end["censored"] else "not reached (censored)"
        typer.echo(f"{t} {a} seed {s}: target {reached}; best {end['best_score']:.4f}, "
                   f"final {end['final_score']:.4f}, {end['wall_s']:.1f} s")


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


def main() -> None:
    """Console-script entry point: runs the app and turns user errors into one line + exit code 2."""
    from opgrpo_bench.errors import UserError
    from opgrpo_bench.leaderboard.load import LeaderboardError
    from opgrpo_bench.registry import UnknownNameError

    try:
        app()
    except (UserError, UnknownNameError, LeaderboardError) as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished runs are kept and unfinished ones resume from their last checkpoint",
                   err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
