"""`python -m app.report` on a real sweep: files, numbers equal MLflow's, HTML renders."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line, run_app, runs
from helpers import CHROMIUM, CHROMIUM_ARGS


def report(tmp_path, *args, check=True):
    cmd = [sys.executable, "-m", "app.report", "--tracking-dir", f"{tmp_path}/mlruns", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run_app(tmp, "-m", "task.limit=60", "method=linear,slerp", "lambda=0.2,0.5,0.8")
    return tmp


def test_report_files_numbers_and_star(swept):
    out = swept / "out"
    proc = report(swept, "--out", str(out), "--ece-limit", "0.2")
    names = {p.name for p in out.iterdir()}
    assert {"frontier_toy_mc.png", "curves_toy_mc.png", "reliability_toy_mc.png", "table.md",
            "table.csv", "summary.md", "report.html"} <= names
    client, found = runs(swept)
    by_key = {(r.data.tags["method"], float(r.data.params["lambda"])): r.data.metrics
              for r in found if r.data.tags.get("role") == "job"}
    refs = {r.data.tags["lambda"]: r.data.metrics for r in found
            if r.data.tags.get("role") == "reference"}
    rows = list(csv.reader(open(out / "table.csv")))
    header, body = rows[0], rows[1:]
    assert header[:4] == ["model", "λ", "toy_mc acc", "toy_mc ECE"] and "toy_gen acc" in header
    assert [r[0] for r in body[:2]] == ["PT", "IT"] and len(body) == 2 + 6
    assert float(body[0][3]) == pytest.approx(refs["0"]["toy_mc/ece"], abs=5e-5)
    for r in body[2:]:  # every cell equals the MLflow metric (to the 4 decimals shown)
        m = by_key[(r[0], float(r[1]))]
        assert float(r[2]) == pytest.approx(m["toy_mc/acc"], abs=5e-5)
        assert float(r[3]) == pytest.approx(m["toy_mc/ece"], abs=5e-5)
    # the star sits at the best feasible λ on the selection documents, computed here straight
    # from the runs, and is reported with the report documents' numbers
    for method in ("linear", "slerp"):
        points = {lam: m for (meth, lam), m in by_key.items() if meth == method}
        points.setdefault(0.0, refs["0"])
        points.setdefault(1.0, refs["1"])
        feasible = [(-m["selection/toy_mc/acc"], m["selection/toy_mc/ece"], lam)
                    for lam, m in points.items() if m["selection/toy_mc/ece"] <= 0.2]
        best = min(feasible)[2]
        m = points[best]
        assert (f"**{method}**\n- λ* (best selection-set accuracy with selection-set ECE ≤ 0.2): "
                f"{best:g}; selection set: acc {m['selection/toy_mc/acc']:.4f}, ECE "
                f"{m['selection/toy_mc/ece']:.4f}; **report set** (the number to quote): acc "
                f"{m['report/toy_mc/acc']:.4f}, ECE {m['report/toy_mc/ece']:.4f}") in proc.stdout
    # a dominance claim carries its paired interval; its value is the logged difference
    claims = re.findall(r"  - λ=(\S+) vs IT: Δacc ([-+]\d\.\d{4}) \[([-+]\d\.\d{4}), "
                        r"([-+]\d\.\d{4})\], ΔECE ([-+]\d\.\d{4})", proc.stdout)
    assert len(claims) == 2 and "significantly (the paired interval excludes 0):" in proc.stdout
    for method, (lam, dacc, low, high, dece) in zip(("linear", "slerp"), claims):
        m, it = by_key[(method, float(lam))], refs["1"]
        assert float(dacc) == pytest.approx(m["toy_mc/acc"] - it["toy_mc/acc"], abs=1e-4)
        assert float(dece) == pytest.approx(m["toy_mc/ece"] - it["toy_mc/ece"], abs=1e-4)
        assert float(low) <= float(dacc) <= float(high)
    parent = next(r for r in found if r.data.tags.get("role") == "sweep")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed")
def test_html_report_renders_with_its_figures(swept):
    from playwright.sync_api import sync_playwright

    out = swept / "html"
    report(swept, "--out", str(out))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto((out / "report.html").as_uri())
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        assert len(sizes) == 3 and all(done and width > 300 for done, width in sizes)
        assert page.locator("table tr").count() == 1 + 8
        browser.close()


def test_errors_are_one_line(swept, tmp_path):
    for args, expect in [
        (["--tracking-dir", str(tmp_path / "none")], "no MLflow store at"),
        (["--experiment", "nope"], "--experiment 'nope' does not exist; found: merge-toy"),
        (["--tasks", "mmlu_pro"], "--tasks mmlu_pro: not in these runs; found: toy_mc, toy_gen"),
    ]:
        proc = report(swept, *args, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], proc.stderr


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probed")
    run_app(tmp, "-m", "probe=toy", "task.limit=40", "task.bootstrap=0", "method=linear,slerp",
            "lambda=0.25,0.5,0.75")
    return tmp


def test_a_probed_sweep_reports_behaviour_next_to_internals(probed):
    from scipy import stats

    from app.report.internals import verdict

    out = probed / "out"
    proc = report(probed, "--out", str(out))
    assert {"verdicts.png", "probe_curves.png", "correlations.png", "correlations.csv"} <= \
        {p.name for p in out.iterdir()}
    _, found = runs(probed)
    merges = [(r.data.tags["method"], r.data.metrics) for r in found
              if r.data.tags.get("role") == "job"]
    refs = {r.data.tags["lambda"]: r.data.metrics for r in found
            if r.data.tags.get("role") == "reference"}
    pt, it = refs["0"], refs["1"]
    phenomena = ["discourse", "morphology", "reasoning", "semantics"]
    assert "probe" not in open(out / "table.csv").readline()  # probes are not tasks
    # the shares in the summary, counted here straight from the runs
    for method in ("linear", "slerp"):
        for side, keys in (("behaviour", ["toy_mc/acc", "toy_gen/acc"]),
                           ("internals", [f"probe/{p}/acc" for p in phenomena])):
            said = [verdict(m[k], pt[k], it[k]) for meth, m in merges if meth == method
                    for k in keys]
            cells = " | ".join(f"{said.count(v) / len(said):.0%}"
                               for v in ("better", "between", "worse"))
            assert f"| {method} | {side} | {cells} | {len(said)} |" in proc.stdout
    rows = list(csv.DictReader(open(out / "correlations.csv")))
    assert {(r["task"], r["phenomenon"]) for r in rows} == {
        (t, p) for t in ("toy_mc", "toy_gen") for p in phenomena}
    for r in rows:
        x = [m[f"{r['task']}/acc"] for _, m in merges]
        y = [m[f"probe/{r['phenomenon']}/acc"] for _, m in merges]
        assert int(r["n_merges"]) == len(x) == 6
        if len(set(y)) > 1:
            assert float(r["pearson"]) == pytest.approx(stats.pearsonr(x, y).statistic,
                                                        abs=5e-5)
            assert float(r["spearman"]) == pytest.approx(stats.spearmanr(x, y).statistic,
                                                         abs=5e-5)
            assert float(r["pearson_ci_low"]) <= float(r["pearson"]) + 5e-5


def test_a_judged_sweep_past_it_draws_generations_and_the_extrapolation_table(tmp_path):
    """expo (λ up to 3) with the heuristic judge: utility vs distinctness along λ, and the
    λ > 1 rows next to IT, each cell the run's own metric."""
    run_app(tmp_path, "-m", "task.limit=20", "task.bootstrap=0", "method=expo",
            "lambda=0.5,1.5", "judge=heuristic", "judge.limit=2", "judge.k=2")
    out = tmp_path / "out"
    proc = report(tmp_path, "--out", str(out))
    assert (out / "generation.png").stat().st_size > 10_000
    _, found = runs(tmp_path)
    past = next(r.data.metrics for r in found if r.data.tags.get("role") == "job"
                and float(r.data.params["lambda"]) == 1.5)
    table = proc.stdout.split("### Extrapolation past IT (λ > 1)")[1]
    row = next(line for line in table.splitlines() if line.startswith("| expo | 1.5 |"))
    cells = row.strip("| ").split(" | ")
    assert float(cells[2]) == pytest.approx(past["toy_mc/acc"], abs=5e-5)
    assert float(cells[-1]) == pytest.approx(past["judge/degeneration_rate"], abs=5e-5)
    assert float(cells[-2]) == pytest.approx(past["judge/distinct_responses"], abs=5e-5)
    assert "| IT | 1 |" in table


