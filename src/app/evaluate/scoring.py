"""Scoring one merge's responses with lm-eval's filters and metrics, and calibration on top.

Each document is scored by the task's own ``process_results`` and aggregated by lm-eval
(``weight_by_size`` across the leaves of a group); a calibrated (multiple-choice) task adds
ECE and friends from the per-choice log-likelihoods (``app.calibration``). A task whose
documents fall in parts also gets each part's accuracy (``<part>/acc``, the mean of its
documents' scores): a group's parts are its leaves (BBH's subtasks, named without the common
prefix), a single task's the values of its documents' ``category`` field (MMLU-Pro's 14).
With ``task.selection.share`` > 0 the task's validation split selects and all its documents
report where it has one of its own (``tasks.selection_leaves``); else each document falls in the
selection or the report set (``app.evaluate.selection``, stratified by part). Each set gets its
accuracy (and ECE).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from app import calibration, compat
from app.errors import ConfigError, suggest
from app.evaluate.tasks import Leaf


@dataclass
class TaskResult:
    """One configured task's metrics and per-sample records for one merge."""

    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    bins: dict[str, list[float]] | None = None  # reliability diagram data (MC tasks)
    splits: dict[str, dict[str, float]] = field(default_factory=dict)  # selection, report


def score_leaf(leaf: Leaf) -> tuple[dict[str, Any], dict[str, dict[int, Any]]]:
    """lm-eval's aggregated metrics ``{"<metric>,<filter>": value}`` and per-document values
    ``{"<metric>,<filter>": {doc_id: value}}`` for the responses now on the instances."""
    task = leaf.task
    compat.set_instances(task, leaf.instances)  # apply_filters works on these
    task.apply_filters()
    raw: dict[tuple[str, str], list] = defaultdict(list)
    per_doc: dict[str, dict[int, Any]] = defaultdict(dict)
    for filter_key in leaf.instances[0].filtered_resps:
        for doc_id, _, doc in leaf.docs:
            reqs = leaf.requests[doc_id]
            values = task.process_results(doc, [r.filtered_resps[filter_key] for r in reqs])
            for metric, value in values.items():
                raw[(metric, filter_key)].append(value)
                per_doc[f"{metric},{filter_key}"][doc_id] = value
    agg = compat.task_aggregations(task, raw)
    return {k: v for k, v in agg.items() if "_stderr," not in k}, per_doc


def _metric_key(agg: dict[str, Any], metric: str) -> str | None:
    return next((k for k in agg if k.split(",")[0] == metric), None)


def task_result(spec, leaves: list[Leaf], per_leaf: list, task_cfg: DictConfig,
                seed: int, selection: tuple[list[Leaf], list] | None = None,
                split: bool = True) -> TaskResult:
    """Pool the leaves of one configured task into its metrics and per-sample records; with
    ``selection`` (the task's validation-split leaves and their scores), those select and all
    of ``leaves`` report; ``split=False``: no selection/report sets at all."""
    sizes = [len(leaf.docs) for leaf in leaves]
    pooled: dict[str, float] = {}
    for metric in [spec.metric, *spec.extra_metrics]:
        values = []
        for leaf, (agg, _) in zip(leaves, per_leaf):
            key = _metric_key(agg, metric)
            if key is None:
                reported = sorted({k.split(",")[0] for k in agg})
                raise ConfigError(f"task.tasks[{spec.name}].metric={metric!r}: lm-eval reported "
                                  f"{reported} for {leaf.name}{suggest(metric, reported)}")
            values.append(float(agg[key]))
        pooled[metric] = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    multi = len(leaves) > 1
    if not spec.calibration:
        return _generative_result(spec, leaves, per_leaf, pooled, task_cfg, seed, multi,
                                  selection, split)
    logliks, gold, records = [], [], []
    for leaf in leaves:
        for doc_id, true_id, _ in leaf.docs:
            lls = [float(r.filtered_resps["none"][0]) for r in leaf.requests[doc_id]]
            logliks.append(lls)
            gold.append(leaf.gold[doc_id])
            records.append({"doc_id": true_id, **({"task": leaf.name} if multi else {}),
                            "logliks": lls, "gold": leaf.gold[doc_id]})
    cal = calibration.calibration_metrics(logliks, gold, task_cfg.ece_bins, task_cfg.bootstrap,
                                          seed, task_cfg.ece_binning)
    cal["acc_lm_eval"] = pooled.pop(spec.metric)
    cal.update(pooled)
    conf, correct = calibration.top_label(logliks, gold)
    for rec, c, k in zip(records, conf, correct):
        rec["confidence"], rec["correct"] = float(c), bool(k)
    rel = calibration.reliability(conf, correct, task_cfg.ece_bins, task_cfg.ece_binning)
    scores = [float(c) for c in correct]
    cal.update(part_accuracies(leaves, scores, records))
    return TaskResult(cal, records, {k: [float(x) for x in v] for k, v in rel.items()},
                      _splits(spec, leaves, records, scores, conf, task_cfg, seed, selection)
                      if split else {})


