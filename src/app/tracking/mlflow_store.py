"""The MLflow implementation of the tracker: a SQLite store (or a server), runs, artifacts.

The default store is SQLite at ``<tracking.dir>/mlflow.db`` with artifacts in
``<tracking.dir>/artifacts``. It is created before any job starts (parallel jobs that each
create a fresh SQLite schema race on its migration). Runs are written with ``MlflowClient``
and explicit run ids, so nothing depends on MLflow's global active-run state. Opening a store
marks the RUNNING runs of dead processes on this host FAILED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param

from app.errors import ConfigError
from app.lease import alive
from app.tracking.interface import RunRecord

# MLflow logs every database error with its traceback before raising it; the project turns
# the error itself into one line (app.faults.store_fault), so that log is noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def tracking_uri(uri: str | None, folder: str) -> str:
    """``uri``, or the SQLite store in ``folder``."""
    return uri or f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


class MlflowTracker:
    """Runs of one MLflow experiment."""

    def __init__(self, client, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id

    @classmethod
    def open(cls, tracking, experiment: str) -> "MlflowTracker":
        """Create (if needed) the store and the experiment; close stale runs."""
        uri = tracking_uri(tracking.uri, tracking.dir)
        if tracking.uri:
            check_server(tracking.uri)
        else:
            check_folder(tracking.dir)
            create_sqlite_store(Path(tracking.dir) / "mlflow.db")
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            tracker = cls(client, exp.experiment_id)
            tracker.close_stale_runs()
            return tracker
        artifacts = None
        if not tracking.uri:
            artifacts = (Path(tracking.dir).resolve() / "artifacts").as_uri()
        try:
            exp_id = client.create_experiment(experiment, artifact_location=artifacts)
        except Exception:  # created by a concurrent process in the meantime
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
        return cls(client, exp_id)

    def start(self, name: str, tags: dict[str, str], parent: str | None = None) -> "MlflowRun":
        tags = dict(tags)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name[:250], tags=tags)
        return MlflowRun(self.client, run.info.run_id)

    def run(self, run_id: str) -> "MlflowRun":
        return MlflowRun(self.client, run_id)

    def find(self, fingerprint: str) -> RunRecord | None:
        """The newest FINISHED run with this fingerprint, or None."""
        runs = self._search(f"tags.fingerprint = '{fingerprint}' and "
                            f"attributes.status = 'FINISHED'", 1)
        return runs[0] if runs else None

    def find_tagged(self, key: str, value: str) -> RunRecord | None:
        """The newest run (any status) with this tag."""
        runs = self._search(f"tags.{key} = '{value}'", 1)
        return runs[0] if runs else None

    def reopen(self, run_id: str) -> None:
        """RUNNING again, without the reason an earlier attempt ended with."""
        self.client.update_run(run_id, status="RUNNING")
        with contextlib.suppress(Exception):
            self.client.delete_tag(run_id, "failure_reason")

    def close(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        """End a run; a failure reason is recorded only on a run still RUNNING."""
        if status == "FINISHED":
            self.client.set_terminated(run_id, status="FINISHED")
            return
        with contextlib.suppress(Exception):
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, "failure_reason", reason or "")
                self.client.set_terminated(run_id, status=status)

    def children(self, parent_id: str, status: str = "FINISHED") -> list[RunRecord]:
        """The children of a run with that status, in any experiment (a sweep over several
        pairs logs each pair's jobs to that pair's experiment)."""
        return self._search(f"tags.mlflow.parentRunId = '{parent_id}' and "
                            f"attributes.status = '{status}'", 5000, self._experiments())

    def references(self, tasks: str, lam: str, pair: str | None = None,
                   experiment: str | None = None, limit: int = 1) -> list[RunRecord]:
        """FINISHED reference runs of a parent (λ '0' or '1') on these tasks, newest first (at
        most ``limit``: a pool has an expert per name at λ 1); with ``pair``, that pair's; with
        ``experiment`` (an id), in that experiment."""
        query = (f"tags.role = 'reference' and tags.lambda = '{lam}' and tags.tasks = '{tasks}' "
                 f"and attributes.status = 'FINISHED'")
        if pair is not None:
            query += f" and tags.pair = '{pair}'"
        return self._search(query, limit, [experiment] if experiment else None)

    def download(self, run_id: str, path: str, folder: str) -> str:
        """A run's artifact, copied into ``folder``; its local path."""
        return self.client.download_artifacts(run_id, path, folder)

    def _experiments(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    def close_stale_runs(self, experiments: list[str] | None = None) -> int:
        """Mark RUNNING runs (of this experiment, or of ``experiments``) whose process (on this
        host) is gone as FAILED, with the reason."""
        stale = 0
        host = socket.gethostname()
        for run in self._search("attributes.status = 'RUNNING'", 5000, experiments):
            pid = int(run.tags.get("pid", "0") or 0)
            if run.tags.get("host") == host and pid and not alive(pid):
                self.close(run.run_id, "FAILED",
                           f"process {pid} ended before the run finished (killed?)")
                stale += 1
        return stale

    def _search(self, query: str, limit: int, experiments: list[str] | None = None
                ) -> list[RunRecord]:
        runs = self.client.search_runs(experiments or [self.experiment_id], query,
                                       max_results=limit,
                                       order_by=["attributes.start_time DESC"])
        return [record(r) for r in runs]


def record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.status, dict(run.data.tags),
                     dict(run.data.params), dict(run.data.metrics), run.info.experiment_id)


class MlflowReader:
    """Reading a store back (the report): sweeps, their jobs and the parents' references.
    Opening it closes the stale runs of every experiment, as a job's opening does."""

    def __init__(self, uri: str | None, folder: str = "mlruns"):
        self.uri = tracking_uri(uri, folder)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if experiments:
            MlflowTracker(self.client, experiments[0]).close_stale_runs(experiments)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    def tracker(self, experiment: str) -> MlflowTracker | None:
        exp = self.client.get_experiment_by_name(experiment)
        return None if exp is None else MlflowTracker(self.client, exp.experiment_id)

    def latest_sweep(self, experiment: str | None) -> tuple[str, RunRecord] | None:
        """(experiment name, newest sweep run) in one experiment or in all."""
        exps = ([self.client.get_experiment_by_name(experiment)] if experiment
                else self.client.search_experiments())
        runs = self.client.search_runs([e.experiment_id for e in exps if e is not None],
                                       "tags.role = 'sweep'", max_results=1,
                                       order_by=["attributes.start_time DESC"])
        if not runs:
            return None
        return self.client.get_experiment(runs[0].info.experiment_id).name, record(runs[0])

    def get(self, run_id: str) -> tuple[str, RunRecord]:
        run = self.client.get_run(run_id)
        return self.client.get_experiment(run.info.experiment_id).name, record(run)

    def download(self, run_id: str, path: str, folder: str) -> str:
        """A run's artifact, copied into ``folder``; FileNotFoundError where the store has lost
        it (its folder removed)."""
        try:
            return self.client.download_artifacts(run_id, path, folder)
        except (mlflow.MlflowException, OSError):
            listed = self.client.list_artifacts(run_id, os.path.dirname(path) or None)
            if path in {a.path for a in listed}:
                raise  # there, yet unreadable: not a lost artifact
            raise FileNotFoundError(f"run {run_id} has no artifact {path}") from None


SERVER_WAIT_S = 5.0  # how long a tracking server may take to answer before the run gives up


def check_server(uri: str) -> None:
    """ConfigError unless an MLflow server answers at ``uri`` within SERVER_WAIT_S."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return  # a database URI: MLflow opens it itself
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_WAIT_S)
    except urllib.error.HTTPError:
        return  # something answers; MLflow reports what it is
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"tracking.uri={uri!r}: no MLflow server answered within "
                          f"{SERVER_WAIT_S:g} s ({reason}); start one (`mlflow server --port "
                          f"5000`) or use tracking=local") from None


def check_folder(folder: str) -> None:
    """ConfigError unless ``folder`` is (or can be made) a writable folder."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"tracking.dir={folder!r} cannot be used as the store's folder "
                          f"({e.strerror or e}); give a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"tracking.dir={folder!r} is not writable; give a writable folder")


def create_sqlite_store(db: Path) -> None:
    """Create a SQLite store's schema in a side file, then link it in place in one step.

    MLflow migrates a new SQLite file through a few dozen schema versions; a process killed
    halfway leaves a file that every later start fails on ("table ... already exists"). Built
    aside and linked (which fails rather than replace a store another process linked first),
    ``mlflow.db`` is either absent or complete.
    """
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    for leftover in db.parent.glob(f"{db.name}.init-*"):  # a process killed while creating
        pid = re.match(r".*\.init-(\d+)", leftover.name)  # (and its SQLite journal)
        if pid and not alive(int(pid.group(1))):
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


def artifact_name(name: str) -> str:
    """A safe relative artifact path: each part reduced to letters, digits, ``_.-``; no empty,
    ``.`` or ``..`` parts (task names and the like end up in artifact paths)."""
    parts = [re.sub(r"[^\w.-]", "_", p) for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "artifact"


class MlflowRun:
    """Logging handle for one run (artifact names pass through ``artifact_name``)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, artifact_name(name))

    def log_json(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, indent=1, default=str), name)

    def log_jsonl(self, rows: list[dict], name: str) -> None:
        self.log_text("".join(json.dumps(r) + "\n" for r in rows), name)

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_name(name))

    def log_artifacts(self, folder: str, name: str) -> None:
        self.client.log_artifacts(self.run_id, folder, artifact_name(name))
