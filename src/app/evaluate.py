"""The lm-eval adapter: one HFLM over the working model, task objects built once per process.

Every merge is scored through lm-eval's own ``simple_evaluate`` with ``log_samples=True``; the
per-choice log-likelihoods it logs feed :mod:`app.calibration`. lm-eval's response cache is
never used (it is keyed on request text, not on weights).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from app import calibration
from app.config import ConfigError, suggest

LOG = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """One task's metrics and per-sample records for one merge."""

    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    bins: dict[str, list[float]] | None = None  # reliability diagram data (MC tasks)


class Evaluator:
    """Scores the (in-place updated) working model on the configured lm-eval tasks."""

    def __init__(self, model, tokenizer, task_cfg: DictConfig, seed: int = 0):
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.WARNING)  # keep its progress bars only
        self.cfg = task_cfg
        self.seed = seed
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task_cfg.batch_size,
                       softmax_dtype="float32")
        self.manager, self.tasks = build_tasks(task_cfg)

    def evaluate(self) -> tuple[dict[str, TaskResult], dict[str, Any]]:
        """(per-task results, lm-eval's results dict without samples) for the current weights."""
        from lm_eval import simple_evaluate

        out = simple_evaluate(
            model=self.lm, tasks=list(self.tasks.values()), task_manager=self.manager,
            limit=self.cfg.limit,
            log_samples=True, bootstrap_iters=0, random_seed=self.seed,
            numpy_random_seed=self.seed, torch_random_seed=self.seed,
            fewshot_random_seed=self.seed, verbosity="WARNING",
        )
        results = {}
        for spec in self.cfg.tasks:
            results[spec.name] = _task_result(spec, out["results"][spec.name],
                                              out["samples"][spec.name], self.cfg.ece_bins,
                                              self.cfg.bootstrap, self.seed)
        out.pop("samples")
        return results, out


def build_tasks(task_cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """(TaskManager, lm-eval task objects by name); relative data_files resolve in include_path."""
    from lm_eval.tasks import TaskManager, get_task_dict

    include = task_cfg.include_path
    names = [spec.name for spec in task_cfg.tasks]
    where = contextlib.chdir(include) if include else contextlib.nullcontext()
    with where:
        manager = None
        if include:  # indexing lm-eval's own ~14k YAMLs takes seconds: skip it when we can
            manager = TaskManager(include_path=include, include_defaults=False)
            if not set(names) <= set(manager.all_tasks):
                manager = None
        manager = manager or TaskManager(include_path=include)
        for name in names:
            if name not in manager.all_tasks:
                raise ConfigError(f"task.tasks: lm-eval knows no task {name!r}"
                                  f"{suggest(name, manager.all_tasks)}")
        tasks = get_task_dict(names, manager)
    for spec in task_cfg.tasks:
        if spec.num_fewshot is not None:
            tasks[spec.name].set_config(key="num_fewshot", value=spec.num_fewshot)
    return manager, tasks


def _task_result(spec, lm_results: dict, samples: list[dict], bins: int, n_boot: int,
                 seed: int) -> TaskResult:
    key = next((k for k in lm_results if k.split(",")[0] == spec.metric), None)
    if key is None:
        raise ConfigError(f"task.tasks[{spec.name}].metric={spec.metric!r}: lm-eval reported "
                          f"{sorted(k.split(',')[0] for k in lm_results if ',' in k)}")
    metrics = {"acc": float(lm_results[key])}
    if not spec.calibration:
        metrics["n"] = float(len(samples))
        return TaskResult(metrics)
    samples = sorted(samples, key=lambda s: s["doc_id"])
    logliks = [[float(ll) for ll, _greedy in s["filtered_resps"]] for s in samples]
    gold = [int(s["target"]) for s in samples]
    cal = calibration.calibration_metrics(logliks, gold, bins, n_boot, seed)
    cal["acc_lm_eval"] = metrics["acc"]
    conf, correct = calibration.top_label(logliks, gold)
    records = [
        {"doc_id": s["doc_id"], "logliks": ll, "gold": g, "confidence": float(c),
         "correct": bool(k)}
        for s, ll, g, c, k in zip(samples, logliks, gold, conf, correct)
    ]
    rel = calibration.reliability(conf, correct, bins)
    return TaskResult(cal, records, {k: [float(x) for x in v] for k, v in rel.items()})
