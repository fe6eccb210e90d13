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
STANDINS_DIR = Path(__file__).resolve().parent / "standins"  # local leaderboard dataset stand-ins
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
    tokenizer: str = "it"  # whose vocabulary the merge gets: pt | it | union (every model's)
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
    extra_metrics: List[str] = field(default_factory=list)  # further lm-eval metrics, logged as-is


@dataclass
class EvalConfig:
    """What to evaluate: lm-eval tasks (found through ``include_path``) and how."""

    name: str = MISSING
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


@dataclass
class JudgeThresholds:
    """When the heuristic judge calls a response degenerate (the rules: ``app.judge.metrics``)."""

    repetition_n: int = 3  # word n-grams for the repeated n-gram ratio
    max_repeated_ngram_ratio: float = 0.5  # repetition above this share of repeated n-grams
    max_loop_repeats: int = 3  # repetition: a unit of 1-8 words back to back more times than this
    max_foreign_script_ratio: float = 0.1  # code-switching: letters not in the prompt's script
    min_langid_chars: int = 30  # code-switching: sentences at least this long are identified...
    min_langid_prob: float = 0.9  # ...and flagged when another language is at least this probable
    max_garbage_ratio: float = 0.2  # nonsense: control, private-use, non-ASCII symbol characters
    max_unknown_word_ratio: Optional[float] = 0.5  # nonsense: words not in the PT vocabulary
    max_perplexity: Optional[float] = None  # nonsense: the PT model's perplexity (e.g. 300)


@dataclass
class JudgeConfig:
    """Degeneration/diversity judging of open-ended generations (``none`` skips it).

    Generation: ``k`` samples for each prompt of ``prompts`` with the study's decoding settings.
    Judges: ``heuristic`` (``thresholds``), ``hf`` (a local causal LM ``model``), ``openai``
    (``model`` at ``base_url``; the API key is read from the variable ``api_key_env`` names).
    """

    name: str = "none"  # none | heuristic | hf | openai
    prompts: str = "${toy:prompts.jsonl}"  # JSONL/JSON ("instruction" or "prompt") or text lines
    limit: Optional[int] = None  # first N prompts
    k: int = 4  # samples per prompt (diversity)
    max_new_tokens: int = 32  # the toy's answers are short; e.g. 512 for real models
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template where it has one
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    presence_penalty: float = 0.1
    frequency_penalty: float = 0.1
    seed: int = 42
    similarity_threshold: float = 0.6  # two samples with n-gram Jaccard ≥ this are one response
    language: str = "en"  # the language responses are expected in (ISO 639-1)
    languages: List[str] = field(default_factory=lambda: [
        "en", "zh", "es", "fr", "de", "it", "pt", "nl", "ru", "ja", "ko", "ar", "hi", "tr", "pl",
        "vi", "id", "sv"])  # candidates for the language identifier
    thresholds: JudgeThresholds = field(default_factory=JudgeThresholds)
    reward_model: Optional[str] = None  # local sequence-classification model scoring responses
    lowest_k: int = 100  # with a reward model: the lowest-rewarded responses reported apart
    model: Optional[str] = None  # hf: a causal LM folder or hub id; openai: the served model name
    template: Optional[str] = None  # the judge prompt (null: app.judge.JUDGE_TEMPLATE)
    labels: Dict[str, str] = field(default_factory=lambda: {
        "ok": "OK", "repetition": "REPETITION", "code_switch": "CODE-SWITCHING",
        "nonsense": "NONSENSE"})  # the verdict words the judge is asked for
    verdict_max_tokens: int = 64
    base_url: Optional[str] = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; its value is never stored or logged
    timeout: float = 60.0  # seconds per request
    retries: int = 3  # further attempts after a failed request, with exponential backoff
    cache: bool = True  # replies cached in <tracking.dir>/judge_cache.sqlite


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
        OmegaConf.register_new_resolver("standins", lambda sub="": str(STANDINS_DIR / sub))
        OmegaConf.register_new_resolver("one_minus", lambda x: round(1.0 - float(x), 12))


def schema_keys(name: str) -> list[str]:
    """Valid keys of a schema, by class name ('MethodConfig') or group name ('method')."""
    by_group = {"model": PairConfig, "method": MethodConfig, "task": EvalConfig,
                "judge": JudgeConfig, "tracking": TrackingConfig}
    by_class = {cls.__name__: cls for cls in [AppConfig, TaskSpec, ExtraModel, MergeSettings,
                                              JudgeThresholds, *by_group.values()]}
    cls = by_class.get(name) or by_group.get(name)
    return list(cls.__annotations__) if cls else []


