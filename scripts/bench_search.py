"""λ* search benchmark on synthetic λ curves shaped like the papers' tables.

    python scripts/bench_search.py

Accuracy is unimodal in λ (a sweet spot above both parents), ECE rises monotonically from PT
to IT, and λ* is the most accurate λ with ECE ≤ ε on a dense 0.01 grid. For each curve and
seed it counts the evaluations (the parents λ=0 and λ=1 are free: they are reused reference
runs) until the best feasible λ found so far is within 0.02 of λ*, for
  * this project's default search: GP sampler with constraints, parents first, 1 random start;
  * plain TPE (Optuna's defaults: 10 random start-up trials), parents first as well;
  * the papers' 11-point grid (0, 0.1, …, 1): within 0.02 only if λ* is near a grid point.
The samplers are the ones the sweeper uses, called through Optuna directly (no model runs).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import optuna

CAP = 40
CURVES = {  # name: (acc(λ), ece(λ), ε)
    "gemma-like": (lambda x: 0.42 + 0.05 * x + 0.09 * math.sin(math.pi * x) * (1 - 0.4 * x),
                   lambda x: 0.04 + 0.20 * x ** 1.6, 0.10),
    "qwen-like": (lambda x: 0.55 + 0.02 * x + 0.05 * math.exp(-((x - 0.35) / 0.2) ** 2),
                  lambda x: 0.03 + 0.15 * x ** 1.2, 0.08),
    "late-peak": (lambda x: 0.60 + 0.08 * math.exp(-((x - 0.7) / 0.25) ** 2),
                  lambda x: 0.05 + 0.25 * x ** 2.5, 0.15),
}


def dense_lambda_star(acc, ece, eps) -> float:
    grid = [round(i / 100, 2) for i in range(101)]
    return max((x for x in grid if ece(x) <= eps), key=acc)


def evaluations_to_reach(sampler, acc, ece, eps, target, n_free: int = 2) -> int:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({"lambda": 0.0})
    study.enqueue_trial({"lambda": 1.0})
    dist = {"lambda": optuna.distributions.FloatDistribution(0.0, 1.0)}
    best = None
    for n in range(CAP + n_free):
        trial = study.ask(dist)
        x = trial.params["lambda"]
        trial.set_constraint("ece", ece(x) - eps)
        study.tell(trial, acc(x))
        if ece(x) <= eps and (best is None or acc(x) > acc(best)):
            best = x
        if best is not None and abs(best - target) <= 0.02:
            return max(0, n + 1 - n_free)
    return CAP


def grid_evaluations(acc, ece, eps, target) -> str:
    grid = [i / 10 for i in range(11)]
    best = max((x for x in grid if ece(x) <= eps), key=acc)
    return f"9 (λ̂={best:g}, {'within' if abs(best - target) <= 0.02 else 'NOT within'} 0.02)"


def main() -> None:
    seeds = range(10)
    print(f"{'curve':11} {'λ* (0.01 grid)':>14}  {'default GP':>10}  {'plain TPE':>9}  11-point grid")
    for name, (acc, ece, eps) in CURVES.items():
        target = dense_lambda_star(acc, ece, eps)
        gp = [evaluations_to_reach(optuna.samplers.GPSampler(seed=s, n_startup_trials=3),
                                   acc, ece, eps, target) for s in seeds]
        tpe = [evaluations_to_reach(optuna.samplers.TPESampler(seed=s), acc, ece, eps, target)
               for s in seeds]
        print(f"{name:11} {target:14.2f}  {statistics.median(gp):10.1f}  "
              f"{statistics.median(tpe):9.1f}  {grid_evaluations(acc, ece, eps, target)}")
        print(f"{'':11} {'':14}  max {max(gp):6d}  max {max(tpe):5d}   (evaluations beyond the "
              f"parents; median and max over {len(seeds)} seeds, capped at {CAP})")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
