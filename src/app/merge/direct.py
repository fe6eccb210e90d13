"""Direct merges: merged tensors computed straight from the parents' files, no executor.

For plain linear, slerp, and task arithmetic / TIES with one fine-tuned model, on CPU or with
the working model on CUDA (which method has which path is declared in ``app.merge.methods``),
every tensor is computed with mergekit's arithmetic in mergekit's order (float32, rounded once
to the stored dtype), so the result is bit-identical to mergekit's executor on that device and
to ``mergekit-yaml`` (tests check it on CPU; ``scripts/gpu_check.sh`` on CUDA), an order of
magnitude faster. Where the parents are (``merge.parents_on``): on CPU they stay mapped and no
parent is held in memory (each parent tensor's pages are dropped from the process once merged;
``device`` reads them into RAM once instead); on CUDA they are read once, onto the device when
they fit beside the working model within ``resident_share`` of its free memory (``auto``) or
always (``device``), else into pinned host memory, from which each tensor is copied whole to
the device per λ (``host``). On CUDA every tensor is merged from sources on the device, in
chunks of up to ``torch_ops.DEVICE_CHUNK`` elements. What does not depend on λ (slerp's norms
and cosines, the elements TIES keeps, as packed bits on the device on CUDA) is computed on the
first merge of a pair, on the merge's device, and kept by the ``DirectMerger`` that owns the
parents. Tensors are named as the checkpoint names them (``app.merge.layout``). For
bfloat16 models on CPU the elementwise arithmetic runs in one fused pass (``app.merge.kernels``)
where a probe shows it equal to the torch path.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from app.merge.layout import checkpoint_names, parameters
from app.merge.methods import PARENTS_ON
from app.merge.torch_ops import (
    CHUNK,
    DEVICE_CHUNK,
    Buffers,
    chunks,
    new_buffers,
    scalars,
    torch_linear,
    torch_nuslerp,
    torch_slerp,
    torch_task_vector,
    torch_task_vectors,
)

LOG = logging.getLogger(__name__)
MATH_DTYPE = "float32"
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
Rule = Callable[["DirectMerger", list, str, list, torch.Tensor], None]


class MappedWeights:
    """A local model's safetensors files, memory-mapped: tensors are views of the mapping, and
    ``release`` drops a tensor's pages from the process (the OS page cache keeps them)."""

    def __init__(self, folder: Path):
        self.folder = folder
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

    @property
    def nbytes(self) -> int:
        return sum(end - begin for _, begin, end, _, _ in self.where.values())


class ResidentWeights:
    """A local model's tensors read once from its mapped files into one block of memory on
    ``device`` (a CUDA device, or host RAM), or of pinned host memory (``pinned``): the same
    ``where`` (the tensor at index 0, shape at 4), ``tensor`` and ``release`` (nothing to drop)
    as ``MappedWeights``."""

    ALIGN = 256  # bytes: every tensor starts aligned for any dtype and vectorised loads

    def __init__(self, mapped: MappedWeights, device: torch.device, pinned: bool = False):
        self.folder = mapped.folder
        offsets, total = {}, 0
        for name, (_, begin, end, _, _) in mapped.where.items():
            offsets[name] = total
            total += -(-(end - begin) // self.ALIGN) * self.ALIGN
        try:
            # one block per model (pinned blocks come from torch's host cache, which rounds
            # a request up to a power of two)
            self.block = torch.empty(total, dtype=torch.uint8, device=device,
                                     pin_memory=pinned)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            where = "pinned host" if pinned else str(device)
            raise MemoryError(f"{total / 1e9:.2f} GB of {where} memory refused: "
                              f"{str(e).splitlines()[0]}") from None
        self.where: dict[str, tuple[torch.Tensor, int, int, torch.dtype, list[int]]] = {}
        for name, (_, begin, end, dtype, shape) in mapped.where.items():
            start = offsets[name]
            view = self.block[start:start + end - begin].view(dtype).view(shape)
            view.copy_(mapped.tensor(name))
            mapped.release(name)
            self.where[name] = (view, begin, end, dtype, shape)

    def tensor(self, name: str) -> torch.Tensor:
        return self.where[name][0]

    def release(self, name: str) -> None:
        pass

    @property
    def nbytes(self) -> int:
        return sum(end - begin for _, begin, end, _, _ in self.where.values())


Weights = MappedWeights | ResidentWeights


def _device(device: str | torch.device) -> torch.device:
    """``device`` with its index (``cuda`` → ``cuda:<current>``), as tensors report theirs."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on the CUDA merge device, in its stored dtype: itself where it is there
    already, else one copy (asynchronous from pinned memory); on other devices, itself."""
    if device.type != "cuda" or tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=True)


