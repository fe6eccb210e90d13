"""The MLflow adapter: the store, the sweep's parent run, and one child run per job.

The default store is SQLite at ``<tracking.dir>/mlflow.db`` with artifacts in
``<tracking.dir>/artifacts``. It is created before any job starts (parallel jobs that each
create a fresh SQLite schema race on its migration). Runs are written with ``MlflowClient``
and explicit run ids, so nothing depends on MLflow's global active-run state.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

LOG = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"
PACKAGES = ("mergekit", "lm_eval", "torch", "transformers", "mlflow", "hydra", "optuna")


@dataclass
class Store:
    client: Any  # mlflow.MlflowClient
    experiment_id: str
    uri: str


def tracking_uri(tracking: DictConfig) -> str:
    if tracking.uri:
        return tracking.uri
    return f"sqlite:///{Path(tracking.dir).resolve() / 'mlflow.db'}"


def experiment_name(cfg: DictConfig) -> str:
    return cfg.tracking.experiment or f"merge-{cfg.model.name}"


def open_store(cfg: DictConfig) -> Store:
    """Create (if needed) the store and the experiment; return a client bound to them."""
    import mlflow

    uri = tracking_uri(cfg.tracking)
    if not cfg.tracking.uri:
        create_sqlite_store(Path(cfg.tracking.dir) / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = experiment_name(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        store = Store(client, exp.experiment_id, uri)
        close_stale_runs(store)
        return store
    artifacts = None
    if not cfg.tracking.uri:
        artifacts = (Path(cfg.tracking.dir).resolve() / "artifacts").as_uri()
    try:
        exp_id = client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # created by a concurrent process in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        exp_id = exp.experiment_id
    return Store(client, exp_id, uri)


def create_sqlite_store(db: Path) -> None:
    """Create a SQLite store's schema in a side file, then link it in place in one step.

    MLflow migrates a new SQLite file through a few dozen schema versions; a process killed
    halfway leaves a file that every later start fails on ("table ... already exists"). Built
    aside and linked (which fails rather than replace a store another process linked first),
    ``mlflow.db`` is either absent or complete.
    """
    import mlflow

    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    for leftover in db.parent.glob(f"{db.name}.init-*"):  # a process killed while creating
        pid = re.match(r".*\.init-(\d+)", leftover.name)  # (and its SQLite journal)
        if pid and not _alive(int(pid.group(1))):
            leftover.unlink(missing_ok=True)
    side = db.with_name(f"{db.name}.init-{os.getpid()}")
    side.unlink(missing_ok=True)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{side.resolve()}").search_experiments()
    try:
        os.link(side, db)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: rename (last writer wins)
        if not db.exists():
            os.replace(side, db)
    finally:
        side.unlink(missing_ok=True)


def close_stale_runs(store: Store) -> int:
    """Mark RUNNING runs whose process (on this host) is gone as FAILED, with the reason."""
    stale = 0
    host = socket.gethostname()
    for run in store.client.search_runs([store.experiment_id], "attributes.status = 'RUNNING'",
                                        max_results=5000):
        pid = int(run.data.tags.get("pid", "0") or 0)
        if run.data.tags.get("host") == host and pid and not _alive(pid):
            _end_if_running(store.client, run.info.run_id, "FAILED",
                            f"process {pid} ended before the run finished (killed?)")
            stale += 1
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_tags() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "git_commit": git_commit()}


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def digest(payload: Any) -> str:
    """A stable short hash of a JSON-able payload (job and reference fingerprints)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def finished_run(store: Store, fingerprint: str):
    """The newest FINISHED run with this fingerprint, or None."""
    runs = store.client.search_runs(
        [store.experiment_id],
        f"tags.fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {"lm_eval": "lm-eval", "hydra": "hydra-core"}
    out = {}
    for pkg in PACKAGES:
        try:
            out[f"version.{pkg}"] = version(names.get(pkg, pkg))
        except PackageNotFoundError:
            pass
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists → {'a.b.0.c': 'value'} for MLflow params."""
    out: dict[str, str] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: str(d)}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _end_if_running(client, run_id: str, status: str, reason: str) -> None:
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, status=status)


class SweepParentRun(Callback):
    """Hydra callback: one MLflow parent run per multirun, created before any job starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra only warns when a callback raises: a bad config must stop the sweep here.
        from app.cli import _fail
        from app.config import ConfigError
        from app.run import ensure_references

        self._run_id = None
        if config.hydra.launcher.get("preview"):  # only shows what it would submit
            return
        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            if "objective" in config.hydra.sweeper:  # a λ* search: check its metric names
                from app.search import check_search

                check_search(config)
            store = open_store(job_cfg)
            if not on_cluster(config):  # there the first array task evaluates them
                ensure_references(job_cfg, store)
        except ConfigError as e:
            _fail(str(e))
        overrides = sorted(config.hydra.overrides.task)
        key = digest([experiment_name(config), overrides])
        found = store.client.search_runs(
            [store.experiment_id], f"tags.sweep_key = '{key}'", max_results=1,
            order_by=["attributes.start_time DESC"])
        if found:  # the same sweep command again: continue under the same parent
            run_id = found[0].info.run_id
            store.client.update_run(run_id, status="RUNNING")
            for k, v in process_tags().items():
                store.client.set_tag(run_id, k, v)
        else:
            run_id = store.client.create_run(
                store.experiment_id, run_name=f"sweep {' '.join(overrides)}"[:250],
                tags={"role": "sweep", "sweep_key": key, "overrides": " ".join(overrides)[:5000],
                      **process_tags()},
            ).info.run_id
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(run_id)
        self._run_id, self._store = run_id, store
        # Whatever ends this process (an exception in a job included), the parent is closed.
        atexit.register(_end_if_running, store.client, run_id, "FAILED",
                        "the sweep process ended before the sweep finished")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._run_id is None:
            return
        log_sweep_summary(self._store, self._run_id)
        self._store.client.set_terminated(self._run_id, status="FINISHED")


def on_cluster(config: DictConfig) -> bool:
    """Whether the sweep's jobs run on SLURM (the submitting node may have no GPU)."""
    return "Slurm" in str(config.hydra.launcher.get("_target_", ""))


def log_sweep_summary(store: Store, parent_id: str) -> None:
    """Best λ per method as params and metrics on the parent, ranked by the alphabetically
    first `<name>/acc` metric (`mean/acc` for the shipped tasks)."""
    children = store.client.search_runs(
        [store.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'",
        max_results=5000)
    best: dict[str, Any] = {}
    for run in children:
        acc_keys = sorted(k for k in run.data.metrics if k.endswith("/acc"))
        if not acc_keys:
            continue
        acc = run.data.metrics[acc_keys[0]]
        method = run.data.tags.get("method", "?")
        if method not in best or acc > best[method][0]:
            best[method] = (acc, run)
    params, metrics = {}, {}
    for method, (acc, run) in best.items():
        params[f"best/{method}/lambda"] = run.data.params.get("lambda")
        metrics.update({f"best/{method}/{k}": v for k, v in run.data.metrics.items()
                        if not k.startswith("time/")})
    job = JobRun(store.client, parent_id)
    with contextlib.suppress(Exception):  # a param logged by an earlier run of the sweep
        job.log_params(params)
    job.log_metrics(metrics)


def parent_run_id() -> str | None:
    """The sweep's parent run id when this job runs inside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    path = Path(hc.sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


def override_string() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return " ".join(HydraConfig.get().overrides.task)


@contextlib.contextmanager
def job_run(store: Store, cfg: DictConfig, lam: float, mk: dict, fingerprint: str,
            role: str = "job", name: str | None = None, parent: str | None = None
            ) -> Iterator["JobRun"]:
    """A run (a child of the sweep's parent, if any); FAILED with the reason if the job raises."""
    tags = {
        "role": role, "method": cfg.method.name, "pair": cfg.model.name, "lambda": f"{lam:g}",
        "tasks": ",".join(t.name for t in cfg.task.tasks), "seed": str(cfg.seed),
        "overrides": override_string() or "(defaults)", "fingerprint": fingerprint,
        **process_tags(),
    }
    if role == "reference":
        tags["method"] = "reference"
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = store.client.create_run(store.experiment_id,
                                  run_name=name or f"{cfg.method.name} λ={lam:g}", tags=tags)
    job = JobRun(store.client, run.info.run_id)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved["lambda"] = lam
        params = {k: v for k, v in flatten(resolved).items() if not k.startswith("method.mergekit")}
        params.update(package_versions())
        job.log_params(params)
        job.log_text(OmegaConf.to_yaml(OmegaConf.create(resolved)), "config.yaml")
        job.log_text(_yaml(mk), "mergekit.yaml")
        yield job
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        _end_if_running(store.client, run.info.run_id, status, reason)
        raise
    store.client.set_terminated(run.info.run_id, status="FINISHED")


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def artifact_name(name: str) -> str:
    """A safe relative artifact path: each part reduced to letters, digits, ``_.-``; no empty,
    ``.`` or ``..`` parts (task names and the like end up in artifact paths)."""
    parts = [re.sub(r"[^\w.-]", "_", p) for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "artifact"


class JobRun:
    """Thin logging handle for one run (artifact names pass through ``artifact_name``)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, artifact_name(name))

    def log_json(self, obj: Any, name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=1, default=str),
                             artifact_name(name))

    def log_jsonl(self, rows: list[dict], name: str) -> None:
        self.client.log_text(self.run_id, "".join(json.dumps(r) + "\n" for r in rows),
                             artifact_name(name))

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_name(name))

