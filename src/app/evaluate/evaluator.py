"""The evaluator: lm-eval's requests built once per process, re-scored for every merge.

Building an lm-eval evaluation (rendering prompts and few-shot contexts, tokenising every
context/continuation pair) costs more than scoring it on small models, and it does not depend
on the weights. So the Evaluator builds lm-eval's own request ``Instance``s once and has its
engine tokenise them once; for each merge it only clears the responses, has the engine run
the model, applies the task's filters and scores each document with the task's
``process_results`` and aggregation: lm-eval's metrics, computed by lm-eval. A test checks the
result equals stock ``simple_evaluate`` on a fresh ``HFLM``. With ``task.chat_template`` the
requests are built as lm-eval's ``evaluate`` builds them for ``apply_chat_template`` (and
``fewshot_as_multiturn``), formatted by the engine's ``lm.apply_chat_template``. lm-eval's
response cache is never used (it is keyed on request text, not on weights).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from omegaconf import DictConfig

from app.errors import ConfigError
from app.evaluate.engine import Engine
from app.evaluate.scoring import TaskResult, score_leaf, selection_split, task_result
from app.evaluate.tasks import build_tasks, chat_arguments, prepare_leaves, selection_leaves


class Evaluator:
    """Scores the engine's (in-place updated) model on the configured lm-eval tasks."""

    def __init__(self, engine: Engine, task_cfg: DictConfig, seed: int = 0):
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        self.engine, self.cfg, self.seed = engine, task_cfg, seed
        chat = chat_arguments(getattr(engine, "lm", None), task_cfg)  # before any task work
        self.manager, self.tasks = build_tasks(task_cfg, seed)
        self.leaves = {spec.name: prepare_leaves(self.tasks[spec.name], task_cfg, seed,
                                                 spec.calibration, chat)
                       for spec in task_cfg.tasks}
        # a task with its own validation split selects λ* there (task.selection)
        self.selection = {spec.name: leaves for spec in task_cfg.tasks if (
            leaves := selection_leaves(self.tasks[spec.name], task_cfg, seed, spec.calibration,
                                       chat))}
        check_splittable(task_cfg, self.leaves, self.selection)
        instances = [i for ls in [*self.leaves.values(), *self.selection.values()]
                     for leaf in ls for i in leaf.instances]
        other = {i.request_type for i in instances} - {"loglikelihood", "generate_until"}
        if other:
            raise ConfigError(f"task.tasks: request types {sorted(other)} are not supported "
                              f"(multiple choice and generation are)")
        self._ll = [i for i in instances if i.request_type == "loglikelihood"]
        self._gen = [i for i in instances if i.request_type == "generate_until"]
        engine.prepare(self._ll)
        self._prepared = engine.requests

    def evaluate(self) -> tuple[dict[str, TaskResult], dict[str, Any]]:
        """(per-task results, lm-eval's per-leaf aggregated metrics) for the current weights."""
        _seed_everything(self.seed)
        for inst in self._ll + self._gen:
            inst.resps, inst.filtered_resps = [], {}
        if self._ll:
            if self.engine.requests is not self._prepared:  # another evaluator's since
                self.engine.prepare(self._ll)
                self._prepared = self.engine.requests
            for inst, resp in zip(self._ll, self.engine.loglikelihood(), strict=True):
                inst.resps.append(resp)
        if self._gen:
            for inst, resp in zip(self._gen, self.engine.generate_until(self._gen), strict=True):
                inst.resps.append(resp)
        results, lm_out = {}, {"results": {}, "n-shot": {}, "versions": {}}
        for spec in self.cfg.tasks:
            per_leaf = [score_leaf(leaf) for leaf in self.leaves[spec.name]]
            for leaf, (agg, _) in zip(self.leaves[spec.name], per_leaf):
                lm_out["results"][leaf.name] = agg
                lm_out["n-shot"][leaf.name] = leaf.task.config.num_fewshot or 0
                lm_out["versions"][leaf.name] = leaf.task.VERSION
            chosen = self.selection.get(spec.name)
            results[spec.name] = task_result(
                spec, self.leaves[spec.name], per_leaf, self.cfg, self.seed,
                None if chosen is None else (chosen, [score_leaf(leaf) for leaf in chosen]))
        return results, lm_out

    def load_weights(self, model, mk: dict | None = None, merger=None) -> float | None:
        """Make the engine run ``model``'s weights (the merge ``mk`` that ``merger`` just wrote
        into it): seconds, or None where the engine runs ``model`` itself (``engine=hf``)."""
        return self.engine.load_weights(model, mk, merger)

    @property
    def sampler(self):
        """The engine's sampler for the judge (``engine=vllm``), or None (transformers')."""
        return getattr(self.engine, "sample", None)

    @property
    def scoring(self) -> str:
        """How the engine scores log-likelihoods (``task.scoring`` with ``auto`` resolved)."""
        return getattr(self.engine, "scoring", "")

    def costs(self) -> dict[str, float]:
        """What the last evaluation's scoring forwarded (``eval/tokens_forwarded``) and the
        floor for these requests (``eval/trie_tokens``)."""
        return {k: float(v) for k, v in getattr(self.engine, "costs", {}).items()}


def _seed_everything(seed: int) -> None:
    """The seeds simple_evaluate sets before a run (sampled generation depends on them)."""
    import numpy as np
    from lm_eval.utils import set_torch_seed

    random.seed(seed)
    np.random.seed(seed)
    set_torch_seed(seed)


def check_splittable(task_cfg, leaves: dict, selection: dict) -> None:
    """With a selection/report split of a task's own documents, both sets of each task hold a
    document (else the other set's metrics would be missing): the split is known before any
    merge, from the documents' keys alone."""
    share = task_cfg.selection.share
    for name, task_leaves in leaves.items():
        if not share or name in selection:
            continue
        chosen = selection_split(name, task_leaves, share, task_cfg.selection.seed)
        if all(chosen) or not any(chosen):
            raise ConfigError(f"task {name}: its {len(chosen)} document(s) all fall in one set "
                              f"of the selection/report split (task.selection.share={share:g}); "
                              f"give it more documents (task.limit) or set "
                              f"task.selection.share=0")