def work_chunk(device: torch.device, largest: int) -> int:
    """Elements per float32 work buffer: ``CHUNK`` on CPU; on a GPU, where the sources are on
    the device, the largest tensor's size up to ``DEVICE_CHUNK`` (a multiple of 8)."""
    if device.type == "cpu":
        return CHUNK
    return max(CHUNK, min(DEVICE_CHUNK, -(-largest // 8) * 8))


def file_key(folder: Path) -> tuple[str, tuple]:
    """A folder and its weight files' (name, size, mtime): a rewritten file is read anew."""
    folder = folder.resolve()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.safetensors.index.json"))
    return str(folder), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


class DirectMerger:
    """Direct merges into a working model; owns the parents (mapped or resident, as
    ``parents_on`` places them), the λ-free values computed from them and the float32 work
    buffers (one pair per merge device)."""

    def __init__(self, cache_dir: str | None = None, seed: int | None = None,
                 parents_on: str = "auto", resident_share: float = 0.5,
                 device: str | None = None):
        if parents_on not in PARENTS_ON:
            raise ValueError(f"parents_on={parents_on!r}: use one of {', '.join(PARENTS_ON)}")
        self.cache_dir = cache_dir  # where hub ids' snapshots are (None: HF_HOME's cache)
        self.seed = seed  # DARE's and DELLA's masks: mergekit's --random-seed
        self.parents_on = parents_on  # auto, device or host (app.merge.methods.MergeSettings)
        self.resident_share = resident_share  # of the device's free memory, for auto
        self.device = device  # where ``weights`` places parents asked for without a device
        self.parents: dict[tuple, Weights] = {}  # (file_key, device) → the parent
        self.lambda_free: dict[tuple, dict[str, Any]] = {}
        self.buffers: Buffers = new_buffers()  # float32 work buffers on the model's device

    def weights(self, folder: Path, device: str | None = None) -> Weights:
        return self.weights_of([folder], device)[0]

    def weights_of(self, folders: list[Path], device: str | None = None) -> list[Weights]:
        """The models in ``folders`` for merges on ``device`` (default: the merger's), each
        read once and placed as ``parents_on`` says; placed together, so that ``auto`` puts
        a pair on the device only where both fit."""
        dev = _device(device or self.device or "cpu")
        keys = [(file_key(f), str(dev)) for f in folders]
        new = [k for k in dict.fromkeys(keys) if k not in self.parents]
        for key in new:
            self._forget(key)
        mapped = [MappedWeights(Path(k[0][0])) for k in new]
        if mapped:
            placement = self.placement(dev, sum(m.nbytes for m in mapped))
            for key, m in zip(new, mapped):
                self.parents[key] = self._placed(m, dev, placement)
        return [self.parents[k] for k in keys]

    def placement(self, device: torch.device, nbytes: int) -> str:
        """Where parents of ``nbytes`` go on ``device``: "mapped" (host mmap, read per λ),
        "ram" (CPU: read into memory once), "device" or "pinned" (CUDA); logged with the
        arithmetic where ``auto`` decides."""
        if device.type == "cpu":
            return "ram" if self.parents_on == "device" else "mapped"
        if device.type != "cuda":
            return "mapped"
        if self.parents_on != "auto":
            return "device" if self.parents_on == "device" else "pinned"
        free = torch.cuda.mem_get_info(device)[0] + (  # with what torch's cache holds unused
            torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        resident = sum(p.nbytes for (_, d), p in self.parents.items()
                       if d == str(device) and isinstance(p, ResidentWeights)
                       and p.block.device.type == "cuda")
        budget = self.resident_share * (free + resident)
        fits = resident + nbytes <= budget
        LOG.info("merge.parents_on=auto on %s: parents %.2f GB (+%.2f GB already there) %s "
                 "%.2f × %.2f GB free beside the working model = %.2f GB → %s", device,
                 nbytes / 1e9, resident / 1e9, "≤" if fits else ">", self.resident_share,
                 (free + resident) / 1e9, budget / 1e9,
                 "on the device" if fits else "pinned host memory, streamed per λ")
        return "device" if fits else "pinned"

    def _placed(self, mapped: MappedWeights, device: torch.device, placement: str) -> Weights:
        """``mapped`` as ``placement`` says; where that memory is refused, the next best place
        (device → pinned → mapped), except where ``parents_on=device`` asked for the device."""
        if placement == "mapped":
            LOG.info("%s on %s: mapped, read per λ (%.2f GB)", mapped.folder, device,
                     mapped.nbytes / 1e9)
            return mapped
        try:
            placed = ResidentWeights(mapped, torch.device("cpu") if placement == "pinned"
                                     else device, pinned=placement == "pinned")
        except MemoryError as e:
            if device.type == "cuda" and self.parents_on == "device":
                raise MemoryError(f"merge.parents_on=device: {mapped.folder} does not fit on "
                                  f"{device} ({e}); use merge.parents_on=auto or host") from None
            fallback = "pinned" if placement == "device" else "mapped"
            LOG.warning("%s on %s: %s; %s instead", mapped.folder, device, e, fallback)
            return self._placed(mapped, device, fallback)
        LOG.info("%s on %s: %s (%.2f GB, read once)", mapped.folder, device,
                 {"ram": "in host memory", "device": "on the device",
                  "pinned": "in pinned host memory, copied to the device per λ"}[placement],
                 placed.nbytes / 1e9)
        return placed

    def _forget(self, key: tuple) -> None:
        """Drop the parents an earlier version of this folder's files gave on this device, and
        what was computed from them (a rewritten file is read anew)."""
        for old in [k for k in self.parents if k[0][0] == key[0][0] and k[1] == key[1]]:
            gone = id(self.parents.pop(old))
            for cached in [c for c in self.lambda_free if gone in c[:2]]:
                del self.lambda_free[cached]

    def cache(self, v0: Weights, v1: Weights, what: Any) -> dict[str, Any]:
        """Per-tensor values of a pair of parents that do not depend on λ."""
        return self.lambda_free.setdefault((id(v0), id(v1), what), {})

    def planned(self, mk: dict[str, Any], device: str,
                plan: str) -> tuple[list[Weights], list[str], Rule] | None:
        """The parents, their tensor names and the rule where the direct path ``plan`` takes
        ``mk`` and the parents hold the same tensors; else None."""
        planned = PLANS[plan](_local(mk, self.cache_dir), device)
        if planned is None:
            return None
        folders, rule = planned
        dev = _device(device)
        models = self.weights_of(folders, str(dev))
        names = sorted(models[0].where)
        if any(set(names) != set(m.where) or any(m.where[n][4] != models[0].where[n][4]
                                                  for n in names) for m in models):
            return None
        largest = max((math.prod(models[0].where[n][4]) for n in names), default=0)
        size = work_chunk(dev, largest)
        if self.buffers[0].device != dev or self.buffers[0].numel() != size:
            self.buffers = new_buffers(dev, size)
        return models, names, rule

    def merge(self, model: torch.nn.Module, mk: dict[str, Any], device: str,
              plan: str) -> int | None:
        """Merge ``mk`` with the direct path ``plan`` (a name in ``PLANS``); None (nothing
        touched) where the config is not one that path takes, for mergekit's executor."""
        planned = self.planned(mk, device, plan)
        if planned is None:
            return None
        models, names, rule = planned
        params = parameters(model)  # by checkpoint name, as the files hold them
        out_dtype = getattr(torch, str(mk.get("out_dtype")), None)
        if (not set(names) <= set(params) or checkpoint_names(model) - set(names)
                or any(params[n].dtype != out_dtype
                       or list(params[n].shape) != models[0].where[n][4] for n in names)):
            return None
        if not getattr(rule, "prepare", lambda *a: True)(self, models, names):
            return None
        with torch.no_grad():
            for name in names:
                self._merge_one(models, rule, name, params[name].data.view(-1))
        return len(names)

    def tensors(self, mk: dict[str, Any], device: str,
                plan: str) -> Iterator[tuple[str, torch.Tensor]] | None:
        """The merge's tensors one at a time, by checkpoint name, each new on ``device`` in
        ``mk``'s out_dtype (nothing else of the merge is held); None where the direct path
        ``plan`` does not take ``mk``. What an engine worker loads its weights from."""
        planned = self.planned(mk, device, plan)
        out_dtype = getattr(torch, str(mk.get("out_dtype")), None)
        if planned is None or not isinstance(out_dtype, torch.dtype):
            return None
        models, names, rule = planned
        if not getattr(rule, "prepare", lambda *a: True)(self, models, names):
            return None

        def stream():
            with torch.no_grad():
                for name in names:
                    out = torch.empty(models[0].where[name][4], dtype=out_dtype, device=device)
                    self._merge_one(models, rule, name, out.view(-1))
                    yield name, out
        return stream()

    def _merge_one(self, models: list[Weights], rule: Rule, name: str,
                   out: torch.Tensor) -> None:
        sources = [on(m.tensor(name), out.device).reshape(-1) for m in models]
        rule(self, models, name, sources, out)
        for m in models:
            m.release(name)


# --------------------------------------------------------------------------- plans

def _local(mk: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    """``mk`` with each hub id that has a local snapshot replaced by that folder."""
    from app.hub import local_snapshot

    def local(ref):
        return ref if ref is None else str(local_snapshot(str(ref), cache_dir) or ref)

    out = dict(mk, models=[dict(m, model=local(m.get("model"))) for m in mk.get("models") or []])
    if "base_model" in mk:
        out["base_model"] = local(mk["base_model"])
    return out


def _local_plan(mk: dict[str, Any], device: str, method: str, top: set[str],
                per_model: set[str]) -> list[Path] | None:
    """The models' folders (the base model's first, where the method takes one) where ``mk`` is
    a plain ``method`` merge of local safetensors models on CPU or CUDA, in float32 maths, with
    exactly the given parameters; None otherwise."""
    entries = mk.get("models") or []
    paths = [str(m.get("model", "")) for m in entries]
    base = mk.get("base_model")
    if base is not None and method != "linear":  # the base first; it may or may not be listed
        paths = [str(base)] + [p for p in paths if p != str(base)]
    folders = [Path(p).expanduser() for p in paths]
    if (mk.get("merge_method") != method or not entries or not on_device(device)
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


def on_device(device: str) -> bool:
    """A device the direct paths merge on: the CPU, or a CUDA device (each tensor merged
    there in float32 from sources on the device: ``DirectMerger.placement``)."""
    return device == "cpu" or device.startswith("cuda")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plan_linear(mk: dict[str, Any], device: str) -> tuple[list[Path], Rule] | None:
    folders = _local_plan(mk, device, "linear", {"normalize"}, {"weight"})
    weights = [(m.get("parameters") or {}).get("weight") for m in mk.get("models") or []]
    if folders is None or mk["parameters"]["normalize"] is not False \
            or not all(map(_number, weights)):
        return None
    return folders, _Linear(weights)


def plan_slerp(mk: dict[str, Any], device: str) -> tuple[list[Path], Rule] | None:
    folders = _local_plan(mk, device, "slerp", {"t"}, set())
    if (folders is None or len(folders) != 2 or mk.get("base_model") is None
            or not _number(mk["parameters"]["t"])):
        return None
    return folders, _Slerp(mk["parameters"]["t"])


def plan_nuslerp(mk: dict[str, Any], device: str) -> tuple[list[Path], Rule] | None:
    """NuSLERP of two models without a base, flattened (mergekit's defaults)."""
    folders = _local_plan(mk, device, "nuslerp", set(), {"weight"})
    weights = [m["parameters"]["weight"] for m in mk.get("models") or []]
    if (folders is None or len(folders) != 2 or mk.get("base_model") is not None
            or not all(map(_number, weights))):
        return None
    total = sum(weights)  # mergekit: t = w₁ / (w₀ + w₁), ½ where the sum vanishes
    return folders, _NuSlerp(0.5 if abs(total) < 1e-6 else weights[1] / total)


def plan_task_vector(mk: dict[str, Any], device: str) -> tuple[list[Path], Rule] | None:
    """Task arithmetic, or a sparsifying task-vector method (TIES, DARE, DELLA, breadcrumbs,
    with or without sign election), of one or more fine-tuned models of one base."""
    from app.merge.sparsify import KNOBS, SPARSIFICATION, sparsity_of

    method = str(mk.get("merge_method"))
    kind = SPARSIFICATION.get(method, (None,))[0]
    per_model = {"weight"} | ({"density", *KNOBS[kind]} if kind else set())
    folders = _local_plan(mk, device, method, {"normalize"}, per_model)
    base = str(mk.get("base_model"))
    entries = [m.get("parameters") or {} for m in mk.get("models") or []
               if str(m.get("model")) != base]
    if (folders is None or len(folders) != len(entries) + 1
            or mk["parameters"]["normalize"] is not False or mk.get("base_model") is None
            or not all(_number(e[k]) for e in entries for k in per_model)
            or not all(0 < e.get("density", 1) <= 1 for e in entries)):
        return None
    return folders, _TaskVector([e["weight"] for e in entries],
                                [sparsity_of(method, e) for e in entries], method, mk)


PLANS = {"linear": plan_linear, "slerp": plan_slerp, "nuslerp": plan_nuslerp,
         "task_vector": plan_task_vector}


# --------------------------------------------------------------------------- rules

def _fused(sources: list[torch.Tensor], out: torch.Tensor):
    """The one-pass kernels (``app.merge.kernels``) where they take this tensor, bfloat16 in
    and out and matching the torch path here; else None."""
    if (out.device.type != "cpu" or out.dtype != torch.bfloat16
            or any(s.dtype != torch.bfloat16 for s in sources)):
        return None
    try:
        from app.merge import kernels
    except ImportError as e:
        LOG.info("fused merge kernels not used (%s); merging with torch", e)
        return None
    return kernels if kernels.usable() else None


class _Linear:
    def __init__(self, weights: list[float]):
        self.weights = weights

    def __call__(self, merger, models, name, sources, out):
        if kernels := _fused(sources, out):
            kernels.linear(sources, self.weights, out)
        else:
            torch_linear(sources, self.weights, out, merger.buffers)


class _Slerp:
    """mergekit 0.1.5's slerp of one tensor, op for op: the norms and the cosine of the two
    parents are summed over the same 2**20-element chunks (and cached: they do not depend on
    λ), the two coefficients follow from them (linear where |cos| > 0.9995), and the merge is
    ``a·v0 + b·v1`` in float32, rounded once to the stored dtype."""

    THRESHOLD, EPS = 0.9995, 1e-8

    def __init__(self, t: float):
        self.t = float(t)

    def __call__(self, merger, models, name, sources, out):
        v0, v1 = sources
        if not out.numel():
            return
        dot = cosine(merger, models[0], models[1], name)
        t = scalars((self.t,), dot.device).reshape(-1, 1)
        linear = dot.abs() > self.THRESHOLD
        theta = torch.acos(torch.where(linear, 0, dot))
        sin_theta = torch.sin(theta)
        a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
        b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
        if kernels := _fused(sources, out):
            kernels.slerp(v0, v1, a.item(), b.item(), out)
        else:
            torch_slerp(v0, v1, a.view(1), b.view(1), out, merger.buffers)


class _NuSlerp:
    """mergekit 0.1.5's flattened NuSLERP of one tensor, op for op: each parent's norm and
    their cosine are torch's reductions over the whole float32 tensor (computed once and
    cached: they do not depend on λ), then ``(sin((1−t)θ)·v0 + sin(tθ)·v1) / sin θ``
    elementwise in float32 (``(1−t)·v0 + t·v1`` where the two are colinear), chunk by chunk."""

    EPS, NORM_EPS = 1e-8, 1e-7

    def __init__(self, t: float):
        self.t = t

    def __call__(self, merger, models, name, sources, out):
        cos = arc(merger, models[0], models[1], name)
        t = self.t
        colinear = merger.cache(models[0], models[1], "colinear")
        if name not in colinear:  # read once: no wait for the device per λ
            colinear[name] = bool(((1 - cos.square()) <= self.EPS ** 2).item())
        if colinear[name]:
            coefficients, sin_theta = (1 - t, t), None
        else:
            theta = torch.acos(cos)
            coefficients, sin_theta = (torch.sin((1 - t) * theta), torch.sin(t * theta)), \
                torch.sin(theta)
        if kernels := _fused(sources, out):
            kernels.nuslerp(*sources, *map(float, coefficients),
                            None if sin_theta is None else sin_theta.item(), out)
        else:
            torch_nuslerp(*sources, *coefficients, sin_theta, out, merger.buffers)


class _TaskVector:
    """mergekit 0.1.5's task-vector merges, elementwise: each fine-tune's task vector
    ``IT_k − PT`` in float32, multiplied by its L1 rescale factor where the method rescales
    (DARE, DELLA), kept where the method keeps it (+0 elsewhere), times its weight (λ); with
    several fine-tunes and sign election (TIES' "sum" consensus) only the entries agreeing with
    the sign of their sum count; the sum over fine-tunes is added to PT and rounded once to the
    stored dtype. What a method keeps and its factors do not depend on λ
    (``app.merge.sparsify``): computed on the first merge (for DARE and DELLA, every tensor at
    once, drawing in mergekit's order after its seed) and cached per pair, knobs and seed.
    """

    def __init__(self, weights: list[float], sparsities: list, method: str,
                 mk: dict[str, Any]):
        from app.merge.sparsify import CONSENSUS

        self.weights, self.sparsities, self.mk = weights, sparsities, mk
        self.consensus = method in CONSENSUS

    def prepare(self, merger, models, names: list[str]) -> bool:
        """DARE's and DELLA's masks for every tensor, drawn in mergekit's order after its seed
        (tensor after tensor, fine-tune after fine-tune); False where that order cannot be
        reproduced."""
        if not any(s is not None and s.random for s in self.sparsities):
            return True
        import transformers

        from app import compat

        if all(set(names) <= set(kept_cache(merger, models[0], m, s))
               for m, s in zip(models[1:], self.sparsities)):
            return True
        order = compat.merge_order(self.mk)
        if merger.seed is None or sorted(order) != names:
            return False
        transformers.trainer_utils.set_seed(merger.seed)  # as mergekit's executor is seeded
        for name in order:
            for k, sparsity in enumerate(self.sparsities):
                kept(merger, models[0], models[k + 1], name, sparsity)
            models[0].release(name)
        return True

    def __call__(self, merger, models, name, sources, out):
        states = [kept(merger, models[0], m, name, s)
                  for m, s in zip(models[1:], self.sparsities)]
        if len(states) > 1:
            torch_task_vectors(sources[0], sources[1:], [s.bits for s in states],
                               [s.factor for s in states], self.weights, self.consensus, out,
                               merger.buffers)
        elif kernels := _fused(sources, out):
            kernels.task_vector(*sources, states[0].bits, self.weights[0], out,
                                states[0].factor)
        else:
            torch_task_vector(*sources, states[0].bits, self.weights[0], out, merger.buffers,
                              states[0].factor)


def kept(merger: DirectMerger, base: Weights, tuned: Weights, name: str, sparsity):
    """One tensor's kept elements and rescale factor (``sparsify.Kept``) for one fine-tune,
    computed on the merge's device as mergekit's executor computes them there, and cached;
    on CUDA the packed bits stay on the device (a uint8 tensor, one bit per element)."""
    from app.merge.sparsify import Kept, prepare

    if sparsity is None:
        return Kept()
    cache = kept_cache(merger, base, tuned, sparsity)
    if name not in cache:
        device = merger.buffers[0].device
        state = prepare(sparsity, on(base.tensor(name), device), on(tuned.tensor(name), device),
                        device)
        if device.type == "cuda" and state.bits is not None:
            state = Kept(torch.from_numpy(state.bits).to(device), state.factor)
        cache[name] = state
        tuned.release(name)
    return cache[name]


def kept_cache(merger: DirectMerger, base: Weights, tuned: Weights, sparsity) -> dict:
    """The kept elements of a fine-tune, per tensor, for these knobs, seed and device."""
    return merger.cache(base, tuned, (sparsity, merger.seed, str(merger.buffers[0].device)))


def arc(merger: DirectMerger, v0: Weights, v1: Weights, name: str) -> torch.Tensor:
    """NuSLERP's clamped cosine of one tensor in two parents, as mergekit computes it: the
    whole flattened tensors normalised by torch's own norm, their product summed by torch."""
    cache = merger.cache(v0, v1, "arc")
    if name not in cache:
        device = merger.buffers[0].device

        def unit(weights):
            x = on(weights.tensor(name), device).reshape(-1).to(
                device=device, dtype=torch.float32, copy=True)  # the parents are read-only
            norm = torch.norm(x, dim=-1, keepdim=True).clamp(min=_NuSlerp.NORM_EPS)
            return x.div_(norm)

        a = unit(v0)
        cache[name] = torch.sum(a.mul_(unit(v1)), dim=-1, keepdim=True).clamp(-1, 1)
        del a
    return cache[name]


def cosine(merger: DirectMerger, v0: Weights, v1: Weights, name: str) -> torch.Tensor:
    """The clamped cosine of one tensor in two parents, as mergekit's slerp sums it (over
    ``CHUNK``-element chunks, whatever the work buffers' length)."""
    cache = merger.cache(v0, v1, "cosine")
    if name not in cache:
        x, y = merger.buffers
        a, b = (on(v.tensor(name), x.device).reshape(1, -1) for v in (v0, v1))
        spans = list(chunks(a.shape[1]))

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
