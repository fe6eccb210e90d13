"""The mergekit adapter: (pair, method, λ) → a mergekit config → tensors merged in memory.

mergekit's own planner and executor compute every merged tensor (float32 maths, stored in the
pair's dtype); the tensors are copied into one working model that is loaded once per process
and reused for every λ. Parents are read lazily from safetensors by mergekit's loader cache,
which also lives for the whole process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from app.config import ConfigError, clean_lambda

LOG = logging.getLogger(__name__)
MATH_DTYPE = "float32"


def mergekit_config(cfg: DictConfig) -> dict[str, Any]:
    """The mergekit configuration (a plain dict, as in a mergekit-yaml file) for this run."""
    cfg = cfg.copy()
    cfg["lambda"] = clean_lambda(cfg["lambda"])
    try:
        mk = OmegaConf.to_container(cfg.method.mergekit, resolve=True)
    except Exception as e:  # an interpolation in the method YAML that does not resolve
        raise ConfigError(f"method={cfg.method.name}: mergekit template does not resolve: {e}")
    if cfg.model.extra:  # same parameters as the IT entry, each its own weight
        it_params = next(m for m in mk["models"] if m["model"] == cfg.model.it).get("parameters", {})
        mk["models"] += [{"model": e.path, "parameters": {**it_params, "weight": float(e.weight)}}
                         for e in cfg.model.extra]
    return _with_pair_settings(mk, cfg)


def reference_config(cfg: DictConfig, parent: str) -> dict[str, Any]:
    """A mergekit config that reproduces one parent ('pt' or 'it') bit for bit."""
    mk = {"merge_method": "linear", "parameters": {"normalize": False},
          "models": [{"model": cfg.model[parent], "parameters": {"weight": 1.0}}]}
    return _with_pair_settings(mk, cfg)


def _with_pair_settings(mk: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    mk.setdefault("dtype", MATH_DTYPE)
    mk.setdefault("out_dtype", cfg.model.dtype)
    if _vocab_size(cfg.model.pt) != _vocab_size(cfg.model.it):
        # Different vocabularies: mergekit aligns every model's embeddings to the chosen one.
        mk.setdefault("tokenizer", {"source": cfg.model[cfg.model.tokenizer]})
    return mk


def _vocab_size(ref: str) -> int | None:
    import json

    try:
        return json.loads((Path(ref).expanduser() / "config.json").read_text()).get("vocab_size")
    except OSError:
        return None  # a hub id: mergekit reads its config itself


def merged_tensors(mk: dict[str, Any], device: str = "cpu", seed: int | None = None,
                   trust_remote_code: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (tensor name, merged tensor) for every output tensor of a mergekit config."""
    import transformers
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache, ReturnTensor
    from mergekit.merge import _model_out_config
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    options = MergeOptions(device=device, trust_remote_code=trust_remote_code, quiet=True,
                           random_seed=seed)
    if seed is not None:  # DARE/DELLA masks: the same seed gives the same draws
        transformers.trainer_utils.set_seed(seed)
    config = MergeConfiguration.model_validate(mk)  # fresh per merge: the planner mutates it
    arch_info = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    planner = MergePlanner(config, arch_info, options=options,
                           out_model_config=_model_out_config(config, arch_info, trust_remote_code))
    # MergePlanner.plan_in_memory() fails in mergekit 0.1.5 (pydantic cannot validate the
    # generic Task field of ReturnTensor); this is its body with validation skipped.
    planner._plan()
    targets = [ReturnTensor.model_construct(weight_info=w, tensor_task=t,
                                            dtype=w.force_dtype or config.out_dtype)
               for w, t in planner._tensors]
    executor = Executor(targets, math_device=device, storage_device=device)
    for task, value in executor.run(quiet=True):
        yield task.weight_info.name, value


def save_merged(model, tokenizer, mk: dict[str, Any], save_dir: str) -> Path:
    """Write the merged model atomically: into a sibling temp folder, renamed when complete."""
    import os
    import shutil
    import tempfile

    import yaml

    final = Path(save_dir).expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "mergekit_config.yml").write_text(yaml.safe_dump(mk, sort_keys=False))
        if final.exists():  # replace a previous save only once the new one is complete
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class MergeReport:
    tensors: int
    seconds: float


def merge_into(model: torch.nn.Module, mk: dict[str, Any], device: str = "cpu",
               seed: int | None = None, trust_remote_code: bool = False) -> MergeReport:
    """Overwrite every parameter of ``model`` with the merge described by ``mk``, in place."""
    import time

    start = time.perf_counter()
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    written: set[str] = set()
    with torch.no_grad():
        for name, tensor in merged_tensors(mk, device, seed, trust_remote_code):
            target = params.get(name)
            if target is None:
                raise RuntimeError(f"merged tensor {name!r} has no parameter in the working model")
            if target.shape != tensor.shape:
                raise RuntimeError(f"merged tensor {name!r} has shape {tuple(tensor.shape)}, "
                                   f"model expects {tuple(target.shape)}")
            target.copy_(tensor)
            written.add(name)
    missing = {n for n, _ in model.named_parameters()} - written
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        missing.discard("lm_head.weight")
    if missing:
        raise RuntimeError(f"merge left parameters unset: {sorted(missing)[:5]}")
    return MergeReport(tensors=len(written), seconds=time.perf_counter() - start)
