"""One job, top to bottom: merge (model set, method, λ) in memory → evaluate → judge → log.

``run_job`` turns the run config, once, into each component's own settings (``app.config.Job``)
and hands each component its slice. A ``Pipeline`` lives as long as its process and keeps one
``Session`` (``app.session``): the working model, tokenizer, evaluation engine, tasks and
merger, built for the first job and reused by every later job with the same model set, tasks and
device, so a λ step only rewrites tensors and re-scores the same requests. ``run_job`` skips a
job whose fingerprint already has a FINISHED run, and copies a parent's reference evaluation
where the merge is that parent bit for bit. Nothing here knows Hydra or MLflow: the caller
passes a ``JobContext`` and the pipeline logs through a ``Tracker``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from app import tracking
from app.config import Job, job_settings, validate
from app.console import console, header_lines
from app.errors import ConfigError
from app.faults import JobFailed, check_finite, faults_explained, store_faults
from app.lease import Held, Leases
from app.merge.methods import reference_for
from app.metrics import summary_line, without_costs
from app.provenance import job_fingerprint, job_tags, log_config, reference_fingerprint
from app.session import Session, build_session, pick_device


@dataclass
class JobContext:
    """Where a job runs: its sweep's parent run, the overrides that made it, its number."""

    parent: str | None = None
    overrides: str = ""
    job_num: int = 0
    evaluate_references: bool = False  # evaluate PT and IT first (a cluster's first task)
    header: str | None = None  # a single run: print its header, naming this log file