def test_a_sweep_over_the_toy_family_reports_each_pair_and_the_scaling(tmp_path):
    """model=toy_s,toy: each pair's references are evaluated before the jobs, its jobs go to
    its own experiment, and the report draws the scaling figures and Table 1 from them."""
    proc = run_app(tmp_path, "-m", "model=toy_s,toy", "method=linear", "lambda=0.3,0.6",
                   "task.limit=60", "task.bootstrap=0")
    assert proc.stdout.count("reference PT λ=0") == 2
    out = tmp_path / "out"
    rep = report(tmp_path, "--out", str(out))
    names = {p.name for p in out.iterdir()}
    assert {"toy_s", "toy", "scaling_toy_mc.png", "confidence_toy_mc.png", "scaling.md"} <= names
    assert (out / "toy_s" / "frontier_toy_mc.png").exists()
    assert (out / "toy" / "summary.md").exists()
    _, found = runs(tmp_path)
    refs = {(r.data.tags["pair"], r.data.tags["lambda"]): r.data for r in found
            if r.data.tags.get("role") == "reference"}
    table = (out / "scaling.md").read_text()
    assert "2 pairs" in rep.stdout
    for pair in ("toy_s", "toy"):
        pt, it = refs[(pair, "0")], refs[(pair, "1")]
        size = int(pt.tags["parameters"])
        row = next(line for line in table.splitlines()
                   if line.startswith(f"| {pair} | {size:,} |"))
        cells = row.strip("| ").split(" | ")
        assert float(cells[2]) == pytest.approx(pt.metrics["toy_mc/acc"], abs=5e-5)
        assert float(cells[3]) == pytest.approx(it.metrics["toy_mc/acc"], abs=5e-5)
        assert float(cells[5]) == pytest.approx(it.metrics["toy_mc/ece"], abs=5e-5)
    sizes = {pair: int(refs[(pair, "0")].tags["parameters"]) for pair in ("toy_s", "toy")}
    assert sizes["toy_s"] < sizes["toy"]


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_job")
    run_app(tmp, "-m", "task.limit=20", "task.bootstrap=0", "method=linear", "lambda=0.5")
    return tmp


