"""Structured configs: one dataclass per config group, registered in Hydra's ConfigStore.

Every shipped YAML extends its group's schema (``defaults: [base_<group>]``), so a key the
code never reads is an error, not a silent no-op. ``lambda`` is a top-level value (a Python
keyword, so read it as ``cfg["lambda"]``): 0 is the PT model, 1 the IT model.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

TOY_DIR = Path(__file__).resolve().parent / "toy"
LAMBDA_DECIMALS = 6  # Hydra's range() yields 0.7000000000000001; λ is rounded to this


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the key and what is valid."""


@dataclass
class ExtraModel:
    """A further fine-tune of the same base, merged with its own weight (MergeBench setting)."""

    path: str = MISSING
    weight: float = MISSING


@dataclass
class PairConfig:
    """A PT/IT model pair: λ=0 gives ``pt``, λ=1 gives ``it`` (local folders or hub ids)."""

    name: str = MISSING
    pt: str = MISSING
    it: str = MISSING
    dtype: str = "float32"  # storage dtype of the merged model; merge maths is float32
    tokenizer: str = "it"  # whose tokenizer and vocabulary the merge gets: pt | it
    trust_remote_code: bool = False  # never on unless a pair config turns it on (it is logged)
    extra: List[ExtraModel] = field(default_factory=list)  # task-vector methods only


@dataclass
class MergeSettings:
    """What to do with a merged model besides evaluating it."""

    save_dir: Optional[str] = None  # write it there (safetensors, tokenizer, mergekit YAML)


@dataclass
class MethodConfig:
    """A merge method: a mergekit configuration template over ${lambda} and ${model.*}."""

    name: str = MISSING
    lambda_range: List[float] = field(default_factory=lambda: [0.0, 1.0])
    params: Dict[str, Any] = field(default_factory=dict)  # the method's own knobs (density, …)
    # λ values at which this method reproduces a parent bit for bit (0 → PT, 1 → IT): there a
    # job reuses the parent's reference evaluation instead of evaluating again.
    reference_endpoints: List[float] = field(default_factory=list)
    mergekit: Any = MISSING


@dataclass
class TaskSpec:
    """One lm-eval task and how its score is read."""

    name: str = MISSING  # lm-eval task name
    metric: str = "acc"  # the lm-eval metric logged as <task>/acc
    calibration: bool = True  # multiple choice: compute ECE & co. from choice log-likelihoods
    num_fewshot: Optional[int] = None  # None keeps the task YAML's own setting


@dataclass
class EvalConfig:
    """What to evaluate: lm-eval tasks (found through ``include_path``) and how."""

    name: str = MISSING
    tasks: List[TaskSpec] = MISSING
    include_path: Optional[str] = None  # folder of task YAMLs; relative data_files resolve there
    limit: Optional[int] = None  # first N documents per task (quick runs)
    batch_size: int = 32
    ece_bins: int = 15
    bootstrap: int = 1000  # resamples for the 95% intervals of acc and ECE (0: none)


@dataclass
class JudgeConfig:
    """Degeneration/diversity judging of open-ended generations (``none`` skips it)."""

    name: str = "none"


@dataclass
class TrackingConfig:
    """Where MLflow runs go: a local SQLite store under ``dir`` unless ``uri`` is set."""

    dir: str = "mlruns"
    uri: Optional[str] = None  # e.g. http://127.0.0.1:5000 for an `mlflow server`
    experiment: Optional[str] = None  # default: "merge-<model.name>"


def _app_config_class() -> type:
    # `lambda` is a keyword: build the schema class by hand, without the generated methods
    # whose source would spell `self.lambda`.
    annotations = {
        "model": PairConfig, "method": MethodConfig, "task": EvalConfig,
        "judge": JudgeConfig, "tracking": TrackingConfig, "merge": MergeSettings,
        "lambda": float, "seed": int, "device": str, "force": bool,
    }
    defaults = {
        "model": MISSING, "method": MISSING, "task": MISSING,
        "judge": field(default_factory=JudgeConfig), "tracking": field(default_factory=TrackingConfig),
        "merge": field(default_factory=MergeSettings), "lambda": 0.5, "seed": 0, "device": "cpu",
        "force": False,
    }
    namespace = {"__annotations__": annotations, "__doc__": "The whole run.", **defaults}
    return dataclass(init=False, repr=False, eq=False)(type("AppConfig", (), namespace))


AppConfig = _app_config_class()


def register() -> None:
    """Register the schemas and the resolvers the YAMLs use; idempotent."""
    cs = ConfigStore.instance()
    cs.store(name="base_app", node=AppConfig)
    for group, node in (("model", PairConfig), ("method", MethodConfig), ("task", EvalConfig),
                        ("judge", JudgeConfig), ("tracking", TrackingConfig)):
        cs.store(group=group, name=f"base_{group}", node=node)
    if not OmegaConf.has_resolver("toy"):
        OmegaConf.register_new_resolver("toy", lambda sub: str(TOY_DIR / sub))
        OmegaConf.register_new_resolver("one_minus", lambda x: round(1.0 - float(x), 12))


