"""The same λ grid through each launcher: wall time, processes, and per-job overhead.

    python scripts/bench_launchers.py            # toy pair, 11-point linear grid (≈6 min)

Runs `python -m app -m method=linear 'lambda=range(0,1.01,0.1)'`, each time into a fresh
MLflow store, with: the basic (sequential) launcher; joblib with 2 workers; stock
`submitit_local` (one process per job); `chunked_local` with one process for the grid, and
with two processes (chunk_size=6). Overhead per job is what processes paid before their first
merge (interpreter start, imports, loading the model and building the tasks: the
`time/startup_s` + `time/load_s` a run logs), summed over the sweep's runs and divided by the
jobs that evaluated. It also checks every launcher gives the sequential run's metrics.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

GRID = ["-m", "method=linear", "lambda=range(0,1.01,0.1)"]
MODES = {
    "sequential": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local (process per job)": ["hydra/launcher=submitit_local"],
    "chunked_local, 1 process": ["hydra/launcher=chunked_local"],
    "chunked_local, 2 processes": ["hydra/launcher=chunked_local",
                                   "hydra.launcher.chunk_size=6"],
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def sweep(work: Path, args: list[str]) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app", *GRID, *args, f"tracking.dir={work}/mlruns",
                    f"hydra.sweep.dir={work}/multirun"], check=True, capture_output=True,
                   env=ENV)
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work}/mlruns/mlflow.db")
    found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    jobs = [r for r in found if r.data.tags.get("role") == "job"]
    evaluated = [r for r in found if "time/eval_s" in r.data.metrics]
    overhead = sum(r.data.metrics.get("time/startup_s", 0) + r.data.metrics.get("time/load_s", 0)
                   for r in found)
    metrics = {r.data.tags["lambda"]: {k: v for k, v in r.data.metrics.items()
                                       if not k.startswith("time/")} for r in jobs}
    return {"wall": wall, "jobs": len(jobs), "processes": len({r.data.tags["pid"] for r in found}),
            "overhead": overhead / max(len(evaluated), 1), "metrics": metrics}


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    results = {}
    for name, args in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = sweep(Path(tmp), args)
        r = results[name]
        print(f"{name:34s} wall {r['wall']:6.1f} s  jobs {r['jobs']}  "
              f"processes {r['processes']:2d}  overhead/evaluated job {r['overhead']:5.1f} s",
              flush=True)
    base = results["sequential"]
    for name, r in results.items():
        same = r["metrics"].keys() == base["metrics"].keys() and all(
            r["metrics"][lam].keys() == m.keys() and all(
                v == r["metrics"][lam][k] if k.endswith("/acc") else
                abs(v - r["metrics"][lam][k]) <= 1e-6 for k, v in m.items())
            for lam, m in base["metrics"].items())
        print(f"{name:34s} {base['wall'] / r['wall']:4.2f}× sequential speed, metrics equal to "
              f"sequential (accuracies exactly, the rest within 1e-6): {same}")
        assert same, name


if __name__ == "__main__":
    main()
