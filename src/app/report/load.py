"""A sweep as the report reads it from the store: its merges and parent references per pair
(``load_sweep``), and the queries every part of the report shares (a method's path over λ)."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def evidence(self, reader):
        """Paired comparisons over this sweep's sample artifacts, binned and seeded as the
        runs computed their ECE and intervals."""
        from app.report.evidence import Evidence

        p = self.params
        return Evidence(reader.download, n_boot=int(p.get("task.bootstrap") or 0) or 1000,
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
    """The sweep's FINISHED children and the matching parent references, per pair (one entry
    for a sweep over one pair; several for a sweep over a family of pairs)."""
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
    by_pair: dict[str, list] = {}
    for c in children:
        by_pair.setdefault(c.tags.get("pair", "?"), []).append(c)
    sweeps = {}
    for pair, runs in by_pair.items():
        merges = [Row(c.tags["method"], float(c.params["lambda"]), c.run_id, dict(c.metrics),
                      c.tags.get("reused_from", c.run_id)) for c in runs]
        tasks_tag = runs[0].tags.get("tasks")
        parents, found = {}, []
        for name, lam in (("PT", "0"), ("IT", "1")):
            refs = tracker.references(tasks_tag, lam, None if pair == "?" else pair,
                                      runs[0].experiment_id or None)
            if not refs:
                raise ReportError(f"no {name} reference run of pair {pair} for tasks {tasks_tag}"
                                  f"; re-run the sweep to evaluate the parents")
            parents[name] = Row(name, float(lam), refs[0].run_id, dict(refs[0].metrics),
                                refs[0].run_id)
            found.append(refs[0])
        # the pair's size: a reference's tag (a job that reused one has none)
        size = next((r.tags["parameters"] for r in [*found, *runs] if r.tags.get("parameters")),
                    None)
        experts: dict[str, Row] = {}  # an expert pool's references, the newest of each
        for r in tracker.references(tasks_tag, "1", None if pair == "?" else pair,
                                    runs[0].experiment_id or None, limit=1000):
            if r.tags.get("expert"):
                experts.setdefault(r.tags["expert"], Row(r.tags["expert"], 1.0, r.run_id,
                                                         dict(r.metrics), r.run_id))
        sweeps[pair] = Sweep(exp_name, run.run_id, parents, merges,
                             int(size) if size and size.isdigit() else None,
                             dict(found[0].params), experts)
    return sweeps


def _rows_with_parents(sweep: Sweep, method: str) -> list[Row]:
    """A method's rows sorted by λ, the parents standing in for λ=0 and λ=1 where missing."""
    rows = {r.lam: r for r in sweep.merges if r.method == method}
    rows.setdefault(0.0, sweep.parents["PT"])
    rows.setdefault(1.0, sweep.parents["IT"])
    return [rows[lam] for lam in sorted(rows)]
