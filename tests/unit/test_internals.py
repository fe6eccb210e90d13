"""Better/between/worse counts and the task–probe correlations on hand-checkable values,
against scipy's own Pearson and Spearman and a direct bootstrap."""

import math

import numpy as np
import pytest
from scipy import stats

from app.report.internals import (behaviour_keys, correlation, correlations, phenomenon_keys,
                                  verdict, verdict_counts)


@pytest.mark.parametrize("value,pt,it,expect", [
    (0.9, 0.8, 0.7, "better"), (0.6, 0.8, 0.7, "worse"), (0.75, 0.8, 0.7, "between"),
    (0.8, 0.8, 0.7, "between"),  # a tie with the better parent is not better than both
    (0.7, 0.8, 0.7, "between"), (0.5, 0.5, 0.5, "between"), (0.51, 0.5, 0.5, "better"),
])
def test_a_merge_is_better_than_both_worse_than_both_or_between(value, pt, it, expect):
    assert verdict(value, pt, it) == expect


def test_units_are_parts_where_a_task_has_them_and_phenomena_not_probe_tasks():
    m = {"bbh/acc": .5, "bbh/dyck/acc": .4, "bbh/navigate/acc": .6, "bbh/ece": .1,
         "gsm/acc": .3, "gsm/acc_ci_low": .2, "probe/entity_kind/acc": .9,
         "probe/entity_kind/control_acc": .4, "probe/morphology/acc": .9, "mean/acc": .4}
    assert behaviour_keys(m, ["bbh", "gsm"]) == ["bbh/dyck/acc", "bbh/navigate/acc", "gsm/acc"]
    assert phenomenon_keys(m) == ["probe/morphology/acc"]


def test_verdicts_are_counted_over_every_merge_and_unit():
    pt, it = {"a": 0.5, "b": 0.2}, {"a": 0.7, "b": 0.4}
    merges = [{"a": 0.8, "b": 0.3}, {"a": 0.6, "b": 0.1}, {"a": 0.4}]
    assert verdict_counts(merges, pt, it, ["a", "b"]) == {"better": 1, "between": 2, "worse": 2}


def test_correlations_equal_scipys_and_the_interval_is_a_direct_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    y[3] = y[5]  # a tie, which Spearman ranks by their mean
    c = correlation(x, y, n_boot=300, seed=7)
    assert c.n == 12
    assert c.pearson == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert c.spearman == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    draws = np.random.default_rng(7)
    boots = []
    for _ in range(300):
        i = draws.integers(0, 12, 12)
        boots.append(stats.pearsonr(x[i], y[i]).statistic)
    assert c.pearson_ci == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])), abs=1e-9)
    assert c.pearson_ci[0] <= c.pearson <= c.pearson_ci[1]


def test_known_answers_perfect_inverse_and_constant():
    up = correlation([1, 2, 3, 4], [10, 20, 30, 40], n_boot=50)
    assert up.pearson == pytest.approx(1) and up.spearman == pytest.approx(1)
    down = correlation([1, 2, 3, 4], [9, 4, 1, 0], n_boot=50)
    assert down.spearman == pytest.approx(-1) and down.pearson < -0.9
    flat = correlation([1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], n_boot=50)
    assert math.isnan(flat.pearson) and math.isnan(flat.pearson_ci[0])  # no correlation to give


def test_a_pair_rests_only_on_merges_that_have_both_values():
    merges = [{"t/acc": 0.1, "probe/p/acc": 0.2}, {"t/acc": 0.2}, {"t/acc": 0.3,
                                                                    "probe/p/acc": 0.5},
              {"t/acc": 0.4, "probe/p/acc": 0.6}]
    [(key, c)] = correlations(merges, ["t/acc"], ["probe/p/acc"], n_boot=20).items()
    assert key == ("t/acc", "probe/p/acc") and c.n == 3
