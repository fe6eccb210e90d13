"""The `lambda_star` Hydra sweeper: an Optuna study over the job's returned metrics.

Jobs return ``{metric: value}``; the sweeper tells Optuna the objective and records each
constraint (``"toy_mc/ece <= 0.15"``) with ``Trial.set_constraint``, so the GP and TPE samplers
model feasibility and ``study.best_trial`` is the best feasible trial. A failed job is a FAIL
trial and the study goes on (up to ``max_failure_rate``). The study lives in a journal file
``<storage_dir>/<study_name>.journal`` (default ``<hydra.sweep.dir>/optuna/lambda_star.journal``)
or in any RDB URL given as ``storage``: the same command resumes it, and several processes on
the same storage share it. The plugin is standalone: it needs Hydra and Optuna, nothing else.

    python my_app.py -m hydra/sweeper=lambda_star hydra.sweeper.objective=score \\
        'hydra.sweeper.constraints=["cost <= 0.5"]' hydra.sweeper.params.x='interval(0,1)'

The hook: after the study's loop, ``hydra.sweeper.callback=my_app.module.function`` is called
as ``function(study, sweeper)`` and what it returns is what ``sweep()`` returns. It may read
``sweeper.objective``, ``sweeper.direction``, ``sweeper.constraints`` (parsed
``(metric, op, bound)`` tuples) and ``sweeper.config`` (the whole Hydra config). An app that
wants the default summary and its own logging calls ``default_summary(study, sweeper)`` inside
its callback. Without a callback, ``default_summary`` runs: it prints one line, writes
``<hydra.sweep.dir>/search_summary.yaml`` and returns the summary dict.

``n_trials`` is a cap: with ``stop_patience`` > 0 the study stops earlier, once that many
trials in a row (beyond the parents and the start-up trials) have not beaten the best feasible
value by more than its noise: half the width of the best trial's 95% interval
(``<objective>_ci_low`` / ``_ci_high`` where the job returns them), or ``stop_min_delta``.
``stop_reason`` says why a study ended; the summary prints it.

Every bad setting raises ``SweeperConfigError``, one line naming the ``hydra.sweeper.<key>``.
"""

import itertools
import logging
import math
import numbers
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

__all__ = ["LambdaStarSweeper", "LambdaStarSweeperConf", "SweeperConfigError", "best_trial",
           "check_settings", "check_stop", "constraint_value", "default_summary",
           "parse_constraint", "stop_reason", "trial_overrides", "violation"]

