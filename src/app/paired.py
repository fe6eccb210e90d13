"""Paired statistics over documents: every run of an experiment sees the same documents, so a
claim about two runs ("this merge beats IT") is a statement about their per-document
difference, resampled once for both. Pure numpy, no I/O.

``resample`` draws the bootstrap's document indices once and computes every run's accuracy and
ECE on each draw (row 0: all documents, as logged); the functions after it turn those rows into
a difference, a share of the ECE rise recovered, or a verdict, each with its percentile
interval. A claim is *significant* when its 95% interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from app.calibration import expected_calibration_error

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic on all documents and its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.value:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def aligned(runs: Sequence[dict[tuple, tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) arrays of shape (runs, documents) over the documents every run
    scored, in one order; each run maps a document key to (confidence, correct)."""
    keys = sorted(set.intersection(*(set(r) for r in runs)), key=str)
    conf = np.array([[r[k][0] for k in keys] for r in runs], dtype=np.float64)
    correct = np.array([[r[k][1] for k in keys] for r in runs], dtype=np.float64)
    return conf.reshape(len(runs), len(keys)), correct.reshape(len(runs), len(keys))


def resample(conf: np.ndarray, correct: np.ndarray, n_boot: int = 1000, seed: int = 0,
             bins: int = 15, binning: str = "width",
             ece: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, ECE), each of shape (1 + n_boot, runs): row 0 on all documents, row b on the
    b-th bootstrap draw of documents, the same draw for every run. ``conf``/``correct``:
    (runs, documents); without confidences (NaN, a generative task) or ``ece=False``, ECE is
    NaN."""
    conf, correct = np.atleast_2d(conf), np.atleast_2d(correct)
    runs, n = correct.shape
    if n == 0:
        raise ValueError("no document is scored by every run")
    rng = np.random.default_rng(seed)
    draws = np.vstack([np.arange(n)[None, :], rng.integers(0, n, size=(n_boot, n))])
    acc = correct[:, draws].mean(axis=2).T  # (1 + n_boot, runs)
    eces = np.full_like(acc, np.nan)
    if ece and not np.isnan(conf).any():
        for b, idx in enumerate(draws):
            for r in range(runs):
                eces[b, r] = expected_calibration_error(conf[r, idx], correct[r, idx], bins,
                                                        binning)
    return acc, eces


def estimate(values: np.ndarray, level: float = LEVEL) -> Estimate:
    """Row 0 as the value, the other rows' percentiles as the interval."""
    boot = values[1:][np.isfinite(values[1:])]
    if len(boot) == 0:
        return Estimate(float(values[0]), float("nan"), float("nan"))
    low, high = np.percentile(boot, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Estimate(float(values[0]), float(low), float(high))


def difference(stat: np.ndarray, a: int, b: int) -> Estimate:
    """Run ``a``'s statistic minus run ``b``'s, paired draw by draw."""
    return estimate(stat[:, a] - stat[:, b])


def ece_recovered(ece: np.ndarray, merge: int, pt: int, it: int) -> Estimate:
    """The share of the PT→IT ECE rise the merge removes, (ECE_IT − ECE_merge) / (ECE_IT −
    ECE_PT), per draw (NaN where a draw has no rise)."""
    rise = ece[:, it] - ece[:, pt]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rise > 0, (ece[:, it] - ece[:, merge]) / rise, np.nan)
    return estimate(share)


@dataclass(frozen=True)
class Comparison:
    """A merge against one other run on one task: paired differences (merge − other)."""

    acc: Estimate
    ece: Estimate

    @property
    def dominates(self) -> bool:
        """Pareto-dominates on all documents: no worse on both, better on one."""
        return (self.acc.value >= 0 and self.ece.value <= 0
                and (self.acc.value > 0 or self.ece.value < 0))

    @property
    def dominates_significantly(self) -> bool:
        """Dominates, and each strict improvement claimed is significant: a gain's interval
        above zero or an ECE drop's below, and no significant loss on the other."""
        if not self.dominates:
            return False
        better = [e for e, sign in ((self.acc, 1), (self.ece, -1)) if sign * e.value > 0]
        return all(e.significant for e in better) and not (
            self.acc.high < 0 or (np.isfinite(self.ece.low) and self.ece.low > 0))


def compare(acc: np.ndarray, ece: np.ndarray, a: int, b: int) -> Comparison:
    return Comparison(difference(acc, a, b), difference(ece, a, b))


def paired_verdict(diff_pt: Estimate, diff_it: Estimate, higher_is_better: bool = True) -> str:
    """better / worse (than both parents: both paired differences the same way, each
    significant) or between / tied, from a merge's differences to PT and to IT."""
    sign = 1 if higher_is_better else -1
    if all(sign * d.low > 0 for d in (diff_pt, diff_it)):
        return "better"
    if all(sign * d.high < 0 for d in (diff_pt, diff_it)):
        return "worse"
    return "between"
