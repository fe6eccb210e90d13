"""The report's figures of one pair's sweep: the frontier, the curves over λ, the reliability
grid and the generations' utility against distinctness."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from app.frontier import lambda_star
from app.report.load import Sweep, _point, _rows_with_parents


def frontier_figure(sweep: Sweep, task: str, ece_limit: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    pt, it = _point(sweep.parents["PT"], task), _point(sweep.parents["IT"], task)
    ax.plot([pt.ece, it.ece], [pt.acc, it.acc], ":", color="grey", label="naive PT–IT line")
    for method in sweep.methods():
        path = sweep.path(method, task)
        line, = ax.plot([p.ece for p in path], [p.acc for p in path], "o-", ms=4, label=method)
        for p in path:
            ax.annotate(f"{p.lam:g}", (p.ece, p.acc), textcoords="offset points", xytext=(4, 3),
                        fontsize=7, color=line.get_color())
        star = lambda_star(path, ece_limit)
        if star is not None:
            ax.plot(star.ece, star.acc, "*", ms=16, color=line.get_color(), mec="black",
                    label=f"{method} λ*={star.lam:g}")
    ax.plot(pt.ece, pt.acc, "s", ms=10, color="black", label="PT (λ=0)")
    ax.plot(it.ece, it.acc, "^", ms=10, color="black", label="IT (λ=1)")
    ax.axvline(ece_limit, ls="--", lw=0.8, color="red", label=f"ECE limit {ece_limit:g}")
    ax.set_xlabel("ECE (lower is better)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task}: accuracy–calibration frontier")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig


def curves_figure(sweep: Sweep, task: str):
    import matplotlib.pyplot as plt

    metrics = [("acc", "accuracy"), ("ece", "ECE"), ("mean_conf", "mean confidence")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, label) in zip(axes, metrics):
        for method in sweep.methods():
            rows = [r for r in _rows_with_parents(sweep, method) if f"{task}/{key}" in r.metrics]
            line, = ax.plot([r.lam for r in rows], [r.metrics[f"{task}/{key}"] for r in rows],
                            "o-", ms=3, label=method)
            lo, hi = f"{task}/{key}_ci_low", f"{task}/{key}_ci_high"
            if rows and all(lo in r.metrics and hi in r.metrics for r in rows):
                ax.fill_between([r.lam for r in rows], [r.metrics[lo] for r in rows],
                                [r.metrics[hi] for r in rows], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("λ (0 = PT, 1 = IT)")
        ax.set_title(f"{task}: {label}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def utility(metrics: dict[str, float]) -> tuple[float, str] | None:
    """A run's generation utility: the reward model's mean reward, else the judge's
    non-degenerate share; None without a judge."""
    if "judge/mean_reward" in metrics:
        return metrics["judge/mean_reward"], "mean reward"
    if "judge/degeneration_rate" in metrics:
        return 1 - metrics["judge/degeneration_rate"], "non-degenerate share"
    return None


def generation_figure(sweep: Sweep):
    """Utility against distinctness along λ (NoveltyBench's picture): one path per method,
    λ labelled, the parents marked; None where no run was judged."""
    import matplotlib.pyplot as plt

    key = "judge/distinct_responses"
    parents = list(sweep.parents.values())
    if not all(utility(r.metrics) and key in r.metrics for r in parents):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method in sweep.methods():
        rows = [r for r in _rows_with_parents(sweep, method)
                if utility(r.metrics) and key in r.metrics]
        xs, ys = [r.metrics[key] for r in rows], [utility(r.metrics)[0] for r in rows]
        ax.plot(xs, ys, "o-", ms=3, label=method)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r.lam:g}", (x, y), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    for r, marker in zip(parents, ("s", "^")):
        ax.plot(r.metrics[key], utility(r.metrics)[0], marker, color="black", ms=7,
                label=r.method)
    ax.set_xlabel("distinct responses among a prompt's k samples (mean)")
    ax.set_ylabel(utility(parents[0].metrics)[1])
    ax.set_title("generations along λ: utility vs distinctness")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def reliability_grid(sweep: Sweep, task: str, reader, method: str):
    import matplotlib.pyplot as plt

    rows = _rows_with_parents(sweep, method)
    cols = min(6, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.2 * nrows), squeeze=False)
    download = sweep.download(reader)
    with tempfile.TemporaryDirectory() as tmp:
        for ax, row in zip(axes.flat, rows):
            path = download(row.artifact_run, f"reliability/{task}.json", tmp)
            bins = json.loads(Path(path).read_text())
            edges = bins["edges"]
            acc = [a if a == a else 0 for a in bins["accuracy"]]
            ax.bar(edges[:-1], acc, width=edges[1] - edges[0], align="edge", edgecolor="black")
            ax.plot([0, 1], [0, 1], "--", color="grey")
            ax.set_title(f"λ={row.lam:g}  ECE={row.metrics[f'{task}/ece']:.3f}", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"{task}: reliability across λ ({method})", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