def _parent_and_job(tmp):
    client, found = runs(tmp)
    parent = next(r for r in found if r.data.tags.get("role") == "sweep")
    job = next(r for r in found if r.data.tags.get("role") == "job")
    return client, parent, job


def test_an_out_that_is_a_file_is_refused_before_any_work(one_job):
    mine = one_job / "notes.txt"
    mine.write_text("mine")
    line = one_line(report(one_job, "--out", str(mine), check=False))
    assert line == (f"error: --out '{mine}': it is a file; give a folder (a new one, or an "
                    f"existing one to add the report to)")
    assert mine.read_text() == "mine"
    client, parent, _ = _parent_and_job(one_job)
    assert client.list_artifacts(parent.info.run_id, "report") == []


def test_a_run_whose_artifacts_are_gone_is_named_and_no_report_is_left(one_job, tmp_path):
    from urllib.parse import urlparse

    client, parent, job = _parent_and_job(one_job)
    folder = Path(urlparse(job.info.artifact_uri).path).parent  # the run's artifact folder
    aside = tmp_path / "aside"
    folder.rename(aside)
    try:
        line = one_line(report(one_job, check=False))  # the default out: reports/merge-toy
    finally:
        aside.rename(folder)
    run_id = job.info.run_id
    assert line.startswith(f"error: run {run_id} (linear λ=0.5) has lost its artifact ")
    assert line.endswith(f"mlflow runs delete --run-id {run_id}) and run the sweep command "
                         f"again: it redoes only the missing jobs")
    assert not (one_job / "reports").exists()
    assert client.list_artifacts(parent.info.run_id, "report") == []


def test_a_killed_sweep_is_closed_and_reported_incomplete(tmp_path):
    import signal
    import time

    from helpers import finished_jobs

    grid = ["-m", "task.limit=20", "task.bootstrap=0", "lambda=0.2,0.5,0.8"]
    proc = subprocess.Popen([sys.executable, "-m", "app", *grid,
                             f"tracking.dir={tmp_path}/mlruns",
                             f"hydra.sweep.dir={tmp_path}/multirun"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and finished_jobs(tmp_path) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rep = report(tmp_path, "--out", str(tmp_path / "out"))
    _, found = runs(tmp_path)
    assert all(r.info.status != "RUNNING" for r in found)  # the report closed the dead runs
    parent = next(r for r in found if r.data.tags.get("role") == "sweep")
    assert parent.info.status == "FAILED"
    done = {r.data.tags["lambda"] for r in found
            if r.data.tags.get("role") == "job" and r.info.status == "FINISHED"}
    warning = rep.stderr.strip().splitlines()[-1]
    assert warning.startswith(f"warning: sweep {parent.info.run_id} is incomplete: it ended "
                              f"FAILED (process {proc.pid} ended before the run finished "
                              f"(killed?)); {len(done)} of 3 jobs finished; ")
    assert warning.endswith("run the same sweep command again to finish it (finished jobs "
                            "are skipped)")
    for lam in {"0.2", "0.5", "0.8"} - done:
        assert f"lambda={lam}" in warning
    assert "INCOMPLETE" in rep.stdout.splitlines()[0] and "Traceback" not in rep.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert summary.startswith(f"**Incomplete sweep.** {warning.removeprefix('warning: ')}")


def test_two_model_sets_with_one_name_are_reported_apart(tmp_path):
    """model.it=IT,copy of IT: two sets named toy, each with its own references and rows."""
    import shutil

    from app.config import TOY_DIR

    shutil.copytree(TOY_DIR / "it", tmp_path / "it_copy")
    run_app(tmp_path, "-m", "task.limit=20", "task.bootstrap=0", "method=linear", "lambda=0.5",
            f"model.it={TOY_DIR / 'it'},{tmp_path / 'it_copy'}")
    out = tmp_path / "out"
    rep = report(tmp_path, "--out", str(out))
    assert "2 pairs" in rep.stdout
    for folder in ("toy-it-it", "toy-it-it_copy"):
        body = list(csv.reader(open(out / folder / "table.csv")))[1:]
        assert [r[:2] for r in body] == [["PT", "0"], ["IT", "1"], ["linear", "0.5"]]
    table = (out / "scaling.md").read_text()
    assert "| toy (it=…/it) | " in table and "| toy (it=…/it_copy) | " in table
