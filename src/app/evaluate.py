"""The lm-eval adapter: one HFLM over the working model; tasks, requests and their tokens built
once per process and re-scored for every merge.

Building an lm-eval evaluation (rendering prompts and few-shot contexts, tokenising every
context/continuation pair) costs more than scoring it on small models, and it does not depend
on the weights. So the Evaluator builds lm-eval's own request ``Instance``s once, tokenises the
log-likelihood requests once with HFLM's own ``_encode_pair``, and for each merge only clears
the responses, runs the model (``_loglikelihood_tokens`` / ``generate_until``), applies the
task's filters and scores each document with the task's ``process_results`` and aggregation:
lm-eval's metrics, computed by lm-eval. A test checks the result equals stock
``simple_evaluate`` on a fresh ``HFLM``. lm-eval's response cache is never used (it is keyed on
request text, not on weights).

A configured task may be an lm-eval group (``leaderboard_bbh``): its leaf tasks are built each
on their own and their documents pooled, so ``<task>/acc`` is the size-weighted mean over the
leaves (lm-eval's ``weight_by_size``) and calibration is computed over all their documents.
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

from app import calibration
from app.config import ConfigError, suggest

LOG = logging.getLogger(__name__)
GROUP_PREFIX = "app/"  # names the inline groups that carry our settings
RAW_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}


@dataclass
class TaskResult:
    """One configured task's metrics and per-sample records for one merge."""

    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    bins: dict[str, list[float]] | None = None  # reliability diagram data (MC tasks)


@dataclass
class Leaf:
    """One lm-eval task, its requests (built once) and what each document needs for scoring."""

    name: str
    task: Any
    instances: list  # lm-eval Instances, all documents
    docs: list[tuple[int, int, Any]]  # (doc_id in the requests, the dataset's doc index, doc)
    requests: dict[int, list]  # doc_id -> its instances in request (choice) order
    gold: dict[int, int] = field(default_factory=dict)  # MC: doc_id -> gold choice index


class Evaluator:
    """Scores the (in-place updated) working model on the configured lm-eval tasks."""

    def __init__(self, model, tokenizer, task_cfg: DictConfig, seed: int = 0):
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        self.cfg = task_cfg
        self.seed = seed
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task_cfg.batch_size,
                       softmax_dtype="float32")
        self.manager, self.tasks = build_tasks(task_cfg, seed)
        self.leaves = {spec.name: prepare_leaves(self.tasks[spec.name], task_cfg, seed,
                                                 spec.calibration) for spec in task_cfg.tasks}
        self._ll = [i for ls in self.leaves.values() for leaf in ls for i in leaf.instances
                    if i.request_type == "loglikelihood"]
        self._ll_tokens = tokenize_loglikelihood(self.lm, self._ll)
        self._gen = [i for ls in self.leaves.values() for leaf in ls for i in leaf.instances
                     if i.request_type == "generate_until"]
        other = {i.request_type for ls in self.leaves.values() for leaf in ls
                 for i in leaf.instances} - {"loglikelihood", "generate_until"}
        if other:
            raise ConfigError(f"task.tasks: request types {sorted(other)} are not supported "
                              f"(multiple choice and generation are)")
        self.scorer = None
        if task_cfg.scoring == "shared_context":
            from app.shared_context import SharedContextScorer

            self.scorer = SharedContextScorer(self.lm, self._ll_tokens)

    def evaluate(self) -> tuple[dict[str, TaskResult], dict[str, Any]]:
        """(per-task results, lm-eval's per-leaf aggregated metrics) for the current weights."""
        _seed_everything(self.seed)
        for inst in self._ll + self._gen:
            inst.resps, inst.filtered_resps = [], {}
        if self._ll:
            scores = (self.scorer.loglikelihood() if self.scorer is not None
                      else self.lm._loglikelihood_tokens(self._ll_tokens, disable_tqdm=True))
            for inst, resp in zip(self._ll, scores, strict=True):
                inst.resps.append(resp)
        if self._gen:
            for inst, resp in zip(self._gen, self.lm.generate_until(self._gen, disable_tqdm=True),
                                  strict=True):
                inst.resps.append(resp)
        results, lm_out = {}, {"results": {}, "n-shot": {}, "versions": {}}
        for spec in self.cfg.tasks:
            per_leaf = [score_leaf(leaf) for leaf in self.leaves[spec.name]]
            for leaf, (agg, _) in zip(self.leaves[spec.name], per_leaf):
                lm_out["results"][leaf.name] = agg
                lm_out["n-shot"][leaf.name] = leaf.task.config.num_fewshot or 0
                lm_out["versions"][leaf.name] = leaf.task.VERSION
            results[spec.name] = task_result(spec, self.leaves[spec.name], per_leaf, self.cfg,
                                             self.seed)
        return results, lm_out


def _seed_everything(seed: int) -> None:
    """The seeds simple_evaluate sets before a run (sampled generation depends on them)."""
    import numpy as np
    from lm_eval.utils import set_torch_seed

    random.seed(seed)
    np.random.seed(seed)
    set_torch_seed(seed)


def tokenize_loglikelihood(lm, instances: list) -> list:
    """HFLM's ``(request, context tokens, continuation tokens)`` for each request, as its
    ``loglikelihood`` builds them (an empty context is scored after the prefix token)."""
    out = []
    for inst in instances:
        context, continuation = inst.args
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            ctx_enc, cont_enc = (([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0]
                                 else (cont[:1], cont[1:]))
        else:
            ctx_enc, cont_enc = lm._encode_pair(context, continuation)
        out.append(((context, continuation), ctx_enc, cont_enc))
    return out


# --------------------------------------------------------------------------- building tasks

def build_tasks(task_cfg: DictConfig, seed: int = 0) -> tuple[Any, dict[str, dict[str, Any]]]:
    """(TaskManager, {configured name: {leaf name: lm-eval Task}}).

    Each leaf is built on its own with Python's ``random`` seeded by ``task.docs_seed`` and the
    datasets cache bypassed, so documents whose preparation draws random numbers (GPQA shuffles
    its options) come out the same in every process. ``task.data_dir`` replaces a leaf's hub
    dataset by its local copy; a calibrated task gets lm-eval's raw ``acc`` next to its own
    metrics (the leaderboard's BBH and GPQA list only ``acc_norm``).
    """
    names = [spec.name for spec in task_cfg.tasks]
    with _in_include_path(task_cfg):
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


def _in_include_path(task_cfg: DictConfig):
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
    from lm_eval.tasks._index import Kind

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
    cfg = manager.task_index[leaf].cfg or {}
    out: dict[str, Any] = {}
    if spec.num_fewshot is not None:
        out["num_fewshot"] = spec.num_fewshot
    if task_cfg.max_gen_toks is not None and cfg.get("output_type") == "generate_until":
        out["generation_kwargs"] = {**(cfg.get("generation_kwargs") or {}),
                                    "max_gen_toks": task_cfg.max_gen_toks}
    path = cfg.get("dataset_path")
    if task_cfg.data_dir and path and (Path(task_cfg.data_dir) / path).is_dir():
        out["dataset_path"] = str((Path(task_cfg.data_dir) / path).resolve())
        # datasets keys a local folder's cache on its name and README, not on its files: two
        # copies of one dataset would share it, so a local copy is always read afresh
        out["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}),
                                 "download_mode": "force_redownload",
                                 "verification_mode": "no_checks"}
    metrics = cfg.get("metric_list") or []
    if (spec.calibration and cfg.get("output_type") == "multiple_choice"
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
                   calibrated: bool) -> list[Leaf]:
    """Build every leaf's requests once (``limit`` documents: the first ones, or a seeded sample
    with ``task.subsample_seed``)."""
    leaves = []
    for name, task in tasks.items():
        with _seeded_documents(task_cfg.docs_seed):
            indices = subsample(task_cfg, name, task)
            task.build_all_requests(limit=None if indices else task_cfg.limit, samples=indices)
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


# --------------------------------------------------------------------------- scoring

def score_leaf(leaf: Leaf) -> tuple[dict[str, Any], dict[str, dict[int, Any]]]:
    """lm-eval's aggregated metrics ``{"<metric>,<filter>": value}`` and per-document values
    ``{"<metric>,<filter>": {doc_id: value}}`` for the responses now on the instances."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    task = leaf.task
    task._instances = leaf.instances  # apply_filters works on these
    task.apply_filters()
    raw: dict[tuple[str, str], list] = defaultdict(list)
    per_doc: dict[str, dict[int, Any]] = defaultdict(dict)
    for filter_key in leaf.instances[0].filtered_resps:
        for doc_id, _, doc in leaf.docs:
            reqs = leaf.requests[doc_id]
            values = task.process_results(doc, [r.filtered_resps[filter_key] for r in reqs])
            for metric, value in values.items():
                raw[(metric, filter_key)].append(value)
                per_doc[f"{metric},{filter_key}"][doc_id] = value
    agg, _ = _compute_task_aggregations(task, raw, bootstrap_iters=0)
    return {k: v for k, v in agg.items() if "_stderr," not in k}, per_doc


def _metric_key(agg: dict[str, Any], metric: str) -> str | None:
    return next((k for k in agg if k.split(",")[0] == metric), None)


def task_result(spec, leaves: list[Leaf], per_leaf: list, task_cfg: DictConfig,
                seed: int) -> TaskResult:
    """Pool the leaves of one configured task into its metrics and per-sample records."""
    sizes = [len(leaf.docs) for leaf in leaves]
    pooled: dict[str, float] = {}
    for metric in [spec.metric, *spec.extra_metrics]:
        values = []
        for leaf, (agg, _) in zip(leaves, per_leaf):
            key = _metric_key(agg, metric)
            if key is None:
                reported = sorted({k.split(",")[0] for k in agg})
                raise ConfigError(f"task.tasks[{spec.name}].metric={metric!r}: lm-eval reported "
                                  f"{reported} for {leaf.name}{suggest(metric, reported)}")
            values.append(float(agg[key]))
        pooled[metric] = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    multi = len(leaves) > 1
    if not spec.calibration:
        return _generative_result(spec, leaves, per_leaf, pooled, task_cfg, seed, multi)
    logliks, gold, records = [], [], []
    for leaf in leaves:
        for doc_id, true_id, _ in leaf.docs:
            lls = [float(r.filtered_resps["none"][0]) for r in leaf.requests[doc_id]]
            logliks.append(lls)
            gold.append(leaf.gold[doc_id])
            records.append({"doc_id": true_id, **({"task": leaf.name} if multi else {}),
                            "logliks": lls, "gold": leaf.gold[doc_id]})
    cal = calibration.calibration_metrics(logliks, gold, task_cfg.ece_bins, task_cfg.bootstrap,
                                          seed, task_cfg.ece_binning)
    cal["acc_lm_eval"] = pooled.pop(spec.metric)
    cal.update(pooled)
    conf, correct = calibration.top_label(logliks, gold)
    for rec, c, k in zip(records, conf, correct):
        rec["confidence"], rec["correct"] = float(c), bool(k)
    rel = calibration.reliability(conf, correct, task_cfg.ece_bins, task_cfg.ece_binning)
    return TaskResult(cal, records, {k: [float(x) for x in v] for k, v in rel.items()})


def _generative_result(spec, leaves, per_leaf, pooled, task_cfg, seed, multi) -> TaskResult:
    metrics = {"acc": pooled.pop(spec.metric), **pooled}
    records, scores = [], []
    for leaf, (agg, per_doc) in zip(leaves, per_leaf):
        key = _metric_key(agg, spec.metric)
        filter_key = key.split(",", 1)[1]
        for doc_id, true_id, _ in leaf.docs:
            score = float(per_doc[key][doc_id])
            scores.append(score)
            response = leaf.requests[doc_id][0].filtered_resps[filter_key]
            records.append({"doc_id": true_id, **({"task": leaf.name} if multi else {}),
                            "score": score, "response": response})
    metrics["n"] = float(len(scores))
    if task_cfg.bootstrap > 0:
        metrics["acc_ci_low"], metrics["acc_ci_high"] = calibration.bootstrap_mean_ci(
            scores, task_cfg.bootstrap, seed=seed)
    return TaskResult(metrics, records)



def stock_evaluate(model, tokenizer, task_cfg: DictConfig, seed: int = 0,
                   manager=None) -> dict[str, dict]:
    """lm-eval's stock path, for comparison (tests, benchmarks): a fresh HFLM and one
    ``simple_evaluate`` that loads the same task specs itself, with the per-sample outputs
    calibration needs (``log_samples``); ``{leaf: {"<metric>,<filter>": value}}``. (Documents
    prepared with `random` differ: simple_evaluate does not freeze them.)"""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task_cfg.batch_size,
              softmax_dtype="float32")
    with _in_include_path(task_cfg):
        manager = manager or task_manager(task_cfg.include_path,
                                          [spec.name for spec in task_cfg.tasks])
        specs = [spec_dict for _, spec_dict in task_specs(manager, task_cfg)]
        samples = None
        if task_cfg.limit is not None and task_cfg.subsample_seed is not None:
            samples = {name: subsample(task_cfg, name, task)
                       for leaf_tasks in build_tasks(task_cfg, seed)[1].values()
                       for name, task in leaf_tasks.items()}
        out = simple_evaluate(
            model=lm, tasks=specs, task_manager=manager,
            limit=None if samples else task_cfg.limit, samples=samples,
            log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING")
    return {name: {k: v for k, v in res.items() if "," in k and "_stderr," not in k}
            for name, res in out["results"].items() if not name.startswith(GROUP_PREFIX)}
