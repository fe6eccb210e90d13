"""Paired evidence for the claims the report and the λ* search make: each run's per-document
outcomes read back from its ``samples/<task>.jsonl`` artifact and compared with
``app.paired`` (documents resampled once for all the runs compared).

A document is keyed by its leaf and lm-eval id; its outcome is (confidence, correct) for a
calibrated task, (NaN, score) for a generative one. ``subset`` keeps one document set
(``selection`` or ``report``, ``app.evaluate.selection``), or one part (``part:<name>``).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app import paired

Outcomes = dict[tuple, tuple[float, float]]


def outcomes(rows: list[dict], task: str, subset: str | None = None) -> Outcomes:
    """Per document (leaf, id): (confidence or NaN, correct or score), over ``subset``."""
    out = {}
    for r in rows:
        if subset is not None and subset != (f"part:{r.get('part')}" if subset.startswith(
                "part:") else r.get("set")):
            continue
        correct = float(r["correct"]) if "correct" in r else float(r["score"])
        out[(r.get("task", task), r["doc_id"])] = (float(r.get("confidence", math.nan)),
                                                    correct)
    return out


@dataclass(frozen=True)
class AgainstParents:
    """A merge on one task and document set, each difference paired over documents."""

    vs_it: paired.Comparison
    vs_pt: paired.Comparison
    ece_recovered: paired.Estimate
    n: int  # documents compared


class Evidence:
    """Outcomes of a store's runs, read once each, and the comparisons over them."""

    def __init__(self, download: Callable[[str, str, str], str], n_boot: int = 1000,
                 seed: int = 0, bins: int = 15, binning: str = "width"):
        self.download, self.n_boot, self.seed = download, n_boot, seed
        self.bins, self.binning = bins, binning
        self._rows: dict[tuple[str, str], list[dict]] = {}
        self._compared: dict[tuple, AgainstParents] = {}  # the report asks some twice

    def rows(self, run_id: str, task: str) -> list[dict]:
        if (run_id, task) not in self._rows:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(self.download(run_id, f"samples/{task}.jsonl", tmp))
                self._rows[(run_id, task)] = [json.loads(line) for line in
                                              path.read_text().splitlines() if line.strip()]
        return self._rows[(run_id, task)]

    def against_parents(self, merge: str, pt: str, it: str, task: str,
                        subset: str | None = None) -> AgainstParents:
        """``merge`` − IT and ``merge`` − PT (accuracy, ECE) and the share of the PT→IT ECE
        rise recovered, on the documents all three scored (in ``subset``)."""
        key = (merge, pt, it, task, subset)
        if key not in self._compared:
            self._compared[key] = self._against_parents(*key)
        return self._compared[key]

    def _against_parents(self, merge: str, pt: str, it: str, task: str,
                         subset: str | None) -> AgainstParents:
        conf, correct = paired.aligned([outcomes(self.rows(r, task), task, subset)
                                        for r in (merge, pt, it)])
        acc, ece = paired.resample(conf, correct, self.n_boot, self.seed, self.bins,
                                   self.binning)
        return AgainstParents(paired.compare(acc, ece, 0, 2), paired.compare(acc, ece, 0, 1),
                              paired.ece_recovered(ece, 0, 1, 2), correct.shape[1])


def verdict(evidence: "Evidence", merge: str, pt: str, it: str, task: str,
            subset: str | None = None) -> str:
    """better / worse than both parents on accuracy, each paired difference significant, or
    between (``app.paired.paired_verdict``), over ``subset``'s documents."""
    conf, correct = paired.aligned([outcomes(evidence.rows(r, task), task, subset)
                                    for r in (merge, pt, it)])
    acc, _ = paired.resample(conf, correct, evidence.n_boot, evidence.seed, ece=False)
    return paired.paired_verdict(paired.difference(acc, 0, 1), paired.difference(acc, 0, 2))


def describe(d: AgainstParents) -> str:
    """``vs IT: Δacc … [ … ], ΔECE … [ … ]; vs PT: …; ECE rise recovered …`` (paired, 95%)."""
    def side(c: paired.Comparison) -> str:
        text = f"Δacc {c.acc}"
        if math.isfinite(c.ece.value):
            text += f", ΔECE {c.ece}"
        return text

    text = f"vs IT: {side(d.vs_it)}; vs PT: {side(d.vs_pt)}"
    if math.isfinite(d.ece_recovered.value):
        r = d.ece_recovered
        text += f"; ECE rise recovered {r.value:.0%} [{r.low:.0%}, {r.high:.0%}]"
    return text + f" ({d.n} documents, paired 95%)"
