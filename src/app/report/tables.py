"""The report's tables and summary text: the full-results table, the per-task analysis (λ*,
Pareto sets, dominance over IT, peak gain), the extrapolation table and behaviour next to
internals."""

from __future__ import annotations

import csv
from pathlib import Path

import app.report.internals as internals
from app.frontier import Point, dominance_over_it, lambda_star, pareto_front, peak_gain
from app.report.load import Row, Sweep, _point, _rows_with_parents
from app.report.pool import is_pool, markdown_table  # one table writer for both reports
from app.report.pool import table as pool_table


def table_rows(sweep: Sweep, calibrated: list[str], generative: list[str]) -> tuple[list[str], list[list[str]]]:
    """The papers' full-results layout: parents, then method × λ; acc and ECE per task."""
    header = ["model", "λ"]
    for t in calibrated:
        header += [f"{t} acc", f"{t} ECE"]
    header += [f"{t} acc" for t in generative]
    rows = []
    ordered = [sweep.parents["PT"], sweep.parents["IT"]]
    ordered += sorted(sweep.merges, key=lambda r: (r.method, r.lam))
    for r in ordered:
        cells = [r.method, f"{r.lam:g}"]
        for t in calibrated:
            cells += [_fmt(r.metrics.get(f"{t}/acc")), _fmt(r.metrics.get(f"{t}/ece"))]
        cells += [_fmt(r.metrics.get(f"{t}/acc")) for t in generative]
        rows.append(cells)
    return header, rows


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def extrapolation_table(sweep: Sweep, calibrated: list[str], generative: list[str]) -> str:
    """The merges past IT (λ > 1), next to IT: the paper's extrapolation table; "" if none."""
    rows = [r for r in sweep.merges if r.lam > 1]
    if not rows:
        return ""
    header = ["model", "λ"] + [f"{t} {m}" for t in calibrated for m in ("acc", "ECE")] + [
        f"{t} acc" for t in generative]
    judged = [k for k in ("judge/distinct_responses", "judge/degeneration_rate",
                          "judge/mean_reward") if k in sweep.parents["IT"].metrics]
    header += [k.split("/")[1] for k in judged]
    body = []
    for r in [sweep.parents["IT"]] + sorted(rows, key=lambda r: (r.method, r.lam)):
        cells = [r.method, f"{r.lam:g}"]
        cells += [_fmt(r.metrics.get(f"{t}/{m}")) for t in calibrated for m in ("acc", "ece")]
        cells += [_fmt(r.metrics.get(f"{t}/acc")) for t in generative]
        cells += [_fmt(r.metrics.get(k)) for k in judged]
        body.append(cells)
    return "### Extrapolation past IT (λ > 1)\n\n" + markdown_table(header, body)



def analysis(sweep: Sweep, task: str, ece_limit: float, evidence=None) -> str:
    """The task's summary per method: λ* (chosen on the selection documents and reported on the
    others where the runs split them), the Pareto set, dominance over IT and the peak gain;
    with ``evidence`` (``app.report.evidence.Evidence``) every claim against a parent carries
    its paired 95% interval and is called significant only where that excludes zero."""
    from app.report.evidence import describe

    pt, it = _point(sweep.parents["PT"], task), _point(sweep.parents["IT"], task)
    refs = [sweep.parents[n].artifact_run for n in ("PT", "IT")]
    lines = [f"### {task}", "",
             f"PT: acc {pt.acc:.4f}, ECE {pt.ece:.4f} — IT: acc {it.acc:.4f}, ECE {it.ece:.4f}", ""]
    for method in sweep.methods():
        rows = _rows_with_parents(sweep, method)
        path = [_point(r, task) for r in rows]
        merges = [p for p in path if 0 < p.lam < 1 or p.lam > 1]
        front = pareto_front(path)
        lines.append(f"**{method}**")
        lines += _lambda_star_lines(rows, task, ece_limit, evidence, refs)
        lines.append("- Pareto set (λ): " + ", ".join(f"{p.lam:g}" for p in front))
        dom = dominance_over_it(merges, pt, it)
        if dom:
            d = dom[0]
            line = (f"- {len(dom)} merge(s) Pareto-dominate IT; best λ={d.point.lam:g}: "
                    f"+{d.acc_gain:.4f} acc, {d.ece_recovered:.0%} of the PT→IT ECE rise "
                    f"recovered")
            if evidence is not None:
                by_lam = {r.lam: r for r in rows}
                tests = {x.point.lam: evidence.against_parents(
                    by_lam[x.point.lam].artifact_run, *refs, task) for x in dom}
                sig = [lam for lam, t in tests.items() if t.vs_it.dominates_significantly]
                line += (f"\n  - significantly (the paired interval excludes 0): {len(sig)} of "
                         f"{len(dom)}" + (f", λ {', '.join(f'{x:g}' for x in sig)}" if sig
                                          else "") + f"\n  - λ={d.point.lam:g} "
                         f"{describe(tests[d.point.lam])}")
            lines.append(line)
        else:
            lines.append("- no merge Pareto-dominates IT")
        peak = peak_gain(merges, pt, it)
        if peak:
            line = (f"- peak accuracy {peak[0].acc:.4f} at λ={peak[0].lam:g}: "
                    f"{peak[1]:+.4f} over the better parent")
            if evidence is not None:
                row = next(r for r in rows if r.lam == peak[0].lam)
                versus = evidence.against_parents(row.artifact_run, *refs, task)
                gain = (versus.vs_pt if pt.acc >= it.acc else versus.vs_it).acc
                line += (f" [{gain.low:+.4f}, {gain.high:+.4f}], paired: "
                         + ("significant" if gain.significant else "not significant"))
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


