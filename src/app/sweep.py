"""What a multirun does once: check the search and every job's settings, check a resumed
study against the store, open the store, evaluate the parents, hold the sweep's parent run,
and summarise the sweep (best λ per method) and the λ* search.

``SweepCallback`` is the Hydra callback of every multirun (``conf/config.yaml``);
``summarize_study`` is the λ* sweeper's callback (``conf/search/lambda_star.yaml``). Best λ
follows one rule everywhere, the frontier's (``app.frontier.best``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from app import tracking
from app.config import clean_lambda, experiment_name, job_settings, validate
from app.console import console, in_process, library_output, quiet_progress_bars, route_logs
from app.errors import Abort, ConfigError, suggest
from app.faults import JobFailed
from app.frontier import Point, best
from app.messages import user_error
from app.metrics import headline, job_metric_names, without_costs
from app.pipeline import JobContext, this_process
from app.provenance import digest, process_tags

LOG = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"


class SweepCallback(Callback):
    """One parent run per multirun, created (with the references) before any job starts."""

    def __init__(self):
        self.run_id, self.tracker = None, None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("preview"):  # only shows what it would submit
            return
        job_cfg = job_part(config)
        search = "objective" in config.hydra.sweeper  # a λ* search, not a grid
        try:  # Hydra only warns when a callback raises an Exception: stop the sweep here
            if search:
                check_search(config)  # its metric names
            jobs = check_jobs(config)
            if search:
                check_study(config)
            sweep_dir = make_sweep_dir(config.hydra.sweep.dir)
            verbose = bool(job_cfg.get("verbose")) or bool(config.hydra.verbose)
            log = sweep_dir / "sweep.log"
            route_logs(verbose)
            if not verbose:
                quiet_progress_bars()
            tracker = tracking.open_tracker(job_cfg.tracking, experiment_name(job_cfg))
            shown = console()
            shown.lines(announce(config, job_cfg, jobs, tracker, search))
            if not search:
                shown.begin(len(jobs), live=in_process(config))
            with library_output(log, verbose):
                if not on_cluster(config):  # there the first array task evaluates them
                    for job in one_per_set(job_cfg, jobs):  # a sweep over model sets: each's
                        set_tracker = tracker if job.tracking.experiment == experiment_name(
                            job_cfg) else tracking.open_tracker(job.tracking,
                                                                job.tracking.experiment)
                        this_process().evaluate_references(job, set_tracker)
        except JobFailed:  # a parent cannot be evaluated: its run says why; the jobs go on
            pass
        except Exception as e:
            raise Abort(start_failure(e)) from e
        overrides = sorted(typed_overrides(config.hydra))
        key = digest([experiment_name(job_cfg), overrides])
        found = tracker.find_tagged("sweep_key", key)
        if found:  # the same sweep command again: continue under the same parent
            run_id = found.run_id
            tracker.reopen(run_id)
            for k, v in process_tags().items():
                tracker.run(run_id).tag(k, v)
        else:
            run_id = tracker.start(f"sweep {' '.join(overrides)}",
                                   {"role": "sweep", "sweep_key": key,
                                    "overrides": " ".join(overrides)[:5000],
                                    **process_tags()}).run_id
        self.run_id, self.tracker = run_id, tracker
        # Whatever ends this process (an exception in a job included), the parent is closed.
        atexit.register(self.ended_early)
        try:
            (sweep_dir / PARENT_FILE).write_text(run_id)
        except Exception as e:
            raise Abort(start_failure(e)) from e

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        console().end()
        if self.run_id is None:
            return
        log_sweep_summary(self.tracker, self.run_id)
        self.tracker.close(self.run_id)
        run_id, self.run_id = self.run_id, None  # closed: nothing for ended_early to do
        closing_block(job_part(config), run_id, table="objective" not in config.hydra.sweeper)

    def ended_early(self) -> None:
        """The process ends without ``on_multirun_end`` (a job failed, the sweep was stopped
        or could not start): close the parent FAILED with the reason its children give."""
        if self.run_id is None:
            return
        with contextlib.suppress(Exception):  # a store that cannot be written: next start
            failed = self.tracker.children(self.run_id, "FAILED")
            killed = self.tracker.children(self.run_id, "KILLED")
            if failed:
                first = failed[0].tags.get("failure_reason", "see its run").removeprefix(
                    "JobFailed: ")
                reason = (f"{len(failed)} job(s) failed (first: {first}); run the same command "
                          f"again for them")
            elif killed:
                reason = "interrupted; run the same command again to resume"
            else:
                reason = "the sweep process ended before the sweep finished"
            self.tracker.close(self.run_id, "FAILED", reason)


def announce(config: DictConfig, job_cfg: DictConfig, jobs: list[DictConfig], tracker,
             search: bool) -> str:
    """The sweep's header: the model set, the methods × λ (or the search), tasks, engine,
    device, store, the jobs already done, where library messages go."""
    from app.console import header_lines
    from app.provenance import job_fingerprint

    first = job_settings(job_cfg)
    log = f"{config.hydra.sweep.dir}/sweep.log and each job's folder"
    if search:
        sweeper = config.hydra.sweeper
        limits = " with " + ", ".join(sweeper.constraints) if sweeper.constraints else ""
        ends = " after λ's two ends" if sweeper.seed_with_parents else ""
        what = (f"λ* search: {sweeper.direction} {sweeper.objective}{limits}, up to "
                f"{sweeper.n_trials} trials{ends}")
        return first.hide("\n".join(header_lines(first, what, log)))
    methods = list(dict.fromkeys(str(j.method.name) for j in jobs))
    lams = sorted({clean_lambda(j["lambda"]) for j in jobs})
    others = [o for o in typed_overrides(config.hydra) if "," in o
              and o.split("=", 1)[0].lstrip("+~") not in ("method", "lambda")]
    what = " × ".join([", ".join(methods), "λ " + ", ".join(f"{x:g}" for x in lams), *others])
    done = sum(tracker.find(job_fingerprint(job_settings(j))) is not None for j in jobs) \
        if len(jobs) <= 200 else 0  # a huge grid: not worth a store query per job
    return first.hide("\n".join(header_lines(first, what, log, len(jobs), done)))


def closing_block(job_cfg: DictConfig, sweep_run: str | None = None, table: bool = True) -> None:
    """After a run, a grid or a search: the grid's table (as the report computes it), the
    store and the next commands."""
    from app.console import next_commands, store_of, ui_command
    from app.provenance import env_values, scrubber
    from app.report.load import ReportError, load_sweep
    from app.report.tables import ECE_LIMIT, closing_table

    shown, hide = console(), scrubber(env_values(job_cfg))  # no value read from the environment
    t = job_cfg.tracking
    where = "" if t.uri or str(t.dir) == "mlruns" else f" --tracking-dir {t.dir}"
    where += f" --tracking-uri {t.uri}" if t.uri else ""
    if sweep_run is not None and table:
        try:
            reader = tracking.open_reader(t.uri, str(t.dir))
            for name, sweep in load_sweep(reader, None, sweep_run).items():
                shown.line(f"── {name} " + "─" * max(0, 60 - len(name)))
                shown.lines("\n".join(closing_table(sweep, ECE_LIMIT)))
        except ReportError as e:  # e.g. every job failed: nothing to tabulate
            shown.line(f"no table: {e}")
    if sweep_run is not None:
        pairs = [(f"python -m app.report --parent {sweep_run}{where}",
                  "the frontier report: figures, λ*, paired evidence")]
    else:
        pairs = [("python -m app -m method=slerp,ties 'lambda=range(0,1.01,0.1)'",
                  "a λ grid over two methods, then python -m app.report")]
    shown.line(hide(f"store: {store_of(t)} (experiment {t.experiment})"))
    shown.lines(hide("\n".join(next_commands(pairs + [(ui_command(t), "browse the runs")]))))


def make_sweep_dir(folder: str) -> Path:
    """The sweep's folder, created; ConfigError in one line where it cannot be."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"hydra.sweep.dir={folder!r} cannot be created ({e.strerror}); give "
                          f"a folder you can write") from None
    return path


