"""The selection/report split: disjoint, complete, stratified, the same for every run, and the
stopping rule of the λ* search."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.evaluate.selection import selected, split_metrics
from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import stop_reason

docs = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 10_000)),
                min_size=1, max_size=300, unique=True)


@settings(max_examples=200, deadline=None)
@given(docs=docs, share=st.floats(0.05, 0.95), seed=st.integers(0, 2 ** 31))
def test_no_document_is_in_both_sets_and_every_part_keeps_its_share(docs, share, seed):
    keys = list(docs)
    parts = [part for part, _ in docs]
    chosen = selected("t", keys, parts, share, seed)
    selection = {k for k, c in zip(keys, chosen) if c}
    report = {k for k, c in zip(keys, chosen) if not c}
    assert not selection & report and selection | report == set(keys)
    for part in set(parts):
        n = parts.count(part)
        took = sum(c for p, c in zip(parts, chosen) if p == part)
        if n >= 2:  # both sets get documents of every part, in the asked proportion
            assert 1 <= took <= n - 1 and abs(took - share * n) <= 1
    # a document's set depends on its key, not on the other documents or their order
    again = selected("t", keys[::-1], parts[::-1], share, seed)[::-1]
    assert again == chosen


def test_the_split_follows_its_seed_and_task():
    keys = list(range(200))
    a = selected("toy_mc", keys, None, 0.5, 0)
    assert sum(a) == 100
    assert a == selected("toy_mc", keys, None, 0.5, 0)
    assert a != selected("toy_mc", keys, None, 0.5, 1)
    assert a != selected("toy_gen", keys, None, 0.5, 0)


def test_each_set_is_scored_on_its_own_documents():
    chosen = [True, True, False, False, False]
    scores = [1, 0, 1, 1, 0]
    conf = [0.9, 0.8, 0.6, 0.7, 0.5]
    out = split_metrics(chosen, scores, conf, bins=10, binning="width", n_boot=200)
    assert out["selection"]["acc"] == 0.5 and out["report"]["acc"] == pytest.approx(2 / 3)
    assert out["selection"]["n"] == 2 and out["report"]["n"] == 3
    # selection: bins 0.8 (wrong) and 0.9 (right): |0 − 0.8|/2 + |1 − 0.9|/2
    assert out["selection"]["ece"] == pytest.approx(0.45)
    assert out["selection"]["acc_ci_low"] <= 0.5 <= out["selection"]["acc_ci_high"]
    assert "acc_ci_low" not in out["report"]
    assert "ece" not in split_metrics(chosen, scores, None, 10, "width")["report"]


def test_the_search_stops_on_a_flat_curve_and_goes_on_while_it_climbs():
    noise = 0.02
    flat = [(0.70, True, noise)] * 3 + [(0.70 + d, True, noise) for d in (0.005, -0.01, 0.01)]
    reason = stop_reason(flat, patience=3, warmup=3)
    assert reason == ("stopped after 6 trials: none of the last 3 beat the best before it by "
                      "more than the noise (±0.0200); best 0.7100")
    assert stop_reason(flat[:5], patience=3, warmup=3) is None  # only two after the warm-up
    steep = [(0.5, True, noise), (0.6, True, noise), (0.62, True, noise)] + [
        (0.62 + 0.05 * i, True, noise) for i in range(1, 6)]
    assert stop_reason(steep, patience=3, warmup=3) is None
    # gains only count where feasible; a run of infeasible trials stops the search too
    stuck = [(0.5, True, noise)] * 3 + [(0.9, False, noise)] * 3
    assert stop_reason(stuck, 3, 3).endswith("best 0.5000")
    none = [(0.9, False, 0.0)] * 6
    assert "found no feasible" in stop_reason(none, 3, 3)
    assert stop_reason(flat, patience=0, warmup=3) is None  # 0: never stops early
    # minimising: a drop is the gain
    falling = [(0.3, True, 0.01), (0.2, True, 0.01), (0.1, True, 0.01)] + [
        (0.1 - 0.05 * i, True, 0.01) for i in range(1, 4)]
    assert stop_reason(falling, 3, 3, maximize=False) is None
