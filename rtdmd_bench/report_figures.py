"""The report's figures: a reward-vs-fidelity scatter with each method's Pareto front, and metric-vs-
FLOPs curves from the training curves (`curve` lines of metrics.jsonl). Plain values in, PNG bytes out.

Figures are drawn on matplotlib's Agg `Figure` (not pyplot, whose global state leaks between calls)
and saved without the "Software" PNG tag, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Axis:
    """A metric on one axis of the scatter."""

    key: str
    """The metric's key in a suite result (`kl_teacher`, `reward.digit-ink`, `fid`)."""
    title: str
    """The axis label."""
    higher_is_better: bool
    """Direction of "better", for the Pareto front."""


REWARD_AXES = (Axis("mean_reward", "mean reward", True), Axis("reward.digit-ink", "digit-ink reward", True),
               Axis("reward.shapes-partial", "exact partial credit (shapes)", True),
               Axis("hpsv3", "HPSv3", True), Axis("hpsv2", "HPSv2", True), Axis("hps", "HPS", True),
               Axis("imagereward", "ImageReward", True), Axis("pickscore", "PickScore", True))
"""Reward candidates in order of preference (the first the table has is plotted). On digits the
ink reward is the one that pulls against fidelity (rtdmd_bench/recipes/digits.yaml): reward hacking
shows as more ink at a worse FID. On shapes the exact partial credit (not the learned proxy, which
the methods can game) is the reward."""
FIDELITY_AXES = (Axis("kl_teacher", "KL to teacher", False), Axis("fid", "FID (real)", False),
                 Axis("fid_t", "FID-T (teacher)", False), Axis("fid_sd", "FID-SD", False))
"""Fidelity candidates (all distances: lower is better), in order of preference."""


@dataclass
class Point:
    """One row of a table in the scatter: its mean, CI half-widths and per-seed points."""

    label: str
    """The table row."""
    method: str
    """The method the row belongs to (its Pareto front groups the method's points)."""
    x: float
    """Fidelity (mean over seeds)."""
    y: float
    """Reward (mean over seeds)."""
    x_ci: float = 0.0
    """95% CI half-width of x (0: one seed or unknown)."""
    y_ci: float = 0.0
    """95% CI half-width of y."""
    seeds: list[tuple[float, float]] = field(default_factory=list)
    """(x, y) of each seed, where the per-seed values are known (run folders; not a table.csv)."""


def pareto_front(points: Sequence[tuple[float, float]], x_higher: bool, y_higher: bool) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both axes and better on
    one), sorted by x; duplicates of a front point are all kept. (N, 2) values -> indices."""
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    scored = [(sx * x, sy * y) for x, y in points]  # larger is better on both
    front = [i for i, (a, b) in enumerate(scored)
             if not any(c >= a and d >= b and (c > a or d > b) for c, d in scored)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def scatter_png(points: Sequence[Point], x: Axis, y: Axis, title: str, methods: Sequence[str] = ()) -> bytes:
    """Reward (y) against fidelity (x): a marker per row with its CI bars, small dots per seed, a
    solid line through each method's Pareto front (over its rows' seeds, or its rows' means when the
    seeds are unknown) and a dashed grey line through the front of all rows' means. Colour i is the
    i-th of `methods` (the page's, so the curves use the same colours), then of the points' own."""
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys([*methods, *(p.method for p in points)]))
    nth: dict[str, int] = {}
    for p in points:  # a colour per method, a marker per row of the method
        colour = f"C{methods.index(p.method) % 10}"
        nth[p.method] = nth.get(p.method, -1) + 1
        ax.errorbar([p.x], [p.y], xerr=[p.x_ci], yerr=[p.y_ci], fmt="osD^v<>"[nth[p.method] % 7], ms=6, color=colour,
                    capsize=2, label=_short(p.label))
        if p.seeds:
            ax.scatter([s[0] for s in p.seeds], [s[1] for s in p.seeds], s=10, color=colour, alpha=0.5, linewidths=0)
    for i, method in enumerate(methods):
        mine = [p for p in points if p.method == method]
        if not mine:
            continue
        pts = [s for p in mine for s in p.seeds] if all(p.seeds for p in mine) else [(p.x, p.y) for p in mine]
        front = [pts[j] for j in pareto_front(pts, x.higher_is_better, y.higher_is_better)]
        if len(front) > 1:
            ax.plot([f[0] for f in front], [f[1] for f in front], "-", color=f"C{i % 10}", lw=1.2, alpha=0.8)
    means = [(p.x, p.y) for p in points]
    overall = [means[j] for j in pareto_front(means, x.higher_is_better, y.higher_is_better)]
    ax.plot([f[0] for f in overall], [f[1] for f in overall], "--", color="0.5", lw=1, label="front of all rows")
    ax.set_xlabel(f"{x.title} ({'higher' if x.higher_is_better else 'lower'} is better)")
    ax.set_ylabel(f"{y.title} ({'higher' if y.higher_is_better else 'lower'} is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig)


@dataclass
class Curve:
    """One run's training curve."""

    label: str
    """The table row of the run."""
    method: str
    """The row's method (its colour, as in the scatter)."""
    seed: int
    """The run's seed."""
    flops: list[float]
    """Training FLOPs at each point."""
    values: dict[str, list[float]]
    """Metric key -> its value at each point (NaN where a point lacks it)."""


def curves_png(curves: Sequence[Curve], metrics: Sequence[tuple[str, str]], title: str,
               methods: Sequence[str] = ()) -> bytes:
    """One panel per (metric key, title), one line per run; x: training FLOPs. Colour by method (as
    the scatter), the line style tells a method's rows apart."""
    fig = _figure(5.0 * len(metrics) + 1.5, 4.2)
    methods = list(dict.fromkeys([*methods, *(c.method for c in curves)]))
    rows = list(dict.fromkeys(c.label for c in curves))
    method_of = {c.label: c.method for c in curves}
    nth = {label: [method_of[r] for r in rows[:i]].count(method_of[label]) for i, label in enumerate(rows)}
    for k, (key, name) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        drawn: set[str] = set()
        for c in curves:
            ys = c.values.get(key, [])
            if not any(math.isfinite(v) for v in ys):
                continue
            ax.plot(c.flops, ys, marker=".", lw=1.1, color=f"C{methods.index(c.method) % 10}", alpha=0.8,
                    ls=("-", "--", ":", "-.")[min(nth[c.label], 3)], label=None if c.label in drawn else _short(c.label))
            drawn.add(c.label)
        ax.set_xlabel("training FLOPs")
        ax.set_title(name, fontsize=9)
        if k == len(metrics) - 1:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
