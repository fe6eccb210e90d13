"""The λ* search: a real Optuna study driven by the project's Hydra sweeper plugin."""

import optuna
import yaml

from helpers import one_line, run_app, runs

SEARCH = ["-m", "search=lambda_star", "task.limit=60"]


def study_trials(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "mlruns" / "optuna" / "lambda_star-merge-toy.journal")))
    return optuna.load_study(study_name="lambda_star-merge-toy", storage=storage).trials


def test_search_finds_a_feasible_lambda_star_and_resumes(tmp_path):
    proc = run_app(tmp_path, *SEARCH, "hydra.sweeper.n_trials=3")
    assert "λ* search (lambda_star-merge-toy): feasible best lambda=" in proc.stdout
    trials = study_trials(tmp_path)
    assert len(trials) == 5 and [t.params["lambda"] for t in trials[:2]] == [0.0, 1.0]
    summary = yaml.safe_load(next((tmp_path / "multirun").rglob("lambda_star.yaml")).read_text())
    best = summary["best_metrics"]
    # chosen on the selection documents, under the selection documents' ECE
    assert summary["objective"] == "selection/toy_mc/acc"
    assert summary["verdict"] == "feasible" and best["selection/toy_mc/ece"] <= 0.15
    feasible = [t.value for t in trials
                if t.user_attrs["metrics"]["selection/toy_mc/ece"] <= 0.15]
    assert summary["best_value"] == max(feasible) == best["selection/toy_mc/acc"]
    assert summary["infeasible"] == sum(t.user_attrs["metrics"]["selection/toy_mc/ece"] > 0.15
                                        for t in trials)
    # reported on the other documents, with the paired gain over each parent
    assert summary["report_metrics"] == {k: best[k] for k in ("report/toy_mc/acc",
                                                              "report/toy_mc/ece")}
    assert f"report/toy_mc/acc={best['report/toy_mc/acc']:.4f}" in proc.stdout
    if 0 < summary["best_params"]["lambda"] < 1:
        line = summary["paired_gains"]["toy_mc"]
        assert "on the report set: vs IT: Δacc" in line and "vs PT: Δacc" in line
        assert line in proc.stdout
    assert summary["stopped"] == "ran every trial (n_trials)"
    client, found = runs(tmp_path)
    parent = next(r for r in found if r.data.tags.get("role") == "sweep")
    assert float(parent.data.params["best/lambda"]) == summary["best_params"]["lambda"]
    assert parent.data.metrics["best/selection/toy_mc/ece"] == best["selection/toy_mc/ece"]
    assert "search/trials.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "search")}

    again = run_app(tmp_path, *SEARCH, "hydra.sweeper.n_trials=4")  # continue: one more trial
    assert len(study_trials(tmp_path)) == 6
    assert again.stdout.count("linear λ=") == 1


def test_bad_search_config_fails_before_any_job(tmp_path):
    for override, expect in [
        ("hydra.sweeper.constraints=['toy_mc/eec <= 0.1']",
         "hydra.sweeper.constraints: the job returns no metric 'toy_mc/eec' (did you mean 'toy_mc/ece'?)"),
        ("hydra.sweeper.stop_patience=-1", "hydra.sweeper.stop_patience=-1 must be ≥ 0"),
        ("hydra.sweeper.objective=mmlu_pro/acc", "hydra.sweeper.objective: the job returns no metric"),
        ("~hydra.sweeper.params.lambda", "hydra.sweeper.params is empty"),
        ("hydra.sweeper.params.lambda='interval(0,2)'", "lambda=2 is outside method=linear's"),
    ]:
        proc = run_app(tmp_path, *SEARCH, override, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
        assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_a_failed_job_is_a_fail_trial_and_the_study_goes_on(tmp_path):
    # mmlu_pro's dataset cannot be reached offline: that job fails once it builds its tasks
    # (no check before the jobs can know); the study records it and finishes
    proc = run_app(tmp_path, *SEARCH, "hydra.sweeper.sampler=grid",
                   "hydra.sweeper.n_trials=2", "hydra.sweeper.seed_with_parents=false",
                   "~hydra.sweeper.params.lambda", "+hydra.sweeper.params.task='choice(toy,mmlu_pro)'")
    states = sorted(t.state.name for t in study_trials(tmp_path))
    assert states == ["COMPLETE", "FAIL"], proc.stdout
    assert "1 completed, 0 infeasible, 1 failed" in proc.stdout or \
           "1 completed, 1 infeasible, 1 failed" in proc.stdout
    _, found = runs(tmp_path)
    assert not [r for r in found if r.info.status == "RUNNING"]


def test_two_processes_share_one_study(tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "app", *SEARCH, "hydra.sweeper.n_trials=4",
           f"tracking.dir={tmp_path}/mlruns"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run_app(tmp_path, "-m", "task.limit=60", "lambda=0")  # create the store and references first
    procs = [subprocess.Popen(cmd + [f"hydra.sweep.dir={tmp_path}/sweep{i}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    trials = study_trials(tmp_path)
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2  # both processes contributed trials to the one study
    assert 6 <= len(trials) <= 8  # 2 parents + 4 trials, give or take a concurrent ask


def test_nonsense_sweeper_settings_are_refused_before_any_run(tmp_path):
    # each a value the search used to take: n_trials=0 or grid_points=0 ran only the parents
    # and said it "ran every trial"
    for override, line in [
        ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials=0 must be ≥ 1 (an integer; "
                                     "the most trials besides the parents)"),
        ("hydra.sweeper.grid_points=0", "error: hydra.sweeper.grid_points=0 must be ≥ 2 (an "
                                        "integer; points per interval, both ends included)"),
        ("hydra.sweeper.stop_min_delta=nan", "error: hydra.sweeper.stop_min_delta=nan must be ≥ "
                                             "0 (a finite number; the noise where the job "
                                             "returns no interval)"),
        ("hydra.sweeper.max_failure_rate=2", "error: hydra.sweeper.max_failure_rate=2.0 must be "
                                             "in [0, 1] (a finite number; the share of trials "
                                             "that may fail)"),
        ("hydra.sweeper.constraints=['selection/toy_mc/ece <= 0.1.5']",
         "error: hydra.sweeper.constraints: 'selection/toy_mc/ece <= 0.1.5' is not "
         "'<metric> <= <number>' or '<metric> >= <number>'"),
    ]:
        proc = run_app(tmp_path, *SEARCH, override, check=False)
        assert one_line(proc) == line
        assert "reference" not in proc.stdout
        assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []
