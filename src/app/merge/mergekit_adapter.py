"""The mergekit adapter: (model set, method, λ) → a mergekit configuration → merged tensors.

A method config is a mergekit template over ``${lambda}`` and ``${model.*}``; resolved (once per
job, ``app.config.job_settings``) and given the set's fine-tunes and settings, it is exactly
what a ``mergekit-yaml`` file holds. mergekit's own planner and executor compute every
merged tensor (float32 maths, stored in the pair's dtype) where no direct path applies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch

from app import compat
from app.merge.direct import MATH_DTYPE
from app.modelset import ModelSet


def reference_config(models: ModelSet, parent: str) -> dict[str, Any]:
    """A mergekit config that reproduces one reference ('pt', 'it' or a pool's 'expert:<name>')
    bit for bit (with ``model.tokenizer=union``: in the union's vocabulary, so every model takes
    part, weight 0)."""
    chosen = models.path_of(parent)
    paths = list(models.model_keys().values()) if models.tokenizer == "union" else [chosen]
    mk = {"merge_method": "linear", "parameters": {"normalize": False},
          "models": [{"model": p, "parameters": {"weight": float(p == chosen)}}
                     for p in paths]}
    return with_pair_settings(mk, models)


def with_pair_settings(mk: dict[str, Any], models: ModelSet) -> dict[str, Any]:
    """``mk`` with the set's dtype and vocabulary settings."""
    mk.setdefault("dtype", MATH_DTYPE)
    mk.setdefault("out_dtype", models.dtype)
    if models.tokenizer == "union":  # every model's tokens; mergekit aligns the embeddings
        mk.setdefault("tokenizer", {"source": "union"})
        if any(m["model"] == models.base for m in mk["models"]):
            # mergekit orders the union after the base model, else after an arbitrary one
            mk.setdefault("base_model", models.base)
    elif _vocab_size(models.base, models.cache_dir) != _vocab_size(models.it, models.cache_dir):
        # Different vocabularies: mergekit aligns every model's embeddings to the chosen one.
        mk.setdefault("tokenizer", {"source": models.path_of(models.tokenizer)})
    return mk


def union_tokenizer(models: ModelSet):
    """The vocabulary of a ``model.tokenizer=union`` merge: mergekit's union of every model's
    tokens (PT's first, then those only IT or an extra model has), built as mergekit's planner
    builds it; it takes IT's chat template, since PT's tokenizer usually has none."""
    from mergekit.config import MergeConfiguration
    from mergekit.tokenizer.build import build_tokenizer
    from transformers import AutoTokenizer

    config = MergeConfiguration.model_validate(reference_config(models, "it"))
    trust = models.trust_remote_code
    tokenizer = build_tokenizer(config.base_model, config.referenced_models(), "union",
                                trust_remote_code=trust, add_tokens=[]).tokenizer
    instruct = AutoTokenizer.from_pretrained(models.it, trust_remote_code=trust,
                                             cache_dir=models.cache_dir)
    tokenizer.chat_template = instruct.chat_template or tokenizer.chat_template
    return tokenizer


def _vocab_size(ref: str, cache_dir: str | None) -> int | None:
    from app.hub import local_folder

    try:
        config = json.loads((local_folder(ref, cache_dir) / "config.json").read_text())
    except OSError:
        return None  # a hub id to download: mergekit reads its config itself
    return config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))


def merged_tensors(mk: dict[str, Any], device: str = "cpu", seed: int | None = None,
                   trust_remote_code: bool = False,
                   cache_dir: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (tensor name, merged tensor) for every output tensor of a mergekit config."""
    import transformers
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions

    options = MergeOptions(device=device, trust_remote_code=trust_remote_code, quiet=True,
                           random_seed=seed, transformers_cache=cache_dir)
    if seed is not None:  # DARE/DELLA masks: the same seed gives the same draws
        transformers.trainer_utils.set_seed(seed)
    config = MergeConfiguration.model_validate(mk)  # fresh per merge: the planner mutates it
    arch_info = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    targets = compat.planned_tensors(config, arch_info, options, trust_remote_code)
    executor = Executor(targets, math_device=device, storage_device=device)
    for task, value in executor.run(quiet=True):
        yield task.weight_info.name, value
