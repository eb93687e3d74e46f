"""The power analysis of each task version: the spread of the per-seed log steps ratios against the
reference, and the seeds a paired test needs. Definition: docs/STATISTICS.md ("Power analysis")."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import Comparison, Outcome, per_seed, resolve, task_label, usable_groups
from opgrpo_bench.leaderboard.outcomes import version_sort_key
from opgrpo_bench.leaderboard.robust import POWER_ALPHA, POWER_RATIOS, POWER_TARGET, pooled_sd, seeds_needed


def log_ratios(outs: list[Outcome], ref: list[Outcome]) -> list[float]:
    """Per-seed log steps ratios ``log(steps(X, s) / steps(reference, s))`` over the shared seeds
    (censored runs at their budget; pairs with a zero on either side left out)."""
    x, r = per_seed(outs, "steps"), per_seed(ref, "steps")
    return [math.log(x[s][0] / r[s][0]) for s in sorted(set(x) & set(r))
            if x[s][0] is not None and r[s][0] is not None and x[s][0] > 0 and r[s][0] > 0]


def power_fields(groups: dict[str, list[Outcome]], cmp: Comparison | None = None) -> dict[str, Any]:
    """The power analysis of one task version from its rows' outcomes (``{algorithm: outcomes}``).

    ``sd_log_ratio`` is the pooled within-algorithm standard deviation of the per-seed log steps ratios
    against the reference over every other algorithm with at least two shared seeds (robust.pooled_sd);
    ``seeds_for_ratio_R`` the seeds per algorithm a two-sided paired t-test at alpha 0.05 needs to detect
    a true ratio R with 80% power (robust.seeds_needed, exact by the noncentral t distribution).

    An algorithm whose every per-seed ratio is exactly 1 (``op-grpo-no-replay``, which reproduces
    ``flow-grpo`` bit for bit) is left out: its zero spread is a property of the code, not of the seeds,
    and pooling it would shrink the sd and the seeds it asks for. ``identical`` names those left out.
    """
    cmp = resolve(cmp)
    ref = groups.get(cmp.reference, [])
    per_algorithm = {a: log_ratios(groups[a], ref) for a in sorted(groups, key=cmp.algorithm_key)
                     if a != cmp.reference and ref}
    identical = [a for a, v in per_algorithm.items() if len(v) >= 2 and all(x == 0.0 for x in v)]
    used = [a for a, v in per_algorithm.items() if len(v) >= 2 and a not in identical]
    sd, df = pooled_sd([per_algorithm[a] for a in used])
    fields: dict[str, Any] = {"sd_log_ratio": sd, "df": df, "algorithms": used, "identical": identical}
    for ratio in POWER_RATIOS:
        fields[f"seeds_for_ratio_{ratio:g}"] = seeds_needed(sd, ratio)
    fields.update({"alpha": POWER_ALPHA, "power": POWER_TARGET,
                   "test": "two-sided paired t-test (exact power, noncentral t)"})
    if sd is None:
        fields["note"] = (f"no algorithm shares two or more seeds with {cmp.reference} on this task "
                          "version: the sd is unknown")
    return fields


def compute_tasks(runs: list[Run], cmp: Comparison | None = None) -> list[dict[str, Any]]:
    """One entry per task version with usable runs, in row order: its label and its power analysis."""
    cmp = resolve(cmp)
    by_task: dict[tuple[str, str], dict[str, list[Outcome]]] = defaultdict(dict)
    for (task, version, algorithm), outs in usable_groups(runs, cmp).items():
        by_task[(task, version)][algorithm] = outs
    return [{"task": task, "task_version": version, "label": task_label(task, version),
             "power": power_fields(by_task[(task, version)], cmp)}
            for task, version in sorted(by_task, key=lambda k: (k[0], version_sort_key(k[1])))]