class Pipeline:
    """Runs jobs in this process, reusing its session across them."""

    def __init__(self, open_tracker: Callable = tracking.open_tracker):
        self.open_tracker = open_tracker
        self.session: Session | None = None
        self.session_key: str | None = None
        self.devices: dict[str, str] = {}  # a worker keeps its first job's device
        self.leases: dict[str, Leases] = {}  # per store folder

    def leases_for(self, job: Job) -> Leases:
        folder = str(Path(job.tracking.dir).expanduser().resolve())
        if folder not in self.leases:
            self.leases[folder] = Leases(folder)
        return self.leases[folder]

    # ------------------------------------------------------------------ the job
    def run_job(self, cfg: DictConfig, ctx: JobContext = JobContext()) -> dict[str, float]:
        """Run one (model set, method, λ) job; return its metrics as {'<task>/<metric>': value}
        (a store that cannot be written on the way: one JobFailed line)."""
        with store_faults():
            return self._run_job(cfg, ctx)

    def _run_job(self, cfg: DictConfig, ctx: JobContext) -> dict[str, float]:
        start = time.perf_counter()
        validate(cfg)
        job = job_settings(cfg)  # each component's own settings, from here on
        lam, mk = job.lam, job.mk
        shown = console()
        if ctx.header is not None:  # a single run: say what it does before it does it
            shown.lines(job.hide("\n".join(header_lines(job, f"{job.method.name} λ={lam:g}",
                                                         ctx.header))))
        tracker = self.open_tracker(job.tracking, job.tracking.experiment)
        references = self.references_of(job, tracker, first=ctx.evaluate_references)
        shown.job(job.hide(f"{job.method.name} λ={lam:g}"))
        fingerprint = job_fingerprint(job)
        done = None if job.force else tracker.find(fingerprint)
        if done is not None:
            saved = self.save_again(job, tracker, done.run_id) if job.merge.save_dir else ""
            return skipped(job.method.name, lam, done, saved)
        session, fault = None, None
        try:  # loads models and tasks: config errors surface before any run exists
            session = self.session_for(job, ctx.job_num)
        except ConfigError:
            raise
        except Exception as e:  # a fault (unreadable weights, out of memory): recorded in a run
            fault = e
        name = job.hide(f"{job.method.name} λ={lam:g}")
        parent = reference_for(job.method, lam, job.models)
        reference = None  # looked up before the claim: nothing between the run and its closing
        if parent and not job.force and not job.merge.save_dir:
            reference = tracker.find(reference_fingerprint(job, parent))
        device = session.device if session else job.device
        leases = self.leases_for(job)  # claim the job, or wait for the process that holds it
        run, done = claim(leases, tracker, fingerprint, name,
                          job_tags(job, lam, fingerprint, "job", ctx.overrides), ctx.parent,
                          force=job.force)
        if done is not None:
            return skipped(job.method.name, lam, done)
        try:
            with (tracking.tracked(tracker, run), Held(leases, fingerprint),
                  faults_explained(device, job.task.batch_size)):
                log_config(run, job, lam, mk)
                if fault is not None:
                    raise fault
                if reference is not None:
                    metrics = without_costs(reference.metrics)
                    run.tag("reused_from", reference.run_id)
                    metrics["time/total_s"] = time.perf_counter() - start
                    run.log_metrics(metrics)
                else:
                    metrics = self.step(session, job, mk, lam, run, start, references)
        except JobFailed as e:
            shown.job_done()
            print(f"{name}  FAILED: {e}", flush=True)
            raise
        shown.job_done(ran=reference is None)  # a reused reference says nothing of the ETA
        print(summary_line(job.method.name, lam, metrics), flush=True)
        return metrics

    def step(self, session: Session, job: Job, mk: dict, lam: float, run, start: float,
             references: dict | None = None) -> dict[str, float]:
        """Merge ``mk`` (at ``lam``) into the working model, evaluate, judge, log metrics and
        artifacts to ``run`` (an expert pool's scores normalised by its ``references``')."""
        from app.judge import judge_run
        from app.judge.adapters import JudgeContext
        from app.merge.merger import save_merged
        from app.plots import reliability_figure
        from app.probe import probe_run

        run.tag("device", session.device)
        if session.model is not None:  # the pair's size, for the scaling study's axes
            run.tag("parameters", str(sum(p.numel() for p in session.model.parameters())))
        run.tag("scoring", session.evaluator.scoring)
        run.tag("engine", job.engine.name)
        console().phase("merge")
        report = session.merger.merge_into(session.model, mk)
        run.tag("merge_engine", report.engine)
        console().phase("evaluate")
        engine_update = session.evaluator.load_weights(session.model, mk, session.merger)
        if engine_update is not None:
            run.tag("engine_weights", session.evaluator.engine.weights_from)
        if job.merge.save_dir:
            saved = save_merged(session.model, session.tokenizer, mk, job.merge.save_dir)
            run.tag("saved_to", str(saved))
        t_eval = time.perf_counter()
        results, lm_eval_out = session.evaluator.evaluate()
        check_finite(results, job.models.dtype)
        metrics: dict[str, float] = {}
        for task, res in results.items():
            metrics.update({f"{task}/{k}": v for k, v in res.metrics.items()})
            metrics.update({f"{split}/{task}/{k}": v for split, values in res.splits.items()
                            for k, v in values.items() if k != "n"})
            if res.records:
                run.log_jsonl(res.records, f"samples/{task}.jsonl")
            if res.bins:
                run.log_json(res.bins, f"reliability/{task}.json")
                run.log_figure(reliability_figure(res.bins, f"{task}  λ={lam:g}"),
                               f"reliability/{task}.png")
        metrics.update(aggregate(results))
        metrics.update(job.models.normalized(metrics, references or {}, forgetting(job.task)))
        metrics["time/merge_s"] = report.seconds - report.stats_seconds
        if job.models.pool:
            metrics["time/stats_s"] = report.stats_seconds
        metrics["time/eval_s"] = time.perf_counter() - t_eval
        if engine_update is not None:
            metrics["time/engine_update_s"] = engine_update
        metrics.update(session.evaluator.costs())
        metrics.update(session.overhead)
        session.overhead = {}
        console().phase("judge" if job.judge.name != "none" else "log")
        judge = JudgeContext(session.device, job.models.base,
                             Path(job.tracking.dir) / "judge_cache.sqlite", session.judge_models,
                             session.evaluator.sampler)
        metrics.update(judge_run(session.model, session.tokenizer, job.judge, run, judge))
        if job.probe.name != "none":
            console().phase("probe")
        metrics.update(probe_run(session.model, session.tokenizer, job.probe, run,
                                 session.device, f"λ={lam:g}"))
        metrics["time/total_s"] = time.perf_counter() - start
        run.log_metrics(metrics)
        run.log_json(lm_eval_out, "lm_eval_results.json")
        return metrics

    def save_again(self, job: Job, tracker, run_id: str) -> str:
        """A finished job asked for its model: merge it again (no evaluation) and save it."""
        from app.merge.merger import save_merged

        session = self.session_for(job)
        with faults_explained(session.device, job.task.batch_size):
            session.merger.merge_into(session.model, job.mk)
            saved = save_merged(session.model, session.tokenizer, job.mk, job.merge.save_dir)
        tracker.run(run_id).tag("saved_to", str(saved))
        return f"; saved to {saved}"

    def references_of(self, job: Job, tracker, first: bool = False) -> dict[str, dict]:
        """The references' metrics a job's scores are normalised by, by reference name ({}
        where none is: a pair's). Evaluated first where missing, with ``first`` (a cluster's
        first task) or where the model set normalises by them (a pool)."""
        if first or job.models.normalized_by_references:
            self.evaluate_references(job, tracker)
        if not job.models.normalized_by_references:
            return {}
        found = {p: tracker.find(reference_fingerprint(job, p))
                 for p, _ in job.models.references()}
        return {p: r.metrics for p, r in found.items() if r is not None}

    def evaluate_references(self, job: Job, tracker) -> None:
        """Evaluate the model set's references (PT at λ=0 and IT at λ=1; a pool's base and each
        expert) once per (model set, tasks, settings); ``job`` is validated (by ``run_job``, or
        for a sweep by ``sweep.check_jobs``)."""
        from app.merge.mergekit_adapter import reference_config

        models = job.models
        for parent, lam in models.references():
            fingerprint = reference_fingerprint(job, parent)
            if tracker.find(fingerprint) is not None:
                continue
            session = self.session_for(job)
            mk = reference_config(models, parent)
            name = f"reference {models.label(parent)} (λ={lam:g})"
            leases = self.leases_for(job)
            tags = job_tags(job, lam, fingerprint, "reference")
            if parent.startswith("expert:"):
                tags["expert"] = parent.split(":", 1)[1]
            console().job(name)
            run, done = claim(leases, tracker, fingerprint, name, tags)
            if done is not None:  # another process evaluated it meanwhile
                continue
            try:
                with (tracking.tracked(tracker, run), Held(leases, fingerprint),
                      faults_explained(session.device, job.task.batch_size)):
                    log_config(run, job, lam, mk)
                    metrics = self.step(session, job, mk, lam, run, time.perf_counter())
            except JobFailed as e:
                console().job_done(counted=False)
                print(f"reference {models.label(parent)} λ={lam:g}  FAILED: {e}", flush=True)
                raise
            console().job_done(counted=False)
            print(summary_line(f"reference {models.label(parent)}", lam, metrics), flush=True)
        if not models.normalized_by_references:
            return
        # each reference normalised by the others, once all exist (a pool's)
        records = {p: tracker.find(reference_fingerprint(job, p)) for p, _ in models.references()}
        references = {p: r.metrics for p, r in records.items() if r is not None}
        for parent, record in records.items():
            if record is None or "mt/normalized" in record.metrics:
                continue
            normalized = models.normalized(record.metrics, references, forgetting(job.task))
            if normalized:
                tracker.run(record.run_id).log_metrics(normalized)

    # ------------------------------------------------------------------ the session
    def device_for(self, device: str, job_num: int = 0) -> str:
        """The device this process uses for ``device`` (fixed at its first job: a worker that
        runs several jobs keeps its GPU and its loaded models)."""
        if device not in self.devices:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            self.devices[device] = pick_device(device, count, job_num)
        return self.devices[device]

    def session_for(self, job: Job, job_num: int = 0) -> Session:
        """This process's Session for the model set, tasks and device (built on first use)."""
        device = self.device_for(job.device, job_num)
        key = json.dumps([job.params["model"], job.params["task"], device, job.seed])
        if key != self.session_key:
            self.session = None  # one working model per process
            self.session = build_session(job, device)
            self.session_key = key
        return self.session


