"""MLflow tracking: resume by fingerprint, recovery from SIGKILL, concurrent writers, the UI."""

import os
import signal
import sqlite3
import subprocess
import sys
import time


from test_app import LIMIT, run_app, runs

GRID = ["-m", LIMIT, "method=linear", "lambda=0.2,0.4,0.6,0.8"]


def child_runs(tmp_path):
    _, found = runs(tmp_path)
    return [r for r in found if r.data.tags.get("role") == "job"]


def finished_jobs(tmp_path) -> int:
    """Read-only count straight from SQLite: an MLflow client here would race the sweep's
    own schema creation."""
    db = tmp_path / "mlruns" / "mlflow.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(
                "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'role' AND tags.value = 'job' AND runs.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_rerun_skips_finished_jobs_and_force_redoes_them(tmp_path):
    run_app(tmp_path, *GRID)
    first = {r.data.tags["fingerprint"]: r.data.metrics for r in child_runs(tmp_path)}
    again = run_app(tmp_path, *GRID)
    assert again.stdout.count("[done: run") == 4
    _, found = runs(tmp_path)
    assert len(found) == 7  # 1 parent + 2 references + 4 children, as after the first run
    run_app(tmp_path, *GRID[:-1], "lambda=0.4", "force=true")
    children = child_runs(tmp_path)
    assert len(children) == 5
    for r in children:  # the forced re-run reproduces the metrics exactly
        assert r.data.metrics["toy_mc/ece"] == first[r.data.tags["fingerprint"]]["toy_mc/ece"]


def test_sigkill_then_rerun_completes_only_the_rest(tmp_path):
    cmd = [sys.executable, "-m", "app", *GRID, f"tracking.dir={tmp_path}/mlruns",
           f"hydra.sweep.dir={tmp_path}/multirun"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and finished_jobs(tmp_path) < 2:  # kill after two jobs
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = {r.data.tags["fingerprint"] for r in child_runs(tmp_path)
                 if r.info.status == "FINISHED"}
    assert 2 <= len(killed_at) < 4

    rerun = run_app(tmp_path, *GRID)
    assert rerun.stdout.count("[done: run") == len(killed_at)
    _, found = runs(tmp_path)
    assert not [r for r in found if r.info.status == "RUNNING"]
    finished = [r for r in child_runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(finished) == 4 and len({r.data.tags["fingerprint"] for r in finished}) == 4
    for r in found:  # a run the kill interrupted is FAILED with the reason, not RUNNING
        if r.info.status == "FAILED":
            assert "ended before the run finished" in r.data.tags["failure_reason"]


def test_four_joblib_workers_lose_nothing(tmp_path):
    lambdas = "lambda=0.1,0.2,0.3,0.4,0.6,0.7,0.8,0.9"
    run_app(tmp_path, "-m", "task.limit=20", "method=linear", lambdas,
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=4")
    children = child_runs(tmp_path)
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["pid"] for r in children}) > 1  # really several processes
    assert all("toy_mc/ece" in r.data.metrics for r in children)
