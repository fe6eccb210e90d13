"""``python -m app.report``: the alignment–calibration frontier of a sweep, from its MLflow runs.

    python -m app.report                                # the latest sweep in ./mlruns
    python -m app.report --experiment merge-toy --ece-limit 0.15 --out reports/toy

Writes, and logs under ``report/`` on the sweep's parent run: a frontier plot per calibrated
task (accuracy vs ECE, one path per method ordered by λ, the naive PT–IT line dotted, λ*
starred, the parents marked), accuracy / ECE / mean-confidence curves over λ (95% bootstrap bands), a grid of
reliability diagrams across λ, ``table.md`` / ``table.csv`` (parents, then method × λ),
``summary.md`` (Pareto sets, dominance over IT, peak gain, λ*), and one self-contained
``report.html``. A sweep with probes (``probe`` ≠ none) adds behaviour next to internals
(``app.report.internals``): the better/between/worse bars (``verdicts.png``), probe accuracy
against λ per phenomenon (``probe_curves.png``), and the task–probe correlation heatmap
(``correlations.png``, ``correlations.csv``), summarised in ``summary.md``. A judged sweep
(``judge`` ≠ none) adds utility against distinctness along λ (``generation.png``), and a sweep
with λ > 1 the extrapolation table in ``summary.md``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.frontier import Point, dominance_over_it, lambda_star, pareto_front, peak_gain
from app.report import internals


class ReportError(ValueError):
    """A one-line problem with the runs asked for."""


@dataclass
class Row:
    """One evaluated model: a parent reference or a merge."""

    method: str  # "PT", "IT" or a merge method
    lam: float
    run_id: str
    metrics: dict[str, float]
    artifact_run: str  # where its artifacts live (a reused endpoint's reference)


@dataclass
class Sweep:
    experiment: str
    parent_id: str
    parents: dict[str, Row]  # "PT", "IT"
    merges: list[Row] = field(default_factory=list)
    parameters: int | None = None  # the pair's size (its jobs' ``parameters`` tag)
    params: dict[str, str] = field(default_factory=dict)  # PT's reference run's params
    experts: dict[str, Row] = field(default_factory=dict)  # an expert pool's, by name

    def evidence(self, reader):
        """Paired comparisons over this sweep's sample artifacts, binned and seeded as the
        runs computed their ECE and intervals."""
        from app.report.evidence import Evidence

        p = self.params
        return Evidence(reader.download, n_boot=int(p.get("task.bootstrap") or 0) or 1000,
                        seed=int(p.get("seed", 0)), bins=int(p.get("task.ece_bins", 15)),
                        binning=p.get("task.ece_binning", "width"))

    def tasks(self) -> tuple[list[str], list[str]]:
        """(calibrated tasks, generative tasks) found in the metrics."""
        keys = set().union(*(r.metrics for r in self.merges + list(self.parents.values())))
        tasks = sorted({k.split("/")[0] for k in keys if k.endswith("/acc")}
                       - {"mean", "probe", "selection", "report"})
        calibrated = [t for t in tasks if f"{t}/ece" in keys]
        return calibrated, [t for t in tasks if t not in calibrated]

    def methods(self) -> list[str]:
        return sorted({r.method for r in self.merges})

    def path(self, method: str, task: str) -> list[Point]:
        """A method's points by λ, with the parents as its ends where the grid lacks them."""
        return [_point(r, task) for r in _rows_with_parents(self, method)]


def _point(row: Row, task: str) -> Point:
    try:
        return Point(row.lam, row.metrics[f"{task}/acc"], row.metrics[f"{task}/ece"], row.method)
    except KeyError as e:
        raise ReportError(f"run {row.run_id} ({row.method} λ={row.lam:g}) has no metric "
                          f"{e.args[0]}; re-run it or pass --tasks") from None


