"""λ* search support: metric-name checks before any job, and the study's summary."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from app.config import ConfigError, suggest

CALIBRATION_METRICS = ("acc", "ece", "mce", "brier", "nll", "mean_conf", "n", "acc_lm_eval",
                       "acc_ci_low", "acc_ci_high", "ece_ci_low", "ece_ci_high")


def job_metric_names(cfg: DictConfig) -> list[str]:
    """Every metric a job of this config returns."""
    names = {"mean/acc", "time/merge_s", "time/eval_s", "time/total_s"}
    for spec in cfg.task.tasks:
        names |= {f"{spec.name}/acc", f"{spec.name}/n"}
        if spec.calibration:
            names |= {f"{spec.name}/{m}" for m in CALIBRATION_METRICS} | {"mean/ece"}
    return sorted(names)


def check_search(cfg: DictConfig) -> None:
    """Objective and constraints must name metrics the job returns (checked before any job)."""
    from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import parse_constraint

    sweeper = cfg.hydra.sweeper
    valid = job_metric_names(cfg)
    named = [("hydra.sweeper.objective", sweeper.objective)]
    named += [("hydra.sweeper.constraints", parse_constraint(c)[0]) for c in sweeper.constraints]
    for key, metric in named:
        if metric not in valid:
            raise ConfigError(f"{key}: the job returns no metric {metric!r}"
                              f"{suggest(metric, valid)}; valid: {', '.join(valid)}")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cli = OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task))
    if not sweeper.params and not any(o.is_sweep_override() for o in cli):
        raise ConfigError("hydra.sweeper.params is empty: give e.g. "
                          "hydra.sweeper.params.lambda='interval(0,1)'")


def violation(trial) -> float:
    return sum(max(0.0, c) for c in trial.constraints.values())


def summarize_study(study, sweeper) -> dict:
    """Print λ*, write lambda_star.yaml next to the sweep's outputs, log to the parent run."""
    import yaml
    from optuna.trial import TrialState

    from app import tracking

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in done if violation(t) <= 0]
    failed = sum(t.state == TrialState.FAIL for t in study.trials)
    if feasible:
        sign = 1 if sweeper.direction == "maximize" else -1
        # ties (accuracy is discrete): the one with most margin on the constraints
        best = max(feasible, key=lambda t: (sign * t.value, -sum(t.constraints.values()),
                                            -t.number))
        verdict = "feasible"
    elif done:
        best = min(done, key=violation)
        verdict = "NO feasible trial; least violating"
    else:
        raise RuntimeError("no trial completed")
    constraints = [f"{m} {op} {b:g}" for m, op, b in sweeper.constraints]
    metrics = best.user_attrs.get("metrics", {})
    summary = {
        "study": study.study_name, "objective": sweeper.objective, "direction": sweeper.direction,
        "constraints": constraints, "verdict": verdict, "best_params": best.params,
        "best_value": best.value, "best_metrics": metrics, "trials": len(study.trials),
        "completed": len(done), "infeasible": len(done) - len(feasible), "failed": failed,
    }
    shown_params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in best.params.items())
    shown = ", ".join(f"{m.split()[0]}={metrics.get(m.split()[0], float('nan')):.4f}"
                      for m in constraints)
    low, high = (metrics.get(f"{sweeper.objective}_ci_{e}") for e in ("low", "high"))
    interval = f" [95% CI {low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
    print(f"λ* search ({study.study_name}): {verdict} best {shown_params}: {sweeper.objective}="
          f"{best.value:.4f}{interval}, {shown} | {len(done)} completed, "
          f"{len(done) - len(feasible)} infeasible, {failed} failed", flush=True)
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "lambda_star.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    parent_file = sweep_dir / tracking.PARENT_FILE
    if parent_file.exists():
        store = tracking.open_store(sweeper.config)
        job = tracking.JobRun(store.client, parent_file.read_text().strip())
        params = {f"best/{k}": v for k, v in best.params.items()}
        params |= {"search/verdict": verdict, "search/constraints": "; ".join(constraints)}
        try:
            job.log_params(params)
        except Exception:  # a resumed study moved λ*: params are immutable, tags are not
            for k, v in params.items():
                store.client.set_tag(job.run_id, k, str(v))
        job.log_metrics({f"best/{k}": v for k, v in metrics.items() if math.isfinite(v)}
                        | {"search/infeasible": summary["infeasible"], "search/failed": failed,
                           "search/completed": len(done)})
        job.log_text(yaml.safe_dump(summary, sort_keys=False), "lambda_star.yaml")
        if "lambda" in best.params:
            job.log_figure(trials_figure(done, sweeper, best), "search/trials.png")
    return summary


def trials_figure(trials, sweeper, best):
    """The objective over λ for every trial, feasible ones filled, λ* starred."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted(trials, key=lambda t: t.params["lambda"]):
        ok = violation(t) <= 0
        ax.plot(t.params["lambda"], t.value, "o", color="tab:blue" if ok else "tab:red",
                mfc="tab:blue" if ok else "none")
        ax.annotate(str(t.number), (t.params["lambda"], t.value), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.plot(best.params["lambda"], best.value, "*", ms=18, color="gold", mec="black",
            label=f"λ*={best.params['lambda']:.3g}")
    ax.plot([], [], "o", color="tab:blue", label="feasible")
    ax.plot([], [], "o", color="tab:red", mfc="none", label="infeasible")
    ax.set_xlabel("λ")
    ax.set_ylabel(sweeper.objective)
    ax.set_title("λ* search: " + "; ".join(f"{m} {op} {b:g}" for m, op, b in sweeper.constraints))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