ECE_LIMIT = 0.15  # λ*'s default constraint, in the report and the console's closing table


def chosen_lambda(rows: list[Row], task: str, ece_limit: float
                  ) -> tuple[Point | None, list[Point], bool]:
    """(λ*, the points it was chosen among, whether on the selection documents): the best
    accuracy with ECE ≤ ``ece_limit``, on the selection documents where every row has both
    sets' metrics, else on all documents (a store from before the split)."""
    split = all(f"{s}/{task}/{m}" in r.metrics for r in rows for s in ("selection", "report")
                for m in ("acc", "ece"))
    prefix = "selection/" if split else ""
    points = [Point(r.lam, r.metrics[f"{prefix}{task}/acc"], r.metrics[f"{prefix}{task}/ece"],
                    r.method) for r in rows]
    return lambda_star(points, ece_limit), points, split


def aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table as plain text lines, its columns aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def closing_table(sweep: Sweep, ece_limit: float) -> list[str]:
    """The sweep's table for the console: the parents, then method × λ, each calibrated
    task's acc and ECE with the marks the report gives (◆ on the method's Pareto set, λ* its
    choice under ``ece_limit``), and each generative task's acc; an expert pool's: the pool
    report's table (each method at the λ its selection documents pick)."""
    if is_pool(sweep):
        return aligned(*pool_table(sweep)) + ["(each method at the λ its selection documents "
                                              "pick, as python -m app.report)"]
    calibrated, generative = sweep.tasks()
    marks: dict[tuple[str, float, str], str] = {}
    on_selection, stars = False, []
    for method in sweep.methods():
        rows = _rows_with_parents(sweep, method)
        for task in calibrated:
            front = {p.lam for p in pareto_front([_point(r, task) for r in rows])}
            star, _, split = chosen_lambda(rows, task, ece_limit)
            on_selection |= split
            on = f" on {task}" if len(calibrated) > 1 else ""
            parent = next((f" ({r.method})" for r in rows if star and r.lam == star.lam
                           and r.method != method), "")  # a parent standing in for the grid
            stars.append(f"{method} {star.lam:g}{parent}{on}" if star else f"{method} none{on}")
            for r in rows:
                if r.method == method:  # a parent row stands for every method: unmarked
                    marks[(method, r.lam, task)] = ("◆" if r.lam in front else "") + (
                        " λ*" if star is not None and r.lam == star.lam else "")
    header = ["model", "λ"] + [f"{t} {m}".strip() if m else "" for t in calibrated
                               for m in ("acc", "ECE", "")] \
        + [f"{t} acc" for t in generative]
    body = []
    for r in [sweep.parents["PT"], sweep.parents["IT"]] + sorted(
            sweep.merges, key=lambda r: (r.method, r.lam)):
        cells = [r.method, f"{r.lam:g}"]
        for t in calibrated:
            cells += [_fmt(r.metrics.get(f"{t}/acc")), _fmt(r.metrics.get(f"{t}/ece")),
                      marks.get((r.method, r.lam, t), "")]
        body.append(cells + [_fmt(r.metrics.get(f"{t}/acc")) for t in generative])
    lines = aligned(header, body)
    where = " on the selection documents" if on_selection else ""
    return lines + [f"λ* (the best accuracy with ECE ≤ {ece_limit:g}{where}, as python -m "
                    f"app.report): " + ", ".join(stars),
                    "◆ on the method's Pareto set (acc ↑, ECE ↓)"]


def _lambda_star_lines(rows: list[Row], task: str, ece_limit: float, evidence,
                       refs: list[str]) -> list[str]:
    """λ*: on the selection documents, reported on the report documents, where every row has
    both sets' metrics; else on all documents (a store from before the split)."""
    star, points, split = chosen_lambda(rows, task, ece_limit)
    if star is None:
        least = min(points, key=lambda p: p.ece)
        return [f"- λ* (best accuracy with ECE ≤ {ece_limit:g}): none: no λ meets the limit "
                f"(least ECE: λ={least.lam:g})"]
    if not split:
        return [f"- λ* (best accuracy with ECE ≤ {ece_limit:g}): {star.lam:g} (acc "
                f"{star.acc:.4f}, ECE {star.ece:.4f})"]
    row = next(r for r, p in zip(rows, points) if p is star)
    m = row.metrics
    lines = [f"- λ* (best selection-set accuracy with selection-set ECE ≤ {ece_limit:g}): "
             f"{star.lam:g}; selection set: acc {star.acc:.4f}, ECE {star.ece:.4f}; "
             f"**report set** (the number to quote): acc {m[f'report/{task}/acc']:.4f}, ECE "
             f"{m[f'report/{task}/ece']:.4f}"]
    if evidence is not None and 0 < star.lam < 1:
        from app.report.evidence import describe

        versus = evidence.against_parents(row.artifact_run, *refs, task, "report")
        lines.append(f"  - on the report set, {describe(versus)}")
    return lines