def start_failure(e: BaseException) -> str:
    """The one line that says why a sweep could not start."""
    line = user_error(e)
    if line is None:
        LOG.exception("the sweep could not start")
        line = f"the sweep could not start: {type(e).__name__}: {e}".splitlines()[0]
    return line


def job_part(config: DictConfig) -> DictConfig:
    """A Hydra config without its ``hydra`` node: what a job sees."""
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def one_per_set(job_cfg: DictConfig, jobs: list[DictConfig]):
    """One job per model set the sweep's jobs run (``model=toy_s,toy,toy_l``: three; two
    values of ``model.it``: two), whose references must exist before the jobs: the sweep's own
    config for its set, else that set's first job."""
    from app.modelset import ModelSet

    own = ModelSet.from_config(job_cfg.model).key()
    out = {}
    for job in jobs:
        key = ModelSet.from_config(job.model).key()
        out.setdefault(key, job_cfg if key == own else job)
    return [job_settings(cfg) for cfg in out.values() or [job_cfg]]


def check_jobs(config: DictConfig) -> list[DictConfig]:
    """Validate every job a grid will run (each combination of the swept values), or a
    search's extreme points (each interval's ends, each choice), before the first job; the
    jobs' configs."""
    import itertools

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    n_jobs = config.hydra.launcher.get("n_jobs")
    if n_jobs is not None and n_jobs == 0:
        raise ConfigError("hydra.launcher.n_jobs=0 must be a number of workers ≥ 1 (or -1: one "
                          "per core)")
    parser = OverridesParser.create()
    swept = parser.parse_overrides(typed_overrides(config.hydra))
    if "objective" in config.hydra.sweeper:
        swept += parser.parse_overrides([f"{k}={v}"
                                         for k, v in config.hydra.sweeper.params.items()])
    axes: dict[str, list[str]] = {}
    for o in swept:
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes[key] = [o.input_line]
        elif isinstance(o.value(), IntervalSweep):
            axes[key] = [f"{key}={o.value().start}", f"{key}={o.value().end}"]
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
    loader = GlobalHydra.instance().config_loader()
    jobs = []
    for job in itertools.product(*axes.values()):
        cfg = job_part(loader.load_sweep_config(config, list(job)))
        validate(cfg)
        jobs.append(cfg)
    return jobs


