"""The judge group's schemas: one per judge, each with only the keys that judge reads.

``judge=none`` has only a name. Every other judge generates ``k`` samples per prompt with the
degeneration study's decoding settings (``GenerationSettings``); ``heuristic`` adds its rules'
thresholds, ``hf`` a local judge model and its prompt, ``openai`` an endpoint on top of that.
A key set for a judge that does not read it is an error naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, List, Optional

from app.errors import ConfigError, suggest
from app.judge.metrics import TYPES

VERDICT_LABELS = ("ok", *TYPES)


@dataclass
class NoJudgeConfig:
    """No judging of open-ended generations."""

    name: str = "none"  # which judge: none | heuristic | hf | openai


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
class GenerationSettings(NoJudgeConfig):
    """``k`` samples for each prompt of ``prompts``, and an optional reward model over them."""

    prompts: str = "${toy:prompts.jsonl}"  # JSONL/JSON ("instruction" or "prompt") or text lines
    limit: Optional[int] = None  # first N prompts
    k: int = 4  # samples per prompt (diversity)
    max_new_tokens: int = 32  # the toy's answers are short; e.g. 512 for real models
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template where it has one
    temperature: float = 0.7  # sampling the k responses: temperature, top-k, nucleus top-p
    top_k: int = 50
    top_p: float = 0.9
    presence_penalty: float = 0.1
    frequency_penalty: float = 0.1
    seed: int = 42
    similarity_threshold: float = 0.6  # two samples with n-gram Jaccard ≥ this are one response
    reward_model: Optional[str] = None  # local sequence-classification model scoring responses
    lowest_k: int = 100  # with a reward model: the lowest-rewarded responses reported apart


@dataclass
class HeuristicJudgeConfig(GenerationSettings):
    """Rules: repetition, code-switching (script, language identification), nonsense."""

    name: str = "heuristic"
    adapter: ClassVar[str] = "HeuristicJudge"  # its class in app.judge.adapters
    llm: ClassVar[bool] = False  # an LLM judge: reads only the lowest-rewarded, may not parse
    language: str = "en"  # the language responses are expected in (ISO 639-1)
    languages: List[str] = field(default_factory=lambda: [
        "en", "zh", "es", "fr", "de", "it", "pt", "nl", "ru", "ja", "ko", "ar", "hi", "tr", "pl",
        "vi", "id", "sv"])  # candidates for the language identifier
    thresholds: JudgeThresholds = field(default_factory=JudgeThresholds)


@dataclass
class HFJudgeConfig(GenerationSettings):
    """A local causal LM (``model``) asked for a verdict among ``labels``."""

    name: str = "hf"
    adapter: ClassVar[str] = "HFJudge"
    llm: ClassVar[bool] = True
    model: Optional[str] = None  # a causal LM folder or hub id
    template: Optional[str] = None  # the judge prompt (null: app.judge.adapters.JUDGE_TEMPLATE)
    labels: Dict[str, str] = field(default_factory=lambda: {
        "ok": "OK", "repetition": "REPETITION", "code_switch": "CODE-SWITCHING",
        "nonsense": "NONSENSE"})  # the verdict words the judge is asked for
    verdict_max_tokens: int = 64


@dataclass
class OpenAIJudgeConfig(HFJudgeConfig):
    """The served ``model`` at an OpenAI-compatible ``base_url``; the API key is read from the
    variable ``api_key_env`` names when requests are made (never stored or logged)."""

    name: str = "openai"
    adapter: ClassVar[str] = "OpenAIJudge"
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name, not the key
    timeout: float = 60.0  # seconds per request
    retries: int = 3  # further attempts after a failed request, with exponential backoff
    cache: bool = True  # replies cached in <tracking.dir>/judge_cache.sqlite


def _check_local_model(key: str, ref: str) -> None:
    """A path the user typed must be a model folder; ``org/name`` is left to the hub."""
    path = Path(ref).expanduser()
    if ref.startswith(("/", ".", "~")) or path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}={ref!r}: no model there (expected a folder with "
                              f"config.json)")
    elif ref.count("/") != 1:
        raise ConfigError(f"{key}={ref!r} is neither a local model folder nor a hub id "
                          f"(org/name)")


SCHEMAS = {"none": NoJudgeConfig, "heuristic": HeuristicJudgeConfig, "hf": HFJudgeConfig,
           "openai": OpenAIJudgeConfig}


def validate(judge) -> None:
    """Checks of one judge's settings, before any model is loaded."""
    import re
    from urllib.parse import urlparse

    if judge.name not in SCHEMAS:
        raise ConfigError(f"judge.name={judge.name!r} is not a judge"
                          f"{suggest(judge.name, list(SCHEMAS))}; valid: {', '.join(SCHEMAS)}")
    if judge.name == "none":
        return
    if judge.name == "openai":
        url = urlparse(str(judge.base_url or ""))
        if judge.base_url is None:
            raise ConfigError("judge.base_url must be set for judge=openai, e.g. "
                              "judge.base_url=http://127.0.0.1:8000/v1")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"judge.base_url={judge.base_url!r} is not an http(s) URL; use "
                              f"e.g. judge.base_url=http://127.0.0.1:8000/v1")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", judge.api_key_env or ""):
            # the value itself is not echoed: it may be a key pasted in the wrong place
            raise ConfigError("judge.api_key_env must name an environment variable (e.g. "
                              "OPENAI_API_KEY) that holds the key, not the key itself")
    if judge.name in ("hf", "openai"):
        if not judge.model:
            what = ("a causal LM folder or hub id" if judge.name == "hf"
                    else "the served model's name")
            raise ConfigError(f"judge.model must be set for judge={judge.name} ({what})")
        if judge.name == "hf":
            _check_local_model("judge.model", judge.model)
        if sorted(judge.labels) != sorted(VERDICT_LABELS):
            raise ConfigError(f"judge.labels must have exactly the keys "
                              f"{', '.join(VERDICT_LABELS)}")
    if judge.reward_model:
        _check_local_model("judge.reward_model", judge.reward_model)
    if not Path(judge.prompts).expanduser().is_file():
        raise ConfigError(f"judge.prompts={judge.prompts!r}: no such file (JSONL, JSON or text)")
    try:  # read whole now: a bad prompt file must not wait until the first merge is evaluated
        load_prompts(judge.prompts)
    except UnicodeDecodeError as e:
        raise ConfigError(f"judge.prompts={judge.prompts!r} is not UTF-8 (byte "
                          f"{e.object[e.start]:#04x} at {e.start}); save it as UTF-8") from None
    except ValueError as e:  # a JSON line that does not parse, an entry without a prompt
        raise ConfigError(f"judge.prompts={judge.prompts!r}: "
                          f"{str(e).removeprefix(str(judge.prompts) + ': ')}") from None
    checks = [("k", judge.k >= 1, "≥ 1"), ("max_new_tokens", judge.max_new_tokens >= 1, "≥ 1"),
              ("limit", judge.limit is None or judge.limit >= 1, "≥ 1 (or null: every prompt)"),
              ("lowest_k", judge.lowest_k >= 1, "≥ 1"),
              ("temperature", judge.temperature >= 0, "≥ 0"),
              ("top_p", 0 < judge.top_p <= 1, "in (0, 1]"),
              ("similarity_threshold", 0 < judge.similarity_threshold <= 1, "in (0, 1]")]
    if judge.name == "openai":
        checks += [("retries", judge.retries >= 0, "≥ 0"), ("timeout", judge.timeout > 0, "> 0")]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"judge.{key}={judge[key]} must be {rule}")


def load_prompts(path: str, limit: int | None = None) -> list[str]:
    """Instructions from a JSONL or JSON file (objects with "instruction" or "prompt", as
    AlpacaEval's) or a text file (one per line); ValueError naming the line that is wrong."""
    text = Path(path).expanduser().read_text(encoding="utf-8")
    if path.endswith((".json", ".jsonl")):
        lines = [text] if path.endswith(".json") else text.splitlines()
        rows = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                where = f"line {i}" if len(lines) > 1 else "it"
                raise ValueError(f"{path}: {where} is not JSON ({e})") from None
            rows += row if path.endswith(".json") and isinstance(row, list) else [row]
    else:
        rows = [line for line in text.splitlines() if line.strip()]
    prompts = [r if isinstance(r, str) else (r.get("instruction") or r.get("prompt")
                                             if isinstance(r, dict) else None) for r in rows]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{path}: no prompts, or an entry without an 'instruction' or 'prompt'")
    return prompts[:limit] if limit else prompts
