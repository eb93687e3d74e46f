"""Figures of the HTML report, rendered with matplotlib to PNG bytes.

Uses :class:`matplotlib.figure.Figure` with the Agg canvas directly rather than ``pyplot``: no global
figure state and no backend switch that could disturb other code in the same process. PNGs are written
without the ``Software`` metadata entry so the bytes depend only on the data and matplotlib's rendering,
which keeps the report byte-for-byte reproducible for the same input.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

# A fixed style, independent of any user matplotlibrc, so output does not depend on the machine.
_STYLE = {
    # names come from results files: "$...$" in one is text, never matplotlib's math (which can fail to parse)
    "text.parse_math": False,
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")
_SIZE = (8.6, 3.7)


@dataclass(frozen=True)
class Plot:
    """One rendered figure: an id usable as an HTML anchor, title, caption and PNG bytes."""

    id: str
    kind: str  # regime | curve | efficiency | profile | logratio | clipfrac | logw
    task: str
    title: str
    caption: str
    png: bytes


def slug(text: str) -> str:
    """A stable, HTML-id-safe form of a task label."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "task"


def colors_for(algorithms: list[str]) -> dict[str, str]:
    """One colour per algorithm, fixed by the algorithm's position in the report's row order."""
    return {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(algorithms)}


def _render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _legend(ax: Any) -> None:
    # outside the axes: with several algorithms an inside legend hides the curves
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _marker(n_points: int) -> str:
    return "o" if n_points <= 30 else ""  # markers on dense curves only blur them


def _new_figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def curve_plot(label: str, task: dict[str, Any], colors: dict[str, str]) -> Plot:
    """Eval score against optimizer step: mean over seeds, band = range over seeds, target line; the
    held-out gold score (mean over seeds) dotted in the algorithm's colour where the runs record one."""
    gold = task.get("gold") or {}
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure(f"{label}: eval score", "optimizer step", "eval score")
        # fainter bands when many algorithms overlap
        alpha = 0.18 if len(task["algorithms"]) <= 3 else 0.07
        for algorithm, series in task["algorithms"].items():
            color = colors.get(algorithm, "#333333")
            seeds = max(series["n"], default=0)
            ax.plot(series["step"], series["mean"], color=color, lw=1.6, marker=_marker(len(series["step"])),
                    ms=2.5, label=f"{algorithm} ({seeds} seed{'s' if seeds != 1 else ''})")
            ax.fill_between(series["step"], series["min"], series["max"], color=color, alpha=alpha, lw=0)
            if algorithm in gold:  # no band: two overlapping bands per algorithm would hide each other
                ax.plot(gold[algorithm]["step"], gold[algorithm]["mean"], color=color, lw=1.4, ls=":",
                        label=f"{algorithm} gold")
        ax.axhline(task["target"], color="black", ls="--", lw=1, label=f"target {task['target']:g}")
        _legend(ax)
        png = _render(fig)
    direction = "higher" if task["higher_is_better"] else "lower"
    gold_text = (" Dotted: the held-out gold score of the same eval images (a reader training never sees), "
                 "mean over seeds; a gap to the score that grows during training is reward hacking."
                 if gold else "")
    return Plot(f"curve-{slug(label)}", "curve", label, f"{label}: eval score against optimizer step",
                f"Mean over seeds (line) and range over seeds (band); dashed line: the target "
                f"({direction} is better).{gold_text}", png)


def efficiency_plot(label: str, task: dict[str, Any], colors: dict[str, str]) -> Plot | None:
    """Sample-efficiency curve: IQM over seeds of the normalised eval score against optimizer step, with
    its 95% bootstrap interval as a band (rliable's sample-efficiency curves)."""
    if not task["algorithms"]:
        return None
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure(f"{label}: sample efficiency (IQM of normalised score)", "optimizer step",
                              "normalised score (0 = base, 1 = target)")
        alpha = 0.18 if len(task["algorithms"]) <= 3 else 0.07
        for algorithm, series in task["algorithms"].items():
            color = colors.get(algorithm, "#333333")
            seeds = max(series["n"], default=0)
            ax.plot(series["step"], series["iqm"], color=color, lw=1.6, marker=_marker(len(series["step"])),
                    ms=2.5, label=f"{algorithm} ({seeds} seed{'s' if seeds != 1 else ''})")
            ax.fill_between(series["step"], series["ci_low"], series["ci_high"], color=color, alpha=alpha, lw=0)
        ax.axhline(1.0, color="black", ls="--", lw=1, label="target")
        ax.set_ylim(-0.03, 1.05)
        _legend(ax)
        png = _render(fig)
    return Plot(f"efficiency-{slug(label)}", "efficiency", label,
                f"{label}: sample efficiency, IQM over seeds of the normalised eval score",
                "Each eval score normalised to 0 at the run's base score (its step-0 eval) and 1 at the "
                "target, clipped to [0, 1]; line: interquartile mean over seeds; band: 95% percentile-"
                "bootstrap interval over seeds; dashed line: the target.", png)


