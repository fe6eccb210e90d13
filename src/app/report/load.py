"""A sweep as the report reads it from the store: its merges and parent references per pair
(``load_sweep``), and the queries every part of the report shares (a method's path over λ)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.frontier import Point


class ReportError(ValueError):
    """A one-line problem with the runs asked for."""


@dataclass
class Row:
    """One evaluated model: a parent reference or a merge."""

    method: str  # "PT", "IT" or a merge method
    lam: float
    run_id: str
    metrics: dict[str, float]
    artifact_run: str  # where its artifacts live (a reused endpoint's reference)


@dataclass
class Sweep:
    experiment: str
    parent_id: str
    parents: dict[str, Row]  # "PT", "IT"
    merges: list[Row] = field(default_factory=list)
    parameters: int | None = None  # the pair's size (its jobs' ``parameters`` tag)
    params: dict[str, str] = field(default_factory=dict)  # PT's reference run's params
    experts: dict[str, Row] = field(default_factory=dict)  # an expert pool's, by name
    name: str = ""  # the model set's name in the report (its pair's, told apart if shared)
    incomplete: str = ""  # what of the sweep is missing or failed ("" if nothing)

    def download(self, reader):
        """``reader.download``; where the store has lost a run's artifact, a ReportError that
        names the run and how to redo it."""
        rows = {r.artifact_run: r for r in [*self.merges, *self.parents.values(),
                                            *self.experts.values()]}

        def download(run_id: str, path: str, folder: str) -> str:
            try:
                return reader.download(run_id, path, folder)
            except FileNotFoundError:
                row = rows.get(run_id)
                what = f" ({row.method} λ={row.lam:g})" if row else ""
                raise ReportError(
                    f"run {run_id}{what} has lost its artifact {path} (its folder in the store "
                    f"was removed?); delete that run (MLFLOW_TRACKING_URI={reader.uri} mlflow "
                    f"runs delete --run-id {run_id}) and run the sweep command again: it redoes "
                    f"only the missing jobs") from None
        return download

    def evidence(self, reader):
        """Paired comparisons over this sweep's sample artifacts, binned and seeded as the
        runs computed their ECE and intervals."""
        from app.report.evidence import Evidence

        p = self.params
        return Evidence(self.download(reader), n_boot=int(p.get("task.bootstrap") or 0) or 1000,
                        seed=int(p.get("seed", 0)), bins=int(p.get("task.ece_bins", 15)),
                        binning=p.get("task.ece_binning", "width"))

    def tasks(self) -> tuple[list[str], list[str]]:
        """(calibrated tasks, generative tasks) found in the metrics."""
        keys = set().union(*(r.metrics for r in self.merges + list(self.parents.values())))
        tasks = sorted({k.split("/")[0] for k in keys if k.endswith("/acc")}
                       - {"mean", "probe", "selection", "report"})
        calibrated = [t for t in tasks if f"{t}/ece" in keys]
        return calibrated, [t for t in tasks if t not in calibrated]

    def methods(self) -> list[str]:
        return sorted({r.method for r in self.merges})

    def path(self, method: str, task: str) -> list[Point]:
        """A method's points by λ, with the parents as its ends where the grid lacks them."""
        return [_point(r, task) for r in _rows_with_parents(self, method)]


def _point(row: Row, task: str) -> Point:
    try:
        return Point(row.lam, row.metrics[f"{task}/acc"], row.metrics[f"{task}/ece"], row.method)
    except KeyError as e:
        raise ReportError(f"run {row.run_id} ({row.method} λ={row.lam:g}) has no metric "
                          f"{e.args[0]}; re-run it or pass --tasks") from None


