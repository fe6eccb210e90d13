"""What several test modules use: running the CLI, reading the store, local servers."""

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

LIMIT = "task.limit=40"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def run_app(tmp_path, *args, check=True, env=None):
    """``python -m app`` in a subprocess with its store and outputs under ``tmp_path``."""
    cmd = [sys.executable, "-m", "app", *args, f"tracking.dir={tmp_path}/mlruns",
           f"hydra.run.dir={tmp_path}/outputs", f"hydra.sweep.dir={tmp_path}/multirun"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def one_line(proc) -> str:
    """The single ``error: …`` line a refused command printed (exit code 2)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        proc.stderr[-2000:]
    return lines[0]


def runs(tmp_path):
    """(client, every run) of the store under ``tmp_path``, read with MLflow itself."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exps = client.search_experiments()
    return client, [r for e in exps for r in client.search_runs([e.experiment_id])]


def child_runs(tmp_path):
    _, found = runs(tmp_path)
    return [r for r in found if r.data.tags.get("role") == "job"]


def open_jobs(tmp_path) -> int:
    """Job runs RUNNING now (read-only from SQLite, as ``finished_jobs``)."""
    with contextlib.suppress(sqlite3.Error), sqlite3.connect(
            f"file:{tmp_path}/mlruns/mlflow.db?mode=ro", uri=True, timeout=5) as con:
        return con.execute(
            "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
            "WHERE tags.key = 'role' AND tags.value = 'job' AND runs.status = 'RUNNING'"
        ).fetchone()[0]
    return 0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A real `mlflow server` on loopback over ``folder``/mlflow.db (artifacts beside it)."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
