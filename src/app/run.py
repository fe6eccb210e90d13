"""One job: merge (pair, method, λ) in memory, evaluate, compute calibration, log to MLflow.

The working model, tokenizer, lm-eval model wrapper and task objects live in a per-process
``Session`` keyed by what determines them, so every job a launcher runs in this process
reuses them: a λ step only rewrites tensors and re-scores the same requests.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from app import tracking
from app.config import ConfigError, clean_lambda, validate
from app.judge import judge_run
from app.merge import merge_into, mergekit_config, save_merged, union_tokenizer

LOG = logging.getLogger(__name__)
_SESSIONS: dict[str, "Session"] = {}
_OVERHEAD: dict[str, float] = {}  # start-up and loading cost not yet logged by a run


@dataclass
class Session:
    """What a process loads once: the working model, its tokenizer, and the evaluator."""

    model: Any
    tokenizer: Any
    evaluator: Any
    device: str


def pick_device(device: str, cuda_count: int, job_num: int) -> str:
    """``auto``: CPU without CUDA, the GPU with one, GPU ``job_num % count`` with several (so
    parallel jobs of a local launcher spread one per GPU); any other value is kept."""
    if device != "auto":
        return device
    if cuda_count == 0:
        return "cpu"
    return "cuda" if cuda_count == 1 else f"cuda:{job_num % cuda_count}"


@functools.cache
def resolve_device(device: str) -> str:
    """The device this process uses for ``device`` (fixed at its first job: a worker that runs
    several jobs keeps its GPU and its loaded models)."""
    import torch

    from hydra.core.hydra_config import HydraConfig

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    num = HydraConfig.get().job.get("num", 0) if HydraConfig.initialized() else 0
    return pick_device(device, count, int(num or 0))


def session_for(cfg: DictConfig) -> Session:
    """The process's Session for this pair, tasks and device (built on first use)."""
    device = resolve_device(cfg.device)
    key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True),
                      OmegaConf.to_container(cfg.task, resolve=True), device, cfg.seed])
    if key not in _SESSIONS:
        t0 = time.perf_counter()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.evaluate import Evaluator

        union = cfg.model.tokenizer == "union"
        source = cfg.model.it if union else cfg.model[cfg.model.tokenizer]  # the working model
        tokenizer = union_tokenizer(cfg) if union else AutoTokenizer.from_pretrained(
            source, trust_remote_code=cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, cfg.model.dtype),
            trust_remote_code=cfg.model.trust_remote_code)
        if union:  # the merge fills every row of the union's embeddings
            model.resize_token_embeddings(len(tokenizer.get_vocab()), mean_resizing=False)
        model = model.to(device).eval()
        evaluator = Evaluator(model, tokenizer, cfg.task, seed=cfg.seed)
        _SESSIONS.clear()  # one working model per process
        _SESSIONS[key] = Session(model, tokenizer, evaluator, device)
        # What this process paid before its first merge, logged by the run that evaluates next:
        # interpreter start and imports up to here, then loading the model and building tasks.
        _OVERHEAD.update({"time/startup_s": t0 - _process_start(),
                          "time/load_s": time.perf_counter() - t0})
    return _SESSIONS[key]


def _process_start() -> float:
    """This process's start on the perf_counter clock (Linux; 0 overhead if unknown)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return time.perf_counter() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


METRICS_VERSION = 3  # bump when a metric's definition changes: older runs stop matching


def _eval_key(cfg: DictConfig) -> dict:
    task = OmegaConf.to_container(cfg.task, resolve=True)
    task.pop("batch_size", None)  # does not change results
    key = {"task": task, "seed": cfg.seed, "tokenizer": cfg.model.tokenizer,
           "metrics": METRICS_VERSION}
    if cfg.judge.name != "none":  # judge=none leaves fingerprints as they were
        from app.judge import fingerprint as judge_fingerprint

        key["judge"] = judge_fingerprint(cfg.judge)
    return key


def job_fingerprint(cfg: DictConfig, mk: dict) -> str:
    """Hash of everything that determines a job's result: the merge (pair, method, parameters,
    λ, dtype), the seed, the tasks and their settings, the metric definitions' version."""
    return tracking.digest({"merge": mk, **_eval_key(cfg)})


def reference_fingerprint(cfg: DictConfig, parent: str) -> str:
    """Hash of a parent's reference evaluation (shared by every method's sweep)."""
    return tracking.digest({"reference": cfg.model[parent], "dtype": cfg.model.dtype,
                            **_eval_key(cfg)})


