"""Calibration maths against hand-computed cases and torchmetrics as an independent oracle."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from app import calibration as cal


def test_ece_hand_computed():
    # 4 bins. Bin [0.25,0.5): conf .3,.4 -> mean .35, acc .5 -> gap .15, weight 2/5
    # bin [0.75,1]: conf .8,.9,1.0 -> mean .9, acc 2/3 -> gap .2333.., weight 3/5
    conf = np.array([0.3, 0.4, 0.8, 0.9, 1.0])
    correct = np.array([1, 0, 1, 1, 0], dtype=bool)
    expected = 2 / 5 * 0.15 + 3 / 5 * abs(0.9 - 2 / 3)
    assert cal.expected_calibration_error(conf, correct, bins=4) == pytest.approx(expected, abs=1e-12)
    assert cal.maximum_calibration_error(conf, correct, bins=4) == pytest.approx(0.9 - 2 / 3)


def test_bin_convention_left_closed_and_one_in_last_bin():
    idx = cal.bin_index(np.array([0.0, 0.25, 0.2499, 0.5, 1.0]), 4)
    assert idx.tolist() == [0, 1, 0, 2, 3]


def test_perfectly_calibrated_and_overconfident():
    conf = np.full(1000, 0.7)
    correct = np.arange(1000) < 700
    assert cal.expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)
    assert cal.expected_calibration_error(np.full(1000, 0.99), correct) == pytest.approx(0.29)


@pytest.mark.parametrize("bins", [5, 15, 20])
@pytest.mark.parametrize("n_choices", [2, 4, 10])
def test_ece_matches_torchmetrics(bins, n_choices):
    rng = np.random.default_rng(bins * 100 + n_choices)
    logits = rng.normal(size=(500, n_choices)) * rng.uniform(0.2, 4.0, size=(500, 1))
    gold = rng.integers(0, n_choices, size=500)
    conf, correct = cal.top_label(logits, gold)
    ours = cal.expected_calibration_error(conf, correct, bins)
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1)
    oracle = multiclass_calibration_error(probs, torch.tensor(gold), num_classes=n_choices,
                                          n_bins=bins, norm="l1")
    assert ours == pytest.approx(float(oracle), abs=1e-6)
    oracle_max = multiclass_calibration_error(probs, torch.tensor(gold), num_classes=n_choices,
                                              n_bins=bins, norm="max")
    assert cal.maximum_calibration_error(conf, correct, bins) == pytest.approx(float(oracle_max), abs=1e-6)


def test_brier_nll_and_metrics_with_varying_choices():
    logliks = [[-1.0, -2.0], [-0.5, -0.5, -3.0], [-4.0, -1.0, -2.0, -3.0]]
    gold = [0, 2, 1]
    probs = [np.exp(x) / np.exp(x).sum() for x in map(np.array, logliks)]
    brier = np.mean([np.sum((p - np.eye(len(p))[g]) ** 2) for p, g in zip(probs, gold)])
    nll = np.mean([-np.log(p[g]) for p, g in zip(probs, gold)])
    m = cal.calibration_metrics(logliks, gold, bins=10)
    assert m["brier"] == pytest.approx(brier)
    assert m["nll"] == pytest.approx(nll)
    assert m["acc"] == pytest.approx(2 / 3)  # sample 2 ties -> argmax picks choice 0, wrong
    assert m["mean_conf"] == pytest.approx(np.mean([p.max() for p in probs]))
    assert m["n"] == 3


def test_softmax_is_stable_for_large_logliks():
    p = cal.choice_probabilities([-1000.0, -1001.0])
    assert p.sum() == pytest.approx(1.0) and p[0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_empty_and_bad_bins_raise():
    with pytest.raises(ValueError):
        cal.calibration_metrics([], [])
    with pytest.raises(ValueError):
        cal.bin_index(np.array([0.5]), 0)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_samples():
    rng = np.random.default_rng(7)

    def sample(n):
        conf = rng.uniform(0.3, 1.0, n)
        return conf, rng.uniform(size=n) < conf - 0.1  # overconfident by ~0.1

    widths = {}
    for n in (200, 5000):
        conf, correct = sample(n)
        ci = cal.bootstrap_ci(conf, correct, bins=15, n_boot=500, seed=0)
        ece = cal.expected_calibration_error(conf, correct, 15)
        assert ci["acc"][0] <= correct.mean() <= ci["acc"][1]
        assert ci["ece"][0] <= ece <= ci["ece"][1]
        widths[n] = (ci["acc"][1] - ci["acc"][0], ci["ece"][1] - ci["ece"][0])
    assert widths[5000][0] < widths[200][0] / 3 and widths[5000][1] < widths[200][1] / 2
    assert cal.bootstrap_ci(conf, correct, seed=3) == cal.bootstrap_ci(conf, correct, seed=3)


def test_bootstrap_ece_matches_a_direct_recomputation():
    # one resample computed by hand equals the vectorised computation's resample
    conf = np.array([0.9, 0.6, 0.8, 0.55, 0.95, 0.7])
    correct = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    rng = np.random.default_rng(0)
    draw = rng.integers(0, 6, size=(1, 6))[0]
    direct = cal.expected_calibration_error(conf[draw], correct[draw], 15)
    ci = cal.bootstrap_ci(conf, correct, bins=15, n_boot=1, level=0.0, seed=0)
    assert ci["ece"][0] == pytest.approx(direct)


def test_equal_mass_bins_hold_equal_counts_and_match_a_hand_computation():
    conf = np.array([0.95, 0.3, 0.6, 0.9, 0.35, 0.62])
    correct = np.array([1, 0, 1, 0, 1, 1], dtype=bool)
    idx = cal.mass_bin_index(conf, 3)
    assert np.bincount(idx).tolist() == [2, 2, 2]
    assert idx.tolist() == [2, 0, 1, 2, 0, 1]  # sorted by confidence, cut in runs of 2
    # bins {.3,.35}: conf .325 acc .5; {.6,.62}: .61 vs 1; {.9,.95}: .925 vs .5
    expected = (abs(0.5 - 0.325) + abs(1 - 0.61) + abs(0.5 - 0.925)) / 3
    assert cal.expected_calibration_error(conf, correct, 3, "mass") == pytest.approx(expected)
    assert cal.maximum_calibration_error(conf, correct, 3, "mass") == pytest.approx(0.425)
    m = cal.calibration_metrics([[0.0, -1.0], [-2.0, 0.0]], [0, 0], bins=2, binning="mass")
    assert m["ece"] == pytest.approx(cal.expected_calibration_error(
        *cal.top_label([[0.0, -1.0], [-2.0, 0.0]], [0, 0]), 2, "mass"))
    with pytest.raises(ValueError):
        cal.expected_calibration_error(conf, correct, 3, "quantile")


def test_equal_mass_differs_from_equal_width_on_skewed_confidences():
    rng = np.random.default_rng(5)
    conf = 1 - rng.exponential(0.05, 2000).clip(0, 0.7)  # most mass near 1
    correct = rng.uniform(size=2000) < conf - 0.05
    width = cal.reliability(conf, correct, 10, "width")
    mass = cal.reliability(conf, correct, 10, "mass")
    assert (width["count"] == 0).sum() >= 3 and (mass["count"] == 200).all()
    assert mass["edges"][0] == 0 and mass["edges"][-1] == 1
    assert np.all(np.diff(mass["edges"]) >= 0)
    ci = cal.bootstrap_ci(conf, correct, 10, n_boot=300, binning="mass")
    ece = cal.expected_calibration_error(conf, correct, 10, "mass")
    assert ci["ece"][0] <= ece <= ci["ece"][1]


def test_top_label_brier_is_the_squared_gap_of_the_predicted_choice():
    logliks = [[-1.0, -2.0], [-0.2, -3.0, -0.1], [-4.0, -1.0, -2.0, -3.0, -9.0]]
    gold = [1, 2, 1]
    probs = [np.exp(x) / np.exp(x).sum() for x in map(np.array, logliks)]
    direct = np.mean([(p.max() - float(np.argmax(p) == g)) ** 2 for p, g in zip(probs, gold)])
    m = cal.calibration_metrics(logliks, gold, bins=10)
    assert m["brier_top"] == pytest.approx(direct, abs=1e-12)
    full = np.mean([np.sum((p - np.eye(len(p))[g]) ** 2) for p, g in zip(probs, gold)])
    assert m["brier"] == pytest.approx(full, abs=1e-12) and m["brier"] > m["brier_top"]


def test_bootstrap_mean_interval_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(3)
    widths = []
    for n in (100, 4000):
        scores = (rng.uniform(size=n) < 0.4).astype(float)
        low, high = cal.bootstrap_mean_ci(scores, n_boot=500, seed=1)
        assert low <= scores.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4
    scores = [1.0, 0.0, 1.0]
    assert cal.bootstrap_mean_ci(scores, seed=2) == cal.bootstrap_mean_ci(scores, seed=2)
