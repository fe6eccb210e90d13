"""The pipeline on its own: an in-memory tracker and a stand-in session (no model, no store),
so the job's rules — fingerprint skipping, parent reuse, faults, overhead — are checked in
milliseconds. The real pipeline on the toy pair: tests/e2e."""

import pytest
from helpers.fake_tracker import FakeTracker

from app import pipeline
from app.config import job_settings
from app.evaluate.scoring import TaskResult
from app.faults import JobFailed
from app.merge.merger import MergeReport
from app.pipeline import JobContext, Pipeline, Session
from app.sweep import log_sweep_summary


class Merger:
    def __init__(self):
        self.merges = []

    def merge_into(self, model, mk):
        self.merges.append(mk)
        return MergeReport(tensors=1, seconds=0.01)


class Evaluator:
    scoring = "trie"
    sampler = None

    def __init__(self, acc=0.7, ece=0.1):
        self.acc, self.ece, self.calls = acc, ece, 0

    def costs(self):
        return {"eval/tokens_forwarded": 10.0, "eval/trie_tokens": 9.0}

    def load_weights(self, model, mk=None, merger=None):
        return None

    def evaluate(self):
        self.calls += 1
        return {"toy_mc": TaskResult({"acc": self.acc, "ece": self.ece})}, {"results": {}}


@pytest.fixture
def job(make_cfg, monkeypatch, tmp_path):
    tracker = FakeTracker()
    session = Session(None, None, Evaluator(), Merger(), None, "cpu",
                      overhead={"time/startup_s": 1.0, "time/load_s": 2.0})
    monkeypatch.setattr(pipeline, "build_session", lambda job, device: session)
    p = Pipeline(open_tracker=lambda tracking, experiment: tracker)
    return p, tracker, session, lambda *o: make_cfg(f"tracking.dir={tmp_path}", *o)


def test_a_job_logs_a_finished_run_and_returns_its_metrics(job):
    p, tracker, session, make_cfg = job
    metrics = p.run_job(make_cfg("lambda=0.3"), JobContext(parent="sweep1", overrides="x=1"))
    assert metrics["toy_mc/acc"] == 0.7 and metrics["mean/acc"] == 0.7
    assert metrics["time/startup_s"] == 1.0  # the session's start-up cost, once
    (run,) = tracker.runs.values()
    assert run.status == "FINISHED" and run.metrics == metrics
    assert run.tags["mlflow.parentRunId"] == "sweep1" and run.tags["overrides"] == "x=1"
    assert run.tags["merge_engine"] == "mergekit" and run.params["lambda"] == "0.3"
    second = p.run_job(make_cfg("lambda=0.4"))
    assert "time/startup_s" not in second and len(session.merger.merges) == 2


def test_a_finished_fingerprint_is_skipped_and_force_runs_it_again(job, capsys):
    p, tracker, session, make_cfg = job
    first = p.run_job(make_cfg("lambda=0.3"))
    again = p.run_job(make_cfg("lambda=0.3"))
    assert again == first and len(tracker.runs) == 1 and session.evaluator.calls == 1
    assert "[done: run run" in capsys.readouterr().out
    p.run_job(make_cfg("lambda=0.3", "force=true"))
    assert len(tracker.runs) == 2 and session.evaluator.calls == 2


def test_a_parent_merge_copies_the_reference(job):
    p, tracker, session, make_cfg = job
    p.evaluate_references(job_settings(make_cfg()), tracker)
    refs = [r for r in tracker.runs.values() if r.tags["role"] == "reference"]
    assert [r.tags["lambda"] for r in refs] == ["0", "1"] and session.evaluator.calls == 2
    metrics = p.run_job(make_cfg("lambda=1"))
    assert session.evaluator.calls == 2  # not evaluated again
    run = list(tracker.runs.values())[-1]
    assert run.tags["reused_from"] == refs[1].run_id and "time/merge_s" not in metrics
    p.evaluate_references(job_settings(make_cfg()), tracker)  # once per fingerprint
    assert session.evaluator.calls == 2


def test_a_fault_fails_the_run_with_one_line(job):
    p, tracker, session, make_cfg = job
    session.evaluator.acc = float("nan")
    with pytest.raises(JobFailed, match="non-finite toy_mc metrics"):
        p.run_job(make_cfg("lambda=0.3"))
    (run,) = tracker.runs.values()
    assert run.status == "FAILED" and "non-finite" in run.tags["failure_reason"]


def test_the_sweep_summary_ranks_by_mean_accuracy_with_the_frontiers_ties():
    tracker = FakeTracker()
    parent = tracker.start("sweep", {"role": "sweep"}).run_id
    for lam, a, b, ece in [(0.2, 0.9, 0.1, 0.1), (0.5, 0.6, 0.6, 0.2), (0.7, 0.6, 0.6, 0.1),
                           (0.8, 0.6, 0.6, 0.1)]:
        run = tracker.start(f"linear λ={lam}", {"method": "linear"}, parent)
        run.log_params({"lambda": lam})
        run.log_metrics({"a/acc": a, "b/acc": b, "mean/acc": (a + b) / 2, "mean/ece": ece})
        tracker.close(run.run_id)
    # by the alphabetically first /acc (a/acc) λ=0.2 would win; by mean/acc 0.5, 0.7 and 0.8
    # tie, the lower ECE leaves 0.7 and 0.8, the smaller λ 0.7
    assert log_sweep_summary(tracker, parent) == {"linear": 0.7}
    assert tracker.runs[parent].params["best/linear/lambda"] == "0.7"
    assert tracker.runs[parent].metrics["best/linear/mean/acc"] == pytest.approx(0.6)


def test_a_claim_held_by_a_live_process_is_refused_until_it_ends(tmp_path):
    import subprocess
    import sys

    from app.lease import Leases

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from app.lease import Leases; "
        f"Leases({str(tmp_path)!r}).claim('fp'); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        leases = Leases(str(tmp_path))
        assert leases.claim("fp")[1] == holder.pid and leases.holder("fp")[1] == holder.pid
        assert leases.claim("other") is None  # another fingerprint is free
    finally:
        holder.kill()
        holder.wait()
    assert leases.holder("fp") is None and leases.claim("fp") is None  # a dead holder's claim
    leases.release("fp")
    assert leases.holder("fp") is None
