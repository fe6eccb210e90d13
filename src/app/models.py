"""The model pair: its schema, the checks made before anything is loaded, and the working model.

A pair is a pre-trained (PT) and an instruction-tuned (IT) model, local folders or hub ids;
λ=0 gives PT, λ=1 gives IT. Every merge is written into one working model, loaded once per
process from the parent whose vocabulary the merge takes (``model.tokenizer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import MISSING

from app.errors import ConfigError
from app.hub import hub_problem, local_folder, local_snapshot, looks_local
from app.merge.layout import VISION, multimodal
from app.modelset import ModelSet

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZERS = ("pt", "it", "union")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
MAX_HEADER = 100_000_000  # safetensors refuses longer headers
ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
             "num_attention_heads", "num_key_value_heads")


@dataclass
class ExtraModel:
    """A further fine-tune of the same base, merged with its own weight (MergeBench setting)."""

    path: str = MISSING  # local folder or hub id
    weight: float = MISSING  # its share of the merge


@dataclass
class Expert:
    """One specialist of an expert pool: fine-tuned from the pool's base (``model.pt``)."""

    name: str = MISSING  # the expert's name (its reference run, its domain's metrics)
    path: str = MISSING  # local folder or hub id
    tasks: List[str] = field(default_factory=list)  # its domain tasks (names in task.tasks)
    weight: float = 1.0  # its share of the merge: task vector × λ × weight


@dataclass
class PairConfig:
    """A PT/IT model pair: λ=0 gives ``pt``, λ=1 gives ``it`` (local folders or hub ids)."""

    name: str = MISSING  # the pair's name: runs, experiment (merge-<name>) and reports
    pt: str = MISSING  # the pre-trained model (λ=0; a pool's base): a local folder or hub id
    it: str = MISSING  # the instruction-tuned model (λ=1): a local folder or hub id
    dtype: str = "float32"  # storage dtype of the merged model; merge maths is float32
    tokenizer: str = "it"  # whose vocabulary the merge gets: pt | it | union (every model's)
    trust_remote_code: bool = False  # never on unless a pair config turns it on (it is logged)
    extra: List[ExtraModel] = field(default_factory=list)  # task-vector methods only
    # an expert pool (MergeBench): pt is the base, it the first expert's path; λ scales every
    # expert's task vector (times its weight)
    experts: List[Expert] = field(default_factory=list)
    cache_dir: Optional[str] = None  # Hugging Face cache holding hub ids (None: HF_HOME's)
    # multimodal checkpoints (Gemma-3 4B+): the vision tower and projector merged like every
    # other tensor (merge, as mergekit does), or IT's whatever λ (it); only text is evaluated
    vision: str = "merge"


def validate(models: ModelSet) -> None:
    """Settings, model folders and weight headers (milliseconds, whatever the size)."""
    if models.tokenizer not in TOKENIZERS:
        raise ConfigError(f"model.tokenizer={models.tokenizer!r} is not valid; use pt or it "
                          f"(the merge takes that parent's vocabulary) or union (every model's)")
    if models.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={models.dtype!r} is not valid; use float32, bfloat16 or "
                          f"float16")
    if models.vision not in VISION:
        raise ConfigError(f"model.vision={models.vision!r} is not valid; use merge (the towers "
                          f"are merged like every tensor) or it (IT's towers whatever λ)")
    refs = models.model_keys()
    _check_hub_ids(refs, models.cache_dir)
    shapes = {key: _check_model_ref(key, ref, models.cache_dir) for key, ref in refs.items()}
    base = shapes["model.pt"]
    for key, shape in shapes.items():
        if base is None or shape is None:
            continue  # hub ids: mergekit checks once it has the config
        diff = {k: (base.get(k), shape.get(k)) for k in ARCH_KEYS if base.get(k) != shape.get(k)}
        if diff:
            k, (a, b) = next(iter(diff.items()))
            raise ConfigError(f"{key} does not match model.pt's architecture: {k} is {b} there, "
                              f"{a} in model.pt; no merge method or tokenizer policy can fix that")
    if models.vision != "merge" and base is not None \
            and not multimodal(base.get("architectures")):
        raise ConfigError(f"model.vision={models.vision} applies to multimodal checkpoints only; "
                          f"model.pt is {', '.join(base.get('architectures') or ['?'])}")
    # whose tokenizer is loaded: the chosen parent's, or (union) every model's
    readers = list(refs) if models.tokenizer == "union" else [f"model.{models.tokenizer}"]
    for key, ref in refs.items():
        path = local_folder(ref, models.cache_dir)
        if shapes[key] is None:
            continue  # a hub id the hub will serve
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise ConfigError(f"{key}={ref!r}: no weights there (*.safetensors or "
                              f"pytorch_model*.bin)")
        if key in readers and not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(f"{key}={ref!r}: no tokenizer there (none of "
                              f"{', '.join(TOKENIZER_FILES)}); copy the model's tokenizer files "
                              f"too")