LOG = logging.getLogger(__name__)
CONSTRAINT = re.compile(r"^\s*([\w./-]+)\s*(<=|>=)\s*(\S+)\s*$")
SAMPLERS = ("gp", "tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
# The numeric settings: (key, integer?, lowest, highest or None, what a value means).
RANGES = (("n_trials", True, 1, None, "the most trials besides the parents"),
          ("grid_points", True, 2, None, "points per interval, both ends included"),
          ("n_startup", True, 0, None, "trials before the GP/TPE model is used"),
          ("n_jobs", True, 1, None, "trials handed to the launcher at once"),
          ("stop_patience", True, 0, None, "0: run all n_trials"),
          ("stop_min_delta", False, 0, None, "the noise where the job returns no interval"),
          ("max_failure_rate", False, 0, 1, "the share of trials that may fail"))
SUMMARY_FILE = "search_summary.yaml"


class SweeperConfigError(ValueError):
    """A bad `hydra.sweeper.*` setting; the message is one line naming the key."""


@dataclass
class LambdaStarSweeperConf:
    _target_: str = "hydra_plugins.lambda_star_sweeper.lambda_star_sweeper.LambdaStarSweeper"
    objective: str | None = None  # a metric the job returns (required)
    direction: str = "maximize"  # maximize | minimize
    constraints: list[str] = field(default_factory=list)  # e.g. "toy_mc/ece <= 0.15"
    params: dict[str, str] = field(default_factory=dict)  # e.g. lambda: interval(0, 1)
    sampler: str = "gp"  # gp | tpe | random | grid
    grid_points: int = 11  # grid sampler: points per interval
    n_trials: int = 8  # at most this many evaluations, not counting the parents (λ at the ends)
    stop_patience: int = 3  # stop after this many trials with no gain beyond the noise (0: never)
    stop_min_delta: float = 0.0  # the noise where the job returns no interval for the objective
    n_startup: int = 3  # GP/TPE: trials before the model is used (the parents included)
    n_jobs: int = 1  # trials handed to the launcher at once
    seed_with_parents: bool = True  # first try λ=lo and λ=hi (PT/IT: reused references)
    storage: str | None = None  # an RDB URL; default: journal <storage_dir>/<study>.journal
    storage_dir: str | None = None  # folder of the journal; default <hydra.sweep.dir>/optuna
    study_name: str | None = None  # default: lambda_star
    callback: str | None = None  # dotted path of callback(study, sweeper); default summary
    progress: str | None = None  # dotted path of progress(done, total, note, config); default none
    resume: bool = True
    seed: int = 0
    max_failure_rate: float = 0.5


ConfigStore.instance().store(group="hydra/sweeper", name="lambda_star",
                             node=LambdaStarSweeperConf, provider="lambda_star_sweeper")


def parse_constraint(text: str) -> tuple[str, str, float]:
    """``"m <= 0.15"`` → ``("m", "<=", 0.15)``; anything else (a bound that is not a finite
    number included) is a SweeperConfigError."""
    m = CONSTRAINT.match(text)
    try:
        bound = float(m.group(3)) if m else math.nan
    except ValueError:
        bound = math.nan
    if not math.isfinite(bound):
        raise SweeperConfigError(f"hydra.sweeper.constraints: {text!r} is not "
                                 f"'<metric> <= <number>' or '<metric> >= <number>'")
    return m.group(1), m.group(2), bound


def constraint_value(metrics: dict, metric: str, op: str, bound: float) -> float:
    """≤ 0 when satisfied (Optuna's convention)."""
    return metrics[metric] - bound if op == "<=" else bound - metrics[metric]


def violation(trial) -> float:
    """Sum of the trial's positive constraint values: 0 when feasible."""
    return sum(max(0.0, c) for c in trial.constraints.values())


def best_trial(trials: list, direction: str) -> tuple[Any, str]:
    """(best completed trial, verdict): best feasible one, else the least violating one."""
    feasible = [t for t in trials if violation(t) <= 0]
    if feasible:
        sign = 1 if direction == "maximize" else -1
        # ties (accuracy is discrete): the most margin on the constraints, then the first trial
        best = max(feasible, key=lambda t: (sign * t.value, -sum(t.constraints.values()),
                                            -t.number))
        return best, "feasible"
    if trials:
        return min(trials, key=lambda t: (violation(t), t.number)), \
            "NO feasible trial; least violating"
    raise RuntimeError("no trial completed")


def check_settings(settings) -> None:
    """The sweeper's settings (``hydra.sweeper``, a mapping; absent keys are skipped): the
    direction and sampler among the valid ones, each of ``RANGES`` a finite number in its
    range (a SweeperConfigError otherwise). Checked before any job."""
    for key, valid in (("direction", DIRECTIONS), ("sampler", SAMPLERS)):
        if key in settings and settings[key] not in valid:
            raise SweeperConfigError(f"hydra.sweeper.{key}={settings[key]!r}; valid: "
                                     f"{', '.join(valid)}")
    for key, integer, low, high, meaning in RANGES:
        if key not in settings:
            continue
        value = settings[key]
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                or value < low or (high is not None and value > high):
            span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
            what = "an integer" if integer else "a finite number"
            raise SweeperConfigError(f"hydra.sweeper.{key}={value!r} must be {span} "
                                     f"({what}; {meaning})")


def check_stop(patience, min_delta) -> None:
    """The stopping rule's settings (``check_settings`` of those two)."""
    check_settings({"stop_patience": patience, "stop_min_delta": min_delta})


def stop_reason(history: list[tuple[float, bool, float]], patience: int, warmup: int,
                maximize: bool = True) -> str | None:
    """Why the search may stop now, or None. ``history``: (value, feasible, noise) of each
    finished trial in order, the seeded parents and start-up trials first (``warmup`` of them).
    A trial counts as a gain when it is feasible and beats the best feasible value before it by
    more than that best's noise; after ``patience`` trials past the warm-up without one, stop."""
    if patience <= 0:
        return None
    sign = 1 if maximize else -1
    best, noise, since = None, 0.0, 0
    for i, (value, feasible, delta) in enumerate(history):
        gain = feasible and (best is None or sign * (value - best) > noise)
        if feasible and (best is None or sign * (value - best) > 0):
            best, noise = value, delta
        since = 0 if gain or i < warmup else since + 1
    if since >= patience:
        return (f"stopped after {len(history)} trials: none of the last {since} beat the best "
                f"before it by more than the noise (±{noise:.4f}); best {best:.4f}"
                if best is not None else
                f"stopped after {len(history)} trials: the last {since} found no feasible λ")
    return None


def default_summary(study, sweeper: "LambdaStarSweeper") -> dict:
    """Print the best trial in one line, write <hydra.sweep.dir>/search_summary.yaml, return it."""
    import yaml
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best, verdict = best_trial(done, sweeper.direction)
    infeasible = sum(violation(t) > 0 for t in done)
    failed = sum(t.state == TrialState.FAIL for t in study.trials)
    summary = {
        "study": study.study_name, "objective": sweeper.objective,
        "direction": sweeper.direction,
        "constraints": [f"{m} {op} {b:g}" for m, op, b in sweeper.constraints],
        "verdict": verdict, "best_params": best.params, "best_value": best.value,
        "best_metrics": best.user_attrs.get("metrics", {}), "trials": len(study.trials),
        "completed": len(done), "infeasible": infeasible, "failed": failed,
        "stopped": sweeper.stopped or "ran every trial (n_trials)",
    }
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best.params.items())
    print(f"λ* search ({study.study_name}): {verdict} best {shown}: {sweeper.objective}="
          f"{best.value:.4f} | {len(done)} completed, {infeasible} infeasible, {failed} failed; "
          f"{summary['stopped']}", flush=True)
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SUMMARY_FILE).write_text(yaml.safe_dump(summary, sort_keys=False,
                                                         allow_unicode=True))
    return summary


