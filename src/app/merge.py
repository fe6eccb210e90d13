"""The mergekit adapter: (pair, method, λ) → a mergekit config → tensors merged in memory.

mergekit's own planner and executor compute every merged tensor (float32 maths, stored in the
pair's dtype); the tensors are copied into one working model that is loaded once per process
and reused for every λ. Parents are read lazily from safetensors by mergekit's loader cache,
which also lives for the whole process.

Plain merges of local safetensors models on CPU skip the executor: linear without
normalisation (``method=linear``, the default, and the parents' reference copies), slerp, and
task arithmetic and TIES with one fine-tuned model (``task_arithmetic``, ``expo``, ``ties``).
Their tensors are computed straight from the memory-mapped files, with mergekit's arithmetic
in mergekit's order (float32, rounded once to the stored dtype), so the result is
bit-identical (tests check it against the executor and ``mergekit-yaml``), an order of
magnitude faster, and no parent is held in memory: each parent tensor's pages are dropped from
the process once merged. What does not depend on λ (slerp's norms and cosines, the elements
TIES keeps) is computed on the first merge of a pair and kept for the process. For bfloat16
models the elementwise arithmetic runs in one fused pass (``app.kernels``) where a probe shows
it equal to the torch path here.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
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
    """A mergekit config that reproduces one parent ('pt' or 'it') bit for bit (with
    ``model.tokenizer=union``: in the union's vocabulary, so every model takes part, weight 0)."""
    paths = [cfg.model.pt, cfg.model.it, *(e.path for e in cfg.model.extra)]
    if cfg.model.tokenizer != "union":
        paths = [cfg.model[parent]]
    mk = {"merge_method": "linear", "parameters": {"normalize": False},
          "models": [{"model": p, "parameters": {"weight": float(p == cfg.model[parent])}}
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
    elif _vocab_size(cfg.model.pt) != _vocab_size(cfg.model.it):
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
    instruct = AutoTokenizer.from_pretrained(cfg.model.it, trust_remote_code=trust)
    tokenizer.chat_template = instruct.chat_template or tokenizer.chat_template
    return tokenizer


def _vocab_size(ref: str) -> int | None:
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
    engine: str = "mergekit"  # or "direct": computed from the mapped parents (direct_merge)


SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
CHUNK = 1 << 20  # elements per float32 work buffer (4 MB: stays in cache)


class MappedWeights:
    """A local model's safetensors files, memory-mapped: tensors are views of the mapping, and
    ``release`` drops a tensor's pages from the process (the OS page cache keeps them)."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
                 if index.exists() else ["model.safetensors"])
        self.where: dict[str, tuple[mmap.mmap, int, int, torch.dtype, list[int]]] = {}
        for name in files:
            with open(folder / name, "rb") as fh:
                size = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(size))
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if info["dtype"] not in SAFETENSORS_DTYPES:
                    raise ValueError(f"{folder / name}: {key} has dtype {info['dtype']}")
                begin, end = info["data_offsets"]
                self.where[key] = (mapped, 8 + size + begin, 8 + size + end,
                                   SAFETENSORS_DTYPES[info["dtype"]], info["shape"])

    def tensor(self, name: str) -> torch.Tensor:
        mapped, begin, end, dtype, shape = self.where[name]
        with warnings.catch_warnings():  # read-only mapping: nothing writes to these views
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mapped, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                    offset=begin)
        return flat.view(shape)

    def release(self, name: str) -> None:
        mapped, begin, end, _, _ = self.where[name]
        start = begin - begin % mmap.PAGESIZE
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


@functools.cache
def mapped_weights(folder: str, _version: tuple) -> MappedWeights:
    return MappedWeights(Path(folder))


def _file_key(folder: Path) -> tuple[str, tuple]:
    """A folder and its weight files' (name, size, mtime): a rewritten file is mapped anew."""
    folder = folder.resolve()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.safetensors.index.json"))
    return str(folder), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def _local_plan(mk: dict[str, Any], device: str, method: str, top: set[str],
                per_model: set[str]) -> list[Path] | None:
    """The models' folders (the base model's first, where the method takes one) where ``mk`` is
    a plain ``method`` merge of local safetensors models on CPU, in float32 maths, with exactly
    the given parameters; None otherwise."""
    entries = mk.get("models") or []
    paths = [str(m.get("model", "")) for m in entries]
    base = mk.get("base_model")
    if base is not None and method != "linear":  # the base first; it may or may not be listed
        paths = [str(base)] + [p for p in paths if p != str(base)]
    folders = [Path(p).expanduser() for p in paths]
    if (mk.get("merge_method") != method or not entries or device != "cpu"
            or mk.get("dtype") != MATH_DTYPE
            or set(mk) - {"merge_method", "models", "parameters", "dtype", "out_dtype",
                          *([] if method == "linear" else ["base_model"])}
            or set(mk.get("parameters") or {}) != top
            or any(set(m) - {"model", "parameters"} for m in entries)
            or any(set(m.get("parameters") or {}) != per_model for m in entries
                   if str(m.get("model")) != str(base))
            or len(set(paths)) != len(paths)
            or not all((f / "model.safetensors").is_file()
                       or (f / "model.safetensors.index.json").is_file() for f in folders)):
        return None
    return folders


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def direct_merge(model: torch.nn.Module, mk: dict[str, Any], device: str) -> int | None:
    """Merge a plain linear, slerp, task arithmetic or TIES config (one fine-tuned model) straight
    from the mapped models; None (nothing touched) where the config is anything else, for
    mergekit's executor to do."""
    method, params = mk.get("merge_method"), mk.get("parameters") or {}
    if method == "linear":
        folders = _local_plan(mk, device, "linear", {"normalize"}, {"weight"})
        weights = [(m.get("parameters") or {}).get("weight") for m in mk.get("models") or []]
        if folders is None or params["normalize"] is not False or not all(map(_number, weights)):
            return None
        return _merge_mapped(model, folders, mk, _Linear(weights))
    if method == "slerp":
        folders = _local_plan(mk, device, "slerp", {"t"}, set())
        if (folders is None or len(folders) != 2 or mk.get("base_model") is None
                or not _number(params["t"])):
            return None
        return _merge_mapped(model, folders, mk, _Slerp(params["t"]))
    if method in ("task_arithmetic", "ties"):
        per_model = {"weight"} | ({"density"} if method == "ties" else set())
        folders = _local_plan(mk, device, method, {"normalize"}, per_model)
        last = (mk.get("models") or [{}])[-1]
        entry = last.get("parameters") or {}
        if (folders is None or len(folders) != 2 or params["normalize"] is not False
                or mk.get("base_model") is None or str(last["model"]) == str(mk["base_model"])
                or not all(_number(entry[k]) for k in per_model)
                or not 0 < entry.get("density", 1) <= 1):
            return None
        rule = _TaskVector(entry["weight"], entry.get("density", 1))
        return _merge_mapped(model, folders, mk, rule)
    return None


def _merge_mapped(model: torch.nn.Module, folders: list[Path], mk: dict[str, Any],
                  rule: "_Linear | _Slerp | _TaskVector") -> int | None:
    """Apply ``rule`` to every tensor of the mapped parents, into ``model``'s parameters."""
    models = [mapped_weights(*_file_key(f)) for f in folders]
    params = dict(model.named_parameters())
    names = sorted(models[0].where)
    unset = _merged_names(model) - set(names)
    out_dtype = getattr(torch, str(mk.get("out_dtype")), None)
    if (any(set(names) != set(m.where) for m in models) or not set(names) <= set(params) or unset
            or any(params[n].dtype != out_dtype or any(list(params[n].shape) != m.where[n][4]
                                                       for m in models) for n in names)):
        return None
    with torch.no_grad():
        for name in names:
            sources = [m.tensor(name).reshape(-1) for m in models]
            rule(models, name, sources, params[name].data.view(-1))
            for m in models:
                m.release(name)
    return len(names)


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


@functools.cache
def _buffers() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(CHUNK), torch.empty(CHUNK)


def torch_linear(sources: list[torch.Tensor], weights: list[float], out: torch.Tensor) -> None:
    """mergekit 0.1.5's linear_merge, elementwise: float32 zeros, then addcmul_(tensor, weight)
    per model, rounded once to ``out``'s dtype; chunk by chunk."""
    coefficients = [torch.tensor([w], dtype=torch.float32) for w in weights]
    acc, buf = _buffers()
    for start, stop in _chunks(out.numel()):
        x, y = acc[:stop - start].zero_(), buf[:stop - start]
        for source, coefficient in zip(sources, coefficients):
            x.addcmul_(y.copy_(source[start:stop]), coefficient)
        out[start:stop].copy_(x)


def torch_slerp(v0: torch.Tensor, v1: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                out: torch.Tensor) -> None:
    """mergekit 0.1.5's last slerp step, elementwise: ``a·v0 + b·v1`` in float32 (two
    roundings), rounded once to ``out``'s dtype; chunk by chunk."""
    acc, buf = _buffers()
    for start, stop in _chunks(out.numel()):
        x, y = acc[:stop - start], buf[:stop - start]
        x.copy_(v0[start:stop]).mul_(a)
        x.add_(y.copy_(v1[start:stop]).mul_(b))
        out[start:stop].copy_(x)


def _fused(sources: list[torch.Tensor], out: torch.Tensor):
    """The one-pass kernels (``app.kernels``) where they take this tensor, bfloat16 in and out
    and matching the torch path here; else None."""
    if out.dtype != torch.bfloat16 or any(s.dtype != torch.bfloat16 for s in sources):
        return None
    try:
        from app import kernels
    except ImportError as e:
        LOG.info("fused merge kernels not used (%s); merging with torch", e)
        return None
    return kernels if kernels.usable() else None


class _Linear:
    def __init__(self, weights: list[float]):
        self.weights = weights

    def __call__(self, models, name, sources, out):
        if kernels := _fused(sources, out):
            kernels.linear(sources, self.weights, out)
        else:
            torch_linear(sources, self.weights, out)


class _Slerp:
    """mergekit 0.1.5's slerp of one tensor, op for op: the norms and the cosine of the two
    parents are summed over the same 2**20-element chunks (and cached: they do not depend on
    λ), the two coefficients follow from them (linear where |cos| > 0.9995), and the merge is
    ``a·v0 + b·v1`` in float32, rounded once to the stored dtype."""

    THRESHOLD, EPS = 0.9995, 1e-8

    def __init__(self, t: float):
        self.t = torch.tensor([t], dtype=torch.float32).reshape(-1, 1)

    def __call__(self, models, name, sources, out):
        v0, v1 = sources
        if not out.numel():
            return
        dot = _cosine(models[0], models[1], name)
        t = self.t
        linear = dot.abs() > self.THRESHOLD
        theta = torch.acos(torch.where(linear, 0, dot))
        sin_theta = torch.sin(theta)
        a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
        b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
        if kernels := _fused(sources, out):
            kernels.slerp(v0, v1, a.item(), b.item(), out)
        else:
            torch_slerp(v0, v1, a.view(1), b.view(1), out)


class _TaskVector:
    """mergekit 0.1.5's task arithmetic and TIES with one fine-tuned model, elementwise:
    ``PT + λ·(IT − PT)`` in float32, the product taken where TIES keeps the task vector (the
    top-density magnitudes, as mergekit's own ``magnitude`` picks them: cached per pair and
    density, they do not depend on λ) and +0 elsewhere, rounded once to the stored dtype."""

    def __init__(self, weight: float, density: float):
        self.weight, self.density = weight, density

    def __call__(self, models, name, sources, out):
        pt, it = sources
        keep = None if self.density >= 1 else _kept(models[0], models[1], name, self.density)
        if kernels := _fused(sources, out):
            kernels.task_vector(pt, it, keep, self.weight, out)
        else:
            torch_task_vector(pt, it, keep, self.weight, out)


def torch_task_vector(pt: torch.Tensor, it: torch.Tensor, keep: np.ndarray | None,
                      weight: float, out: torch.Tensor) -> None:
    """The task-vector step, chunk by chunk (``keep``: packed bits, or None for all)."""
    lam = torch.tensor([weight], dtype=torch.float32)
    acc, buf = _buffers()
    for start, stop in _chunks(out.numel()):
        x, y = acc[:stop - start], buf[:stop - start]
        x.copy_(it[start:stop]).sub_(y.copy_(pt[start:stop])).mul_(lam)
        if keep is not None:
            bits = np.unpackbits(keep[start // 8:(stop + 7) // 8], count=stop - start,
                                 bitorder="little")  # chunks start on whole bytes
            x.masked_fill_(torch.from_numpy(bits) == 0, 0.0)
        x.masked_fill_(x == 0, 0.0)  # mergekit sums the masked task vector from +0
        out[start:stop].copy_(y.add_(x))


@functools.cache
def _lambda_free(v0: MappedWeights, v1: MappedWeights, what: Any) -> dict[str, Any]:
    """Per-tensor values of a pair of parents that do not depend on λ, kept for the process."""
    return {}


def _kept(v0: MappedWeights, v1: MappedWeights, name: str, density: float) -> np.ndarray:
    """Which elements of one tensor's task vector TIES keeps, as packed bits (little order)."""
    from mergekit.sparsify import magnitude

    cache = _lambda_free(v0, v1, ("kept", density))
    if name not in cache:
        delta = v1.tensor(name).float() - v0.tensor(name).float()
        kept = magnitude(delta, density=density) != 0  # a kept exact zero adds +0 either way
        cache[name] = np.packbits(kept.reshape(-1).numpy(), bitorder="little")
    return cache[name]


def _cosine(v0: MappedWeights, v1: MappedWeights, name: str) -> torch.Tensor:
    """The clamped cosine of one tensor in two parents, as mergekit's slerp sums it."""
    cache = _lambda_free(v0, v1, "cosine")
    if name not in cache:
        x, y = _buffers()
        a, b = v0.tensor(name).reshape(1, -1), v1.tensor(name).reshape(1, -1)
        spans = list(_chunks(a.shape[1]))

        def chunk(source, buffer, start, stop):
            return buffer[:stop - start].view(1, -1).copy_(source[:, start:stop])

        norms = []
        for source, buffer in ((a, x), (b, y)):
            parts = [torch.linalg.vector_norm(chunk(source, buffer, *s), dim=1, keepdim=True)
                     for s in spans]
            norm = torch.linalg.vector_norm(torch.stack(parts), dim=0)
            norms.append(torch.where(norm > _Slerp.EPS, norm, 1))
        parts = [(chunk(a, x, *s) / norms[0] * (chunk(b, y, *s) / norms[1])).sum(
            dim=1, keepdim=True) for s in spans]
        cache[name] = torch.stack(parts).sum(dim=0).clamp(-1, 1)
    return cache[name]


def _merged_names(model: torch.nn.Module) -> set[str]:
    """The parameters a merge must write: all but a head tied to the embeddings."""
    names = {n for n, _ in model.named_parameters()}
    if getattr(model.config, "tie_word_embeddings", False):
        names.discard("lm_head.weight")
    return names


def merge_into(model: torch.nn.Module, mk: dict[str, Any], device: str = "cpu",
               seed: int | None = None, trust_remote_code: bool = False) -> MergeReport:
    """Overwrite every parameter of ``model`` with the merge described by ``mk``, in place."""
    import time

    start = time.perf_counter()
    written_direct = direct_merge(model, mk, device)
    if written_direct is not None:
        return MergeReport(written_direct, time.perf_counter() - start, engine="direct")
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
    missing = _merged_names(model) - written
    if missing:
        raise RuntimeError(f"merge left parameters unset: {sorted(missing)[:5]}")
    return MergeReport(tensors=len(written), seconds=time.perf_counter() - start)
