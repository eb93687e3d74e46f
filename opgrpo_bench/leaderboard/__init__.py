"""The leaderboard: statistics and report computed only from results files.

- :mod:`.load`: find, read and validate ``metrics.jsonl`` files (warnings for bad lines and files).
- :mod:`.outcomes`, :mod:`.speedup`, :mod:`.improvement`, :mod:`.normalised`, :mod:`.power`,
  :mod:`.aggregate`, :mod:`.gold`, :mod:`.diagnostics`, :mod:`.rows`: the statistics, each in the file
  named after it, against a reference algorithm (``flow-grpo`` unless ``--reference`` names another);
  definitions in ``docs/STATISTICS.md``. :mod:`.robust` holds rliable's statistics as pure functions.
- :mod:`.analyses`: the interface of the analyses that plug in, :mod:`.regime` (the regime map) and
  :mod:`.paper` (the paper protocol and the paper's reported numbers).
- :mod:`.document`, :mod:`.tables`, :mod:`.legends`, :mod:`.format`, :mod:`.markdown`, :mod:`.page`,
  :mod:`.plots`, :mod:`.report`: ``leaderboard.json``, ``LEADERBOARD.md`` and a self-contained
  ``index.html``.
- :mod:`.cli`: the ``opgrpo-bench leaderboard`` command.

Python API: ``build_leaderboard(runs_dir, out_dir, reference="flow-grpo", analyses=None) -> dict``.
"""

from typing import Any

from opgrpo_bench.leaderboard.load import LeaderboardError, load_runs


def __getattr__(name: str) -> Any:
    """``build_leaderboard``, imported on first use (the report needs scipy and matplotlib; the CLI's
    ``--help`` does not)."""
    if name == "build_leaderboard":
        from opgrpo_bench.leaderboard.report import build_leaderboard

        return build_leaderboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LeaderboardError", "build_leaderboard", "load_runs"]
