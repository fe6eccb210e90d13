"""Tracking: a small interface for runs (start, find, log, tag, close) and its MLflow store.

Nothing outside this package imports mlflow: the pipeline, the sweep and the report speak to
a ``Tracker`` and the ``Run`` handles it gives, and read runs back as plain ``RunRecord``s.
``open_tracker`` gives the MLflow implementation (``app.tracking.mlflow_store``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from app.tracking.interface import Run, RunRecord, Tracker, TrackingConfig

__all__ = ["Run", "RunRecord", "Tracker", "TrackingConfig", "open_reader", "open_tracker",
           "tracked"]


@contextlib.contextmanager
def tracked(tracker: Tracker, run: Run) -> Iterator[Run]:
    """An open run that ends FINISHED, or FAILED (KILLED for Ctrl-C) with the reason if the
    body raises."""
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
    from app.tracking.mlflow_store import MlflowReader

    return MlflowReader(uri, folder)
