"""Frontier maths over (accuracy, ECE) points: pure Python, no I/O.

Higher accuracy and lower ECE are better. A point dominates another when it is at least as good
on both and strictly better on one; equal points do not dominate each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Point:
    """One evaluated merge on one task."""

    lam: float
    acc: float
    ece: float
    method: str = ""


def dominates(a: Point, b: Point) -> bool:
    return a.acc >= b.acc and a.ece <= b.ece and (a.acc > b.acc or a.ece < b.ece)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point dominates, sorted by ECE (ties: all kept)."""
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.ece, -p.acc, p.lam))


def best(points: Sequence[Point]) -> Point:
    """The one rule for "best λ": the highest accuracy; ties: the lower ECE, then the smaller
    λ (the sweep summary, the λ* search summary and the report all use it)."""
    return min(points, key=lambda p: (-p.acc, p.ece, p.lam))


def lambda_star(points: Sequence[Point], ece_limit: float) -> Point | None:
    """The best point (``best``) among those with ECE ≤ limit, or None."""
    feasible = [p for p in points if p.ece <= ece_limit]
    return best(feasible) if feasible else None


@dataclass(frozen=True)
class Dominance:
    """How a merge improves on the IT parent."""

    point: Point
    acc_gain: float  # accuracy over IT
    ece_recovered: float  # share of the PT→IT ECE increase it removes (1 = back to PT's ECE)


def dominance_over_it(points: Sequence[Point], pt: Point, it: Point) -> list[Dominance]:
    """Merges that Pareto-dominate IT, best accuracy first."""
    rise = it.ece - pt.ece
    out = [Dominance(p, p.acc - it.acc, (it.ece - p.ece) / rise if rise > 0 else float("nan"))
           for p in points if dominates(p, it)]
    return sorted(out, key=lambda d: (-d.acc_gain, -d.ece_recovered))


def peak_gain(points: Sequence[Point], pt: Point, it: Point) -> tuple[Point, float] | None:
    """The most accurate merge and its accuracy gain over the better parent (may be ≤ 0)."""
    if not points:
        return None
    best = max(points, key=lambda p: (p.acc, -p.ece))
    return best, best.acc - max(pt.acc, it.acc)