def reference_for(cfg: DictConfig, lam: float) -> str | None:
    """'pt' or 'it' when this job's merge is that parent bit for bit, else None."""
    same_lambda = all(clean_lambda(v) == lam for k, v in cfg.method.params.items()
                      if k.startswith("lambda_"))
    if lam not in cfg.method.reference_endpoints or not same_lambda or cfg.model.extra:
        return None
    return {0.0: "pt", 1.0: "it"}.get(lam)


def run_job(cfg: DictConfig) -> dict[str, float]:
    """Run one (pair, method, λ) job; return its metrics as {'<task>/<metric>': value}.

    A job whose fingerprint already has a FINISHED run is skipped (its metrics are returned)
    unless ``force=true``; a job that is a parent bit for bit copies the parent's reference.
    """
    start = time.perf_counter()
    validate(cfg)
    lam = clean_lambda(cfg["lambda"])
    mk = mergekit_config(cfg)
    store = tracking.open_store(cfg)
    if os.environ.get("SLURM_ARRAY_TASK_ID") == "0":  # on a cluster, the first array task
        ensure_references(cfg, store)                 # evaluates PT and IT (once: fingerprints)
    fingerprint = job_fingerprint(cfg, mk)
    done = None if cfg.force else tracking.finished_run(store, fingerprint)
    if done is not None:
        metrics = dict(done.data.metrics)
        shown = {k: v for k, v in metrics.items() if not k.startswith("time/")}
        print(summary_line(cfg.method.name, lam, shown) + f"  [done: run {done.info.run_id}]",
              flush=True)
        return metrics
    session, fault = None, None
    try:  # loads models and tasks: config errors surface before any run exists
        session = session_for(cfg)
    except ConfigError:
        raise
    except Exception as e:  # a fault (unreadable weights, out of memory): recorded in a run
        fault = e
    parent = reference_for(cfg, lam)
    reference = None
    if parent and not cfg.force and not cfg.merge.save_dir:
        reference = tracking.finished_run(store, reference_fingerprint(cfg, parent))
    try:
        with tracking.job_run(store, cfg, lam, mk, fingerprint,
                              parent=tracking.parent_run_id()) as run, faults_explained(cfg):
            if fault is not None:
                raise fault
            if reference is not None:
                metrics = {k: v for k, v in reference.data.metrics.items()
                           if not k.startswith("time/")}
                run.client.set_tag(run.run_id, "reused_from", reference.info.run_id)
                metrics["time/total_s"] = time.perf_counter() - start
                run.log_metrics(metrics)
            else:
                metrics = merge_and_evaluate(session, cfg, mk, run, start)
    except JobFailed as e:
        print(f"{cfg.method.name} λ={lam:g}  FAILED: {e}", flush=True)
        raise
    print(summary_line(cfg.method.name, lam, metrics), flush=True)
    return metrics


class JobFailed(RuntimeError):
    """A job that could not finish, for a reason the user can act on (its run is FAILED with
    this line as ``failure_reason``)."""


@contextlib.contextmanager
def faults_explained(cfg: DictConfig):
    """Turn faults the user can act on into one-line JobFailed errors; bugs pass unchanged."""
    try:
        yield
    except JobFailed:
        raise
    except Exception as e:
        line = explain_fault(e, cfg)
        if line is None:
            raise
        raise JobFailed(line) from e


def explain_fault(e: BaseException, cfg: DictConfig) -> str | None:
    """One line saying what went wrong and what to do, or None for an unexpected error."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if isinstance(e, MemoryError) or "out of memory" in text.lower() \
            or "can't allocate memory" in text:
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
        return (f"out of memory on {cfg.device} ({text}); lower task.batch_size (now "
                f"{cfg.task.batch_size}), use model.dtype=bfloat16, or a device with more memory")
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if full or "No space left on device" in text or "Disk quota exceeded" in text:
        where = getattr(e, "filename", None) or "a file"
        return (f"no space left writing {where} ({getattr(e, 'strerror', None) or text}); free "
                f"space, or point merge.save_dir / tracking.dir at another disk")
    if type(e).__name__ == "SafetensorError" or "HeaderTooLarge" in text \
            or "MetadataIncompleteBuffer" in text:
        return f"a weight file cannot be read ({text}); check the files of model.pt and model.it"
    if isinstance(e, NonFinite):
        return str(e)
    return None


class NonFinite(ValueError):
    """The merged model's outputs are NaN or infinite."""


