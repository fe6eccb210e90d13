"""Building lm-eval tasks and their requests once per process.

A configured task may be an lm-eval group (``leaderboard_bbh``): its leaf tasks are built each
on their own and their documents pooled. Each leaf's request ``Instance``s are lm-eval's own,
built once (prompts, few-shot contexts, choices) and re-scored for every merge.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from app import compat
from app.errors import ConfigError, suggest

LOG = logging.getLogger(__name__)
GROUP_PREFIX = "app/"  # names the inline groups that carry our settings
RAW_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}


@dataclass
@dataclass
class Leaf:
    """One lm-eval task, its requests (built once) and what each document needs for scoring."""

    name: str
    task: Any
    instances: list  # lm-eval Instances, all documents
    docs: list[tuple[int, int, Any]]  # (doc_id in the requests, the dataset's doc index, doc)
    requests: dict[int, list]  # doc_id -> its instances in request (choice) order
    gold: dict[int, int] = field(default_factory=dict)  # MC: doc_id -> gold choice index


def build_tasks(task_cfg: DictConfig, seed: int = 0) -> tuple[Any, dict[str, dict[str, Any]]]:
    """(TaskManager, {configured name: {leaf name: lm-eval Task}}).

    Each leaf is built on its own with Python's ``random`` seeded by ``task.docs_seed`` and the
    datasets cache bypassed, so documents whose preparation draws random numbers (GPQA shuffles
    its options) come out the same in every process. ``task.data_dir`` replaces a leaf's hub
    dataset by its local copy; a calibrated task gets lm-eval's raw ``acc`` next to its own
    metrics (the leaderboard's BBH and GPQA list only ``acc_norm``).
    """
    names = [spec.name for spec in task_cfg.tasks]
    with in_include_path(task_cfg):
        manager = task_manager(task_cfg.include_path, names)
        if any("ifeval" in n for n in names) or task_cfg.nltk_data:
            _nltk_data(task_cfg.nltk_data)
        tasks: dict[str, dict[str, Any]] = {spec.name: {} for spec in task_cfg.tasks}
        for spec, spec_dict in task_specs(manager, task_cfg):
            with _seeded_documents(task_cfg.docs_seed):
                try:
                    loaded = manager.load(spec_dict)["tasks"]
                except Exception as e:  # noqa: BLE001 - datasets raises many kinds
                    raise _dataset_error(spec_dict["task"][0], manager, e) from e
            for name, task in loaded.items():
                _check(task, spec)
                task.set_fewshot_seed(seed=seed)
                tasks[spec.name][name] = task
    return manager, tasks


def in_include_path(task_cfg: DictConfig):
    """Relative data_files in the include path's YAMLs resolve against it."""
    include = task_cfg.include_path
    return contextlib.chdir(include) if include else contextlib.nullcontext()


def task_specs(manager, task_cfg: DictConfig) -> list[tuple[Any, dict[str, Any]]]:
    """(configured task, lm-eval spec) per leaf task: an inline group (``app/<task>``) whose one
    member is the leaf with our settings laid over its YAML."""
    return [(spec, {"group": f"{GROUP_PREFIX}{spec.name}",
                    "task": [{"task": leaf, **leaf_overrides(manager, leaf, task_cfg, spec)}]})
            for spec in task_cfg.tasks for leaf in leaf_names(manager, spec.name)]


def task_manager(include: str | None, names: list[str]):
    """The smallest TaskManager that knows every name: the include path alone, then with
    lm-eval's leaderboard folder, then all of lm-eval's ~14k YAMLs (indexing takes seconds)."""
    import lm_eval.tasks as lm_tasks
    from lm_eval.tasks import TaskManager

    leaderboard = str(Path(lm_tasks.__file__).parent / "leaderboard")
    tries = ([[include]] if include else []) + [[leaderboard] + ([include] if include else [])]
    for paths in tries:
        manager = TaskManager(include_path=paths, include_defaults=False)
        if set(names) <= set(manager.all_tasks):
            return manager
    manager = TaskManager(include_path=include)
    for name in names:
        if name not in manager.all_tasks:
            raise ConfigError(f"task.tasks: lm-eval knows no task {name!r}"
                              f"{suggest(name, manager.all_tasks)}")
    return manager


def leaf_names(manager, name: str) -> list[str]:
    """The leaf tasks a task, group or tag name stands for, in lm-eval's order."""
    Kind = compat.index_kinds()
    entry = manager.task_index[name]
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)
    if entry.kind != Kind.GROUP:
        return [name]
    out = []
    for member in entry.cfg.get("task", []):
        child = member if isinstance(member, str) else member.get("task") or member.get("group")
        out += leaf_names(manager, child) if child in manager.task_index else [child]
    return out