def text_config(models: ModelSet, parent: str = "pt") -> dict | None:
    """A parent's language-model config (a multimodal checkpoint's ``text_config``) from its
    config.json; None for a hub id not downloaded yet."""
    config = _check_model_ref(f"model.{parent}", models.path_of(parent), models.cache_dir)
    return None if config is None else (config.get("text_config") or config)


def num_layers(models: ModelSet) -> int | None:
    """The set's decoder layer count (``num_hidden_layers``), read from model.pt's config.json;
    None where it cannot be read yet."""
    n = (text_config(models) or {}).get("num_hidden_layers")
    return int(n) if n is not None else None


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be complete (header unreadable, data past its end), or
    None. Reads the header only: milliseconds, whatever the model's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size >= 8 and not 0 < n <= MAX_HEADER:
                return "corrupt (not a safetensors file: its header length is impossible)"
            if size < 8 or 8 + n > size:
                return f"truncated ({size} bytes; its header alone needs {8 + n})"
            header = json.loads(fh.read(n))
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
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


def _check_hub_ids(refs: dict[str, str], cache_dir: str | None) -> None:
    """Every hub id that is not in the local cache and cannot be fetched, in one line (a
    user downloads them all at once)."""
    uncached = {key: ref for key, ref in refs.items()
                if not looks_local(ref) and ref.count("/") == 1
                and local_snapshot(ref, cache_dir) is None}
    problems = {key: p for key, ref in uncached.items()
                if (p := hub_problem(key, ref, cache_dir))}
    if problems:
        first, *others = problems
        also = "".join(f"; the same for {key}={uncached[key]!r}" for key in others)
        raise ConfigError(f"{first}={uncached[first]!r} {problems[first]}{also}")


def _check_model_ref(key: str, ref: str, cache_dir: str | None = None) -> dict | None:
    """The model's config.json (local folder or cached hub id) or None (a hub id to be
    downloaded); ConfigError if neither."""
    if looks_local(ref):
        path = Path(ref).expanduser()
    elif ref.count("/") == 1:
        path = local_snapshot(ref, cache_dir)
        if path is None:
            return None  # to be downloaded (_check_hub_ids refused those that cannot be)
    else:
        raise ConfigError(f"{key}={ref!r} is neither a local model folder nor a hub id (org/name)")
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        family = Path(__file__).resolve().parent / "toy" / "sizes"  # the toy family's folder
        if path.resolve().is_relative_to(family.resolve()):  # a toy family pair not built yet
            size = path.resolve().relative_to(family.resolve()).parts[0]
            raise ConfigError(f"{key}: the toy family's size {size!r} is not built here; build "
                              f"it once with `python scripts/build_toy.py --size {size}`") from None
        raise ConfigError(f"{key}={ref!r}: no model there (expected a folder with "
                          f"config.json)") from None
    except (OSError, ValueError) as e:  # (an OSError's own text repeats the path)
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ConfigError(f"{key}={ref!r}: config.json is unreadable ({why})") from None
    for weights in sorted(path.glob("*.safetensors")):
        if problem := safetensors_problem(weights):
            raise ConfigError(f"{key}={ref!r}: {weights.name} is {problem}; copy or "
                              f"download the model again")
    return config


def load_working_model(models: ModelSet, device: str):
    """(model, tokenizer): the parent whose vocabulary the merge takes, on ``device``, in the
    set's dtype (with ``model.tokenizer=union``: IT resized to mergekit's union vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.merge.mergekit_adapter import union_tokenizer

    pair = models
    union = pair.tokenizer == "union"
    source = pair.tokenizer_source
    tokenizer = union_tokenizer(models) if union else AutoTokenizer.from_pretrained(
        source, trust_remote_code=pair.trust_remote_code, cache_dir=pair.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, pair.dtype),
                                                 trust_remote_code=pair.trust_remote_code,
                                                 cache_dir=pair.cache_dir)
    if union:  # the merge fills every row of the union's embeddings
        model.resize_token_embeddings(len(tokenizer.get_vocab()), mean_resizing=False)
    return model.to(device).eval(), tokenizer
