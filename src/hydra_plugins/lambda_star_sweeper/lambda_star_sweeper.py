"""The `lambda_star` Hydra sweeper: an Optuna study over the job's returned metrics.

Jobs return ``{metric: value}``; the sweeper tells Optuna the objective and records each
constraint (``"toy_mc/ece <= 0.15"``) with ``Trial.set_constraint``, so the GP and TPE samplers
model feasibility and ``study.best_trial`` is the best feasible trial. A failed job is a FAIL
trial and the study goes on (up to ``max_failure_rate``). The study lives in a journal file
under the tracking folder (or any RDB URL): the same command resumes it, and several processes
on the same storage share it.
"""


import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

LOG = logging.getLogger(__name__)
CONSTRAINT = re.compile(r"^\s*([\w./-]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass
class LambdaStarSweeperConf:
    _target_: str = "hydra_plugins.lambda_star_sweeper.lambda_star_sweeper.LambdaStarSweeper"
    objective: str = "toy_mc/acc"  # a metric the job returns
    direction: str = "maximize"
    constraints: List[str] = field(default_factory=lambda: ["toy_mc/ece <= 0.15"])
    params: Dict[str, str] = field(default_factory=lambda: {"lambda": "interval(0, 1)"})
    sampler: str = "gp"  # gp | tpe | random | grid
    grid_points: int = 11  # grid sampler: points per interval
    n_trials: int = 8  # evaluations, not counting the parents (λ at the interval's ends)
    n_startup: int = 3  # GP/TPE: trials before the model is used (the parents included)
    n_jobs: int = 1  # trials handed to the launcher at once
    seed_with_parents: bool = True  # first try λ=lo and λ=hi (PT/IT: reused references)
    storage: Optional[str] = None  # default: journal file <tracking.dir>/optuna/<study>.journal
    study_name: Optional[str] = None  # default: lambda_star-<experiment>
    resume: bool = True
    seed: int = 0
    max_failure_rate: float = 0.5


ConfigStore.instance().store(group="hydra/sweeper", name="lambda_star",
                             node=LambdaStarSweeperConf, provider="app")


def parse_constraint(text: str) -> tuple[str, str, float]:
    m = CONSTRAINT.match(text)
    if not m:
        from app.config import ConfigError

        raise ConfigError(f"hydra.sweeper.constraints: {text!r} is not '<metric> <= <number>' "
                          f"or '<metric> >= <number>'")
    return m.group(1), m.group(2), float(m.group(3))


def constraint_value(metrics: dict, metric: str, op: str, bound: float) -> float:
    """≤ 0 when satisfied (Optuna's convention)."""
    return metrics[metric] - bound if op == "<=" else bound - metrics[metric]


class LambdaStarSweeper(Sweeper):
    def __init__(self, objective: str, direction: str, constraints: List[str],
                 params: Dict[str, str], sampler: str, grid_points: int, n_trials: int,
                 n_startup: int,
                 n_jobs: int, seed_with_parents: bool, storage: Optional[str],
                 study_name: Optional[str], resume: bool, seed: int,
                 max_failure_rate: float) -> None:
        self.objective, self.direction = objective, direction
        self.constraints = [parse_constraint(c) for c in constraints]
        self.params = dict(params or {})
        self.sampler_name, self.grid_points = sampler, grid_points
        self.n_trials, self.n_jobs, self.n_startup = n_trials, max(1, n_jobs), n_startup
        self.seed_with_parents = seed_with_parents
        self.storage, self.study_name, self.resume = storage, study_name, resume
        self.seed, self.max_failure_rate = seed, max_failure_rate

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -------------------------------------------------------------- search space
    def _space(self, arguments: List[str]) -> tuple[dict, List[str]]:
        """(Optuna distributions by key, fixed overrides) from config params and the CLI."""
        import optuna.distributions as D

        from app.config import ConfigError

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
                    raise ConfigError(f"hydra.sweeper.params.{key}: empty interval "
                                      f"({v.start:g}, {v.end:g})")
                space[key] = D.FloatDistribution(float(v.start), float(v.end))
            elif isinstance(v, ChoiceSweep):
                space[key] = D.CategoricalDistribution([str(x) for x in v.list])
            else:
                raise ConfigError(f"hydra.sweeper.params.{key}={o.input_line.split('=', 1)[1]}: "
                                  f"use interval(lo,hi) or choice(a,b,...)")
        if not space:
            raise ConfigError("hydra.sweeper.params is empty: give e.g. "
                              "hydra.sweeper.params.lambda='interval(0,1)'")
        return space, fixed

    def _sampler(self, space: dict):
        import optuna

        from app.config import ConfigError

        # Few random start-up trials: the parents (enqueued first) already span the interval.
        if self.sampler_name == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup)
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup)
        if self.sampler_name in ("random", "grid"):  # grid: its points are enqueued
            return optuna.samplers.RandomSampler(seed=self.seed)
        raise ConfigError(f"hydra.sweeper.sampler={self.sampler_name!r}; valid: gp, tpe, "
                          f"random, grid")

    def _grid(self, space: dict) -> list[dict]:
        import itertools

        import numpy as np

        axes = {k: (list(d.choices) if hasattr(d, "choices") else
                    [round(float(x), 6) for x in np.linspace(d.low, d.high, self.grid_points)])
                for k, d in space.items()}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]

    def _study(self, space: dict):
        import optuna

        from app import tracking

        name = self.study_name or f"lambda_star-{tracking.experiment_name(self.config)}"
        storage = self.storage
        if storage is None:
            folder = Path(self.config.tracking.dir) / "optuna"
            folder.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(folder / f"{name}.journal"))
            storage = optuna.storages.JournalStorage(backend)
        if not self.resume:
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:
                pass
        study = optuna.create_study(study_name=name, storage=storage,
                                    sampler=self._sampler(space), direction=self.direction,
                                    load_if_exists=True)
        return study

    # -------------------------------------------------------------- the loop
    def sweep(self, arguments: List[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, fixed = self._space(arguments)
        study = self._study(space)
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
        while True:
            finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
            remaining = target - len(finished)
            if remaining <= 0:
                break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            for t in trials:
                t.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            batch = [fixed + [f"{k}={_fmt(v)}" for k, v in t.params.items()] for t in trials]
            results = self.launcher.launch(batch, initial_job_idx=job_idx)
            job_idx += len(batch)
            for trial, result in zip(trials, results):
                self._tell(study, trial, result)
            failed = sum(t.state == TrialState.FAIL for t in study.trials)
            if failed > self.max_failure_rate * max(len(study.trials), 1) and failed >= 2:
                raise RuntimeError(f"{failed} of {len(study.trials)} trials failed (more than "
                                   f"max_failure_rate={self.max_failure_rate}); stopping")
        from app.search import summarize_study

        return summarize_study(study, self)

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
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items()
                                        if not k.startswith("time/")})
        study.tell(trial, value)


def _fmt(v: Any) -> str:
    return f"{round(v, 6):g}" if isinstance(v, float) else str(v)
