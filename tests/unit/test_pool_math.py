"""The expert-pool rules against their papers' formulas on hand-checkable tensors, and against
independent computations (RegMean's closed form vs a least-squares solve of its regression)."""

import pytest
import torch

from app.merge import pool_math


def test_fisher_merge_weights_each_element_by_the_experts_fisher():
    taus = [torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3.0, 0.0, 8.0])]
    fishers = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 2.0, 0.0])]
    out = pool_math.fisher_merge(taus, fishers, [1.0, 1.0])
    # (1·1 + 3·3)/(1+3) = 2.5; only expert 2 has Fisher → 0; no Fisher at all → the mean 6
    assert out.tolist() == [2.5, 0.0, 6.0]
    weighted = pool_math.fisher_merge(taus, fishers, [2.0, 1.0])
    assert weighted[0].item() == pytest.approx((2 * 1 * 1 + 1 * 3 * 3) / (2 * 1 + 1 * 3))


def test_one_expert_at_full_weight_is_that_expert_for_fisher_and_regmean():
    gen = torch.Generator().manual_seed(0)
    taus = [torch.randn(4, 3, generator=gen) for _ in range(3)]
    fishers = [torch.rand(4, 3, generator=gen) for _ in range(3)]
    torch.testing.assert_close(pool_math.fisher_merge(taus, fishers, [1.0, 0.0, 0.0]), taus[0],
                               rtol=1e-6, atol=0)  # F·τ/F: float32 rounding only
    xs = [torch.randn(20, 3, generator=gen) for _ in range(3)]
    grams = [x.T @ x / len(x) for x in xs]
    torch.testing.assert_close(pool_math.regmean_merge(taus, grams, [1.0, 0.0, 0.0], 0.7),
                               taus[0], rtol=1e-5, atol=1e-5)


def test_regmean_closed_form_is_the_least_squares_solution_of_its_regression():
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (30, 50)]
    ws = [torch.randn(2, 5, generator=gen, dtype=torch.float64) for _ in xs]
    weights = [1.0, 2.0]
    grams = [x.T @ x / len(x) for x in xs]
    merged = pool_math.regmean_merge(ws, grams, weights, alpha=1.0).double()
    # min_W Σ_e (w_e/n_e)·‖X_e Wᵀ − X_e W_eᵀ‖²: stack the rows, each scaled by √(w_e/n_e)
    scale = [(w / len(x)) ** 0.5 for w, x in zip(weights, xs)]
    a = torch.cat([s * x for s, x in zip(scale, xs)])
    b = torch.cat([s * x @ w.T for s, x, w in zip(scale, xs, ws)])
    oracle = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(merged, oracle, rtol=1e-5, atol=1e-5)


def test_regmean_alpha_shrinks_only_the_off_diagonal_and_zero_is_averaging():
    gram = torch.tensor([[4.0, 2.0], [2.0, 9.0]])
    assert pool_math.reduce_off_diagonal(gram, 0.5).tolist() == [[4.0, 1.0], [1.0, 9.0]]
    # with α → 0 and equal diagonals the Grams cancel: the mean of the task vectors
    taus = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])]
    same = [torch.eye(2), torch.eye(2)]
    assert pool_math.regmean_merge(taus, same, [1.0, 1.0], 1e-9).tolist() == [[2.0, 4.0]]


def test_localize_and_stitch_keeps_the_top_share_and_shares_overlaps():
    magnitudes = [torch.tensor([1.0, 5.0, 3.0]), torch.tensor([4.0, 2.0])]
    # top 40% of 5 entries = 2 entries: 5 and 4
    assert pool_math.top_fraction_threshold(magnitudes, 0.4) == 4.0
    taus = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 6.0, 7.0])]
    masks = [torch.tensor([True, True, False]), torch.tensor([False, True, False])]
    # entry 0: expert 1 alone; entry 1: both, shared equally; entry 2: no mask → 0
    assert pool_math.stitch(taus, masks, [1.0, 1.0]).tolist() == [1.0, 4.0, 0.0]
    assert pool_math.stitch(taus, masks, [1.0, 3.0]).tolist() == [1.0, (2 + 18) / 4, 0.0]


def test_consensus_keeps_the_multi_task_vector_where_two_tall_masks_agree():
    taus = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, -0.1, 0.0]),
            torch.tensor([1.0, 0.0, 2.0])]
    # τ_MTL = [3, 0.9, 2]; TALL (f=0.4): |τ_e| > 0.4·|τ_MTL − τ_e|
    masks = pool_math.tall_masks(taus, [1.0, 1.0, 1.0], 0.4)
    assert [m.tolist() for m in masks] == [[True, True, False], [True, False, False],
                                           [True, False, True]]
    out = pool_math.consensus_merge(taus, [1.0, 1.0, 1.0], 0.4, 2)
    assert out.tolist() == pytest.approx([3.0, 0.0, 0.0])
    # one expert at full weight, a consensus of one: that expert
    alone = pool_math.consensus_merge(taus, [1.0, 0.0, 0.0], 0.4, 1)
    assert alone.tolist() == taus[0].tolist()