def load_sweep(reader, experiment: str | None, parent: str | None) -> dict[str, Sweep]:
    """The sweep's FINISHED children and the matching parent references, per pair (one entry
    for a sweep over one pair; several for a sweep over a family of pairs)."""
    if parent:
        exp_name, run = reader.get(parent)
    else:
        if experiment and experiment not in reader.experiment_names():
            names = reader.experiment_names()
            raise ReportError(f"--experiment {experiment!r} does not exist; found: "
                              f"{', '.join(names) or 'none'}")
        found = reader.latest_sweep(experiment)
        if found is None:
            raise ReportError("no sweep found: run `python -m app -m method=... lambda=...` first")
        exp_name, run = found
    tracker = reader.tracker(exp_name)
    children = tracker.children(run.run_id)
    if not children:
        raise ReportError(f"sweep run {run.run_id} has no finished jobs")
    by_pair: dict[str, list] = {}
    for c in children:
        by_pair.setdefault(c.tags.get("pair", "?"), []).append(c)
    sweeps = {}
    for pair, runs in by_pair.items():
        merges = [Row(c.tags["method"], float(c.params["lambda"]), c.run_id, dict(c.metrics),
                      c.tags.get("reused_from", c.run_id)) for c in runs]
        tasks_tag = runs[0].tags.get("tasks")
        parents, found = {}, []
        for name, lam in (("PT", "0"), ("IT", "1")):
            refs = tracker.references(tasks_tag, lam, None if pair == "?" else pair,
                                      runs[0].experiment_id or None)
            if not refs:
                raise ReportError(f"no {name} reference run of pair {pair} for tasks {tasks_tag}"
                                  f"; re-run the sweep to evaluate the parents")
            parents[name] = Row(name, float(lam), refs[0].run_id, dict(refs[0].metrics),
                                refs[0].run_id)
            found.append(refs[0])
        # the pair's size: a reference's tag (a job that reused one has none)
        size = next((r.tags["parameters"] for r in [*found, *runs] if r.tags.get("parameters")),
                    None)
        experts: dict[str, Row] = {}  # an expert pool's references, the newest of each
        for r in tracker.references(tasks_tag, "1", None if pair == "?" else pair,
                                    runs[0].experiment_id or None, limit=1000):
            if r.tags.get("expert"):
                experts.setdefault(r.tags["expert"], Row(r.tags["expert"], 1.0, r.run_id,
                                                         dict(r.metrics), r.run_id))
        sweeps[pair] = Sweep(exp_name, run.run_id, parents, merges,
                             int(size) if size and size.isdigit() else None,
                             dict(found[0].params), experts)
    return sweeps


# ---------------------------------------------------------------- figures

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


def reliability_grid(sweep: Sweep, task: str, reader, method: str):
    import matplotlib.pyplot as plt

    rows = _rows_with_parents(sweep, method)
    cols = min(6, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.2 * nrows), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for ax, row in zip(axes.flat, rows):
            path = reader.download(row.artifact_run, f"reliability/{task}.json", tmp)
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


def _rows_with_parents(sweep: Sweep, method: str) -> list[Row]:
    """A method's rows sorted by λ, the parents standing in for λ=0 and λ=1 where missing."""
    rows = {r.lam: r for r in sweep.merges if r.method == method}
    rows.setdefault(0.0, sweep.parents["PT"])
    rows.setdefault(1.0, sweep.parents["IT"])
    return [rows[lam] for lam in sorted(rows)]


# ---------------------------------------------------------------- tables and analysis

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


from app.report.pool import markdown_table  # noqa: E402  (one table writer for both reports)


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


def _lambda_star_lines(rows: list[Row], task: str, ece_limit: float, evidence,
                       refs: list[str]) -> list[str]:
    """λ*: on the selection documents, reported on the report documents, where every row has
    both sets' metrics; else on all documents (a store from before the split)."""
    split = all(f"{s}/{task}/{m}" in r.metrics for r in rows for s in ("selection", "report")
                for m in ("acc", "ece"))
    prefix = "selection/" if split else ""
    points = [Point(r.lam, r.metrics[f"{prefix}{task}/acc"], r.metrics[f"{prefix}{task}/ece"],
                    r.method) for r in rows]
    star = lambda_star(points, ece_limit)
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


# ---------------------------------------------------------------- output

def write_family_report(sweeps: dict[str, Sweep], reader, out: Path, ece_limit: float,
                        tasks: list[str] | None = None) -> Path:
    """A sweep over several pairs: each pair's own report in ``<out>/<pair>/``, and the scaling
    study over them (``app.report.scaling``): ``scaling_<task>.png``, ``confidence_<task>.png``
    and ``scaling.md`` (Table 1 and the merges by size)."""
    from app.report import scaling

    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(sweeps.items(), key=lambda kv: (kv[1].parameters or 0, kv[0]))
    for pair, sweep in ordered:
        write_report(sweep, reader, out / pair, ece_limit, tasks, log=False)
    calibrated = sorted(set.intersection(*(set(s.tasks()[0]) for s in sweeps.values())))
    if tasks:
        calibrated = [t for t in calibrated if t in tasks]
    text = [f"# Scaling: {len(sweeps)} pairs", ""]
    for task in calibrated:
        summaries = [scaling.pair_summary(
            pair, method, sweep.parameters, sweep.parents["PT"].metrics,
            sweep.parents["IT"].metrics,
            [(r.lam, r.metrics) for r in sweep.merges if r.method == method], task, ece_limit)
            for pair, sweep in ordered for method in sweep.methods()]
        scaling.scaling_figure(summaries, task).savefig(out / f"scaling_{task}.png", dpi=110)
        scaling.confidence_figure(summaries, task).savefig(out / f"confidence_{task}.png",
                                                           dpi=110)
        text += [scaling.table_one(summaries, task), scaling.scaling_lines(summaries, task)]
    (out / "scaling.md").write_text("\n".join(text))
    first = next(iter(sweeps.values()))
    reader.tracker(first.experiment).run(first.parent_id).log_artifacts(str(out), "report")
    return out


