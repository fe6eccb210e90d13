"""One job: merge (pair, method, λ) in memory, evaluate, compute calibration, log to MLflow.

The working model, tokenizer, lm-eval model wrapper and task objects live in a per-process
``Session`` keyed by what determines them, so every job a launcher runs in this process
reuses them: a λ step only rewrites tensors and re-scores the same requests.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from app import tracking
from app.config import clean_lambda, validate
from app.merge import merge_into, mergekit_config, save_merged

LOG = logging.getLogger(__name__)
_SESSIONS: dict[str, "Session"] = {}


@dataclass
class Session:
    """What a process loads once: the working model, its tokenizer, and the evaluator."""

    model: Any
    tokenizer: Any
    evaluator: Any
    device: str


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def session_for(cfg: DictConfig) -> Session:
    """The process's Session for this pair, tasks and device (built on first use)."""
    key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True),
                      OmegaConf.to_container(cfg.task, resolve=True), cfg.device, cfg.seed])
    if key not in _SESSIONS:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.evaluate import Evaluator

        device = resolve_device(cfg.device)
        source = cfg.model[cfg.model.tokenizer]  # the working model starts as this parent
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, cfg.model.dtype),
            trust_remote_code=cfg.model.trust_remote_code).to(device).eval()
        evaluator = Evaluator(model, tokenizer, cfg.task, seed=cfg.seed)
        _SESSIONS.clear()  # one working model per process
        _SESSIONS[key] = Session(model, tokenizer, evaluator, device)
    return _SESSIONS[key]


def run_job(cfg: DictConfig) -> dict[str, float]:
    """Run one (pair, method, λ) job; return its metrics as {'<task>/<metric>': value}."""
    start = time.perf_counter()
    validate(cfg)
    lam = clean_lambda(cfg["lambda"])
    mk = mergekit_config(cfg)
    session = session_for(cfg)  # loads models and tasks: errors surface before any run exists
    store = tracking.open_store(cfg)
    with tracking.job_run(store, cfg, lam, mk) as run:
        report = merge_into(session.model, mk, device=session.device, seed=cfg.seed,
                            trust_remote_code=cfg.model.trust_remote_code)
        if cfg.merge.save_dir:
            saved = save_merged(session.model, session.tokenizer, mk, cfg.merge.save_dir)
            run.client.set_tag(run.run_id, "saved_to", str(saved))
        t_eval = time.perf_counter()
        results, lm_eval_out = session.evaluator.evaluate()
        metrics: dict[str, float] = {}
        for task, res in results.items():
            metrics.update({f"{task}/{k}": v for k, v in res.metrics.items()})
            if res.records:
                run.log_jsonl(res.records, f"samples/{task}.jsonl")
                run.log_json(res.bins, f"reliability/{task}.json")
        metrics["time/merge_s"] = report.seconds
        metrics["time/eval_s"] = time.perf_counter() - t_eval
        metrics["time/total_s"] = time.perf_counter() - start
        run.log_metrics(metrics)
        run.log_json(lm_eval_out, "lm_eval_results.json")
    print(summary_line(cfg.method.name, lam, metrics), flush=True)
    return metrics


def summary_line(method: str, lam: float, metrics: dict[str, float]) -> str:
    parts = [f"{method} λ={lam:g}"]
    for key in sorted(metrics):
        task, name = key.split("/", 1)
        if task != "time" and name in ("acc", "ece"):
            parts.append(f"{key}={metrics[key]:.4f}")
    parts.append(f"({metrics['time/total_s']:.1f}s)")
    return "  ".join(parts)
