"""The promises kept by the newer features, through the real command: one line before any run,
nothing left RUNNING, no silent mix-up, no value read from the environment in a record."""

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from helpers import one_line, run_app, runs

from app.config import TOY_DIR

BIG = 2**32  # one past the largest seed the random generators take
SECRET = "s3cr3t-experiment-name-value"


@pytest.mark.parametrize("overrides,line", [
    (["model=toy_pool", "model.experts.1.path=${toy:pool/job}"],
     "model.experts[1].path is the same model as model.experts[0].path ("),
    (["model=toy_pool", "model.experts.2.weight=nan"],
     "model.experts[2].weight=nan is not finite; use a number such as 1.0"),
    (["model=toy_pool", "model.experts=[]"],
     "model.experts=[]: an expert pool needs at least one expert"),
    ([f"seed={BIG}"], f"seed={BIG} is not a valid seed; use an integer from 0 to {BIG - 1}"),
    ([f"task.selection.seed={BIG}"], f"task.selection.seed={BIG} is not a valid seed"),
    (["probe=toy", f"probe.seed={BIG}"], f"probe.seed={BIG} is not a valid seed"),
    (["tracking.experiment=merge-${oc.env:EXPERIMENT_SECRET}"],
     "tracking.experiment holds a value read from the environment"),
    (["judge=heuristic", "judge.limit=0"], "judge.limit=0 must be ≥ 1 (or null: every prompt)"),
    (["task.max_gen_toks=0"], "task.max_gen_toks=0 must be a positive integer"),
], ids=["same expert twice", "NaN weight", "no expert", "seed", "selection seed", "probe seed",
        "experiment from env", "no prompt", "no token"])
def test_bad_values_are_one_line_before_any_run(tmp_path, overrides, line):
    proc = run_app(tmp_path, *overrides, check=False, env={"EXPERIMENT_SECRET": SECRET})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert one_line(proc).startswith(f"error: {line}")
    assert "Traceback" not in proc.stderr and SECRET not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlruns").exists()  # not even a store: nothing was run


def test_a_split_that_leaves_a_set_empty_is_one_line_before_any_run(tmp_path):
    """One document split over selection and report (the toy's own validation split not used):
    one set would be empty and its report/* metrics missing without a word."""
    proc = run_app(tmp_path, "task.limit=1", "task.selection.source=share", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(  # (the tasks' loading bars above)
        "error: task toy_mc: its 1 document(s) all fall in one set of the selection/report split")
    assert runs(tmp_path)[1] == []


def test_a_save_that_would_replace_the_store_is_refused_before_any_run(tmp_path):
    save = tmp_path / "save"
    cmd = [sys.executable, "-m", "app", f"merge.save_dir={save}",
           f"tracking.dir={save}/mlruns", f"hydra.run.dir={tmp_path}/outputs"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and one_line(proc) == (
        f"error: merge.save_dir='{save}' would replace tracking.dir='{save}/mlruns' (or what "
        f"holds it): a save never replaces what the run reads or writes; give another folder")
    assert not save.exists()


@pytest.mark.parametrize("name,content,line", [
    ("p.jsonl", b'{"instruction": "hi"}\n{oops\n', "line 2 is not JSON (Expecting property"),
    ("p.txt", b"caf\xe9\n", "is not UTF-8 (byte 0xe9 at 3); save it as UTF-8"),
    ("p.json", b"[1, 2]", "no prompts, or an entry without an 'instruction' or 'prompt'"),
], ids=["bad line", "not utf-8", "no prompt field"])
def test_a_judges_prompt_file_is_read_whole_before_any_run(tmp_path, name, content, line):
    (tmp_path / name).write_bytes(content)
    proc = run_app(tmp_path, "judge=heuristic", f"judge.prompts={tmp_path / name}", check=False)
    assert one_line(proc).startswith(f"error: judge.prompts='{tmp_path / name}'")
    assert line in one_line(proc) and not (tmp_path / "mlruns").exists()


def test_a_study_database_that_cannot_be_opened_is_one_line_before_any_run(tmp_path):
    proc = run_app(tmp_path, "-m", "search=lambda_star", "task.limit=4",
                   "hydra.sweeper.storage=postgresql://me:pw@127.0.0.1:1/optuna", check=False)
    line = one_line(proc)
    assert line.startswith("error: hydra.sweeper.storage='postgresql://me:***@127.0.0.1:1/"
                           "optuna' cannot be opened (") and ":pw@" not in proc.stderr
    assert not (tmp_path / "mlruns").exists()  # no reference evaluated, no parent run


def test_an_over_long_value_is_cut_in_its_error_line(tmp_path):
    far = tmp_path / ("x" * 4000)
    proc = run_app(tmp_path, f"model.it={far}", check=False)
    line = one_line(proc)
    assert proc.returncode == 2 and len(line) < 400 and "…" in line
    assert line.count("xxxxxxxxxx…") <= 1  # the value once, cut, not its OS error's copy too


def test_a_sweep_folder_that_cannot_be_made_is_one_line_and_leaves_no_run(tmp_path):
    (tmp_path / "a_file").write_text("")
    cmd = [sys.executable, "-m", "app", "-m", "lambda=0.5", "task.limit=4",
           f"tracking.dir={tmp_path}/mlruns", f"hydra.sweep.dir={tmp_path}/a_file/sweep"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert one_line(proc) == (f"error: hydra.sweep.dir='{tmp_path}/a_file/sweep' cannot be "
                              f"created (Not a directory); give a folder you can write")
    assert not (tmp_path / "mlruns").exists()


def nan_it(tmp_path):
    """The toy IT with NaN in one norm: every merge with it gives NaN log-likelihoods."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "it_nan"
    shutil.copytree(TOY_DIR / "it", dst)
    tensors = load_file(dst / "model.safetensors")
    tensors["model.norm.weight"][:] = float("nan")
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_failed_job_is_the_sweep_parents_reason_and_float32_gets_no_dtype_advice(tmp_path):
    proc = run_app(tmp_path, "-m", f"model.it={nan_it(tmp_path)}", "lambda=0.5",
                   "task.limit=4", "task.bootstrap=0", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "(model.dtype=float32)" in last and "prefer model.dtype" not in last
    _, found = runs(tmp_path)
    [parent] = [r for r in found if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"].startswith(
        "1 job(s) failed (first: the merged model gives NaN/inf")
    assert all(r.info.status != "RUNNING" for r in found)


def test_a_store_locked_mid_sweep_is_one_line_and_the_next_start_closes_its_runs(tmp_path):
    cmd = [sys.executable, "-m", "app", "-m", "lambda=0,0.5", "task.limit=4",
           "task.bootstrap=0", f"tracking.dir={tmp_path}/mlruns",
           f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stdout:  # the first job is done: now the store stops taking writes
        if line.startswith("linear λ=0 "):
            break
    lock = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    out, err = proc.communicate(timeout=600)
    lock.execute("ROLLBACK")
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(
        "error: the tracking store cannot be written (database is locked); make tracking.dir "
        "writable and run the same command again")
    again = run_app(tmp_path, "-m", "lambda=0,0.5", "task.limit=4", "task.bootstrap=0")
    assert "[done: run" in again.stdout and "linear λ=0.5" in again.stdout
    assert all(r.info.status != "RUNNING" for r in runs(tmp_path)[1])