def check_finite(results: dict) -> None:
    """NonFinite if any task's log-likelihoods or metrics are NaN or infinite."""
    for task, res in results.items():
        bad = [r["doc_id"] for r in res.records
               if not all(math.isfinite(x) for x in r.get("logliks", ()))]
        bad_metrics = sorted(k for k, v in res.metrics.items() if not math.isfinite(v))
        if bad or bad_metrics:
            what = (f"NaN/inf log-likelihoods on {len(bad)} {task} documents" if bad
                    else f"non-finite {task} metrics {bad_metrics}")
            raise NonFinite(f"the merged model gives {what}; check the parents' weights, and "
                            f"prefer model.dtype=float32 or bfloat16 to float16")


def ensure_references(cfg: DictConfig, store) -> None:
    """Evaluate PT (λ=0) and IT (λ=1) once per (pair, tasks, settings), tagged as references."""
    from app.merge import reference_config

    validate(cfg)
    for parent, lam in (("pt", 0.0), ("it", 1.0)):
        fingerprint = reference_fingerprint(cfg, parent)
        if tracking.finished_run(store, fingerprint) is not None:
            continue
        session = session_for(cfg)
        mk = reference_config(cfg, parent)
        name = f"reference {parent.upper()} (λ={lam:g})"
        with tracking.job_run(store, cfg, lam, mk, fingerprint, role="reference",
                              name=name) as run, faults_explained(cfg):
            metrics = merge_and_evaluate(session, cfg, mk, run, time.perf_counter())
        print(summary_line(f"reference {parent.upper()}", lam, metrics), flush=True)


def merge_and_evaluate(session: Session, cfg: DictConfig, mk: dict, run,
                       start: float) -> dict[str, float]:
    """Merge into the working model, evaluate, log metrics and artifacts to ``run``."""
    from app.plots import reliability_figure

    run.client.set_tag(run.run_id, "device", session.device)
    report = merge_into(session.model, mk, device=session.device, seed=cfg.seed,
                        trust_remote_code=cfg.model.trust_remote_code)
    run.client.set_tag(run.run_id, "merge_engine", report.engine)
    if cfg.merge.save_dir:
        saved = save_merged(session.model, session.tokenizer, mk, cfg.merge.save_dir)
        run.client.set_tag(run.run_id, "saved_to", str(saved))
    t_eval = time.perf_counter()
    results, lm_eval_out = session.evaluator.evaluate()
    check_finite(results)
    metrics: dict[str, float] = {}
    for task, res in results.items():
        metrics.update({f"{task}/{k}": v for k, v in res.metrics.items()})
        if res.records:
            run.log_jsonl(res.records, f"samples/{task}.jsonl")
        if res.bins:
            run.log_json(res.bins, f"reliability/{task}.json")
            run.log_figure(reliability_figure(res.bins, f"{task}  λ={cfg['lambda']:g}"),
                           f"reliability/{task}.png")
    metrics.update(aggregate(results))
    metrics["time/merge_s"] = report.seconds
    metrics["time/eval_s"] = time.perf_counter() - t_eval
    metrics.update(_OVERHEAD)
    _OVERHEAD.clear()
    metrics.update(judge_run(session, cfg, run))  # {} for judge=none
    metrics["time/total_s"] = time.perf_counter() - start
    run.log_metrics(metrics)
    run.log_json(lm_eval_out, "lm_eval_results.json")
    return metrics


def aggregate(results: dict) -> dict[str, float]:
    """Unweighted means across tasks: mean/acc (all tasks), mean/ece (calibrated tasks)."""
    accs = [r.metrics["acc"] for r in results.values()]
    eces = [r.metrics["ece"] for r in results.values() if "ece" in r.metrics]
    out = {"mean/acc": sum(accs) / len(accs)}
    if eces:
        out["mean/ece"] = sum(eces) / len(eces)
    return out


def summary_line(method: str, lam: float, metrics: dict[str, float]) -> str:
    parts = [f"{method} λ={lam:g}"]
    for key in sorted(metrics):
        task, name = key.split("/", 1)
        if (task not in ("time", "mean") and name in ("acc", "ece")
                or key in ("judge/degeneration_rate", "judge/distinct_responses")):
            parts.append(f"{key}={metrics[key]:.4f}")
    if "time/total_s" in metrics:
        parts.append(f"({metrics['time/total_s']:.1f}s)")
    return "  ".join(parts)
