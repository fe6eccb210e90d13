"""The metric registry: every metric a job can return, declared once.

Each entry names a metric (``{task}`` stands for a configured task), says what it means, which
way is better, what produces it and when. The search's checks (``job_metric_names``), the
one-line job summary, the sweep summary, the configuration reference's metric table (a test
checks it equals ``markdown_table()``) and the metrics version in every fingerprint derive
from here; a test
runs real jobs and checks that what they return is what ``predict`` says.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable

from app import calibration
from app.judge.metrics import TYPES as DEGENERATION_TYPES
from app.judge.schema import SCHEMAS as JUDGES

Spec = object  # a task.tasks entry (TaskSpec) or None for job-level metrics


def _always(job, spec) -> bool:
    return True


def _bootstrap(job, spec) -> bool:
    return job.task.bootstrap > 0


def _probed(job, spec) -> bool:
    return job.probe.name != "none"


def _judged(job, spec) -> bool:
    return job.judge.name != "none"


def _llm(job, spec) -> bool:
    return _judged(job, spec) and JUDGES[job.judge.name].llm


def _rated(job, spec) -> bool:  # degeneration rates over every judged response
    return _judged(job, spec) and not (_llm(job, spec) and job.judge.reward_model)


def _rewarded(job, spec) -> bool:
    return _judged(job, spec) and bool(job.judge.reward_model)


def _split(job, spec) -> bool:
    return bool(job.task.selection.share)


def _split_bootstrap(job, spec) -> bool:
    return _split(job, spec) and _bootstrap(job, spec)


def _split_calibrated(job, spec) -> bool:
    return _split(job, spec) and _any_calibrated(job, spec)


def _pool(job, spec) -> bool:
    return job.models.pool


def _vllm(job, spec) -> bool:
    return job.engine.name == "vllm"


def _any_calibrated(job, spec) -> bool:
    return any(s.calibration for s in job.task.tasks)


@dataclass(frozen=True)
class Metric:
    name: str  # "{task}/ece", "mean/acc", "judge/degeneration_rate"
    meaning: str
    better: str  # "higher", "lower" or "" (a count, a time or a bound)
    producer: str  # "calibrated task", "generative task", "every task", "job", "judge", "probe"
    when: Callable = _always  # (job, task spec) -> whether the job returns it
    optional: str = ""  # why a job may leave it out ("" = always there when ``when`` holds)
    summary: bool = False  # shown in the one-line job summary

    def names(self, job) -> list[str]:
        """The concrete names a job (an ``app.config.Job``) returns for this entry."""
        if "{task}" not in self.name:
            return [self.name] if self.when(job, None) else []
        kinds = {"calibrated task": [True], "generative task": [False], "every task": [True, False]}
        return [self.name.format(task=s.name) for s in job.task.tasks
                if s.calibration in kinds[self.producer] and self.when(job, s)]


CI = "95% percentile-bootstrap interval (`task.bootstrap` resamples, seeded)"
JUDGE_MISSING = "left out when the judge fails (the run is tagged `judge_missing`)"
REGISTRY: tuple[Metric, ...] = (
    Metric("{task}/acc", "the task's accuracy metric (`task.tasks[].metric`: raw `acc` for "
           "multiple choice, `exact_match` for generation)", "higher", "every task",
           summary=True),
    Metric("{task}/n", "documents scored", "", "every task"),
    Metric("{task}/ece", "expected calibration error (`task.ece_bins` bins, `task.ece_binning`)",
           "lower", "calibrated task", summary=True),
    Metric("{task}/mce", "maximum calibration error over the bins", "lower", "calibrated task"),
    Metric("{task}/brier", "multiclass Brier score", "lower", "calibrated task"),
    Metric("{task}/brier_top", "top-label Brier score (squared gap of the predicted choice)",
           "lower", "calibrated task"),
    Metric("{task}/nll", "negative log-likelihood of the gold choice", "lower",
           "calibrated task"),
    Metric("{task}/mean_conf", "mean top-label confidence", "", "calibrated task"),
    Metric("{task}/acc_lm_eval", "lm-eval's own accuracy, next to ours (a test checks they are "
           "equal)", "higher", "calibrated task"),
    Metric("{task}/acc_ci_low", f"accuracy: low end of its {CI}", "", "every task",
           _bootstrap),
    Metric("{task}/acc_ci_high", "accuracy: high end of the interval", "", "every task",
           _bootstrap),
    Metric("{task}/ece_ci_low", "ECE: low end of its 95% interval", "", "calibrated task",
           _bootstrap),
    Metric("{task}/ece_ci_high", "ECE: high end of the interval", "", "calibrated task",
           _bootstrap),
    Metric("{task}/<part>/acc", "accuracy over one part of the task's documents: a group's "
           "subtask (BBH's 24), a category (MMLU-Pro's 14)", "higher", "every task",
           optional="only for a task whose documents fall in parts"),
    Metric("{task}/<extra>", "each of `task.tasks[].extra_metrics`, as lm-eval reports it",
           "", "every task"),
    Metric("selection/{task}/acc", "accuracy over the task's selection documents, which choose "
           "λ*: its own validation split where it has one, else the share "
           "`task.selection.share` of its documents", "higher", "every task", _split),
    Metric("selection/{task}/ece", "ECE over the selection documents", "lower",
           "calibrated task", _split),
    Metric("selection/{task}/acc_ci_low", "its accuracy's 95% bootstrap interval, low end (the "
           "λ* search's noise)", "", "every task", _split_bootstrap),
    Metric("selection/{task}/acc_ci_high", "high end", "", "every task", _split_bootstrap),
    Metric("report/{task}/acc", "accuracy over the other documents: the number to quote for a "
           "λ chosen on the selection set", "higher", "every task", _split),
    Metric("report/{task}/ece", "ECE over the report documents", "lower", "calibrated task",
           _split),
    Metric("probe/<task>/acc", "test accuracy of the linear probe on a probing task's hidden "
           "states (`probe.layers`' deepest, `probe.representation`)", "higher", "probe",
           _probed),
    Metric("probe/<task>/f1", "its macro-F1", "higher", "probe", _probed),
    Metric("probe/<task>/control_acc", "the same probe on the control task (a random label per "
           "word type)", "", "probe", _probed),
    Metric("probe/<task>/selectivity", "probe accuracy − control accuracy", "higher", "probe",
           _probed),
    Metric("probe/<phenomenon>/acc", "mean probe accuracy over the phenomenon's tasks", "higher",
           "probe", _probed),
    Metric("time/probe_s", "wall time of extracting hidden states and fitting the probes", "",
           "probe", _probed),
    Metric("mean/acc", "unweighted mean of `<task>/acc` over the tasks", "higher", "job"),
    Metric("mean/ece", "unweighted mean of `<task>/ece` over the calibrated tasks", "lower",
           "job", _any_calibrated),
    *(Metric(f"{split}/mean/{m}", f"`mean/{m}` over the {split} documents", better, "job",
             when) for split in ("selection", "report")
      for m, better, when in (("acc", "higher", _split),
                              ("ece", "lower", _split_calibrated))),
    Metric("mt/<task>/normalized", "an expert pool's domain task: its accuracy over its "
           "expert's (`model.experts[].tasks`)", "higher", "job", _pool),
    Metric("mt/normalized", "mean of `mt/<task>/normalized`: MergeBench's normalised multi-task "
           "performance", "higher", "job", _pool, summary=True),
    Metric("forget/<task>/normalized", "a forgetting task (`task.tasks[].forgetting`): its "
           "accuracy over the base's", "higher", "job", _pool),
    Metric("forget/normalized", "mean of `forget/<task>/normalized`: the base's knowledge kept",
           "higher", "job", _pool, summary=True),
    Metric("selection/mt/normalized", "`mt/normalized` over the selection documents (where λ "
           "and a method's knobs are chosen)", "higher", "job", _pool,
           optional="only where the domain tasks have selection documents"),
    Metric("selection/forget/normalized", "`forget/normalized` over the selection documents",
           "higher", "job", _pool, optional="only where the forgetting tasks have selection "
           "documents"),
    Metric("time/stats_s", "an expert pool's data statistics (Fisher, Grams, trained masks), "
           "gathered on a pool's first merge and kept; 0 after that and for dataless methods",
           "", "job", _pool, optional="not for a job that reuses a parent's reference"),
    Metric("time/merge_s", "wall time of the merge (without `time/stats_s`)", "", "job",
           optional="not for a job that reuses a parent's reference"),
    Metric("time/eval_s", "wall time of the evaluation", "", "job",
           optional="not for a job that reuses a parent's reference"),
    Metric("time/total_s", "wall time of the whole job", "", "job"),
    Metric("time/engine_update_s", "writing the merge into the vLLM engine and resetting its "
           "prefix cache", "", "job", _vllm,
           optional="not for a job that reuses a parent's reference"),
    Metric("eval/tokens_forwarded", "tokens the log-likelihood scoring ran through the model "
           "(padding included)", "lower", "job",
           optional="not for a job that reuses a parent's reference"),
    Metric("eval/trie_tokens", "distinct prefixes of the scored inputs: the floor of "
           "`eval/tokens_forwarded`", "", "job",
           optional="not for a job that reuses a parent's reference"),
    Metric("eval/forwards", "forward passes the log-likelihood scoring took (fewer, larger "
           "passes fill a GPU: `task.pack_tokens`)", "lower", "job",
           optional="not for a job that reuses a parent's reference, nor on engine=vllm"),
    Metric("time/startup_s", "interpreter start and imports before the process's first job",
           "", "job", optional="only the first evaluated job of a process"),
    Metric("time/load_s", "loading the working model and building the tasks", "", "job",
           optional="only the first evaluated job of a process"),
    Metric("time/judge_s", "wall time of generating and judging", "", "judge", _judged,
           optional="left out when generation fails"),
    Metric("judge/distinct_1", "distinct words / all words in a prompt's k samples (mean)",
           "higher", "judge", _judged, optional="left out when generation fails"),
    Metric("judge/distinct_2", "the same for word bigrams", "higher", "judge", _judged,
           optional="left out when generation fails"),
    Metric("judge/distinct_responses", "distinct responses among a prompt's k samples (1..k, "
           "mean)", "higher", "judge", _judged, optional="left out when generation fails",
           summary=True),
    Metric("judge/mean_length", "generated tokens per response", "", "judge", _judged,
           optional="left out when generation fails"),
    Metric("judge/n_responses", "responses generated (prompts × k)", "", "judge", _judged,
           optional="left out when generation fails"),
    Metric("judge/degeneration_rate", "share of judged responses with any degeneration",
           "lower", "judge", _rated, optional=JUDGE_MISSING, summary=True),
    *(Metric(f"judge/{t}_rate", f"share of judged responses with {t.replace('_', '-')}",
             "lower", "judge", _rated, optional=JUDGE_MISSING) for t in DEGENERATION_TYPES),
    Metric("judge/unparsed_rate", "share of LLM judge replies naming no verdict (left out of "
           "the rates)", "lower", "judge", _llm, optional=JUDGE_MISSING),
    Metric("judge/mean_reward", "the reward model's mean score (`judge.reward_model`)",
           "higher", "judge", _rewarded, optional=JUDGE_MISSING),
    Metric("judge/lowest_k/degeneration_rate", "degeneration among the `judge.lowest_k` "
           "lowest-rewarded responses", "lower", "judge", _rewarded, optional=JUDGE_MISSING),
    *(Metric(f"judge/lowest_k/{t}_rate", f"{t.replace('_', '-')} among the lowest-rewarded",
             "lower", "judge", _rewarded, optional=JUDGE_MISSING) for t in DEGENERATION_TYPES),
)


@dataclass(frozen=True)
class Prediction:
    required: frozenset[str]  # every such job returns these
    optional: frozenset[str]  # and may return these

    tasks: frozenset[str] = frozenset()  # the configured tasks, whose parts may be returned

    @property
    def all(self) -> list[str]:
        return sorted(self.required | self.optional)

    def covers(self, name: str) -> bool:
        """Whether a job may return ``name``: predicted, or a task's part accuracy."""
        task, _, rest = name.partition("/")
        return name in self.required or name in self.optional or (
            task in self.tasks and rest.endswith("/acc") and rest.count("/") == 1)


