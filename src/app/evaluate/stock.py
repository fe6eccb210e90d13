"""lm-eval's stock path, for comparison (tests, benchmarks)."""

from __future__ import annotations

from omegaconf import DictConfig

from app.evaluate.tasks import (
    GROUP_PREFIX,
    build_tasks,
    in_include_path,
    subsample,
    task_manager,
    task_specs,
)


def stock_evaluate(model, tokenizer, task_cfg: DictConfig, seed: int = 0,
                   manager=None) -> dict[str, dict]:
    """lm-eval's stock path, for comparison (tests, benchmarks): a fresh HFLM and one
    ``simple_evaluate`` that loads the same task specs itself, with the per-sample outputs
    calibration needs (``log_samples``) and the task's chat-template settings;
    ``{leaf: {"<metric>,<filter>": value}}``. (Documents prepared with `random` differ:
    simple_evaluate does not freeze them.)"""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task_cfg.batch_size,
              softmax_dtype="float32")
    with in_include_path(task_cfg):
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
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING",
            apply_chat_template=bool(task_cfg.chat_template),
            fewshot_as_multiturn=bool(task_cfg.fewshot_as_multiturn))
    return {name: {k: v for k, v in res.items() if "," in k and "_stderr," not in k}
            for name, res in out["results"].items() if not name.startswith(GROUP_PREFIX)}