def check_study(config: DictConfig) -> None:
    """A study resumed from its journal must have its finished trials' runs in this store
    (the journal outlives a removed store: the study would report runs nobody can find)."""
    import optuna
    from optuna.trial import TrialState

    sweeper = config.hydra.sweeper
    if sweeper.storage:  # a shared database is the user's to manage: it must open
        check_storage(str(sweeper.storage))
        return
    if not sweeper.resume:
        return
    journal = Path(sweeper.storage_dir or Path(config.hydra.sweep.dir) / "optuna") / \
        f"{sweeper.study_name}.journal"
    if not journal.is_file():
        return
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
    except KeyError:
        return
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    job_cfg = job_part(config)
    store = job_cfg.tracking.uri or job_cfg.tracking.dir
    if not job_cfg.tracking.uri and not (Path(store) / "mlflow.db").exists():
        missing = len(trials)  # no store at all: not one of its runs is there
    else:
        missing = _runs_not_in_store(config, trials, tracking.open_tracker(
            job_cfg.tracking, experiment_name(job_cfg)))
    if missing:
        raise ConfigError(f"the λ* study {journal} has {missing} finished trial(s) whose runs "
                          f"are not in the store {store}: remove the journal (or set "
                          f"hydra.sweeper.resume=false) to start afresh, or set tracking.dir to "
                          f"the store the study logged to")