def leaf_overrides(manager, leaf: str, task_cfg: DictConfig, spec) -> dict[str, Any]:
    """Task-config keys laid over the leaf's own YAML (lm-eval's group-member override, which
    works like ``include:``): shots, generation cap, local dataset, raw ``acc``."""
    leaf_cfg = manager.task_index[leaf].cfg or {}
    out: dict[str, Any] = {}
    if spec.num_fewshot is not None:
        out["num_fewshot"] = spec.num_fewshot
    if task_cfg.max_gen_toks is not None and leaf_cfg.get("output_type") == "generate_until":
        out["generation_kwargs"] = {**(leaf_cfg.get("generation_kwargs") or {}),
                                    "max_gen_toks": task_cfg.max_gen_toks}
    path = leaf_cfg.get("dataset_path")
    if task_cfg.data_dir and path and (Path(task_cfg.data_dir) / path).is_dir():
        out["dataset_path"] = str((Path(task_cfg.data_dir) / path).resolve())
        # datasets keys a local folder's cache on its name and README, not on its files: two
        # copies of one dataset would share it, so a local copy is always read afresh
        out["dataset_kwargs"] = {**(leaf_cfg.get("dataset_kwargs") or {}),
                                 "download_mode": "force_redownload",
                                 "verification_mode": "no_checks"}
    metrics = leaf_cfg.get("metric_list") or []
    if (spec.calibration and leaf_cfg.get("output_type") == "multiple_choice"
            and "acc" not in [m.get("metric") for m in metrics]):
        out["metric_list"] = [dict(RAW_ACC), *metrics]
    return out


def _check(task, spec) -> None:
    if task.get_config("num_fewshot") is None:  # as simple_evaluate does
        task.set_config(key="num_fewshot", value=0)
    if spec.calibration and task.get_config("output_type") != "multiple_choice":
        raise ConfigError(f"task.tasks[{spec.name}].calibration=true needs a multiple-choice task; "
                          f"{task.task_name} is {task.get_config('output_type')} "
                          f"(set calibration: false)")


@contextlib.contextmanager
def _seeded_documents(seed: int):
    """Python's random seeded, the datasets cache off (a cached map would replay another
    process's shuffle); both restored afterwards."""
    import datasets

    state, caching = random.getstate(), datasets.is_caching_enabled()
    random.seed(seed)
    datasets.disable_caching()
    try:
        yield
    finally:
        random.setstate(state)
        if caching:
            datasets.enable_caching()


UNREACHABLE = ("ConnectionError", "DatasetNotFoundError", "LocalEntryNotFoundError",
               "OfflineModeIsEnabled", "GatedRepoError", "RepositoryNotFoundError")


def _dataset_error(member: dict, manager, error: Exception) -> Exception:
    """A ConfigError naming the dataset and how to provide it offline, when ``error`` (or its
    cause) says the hub could not be reached; else the error itself."""
    leaf = member["task"]
    path = member.get("dataset_path") or (manager.task_index[leaf].cfg or {}).get("dataset_path")
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    unreachable = any(type(c).__name__ in UNREACHABLE or "couldn't reach" in str(c).lower()
                      or "offline mode" in str(c).lower() for c in chain)
    if not path or Path(path).is_absolute() or not unreachable:
        return error
    return ConfigError(
        f"task {leaf}: dataset {path!r} cannot be reached (offline, not in the datasets cache); "
        f"on a machine with hub access run `hf download --repo-type dataset {path} "
        f"--local-dir DIR/{path}`, then set task.data_dir=DIR")


def _nltk_data(extra: str | None) -> None:
    """Put ``extra`` first on NLTK's search path; IFEval's checks need the punkt_tab model and
    lm-eval would try to download it on import."""
    import nltk

    if extra and extra not in nltk.data.path:
        nltk.data.path.insert(0, extra)
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise ConfigError(
            "IFEval needs NLTK's punkt_tab model, which is not installed: run `python -m "
            "nltk.downloader punkt_tab` where the internet is reachable, or set task.nltk_data "
            "to a folder holding tokenizers/punkt_tab") from None


def prepare_leaves(tasks: dict[str, Any], task_cfg: DictConfig, seed: int,
                   calibrated: bool, chat: dict[str, Any] | None = None) -> list[Leaf]:
    """Build every leaf's requests once (``limit`` documents: the first ones, or a seeded sample
    with ``task.subsample_seed``); ``chat``: the chat-template arguments lm-eval's ``evaluate``
    passes to ``build_all_requests`` (``chat_arguments``), none for plain-text prompts."""
    leaves = []
    for name, task in tasks.items():
        with _seeded_documents(task_cfg.docs_seed):
            indices = subsample(task_cfg, name, task)
            task.build_all_requests(limit=None if indices else task_cfg.limit, samples=indices,
                                    **(chat or {}))
        by_doc: dict[int, list] = defaultdict(list)
        for inst in task.instances:
            by_doc[inst.doc_id].append(inst)
        requests = {d: sorted(by_doc[d], key=lambda r: r.idx) for d in sorted(by_doc)}
        docs = [(d, indices[d] if indices else d, reqs[0].doc) for d, reqs in requests.items()]
        leaf = Leaf(name, task, list(task.instances), docs, requests)
        _render_once(task, [doc for _, _, doc in docs])
        if calibrated:
            leaf.gold = {d: gold_index(task, doc) for d, _, doc in docs}
        leaves.append(leaf)
    return leaves