def profile_fractions(values: list[float], taus: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` strictly greater than each tau (a performance profile, as rliable's)."""
    arr = np.asarray(values, dtype=float)
    return (arr[None, :] > taus[:, None]).mean(axis=1)


def profile_plot(label: str, task: dict[str, dict[str, list[float | None]]],
                 colors: dict[str, str]) -> Plot | None:
    """Performance profiles: fraction of runs whose normalised final (left) and best (right) eval score
    exceeds tau, against tau, per algorithm."""
    data = {a: {k: [v for v in d[k] if v is not None] for k in ("final", "best")} for a, d in task.items()}
    data = {a: d for a, d in data.items() if d["final"]}
    if not data:
        return None
    every = [v for d in data.values() for k in ("final", "best") for v in d[k]]
    taus = np.linspace(min(0.0, min(every)), max(1.0, max(every)) + 0.02, 501)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=_SIZE, layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, key, name in ((axes[0], "final", "final"), (axes[1], "best", "best")):
            ax.set_title(f"{label}: {name} normalised score")
            ax.set_xlabel("tau (normalised score; 1 = target)")
            for algorithm, d in data.items():
                n = len(d[key])
                ax.plot(taus, profile_fractions(d[key], taus), color=colors.get(algorithm, "#333333"), lw=1.5,
                        label=f"{algorithm} ({n} run{'s' if n != 1 else ''})")
            ax.axvline(1.0, color="black", ls="--", lw=1)
            ax.set_ylim(-0.03, 1.03)
        axes[0].set_ylabel("fraction of runs with score > tau")
        _legend(axes[1])
        png = _render(fig)
    return Plot(f"profile-{slug(label)}", "profile", label, f"{label}: performance profiles",
                "Fraction of runs whose normalised eval score (0 = base score at step 0, 1 = target, not "
                "clipped) at the end of the run (left) or at its best eval (right) is greater than tau; "
                "dashed line: the target.", png)


def logratio_plot(label: str, diag: dict[str, Any], colors: dict[str, str]) -> Plot | None:
    """Mean log-ratio log p_old - log p_off per denoising step (the paper's Fig. 2 'cliff')."""
    have = {a: d["logratio_by_step"] for a, d in diag.items() if d["logratio_by_step"] is not None}
    if not have:
        return None
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure(f"{label}: off-policy log-ratio per denoising step", "denoising step k",
                              "mean log p_old - log p_off")
        for algorithm, profile in have.items():
            xs = [k for k, v in enumerate(profile) if v is not None]
            ys = [v for v in profile if v is not None]
            ax.plot(xs, ys, color=colors.get(algorithm, "#333333"), marker=_marker(len(xs)), ms=3,
                    label=algorithm)
        ax.axhline(0.0, color="#888888", lw=0.8, zorder=0)
        _legend(ax)
        png = _render(fig)
    return Plot(f"logratio-{slug(label)}", "logratio", label,
                f"{label}: per-step log-ratio of replayed samples (the paper's Fig. 2)",
                "Mean over step records and seeds of op/logratio_by_step (per iteration, the mean over "
                "replayed samples of log p_old − log p_behaviour at each denoising step of the stored "
                "prefix, signed), by denoising step; the values are in leaderboard.json under "
                "logratio_profiles.", png)


def clipfrac_plot(label: str, diag: dict[str, Any], colors: dict[str, str]) -> Plot | None:
    """Clip fractions of fresh (solid) and replayed (dashed) samples against optimizer step."""
    if not any(d["clipfrac_on_policy"] or d["clipfrac_off_policy"] for d in diag.values()):
        return None
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure(f"{label}: clip fractions", "optimizer step", "fraction clipped")
        for algorithm, d in diag.items():
            color = colors.get(algorithm, "#333333")
            if d["clipfrac_on_policy"]:
                s = d["clipfrac_on_policy"]
                ax.plot(s["step"], s["mean"], color=color, lw=1.4, label=f"{algorithm} on-policy")
            if d["clipfrac_off_policy"]:
                s = d["clipfrac_off_policy"]
                ax.plot(s["step"], s["mean"], color=color, lw=1.4, ls="--", label=f"{algorithm} off-policy")
        _legend(ax)
        png = _render(fig)
    return Plot(f"clipfrac-{slug(label)}", "clipfrac", label, f"{label}: clip fractions on- and off-policy",
                "clipfrac/on_policy (solid) and clipfrac/off_policy (dashed), mean over seeds.", png)


def logw_plot(label: str, diag: dict[str, Any], colors: dict[str, str]) -> Plot | None:
    """Spread of the sequence-level log importance weights: median line, min-max band."""
    have = {a: d["logw"] for a, d in diag.items() if any(v is not None for v in d["logw"].values())}
    if not have:
        return None
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new_figure(f"{label}: importance-weight spread", "optimizer step", "log w")
        alpha = 0.18 if len(have) <= 3 else 0.07
        for algorithm, logw in have.items():
            color = colors.get(algorithm, "#333333")
            if logw.get("median"):
                ax.plot(logw["median"]["step"], logw["median"]["mean"], color=color, lw=1.4,
                        label=f"{algorithm} median")
            lo, hi = logw.get("min"), logw.get("max")
            if lo and hi and lo["step"] == hi["step"]:
                ax.fill_between(lo["step"], lo["mean"], hi["mean"], color=color, alpha=alpha, lw=0,
                                label=f"{algorithm} min-max")
        ax.axhline(0.0, color="#888888", lw=0.8, zorder=0)
        _legend(ax)
        png = _render(fig)
    return Plot(f"logw-{slug(label)}", "logw", label, f"{label}: importance-weight spread",
                "op/logw_median (line) between op/logw_min and op/logw_max (band), means over seeds.", png)


def _log_pool_axis(ax: Any, sizes: list[int]) -> None:
    """A log x axis labelled at the pool sizes themselves (minor ticks would label arbitrary values)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sizes, labels=[str(s) for s in sizes])
    ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)


def regime_plot(family: dict[str, Any], color: str) -> Plot | None:
    """The regime map of one task family: the op-grpo/flow-grpo steps ratio with its 95% interval (left),
    the median replay age (middle) and the log-weight spread (right), against training-pool size on a log
    axis. Members of unknown pool size are left out; None when no member has a known size."""
    pools = [p for p in family["pools"] if p["pool_size"] is not None]
    if not pools:
        return None
    sizes = sorted({p["pool_size"] for p in pools})
    label = family["label"]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(_SIZE[0], 3.2), layout="constrained")
        axes = fig.subplots(1, 3)
        ax = axes[0]
        for p in pools:
            if p["speedup_vs_flow_grpo"] is None:
                continue
            r, lo, hi = p["speedup_vs_flow_grpo"], p["speedup_ci_low"], p["speedup_ci_high"]
            yerr = None if lo is None or hi is None else [[r - lo], [hi - r]]
            # hollow marker: censored runs enter the ratio, which is then only a bound
            ax.errorbar([p["pool_size"]], [r], yerr=yerr, fmt="o", color=color, capsize=4, ms=6,
                        mfc="white" if p["speedup_censored"] else color)
        ax.axhline(1.0, color="black", ls="--", lw=1)
        ax.set_title("steps to target vs flow-grpo")
        ax.set_ylabel("ratio (lower = replay pays off)")
        for ax, key, title, ylabel in ((axes[1], "replay_age_median", "replay age", "median age (iterations)"),
                                       (axes[2], "logw_spread_median", "importance-weight spread",
                                        "median log w max − min")):
            have = [p for p in pools if p[key] is not None]
            ax.plot([p["pool_size"] for p in have], [p[key] for p in have], color=color, marker="o", ms=5,
                    label="whole run")
            if key == "replay_age_median":
                late = [p for p in pools if p.get("replay_age_late_median") is not None]
                ax.plot([p["pool_size"] for p in late], [p["replay_age_late_median"] for p in late],
                        color=color, marker="s", ms=5, ls="--", label="second half")
                ax.legend(frameon=False, fontsize="small")
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
        for ax in axes:
            _log_pool_axis(ax, sizes)
            ax.set_xlabel("training prompts (log scale)")
        fig.suptitle(f"{label}: {family['algorithm']} by training-pool size")
        png = _render(fig)
    return Plot(f"regime-{slug(label)}", "regime", label, f"{label}: regime map",
                f"Left: {family['algorithm']}'s steps to target divided by {family['reference_algorithm']}'s "
                "(median of per-seed ratios, bars: 95% paired-bootstrap interval; hollow: censored runs "
                "enter the ratio; dashed: no difference). Middle: median over runs of each run's median "
                "op/replay_age_mean, over the whole run and over its second half (dashed). Right: median over step records of op/logw_max − op/logw_min. "
                "Pool sizes from run_start's num_train_prompts.", png)


def all_plots(labels: list[str], curves: dict[str, Any], diagnostics: dict[str, Any],
              algorithms: list[str], efficiency: dict[str, Any] | None = None,
              profiles: dict[str, Any] | None = None,
              regime: list[dict[str, Any]] | None = None) -> list[Plot]:
    """Every figure of the report, in the order the page shows them: the regime map of each task family,
    then per task (in ``labels`` order) the eval curve, the sample-efficiency curve and the performance
    profiles, then the diagnostics figures that have data."""
    colors = colors_for(algorithms)
    plots: list[Plot] = []
    for family in regime or []:
        plot = regime_plot(family, colors.get(family["algorithm"], _PALETTE[1]))
        if plot is not None:
            plots.append(plot)
    for label in labels:
        if label in curves:
            plots.append(curve_plot(label, curves[label], colors))
        for make, source in ((efficiency_plot, efficiency), (profile_plot, profiles)):
            if source and label in source:
                plot = make(label, source[label], colors)
                if plot is not None:
                    plots.append(plot)
        diag = diagnostics.get(label)
        if diag:
            for make in (logratio_plot, clipfrac_plot, logw_plot):
                plot = make(label, diag, colors)
                if plot is not None:
                    plots.append(plot)
    return plots