def write_report(sweep: Sweep, reader, out: Path, ece_limit: float,
                 tasks: list[str] | None = None, log: bool = True) -> Path:
    calibrated, generative = sweep.tasks()
    if tasks:
        unknown = set(tasks) - set(calibrated) - set(generative)
        if unknown:
            raise ReportError(f"--tasks {','.join(sorted(unknown))}: not in these runs; "
                              f"found: {', '.join(calibrated + generative)}")
        calibrated = [t for t in calibrated if t in tasks]
        generative = [t for t in generative if t in tasks]
    if not calibrated:
        raise ReportError("no task with an ECE metric in these runs: nothing to draw a "
                          "frontier for")
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for task in calibrated:
        for name, fig in ((f"frontier_{task}.png", frontier_figure(sweep, task, ece_limit)),
                          (f"curves_{task}.png", curves_figure(sweep, task)),
                          (f"reliability_{task}.png",
                           reliability_grid(sweep, task, reader, sweep.methods()[0]))):
            fig.savefig(out / name, dpi=110)
            figures.append(name)
    drawn = generation_figure(sweep)
    if drawn is not None:
        drawn.savefig(out / "generation.png", dpi=110)
        figures.append("generation.png")
    header, rows = table_rows(sweep, calibrated, generative)
    (out / "table.md").write_text(markdown_table(header, rows))
    with open(out / "table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    evidence = sweep.evidence(reader)
    summary = "\n".join(analysis(sweep, t, ece_limit, evidence) for t in calibrated)
    extrapolation = extrapolation_table(sweep, calibrated, generative)
    if extrapolation:
        summary += "\n" + extrapolation
    if internals.phenomenon_keys(sweep.parents["PT"].metrics):
        text, drawn = internals_section(sweep, calibrated + generative, out,
                                        evidence=evidence)
        summary += "\n" + text
        figures += drawn
    (out / "summary.md").write_text(summary)
    (out / "report.html").write_text(_html(sweep, out, figures, header, rows, summary))
    if log:
        reader.tracker(sweep.experiment).run(sweep.parent_id).log_artifacts(str(out), "report")
    return out


def _html(sweep: Sweep, out: Path, figures: list[str], header, rows, summary: str) -> str:
    import html

    imgs = "\n".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,'
        f'{base64.b64encode((out / n).read_bytes()).decode()}"><figcaption>{n}</figcaption></figure>'
        for n in figures)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(sweep.experiment)} frontier report</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>{html.escape(sweep.experiment)}: accuracy–calibration frontier</h1>
<p>Sweep run {sweep.parent_id}</p>
{imgs}
<h2>Analysis</h2><pre>{html.escape(summary)}</pre>
<h2>Full results</h2><table><tr>{head}</tr>{body}</table>
</body></html>
"""


def run(argv: list[str] | None = None) -> Path:
    """Parse the command line, write the report, print where it is; ReportError for bad input."""
    from app.tracking import open_reader

    ap = argparse.ArgumentParser(prog="python -m app.report", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", help="experiment name (default: the latest sweep's)")
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    ap.add_argument("--tasks", help="comma-separated tasks (default: all in the runs)")
    ap.add_argument("--ece-limit", type=float, default=0.15, help="λ* constraint (default 0.15)")
    ap.add_argument("--out", help="output folder (default: reports/<experiment>)")
    ap.add_argument("--tracking-dir", default="mlruns", help="local store folder (default mlruns)")
    ap.add_argument("--tracking-uri", help="an MLflow tracking URI instead of --tracking-dir")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per sample file
    if not args.tracking_uri and not (Path(args.tracking_dir) / "mlflow.db").exists():
        raise ReportError(f"no MLflow store at {args.tracking_dir}/mlflow.db: run "
                          f"`python -m app -m ...` first or pass --tracking-dir/--tracking-uri")
    reader = open_reader(args.tracking_uri, args.tracking_dir)
    sweeps = load_sweep(reader, args.experiment, args.parent)
    sweep = next(iter(sweeps.values()))
    out = Path(args.out or f"reports/{sweep.experiment}")
    tasks = args.tasks.split(",") if args.tasks else None
    from app.report.pool import is_pool, write_pool_report

    if len(sweeps) > 1:
        write_family_report(sweeps, reader, out, args.ece_limit, tasks)
    elif is_pool(sweep):
        write_pool_report(sweep, reader, out)
    else:
        write_report(sweep, reader, out, args.ece_limit, tasks)
    merges = sum(len(s.merges) for s in sweeps.values())
    print(f"report for sweep {sweep.parent_id} ({merges} merges"
          + (f", {len(sweeps)} pairs" if len(sweeps) > 1 else "") + f") in {out}/:")
    for p in sorted(out.iterdir()):
        print(f"  {p.name}")
    print((out / ("scaling.md" if len(sweeps) > 1 else "summary.md")).read_text())
    return out
