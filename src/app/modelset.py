"""A model set: a base and its fine-tunes, merged at λ — the one shape of pairs and pools.

A PT/IT pair is a base (PT) and one fine-tune (IT): λ=0 gives PT, λ=1 gives IT. An expert
pool (MergeBench's protocol, ``model.experts``) is a base and N named experts, each with its
domain tasks and weight: λ scales every expert's task vector. A set knows its references (the
models each study compares a merge with: PT and IT, or the base and each expert on its own),
how its fine-tunes enter a mergekit configuration, the part of a fingerprint it determines and
the pool's normalised metrics: a job's ``mt/<task>/normalized`` is its score on an expert's
domain task over that expert's score, ``mt/normalized`` their mean (MergeBench's normalised
multi-task performance), and ``forget/<task>/normalized`` its score on a forgetting task
(``task.tasks[].forgetting``) over the base's, ``forget/normalized`` their mean — the two means
also over the selection documents (``selection/…``), where λ and the knobs are chosen.

Nothing outside this module asks whether a set is a pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from app.errors import ConfigError


@dataclass(frozen=True)
class Member:
    """A fine-tune of the base: a pair's IT (named ``it``) or one expert of a pool."""

    name: str
    path: str
    tasks: tuple[str, ...] = ()  # its domain tasks (a pool's experts)
    weight: float = 1.0  # its share of the merge: task vector × λ × weight


