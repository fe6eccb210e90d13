"""Figures shared by runs and reports (matplotlib, headless)."""

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