def conf_dir() -> Path:
    """The shipped config folder (``conf/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "conf"


def compose(*overrides: str):
    """The shipped config composed with ``overrides``, as ``python -m app`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


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
    if cfg.model.tokenizer not in ("pt", "it", "union"):
        raise ConfigError(f"model.tokenizer={cfg.model.tokenizer!r} is not valid; use pt or it "
                          f"(the merge takes that parent's vocabulary) or union (every model's)")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"model.dtype={cfg.model.dtype!r} is not valid; use float32, bfloat16 or float16"
        )
    if cfg.task.ece_bins <= 0:
        raise ConfigError(f"task.ece_bins={cfg.task.ece_bins} must be a positive integer")
    for key, value, valid in (("ece_binning", cfg.task.ece_binning, ("width", "mass")),
                              ("scoring", cfg.task.scoring, ("lm_eval", "shared_context"))):
        if value not in valid:
            raise ConfigError(f"task.{key}={value!r} is not valid{suggest(str(value), list(valid))}; "
                              f"use {' or '.join(valid)}")
    _check_judge(cfg.judge)
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


JUDGES = ("none", "heuristic", "hf", "openai")
VERDICT_LABELS = ("ok", "repetition", "code_switch", "nonsense")


def _check_judge(judge) -> None:
    import re
    from urllib.parse import urlparse

    if judge.name not in JUDGES:
        raise ConfigError(f"judge.name={judge.name!r} is not a judge"
                          f"{suggest(judge.name, list(JUDGES))}; valid: {', '.join(JUDGES)}")
    if judge.base_url is not None:
        url = urlparse(str(judge.base_url))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"judge.base_url={judge.base_url!r} is not an http(s) URL; use e.g. "
                              f"judge.base_url=http://127.0.0.1:8000/v1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", judge.api_key_env or ""):
        # the value itself is not echoed: it may be a key pasted in the wrong place
        raise ConfigError("judge.api_key_env must name an environment variable (e.g. "
                          "OPENAI_API_KEY) that holds the key, not the key itself")
    if judge.name == "none":
        return
    if judge.name == "openai" and judge.base_url is None:
        raise ConfigError("judge.base_url must be set for judge=openai, e.g. "
                          "judge.base_url=http://127.0.0.1:8000/v1")
    if judge.name in ("hf", "openai") and not judge.model:
        what = "a causal LM folder or hub id" if judge.name == "hf" else "the served model's name"
        raise ConfigError(f"judge.model must be set for judge={judge.name} ({what})")
    if sorted(judge.labels) != sorted(VERDICT_LABELS):
        raise ConfigError(f"judge.labels must have exactly the keys {', '.join(VERDICT_LABELS)}")
    if not Path(judge.prompts).expanduser().is_file():
        raise ConfigError(f"judge.prompts={judge.prompts!r}: no such file (JSONL, JSON or text)")
    for key, ok, rule in (
        ("k", judge.k >= 1, "≥ 1"), ("max_new_tokens", judge.max_new_tokens >= 1, "≥ 1"),
        ("lowest_k", judge.lowest_k >= 1, "≥ 1"),
        ("temperature", judge.temperature >= 0, "≥ 0"),
        ("top_p", 0 < judge.top_p <= 1, "in (0, 1]"), ("retries", judge.retries >= 0, "≥ 0"),
        ("timeout", judge.timeout > 0, "> 0"),
        ("similarity_threshold", 0 < judge.similarity_threshold <= 1, "in (0, 1]"),
    ):
        if not ok:
            raise ConfigError(f"judge.{key}={judge[key]} must be {rule}")


TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "della",
                       "della_linear", "breadcrumbs", "breadcrumbs_ties")
ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
             "num_attention_heads", "num_key_value_heads")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be complete (header unreadable, data past its end), or
    None. Reads the header only: milliseconds, whatever the model's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                return f"truncated ({size} bytes; its header alone needs {8 + n})"
            header = json.loads(fh.read(n))
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError:
        return "corrupt (its header is not valid JSON)"
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, IndexError, AttributeError):
        return "corrupt (its header lists no valid tensor offsets)"
    if 8 + n + end > size:
        return f"truncated ({size} bytes of {8 + n + end})"
    return None


def _check_model_ref(key: str, ref: str) -> dict | None:
    """The model's config.json (local folder) or None (hub id); ConfigError if neither."""
    path = Path(ref).expanduser()
    looks_local = ref.startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        try:
            config = json.loads((path / "config.json").read_text())
        except FileNotFoundError:
            raise ConfigError(f"{key}={ref!r}: no model there (expected a folder with "
                              f"config.json)") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}={ref!r}: config.json is unreadable ({e})") from None
        for weights in sorted(path.glob("*.safetensors")):
            if problem := safetensors_problem(weights):
                raise ConfigError(f"{key}={ref!r}: {weights.name} is {problem}; copy or "
                                  f"download the model again")
        return config
    if ref.count("/") != 1:
        raise ConfigError(f"{key}={ref!r} is neither a local model folder nor a hub id (org/name)")
    return None