@dataclass(frozen=True)
class ModelSet:
    """A base and its fine-tunes (``model``), with the settings every model of it shares."""

    name: str
    base: str  # model.pt
    members: tuple[Member, ...]  # a pair: IT alone; a pool: its experts (the first is model.it)
    extra: tuple[Member, ...] = ()  # model.extra: further fine-tunes, each its own weight
    pool: bool = False
    dtype: str = "float32"
    tokenizer: str = "it"  # whose vocabulary the merge takes: pt | it | union
    trust_remote_code: bool = False
    cache_dir: str | None = None
    vision: str = "merge"

    @classmethod
    def from_config(cls, model) -> ModelSet:
        """The set a ``model`` config describes (its shape checked: ConfigError in one line)."""
        from omegaconf import OmegaConf

        check_shape(model)
        members = tuple(Member(str(e.name), str(e.path), tuple(str(t) for t in e.tasks),
                               float(e.weight)) for e in model.experts) \
            or (Member("it", str(model.it)),)
        return cls(name=str(model.name),
                   base="" if OmegaConf.is_missing(model, "pt") else str(model.pt),
                   members=members,
                   extra=tuple(Member(f"extra{i}", str(e.path), weight=float(e.weight))
                               for i, e in enumerate(model.extra)),
                   pool=bool(model.experts), dtype=str(model.dtype),
                   tokenizer=str(model.tokenizer), trust_remote_code=bool(model.trust_remote_code),
                   cache_dir=model.cache_dir, vision=str(model.vision))

    # ------------------------------------------------------------------ its models
    @property
    def it(self) -> str:
        """The fine-tune a pair's λ=1 gives (a pool's first expert)."""
        return self.members[0].path

    def path_of(self, parent: str) -> str:
        """The model of a reference: 'pt', 'it', or a pool's 'expert:<name>'."""
        if parent.startswith("expert:"):
            name = parent.split(":", 1)[1]
            return next(m.path for m in self.members if m.name == name)
        return {"pt": self.base, "it": self.it}[parent]

    def references(self) -> list[tuple[str, float]]:
        """The references a study needs, with the λ they stand at: PT and IT for a pair; the
        base and each expert (λ=1 of its own) for a pool."""
        if not self.pool:
            return [("pt", 0.0), ("it", 1.0)]
        return [("pt", 0.0)] + [(f"expert:{m.name}", 1.0) for m in self.members]

    @staticmethod
    def label(parent: str) -> str:
        return f"expert {parent.split(':', 1)[1]}" if parent.startswith("expert:") \
            else parent.upper()

    def model_keys(self) -> dict[str, str]:
        """Every distinct model by the config key that names it (``model.pt``, ``model.it``,
        ``model.extra[i].path``, ``model.experts[i].path`` past the first, which is IT)."""
        out = {"model.pt": self.base, "model.it": self.it}
        out.update({f"model.extra[{i}].path": e.path for i, e in enumerate(self.extra)})
        if self.pool:
            out.update({f"model.experts[{i}].path": m.path
                        for i, m in enumerate(self.members) if i > 0})
        return out

    @property
    def tokenizer_source(self) -> str:
        """The parent whose folder gives the working model (IT's for ``union``)."""
        return self.it if self.tokenizer == "union" else self.path_of(self.tokenizer)

    @property
    def normalized_by_references(self) -> bool:
        """Whether a merge's scores are normalised by its references' (a pool's): they are
        evaluated before any merge."""
        return self.pool

    @property
    def experts(self) -> tuple[Member, ...]:
        """A pool's experts (() for a pair, whose IT is not an expert)."""
        return self.members if self.pool else ()

    def normalized_tasks(self, forgetting: list[str]) -> tuple[list[str], list[str]]:
        """The tasks with a normalised score: the experts' domain tasks and the forgetting
        tasks (``forgetting``), for a pool; none for a pair."""
        return [t for m in self.experts for t in m.tasks], list(forgetting) if self.pool else []

    def key(self) -> str:
        """What tells two sets apart (their models and shared settings): one set, one set of
        references."""
        return json.dumps([self.base, self.members, self.extra, self.dtype, self.tokenizer,
                           self.vision], default=str)

    # ------------------------------------------------------------------ merges
    def with_members(self, mk: dict[str, Any]) -> dict[str, Any]:
        """A method's mergekit configuration with every fine-tune in it: a pool's experts (the
        IT entry's parameters, its weight × each expert's) and ``extra`` models (the IT entry's
        parameters, each its own weight)."""
        if not self.pool and not self.extra:
            return mk
        entry = next(m for m in mk["models"] if m["model"] == self.it)
        params = entry.get("parameters", {})
        if self.pool:
            mk["models"] = [m for m in mk["models"] if m is not entry] + [
                {"model": m.path, "parameters": {**params, "weight": float(
                    params.get("weight", 1.0)) * m.weight}} for m in self.members]
        mk["models"] += [{"model": e.path, "parameters": {**params, "weight": e.weight}}
                         for e in self.extra]
        return mk

    def is_parent(self, lam: float) -> str | None:
        """'pt' or 'it' where a merge at ``lam`` of every member can be that parent bit for bit
        (λ=1 of a pool merges every expert; extra models always take part)."""
        if self.extra or (self.pool and lam != 0.0):
            return None
        return {0.0: "pt", 1.0: "it"}.get(lam)

    # ------------------------------------------------------------------ fingerprints
    def evaluation_key(self) -> dict[str, Any]:
        """What of the set changes every evaluation of it (merge or reference)."""
        return {"tokenizer": self.tokenizer}

    def merge_key(self) -> dict[str, Any]:
        """What of the set changes a merge beyond its mergekit configuration."""
        return {} if self.vision == "merge" else {"vision": self.vision}

    def reference_key(self, parent: str) -> dict[str, Any]:
        return {"reference": self.path_of(parent), "dtype": self.dtype}

    # ------------------------------------------------------------------ a pool's metrics
    def normalized(self, metrics: dict[str, float], references: dict[str, dict[str, float]],
                   forgetting: list[str]) -> dict[str, float]:
        """The pool's normalised metrics of one evaluation (``references``: each reference's
        metrics, by ``references()`` name; ``forgetting``: the forgetting tasks); {} for a pair
        or where a reference is missing."""
        if not self.pool:
            return {}
        out: dict[str, float] = {}
        for prefix in ("", "selection/"):
            mt, forget = [], []
            for m in self.members:
                ref = references.get(f"expert:{m.name}")
                for task in m.tasks:
                    value = _ratio(metrics, ref, f"{prefix}{task}/acc")
                    if value is not None:
                        if not prefix:
                            out[f"mt/{task}/normalized"] = value
                        mt.append(value)
            for task in forgetting:
                value = _ratio(metrics, references.get("pt"), f"{prefix}{task}/acc")
                if value is not None:
                    if not prefix:
                        out[f"forget/{task}/normalized"] = value
                    forget.append(value)
            if mt:
                out[f"{prefix}mt/normalized"] = fmean(mt)
            if forget:
                out[f"{prefix}forget/normalized"] = fmean(forget)
        return out

    def check_tasks(self, tasks) -> None:
        """A pool's experts' domain tasks are evaluated (``tasks``: task.tasks), and none is
        also a forgetting task."""
        names = [t.name for t in tasks]
        for i, m in enumerate(self.experts):
            for t in m.tasks:
                if t not in names:
                    from app.errors import suggest

                    raise ConfigError(f"model.experts[{i}].tasks: {t!r} ({m.name}'s domain) is "
                                      f"not in task.tasks{suggest(t, names)}; evaluated: "
                                      f"{', '.join(names)}")
                if next(s for s in tasks if s.name == t).forgetting:
                    raise ConfigError(f"task.tasks: {t!r} is {m.name}'s domain and cannot also "
                                      f"be a forgetting task")

    def check_method(self, method: str, task_vector: bool, pooled: bool,
                     learns: bool) -> None:
        """The method fits the set: extra models and pools need a task-vector method; a method
        that learns from each expert's data (``learns``) needs a pool whose experts have tasks
        (``pooled``: the method is a pool method)."""
        if (self.extra or self.pool) and not task_vector:
            which = "model.extra" if self.extra else "an expert pool (model.experts)"
            valid = "task_arithmetic, ties, dare_ties, ..." if self.extra else \
                "task_arithmetic, ties, fisher, regmean, localize_stitch, consensus_ta, ..."
            raise ConfigError(f"{which} needs a task-vector method ({valid}); "
                              f"method={method} has no base model")
        if pooled and learns and not self.pool:
            raise ConfigError(f"method={method} learns from each expert's data: it needs an "
                              f"expert pool (model.experts, each with its tasks), e.g. "
                              f"model=toy_pool")
        if learns:
            for i, m in enumerate(self.experts):
                if not m.tasks:
                    raise ConfigError(f"model.experts[{i}] ({m.name}) has no tasks; "
                                      f"method={method} computes its statistics on them")