def check_storage(url: str) -> None:
    """The λ* study's database (``hydra.sweeper.storage``) opens, or one line that says why
    (its password written ``***``)."""
    import re

    import optuna

    try:
        optuna.storages.get_storage(url)
    except Exception as e:  # noqa: BLE001 - a driver missing, a server down, a bad URL
        shown = re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"hydra.sweeper.storage={shown!r} cannot be opened ({why}); give a "
                          f"database the study can use, or leave it unset for a journal file "
                          f"in the sweep's folder") from None


def _runs_not_in_store(config: DictConfig, trials: list, tracker) -> int:
    """How many trials' jobs (their config recomposed, then fingerprinted) have no run."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from app.provenance import job_fingerprint
    from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import trial_overrides

    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(
        typed_overrides(config.hydra)) if not o.is_sweep_override()]
    loader = GlobalHydra.instance().config_loader()
    missing = 0
    for trial in trials:
        cfg = loader.load_sweep_config(config, fixed + trial_overrides(trial.params))
        job = job_part(cfg)
        if tracker.find(job_fingerprint(job_settings(job))) is None:
            missing += 1
    return missing


def on_cluster(config: DictConfig) -> bool:
    """Whether the sweep's jobs run on SLURM (the submitting node may have no GPU)."""
    return "Slurm" in str(config.hydra.launcher.get("_target_", ""))


def typed_overrides(hydra_cfg) -> list[str]:
    """The command line's overrides as typed: ``${oc.env:…}`` stays unresolved (resolving
    the list would put the environment's values into names, tags and logs)."""
    return list(OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False))


def job_context() -> JobContext:
    """This job's place in Hydra's run: its sweep's parent run, overrides, number, and whether
    it evaluates the references (the first array task on a cluster)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext()
    hc = HydraConfig.get()
    parent = None
    if hc.mode == RunMode.MULTIRUN:
        path = Path(hc.sweep.dir) / PARENT_FILE
        parent = path.read_text().strip() if path.exists() else None
    return JobContext(parent=parent, overrides=" ".join(typed_overrides(hc)),
                      job_num=int(hc.job.get("num", 0) or 0),
                      evaluate_references=os.environ.get("SLURM_ARRAY_TASK_ID") == "0")


def check_search(cfg: DictConfig) -> None:
    """Objective and constraints must name metrics the job returns (checked before any job)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import (check_settings,
                                                                       parse_constraint)

    sweeper = cfg.hydra.sweeper
    check_settings(sweeper)
    valid = job_metric_names(job_settings(job_part(cfg)))
    named = [("hydra.sweeper.objective", sweeper.objective)]
    named += [("hydra.sweeper.constraints", parse_constraint(c)[0]) for c in sweeper.constraints]
    for key, metric in named:
        if metric not in valid:
            raise ConfigError(f"{key}: the job returns no metric {metric!r}"
                              f"{suggest(str(metric), valid)}; valid: {', '.join(valid)}")
    cli = OverridesParser.create().parse_overrides(typed_overrides(cfg.hydra))
    if not sweeper.params and not any(o.is_sweep_override() for o in cli):
        raise ConfigError("hydra.sweeper.params is empty: give e.g. "
                          "hydra.sweeper.params.lambda='interval(0,1)'")


def log_sweep_summary(tracker, parent_id: str) -> dict[str, float]:
    """Best λ per method (the frontier's rule on ``mean/acc`` and ``mean/ece``) as params and
    metrics on the parent; returns {method: best λ}."""
    by_method: dict[str, list[tuple[Point, Any]]] = {}
    for run in tracker.children(parent_id):
        if "mean/acc" not in run.metrics:
            continue
        acc, ece = headline(run.metrics)
        method = run.tags.get("method", "?")
        by_method.setdefault(method, []).append(
            (Point(float(run.params.get("lambda", "nan")), acc, ece, method), run))
    params, metrics, chosen = {}, validation_times(tracker.children(parent_id)), {}
    for method, points in by_method.items():
        star = best([p for p, _ in points])
        run = next(r for p, r in points if p is star)
        chosen[method] = star.lam
        params[f"best/{method}/lambda"] = run.params.get("lambda")
        metrics.update({f"best/{method}/{k}": v for k, v in without_costs(run.metrics).items()})
    handle = tracker.run(parent_id)
    log_params_or_tags(handle, params)
    handle.log_metrics(metrics)
    return chosen


