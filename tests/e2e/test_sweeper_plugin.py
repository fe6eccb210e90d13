"""The lambda_star sweeper as a standalone Hydra plugin, driven by a tiny app of its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

APP = Path(__file__).parents[1] / "helpers" / "sweeper_app.py"


def sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the helper app with -m in cwd; the output is kept for the assertions."""
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(APP), "-m", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def calls(cwd: Path) -> list[float]:
    """The x of every job that ran, in order."""
    path = cwd / "calls.txt"
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def load(journal: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def test_grid_search_finds_the_best_feasible_point(tmp_path):
    proc = sweep(tmp_path)  # grid of 11 over x in [0, 1], score peaks at the infeasible 0.7
    assert proc.returncode == 0, proc.stderr
    summary = yaml.safe_load((tmp_path / "multirun" / "search_summary.yaml").read_text())
    assert summary["verdict"] == "feasible"
    assert summary["best_params"] == {"x": 0.5}
    assert summary["best_value"] == 1 - (0.5 - 0.7) ** 2
    assert summary["best_metrics"] == {"score": summary["best_value"], "cost": 0.5,
                                       "time/total_s": 0.001}
    assert summary["constraints"] == ["cost <= 0.5"]
    assert "λ* search (toy-demo): feasible best x=0.5: score=0.9600 | 11 completed, " \
           "5 infeasible, 0 failed" in proc.stdout
    # the study name and folder came from interpolated config values
    study = load(tmp_path / "studies" / "optuna" / "toy-demo.journal", "toy-demo")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert summary["trials"] == len(study.trials) == 11
    assert summary["completed"] == len(done) == 11
    assert summary["infeasible"] == sum(t.constraints["cost <= 0.5"] > 0 for t in done) == 5
    assert summary["failed"] == 0
    assert study.best_trial.params == {"x": 0.5}
    assert all(t.user_attrs["worker"] for t in done)
    assert sorted(calls(tmp_path)) == [round(0.1 * i, 6) for i in range(11)]


def test_callback_replaces_the_default_summary(tmp_path):
    proc = sweep(tmp_path, "hydra.sweeper.sampler=random", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.callback=sweeper_app.on_study_end")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((tmp_path / "callback.json").read_text())
    assert seen == {"study": "toy-demo", "trials": 3, "objective": "score",
                    "direction": "maximize", "constraints": [["cost", "<=", 0.5]],
                    "calls": "calls.txt"}
    assert not (tmp_path / "multirun" / "search_summary.yaml").exists()
    assert "λ* search" not in proc.stdout


def test_a_failing_job_is_a_fail_trial_and_the_study_goes_on(tmp_path):
    proc = sweep(tmp_path, "hydra.sweeper.grid_points=5", "fail_at=0.25",
                 "hydra.sweeper.storage_dir=null", "hydra.sweeper.study_name=null")
    assert proc.returncode == 0, proc.stderr
    assert sorted(calls(tmp_path)) == [0, 0.25, 0.5, 0.75, 1]
    study = load(tmp_path / "multirun" / "optuna" / "lambda_star.journal", "lambda_star")
    states = {t.params["x"]: t.state for t in study.trials}
    assert states == {0.0: TrialState.COMPLETE, 0.25: TrialState.FAIL, 0.5: TrialState.COMPLETE,
                      0.75: TrialState.COMPLETE, 1.0: TrialState.COMPLETE}
    failure = next(t for t in study.trials if t.state == TrialState.FAIL).user_attrs["failure"]
    assert failure == "RuntimeError: made-up failure at x=0.25"
    summary = yaml.safe_load((tmp_path / "multirun" / "search_summary.yaml").read_text())
    assert (summary["completed"], summary["failed"], summary["best_params"]) == (4, 1, {"x": 0.5})


def test_a_bad_constraint_is_a_one_line_config_error(tmp_path):
    proc = sweep(tmp_path, "hydra.sweeper.constraints=['cost < 0.5']")
    assert proc.returncode != 0
    assert ("SweeperConfigError: hydra.sweeper.constraints: 'cost < 0.5' is not "
            "'<metric> <= <number>' or '<metric> >= <number>'\n") in proc.stderr
    assert calls(tmp_path) == []  # raised before any job


def test_the_same_command_resumes_the_study(tmp_path):
    search = ("hydra.sweeper.sampler=random", "hydra.sweeper.n_trials=3")
    assert sweep(tmp_path, *search).returncode == 0
    first = calls(tmp_path)
    assert len(first) == 3
    again = sweep(tmp_path, *search)
    assert again.returncode == 0, again.stderr
    assert calls(tmp_path) == first  # every trial is done: none re-run
    assert "3 completed" in again.stdout
    more = sweep(tmp_path, "hydra.sweeper.sampler=random", "hydra.sweeper.n_trials=5")
    assert more.returncode == 0, more.stderr
    assert calls(tmp_path)[:3] == first and len(calls(tmp_path)) == 5


def test_the_search_stops_early_on_a_plateau_and_says_why(tmp_path):
    proc = sweep(tmp_path, "flat=true", "hydra.sweeper.sampler=gp", "hydra.sweeper.n_trials=12",
                 "hydra.sweeper.stop_patience=3", "hydra.sweeper.constraints=[]")
    assert proc.returncode == 0, proc.stderr
    summary = yaml.safe_load((tmp_path / "multirun" / "search_summary.yaml").read_text())
    # 3 start-up trials, then 3 without a gain beyond ±0.01: 6 of the cap's 12
    assert len(calls(tmp_path)) == summary["completed"] == 6
    assert summary["stopped"] == ("stopped after 6 trials: none of the last 3 beat the best "
                                  "before it by more than the noise (±0.0100); best 0.5000")
    assert summary["stopped"] in proc.stdout
    # without the rule the cap is reached
    other = tmp_path / "capped"
    other.mkdir()
    sweep(other, "flat=true", "hydra.sweeper.sampler=gp", "hydra.sweeper.n_trials=5",
          "hydra.sweeper.stop_patience=0", "hydra.sweeper.constraints=[]")
    assert len(calls(other)) == 5


def test_nonsense_settings_are_one_line_config_errors_before_any_job(tmp_path):
    for override, line in [
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be ≥ 1 (an integer; the "
                                     "most trials besides the parents)"),
        ("hydra.sweeper.grid_points=0", "hydra.sweeper.grid_points=0 must be ≥ 2 (an integer; "
                                        "points per interval, both ends included)"),
        ("hydra.sweeper.stop_min_delta=nan", "hydra.sweeper.stop_min_delta=nan must be ≥ 0 (a "
                                             "finite number; the noise where the job returns no "
                                             "interval)"),
        ("hydra.sweeper.max_failure_rate=-0.5", "hydra.sweeper.max_failure_rate=-0.5 must be in "
                                                "[0, 1] (a finite number; the share of trials "
                                                "that may fail)"),
        ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 must be ≥ 1 (an integer; trials "
                                   "handed to the launcher at once)"),
        ("hydra.sweeper.constraints=['cost <= 1e']", "hydra.sweeper.constraints: 'cost <= 1e' "
                                                     "is not '<metric> <= <number>' or "
                                                     "'<metric> >= <number>'"),
    ]:
        proc = sweep(tmp_path, override)
        assert proc.returncode != 0 and f"SweeperConfigError: {line}\n" in proc.stderr, \
            proc.stderr[-2000:]
        assert calls(tmp_path) == []  # raised before any job
