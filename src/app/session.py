"""What a process loads once and keeps across its jobs: the working model, its tokenizer, the
evaluator (tasks and engine), the merger and what judges load — and which device it uses."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from app.config import Job


@dataclass
class Session:
    """What a process loads once: the working model, its tokenizer, the evaluator, the merger."""

    model: Any
    tokenizer: Any
    evaluator: Any
    merger: Any
    judge_models: Any  # app.judge.adapters.JudgeModels: what judges load, kept across jobs
    device: str
    overhead: dict[str, float] = field(default_factory=dict)  # logged by the next evaluated job


def pick_device(device: str, cuda_count: int, job_num: int) -> str:
    """``auto``: CPU without CUDA, the GPU with one, GPU ``job_num % count`` with several (so
    parallel jobs of a local launcher spread one per GPU); any other value is kept."""
    if device != "auto":
        return device
    if cuda_count == 0:
        return "cpu"
    return "cuda" if cuda_count == 1 else f"cuda:{job_num % cuda_count}"


def build_session(job: Job, device: str) -> Session:
    """Load the working model, build the tasks and the engine; note what that cost."""
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.tasks import training_examples
    from app.hub import local_folder
    from app.judge.adapters import JudgeModels
    from app.merge.merger import merger_for
    from app.models import load_working_model

    t0 = time.perf_counter()
    models = job.models
    model, tokenizer = load_working_model(models, device)
    if job.engine.name == "vllm":
        from app.evaluate.vllm_engine import VLLMEngine

        folder = local_folder(models.tokenizer_source, models.cache_dir)
        engine = VLLMEngine(folder, model, job.engine, models.dtype, device,
                            models.trust_remote_code)
    else:
        engine = HFEngine(model, tokenizer, job.task.batch_size, job.task.scoring,
                          job.task.pack_tokens)
    evaluator = Evaluator(engine, job.task, seed=job.seed)
    merger = merger_for(models, job.merge, job.seed, device)
    merger.pool.tokenizer = tokenizer  # the data-dependent methods' documents: each expert's
    merger.pool.examples = {                   # training split
        str(local_folder(e.path, models.cache_dir).resolve()):
            [x for t in e.tasks for x in training_examples(evaluator.tasks[t])]
        for e in models.experts}
    # What this process paid before its first merge, logged by the job that evaluates next:
    # interpreter start and imports up to here, then loading the model and building tasks.
    overhead = {"time/startup_s": t0 - _process_start(),
                "time/load_s": time.perf_counter() - t0}
    return Session(model, tokenizer, evaluator, merger, JudgeModels(), device, overhead)


def _process_start() -> float:
    """This process's start on the perf_counter clock (Linux; 0 overhead if unknown)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return time.perf_counter() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()
