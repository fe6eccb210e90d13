"""Paired bootstrap over documents: against a direct recomputation of each draw, and on cases
whose answer is known."""

import numpy as np
import pytest

from app import paired
from app.calibration import expected_calibration_error


def runs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, size=(3, n))
    correct = (rng.uniform(size=(3, n)) < conf * np.array([[0.9], [0.7], [1.0]])).astype(float)
    return conf, correct


def test_every_draw_resamples_the_same_documents_for_every_run():
    conf, correct = runs()
    acc, ece = paired.resample(conf, correct, n_boot=50, seed=3, bins=10)
    assert acc.shape == ece.shape == (51, 3)
    # row 0: all documents, as the runs logged them
    assert acc[0] == pytest.approx(correct.mean(axis=1))
    assert ece[0, 1] == pytest.approx(expected_calibration_error(conf[1], correct[1], 10))
    # a draw, recomputed directly from the same seeded indices
    rng = np.random.default_rng(3)
    idx = rng.integers(0, conf.shape[1], size=(50, conf.shape[1]))[7]
    assert acc[8] == pytest.approx(correct[:, idx].mean(axis=1))
    assert ece[8, 2] == pytest.approx(expected_calibration_error(conf[2, idx], correct[2, idx],
                                                                 10))


def test_a_run_against_itself_differs_by_exactly_zero():
    conf, correct = runs()
    both = np.vstack([conf[:1], conf[:1]]), np.vstack([correct[:1], correct[:1]])
    acc, ece = paired.resample(*both, n_boot=200)
    d = paired.compare(acc, ece, 0, 1)
    assert (d.acc.value, d.acc.low, d.acc.high) == (0, 0, 0)
    assert (d.ece.value, d.ece.low, d.ece.high) == (0, 0, 0)
    assert not d.acc.significant and not d.dominates


def test_pairing_finds_a_small_gain_the_runs_own_intervals_miss():
    """Run a is run b plus 8 more right answers out of 400: unpaired 95% intervals overlap,
    the paired one is entirely above zero."""
    rng = np.random.default_rng(1)
    b = (rng.uniform(size=400) < 0.6).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:8]] = 1
    conf = np.full((2, 400), 0.6)
    acc, _ = paired.resample(conf, np.vstack([a, b]), n_boot=1000)
    gain = paired.difference(acc, 0, 1)
    assert gain.value == pytest.approx(0.02) and gain.significant and gain.low > 0
    alone = [paired.estimate(acc[:, r]) for r in (0, 1)]
    assert alone[0].low < alone[1].high  # each run's own interval: no separation


def test_domination_is_significant_only_where_each_improvement_is():
    sure = paired.Estimate(0.05, 0.02, 0.08)
    unsure = paired.Estimate(0.05, -0.01, 0.10)
    drop = paired.Estimate(-0.03, -0.05, -0.01)
    flat = paired.Estimate(0.0, -0.01, 0.01)
    assert paired.Comparison(sure, drop).dominates_significantly
    assert paired.Comparison(unsure, drop).dominates
    assert not paired.Comparison(unsure, drop).dominates_significantly
    assert paired.Comparison(flat, drop).dominates_significantly  # only ECE improves
    assert not paired.Comparison(paired.Estimate(-0.01, -0.03, 0.01), drop).dominates


def test_ece_recovered_carries_its_interval_and_is_one_at_pt():
    conf, correct = runs()
    conf[2] = np.clip(conf[2] + 0.2, 0, 1)  # "IT": overconfident
    acc, ece = paired.resample(conf, correct, n_boot=300)
    at_pt = paired.ece_recovered(ece, merge=0, pt=0, it=2)
    assert at_pt.value == pytest.approx(1.0) and at_pt.low == pytest.approx(1.0)
    share = paired.ece_recovered(ece, merge=1, pt=0, it=2)
    rise = ece[0, 2] - ece[0, 0]
    assert share.value == pytest.approx((ece[0, 2] - ece[0, 1]) / rise)
    assert share.low <= share.value <= share.high


def test_verdicts_need_both_paired_differences_significant():
    up, down = paired.Estimate(0.1, 0.05, 0.15), paired.Estimate(-0.1, -0.15, -0.05)
    wide = paired.Estimate(0.1, -0.05, 0.25)
    assert paired.paired_verdict(up, up) == "better"
    assert paired.paired_verdict(down, down) == "worse"
    assert paired.paired_verdict(up, wide) == "between"
    assert paired.paired_verdict(down, down, higher_is_better=False) == "better"


def test_documents_are_aligned_by_key_and_only_shared_ones_count():
    a = {("t", 1): (0.9, 1), ("t", 2): (0.6, 0), ("t", 3): (0.7, 1)}
    b = {("t", 3): (0.8, 0), ("t", 1): (0.5, 1)}
    conf, correct = paired.aligned([a, b])
    assert conf.tolist() == [[0.9, 0.7], [0.5, 0.8]] and correct.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="no document"):
        paired.resample(*paired.aligned([a, {("u", 1): (0.5, 1)}]))


def test_generative_runs_have_accuracy_differences_and_no_ece():
    correct = np.array([[1, 1, 0, 1], [0, 1, 0, 0]], dtype=float)
    acc, ece = paired.resample(np.full((2, 4), np.nan), correct, n_boot=20)
    assert paired.difference(acc, 0, 1).value == pytest.approx(0.5)
    assert np.isnan(ece).all()
