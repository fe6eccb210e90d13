"""An expert pool's report (MergeBench's figures): normalised multi-task performance against
forgetting, runtime split into the algorithm and the validation search, performance against
wall clock, and a method × domain table.

Each method's λ is chosen on the selection documents (``selection/mt/normalized``, else
``mt/normalized``) and reported on the others. A method's *algorithm* time is its statistics
plus one merge (``time/stats_s`` + ``time/merge_s``); its *validation* time is what evaluating
every candidate of its grid or search cost (Σ ``time/merge_s`` + ``time/eval_s`` over its
runs), the part MergeBench found can dominate.
"""

from __future__ import annotations

from pathlib import Path


MT, FORGET = "mt/normalized", "forget/normalized"


def new_figure():
    from app.plots import plt

    return plt.subplots(figsize=(7.2, 4.8))


def is_pool(sweep) -> bool:
    return any(MT in r.metrics for r in sweep.merges)


def chosen(rows):
    """The row whose λ the selection documents pick."""
    key = "selection/" + MT if all("selection/" + MT in r.metrics for r in rows) else MT
    return max(rows, key=lambda r: (r.metrics.get(key, float("-inf")), -r.lam))


def by_method(sweep) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in sorted(sweep.merges, key=lambda r: r.lam):
        if MT in r.metrics:
            out.setdefault(r.method, []).append(r)
    return out


def runtime(rows) -> tuple[float, float]:
    """(algorithm seconds, validation seconds) of one method's runs."""
    stats = max((r.metrics.get("time/stats_s", 0.0) for r in rows), default=0.0)
    merges = [r.metrics["time/merge_s"] for r in rows if "time/merge_s" in r.metrics]
    algorithm = stats + (sum(merges) / len(merges) if merges else 0.0)
    validation = sum(r.metrics.get("time/merge_s", 0.0) + r.metrics.get("time/eval_s", 0.0)
                     for r in rows)
    return algorithm, validation


def tradeoff_figure(sweep):
    fig, ax = new_figure()
    for method, rows in by_method(sweep).items():
        line, = ax.plot([r.metrics.get(FORGET, float("nan")) for r in rows],
                        [r.metrics[MT] for r in rows], "o-", label=method, alpha=0.8)
        best = chosen(rows)
        ax.plot(best.metrics.get(FORGET), best.metrics[MT], "*", ms=16,
                color=line.get_color(), mec="black")
    for name, row in [("base", sweep.parents.get("PT")), *sweep.experts.items()]:
        if row is not None and MT in row.metrics:
            ax.plot(row.metrics.get(FORGET), row.metrics[MT], "s", color="grey")
            ax.annotate(name, (row.metrics.get(FORGET), row.metrics[MT]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("forgetting suite, normalised by the base (forget/normalized)")
    ax.set_ylabel("domain tasks, normalised by each expert (mt/normalized)")
    ax.set_title("multi-task performance vs the base's knowledge kept\n(upper right is better; "
                 "★ λ chosen on selection documents)", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def runtime_figure(sweep):
    fig, ax = new_figure()
    methods = by_method(sweep)
    names = list(methods)
    split = [runtime(rows) for rows in methods.values()]
    ax.barh(names, [a for a, _ in split], label="algorithm (statistics + merge)")
    ax.barh(names, [v for _, v in split], left=[a for a, _ in split],
            label="validation (every candidate merged and evaluated)")
    ax.set_xlabel("seconds")
    ax.set_title("runtime per method", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def wallclock_figure(sweep):
    fig, ax = new_figure()
    for method, rows in by_method(sweep).items():
        algorithm, validation = runtime(rows)
        best = chosen(rows)
        ax.plot(algorithm + validation, best.metrics[MT], "o", ms=9)
        ax.annotate(method, (algorithm + validation, best.metrics[MT]), fontsize=8,
                    xytext=(5, 3), textcoords="offset points")
    ax.set_xlabel("wall clock: algorithm + validation (s)")
    ax.set_ylabel("mt/normalized at the chosen λ")
    ax.set_title("performance vs wall clock", fontsize=10)
    return fig


def table(sweep) -> tuple[list[str], list[list[str]]]:
    methods = by_method(sweep)
    domains = sorted({k.split("/")[1] for rows in methods.values() for r in rows
                      for k in r.metrics if k.startswith("mt/") and k != MT})
    header = ["method", "λ", *domains, MT, FORGET, "algorithm (s)", "validation (s)"]
    out = []
    for method, rows in methods.items():
        best = chosen(rows)
        algorithm, validation = runtime(rows)
        out.append([method, f"{best.lam:g}",
                    *(_fmt(best.metrics.get(f"mt/{d}/normalized")) for d in domains),
                    _fmt(best.metrics.get(MT)), _fmt(best.metrics.get(FORGET)),
                    f"{algorithm:.2f}", f"{validation:.2f}"])
    return header, out


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_pool_report(sweep, reader, out: Path, log: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in (("tradeoff.png", tradeoff_figure(sweep)),
                      ("runtime.png", runtime_figure(sweep)),
                      ("wallclock.png", wallclock_figure(sweep))):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
    header, rows = table(sweep)
    text = (f"# Expert pool {sweep.experiment}: λ chosen on the selection documents, scores "
            f"on the reported ones\n\n" + markdown_table(header, rows))
    (out / "pool.md").write_text(text)
    (out / "summary.md").write_text(text)
    if log:
        reader.tracker(sweep.experiment).run(sweep.parent_id).log_artifacts(str(out), "report")
    return out
