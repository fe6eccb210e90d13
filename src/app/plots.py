"""Figures of runs and searches (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def reliability_figure(bins: dict, title: str):
    """Reliability diagram: per-bin accuracy bars vs the diagonal, bin counts underneath."""
    edges = bins["edges"]
    width = [b - a for a, b in zip(edges[:-1], edges[1:])]  # equal-mass bins differ
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4, 4.6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1], [a if a == a else 0 for a in bins["accuracy"]], width=width,
           align="edge", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(edges[:-1], bins["count"], width=width, align="edge", color="grey")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("count")
    ax_n.set_xlim(0, 1)
    fig.tight_layout()
    plt.close(fig)
    return fig


def trials_figure(trials, sweeper, best, violation):
    """The objective over λ for every trial, feasible ones filled, λ* starred."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted(trials, key=lambda t: t.params["lambda"]):
        ok = violation(t) <= 0
        ax.plot(t.params["lambda"], t.value, "o", color="tab:blue" if ok else "tab:red",
                mfc="tab:blue" if ok else "none")
        ax.annotate(str(t.number), (t.params["lambda"], t.value), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.plot(best.params["lambda"], best.value, "*", ms=18, color="gold", mec="black",
            label=f"λ*={best.params['lambda']:.3g}")
    ax.plot([], [], "o", color="tab:blue", label="feasible")
    ax.plot([], [], "o", color="tab:red", mfc="none", label="infeasible")
    ax.set_xlabel("λ")
    ax.set_ylabel(sweeper.objective)
    ax.set_title("λ* search: " + "; ".join(f"{m} {op} {b:g}" for m, op, b in sweeper.constraints))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def probe_layers_figure(per_layer: dict[str, dict[int, float]], title: str):
    """Probe accuracy against layer, one line per task."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, layers in sorted(per_layer.items()):
        xs = sorted(layers)
        ax.plot(xs, [layers[x] for x in xs], marker="o", label=task)
    ax.set(xlabel="layer (0: embeddings)", ylabel="probe accuracy", title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