def predict(job) -> Prediction:
    """The metric names a job (an ``app.config.Job``) returns."""
    required, optional = set(), set()
    for metric in REGISTRY:
        if metric.name == "{task}/<extra>":
            names = [f"{s.name}/{m}" for s in job.task.tasks for m in s.extra_metrics]
        elif metric.name.startswith("probe/<") and _probed(job, None):
            from app.probe.data import select

            chosen = select(job.probe)
            kind, values = (("<phenomenon>", {p for _, p, _ in chosen})
                            if "<phenomenon>" in metric.name
                            else ("<task>", [t for t, _, _ in chosen]))
            names = [metric.name.replace(kind, v) for v in values]
        elif metric.name in ("mt/<task>/normalized", "forget/<task>/normalized"):
            domain, forgetting = job.models.normalized_tasks(
                [s.name for s in job.task.tasks if s.forgetting])
            tasks = domain if metric.name[0] == "m" else forgetting
            names = [metric.name.replace("<task>", t) for t in tasks]
        elif metric.name.startswith("probe/<") or metric.name == "{task}/<part>/acc":
            names = []  # parts are known once lm-eval has loaded the documents: ``covers``
        else:
            names = metric.names(job)
        (optional if metric.optional else required).update(names)
    return Prediction(frozenset(required), frozenset(optional - required),
                      frozenset(s.name for s in job.task.tasks))


