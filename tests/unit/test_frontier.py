"""Pareto sets, dominance and λ* on hand-made points, edge cases included."""

import math

from app.frontier import Point, dominance_over_it, dominates, lambda_star, pareto_front, peak_gain

PT = Point(0.0, acc=0.68, ece=0.08)
IT = Point(1.0, acc=0.60, ece=0.28)
GRID = [PT, Point(0.2, 0.70, 0.13), Point(0.5, 0.68, 0.17), Point(0.8, 0.63, 0.24), IT]


def test_dominance_is_strict_and_equal_points_do_not_dominate():
    assert dominates(Point(0.2, 0.7, 0.1), Point(0.5, 0.7, 0.2))
    assert not dominates(Point(0.2, 0.7, 0.1), Point(0.5, 0.7, 0.1))
    assert not dominates(Point(0.2, 0.8, 0.3), Point(0.5, 0.7, 0.1))


def test_pareto_front_keeps_ties_and_drops_dominated():
    front = pareto_front(GRID + [Point(0.25, 0.70, 0.13)])
    assert [p.lam for p in front] == [0.0, 0.2, 0.25]  # PT (lowest ECE), then the tied best


def test_single_point_is_its_own_front_and_lambda_star():
    only = [Point(0.3, 0.5, 0.2)]
    assert pareto_front(only) == only
    assert lambda_star(only, 0.2) == only[0]


def test_lambda_star_under_limits():
    assert lambda_star(GRID, 0.15).lam == 0.2
    assert lambda_star(GRID, 0.10).lam == 0.0
    assert lambda_star(GRID, 0.05) is None  # all infeasible


def test_dominance_over_it_and_recovered_calibration():
    dom = dominance_over_it(GRID, PT, IT)
    assert [d.point.lam for d in dom] == [0.2, 0.0, 0.5, 0.8]
    assert math.isclose(dom[0].acc_gain, 0.10)
    assert math.isclose(dom[0].ece_recovered, (0.28 - 0.13) / (0.28 - 0.08))


def test_peak_gain_over_the_better_parent():
    best, gain = peak_gain(GRID, PT, IT)
    assert best.lam == 0.2 and math.isclose(gain, 0.02)
    assert peak_gain([], PT, IT) is None
