"""Behaviour next to internals: where each merge stands against its parents, and how task
accuracy and probe accuracy move together across an experiment's merges.

The maths is pure (``verdict``, ``verdict_counts``, ``correlation``); the figures draw it.

- **Better / between / worse** (as the Holmes merging study counts them): a merge is *better*
  on a unit when its accuracy exceeds both parents', *worse* when it is below both, and
  *between* otherwise (a tie with a parent counts as between). Behaviour units are the tasks,
  each split into its parts where it has them (BBH's subtasks, MMLU-Pro's categories:
  ``<task>/<part>/acc``); internal units are the probing phenomena (``probe/<phenomenon>/acc``).
  Only merges strictly between the parents' λ count (0 < λ < 1, or λ > 1): λ=0 and λ=1 *are*
  the parents.
- **Correlations**: Pearson's r and Spearman's ρ between each task's accuracy and each
  phenomenon's probe accuracy over the same merges, with the number of merges each rests on
  and a 95% percentile-bootstrap interval (merges resampled with replacement, seeded).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

VERDICTS = ("better", "between", "worse")
COLOURS = {"better": "tab:green", "between": "lightgrey", "worse": "tab:red"}


def verdict(value: float, pt: float, it: float) -> str:
    """``better`` than both parents, ``worse`` than both, or ``between`` (ties included)."""
    if value > max(pt, it):
        return "better"
    if value < min(pt, it):
        return "worse"
    return "between"


def behaviour_keys(metrics: dict[str, float], tasks: list[str]) -> list[str]:
    """Each task's part accuracies where it has parts, else its accuracy."""
    keys = []
    for task in tasks:
        parts = sorted(k for k in metrics if k.startswith(f"{task}/") and k.endswith("/acc")
                       and k.count("/") == 2)
        keys += parts or [f"{task}/acc"]
    return keys


def phenomenon_keys(metrics: dict[str, float]) -> list[str]:
    """``probe/<phenomenon>/acc``: the probe accuracies that are not one task's (a task has a
    ``control_acc`` next to its ``acc``)."""
    return sorted(k for k in metrics if k.startswith("probe/") and k.endswith("/acc")
                  and k.count("/") == 2 and f"{k[:-4]}/control_acc" not in metrics)


def verdict_counts(merges: list[dict[str, float]], pt: dict[str, float], it: dict[str, float],
                   keys: list[str]) -> Counter:
    """How many (merge, unit) pairs are better / between / worse, over ``keys`` every merge
    and both parents have."""
    counts = Counter({v: 0 for v in VERDICTS})
    for m in merges:
        for key in keys:
            if key in m and key in pt and key in it:
                counts[verdict(m[key], pt[key], it[key])] += 1
    return counts


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's ρ needs."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class Correlation:
    """One (task, phenomenon) pair over ``n`` merges; NaN where a side is constant."""

    pearson: float
    spearman: float
    n: int
    pearson_ci: tuple[float, float]
    spearman_ci: tuple[float, float]


def correlation(x, y, n_boot: int = 1000, seed: int = 0) -> Correlation:
    """Pearson and Spearman of paired values, each with its bootstrap interval (resamples
    where a side is constant are left out of the interval)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    boots = {"pearson": [], "spearman": []}
    for _ in range(n_boot if len(x) > 2 else 0):
        i = rng.integers(0, len(x), len(x))
        for name, value in (("pearson", _pearson(x[i], y[i])),
                            ("spearman", _pearson(_ranks(x[i]), _ranks(y[i])))):
            if value == value:
                boots[name].append(value)

    def interval(values):
        if not values:
            return float("nan"), float("nan")
        return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    return Correlation(_pearson(x, y), _pearson(_ranks(x), _ranks(y)), len(x),
                       interval(boots["pearson"]), interval(boots["spearman"]))


def correlations(merges: list[dict[str, float]], tasks: list[str], phenomena: list[str],
                 n_boot: int = 1000, seed: int = 0) -> dict[tuple[str, str], Correlation]:
    """{(task accuracy key, phenomenon key): Correlation} over the merges that have both."""
    out = {}
    for t in tasks:
        for p in phenomena:
            pairs = [(m[t], m[p]) for m in merges if t in m and p in m]
            if pairs:
                out[(t, p)] = correlation(*zip(*pairs), n_boot=n_boot, seed=seed)
    return out


# ---------------------------------------------------------------- figures

def verdict_figure(counts: dict[str, dict[str, Counter]]):
    """Per method, the shares of better / between / worse: behaviour and internals bars."""
    import matplotlib.pyplot as plt

    labels, shares, totals = [], {v: [] for v in VERDICTS}, []
    for method, sides in counts.items():
        for side, c in sides.items():
            total = sum(c.values())
            labels.append(f"{method}\n{side}")
            totals.append(total)
            for v in VERDICTS:
                shares[v].append(c[v] / total if total else 0.0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 4))
    bottom = np.zeros(len(labels))
    for v in VERDICTS:
        ax.bar(labels, shares[v], bottom=bottom, color=COLOURS[v], edgecolor="black",
               label=f"{v} {'than both parents' if v != 'between' else 'the parents'}")
        bottom += np.array(shares[v])
    for i, total in enumerate(totals):
        ax.annotate(f"n={total}", (i, 1.0), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="share of (merge, unit) pairs", ylim=(0, 1.12),
           title="merges against both parents: tasks (behaviour) and probes (internals)")
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def probe_curves_figure(series: dict[str, dict[str, list[tuple[float, float]]]],
                        parents: dict[str, tuple[float, float]]):
    """Probe accuracy against λ, one panel per phenomenon, one line per method, the parents'
    values as dotted lines. ``series`` {phenomenon: {method: [(λ, acc)]}}, ``parents``
    {phenomenon: (PT acc, IT acc)}."""
    import matplotlib.pyplot as plt

    names = sorted(series)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for method, points in sorted(series[name].items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=method)
        pt, it = parents[name]
        ax.axhline(pt, ls=":", color="black", lw=0.8, label="PT")
        ax.axhline(it, ls="--", color="black", lw=0.8, label="IT")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("λ", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].set_ylabel("probe accuracy", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("probe accuracy per phenomenon across λ", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def correlation_figure(corr: dict[tuple[str, str], Correlation], tasks: list[str],
                       phenomena: list[str]):
    """Pearson and Spearman heatmaps, tasks × phenomena; each cell its value, its interval and
    the number of merges it rests on."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(3 + 2.4 * len(phenomena), 2 + 0.8 * len(tasks)),
                             squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], ("pearson", "spearman")):
        grid = np.full((len(tasks), len(phenomena)), np.nan)
        for i, t in enumerate(tasks):
            for j, p in enumerate(phenomena):
                c = corr.get((t, p))
                if c is None:
                    continue
                grid[i, j] = value = getattr(c, kind)
                lo, hi = getattr(c, f"{kind}_ci")
                text = (f"{value:.2f}\n[{lo:.2f}, {hi:.2f}]" if value == value
                        else "constant") + f"\nn={c.n}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 else "black")
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(phenomena)), [p.split("/")[1] for p in phenomena], fontsize=7,
                      rotation=20, ha="right")
        ax.set_yticks(range(len(tasks)), [t.rsplit("/", 1)[0] for t in tasks], fontsize=7)
        ax.set_title(kind.capitalize(), fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="correlation")
    fig.suptitle("task accuracy vs probe accuracy across merges (95% bootstrap intervals)",
                 fontsize=9)
    plt.close(fig)
    return fig