def own_validation_split(task) -> str | None:
    """The task's validation split where λ* can be chosen on it: set, and neither its test
    split nor its few-shot pool (MMLU-Pro's validation split is its 5-shot examples); else
    None."""
    split = task.config
    val = split.validation_split
    if val and split.test_split and val != split.test_split and val != split.fewshot_split:
        return val
    return None


def selection_leaves(tasks: dict[str, Any], task_cfg: DictConfig, seed: int, calibrated: bool,
                     chat: dict[str, Any] | None = None) -> list[Leaf] | None:
    """With ``task.selection.source=auto``, leaves over the task's own validation split where
    every leaf has one (``own_validation_split``), built like ``prepare_leaves``; else None."""
    sel = task_cfg.selection
    if not sel.share or sel.source != "auto" or not tasks \
            or not all(own_validation_split(t) for t in tasks.values()):
        return None
    return prepare_leaves({name: compat.validation_view(t) for name, t in tasks.items()},
                          task_cfg, seed, calibrated, chat)


def chat_arguments(lm, task_cfg: DictConfig) -> dict[str, Any]:
    """``build_all_requests``' chat-template arguments as lm-eval's ``evaluate`` gives them for
    ``apply_chat_template=task.chat_template, fewshot_as_multiturn=task.fewshot_as_multiturn``
    on the model ``lm``; ConfigError when its tokenizer has no chat template to apply."""
    if not task_cfg.chat_template:
        return {}
    from app.evaluate.schema import no_template_error

    tokenizer = getattr(lm, "tokenizer", None)
    try:
        template = lm.chat_template(True)
    except ValueError as e:  # several named templates and no default one
        raise ConfigError(f"task.chat_template=true: {e}") from None
    if not template or not hasattr(lm, "apply_chat_template"):
        raise no_template_error(getattr(tokenizer, "name_or_path", None) or "unnamed")
    return {"apply_chat_template": True,
            "fewshot_as_multiturn": bool(task_cfg.fewshot_as_multiturn),
            "chat_template": lm.apply_chat_template,
            "tokenizer_name": getattr(lm, "tokenizer_name", "")}


def subsample(task_cfg: DictConfig, name: str, task) -> list[int] | None:
    """With ``limit`` and ``subsample_seed``: the leaf's seeded random document indices."""
    if task_cfg.limit is None or task_cfg.subsample_seed is None:
        return None
    n = len(task.eval_docs)
    rng = random.Random(f"{task_cfg.subsample_seed}:{name}")
    return sorted(rng.sample(range(n), min(task_cfg.limit, n)))


def _render_once(task, docs: list) -> None:
    """Scoring renders each document's choices and target (Jinja, compiled on every call) for
    every merge; they depend on the document only, so keep the first rendering per document."""
    keep = {id(doc) for doc in docs}  # the documents stay referenced by the requests
    for name in ("doc_to_choice", "doc_to_target"):
        render, seen = getattr(task, name), {}

        def once(doc, *args, _render=render, _seen=seen, **kwargs):
            if args or kwargs or id(doc) not in keep:
                return _render(doc, *args, **kwargs)
            if id(doc) not in _seen:
                _seen[id(doc)] = _render(doc)
            return _seen[id(doc)]

        setattr(task, name, once)


def gold_index(task, doc) -> int:
    """The gold choice's index, as lm-eval's multiple-choice ``process_results`` reads it."""
    gold = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ConfigError(f"task {task.task_name}: a document's target {gold!r} is not one "
                          f"choice index (multi-target tasks cannot be calibrated)")
    return gold


def training_examples(tasks: dict, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from the training documents of lm-eval task objects (a task's
    leaves), as lm-eval renders them: the answer is the gold choice (multiple choice) or the
    target, after the task's target delimiter."""
    out = []
    for task in tasks.values():
        if not task.has_training_docs():
            continue
        delimiter = task.config.target_delimiter or ""
        for doc in task.training_docs():
            target = task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice":
                choices = task.doc_to_choice(doc)
                target = choices[target] if isinstance(target, int) else target
            out.append((task.doc_to_text(doc), f"{delimiter}{target}"))
            if limit is not None and len(out) >= limit:
                return out
    return out
