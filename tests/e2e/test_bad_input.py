"""What a user sees for the faults that touch their files, their sweeps or their store."""

import time

from helpers import free_port, one_line, run_app, runs

FAST = "task.limit=10"


def test_save_dir_with_the_users_files_is_refused_and_untouched(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("hi")
    line = one_line(run_app(tmp_path, FAST, f"merge.save_dir={keep}", "force=true", check=False))
    assert "holds files this project did not write" in line
    assert [p.name for p in keep.iterdir()] == ["thesis.txt"]
    assert (keep / "thesis.txt").read_text() == "hi"
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_a_placement_of_the_parents_that_does_not_exist_is_one_line(tmp_path):
    line = one_line(run_app(tmp_path, FAST, "merge.parents_on=devise", check=False))
    assert line == ("error: merge.parents_on=devise is not valid (did you mean 'device'?); "
                    "use one of auto, device, host")
    line = one_line(run_app(tmp_path, FAST, "merge.resident_share=1.5", check=False))
    assert line.startswith("error: merge.resident_share=1.5 must be in (0, 1]")


def test_a_finished_job_asked_for_its_model_saves_it_without_evaluating(tmp_path):
    run_app(tmp_path, FAST, "lambda=0.3")
    out = tmp_path / "merged"
    proc = run_app(tmp_path, FAST, "lambda=0.3", f"merge.save_dir={out}")
    assert "[done: run " in proc.stdout and f"saved to {out}]" in proc.stdout
    assert (out / "model.safetensors").is_file() and (out / "merge_info.json").is_file()
    _, found = runs(tmp_path)
    assert len(found) == 1 and found[0].data.tags["saved_to"] == str(out)


def test_every_swept_value_is_checked_before_the_first_job(tmp_path):
    line = one_line(run_app(tmp_path, "-m", FAST, "lambda=0.5,1.5", check=False))
    assert line == "error: lambda=1.5 is outside method=linear's range [0, 1]"
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_a_tracking_server_that_is_not_there_is_one_line_quickly(tmp_path):
    start = time.perf_counter()
    proc = run_app(tmp_path, FAST, "tracking=server",
                   f"tracking.uri=http://127.0.0.1:{free_port()}", check=False)
    assert "no MLflow server answered within 5 s" in one_line(proc)
    assert time.perf_counter() - start < 60


def test_a_study_whose_runs_left_the_store_is_refused(tmp_path):
    search = ["-m", "search=lambda_star", FAST, "hydra.sweeper.n_trials=1"]
    run_app(tmp_path, *search)
    (tmp_path / "mlruns" / "mlflow.db").unlink()  # a user starting afresh, the journal kept
    line = one_line(run_app(tmp_path, *search, check=False))
    assert "has 3 finished trial(s) whose runs are not in the store" in line
    assert "lambda_star-merge-toy.journal" in line


def test_two_identical_sweeps_at_once_run_each_job_once(tmp_path):
    import os
    import subprocess
    import sys

    run_app(tmp_path, FAST, "lambda=0")  # the store exists: both sweeps open it
    cmd = [sys.executable, "-m", "app", "-m", FAST, "lambda=0.2,0.4,0.6",
           f"tracking.dir={tmp_path}/mlruns"]
    procs = [subprocess.Popen(cmd + [f"hydra.sweep.dir={tmp_path}/sweep{i}"],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    _, found = runs(tmp_path)
    finished = [r for r in found if r.info.status == "FINISHED" and "fingerprint" in r.data.tags]
    fingerprints = [r.data.tags["fingerprint"] for r in finished]
    assert len(fingerprints) == len(set(fingerprints)) == 1 + 2 + 3  # λ=0 job, refs, 3 jobs
    assert not [r for r in found if r.info.status == "RUNNING"]


def test_a_key_in_the_environment_or_typed_in_the_wrong_place_is_nowhere(tmp_path):
    key = "sk-test-0123456789abcdef"
    env = {"OPENAI_API_KEY": key, "MY_SECRET": key}
    run_app(tmp_path, FAST, "judge=openai", f"judge.base_url=http://127.0.0.1:{free_port()}/v1",
            "judge.model=${oc.env:MY_SECRET}", "judge.limit=1", "judge.k=1", env=env)
    for bad in ("lambda=${oc.env:MY_SECRET}", "+x=${oc.env:MY_SECRET}",
                f"judge=openai judge.api_key_env={key}"):
        proc = run_app(tmp_path, FAST, *bad.split(), check=False, env=env)
        assert key not in one_line(proc)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == []
