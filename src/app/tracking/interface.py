"""The tracker interface: what the pipeline, the sweep and the report need of a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol


@dataclass
class TrackingConfig:
    """Where runs go: a local SQLite store under ``dir`` unless ``uri`` is set."""

    dir: str = "mlruns"  # the local store's folder (mlflow.db and the artifacts)
    uri: Optional[str] = None  # e.g. http://127.0.0.1:5000 for an `mlflow server`
    experiment: str = "merge-${model.name}"  # the MLflow experiment the runs go to


@dataclass
class RunRecord:
    """A run as read back: what a finished job logged."""

    run_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    experiment_id: str = ""


class Run(Protocol):
    """A handle for logging to one open run."""

    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float]) -> None: ...
    def tag(self, key: str, value: str) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def log_json(self, obj: Any, name: str) -> None: ...
    def log_jsonl(self, rows: list[dict], name: str) -> None: ...
    def log_figure(self, fig, name: str) -> None: ...
    def log_artifacts(self, folder: str, name: str) -> None: ...


class Tracker(Protocol):
    """Runs of one experiment."""

    def start(self, name: str, tags: dict[str, str], parent: str | None = None) -> Run: ...
    def run(self, run_id: str) -> Run: ...
    def find(self, fingerprint: str) -> RunRecord | None: ...
    def find_tagged(self, key: str, value: str) -> RunRecord | None: ...
    def reopen(self, run_id: str) -> None: ...
    def close(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None: ...
    def children(self, parent_id: str, status: str = "FINISHED") -> list[RunRecord]: ...
    def references(self, tasks: str, lam: str, pair: str | None = None,
                   experiment: str | None = None, limit: int = 1) -> list[RunRecord]: ...
    def download(self, run_id: str, path: str, folder: str) -> str: ...

