"""MLflow tracking: resume by fingerprint, concurrent writers (SIGKILL recovery: test_faults)."""

from helpers import LIMIT, child_runs, run_app, runs

GRID = ["-m", LIMIT, "method=linear", "lambda=0.2,0.4,0.6,0.8"]


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


def test_four_joblib_workers_lose_nothing(tmp_path):
    lambdas = "lambda=0.2,0.4,0.6,0.8"
    run_app(tmp_path, "-m", "task.limit=10", "method=linear", lambdas,
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=4")
    children = child_runs(tmp_path)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["pid"] for r in children}) > 1  # really several processes
    assert all("toy_mc/ece" in r.data.metrics for r in children)