def schema_keys(name: str) -> list[str]:
    """Valid keys of a schema, by class name ('MethodConfig') or group name ('method')."""
    by_group = {"model": PairConfig, "method": MethodConfig, "task": EvalConfig,
                "judge": JudgeConfig, "tracking": TrackingConfig}
    by_class = {cls.__name__: cls for cls in [AppConfig, TaskSpec, ExtraModel, MergeSettings,
                                              *by_group.values()]}
    cls = by_class.get(name) or by_group.get(name)
    return list(cls.__annotations__) if cls else []


def conf_dir() -> Path:
    """The shipped config folder (``conf/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def suggest(word: str, valid: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def clean_lambda(value: Any) -> float:
    """λ as a finite float rounded to LAMBDA_DECIMALS, or a ConfigError."""
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"lambda={value!r} is not a number; use e.g. lambda=0.5") from None
    if lam != lam or lam in (float("inf"), float("-inf")):
        raise ConfigError(f"lambda={value!r} is not finite; use a number such as 0.5")
    return round(lam, LAMBDA_DECIMALS) + 0.0  # +0.0 turns -0.0 into 0.0


def validate(cfg) -> None:
    """Checks that need no model loaded; raise ConfigError with one line."""
    lam = clean_lambda(cfg["lambda"])
    lo, hi = cfg.method.lambda_range
    if not lo <= lam <= hi:
        raise ConfigError(
            f"lambda={lam:g} is outside method={cfg.method.name}'s range [{lo:g}, {hi:g}]"
        )
    _check_method_params(cfg.method, lo, hi)
    if cfg.model.tokenizer not in ("pt", "it"):
        raise ConfigError(f"model.tokenizer={cfg.model.tokenizer!r} is not valid; use pt or it "
                          f"(the merge takes that parent's vocabulary)")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"model.dtype={cfg.model.dtype!r} is not valid; use float32, bfloat16 or float16"
        )
    if cfg.task.ece_bins <= 0:
        raise ConfigError(f"task.ece_bins={cfg.task.ece_bins} must be a positive integer")
    refs = {"model.pt": cfg.model.pt, "model.it": cfg.model.it}
    refs.update({f"model.extra[{i}].path": e.path for i, e in enumerate(cfg.model.extra)})
    shapes = {key: _check_model_ref(key, ref) for key, ref in refs.items()}
    base = shapes["model.pt"]
    for key, shape in shapes.items():
        if base is None or shape is None:
            continue  # hub ids: mergekit checks once it has the config
        diff = {k: (base.get(k), shape.get(k)) for k in ARCH_KEYS if base.get(k) != shape.get(k)}
        if diff:
            k, (a, b) = next(iter(diff.items()))
            raise ConfigError(f"{key} does not match model.pt's architecture: {k} is {b} there, "
                              f"{a} in model.pt; no merge method or tokenizer policy can fix that")
    if cfg.model.extra and cfg.method.mergekit.merge_method not in TASK_VECTOR_METHODS:
        raise ConfigError(f"model.extra needs a task-vector method (task_arithmetic, ties, "
                          f"dare_ties, ...); method={cfg.method.name} has no base model")


def _check_method_params(method, lo: float, hi: float) -> None:
    p = method.params
    for key, value in p.items():
        if key.startswith("lambda_"):
            lam = clean_lambda(value)
            if not lo <= lam <= hi:
                raise ConfigError(f"method.params.{key}={lam:g} is outside method={method.name}'s "
                                  f"range [{lo:g}, {hi:g}]")
    if "density" in p and not 0.0 < float(p.density) <= 1.0:
        raise ConfigError(f"method.params.density={p.density} must be in (0, 1]")
    if "gamma" in p and not 0.0 <= float(p.gamma) < 1.0:
        raise ConfigError(f"method.params.gamma={p.gamma} must be in [0, 1)")
    if "epsilon" in p:
        eps, dens = float(p.epsilon), float(p.get("density", 1.0))
        if not (eps >= 0 and 0.0 <= dens - eps and dens + eps <= 1.0):
            raise ConfigError(f"method.params.epsilon={p.epsilon} must be ≥ 0 with density ± "
                              f"epsilon inside [0, 1] (density={dens:g})")


TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "della",
                       "della_linear", "breadcrumbs", "breadcrumbs_ties")
ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
             "num_attention_heads", "num_key_value_heads")


def _check_model_ref(key: str, ref: str) -> dict | None:
    """The model's config.json (local folder) or None (hub id); ConfigError if neither."""
    path = Path(ref).expanduser()
    looks_local = ref.startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        try:
            return json.loads((path / "config.json").read_text())
        except FileNotFoundError:
            raise ConfigError(f"{key}={ref!r}: no model there (expected a folder with "
                              f"config.json)") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}={ref!r}: config.json is unreadable ({e})") from None
    if ref.count("/") != 1:
        raise ConfigError(f"{key}={ref!r} is neither a local model folder nor a hub id (org/name)")
    return None
