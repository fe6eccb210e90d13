"""The task group's schema and its checks (no lm-eval needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from app.errors import ConfigError, suggest

BINNINGS = ("width", "mass")
SCORINGS = ("lm_eval", "shared_context")


@dataclass
class TaskSpec:
    """One lm-eval task and how its score is read."""

    name: str = MISSING  # lm-eval task name
    metric: str = "acc"  # the lm-eval metric logged as <task>/acc
    calibration: bool = True  # multiple choice: compute ECE & co. from choice log-likelihoods
    num_fewshot: Optional[int] = None  # None keeps the task YAML's own setting
    extra_metrics: List[str] = field(default_factory=list)  # further lm-eval metrics, logged as-is


@dataclass
class EvalConfig:
    """What to evaluate: lm-eval tasks (found through ``include_path``) and how."""

    tasks: List[TaskSpec] = MISSING
    include_path: Optional[str] = None  # folder of task YAMLs; relative data_files resolve there
    limit: Optional[int] = None  # first N documents per task (quick runs)
    batch_size: int = 32
    ece_bins: int = 15
    ece_binning: str = "width"  # width: equal-width bins | mass: equal-mass (quantile) bins
    bootstrap: int = 1000  # resamples for the 95% intervals of acc and ECE (0: none)
    subsample_seed: Optional[int] = None  # with limit: a seeded random N documents, not the first N
    docs_seed: int = 1234  # seeds `random` while documents are prepared (GPQA's option order)
    data_dir: Optional[str] = None  # local copies of hub datasets, as <data_dir>/<org>/<name>/
    max_gen_toks: Optional[int] = None  # cap on generated tokens (None: the task's own setting)
    nltk_data: Optional[str] = None  # extra NLTK data folder, searched first (IFEval's punkt_tab)
    scoring: str = "lm_eval"  # lm_eval: HFLM's batches | shared_context: one KV-cached context/doc


def validate(task) -> None:
    for key, value, low in (("ece_bins", task.ece_bins, 1), ("batch_size", task.batch_size, 1),
                            ("limit", task.limit, 1), ("bootstrap", task.bootstrap, 0)):
        if value is not None and value < low:
            what = "a positive integer" if low else "≥ 0 (0: no intervals)"
            raise ConfigError(f"task.{key}={value} must be {what}")
    for key, value, valid in (("ece_binning", task.ece_binning, BINNINGS),
                              ("scoring", task.scoring, SCORINGS)):
        if value not in valid:
            raise ConfigError(f"task.{key}={value!r} is not valid"
                              f"{suggest(str(value), list(valid))}; use {' or '.join(valid)}")
