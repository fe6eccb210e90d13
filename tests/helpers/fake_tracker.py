"""An in-memory tracker with the interface of ``app.tracking.Tracker``: for unit tests of the
pipeline and the sweep without a store."""

import itertools

from app.tracking.interface import RunRecord

_ids = itertools.count()


class FakeRun:
    def __init__(self, tracker, run_id):
        self.tracker, self.run_id = tracker, run_id

    @property
    def record(self) -> RunRecord:
        return self.tracker.runs[self.run_id]

    def log_params(self, params):
        clash = {k for k in params if k in self.record.params}
        if clash:  # as MLflow: params are immutable
            raise ValueError(f"params already logged: {sorted(clash)}")
        self.record.params.update({k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics):
        self.record.metrics.update({k: float(v) for k, v in metrics.items()})

    def tag(self, key, value):
        self.record.tags[key] = str(value)

    def log_text(self, text, name):
        self.tracker.artifacts[(self.run_id, name)] = text

    log_json = log_jsonl = log_figure = log_artifacts = log_text


class FakeTracker:
    def __init__(self):
        self.runs: dict[str, RunRecord] = {}
        self.artifacts: dict = {}

    def start(self, name, tags, parent=None):
        run_id = f"run{next(_ids)}"
        tags = {**tags, "mlflow.runName": name} | ({"mlflow.parentRunId": parent} if parent else {})
        self.runs[run_id] = RunRecord(run_id, "RUNNING", tags)
        return FakeRun(self, run_id)

    def run(self, run_id):
        return FakeRun(self, run_id)

    def _newest(self, match):
        found = [r for r in self.runs.values() if match(r)]
        return found[-1] if found else None

    def find(self, fingerprint):
        return self._newest(lambda r: r.tags.get("fingerprint") == fingerprint
                            and r.status == "FINISHED")

    def find_tagged(self, key, value):
        return self._newest(lambda r: r.tags.get(key) == value)

    def reopen(self, run_id):
        self.runs[run_id].status = "RUNNING"
        self.runs[run_id].tags.pop("failure_reason", None)

    def close(self, run_id, status="FINISHED", reason=None):
        run = self.runs[run_id]
        if status == "FINISHED" or run.status == "RUNNING":
            run.status = status
            if reason:
                run.tags["failure_reason"] = reason

    def children(self, parent_id, status="FINISHED"):
        return [r for r in self.runs.values()
                if r.tags.get("mlflow.parentRunId") == parent_id and r.status == status]
