"""The MLflow adapter: the store, the sweep's parent run, and one child run per job.

The default store is SQLite at ``<tracking.dir>/mlflow.db`` with artifacts in
``<tracking.dir>/artifacts``. It is created before any job starts (parallel jobs that each
create a fresh SQLite schema race on its migration). Runs are written with ``MlflowClient``
and explicit run ids, so nothing depends on MLflow's global active-run state.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
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
        Path(cfg.tracking.dir).mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = experiment_name(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return Store(client, exp.experiment_id, uri)
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
        store = open_store(config)
        overrides = list(config.hydra.overrides.task)
        run = store.client.create_run(
            store.experiment_id, run_name=f"sweep {' '.join(overrides)}"[:250],
            tags={"role": "sweep", "overrides": " ".join(overrides)[:5000]},
        )
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
        self._run_id, self._client = run.info.run_id, store.client
        # Whatever ends this process (an exception in a job included), the parent is closed.
        atexit.register(_end_if_running, store.client, run.info.run_id, "FAILED",
                        "the sweep process ended before the sweep finished")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._client.set_terminated(self._run_id, status="FINISHED")


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
def job_run(store: Store, cfg: DictConfig, lam: float, mk: dict) -> Iterator["JobRun"]:
    """A child run (of the sweep's parent, if any); FAILED with the reason if the job raises."""
    tags = {
        "method": cfg.method.name, "pair": cfg.model.name, "lambda": f"{lam:g}",
        "tasks": ",".join(t.name for t in cfg.task.tasks), "seed": str(cfg.seed),
        "overrides": override_string() or "(defaults)",
    }
    parent = parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = store.client.create_run(store.experiment_id, run_name=f"{cfg.method.name} λ={lam:g}",
                                  tags=tags)
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


class JobRun:
    """Thin logging handle for one run."""

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
        self.client.log_text(self.run_id, text, name)

    def log_json(self, obj: Any, name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=1, default=str), name)

    def log_jsonl(self, rows: list[dict], name: str) -> None:
        self.client.log_text(self.run_id, "".join(json.dumps(r) + "\n" for r in rows), name)

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

