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
import csv
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from app.report import internals
from app.report.figures import curves_figure, frontier_figure, generation_figure, reliability_grid
from app.report.html import _html
from app.report.load import ReportError, Row, Sweep, load_sweep
from app.report.pool import markdown_table
from app.report.tables import (ECE_LIMIT, analysis, extrapolation_table, internals_section,
                               table_rows)

__all__ = ["ReportError", "Row", "Sweep", "load_sweep", "write_report", "write_family_report",
           "run"]


def write_family_report(sweeps: dict[str, Sweep], reader, out: Path, ece_limit: float,
                        tasks: list[str] | None = None) -> Path:
    """A sweep over several model sets: each set's own report in ``<out>/<set>/`` (its name
    made a folder name), and the scaling study over them (``app.report.scaling``):
    ``scaling_<task>.png``, ``confidence_<task>.png`` and ``scaling.md`` (Table 1 and the
    merges by size)."""
    from app.report import scaling

    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(sweeps.items(), key=lambda kv: (kv[1].parameters or 0, kv[0]))
    for pair, sweep in ordered:
        write_report(sweep, reader, out / re.sub(r"[^\w.-]+", "-", pair).strip("-"),
                     ece_limit, tasks, log=False)
    calibrated = sorted(set.intersection(*(set(s.tasks()[0]) for s in sweeps.values())))
    if tasks:
        calibrated = [t for t in calibrated if t in tasks]
    first = next(iter(sweeps.values()))
    text = [f"# Scaling: {len(sweeps)} pairs", ""] + _notes(first)
    if any(" (" in name for name in sweeps):
        text += ["Model sets that share a pair's name are told apart by the first model "
                 "setting that differs (e.g. `toy (it=…/it_copy)`).", ""]
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
    summary = "\n".join(_notes(sweep) + [analysis(sweep, t, ece_limit, evidence)
                                          for t in calibrated])
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


def _notes(sweep: Sweep) -> list[str]:
    """The lines that head a summary: what of the sweep is missing or failed."""
    return [f"**Incomplete sweep.** {sweep.incomplete}", ""] if sweep.incomplete else []


def run(argv: list[str] | None = None) -> Path:
    """Parse the command line, write the report, print where it is; ReportError for bad input.
    The report is written aside and moved into place once whole: a failure leaves nothing."""
    from app.tracking import open_reader

    ap = argparse.ArgumentParser(
        prog="python -m app.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n".join([
            "The alignment–calibration frontier of a sweep, from its MLflow runs: per method,",
            "accuracy against ECE along λ beside the PT and IT parents, the λ* each method reaches",
            "under --ece-limit, and every merge's scores.", "",
            "Input: a sweep's finished jobs and its parents' reference runs in the MLflow store",
            "(--tracking-dir or --tracking-uri). By default the latest sweep (the newest parent",
            "run of a `python -m app -m ...`) of any experiment; --experiment keeps to one",
            "experiment, --parent names a sweep's parent run id."]),
        epilog="\n".join([
            "Output, in --out (default reports/<experiment>/), also logged under report/ on the",
            "sweep's parent run; summary.md is printed at the end:",
            "  frontier_<task>.png     accuracy vs ECE per calibrated task, a path per method",
            "  curves_<task>.png       accuracy, ECE and mean confidence against λ",
            "  reliability_<task>.png  reliability diagrams across λ",
            "  table.md, table.csv     the parents, then method × λ",
            "  summary.md              λ*, the Pareto sets, dominance over IT",
            "  report.html             all of it in one self-contained page",
            "A sweep with probes, a judge or λ > 1 adds its figures and tables; a sweep over",
            "several pairs writes a report per pair and scaling.md; an expert pool, pool.md. A",
            "sweep with unfinished jobs is still reported, headed 'Incomplete sweep'.", "",
            "Examples:",
            "  python -m app.report          # the latest sweep in ./mlruns",
            "  python -m app.report --experiment merge-toy --ece-limit 0.15 --out reports/toy"]))
    ap.add_argument("--experiment", help="experiment name (default: the latest sweep's)")
    ap.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    ap.add_argument("--tasks", help="comma-separated tasks (default: all in the runs)")
    ap.add_argument("--ece-limit", type=float, default=ECE_LIMIT,
                    help=f"λ* constraint (default {ECE_LIMIT:g})")
    ap.add_argument("--out", help="output folder (default: reports/<experiment>)")
    ap.add_argument("--tracking-dir", default="mlruns", help="local store folder (default mlruns)")
    ap.add_argument("--tracking-uri", help="an MLflow tracking URI instead of --tracking-dir")
    args = ap.parse_args(argv)
    if args.out:
        check_out(Path(args.out))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per sample file
    if not args.tracking_uri and not (Path(args.tracking_dir) / "mlflow.db").exists():
        raise ReportError(f"no MLflow store at {args.tracking_dir}/mlflow.db: run "
                          f"`python -m app -m ...` first or pass --tracking-dir/--tracking-uri")
    reader = open_reader(args.tracking_uri, args.tracking_dir)
    sweeps = load_sweep(reader, args.experiment, args.parent)
    sweep = next(iter(sweeps.values()))
    out = Path(args.out or f"reports/{sweep.experiment}")
    check_out(out)
    tasks = args.tasks.split(",") if args.tasks else None
    from app.report.pool import is_pool, write_pool_report

    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        aside = Path(tmp) / "report"
        if len(sweeps) > 1:
            write_family_report(sweeps, reader, aside, args.ece_limit, tasks)
        elif is_pool(sweep):
            write_pool_report(sweep, reader, aside)
        else:
            write_report(sweep, reader, aside, args.ece_limit, tasks)
        if out.exists():
            shutil.copytree(aside, out, dirs_exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(aside, out)
    merges = sum(len(s.merges) for s in sweeps.values())
    print(f"report for sweep {sweep.parent_id} ({merges} merges"
          + (f", {len(sweeps)} pairs" if len(sweeps) > 1 else "")
          + (", INCOMPLETE" if sweep.incomplete else "") + f") in {out}/:")
    for p in sorted(out.iterdir()):
        print(f"  {p.name}")
    print((out / ("scaling.md" if len(sweeps) > 1 else "summary.md")).read_text())
    if sweep.incomplete:
        print(f"warning: {sweep.incomplete}", file=sys.stderr)
    return out


def check_out(out: Path) -> None:
    """ReportError unless ``out`` is, or can be made, a writable folder (checked first)."""
    for p in (out, *out.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            raise ReportError(f"--out {str(out)!r}: {'it' if p == out else p} is a file; give "
                              f"a folder (a new one, or an existing one to add the report to)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ReportError(f"--out {str(out)!r}: {p} is not writable; give a writable folder")
        return
