"""Tracking: a small interface for runs (start, find, log, tag, close) and its MLflow store.

Nothing outside this package imports mlflow: the pipeline, the sweep and the report speak to
a ``Tracker`` and the ``Run`` handles it gives, and read runs back as plain ``RunRecord``s.
``open_tracker`` gives the MLflow implementation (``app.tracking.mlflow_store``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol


@dataclass
class TrackingConfig:
    """Where runs go: a local SQLite store under ``dir`` unless ``uri`` is set."""

    dir: str = "mlruns"
    uri: Optional[str] = None  # e.g. http://127.0.0.1:5000 for an `mlflow server`
    experiment: str = "merge-${model.name}"


@dataclass
class RunRecord:
    """A run as read back: what a finished job logged."""

    run_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


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
    def children(self, parent_id: str) -> list[RunRecord]: ...


@contextlib.contextmanager
def tracked(tracker: Tracker, name: str, tags: dict[str, str],
            parent: str | None = None) -> Iterator[Run]:
    """A run that ends FINISHED, or FAILED (KILLED for Ctrl-C) with the reason if the body
    raises."""
    run = tracker.start(name, tags, parent)
    try:
        yield run
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        tracker.close(run.run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                      reason)
        raise
    tracker.close(run.run_id)


def open_tracker(tracking_cfg, experiment: str) -> Tracker:
    """The configured store's tracker for ``experiment`` (created if needed)."""
    from app.tracking.mlflow_store import MlflowTracker

    return MlflowTracker.open(tracking_cfg, experiment)


def open_reader(uri: str | None, folder: str = "mlruns"):
    """A reader over a store (``uri``, or the SQLite store in ``folder``): the report's view."""
    from pathlib import Path

    from app.tracking.mlflow_store import MlflowReader

    return MlflowReader(uri or f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}")