def validation_times(children) -> dict[str, float]:
    """What the sweep's search for each method's λ and knobs cost: ``time/validation_s/<method>``
    (Σ merge + evaluation over its jobs), their total ``time/validation_s``, and a pool
    method's statistics ``time/stats_s/<method>`` (MergeBench's runtime split)."""
    out: dict[str, float] = {}
    for run in children:
        m, method = run.metrics, run.tags.get("method", "?")
        spent = m.get("time/merge_s", 0.0) + m.get("time/eval_s", 0.0)
        out[f"time/validation_s/{method}"] = out.get(f"time/validation_s/{method}", 0.0) + spent
        out["time/validation_s"] = out.get("time/validation_s", 0.0) + spent
        if "time/stats_s" in m:
            key = f"time/stats_s/{method}"
            out[key] = max(out.get(key, 0.0), m["time/stats_s"])
    return out


def log_params_or_tags(handle, params: dict) -> None:
    """Params on the parent run; as tags where an earlier run of the same sweep or study
    logged them with other values (params are immutable, tags are not)."""
    try:
        handle.log_params(params)
    except Exception:  # noqa: BLE001 - the store refuses a changed param
        for k, v in params.items():
            handle.tag(k, str(v))


def search_progress(done: int, total: int, note: str, config) -> None:
    """The λ* sweeper's progress hook: trial ``done`` of ``total`` and the best feasible point
    so far, on the console."""
    shown = console()
    if shown.total != total:
        shown.begin(total, live=in_process(config))
    shown.finished = done
    shown.annotate(note)


def summarize_study(study, sweeper) -> dict:
    """The λ* sweeper's callback: print λ*, write lambda_star.yaml next to the sweep's outputs,
    log it to the sweep's parent run."""
    import yaml
    from optuna.trial import TrialState

    from app.plots import trials_figure
    from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import violation

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in done if violation(t) <= 0]
    failed = sum(t.state == TrialState.FAIL for t in study.trials)
    if feasible:
        sign = 1 if sweeper.direction == "maximize" else -1
        # the frontier's rule: best objective; ties: most margin on the constraints (lower
        # ECE under "ece <= ε"), then the smaller λ (the earlier trial without a λ)
        points = {t.number: Point(t.params.get("lambda", t.number), sign * t.value,
                                  sum(t.constraints.values())) for t in feasible}
        star = best(list(points.values()))
        chosen = next(t for t in feasible if points[t.number] is star)
        verdict = "feasible"
    elif done:
        chosen = min(done, key=violation)
        verdict = "NO feasible trial; least violating"
    else:
        raise RuntimeError("no trial completed")
    constraints = [f"{m} {op} {b:g}" for m, op, b in sweeper.constraints]
    metrics = without_costs(chosen.user_attrs.get("metrics", {}))
    stopped = getattr(sweeper, "stopped", None) or "ran every trial (n_trials)"
    summary = {
        "study": study.study_name, "objective": sweeper.objective, "direction": sweeper.direction,
        "constraints": constraints, "verdict": verdict, "best_params": chosen.params,
        "best_value": chosen.value, "best_metrics": metrics, "trials": len(study.trials),
        "completed": len(done), "infeasible": len(done) - len(feasible), "failed": failed,
        "stopped": stopped,
    }
    named = [sweeper.objective] + [m.split()[0] for m in constraints]
    reported = {f"report/{n.split('/', 1)[1]}": metrics[f"report/{n.split('/', 1)[1]}"]
                for n in named if n.startswith("selection/")
                and f"report/{n.split('/', 1)[1]}" in metrics}
    if reported:
        summary["report_metrics"] = reported
    shown_params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in chosen.params.items())
    shown = ", ".join(f"{m.split()[0]}={metrics.get(m.split()[0], float('nan')):.4f}"
                      for m in constraints)
    low, high = (metrics.get(f"{sweeper.objective}_ci_{e}") for e in ("low", "high"))
    interval = f" [95% CI {low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
    print(f"λ* search ({study.study_name}): {verdict} best {shown_params}: {sweeper.objective}="
          f"{chosen.value:.4f}{interval}, {shown} | {len(done)} completed, "
          f"{len(done) - len(feasible)} infeasible, {failed} failed; {stopped}", flush=True)
    if reported:
        print("  report set (the numbers to quote): " + ", ".join(
            f"{k}={v:.4f}" for k, v in reported.items()), flush=True)
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parent_file = sweep_dir / PARENT_FILE
    tracker = None
    if parent_file.exists():
        job_cfg = sweeper.config
        tracker = tracking.open_tracker(job_cfg.tracking, experiment_name(job_cfg))
        gains = paired_gains(tracker, parent_file.read_text().strip(), chosen.params,
                             sweeper.objective, job_part(job_cfg))
        if gains:
            summary["paired_gains"] = gains
            for line in gains.values():
                print(f"  {line}", flush=True)
    text = yaml.safe_dump(summary, sort_keys=False, allow_unicode=True)
    (sweep_dir / "lambda_star.yaml").write_text(text)
    if tracker is not None:
        handle = tracker.run(parent_file.read_text().strip())
        params = {f"best/{k}": v for k, v in chosen.params.items()}
        params |= {"search/verdict": verdict, "search/constraints": "; ".join(constraints)}
        log_params_or_tags(handle, params)
        handle.tag("search/stopped", stopped[:5000])
        handle.log_metrics({f"best/{k}": v for k, v in metrics.items() if math.isfinite(v)}
                           | {"search/infeasible": summary["infeasible"], "search/failed": failed,
                              "search/completed": len(done)})
        handle.log_text(text, "lambda_star.yaml")
        if "lambda" in chosen.params:
            handle.log_figure(trials_figure(done, sweeper, chosen, violation),
                              "search/trials.png")
    return summary


