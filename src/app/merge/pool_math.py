"""The merge rules mergekit lacks, as pure functions over one tensor's task vectors.

Every rule returns a merged task vector ``τ*`` (float32, the shape of the parameter) from the
experts' task vectors ``τ_e = θ_e − θ_base``, their weights ``w_e`` (``model.experts[].weight``)
and, for the data-dependent rules, their statistics; the job's model is ``θ_base + λ·τ*``, so
λ keeps its meaning (0 is the base) and λ=1 is the method as its paper defines it.

- Fisher merging (Matena & Raffel 2022): ``τ* = Σ w_e F_e τ_e / Σ w_e F_e`` elementwise, with
  ``F_e`` the expert's diagonal Fisher; where every weighted Fisher is 0, the weighted mean.
- RegMean (Jin et al. 2023), a linear layer's weight ``W`` (out × in) with ``G_e`` the Gram
  of its inputs: ``τ*ᵀ = (Σ w_e G̃_e)⁻¹ Σ w_e G̃_e τ_eᵀ``, ``G̃ = diag(G) + α·(G − diag(G))``;
  every other tensor the weighted mean. (The base drops out: ``(ΣG̃)⁻¹ΣG̃_e θ_base = θ_base``.)
- Localize-and-Stitch (He et al. 2024): masks ``γ_e`` (top-k of ``|τ_e|``, or trained), then
  ``τ* = Σ (w_e γ_e / Σ_j w_j γ_j) τ_e`` where any mask holds (overlaps share), 0 elsewhere.
- Consensus TA (Wang et al. 2024): the multi-task vector ``τ_MTL = Σ w_e τ_e``, TALL masks
  ``m_e = |w_e τ_e| > f·|τ_MTL − w_e τ_e|``, and ``τ* = τ_MTL`` where at least ``k`` masks
  agree, 0 elsewhere.
"""

from __future__ import annotations

import torch


def weighted_mean(taus: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    out = torch.zeros_like(taus[0], dtype=torch.float32)
    for tau, w in zip(taus, weights):
        out.add_(tau.float(), alpha=w / total if total else 0.0)
    return out


def _scored_mean(taus: list[torch.Tensor], scores: list[torch.Tensor], weights: list[float],
                 fallback) -> torch.Tensor:
    """``Σ w_e s_e τ_e / Σ w_e s_e`` elementwise; ``fallback`` where every ``w_e s_e`` is 0."""
    num = torch.zeros_like(taus[0], dtype=torch.float32)
    den = torch.zeros_like(num)
    for tau, score, w in zip(taus, scores, weights):
        ws = score.float() * w
        num.add_(ws * tau.float())
        den.add_(ws)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(torch.float32).tiny), fallback)


def fisher_merge(taus: list[torch.Tensor], fishers: list[torch.Tensor],
                 weights: list[float]) -> torch.Tensor:
    return _scored_mean(taus, fishers, weights, weighted_mean(taus, weights))


def reduce_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``diag(G) + α·(G − diag(G))``: RegMean's shrinking of the off-diagonal terms."""
    diagonal = torch.diag(torch.diagonal(gram))
    return diagonal + alpha * (gram - diagonal)


def regmean_merge(taus: list[torch.Tensor], grams: list[torch.Tensor], weights: list[float],
                  alpha: float) -> torch.Tensor:
    """One linear layer's merged task vector (out × in) from the Grams of its inputs (in × in)."""
    lhs = sum(w * reduce_off_diagonal(g.double(), alpha) for g, w in zip(grams, weights))
    rhs = sum(w * reduce_off_diagonal(g.double(), alpha) @ t.double().T
              for g, t, w in zip(grams, taus, weights))
    solution, info = torch.linalg.solve_ex(lhs, rhs)
    if int(info) != 0:  # a singular system (inputs that are always 0): the least-norm solution
        solution = torch.linalg.pinv(lhs) @ rhs
    return solution.T.float().contiguous()


def top_fraction_threshold(magnitudes: list[torch.Tensor], keep: float) -> float:
    """The magnitude above which the top ``keep`` share of all entries lies (over every
    tensor at once, as Localize-and-Stitch localises over the whole model)."""
    flat = torch.cat([m.reshape(-1).float() for m in magnitudes])
    k = max(1, int(round(keep * flat.numel())))
    return float(torch.topk(flat, k, sorted=False).values.min())


def stitch(taus: list[torch.Tensor], masks: list[torch.Tensor],
           weights: list[float]) -> torch.Tensor:
    return _scored_mean(taus, masks, weights, torch.zeros((), dtype=torch.float32))


def tall_masks(taus: list[torch.Tensor], weights: list[float],
               factor: float) -> list[torch.Tensor]:
    scaled = [t.float() * w for t, w in zip(taus, weights)]
    multi = torch.stack(scaled).sum(0)
    return [s.abs() > factor * (multi - s).abs() for s in scaled]


def consensus_merge(taus: list[torch.Tensor], weights: list[float], factor: float,
                    min_agree: int) -> torch.Tensor:
    multi = sum(t.float() * w for t, w in zip(taus, weights))
    agree = torch.stack(tall_masks(taus, weights, factor)).sum(0)
    return torch.where(agree >= min_agree, multi, 0.0)
