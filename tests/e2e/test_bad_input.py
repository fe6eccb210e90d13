"""What a user sees for the faults that touch their files, their sweeps or their store."""

import time

from helpers import free_port, run_app, runs

FAST = "task.limit=10"


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        proc.stderr[-2000:]
    return lines[0]


def test_save_dir_with_the_users_files_is_refused_and_untouched(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("hi")
    line = one_line(run_app(tmp_path, FAST, f"merge.save_dir={keep}", "force=true", check=False))
    assert "holds files this project did not write" in line
    assert [p.name for p in keep.iterdir()] == ["thesis.txt"]
    assert (keep / "thesis.txt").read_text() == "hi"
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_a_finished_job_asked_for_its_model_saves_it_without_evaluating(tmp_path):
    run_app(tmp_path, FAST, "lambda=0.3")
    out = tmp_path / "merged"
    proc = run_app(tmp_path, FAST, "lambda=0.3", f"merge.save_dir={out}")
    assert f"[done: run " in proc.stdout and f"saved to {out}]" in proc.stdout
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