def load_sweep(reader, experiment: str | None, parent: str | None) -> dict[str, Sweep]:
    """The sweep's FINISHED children and the matching parent references, per model set (one
    entry for a sweep over one set; several for a sweep over pairs or over fine-tunes), named
    by the pair, told apart by the setting that differs where two share a name."""
    if parent:
        exp_name, run = reader.get(parent)
    else:
        if experiment and experiment not in reader.experiment_names():
            names = reader.experiment_names()
            raise ReportError(f"--experiment {experiment!r} does not exist; found: "
                              f"{', '.join(names) or 'none'}")
        found = reader.latest_sweep(experiment)
        if found is None:
            raise ReportError("no sweep found: run `python -m app -m method=... lambda=...` first")
        exp_name, run = found
    tracker = reader.tracker(exp_name)
    children = tracker.children(run.run_id)
    if not children:
        raise ReportError(f"sweep run {run.run_id} has no finished jobs")
    by_set: dict[str, list] = {}
    for c in children:
        by_set.setdefault(_model_set(c), []).append(c)
    names = _set_names(by_set)
    incomplete = _unfinished(tracker, run, children)
    sweeps = {}
    for key, runs in by_set.items():
        merges = [Row(c.tags["method"], float(c.params["lambda"]), c.run_id, dict(c.metrics),
                      c.tags.get("reused_from", c.run_id)) for c in runs]
        tasks_tag = runs[0].tags.get("tasks")
        parents, found = {}, []
        for name, lam in (("PT", "0"), ("IT", "1")):
            ref = _reference(tracker, tasks_tag, lam, runs[0])
            if ref is None:
                raise ReportError(f"no {name} reference run of model set {names[key]} for tasks "
                                  f"{tasks_tag}; re-run the sweep to evaluate the parents")
            parents[name] = Row(name, float(lam), ref.run_id, dict(ref.metrics), ref.run_id)
            found.append(ref)
        # the pair's size: a reference's tag (a job that reused one has none)
        size = next((r.tags["parameters"] for r in [*found, *runs] if r.tags.get("parameters")),
                    None)
        experts: dict[str, Row] = {}  # an expert pool's references, the newest of each
        for r in tracker.references(tasks_tag, "1", None, runs[0].experiment_id or None,
                                    limit=1000):
            if r.tags.get("expert") and _model_set(r) == key:
                experts.setdefault(r.tags["expert"], Row(r.tags["expert"], 1.0, r.run_id,
                                                         dict(r.metrics), r.run_id))
        sweeps[names[key]] = Sweep(exp_name, run.run_id, parents, merges,
                                   int(size) if size and size.isdigit() else None,
                                   dict(found[0].params), experts, names[key], incomplete)
    return sweeps


def _model_set(run) -> str:
    """The model set a run belongs to: its ``model_set`` tag (older runs: the pair's name)."""
    return run.tags.get("model_set") or run.tags.get("pair", "?")


# what makes a reference the evaluation of a set's parent (as its fingerprint does): the
# model at that λ, the dtype and the tokenizer; a PT reference serves every set on that base
REFERENCE_KEYS = {"0": ("model.pt", "model.dtype", "model.tokenizer"),
                  "1": ("model.it", "model.dtype", "model.tokenizer")}


def _reference(tracker, tasks: str, lam: str, job):
    """The newest FINISHED reference at ``lam`` of ``job``'s model set on its tasks, or None."""
    for r in tracker.references(tasks, lam, None, job.experiment_id or None, limit=1000):
        if all(r.params.get(k) == job.params.get(k) for k in REFERENCE_KEYS[lam]):
            return r
    return None


def _set_names(by_set: dict[str, list]) -> dict[str, str]:
    """A name per model set: its pair's, and where two sets share it, the first model setting
    that differs, its value shortened to the last path part (``toy (it=…/it_copy)``)."""
    by_pair: dict[str, list[str]] = {}
    for key, runs in by_set.items():
        by_pair.setdefault(runs[0].tags.get("pair", "?"), []).append(key)
    names = {}
    for pair, keys in by_pair.items():
        params = [by_set[k][0].params for k in keys]
        differ = next((k for k in sorted(set().union(*params)) if k.startswith("model.")
                       and len({p.get(k) for p in params}) > 1), None)
        values = [str(p.get(differ)) if differ else k[:8] for k, p in zip(keys, params)]
        short = [f"…/{Path(v).name}" if "/" in v else v for v in values]
        if len(set(short)) < len(short):  # the same last part: the whole value
            short = values
        where = f"{differ.removeprefix('model.')}=" if differ else "set "
        for key, value in zip(keys, short):
            names[key] = pair if len(keys) == 1 else f"{pair} ({where}{value})"
    return names