def _ratio(metrics: dict, reference: dict | None, key: str) -> float | None:
    if reference is None or key not in metrics or not reference.get(key):
        return None
    return metrics[key] / reference[key]


def check_shape(model) -> None:
    """A set's shape, before anything reads its models: a pool has a base and at least one
    named expert, every fine-tune is a distinct model, every weight a finite number."""
    from omegaconf import OmegaConf

    if not model.experts and OmegaConf.is_interpolation(model, "it") \
            and ".experts[" in str(OmegaConf.to_container(model, resolve=False)["it"]):
        raise ConfigError("model.experts=[]: an expert pool needs at least one expert "
                          "({name, path, tasks}); for a pair, give model.it instead")
    if model.experts:
        _check_pool(model)
    for i, e in enumerate(model.extra):
        _check_weight(f"model.extra[{i}].weight", e.weight)
    named = {f"model.experts[{i}].path": e.path for i, e in enumerate(model.experts)}
    named.update({f"model.extra[{i}].path": e.path for i, e in enumerate(model.extra)})
    if model.extra:
        named = {"model.pt": model.pt, "model.it": model.it, **named}
    seen: dict[str, str] = {}
    for key, path in named.items():
        same = seen.setdefault(_identity(str(path)), key)
        if same != key:
            raise ConfigError(f"{key} is the same model as {same} ({path!r}); the base and "
                              f"every fine-tune of a set must be distinct models")


def _identity(ref: str) -> str:
    """A model's identity: a local folder's resolved path, else the hub id."""
    from pathlib import Path

    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _check_weight(key: str, value) -> None:
    import math

    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number; use e.g. 1.0") from None
    if not math.isfinite(weight):
        raise ConfigError(f"{key}={value} is not finite; use a number such as 1.0")


def _check_pool(model) -> None:
    """A pool's shape: a base, named experts with distinct models, weights that are numbers."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(model, "pt") or not model.pt:
        raise ConfigError("model.pt: an expert pool needs its base (the model every expert was "
                          "fine-tuned from), e.g. model.pt=path/to/base")
    if model.extra:
        raise ConfigError("model.extra and model.experts cannot be combined; list every "
                          "fine-tune in model.experts")
    names = [e.name for e in model.experts]
    for i, e in enumerate(model.experts):
        if OmegaConf.is_missing(e, "name") or OmegaConf.is_missing(e, "path"):
            raise ConfigError(f"model.experts[{i}] needs a name and a path")
        if names.count(e.name) > 1:
            raise ConfigError(f"model.experts[{i}].name={e.name!r} is used twice; expert names "
                              f"must be distinct")
        if _identity(str(e.path)) == _identity(str(model.pt)):
            raise ConfigError(f"model.experts[{i}].path is the base (model.pt); an expert is a "
                              f"fine-tune of it")
        _check_weight(f"model.experts[{i}].weight", e.weight)
    if model.it != model.experts[0].path:
        raise ConfigError("model.it must be the first expert's path in a pool (leave it as "
                          "${.experts[0].path})")
