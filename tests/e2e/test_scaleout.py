"""Scale-out: the same grid through joblib, submitit and the chunked launchers; a shared
`mlflow server`; the SLURM preset; GPU placement; `chunked_local`'s console and signals."""

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.pipeline import pick_device
from helpers import mlflow_server
from hydra_plugins.chunked_submitit.chunked_submitit import gpu_for, plan_chunks
from helpers import finished_jobs, open_jobs, run_app, runs

GRID = ["-m", "task.limit=10", "method=linear", "lambda=0.2,0.8"]
METRICS = ("toy_mc/acc", "toy_mc/ece", "toy_mc/brier", "toy_gen/acc")


def job_metrics(tmp_path, experiment):
    client, found = runs(tmp_path)
    exp = client.get_experiment_by_name(experiment).experiment_id
    jobs = [r for r in found if r.info.experiment_id == exp and r.data.tags.get("role") == "job"]
    assert all(r.info.status == "FINISHED" for r in jobs)
    return {r.data.tags["lambda"]: tuple(r.data.metrics[m] for m in METRICS) for r in jobs}, jobs


def test_chunks_group_by_everything_but_lambda():
    jobs = [["method=linear", f"lambda={x}"] for x in (0, 0.5, 1)]
    jobs += [["method=slerp", f"lambda={x}"] for x in (0, 0.5, 1)]
    assert plan_chunks(jobs, 0) == [[0, 1, 2], [3, 4, 5]]
    assert plan_chunks(jobs, 2) == [[0, 1], [2], [3, 4], [5]]
    assert plan_chunks(jobs[::-1], 0) == [[0, 1, 2], [3, 4, 5]]  # order of first appearance
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(jobs, -1)


