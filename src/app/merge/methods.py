"""The merge-method registry: one entry per mergekit ``merge_method``, and the method schema.

A method config (``conf/method/*.yaml``, schema ``MethodConfig``) is a mergekit template plus
λ's range and the λ values where it is a parent bit for bit; adding one needs no Python. What
is true of a mergekit method whatever the config is declared here once: its knobs
(``method.params``) and their ranges, whether it is a task-vector method (a base model plus
fine-tunes, so ``model.extra`` applies), and its direct path in ``app.merge.direct`` (if any).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from app.errors import ConfigError, clean_lambda, suggest


@dataclass
class MethodConfig:
    """A merge method: a mergekit configuration template over ${lambda} and ${model.*}."""

    name: str = MISSING  # the method's name in runs, tags and reports
    lambda_range: List[float] = field(default_factory=lambda: [0.0, 1.0])  # [low, high] λ takes
    params: Dict[str, Any] = field(default_factory=dict)  # the method's own knobs (density, …)
    # λ values at which this method reproduces a parent bit for bit (0 → PT, 1 → IT): there a
    # job reuses the parent's reference evaluation instead of evaluating again.
    reference_endpoints: List[float] = field(default_factory=list)
    mergekit: Any = MISSING  # the mergekit configuration, over ${lambda} and ${model.*}


@dataclass(frozen=True)
class Range:
    """An interval of valid values; ``closed`` says which ends belong to it."""

    low: float
    high: float
    closed: str = "[]"  # "[]", "(]", "[)" or "()"

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.closed[0] == "[" else x > self.low
        below = x <= self.high if self.closed[1] == "]" else x < self.high
        return above and below

    def __str__(self) -> str:
        return f"{self.closed[0]}{self.low:g}, {self.high:g}{self.closed[1]}"


@dataclass(frozen=True)
class MergeMethod:
    """What a mergekit merge method takes."""

    params: Dict[str, Range] = field(default_factory=dict)  # method.params knobs besides λ
    task_vector: bool = False  # a base model plus fine-tunes: model.extra applies
    direct: str | None = None  # its direct path: a key of app.merge.direct.PLANS
    pool: bool = False  # merged by app.merge.pool (not a mergekit method): θ_base + λ·τ*
    data: bool = False  # needs each expert's training documents (model.experts[].tasks)
    choices: Dict[str, tuple] = field(default_factory=dict)  # knobs taking one of some words


DENSITY = Range(0.0, 1.0, "(]")
COUNT = Range(1, 1e9)
POSITIVE = Range(0.0, float("inf"), "()")
METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(direct="linear"),
    "slerp": MergeMethod(direct="slerp"),
    "nuslerp": MergeMethod(direct="nuslerp"),
    "task_arithmetic": MergeMethod(task_vector=True, direct="task_vector"),
    "ties": MergeMethod({"density": DENSITY}, task_vector=True, direct="task_vector"),
    "dare_ties": MergeMethod({"density": DENSITY}, task_vector=True, direct="task_vector"),
    "dare_linear": MergeMethod({"density": DENSITY}, task_vector=True, direct="task_vector"),
    "della": MergeMethod({"density": DENSITY, "epsilon": Range(0.0, 1.0, "[)")},
                         task_vector=True, direct="task_vector"),
    "della_linear": MergeMethod({"density": DENSITY, "epsilon": Range(0.0, 1.0, "[)")},
                                task_vector=True, direct="task_vector"),
    "breadcrumbs": MergeMethod({"density": DENSITY, "gamma": Range(0.0, 1.0, "[)")},
                               task_vector=True, direct="task_vector"),
    "breadcrumbs_ties": MergeMethod({"density": DENSITY, "gamma": Range(0.0, 1.0, "[)")},
                                    task_vector=True, direct="task_vector"),
    # expert-pool methods mergekit lacks (app.merge.pool)
    "fisher": MergeMethod({"examples": COUNT}, task_vector=True, pool=True, data=True,
                          choices={"labels": ("empirical", "sampled")}),
    "regmean": MergeMethod({"alpha": Range(0.0, 1.0, "(]"), "examples": COUNT},
                           task_vector=True, pool=True, data=True),
    "localize_stitch": MergeMethod({"sparsity": Range(0.0, 1.0, "()"), "examples": COUNT,
                                    "mask_steps": COUNT, "mask_lr": POSITIVE},
                                   task_vector=True, pool=True, data=True,
                                   choices={"masks": ("trained", "dataless")}),
    "consensus_ta": MergeMethod({"tall_factor": POSITIVE, "min_agree": COUNT},
                                task_vector=True, pool=True),
}


def method_of(method_cfg) -> MergeMethod:
    """The registry entry of a method config's mergekit ``merge_method``."""
    name = str(method_cfg.mergekit.merge_method)
    if name not in METHODS:
        raise ConfigError(f"method={method_cfg.name}: mergekit merge_method {name!r} is not "
                          f"supported{suggest(name, list(METHODS))}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def lambda_range(method_cfg) -> tuple[float, float]:
    """The method's ``lambda_range`` as (low, high); ConfigError unless two numbers, low ≤ high."""
    rng = method_cfg.lambda_range
    values = None if isinstance(rng, (str, bytes)) or not hasattr(rng, "__iter__") else list(rng)
    if (values is None or len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or not values[0] <= values[1]):
        raise ConfigError(f"method.lambda_range={rng!r} must be two numbers [low, high] with "
                          f"low ≤ high, e.g. [0, 1]")
    return float(values[0]), float(values[1])


def validate(method, lam: float, models) -> None:
    """λ inside the method's range, its knobs inside theirs, the method fit for the model set
    (``models``: an ``app.modelset.ModelSet``)."""
    entry = method_of(method)
    lo, hi = lambda_range(method)
    if not lo <= lam <= hi:
        raise ConfigError(f"lambda={lam:g} is outside method={method.name}'s range "
                          f"[{lo:g}, {hi:g}]")
    for key, value in method.params.items():
        if key.startswith("lambda_"):  # per-layer λ (linear_gradient): λ's own range
            v = clean_lambda(value)
            if not lo <= v <= hi:
                raise ConfigError(f"method.params.{key}={v:g} is outside method={method.name}'s "
                                  f"range [{lo:g}, {hi:g}]")
        elif key in entry.choices:
            if value not in entry.choices[key]:
                raise ConfigError(f"method.params.{key}={value!r} is not valid; use "
                                  f"{' or '.join(entry.choices[key])}")
        elif key in entry.params and not (_is_number(value)
                                          and float(value) in entry.params[key]):
            raise ConfigError(f"method.params.{key}={value} must be in {entry.params[key]}")
    if "epsilon" in method.params:  # DELLA's keep probabilities: density ± epsilon
        eps, dens = float(method.params.epsilon), float(method.params.get("density", 1.0))
        if dens < 1 and not (0.0 < dens - eps and dens + eps < 1.0):
            raise ConfigError(f"method.params.epsilon={method.params.epsilon} must leave "
                              f"density ± epsilon strictly inside (0, 1) (density={dens:g}: "
                              f"epsilon < {min(dens, 1 - dens):g})")
    models.check_method(method.name, entry.task_vector, entry.pool,
                        entry.data and method.params.get("masks", "trained") == "trained")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def reference_for(method, lam: float, models) -> str | None:
    """'pt' or 'it' when this job's merge is that parent bit for bit, else None."""
    same_lambda = all(clean_lambda(v) == lam for k, v in method.params.items()
                      if k.startswith("lambda_"))
    if lam not in method.reference_endpoints or not same_lambda:
        return None
    return models.is_parent(lam)


SAVE_MARKER = "merge_info.json"  # what a folder this project saved a merge to holds


def save_dir_problem(path: Path) -> str | None:
    """Why a merge cannot be saved at ``path`` without touching what is not the project's:
    a file, a folder with other files (no ``SAVE_MARKER``), a previous save holding a folder
    (a save writes none: your working folder, a store, a log folder is inside it), a place
    that cannot be written."""
    if path.is_file() or (path.exists() and not path.is_dir()):
        return "is a file, not a folder; give a new or empty folder"
    held = list(path.iterdir()) if path.is_dir() else []
    if held and not (path / SAVE_MARKER).is_file():
        return (f"holds files this project did not write (no {SAVE_MARKER}); give a new or "
                f"empty folder, or a previous save to replace")
    if inside := next((p for p in held if not p.is_file()), None):
        return (f"holds the folder {inside.name!r}, which no save writes (a previous save is "
                f"replaced whole); give a new or empty folder")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be written ({parent} is not a writable folder)"
    return None


PARENTS_ON = ("auto", "device", "host")  # merge.parents_on


def validate_settings(merge) -> None:
    if merge.parents_on not in PARENTS_ON:
        raise ConfigError(f"merge.parents_on={merge.parents_on} is not valid"
                          f"{suggest(str(merge.parents_on), list(PARENTS_ON))}; use one of "
                          f"{', '.join(PARENTS_ON)}")
    if not 0 < merge.resident_share <= 1:
        raise ConfigError(f"merge.resident_share={merge.resident_share} must be in (0, 1]: the "
                          f"share of the device's free memory the parents may take")
    if merge.save_dir:
        path = Path(merge.save_dir).expanduser().resolve()
        if problem := save_dir_problem(path):
            raise ConfigError(f"merge.save_dir={merge.save_dir!r}: {problem}")


@dataclass
class MergeSettings:
    """Where the parents are while merging, and what to do with a merged model besides
    evaluating it (the ``merge`` key)."""

    save_dir: Optional[str] = None  # write it there (safetensors, tokenizer, mergekit YAML)
    # The parents (and a pool's experts), read once: "device" holds them on the merge device
    # (on CPU: in RAM instead of mapped), "host" streams them (on CUDA from pinned memory,
    # each tensor copied per λ; on CPU mapped, as read), "auto" is "device" on CUDA where
    # they fit beside the working model within resident_share of its free memory, else host.
    parents_on: str = "auto"
    resident_share: float = 0.5  # (0, 1]: of the device's free memory, for parents_on=auto
