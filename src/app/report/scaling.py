"""The scaling study: one experiment's merges over several pairs of one family (the toy family
``toy_s``, ``toy``, ``toy_l``; Gemma-3 1B–27B; Qwen2.5 0.5B–7B), against the pairs' size.

Per pair and method (``pair_summary``, pure): PT's and IT's accuracy, ECE and mean confidence
(the papers' Table 1 and their confidence figure), the peak accuracy gain of a merge over IT and
its λ, λ* (the frontier's rule under the ECE limit, on the selection documents where the runs
have them), and the accuracy along λ normalised by IT's (1 = IT). The figures draw those
against the pairs' parameter counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.frontier import Point, best, lambda_star


@dataclass(frozen=True)
class PairSummary:
    pair: str
    method: str
    parameters: int | None
    pt: dict[str, float]  # acc, ece, mean_conf
    it: dict[str, float]
    peak_lam: float | None
    peak_gain: float | None  # best merge's accuracy − IT's (0 < λ < 1)
    star: float | None  # λ*
    normalised: list[tuple[float, float]]  # (λ, accuracy / IT's accuracy), parents included


def _three(metrics: dict[str, float], task: str) -> dict[str, float]:
    return {k: metrics.get(f"{task}/{k}", float("nan")) for k in ("acc", "ece", "mean_conf")}


def pair_summary(pair: str, method: str, parameters: int | None, pt: dict, it: dict,
                 merges: list[tuple[float, dict]], task: str, ece_limit: float) -> PairSummary:
    """One pair's and method's numbers on ``task``; ``merges``: (λ, metrics) of its merges."""
    path = sorted([(0.0, pt), (1.0, it)] + [(lam, m) for lam, m in merges if lam not in (0, 1)],
                  key=lambda x: x[0])
    inside = [(lam, m) for lam, m in path if 0 < lam < 1]
    peak_lam = peak_gain = None
    if inside:  # the frontier's rule: most accurate, then lower ECE, then smaller λ
        top = best([Point(lam, m[f"{task}/acc"], m.get(f"{task}/ece", 0.0)) for lam, m in inside])
        peak_lam, peak_gain = top.lam, top.acc - it[f"{task}/acc"]
    prefix = "selection/" if all(f"selection/{task}/acc" in m for _, m in path) else ""
    star = lambda_star([Point(lam, m[f"{prefix}{task}/acc"], m[f"{prefix}{task}/ece"])
                        for lam, m in path if f"{prefix}{task}/ece" in m], ece_limit)
    it_acc = it[f"{task}/acc"]
    return PairSummary(pair, method, parameters, _three(pt, task), _three(it, task), peak_lam,
                       peak_gain, None if star is None else star.lam,
                       [(lam, m[f"{task}/acc"] / it_acc if it_acc else float("nan"))
                        for lam, m in path])


def table_one(summaries: list[PairSummary], task: str) -> str:
    """PT against IT per pair: accuracy, ECE, mean confidence (the papers' Table 1)."""
    lines = ["| pair | parameters | PT acc | IT acc | PT ECE | IT ECE | IT/PT ECE | PT mean conf "
             "| IT mean conf |", "|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for s in summaries:
        if s.pair in seen:
            continue
        seen.add(s.pair)
        ratio = s.it["ece"] / s.pt["ece"] if s.pt["ece"] else float("nan")
        size = f"{s.parameters:,}" if s.parameters else "?"
        lines.append(f"| {s.pair} | {size} | {s.pt['acc']:.4f} | {s.it['acc']:.4f} | "
                     f"{s.pt['ece']:.4f} | {s.it['ece']:.4f} | {ratio:.1f}× | "
                     f"{s.pt['mean_conf']:.4f} | {s.it['mean_conf']:.4f} |")
    return f"#### {task}: PT and IT per pair\n\n" + "\n".join(lines) + "\n"


def scaling_lines(summaries: list[PairSummary], task: str) -> str:
    """Per method, the peak gain over IT and λ* by size, smallest first."""
    lines = [f"#### {task}: merges by size", "",
             "| method | pair | parameters | peak acc gain over IT | at λ | λ* |",
             "|---|---|---|---|---|---|"]
    for s in sorted(summaries, key=lambda s: (s.method, s.parameters or 0)):
        gain = "" if s.peak_gain is None else f"{s.peak_gain:+.4f}"
        size = f"{s.parameters:,}" if s.parameters else "?"
        lines.append(f"| {s.method} | {s.pair} | {size} | {gain} | "
                     f"{'' if s.peak_lam is None else f'{s.peak_lam:g}'} | "
                     f"{'none' if s.star is None else f'{s.star:g}'} |")
    return "\n".join(lines) + "\n"


def scaling_figure(summaries: list[PairSummary], task: str):
    """Peak gain over IT vs size, λ* vs size (one line per method), and accuracy / IT's along
    λ (one line per pair, the first method)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    methods = sorted({s.method for s in summaries})
    for method in methods:
        rows = sorted((s for s in summaries if s.method == method and s.parameters),
                      key=lambda s: s.parameters)
        sizes = [s.parameters for s in rows]
        axes[0].plot(sizes, [s.peak_gain if s.peak_gain is not None else float("nan")
                             for s in rows], "o-", label=method)
        axes[1].plot(sizes, [s.star if s.star is not None else float("nan") for s in rows],
                     "o-", label=method)
    for ax, title in ((axes[0], "peak accuracy gain over IT"), (axes[1], "λ*")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(f"{task}: {title}")
        ax.legend(fontsize=7)
    axes[0].axhline(0, color="grey", lw=0.8)
    first = [s for s in summaries if s.method == methods[0]]
    for s in sorted(first, key=lambda s: s.parameters or 0):
        axes[2].plot(*zip(*s.normalised), "o-", ms=3, label=f"{s.pair}")
    axes[2].axhline(1, color="grey", lw=0.8, ls=":")
    axes[2].set_xlabel("λ (0 = PT, 1 = IT)")
    axes[2].set_title(f"{task}: accuracy / IT's ({methods[0]})")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def confidence_figure(summaries: list[PairSummary], task: str):
    """Mean confidence of PT and IT per pair, with their accuracy dotted."""
    import matplotlib.pyplot as plt

    pairs = []
    for s in sorted(summaries, key=lambda s: s.parameters or 0):
        if s.pair not in [p.pair for p in pairs]:
            pairs.append(s)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(pairs), 3.6))
    x = range(len(pairs))
    for offset, who, colour in ((-0.2, "pt", "tab:blue"), (0.2, "it", "tab:orange")):
        ax.bar([i + offset for i in x], [getattr(s, who)["mean_conf"] for s in pairs],
               width=0.4, color=colour, label=f"{who.upper()} mean confidence")
        ax.plot([i + offset for i in x], [getattr(s, who)["acc"] for s in pairs], "k_",
                ms=18, mew=2)
    ax.set_xticks(list(x), [s.pair for s in pairs])
    ax.set_ylim(0, 1)
    ax.set_title(f"{task}: mean confidence (bars) and accuracy (—) per pair")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plt.close(fig)
    return fig
