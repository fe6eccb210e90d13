"""`python -m app` end to end: real Hydra, mergekit, lm-eval and MLflow on the toy pair."""

import os
import subprocess
import sys

import mlflow
import pytest

from helpers import LIMIT, run_app, runs

def test_single_run_logs_metrics_params_and_artifacts(tmp_path):
    proc = run_app(tmp_path, LIMIT, "lambda=0.3")
    assert "linear λ=0.3" in proc.stdout and "toy_mc/ece=" in proc.stdout
    client, found = runs(tmp_path)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert 0 <= m["toy_mc/ece"] <= 1 and 0 <= m["toy_gen/acc"] <= 1
    assert m["toy_mc/acc"] == m["toy_mc/acc_lm_eval"]  # raw accuracy == lm-eval's own acc
    assert run.data.tags["merge_engine"] == "direct"  # the default linear merge's fast path
    assert m["toy_mc/n"] == 40
    p = run.data.params
    assert p["lambda"] == "0.3" and p["method.name"] == "linear" and p["model.name"] == "toy"
    assert p["version.mergekit"] == "0.1.5" and p["version.lm_eval"] == "0.4.13"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "mergekit.yaml", "lm_eval_results.json", "samples"} <= names
    assert m["toy_mc/acc_ci_low"] <= m["toy_mc/acc"] <= m["toy_mc/acc_ci_high"]
    assert m["toy_mc/ece_ci_low"] <= m["toy_mc/ece"] <= m["toy_mc/ece_ci_high"]
    # the per-sample table reproduces the logged metrics exactly
    import json

    from app.calibration import calibration_metrics

    path = client.download_artifacts(run.info.run_id, "samples/toy_mc.jsonl", str(tmp_path))
    rows = [json.loads(line) for line in open(path)]
    again = calibration_metrics([r["logliks"] for r in rows], [r["gold"] for r in rows], 15,
                                n_boot=1000, seed=0)
    for key, value in again.items():
        assert m[f"toy_mc/{key}"] == value, key


def test_multirun_grid_has_one_parent_and_children(tmp_path):
    proc = run_app(tmp_path, "-m", LIMIT, "method=slerp,linear", "lambda=0,0.5,1")
    client, found = runs(tmp_path)
    parents = [r for r in found if r.data.tags.get("role") == "sweep"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId")]
    refs = {r.data.tags["lambda"]: r for r in found if r.data.tags.get("role") == "reference"}
    assert len(parents) == 1 and len(children) == 6 and set(refs) == {"0", "1"}, proc.stdout
    assert len(found) == 9 and all(r.info.status == "FINISHED" for r in found)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    by_key = {(r.data.tags["method"], r.data.params["lambda"]): r for r in children}
    # λ=0 is PT and λ=1 is IT whatever the method: those jobs reuse the reference evaluations
    for lam, ref in (("0.0", refs["0"]), ("1.0", refs["1"])):
        for method in ("slerp", "linear"):
            run = by_key[(method, lam)]
            assert run.data.tags["reused_from"] == ref.info.run_id
            for metric in ("toy_mc/acc", "toy_mc/ece", "toy_gen/acc"):
                assert run.data.metrics[metric] == ref.data.metrics[metric]
    mid = by_key[("linear", "0.5")].data.metrics
    assert "reused_from" not in by_key[("linear", "0.5")].data.tags
    assert mid["mean/acc"] == pytest.approx((mid["toy_mc/acc"] + mid["toy_gen/acc"]) / 2)
    # the parent holds the sweep's summary: the best λ per method
    best = parents[0].data.params
    assert {"best/slerp/lambda", "best/linear/lambda"} <= set(best)
    names = {a.path for a in client.list_artifacts(by_key[("linear", "0.5")].info.run_id,
                                                   "reliability")}
    assert "reliability/toy_mc.png" in names


@pytest.mark.parametrize("override,expect", [
    ("method=slerpp", "method=slerpp is not a known option (did you mean 'slerp'?); valid:"),
    ("method.lambda_rnge=[0,2]", "method.lambda_rnge is not a config key (did you mean 'lambda_range'?)"),
    ("lambda=abc", "lambda='abc' is not a valid float"),
    ("model.pt=/nonexistent/pt", "model.pt='/nonexistent/pt': no model there"),
    ("lambda=1.5", "lambda=1.5 is outside method=linear's range [0, 1]"),
])
def test_bad_override_is_one_line_and_leaves_no_run(tmp_path, override, expect):
    proc = run_app(tmp_path, override, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    if (tmp_path / "mlruns" / "mlflow.db").exists():
        assert runs(tmp_path)[1] == []


def test_bad_value_in_a_sweep_is_found_before_any_job(tmp_path):
    proc = run_app(tmp_path, "-m", LIMIT, "lambda=0,abc", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: lambda='abc' is not a valid float"]
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_a_sweep_over_two_fine_tunes_evaluates_each_sets_references(tmp_path):
    """model.it=A,B: two model sets under one name, each with its own IT reference (the base
    they share is evaluated once), before any job."""
    import shutil

    from app.config import TOY_DIR

    copy = tmp_path / "it_copy"
    shutil.copytree(TOY_DIR / "it", copy)
    proc = run_app(tmp_path, "-m", f"model.it={TOY_DIR / 'it'},{copy}", "lambda=0.5",
                   "task.limit=4", "task.bootstrap=0")
    assert proc.stdout.count("reference IT λ=1") == 2 and proc.stdout.count("reference PT") == 1
    assert proc.stdout.index("reference IT λ=1", proc.stdout.index("reference IT λ=1") + 1) \
        < proc.stdout.index("linear λ=0.5")
    _, found = runs(tmp_path)
    its = {r.data.params["model.it"] for r in found
           if r.data.tags.get("role") == "reference" and r.data.tags["lambda"] == "1"}
    assert its == {str(TOY_DIR / "it"), str(copy)}
