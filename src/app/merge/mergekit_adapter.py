"""The mergekit adapter: (pair, method, λ) → a mergekit configuration → merged tensors.

A method config is a mergekit template over ``${lambda}`` and ``${model.*}``; resolved, it is
exactly what a ``mergekit-yaml`` file holds. mergekit's own planner and executor compute every
merged tensor (float32 maths, stored in the pair's dtype) where no direct path applies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from app import compat
from app.errors import ConfigError, clean_lambda
from app.merge.direct import MATH_DTYPE


def mergekit_config(cfg: DictConfig) -> dict[str, Any]:
    """The mergekit configuration (a plain dict, as in a mergekit-yaml file) for this run."""
    cfg = cfg.copy()
    cfg["lambda"] = clean_lambda(cfg["lambda"])
    try:
        mk = OmegaConf.to_container(cfg.method.mergekit, resolve=True)
    except Exception as e:  # an interpolation in the method YAML that does not resolve
        raise ConfigError(f"method={cfg.method.name}: mergekit template does not resolve: {e}")
    if cfg.model.experts:  # a pool: the IT entry's parameters for each expert, weight × its own
        entry = next(m for m in mk["models"] if m["model"] == cfg.model.it)
        params = entry.get("parameters", {})
        mk["models"] = [m for m in mk["models"] if m is not entry] + [
            {"model": e.path, "parameters": {**params, "weight": float(params.get("weight", 1.0))
                                             * float(e.weight)}} for e in cfg.model.experts]
    if cfg.model.extra:  # same parameters as the IT entry, each its own weight
        it_params = next(m for m in mk["models"] if m["model"] == cfg.model.it).get("parameters", {})
        mk["models"] += [{"model": e.path, "parameters": {**it_params, "weight": float(e.weight)}}
                         for e in cfg.model.extra]
    return _with_pair_settings(mk, cfg)


def reference_config(cfg: DictConfig, parent: str) -> dict[str, Any]:
    """A mergekit config that reproduces one parent ('pt', 'it' or a pool's 'expert:<name>')
    bit for bit (with
    ``model.tokenizer=union``: in the union's vocabulary, so every model takes part, weight 0)."""
    from app.pool import parent_path

    paths = [cfg.model.pt, cfg.model.it, *(e.path for e in cfg.model.extra),
             *(e.path for e in cfg.model.experts[1:])]
    chosen = parent_path(cfg, parent)
    if cfg.model.tokenizer != "union":
        paths = [chosen]
    mk = {"merge_method": "linear", "parameters": {"normalize": False},
          "models": [{"model": p, "parameters": {"weight": float(p == chosen)}}
                     for p in paths]}
    return _with_pair_settings(mk, cfg)


def _with_pair_settings(mk: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    mk.setdefault("dtype", MATH_DTYPE)
    mk.setdefault("out_dtype", cfg.model.dtype)
    if cfg.model.tokenizer == "union":  # every model's tokens; mergekit aligns the embeddings
        mk.setdefault("tokenizer", {"source": "union"})
        if any(m["model"] == cfg.model.pt for m in mk["models"]):
            # mergekit orders the union after the base model, else after an arbitrary one
            mk.setdefault("base_model", cfg.model.pt)
    elif _vocab_size(cfg.model.pt, cfg.model.cache_dir) != _vocab_size(cfg.model.it,
                                                                         cfg.model.cache_dir):
        # Different vocabularies: mergekit aligns every model's embeddings to the chosen one.
        mk.setdefault("tokenizer", {"source": cfg.model[cfg.model.tokenizer]})
    return mk


def union_tokenizer(cfg: DictConfig):
    """The vocabulary of a ``model.tokenizer=union`` merge: mergekit's union of every model's
    tokens (PT's first, then those only IT or an extra model has), built as mergekit's planner
    builds it; it takes IT's chat template, since PT's tokenizer usually has none."""
    from mergekit.config import MergeConfiguration
    from mergekit.tokenizer.build import build_tokenizer
    from transformers import AutoTokenizer

    config = MergeConfiguration.model_validate(reference_config(cfg, "it"))
    trust = bool(cfg.model.trust_remote_code)
    tokenizer = build_tokenizer(config.base_model, config.referenced_models(), "union",
                                trust_remote_code=trust, add_tokens=[]).tokenizer
    instruct = AutoTokenizer.from_pretrained(cfg.model.it, trust_remote_code=trust,
                                             cache_dir=cfg.model.cache_dir)
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
