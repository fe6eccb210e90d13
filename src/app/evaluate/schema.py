"""The task group's schema and its checks (no lm-eval needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from app.errors import ConfigError, suggest

BINNINGS = ("width", "mass")
SCORINGS = ("auto", "trie", "lm_eval", "shared_context")


@dataclass
class TaskSpec:
    """One lm-eval task and how its score is read."""

    name: str = MISSING  # lm-eval task name
    metric: str = "acc"  # the lm-eval metric logged as <task>/acc
    calibration: bool = True  # multiple choice: compute ECE & co. from choice log-likelihoods
    num_fewshot: Optional[int] = None  # None keeps the task YAML's own setting
    extra_metrics: List[str] = field(default_factory=list)  # further lm-eval metrics, logged as-is
    # an expert pool's forgetting suite: the base's general knowledge (forget/normalized)
    forgetting: bool = False


SOURCES = ("auto", "share")


@dataclass
class SelectionConfig:
    """Which documents choose λ* and which report it (``app.evaluate.selection``)."""

    # share of each task's documents (per part: BBH's subtasks, MMLU-Pro's categories) that
    # selects; the rest reports. 0: no split (selection/* and report/* are not logged)
    share: float = 0.5
    seed: int = 0  # which documents select and which report
    # auto: a task's own validation split selects where it has one (not its test or few-shot
    # split: the toy tasks' 60 questions), else the share above; share: always the share
    source: str = "auto"


@dataclass
class EvalConfig:
    """What to evaluate: lm-eval tasks (found through ``include_path``) and how."""

    tasks: List[TaskSpec] = MISSING  # the tasks evaluated, each an lm-eval task (below)
    include_path: Optional[str] = None  # folder of task YAMLs; relative data_files resolve there
    limit: Optional[int] = None  # first N documents per task (quick runs)
    batch_size: int = 32  # requests per forward pass (lower it on an out-of-memory error)
    ece_bins: int = 15  # bins of the expected calibration error
    ece_binning: str = "width"  # width: equal-width bins | mass: equal-mass (quantile) bins
    bootstrap: int = 1000  # resamples for the 95% intervals of acc and ECE (0: none)
    subsample_seed: Optional[int] = None  # with limit: a seeded random N documents, not the first N
    docs_seed: int = 1234  # seeds `random` while documents are prepared (GPQA's option order)
    data_dir: Optional[str] = None  # local copies of hub datasets, as <data_dir>/<org>/<name>/
    max_gen_toks: Optional[int] = None  # cap on generated tokens (None: the task's own setting)
    nltk_data: Optional[str] = None  # extra NLTK data folder, searched first (IFEval's punkt_tab)
    # trie: each distinct prefix of the requests forwarded once | lm_eval: HFLM's own batches |
    # shared_context: one KV-cached pass per document context | auto: trie where the model
    # takes a cache and logits_to_keep (every transformers decoder), else lm_eval
    scoring: str = "auto"
    # trie scoring's tokens per forward pass: whole subtrees packed under a tree mask (0: the
    # walk by rows of batch_size, auto: from free device memory on CUDA, 0 elsewhere)
    pack_tokens: Any = "auto"
    # every request formatted with the working model's tokenizer chat template (lm-eval's
    # apply_chat_template); off, every λ is scored on the same plain-text prompts
    chat_template: bool = False
    # few-shot examples as alternating user/assistant turns (needs chat_template)
    fewshot_as_multiturn: bool = False
    selection: SelectionConfig = field(default_factory=SelectionConfig)


def validate(task, models=None) -> None:
    """The task settings; with the run's model set (an ``app.modelset.ModelSet``), that its
    tokenizer can apply a chat template where one is asked for and that a pool's domain tasks
    are evaluated."""
    for key, value, low in (("ece_bins", task.ece_bins, 1), ("batch_size", task.batch_size, 1),
                            ("limit", task.limit, 1), ("max_gen_toks", task.max_gen_toks, 1),
                            ("bootstrap", task.bootstrap, 0)):
        if value is not None and value < low:
            what = "a positive integer" if low else "≥ 0 (0: no intervals)"
            raise ConfigError(f"task.{key}={value} must be {what}")
    pack = task.get("pack_tokens", "auto")
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 0):
        raise ConfigError(f"task.pack_tokens={pack!r} must be auto or an integer ≥ 0 (tokens per "
                          f"forward pass of trie scoring; 0: the walk by rows)")
    for key, value, valid in (("ece_binning", task.ece_binning, BINNINGS),
                              ("scoring", task.scoring, SCORINGS)):
        if value not in valid:
            raise ConfigError(f"task.{key}={value!r} is not valid"
                              f"{suggest(str(value), list(valid))}; use {' or '.join(valid)}")
    share = task.selection.share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        shown = f"{share:g}" if isinstance(share, (int, float)) else repr(share)
        raise ConfigError(f"task.selection.share={shown} must be a share in [0, 1): the part "
                          f"of each task's documents that selects λ* (0: no split)")
    if task.selection.source not in SOURCES:
        raise ConfigError(f"task.selection.source={task.selection.source!r} is not valid"
                          f"{suggest(str(task.selection.source), list(SOURCES))}; use "
                          f"{' or '.join(SOURCES)}")
    if task.fewshot_as_multiturn and not task.chat_template:
        raise ConfigError("task.fewshot_as_multiturn=true needs task.chat_template=true (few-shot "
                          "turns exist only in a chat); set both, or neither")
    if task.chat_template and models is not None:
        _check_chat_template(models)
    if models is not None:
        models.check_tasks(task.tasks)


def fingerprint_part(task) -> dict[str, Any]:
    """What about the task settings determines a job's results (their fingerprint's part)."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(task, resolve=True)
    out.pop("batch_size", None)  # does not change results
    out.pop("pack_tokens", None)  # nor does the packing of the tree (float rounding)
    out["scoring"] = "lm_eval"  # no scoring changes results (float rounding): all key as it did
    for key in ("chat_template", "fewshot_as_multiturn"):  # off: fingerprints as they were
        if out.get(key) is False:
            out.pop(key)
    return out


# where a tokenizer folder keeps its chat template (transformers 5 reads each of them)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")


def has_chat_template(folder: str) -> bool | None:
    """Whether a local tokenizer folder holds a chat template; None when its files cannot tell
    (a hub id, no tokenizer_config.json)."""
    path = Path(folder).expanduser()
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return bool(config.get("chat_template")) or any((path / f).exists() for f in TEMPLATE_FILES)


def no_template_error(where: str) -> ConfigError:
    return ConfigError(f"task.chat_template=true: the working model's tokenizer ({where}) has no "
                       f"chat template; set task.chat_template=false (and "
                       f"task.fewshot_as_multiturn=false) or use a tokenizer that has one")


def _check_chat_template(models) -> None:
    """Before anything is loaded: the tokenizer the working model takes (``model.tokenizer``;
    union takes IT's template, else PT's) has a chat template, where its local files can tell.
    The loaded tokenizer is checked again before the first merge (``app.evaluate.evaluator``)."""
    from app.hub import local_folder

    keys = ["it", "pt"] if models.tokenizer == "union" else [models.tokenizer]
    folders = {f"model.{k}": str(local_folder(models.path_of(k), models.cache_dir))
               for k in keys}
    if not models.trust_remote_code and all(has_chat_template(f) is False
                                           for f in folders.values()):
        raise no_template_error(", ".join(f"{k}={f!r}" for k, f in folders.items()))
