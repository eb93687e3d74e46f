"""The leaderboard: statistics and report computed only from results files.

- :mod:`.load`: find, read and validate ``metrics.jsonl`` files (warnings for bad lines and files).
- :mod:`.stats`: per task x algorithm statistics and speed-ups against ``flow-grpo`` (definitions in its
  docstring).
- :mod:`.robust`: rliable-style statistics (IQM, stratified bootstrap, probability of improvement,
  normalised AUC, power analysis); conventions in ``docs/STATISTICS.md``.
- :mod:`.regime`: the regime map (one task at several training-pool sizes, ``-poolN`` task families).
- :mod:`.report`: ``LEADERBOARD.md``, ``leaderboard.json`` and a self-contained ``index.html``.
- :mod:`.cli`: the ``opgrpo-bench leaderboard`` command.

Python API: ``build_leaderboard(runs_dir, out_dir) -> dict``.
"""

from opgrpo_bench.leaderboard.load import LeaderboardError, load_runs
from opgrpo_bench.leaderboard.report import build_leaderboard

__all__ = ["LeaderboardError", "build_leaderboard", "load_runs"]