def _unfinished(tracker, sweep, finished: list) -> str:
    """'' for a sweep that ran to its end with every job finished; else one line: what is
    missing (a grid's jobs without a run), what failed (with its reason) and why."""
    done = {c.tags.get("fingerprint") for c in finished}
    failed: dict[str, object] = {}  # the newest unfinished run per job that never finished
    for status in ("FAILED", "KILLED", "RUNNING"):
        for c in tracker.children(sweep.run_id, status):
            if c.tags.get("fingerprint") not in done:
                failed.setdefault(c.tags.get("fingerprint"), c)
    grid = _grid(sweep.tags.get("overrides", ""))
    axes = list(grid[0]) if grid else ["method", "lambda"]
    ran = [*finished, *failed.values()]
    missing = [job for job in grid if not any(_matches(c, job) for c in ran)]
    if sweep.status == "FINISHED" and not failed and not missing:
        return ""
    if sweep.status == "RUNNING":
        state = (f"is still running (process {sweep.tags.get('pid', '?')} on "
                 f"{sweep.tags.get('host', '?')})")
    else:
        state = (f"ended {sweep.status}" + (f" ({sweep.tags['failure_reason']})"
                                            if sweep.tags.get("failure_reason") else ""))
    parts = [f"{len(finished)} of {len(grid)} jobs finished" if grid
             else f"{len(finished)} jobs finished"]
    if failed:
        parts.append("failed: " + ", ".join(
            " ".join(f"{k}={_value(c, k)}" for k in axes)
            + f" ({(c.tags.get('failure_reason') or c.status)[:120]})" for c in failed.values()))
    if missing:
        parts.append("not run: " + ", ".join(" ".join(f"{k}={v}" for k, v in job.items())
                                             for job in missing))
    return (f"sweep {sweep.run_id} is incomplete: it {state}; " + "; ".join(parts)
            + "; run the same sweep command again to finish it (finished jobs are skipped)")


def _grid(overrides: str) -> list[dict[str, str]]:
    """A grid sweep's jobs, as {swept key: value}, from its parent's ``overrides`` tag; [] for
    a search (an interval) or overrides that cannot be read back."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides.split())
    except Exception:  # noqa: BLE001 - a tag cut at its length limit, or hand-edited
        return []
    swept = [o for o in parsed if o.is_sweep_override()]
    if not swept or not all(o.is_discrete_sweep() for o in swept):
        return []
    axes = {o.key_or_group: list(o.sweep_string_iterator()) for o in swept}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _value(run, key: str) -> str | None:
    """A job's value of a swept key: its method tag, its param (a group's ``name``); None
    where the run does not record it."""
    if key == "method":
        return run.tags.get("method")
    return run.params.get(key, run.params.get(f"{key}.name"))


def _matches(run, job: dict[str, str]) -> bool:
    """Whether ``run`` is the grid's ``job`` (a key the run does not record matches)."""
    def same(a: str | None, b: str) -> bool:
        try:
            return a is None or float(a) == float(b)
        except ValueError:
            return a == b
    return all(same(_value(run, k), v) for k, v in job.items())


def _rows_with_parents(sweep: Sweep, method: str) -> list[Row]:
    """A method's rows sorted by λ, the parents standing in for λ=0 and λ=1 where missing."""
    rows = {r.lam: r for r in sweep.merges if r.method == method}
    rows.setdefault(0.0, sweep.parents["PT"])
    rows.setdefault(1.0, sweep.parents["IT"])
    return [rows[lam] for lam in sorted(rows)]