def job_metric_names(job) -> list[str]:
    """Every metric a job may return (what a search may name)."""
    return predict(job).all


def summary_line(label: str, lam: float, metrics: dict[str, float]) -> str:
    """``<method> λ=…  <task>/acc=…  <task>/ece=…  (…s)``: the registry's summary metrics."""
    shown = [m for m in REGISTRY if m.summary]
    parts = [f"{label} λ={lam:g}"]
    for key in sorted(metrics):
        task, _, rest = key.partition("/")
        if any(m.name == key or (m.name.startswith("{task}/") and m.name[7:] == rest
                                 and task not in ("mean", "time", "judge")) for m in shown):
            parts.append(f"{key}={metrics[key]:.4f}")
    if "time/total_s" in metrics:
        parts.append(f"({metrics['time/total_s']:.1f}s)")
    return "  ".join(parts)


def headline(metrics: dict[str, float]) -> tuple[float, float]:
    """(accuracy, ECE) by which λ values are ranked: ``mean/acc`` and ``mean/ece`` (ECE 0 where
    no task is calibrated)."""
    return metrics["mean/acc"], metrics.get("mean/ece", 0.0)


COSTS = ("time/", "eval/")  # what a result cost, not what it is


def without_costs(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a result consists of: all but the ``time/*`` and ``eval/*`` ones."""
    return {k: v for k, v in metrics.items() if not k.startswith(COSTS)}


def markdown_table() -> str:
    """The metric table of the configuration reference (docs/reference/configuration.md)."""
    rows = ["| metric | meaning | better | when |", "|---|---|---|---|"]
    for m in REGISTRY:
        when = {"calibrated task": "each calibrated task", "generative task":
                "each generative task", "every task": "each task", "job": "every job",
                "judge": "with a judge", "probe": "with a probe set (`probe` ≠ none)"}[m.producer]
        if m.when is _bootstrap:
            when += ", `task.bootstrap` > 0"
        elif m.when not in (_always, _judged, _probed):
            when += {"_any_calibrated": ", a calibrated task", "_llm": " (`hf`, `openai`)",
                     "_rated": " (not an LLM judge with a reward model)",
                     "_rewarded": " and a reward model",
                     "_vllm": ", `engine=vllm`",
                     "_pool": " of an expert pool (`model.experts`)",
                     "_split": ", `task.selection.share` > 0",
                     "_split_calibrated": ", a calibrated task, `task.selection.share` > 0",
                     "_split_bootstrap": ", `task.selection.share` > 0, `task.bootstrap` > 0",
                     }[m.when.__name__]
        if m.optional:
            when += f"; {m.optional}"
        rows.append(f"| `{m.name.replace('{task}', '<task>')}` | {m.meaning} | {m.better} | "
                    f"{when} |")
    return "\n".join(rows) + "\n"


def _definitions() -> str:
    """The registry's names and directions and the calibration maths without comments or
    docstrings: what the metrics' values depend on."""
    tree = ast.parse(inspect.getsource(calibration))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    names = [(m.name, m.better, m.producer) for m in REGISTRY]
    return repr(names) + ast.dump(tree)


METRICS_VERSION = hashlib.sha256(_definitions().encode()).hexdigest()[:12]