def test_gpu_placement_is_one_per_process_round_robin():
    assert [gpu_for(i, [0, 1, 2]) for i in range(5)] == [0, 1, 2, 0, 1]
    assert gpu_for(3, []) is None
    assert [pick_device("auto", 4, n) for n in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert pick_device("auto", 1, 7) == "cuda" and pick_device("auto", 0, 7) == "cpu"
    assert pick_device("cuda:1", 4, 0) == "cuda:1" and pick_device("cpu", 4, 0) == "cpu"


def test_launchers_give_the_sequential_metrics(tmp_path):
    launchers = {
        "sequential": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit": ["hydra/launcher=submitit_local"],
        "chunked": ["hydra/launcher=chunked_local"],
    }
    got = {}
    for name, args in launchers.items():
        run_app(tmp_path, *GRID, *args, f"tracking.experiment={name}",
                f"hydra.sweep.dir={tmp_path}/multirun/{name}")
        got[name] = job_metrics(tmp_path, name)
    expected, _ = got["sequential"]
    assert len(expected) == 2
    for name, (metrics, jobs) in got.items():  # a joblib worker runs fewer BLAS threads: the
        assert metrics.keys() == expected.keys(), name  # rounding of some shapes moves by 1e-9
        for lam, values in metrics.items():
            assert [v for m, v in zip(METRICS, values) if m.endswith("/acc")] == \
                [v for m, v in zip(METRICS, expected[lam]) if m.endswith("/acc")], (name, lam)
            assert values == pytest.approx(expected[lam], abs=1e-6), (name, lam)
    pids = {name: {r.data.tags["pid"] for r in jobs} for name, (_, jobs) in got.items()}
    assert len(pids["submitit"]) == 2  # one process per job
    assert len(pids["chunked"]) == 1  # one process for the (pair, method) group: loads once


def test_four_workers_through_an_mlflow_server_lose_no_run(tmp_path):
    lambdas = "lambda=0.1,0.2,0.3,0.4,0.6,0.7,0.8,0.9"
    with mlflow_server(tmp_path / "server") as url:
        run_app(tmp_path, "-m", "task.limit=10", lambdas, "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=4", "tracking=server", f"tracking.uri={url}")
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("merge-toy").experiment_id
        found = client.search_runs([exp])
        jobs = [r for r in found if r.data.tags.get("role") == "job"]
        assert len(jobs) == 8 and all(r.info.status == "FINISHED" for r in jobs)
        assert len({r.data.tags["pid"] for r in jobs}) > 1  # really several writers
        assert {r.data.tags["lambda"] for r in jobs} == {x for x in lambdas[7:].split(",")}
        assert all("samples/toy_mc.jsonl" in {a.path for a in client.list_artifacts(
            r.info.run_id, "samples")} for r in jobs)  # artifacts went through the server
        sweep = [r for r in found if r.data.tags.get("role") == "sweep"]
        assert len(sweep) == 1 and sweep[0].info.status == "FINISHED"


def test_slurm_preset_previews_its_sbatch_script_and_submits_nothing(tmp_path):
    proc = run_app(tmp_path, "-m", "hydra/launcher=slurm", "hydra.launcher.preview=true",
                   "hydra.launcher.partition=a100", "method=linear,slerp",
                   "lambda=range(0,1.01,0.1)")
    script = (tmp_path / "multirun" / "submission.sbatch").read_text()
    assert "6 array tasks; nothing submitted" in proc.stdout  # 2 methods × ⌈11 / 4⌉ chunks
    for line in ("#SBATCH --array=0-5%6", "#SBATCH --partition=a100",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --time=240", "-m submitit.core._submit"):
        assert line in script
    assert not (tmp_path / "mlruns").exists()  # no run, no reference evaluated


CHUNKED = ["-m", "task.limit=10", "method=linear", "hydra/launcher=chunked_local"]


def test_chunked_local_prints_a_line_per_job(tmp_path):
    proc = run_app(tmp_path, *CHUNKED, "lambda=0.2,0.8", "hydra.launcher.chunk_size=1")
    for lam in ("0.2", "0.8"):  # each from its own worker process, relayed
        assert len(re.findall(rf"^linear λ={lam}  .*toy_mc/acc=", proc.stdout, re.M)) == 1
    assert "submitit INFO" not in proc.stdout


def interrupted_mid_sweep(tmp_path, signum, group: bool, *args):
    """A chunked_local sweep given ``signum`` while a job's run is open (after one finished):
    to its whole process group, as Ctrl-C at a terminal, or to the command only (``kill``)."""
    cmd = [sys.executable, "-m", "app", *CHUNKED, "lambda=0.2,0.4,0.6,0.8", *args,
           f"tracking.dir={tmp_path}/mlruns", f"hydra.sweep.dir={tmp_path}/multirun"]
    out, err = tmp_path / "stdout", tmp_path / "stderr"  # files: a worker left behind
    with open(out, "w") as o, open(err, "w") as e:  # must not hold the test on a pipe
        proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=o,
                                stderr=e, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not (finished_jobs(tmp_path) and open_jobs(tmp_path)):
            time.sleep(0.2)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=120)
    return proc.returncode, out.read_text(), err.read_text()


def assert_interrupted(tmp_path, code, err):
    lines = [line for line in err.splitlines() if line.startswith(("interrupted:", "error:"))]
    assert code == 130 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("interrupted: the open runs are marked KILLED; run the same "
                               "command again to resume")
    assert "Traceback" not in err, err[-3000:]
    status = {}
    for r in runs(tmp_path)[1]:
        status.setdefault(r.data.tags.get("role"), []).append(r.info.status)
    assert "RUNNING" not in sum(status.values(), [])
    assert "KILLED" in status["job"] and status["sweep"] == ["FAILED"]


def sweep_processes(folder: Path) -> list[str]:
    """Command lines of the live processes started for the sweep writing into ``folder``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(folder) in cmdline:
                found.append(cmdline)
    return found


def test_chunked_local_ctrl_c_stops_the_workers_and_ends_like_the_others(tmp_path):
    code, out, err = interrupted_mid_sweep(tmp_path, signal.SIGINT, True,
                                           "hydra.launcher.chunk_size=2")  # two workers
    assert_interrupted(tmp_path, code, err)
    assert re.search(r"^linear λ=0\.\d  .*toy_mc/acc=", out, re.M)  # a finished job's line


def test_chunked_local_sigterm_leaves_no_worker_behind(tmp_path):
    code, _, err = interrupted_mid_sweep(tmp_path, signal.SIGTERM, False)
    assert_interrupted(tmp_path, code, err)
    before = {r.info.run_id: r.info.status for r in runs(tmp_path)[1]}
    time.sleep(5)
    assert sweep_processes(tmp_path / "multirun") == []
    assert {r.info.run_id: r.info.status for r in runs(tmp_path)[1]} == before  # nothing ran on