SELECTION_KEYS = ("acc", "ece", "n", "acc_ci_low", "acc_ci_high")


def _splits(spec, leaves: list[Leaf], records: list[dict], scores: list[float], conf,
            task_cfg, seed: int, selection=None) -> dict[str, dict[str, float]]:
    """The selection and report sets' metrics; each record gets its ``set``. With
    ``selection``, the validation split's leaves select and every document here reports;
    else a seeded, stratified share of these documents selects."""
    from app.evaluate.selection import split_metrics

    chosen_cfg = task_cfg.get("selection")
    if not chosen_cfg or not chosen_cfg.share:
        return {}
    if selection is not None:
        chosen = task_result(spec, *selection, task_cfg, seed, split=False).metrics
        for record in records:
            record["set"] = "report"
        report = split_metrics([False] * len(scores), scores, conf, task_cfg.ece_bins,
                               task_cfg.ece_binning)["report"]
        return {"selection": {k: chosen[k] for k in SELECTION_KEYS if k in chosen},
                "report": report}
    chosen = selection_split(spec.name, leaves, chosen_cfg.share, chosen_cfg.seed)
    for record, sel in zip(records, chosen, strict=True):
        record["set"] = "selection" if sel else "report"
    return split_metrics(chosen, scores, conf, task_cfg.ece_bins, task_cfg.ece_binning,
                         task_cfg.bootstrap, chosen_cfg.seed)


def selection_split(name: str, leaves: list[Leaf], share: float, seed: int) -> list[bool]:
    """Per document of a task (in its leaves' order), whether it selects λ* (else reports)."""
    from app.evaluate.selection import selected

    keys = [(leaf.name, true_id) for leaf in leaves for _, true_id, _ in leaf.docs]
    return selected(name, keys, document_parts(leaves), share, seed)


def document_parts(leaves: list[Leaf]) -> list[str] | None:
    """Each document's part, in the order the leaves hold them, or None for a task in one
    part: the leaf (without the leaves' common name prefix) where there are several, else
    the document's ``category`` where every document has one and there are several."""
    if len(leaves) > 1:
        names = [leaf.name for leaf in leaves]
        prefix = os.path.commonprefix(names)
        prefix = prefix[:prefix.rfind("_") + 1] if "_" in prefix else ""
        return [leaf.name[len(prefix):] or leaf.name for leaf in leaves for _ in leaf.docs]
    docs = [doc for _, _, doc in leaves[0].docs]
    if not docs or not all(isinstance(d, dict) and isinstance(d.get("category"), str)
                           for d in docs):
        return None
    parts = [d["category"] for d in docs]
    return parts if len(set(parts)) > 1 else None


def part_accuracies(leaves: list[Leaf], scores: list[float],
                    records: list[dict]) -> dict[str, float]:
    """``{"<part>/acc": mean score}`` over each part's documents (see ``document_parts``);
    each document's record gets its ``part``."""
    parts = document_parts(leaves)
    if parts is None:
        return {}
    by_part: dict[str, list[float]] = defaultdict(list)
    for part, score, record in zip(parts, scores, records, strict=True):
        record["part"] = part = re.sub(r"[^\w.\- ]", "_", part)
        by_part[part].append(score)
    return {f"{part}/acc": sum(v) / len(v) for part, v in sorted(by_part.items())}


def _generative_result(spec, leaves, per_leaf, pooled, task_cfg, seed, multi, selection=None,
                       split=True) -> TaskResult:
    metrics = {"acc": pooled.pop(spec.metric), **pooled}
    records, scores = [], []
    for leaf, (agg, per_doc) in zip(leaves, per_leaf):
        key = _metric_key(agg, spec.metric)
        filter_key = key.split(",", 1)[1]
        for doc_id, true_id, _ in leaf.docs:
            score = float(per_doc[key][doc_id])
            scores.append(score)
            response = leaf.requests[doc_id][0].filtered_resps[filter_key]
            records.append({"doc_id": true_id, **({"task": leaf.name} if multi else {}),
                            "score": score, "response": response})
    metrics["n"] = float(len(scores))
    metrics.update(part_accuracies(leaves, scores, records))
    if task_cfg.bootstrap > 0:
        metrics["acc_ci_low"], metrics["acc_ci_high"] = calibration.bootstrap_mean_ci(
            scores, task_cfg.bootstrap, seed=seed)
    return TaskResult(metrics, records, splits=_splits(
        spec, leaves, records, scores, None, task_cfg, seed, selection) if split else {})