def forgetting(task) -> list[str]:
    """The tasks of the ``task`` settings that measure forgetting."""
    return [spec.name for spec in task.tasks if spec.forgetting]


def skipped(method: str, lam: float, done, saved: str = "") -> dict[str, float]:
    """A job whose fingerprint has a FINISHED run: say so, return that run's metrics."""
    console().job_done(ran=False)
    print(summary_line(method, lam, without_costs(done.metrics))
          + f"  [done: run {done.run_id}{saved}]", flush=True)
    return dict(done.metrics)


def claim(leases, tracker, fingerprint: str, name: str, tags: dict[str, str],
          parent: str | None = None, force: bool = False, poll_s: float = 1.0):
    """(a new RUNNING run, None) once this process holds the fingerprint's claim, or (None,
    the FINISHED run) when another process did the job (it held the claim, this one waited)."""
    waited = None
    while True:
        holder = leases.claim(fingerprint)
        if holder is None:
            done = tracker.find(fingerprint) if waited or not force else None
            if done is None:  # nobody finished it between our look and our claim
                return tracker.start(name, tags, parent), None
            leases.release(fingerprint)
            return None, done
        if waited != holder:
            print(f"{name}  waiting: process {holder[1]} on {holder[0]} is doing this job",
                  flush=True)
            waited = holder
        while leases.holder(fingerprint) == holder:
            time.sleep(poll_s)


_THIS_PROCESS: list[Pipeline] = []


def this_process() -> Pipeline:
    """The pipeline every job and callback of this process shares: Hydra calls the task
    function once per job, so what the first job loads must outlive the call."""
    if not _THIS_PROCESS:
        _THIS_PROCESS.append(Pipeline())
    return _THIS_PROCESS[0]


def aggregate(results: dict) -> dict[str, float]:
    """Unweighted means across tasks: mean/acc (all tasks), mean/ece (calibrated tasks); the
    same over each document set (``selection/mean/acc``, …) where the tasks are split."""
    out = {}
    for prefix, metrics in [("", [r.metrics for r in results.values()])] + [
            (f"{split}/", [r.splits[split] for r in results.values() if split in r.splits])
            for split in ("selection", "report")]:
        if not metrics:
            continue
        accs = [m["acc"] for m in metrics]
        eces = [m["ece"] for m in metrics if "ece" in m]
        out[f"{prefix}mean/acc"] = sum(accs) / len(accs)
        if eces:
            out[f"{prefix}mean/ece"] = sum(eces) / len(eces)
    return out