def _interior(sweep: Sweep) -> list[Row]:
    """The merges that are not a parent: λ other than 0 and 1."""
    return [r for r in sweep.merges if r.lam not in (0.0, 1.0)]


def internals_section(sweep: Sweep, tasks: list[str], out: Path, n_boot: int = 1000,
                      evidence=None) -> tuple[str, list[str]]:
    """Behaviour next to internals (``app.report.internals``): writes verdicts.png,
    probe_curves.png, correlations.png and correlations.csv; (markdown, figure names)."""
    pt, it = sweep.parents["PT"].metrics, sweep.parents["IT"].metrics
    phenomena = internals.phenomenon_keys(pt)
    behaviour = internals.behaviour_keys(pt, tasks)
    lines = ["### Behaviour and internals", "",
             f"Units: {len(behaviour)} behaviour (tasks, parts where a task has them), "
             f"{len(phenomena)} probing phenomena; a merge is better/worse than both parents "
             f"on a unit, or between them.", "",
             "| method | side | better | between | worse | (merge, unit) pairs | better, "
             "significantly | worse, significantly |",
             "|---|---|---|---|---|---|---|---|"]
    counts = {}
    refs = [sweep.parents[n].artifact_run for n in ("PT", "IT")]
    for method in sweep.methods():
        rows = [r for r in _interior(sweep) if r.method == method]
        merges = [r.metrics for r in rows]
        counts[method] = {side: internals.verdict_counts(merges, pt, it, keys)
                          for side, keys in (("behaviour", behaviour), ("internals", phenomena))}
        significant = _significant_counts(rows, behaviour, refs, evidence)
        for side, c in counts[method].items():
            total = sum(c.values()) or 1
            sig = (" | " + " | ".join(f"{significant[v] / total:.0%}" for v in ("better", "worse"))
                   if side == "behaviour" and significant else " | | ")
            lines.append(f"| {method} | {side} | " + " | ".join(
                f"{c[v] / total:.0%}" for v in internals.VERDICTS) + f" | {sum(c.values())}"
                + sig + " |")
    series = {p.split("/")[1]: {m: [(r.lam, r.metrics[p]) for r in _rows_with_parents(sweep, m)
                                    if p in r.metrics] for m in sweep.methods()}
              for p in phenomena}
    parents = {p.split("/")[1]: (pt[p], it[p]) for p in phenomena}
    accuracy = [f"{t}/acc" for t in tasks]
    merges = [r.metrics for r in _interior(sweep)]
    corr = internals.correlations(merges, accuracy, phenomena, n_boot=n_boot)
    drawn = {"verdicts.png": internals.verdict_figure(counts),
             "probe_curves.png": internals.probe_curves_figure(series, parents),
             "correlations.png": internals.correlation_figure(corr, accuracy, phenomena)}
    for name, fig in drawn.items():
        fig.savefig(out / name, dpi=110)
    with open(out / "correlations.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "phenomenon", "n_merges", "pearson", "pearson_ci_low",
                    "pearson_ci_high", "spearman", "spearman_ci_low", "spearman_ci_high"])
        for (t, p), c in corr.items():
            w.writerow([t.rsplit("/", 1)[0], p.split("/")[1], c.n, *(f"{x:.4f}" for x in (
                c.pearson, *c.pearson_ci, c.spearman, *c.spearman_ci))])
    finite = {k: [v for c in corr.values() if (v := getattr(c, k)) == v]
              for k in ("pearson", "spearman")}
    if finite["pearson"] and finite["spearman"]:
        lines += ["", f"Correlations over {len(merges)} merges (task accuracy vs phenomenon "
                  f"probe accuracy): Pearson r from {min(finite['pearson']):.2f} to "
                  f"{max(finite['pearson']):.2f}, Spearman ρ from {min(finite['spearman']):.2f} "
                  f"to {max(finite['spearman']):.2f}; correlations.csv has each with its 95% "
                  f"bootstrap interval."]
    return "\n".join(lines) + "\n", list(drawn)


def _significant_counts(rows: list[Row], keys: list[str], refs: list[str], evidence) -> dict:
    """(merge, behaviour unit) pairs better / worse than both parents with both paired
    accuracy differences significant; {} without evidence or samples."""
    from collections import Counter

    from app.report.evidence import verdict

    if evidence is None:
        return {}
    counts = Counter()
    try:
        for row in rows:
            for key in keys:
                task, *part, _ = key.split("/")
                subset = f"part:{part[0]}" if part else None
                counts[verdict(evidence, row.artifact_run, *refs, task, subset)] += 1
    except Exception:  # noqa: BLE001 - a run without samples: no significance column
        return {}
    return counts