class LambdaStarSweeper(Sweeper):
    """Ask Optuna for points, launch them as Hydra jobs, tell it their metrics; then summarise."""

    def __init__(self, objective: str | None, direction: str, constraints: list[str],
                 params: dict[str, str], sampler: str, grid_points: int, n_trials: int,
                 n_startup: int, n_jobs: int, seed_with_parents: bool, storage: str | None,
                 storage_dir: str | None, study_name: str | None,
                 callback: str | None, resume: bool, seed: int,
                 max_failure_rate: float, stop_patience: int = 3,
                 stop_min_delta: float = 0.0, progress: str | None = None) -> None:
        # Checked in setup(): Hydra's instantiate would wrap a SweeperConfigError raised here.
        self.objective, self.direction = objective, direction
        self.constraint_texts = list(constraints or [])
        self.constraints: list[tuple[str, str, float]] = []
        self.params = dict(params or {})
        self.sampler_name, self.grid_points = sampler, grid_points
        self.n_trials, self.n_jobs, self.n_startup = n_trials, n_jobs, n_startup
        self.seed_with_parents = seed_with_parents
        self.storage, self.storage_dir, self.resume = storage, storage_dir, resume
        self.study_name = study_name or "lambda_star"
        self.callback_path, self.progress_path = callback, progress
        self.seed, self.max_failure_rate = seed, max_failure_rate
        self.stop_patience, self.stop_min_delta = stop_patience, stop_min_delta
        self.stopped: str | None = None  # why the study ended before n_trials, if it did

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        if not self.objective:
            raise SweeperConfigError("hydra.sweeper.objective is not set: give a metric the job "
                                     "returns, e.g. hydra.sweeper.objective=toy_mc/acc")
        self.constraints = [parse_constraint(c) for c in self.constraint_texts]
        check_settings(config.hydra.sweeper)
        self.callback = self._function("callback", self.callback_path, default_summary,
                                       "function(study, sweeper)")
        self.progress = self._function("progress", self.progress_path, lambda *a: None,
                                       "function(done, total, note, config)")
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    @staticmethod
    def _function(key: str, path: str | None, default: Callable, signature: str) -> Callable:
        """The function named by ``hydra.sweeper.<key>``, or ``default``."""
        if path is None:
            return default
        from hydra.utils import get_method

        try:
            return get_method(path)
        except Exception as e:  # Hydra's message ends with the likely reason
            reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise SweeperConfigError(f"hydra.sweeper.{key}={path!r}: {reason} "
                                     f"(give a dotted path to a {signature})") from None

    # -------------------------------------------------------------- search space
    def _space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        """(Optuna distributions by key, fixed overrides) from config params and the CLI."""
        import optuna.distributions as D

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        swept: dict[str, Override] = {}
        for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]):
            swept[o.get_key_element()] = o
        fixed = []
        for o in parser.parse_overrides(arguments):
            if o.is_sweep_override():
                swept[o.get_key_element()] = o
            else:
                fixed.append(o.input_line)
        space = {}
        for key, o in swept.items():
            v = o.value()
            if isinstance(v, IntervalSweep):
                if not v.start < v.end:
                    raise SweeperConfigError(f"hydra.sweeper.params.{key}: empty interval "
                                             f"({v.start:g}, {v.end:g})")
                space[key] = D.FloatDistribution(float(v.start), float(v.end))
            elif isinstance(v, ChoiceSweep):
                space[key] = D.CategoricalDistribution([str(x) for x in v.list])
            else:
                raise SweeperConfigError(f"hydra.sweeper.params.{key}="
                                         f"{o.input_line.split('=', 1)[1]}: "
                                         f"use interval(lo,hi) or choice(a,b,...)")
        if not space:
            raise SweeperConfigError("hydra.sweeper.params is empty: give e.g. "
                                     "hydra.sweeper.params.lambda='interval(0,1)'")
        return space, fixed

    def _sampler(self):
        import optuna

        # Few random start-up trials: the parents (enqueued first) already span the interval.
        if self.sampler_name == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup)
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup)
        return optuna.samplers.RandomSampler(seed=self.seed)  # grid: its points are enqueued

    def _grid(self, space: dict) -> list[dict]:
        import numpy as np

        axes = {k: (list(d.choices) if hasattr(d, "choices") else
                    [round(float(x), 6) for x in np.linspace(d.low, d.high, self.grid_points)])
                for k, d in space.items()}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]

    def _study(self):
        import optuna

        storage = self.storage
        if storage is None:
            folder = Path(self.storage_dir if self.storage_dir is not None
                          else Path(self.config.hydra.sweep.dir) / "optuna")
            folder.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(folder / f"{self.study_name}.journal"))
            storage = optuna.storages.JournalStorage(backend)
        if not self.resume:
            try:
                optuna.delete_study(study_name=self.study_name, storage=storage)
            except KeyError:
                pass
        return optuna.create_study(study_name=self.study_name, storage=storage,
                                   sampler=self._sampler(), direction=self.direction,
                                   load_if_exists=True)

    # -------------------------------------------------------------- the loop
    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, fixed = self._space(arguments)
        study = self._study()
        lam = space.get("lambda")
        ends = []
        if self.seed_with_parents and lam is not None and not hasattr(lam, "choices"):
            ends = [lam.low, lam.high]
            tried = {t.params.get("lambda") for t in study.trials}
            for x in ends:
                if x not in tried:
                    study.enqueue_trial({"lambda": x}, skip_if_exists=True)
        target = self.n_trials + len(ends)
        if self.sampler_name == "grid":  # every grid point once (Optuna's GridSampler cannot
            grid = self._grid(space)     # be driven by ask/tell: it stops the study itself)
            tried = [t.params for t in study.trials]
            for point in grid:
                if point not in tried:
                    study.enqueue_trial(point, skip_if_exists=True)
            target = len(grid) + len([e for e in ends if {"lambda": e} not in grid])
        job_idx = 0
        self.stopped = None
        self._show_progress(study, target)
        while True:
            finished = [t for t in study.trials if t.state.is_finished()
                        and t.state != TrialState.PRUNED]
            remaining = target - len(finished)
            if remaining <= 0:
                break
            if self.sampler_name != "grid":
                self.stopped = stop_reason(self._history(study), self.stop_patience,
                                           max(len(ends), self.n_startup),
                                           self.direction == "maximize")
                if self.stopped:
                    LOG.info("λ* search: %s", self.stopped)
                    break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            for t in trials:
                t.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            batch = [fixed + trial_overrides(t.params) for t in trials]
            results = self.launcher.launch(batch, initial_job_idx=job_idx)
            job_idx += len(batch)
            for trial, result in zip(trials, results):
                self._tell(study, trial, result)
            self._show_progress(study, target)
            failed = sum(t.state == TrialState.FAIL for t in study.trials)
            if failed > self.max_failure_rate * max(len(study.trials), 1) and failed >= 2:
                raise RuntimeError(f"{failed} of {len(study.trials)} trials failed (more than "
                                   f"max_failure_rate={self.max_failure_rate}); stopping")
        return self.callback(study, self)

    def _show_progress(self, study, target: int) -> None:
        """Hand the progress hook the trials finished of ``target`` and the best feasible
        point so far."""
        from optuna.trial import TrialState

        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        feasible = [t for t in done if violation(t) <= 0]
        note = "no feasible trial yet" if done else ""
        if feasible:
            best, _ = best_trial(feasible, self.direction)
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in best.params.items())
            note = f"best feasible so far: {params} ({self.objective}={best.value:.4f})"
        finished = sum(t.state.is_finished() for t in study.trials)
        self.progress(finished, target, note, self.config)

    def _history(self, study) -> list[tuple[float, bool, float]]:
        """(value, feasible, noise) of each completed trial, in order."""
        from optuna.trial import TrialState

        out = []
        for t in study.trials:
            if t.state != TrialState.COMPLETE:
                continue
            m = t.user_attrs.get("metrics", {})
            low, high = (m.get(f"{self.objective}_ci_{e}") for e in ("low", "high"))
            noise = (high - low) / 2 if low is not None and high is not None \
                else self.stop_min_delta
            out.append((t.value, violation(t) <= 0, noise))
        return out

    def _tell(self, study, trial, result) -> None:
        from optuna.trial import TrialState

        try:
            metrics = result.return_value
            value = float(metrics[self.objective])
            for metric, op, bound in self.constraints:
                trial.set_constraint(f"{metric} {op} {bound:g}",
                                     constraint_value(metrics, metric, op, bound))
        except Exception as e:  # the job failed (or returned no such metric): record, go on
            LOG.warning("trial %d (%s) failed: %s", trial.number, trial.params, e)
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()
                                        if isinstance(v, numbers.Real) and not isinstance(v, bool)})
        study.tell(trial, value)


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """The overrides a trial's job runs with: ``key=value``, floats rounded to 6 decimals."""
    return [f"{k}={round(v, 6):g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in params.items()]