def paired_gains(tracker, parent_id: str, params: dict, objective: str,
                 job_cfg: DictConfig) -> dict[str, str]:
    """λ*'s paired differences to PT and IT on the objective's task, over the report documents
    (all documents where the tasks are not split): ``{task: "<line>"}``, empty where λ* is a
    parent or its runs cannot be found."""
    from app.report.evidence import Evidence, describe

    lam = params.get("lambda")
    task = objective.split("/")[1] if objective.startswith(("selection/", "report/")) \
        else objective.split("/")[0]
    if not isinstance(lam, float) or lam in (0.0, 1.0) or task in ("mean", "judge", "probe"):
        return {}
    runs = [r for r in tracker.children(parent_id)
            if abs(float(r.params.get("lambda", "nan")) - round(lam, 6)) < 1e-9]
    tasks_tag = runs[0].tags.get("tasks") if runs else None
    refs = [tracker.references(tasks_tag, x, runs[0].tags.get("pair"),
                               runs[0].experiment_id or None)
            for x in ("0", "1")] if tasks_tag else []
    if not runs or not all(refs):
        return {}
    subset = "report" if job_cfg.task.selection.share else None
    evidence = Evidence(tracker.download, n_boot=job_cfg.task.bootstrap or 1000,
                        seed=job_cfg.seed, bins=job_cfg.task.ece_bins,
                        binning=job_cfg.task.ece_binning)
    try:
        found = evidence.against_parents(runs[0].tags.get("reused_from", runs[0].run_id),
                                         refs[0][0].run_id, refs[1][0].run_id, task, subset)
    except Exception as e:  # noqa: BLE001 - no samples artifact: say so, go on
        LOG.warning("λ*'s paired gains could not be computed: %s", e)
        return {}
    where = "the report set" if subset else "all documents"
    return {task: f"{task}, λ*={lam:.4g} on {where}: {describe(found)}"}
