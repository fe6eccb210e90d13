"""Expert pools (MergeBench's protocol): their references and normalised metrics.

A pool (``model.experts``) is a base (``model.pt``) and N experts fine-tuned from it, each with
its domain tasks. Its references are the base and every expert on their own; a job's
``mt/<task>/normalized`` is its score on an expert's domain task over that expert's score,
``mt/normalized`` their mean (MergeBench's normalised multi-task performance), and
``forget/<task>/normalized`` its score on a forgetting task (``task.tasks[].forgetting``) over
the base's, ``forget/normalized`` their mean. The two means also over the selection documents
(``selection/mt/normalized``, ``selection/forget/normalized``), where λ and the knobs are
chosen; the unprefixed ones are over the reported documents.
"""

from __future__ import annotations

from statistics import fmean


def parent_path(cfg, parent: str) -> str:
    """The model of a reference: 'pt', 'it', or a pool's 'expert:<name>'."""
    if parent.startswith("expert:"):
        name = parent.split(":", 1)[1]
        return next(e.path for e in cfg.model.experts if e.name == name)
    return cfg.model[parent]


def parents(cfg) -> list[tuple[str, float]]:
    """The references a study needs, with the λ they stand at: PT and IT for a pair; the
    base and each expert (λ=1 of its own) for a pool."""
    if not cfg.model.experts:
        return [("pt", 0.0), ("it", 1.0)]
    return [("pt", 0.0)] + [(f"expert:{e.name}", 1.0) for e in cfg.model.experts]


def label(parent: str) -> str:
    return f"expert {parent.split(':', 1)[1]}" if parent.startswith("expert:") \
        else parent.upper()


def normalized(cfg, metrics: dict[str, float],
               references: dict[str, dict[str, float]]) -> dict[str, float]:
    """The pool's normalised metrics of one evaluation (``references``: each parent's
    metrics, by ``parents`` name); {} for a pair or where a reference is missing."""
    if not cfg.model.experts:
        return {}
    out: dict[str, float] = {}
    for prefix in ("", "selection/"):
        mt, forget = [], []
        for e in cfg.model.experts:
            ref = references.get(f"expert:{e.name}")
            for task in e.tasks:
                value = _ratio(metrics, ref, f"{prefix}{task}/acc")
                if value is not None:
                    if not prefix:
                        out[f"mt/{task}/normalized"] = value
                    mt.append(value)
        base = references.get("pt")
        for spec in cfg.task.tasks:
            if spec.forgetting:
                value = _ratio(metrics, base, f"{prefix}{spec.name}/acc")
                if value is not None:
                    if not prefix:
                        out[f"forget/{spec.name}/normalized"] = value
                    forget.append(value)
        if mt:
            out[f"{prefix}mt/normalized"] = fmean(mt)
        if forget:
            out[f"{prefix}forget/normalized"] = fmean(forget)
    return out


def _ratio(metrics: dict, reference: dict | None, key: str) -> float | None:
    if reference is None or key not in metrics or not reference.get(key):
        return None
    return metrics[key] / reference[key]


def training_examples(tasks: dict, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from the training documents of lm-eval task objects (a task's
    leaves), as lm-eval renders them: the answer is the gold choice (multiple choice) or the
    target, after the task's target delimiter."""
    out = []
    for task in tasks.values():
        if not task.has_training_docs():
            continue
        delimiter = task.config.target_delimiter or ""
        for doc in task.training_docs():
            target = task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice":
                choices = task.doc_to_choice(doc)
                target = choices[target] if isinstance(target, int) else target
            out.append((task.doc_to_text(doc), f"{delimiter}{target}"))
            if limit is not None and len(out) >= limit:
                return out
    return out
