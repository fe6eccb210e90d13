"""The λ-free part of mergekit's sparsifying task-vector merges, one tensor at a time: which
elements of the task vector a method keeps (packed bits) and the factor its L1 rescale
multiplies them by.

For a merge of one fine-tuned model into its base, mergekit 0.1.5 computes per tensor
``delta = IT − PT`` in float32, masks it (TIES: the top-``density`` magnitudes; breadcrumbs:
between the smallest and the largest ``gamma`` of them; DARE: Bernoulli(``density``) draws;
DELLA: Bernoulli draws whose probability rises with the element's magnitude rank in its row),
rescales the kept elements by ‖delta‖₁ / ‖masked delta‖₁ where the method rescales (DARE,
DELLA), and adds λ times that to PT. Nothing of it depends on λ: computed once per (pair,
method, knobs, seed), each λ is one elementwise pass (``torch_ops.torch_task_vector``).

What is exact, and how:

- DARE's and DELLA's draws come from the global torch generator, seeded once as mergekit's
  ``--random-seed`` seeds it, one draw per element in row-major order, tensor after tensor in
  the order of mergekit's executor (``compat.merge_order``). torch's CPU Bernoulli kernel
  draws serially, so drawing chunk after chunk gives the same bits as one call. CUDA's
  generator advances per kernel launch, so on CUDA a tensor is drawn whole, as mergekit draws
  it; masks drawn on a GPU differ from masks drawn on a CPU for the same seed (in mergekit too).
- DELLA ranks within rows (``argsort`` along dim 1), so it runs block of rows by block of rows.
- The L1 sums are torch's own reduction over the whole tensor, whose order cannot be rebuilt
  from chunks: the float32 |delta| of the tensor being prepared is held meanwhile (first λ).
- TIES and breadcrumbs rank the whole tensor with torch's unstable sort, whose order among
  equal magnitudes cannot be rebuilt from chunks either: the same sort call runs on the same
  float32 magnitudes of the whole tensor (first λ; the sort's indices, 8 bytes per element of
  the largest tensor, set the peak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.merge.torch_ops import CHUNK

EPS = 1e-7  # mergekit's rescaled_masked_tensor: no rescale where either L1 norm is below it
# mergekit merge_method → (its sparsification, whether it rescales by default)
SPARSIFICATION = {
    "ties": ("magnitude", False),
    "breadcrumbs": ("magnitude_outliers", False),
    "breadcrumbs_ties": ("magnitude_outliers", False),
    "dare_ties": ("random", True),
    "dare_linear": ("random", True),
    "della": ("della_magprune", True),
    "della_linear": ("della_magprune", True),
}
CONSENSUS = {"ties", "dare_ties", "della", "breadcrumbs_ties"}  # TIES' sign election ("sum")
KNOBS = {"magnitude": (), "magnitude_outliers": ("gamma",), "random": (),
         "della_magprune": ("epsilon",)}  # per-model parameters besides weight and density


@dataclass(frozen=True)
class Sparsity:
    kind: str
    density: float
    rescale: bool
    gamma: float = 0.0
    epsilon: float = 0.0

    @property
    def random(self) -> bool:
        return self.kind in ("random", "della_magprune")


@dataclass
class Kept:
    """One tensor's λ-free state: the kept elements (packed bits, little order, as a numpy
    array, or a uint8 tensor on a CUDA merge device; None: all) and the rescale factor (a
    float32 scalar on the merge device; None: no rescale)."""

    bits: np.ndarray | torch.Tensor | None = None
    factor: torch.Tensor | None = None


def sparsity_of(method: str, entry: dict) -> Sparsity | None:
    """The sparsification of a mergekit method with the fine-tuned model's parameters."""
    if method not in SPARSIFICATION:
        return None
    kind, rescale = SPARSIFICATION[method]
    knobs = {k: float(entry[k]) for k in KNOBS[kind]}
    return Sparsity(kind, float(entry.get("density", 1.0)), rescale, **knobs)


def prepare(sparsity: Sparsity, pt: torch.Tensor, it: torch.Tensor,
            device: torch.device) -> Kept:
    """The kept elements and the rescale factor of one tensor (``pt``, ``it``: the parents'
    stored tensors, any dtype, on the host); for the random kinds, draws from the global
    generator now."""
    if sparsity.density >= 1:  # mergekit returns the task vector untouched, drawing nothing
        return Kept()
    magnitudes = _delta(pt, it, device).abs_()
    if sparsity.kind in ("magnitude", "magnitude_outliers"):
        return Kept(_pack(_ranked(sparsity, magnitudes.reshape(-1))))
    before = magnitudes.sum()
    draw = _dare if sparsity.kind == "random" else _della
    bits = draw(sparsity, magnitudes, device)  # and zeroes the dropped magnitudes
    if not sparsity.rescale:
        return Kept(bits)
    after = magnitudes.sum()
    if before < EPS or after < EPS:
        return Kept(bits)
    return Kept(bits, before / after)


def _ranked(sparsity: Sparsity, magnitudes: torch.Tensor) -> torch.Tensor:
    """Which elements mergekit's ``magnitude`` (the top ``density``) or ``magnitude_outliers``
    (above the smallest, below the largest ``gamma``) keeps: the same sort call on the same
    float32 magnitudes, so the same order among equal ones, without mergekit's float32 mask
    and masked copy (a kept exact zero adds +0 either way)."""
    n = magnitudes.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=magnitudes.device)
    if n == 0:
        return keep
    if sparsity.kind == "magnitude":
        keep[torch.argsort(magnitudes, descending=True)[:max(1, int(sparsity.density * n))]] = True
    else:
        target, top = int(sparsity.density * n), int(sparsity.gamma * n)
        bottom = max(0, n - target - top)
        keep[torch.sort(magnitudes, descending=False).indices[bottom:bottom + target]] = True
    return keep


def _delta(pt: torch.Tensor, it: torch.Tensor, device: torch.device) -> torch.Tensor:
    """IT − PT in float32 on ``device``, built chunk by chunk (no float32 parent copies)."""
    out = torch.empty(pt.shape, dtype=torch.float32, device=device)
    flat, a, b = out.view(-1), pt.reshape(-1), it.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        stop = min(start + CHUNK, flat.numel())
        flat[start:stop].copy_(b[start:stop]).sub_(
            a[start:stop].to(device=device, dtype=torch.float32))
    return out


def _pack(keep: torch.Tensor) -> np.ndarray:
    return np.packbits(keep.cpu().numpy().astype(bool), bitorder="little")


def _spans(n: int, device: torch.device, row: int = 1):
    """Spans of whole rows (``row`` elements each) to draw at once: about CHUNK elements on
    CPU (whole bytes of bits), the whole tensor on CUDA."""
    if device.type != "cpu":
        yield 0, n
        return
    step = max(8, CHUNK // row // 8 * 8) * row  # whole rows, a multiple of 8 elements
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _dare(sparsity: Sparsity, magnitudes: torch.Tensor, device: torch.device) -> np.ndarray:
    """mergekit's ``bernoulli``: keep each element with probability ``density``."""
    flat = magnitudes.view(-1)
    bits = np.empty((flat.numel() + 7) // 8, dtype=np.uint8)
    for start, stop in _spans(flat.numel(), device):
        mask = torch.bernoulli(torch.full((stop - start,), sparsity.density,
                                          dtype=torch.float32, device=device))
        flat[start:stop].mul_(mask)
        bits[start // 8:(stop + 7) // 8] = _pack(mask != 0)
    return bits


def _della(sparsity: Sparsity, magnitudes: torch.Tensor, device: torch.device) -> np.ndarray:
    """mergekit's ``della_magprune``: within each row (dim 1; a vector is one row), keep an
    element with probability ``density − ε + 2ε·rank/(n−1)``, rank by magnitude."""
    low, high = sparsity.density - sparsity.epsilon, sparsity.density + sparsity.epsilon
    if high >= 1 or low <= 0:
        raise ValueError("Epsilon must be chosen such that density +/- epsilon is in (0, 1)")
    rows = magnitudes if magnitudes.dim() >= 2 else magnitudes.unsqueeze(0)
    per_row = rows[0].numel()
    bits = np.empty((magnitudes.numel() + 7) // 8, dtype=np.uint8)
    for start, stop in _spans(magnitudes.numel(), device, per_row):
        block = rows[start // per_row:stop // per_row]
        ranks = torch.argsort(block, dim=1, descending=False).argsort(dim=1).to(
            torch.float32) + 1
        min_ranks = ranks.min(dim=1, keepdim=True).values
        max_ranks = ranks.max(dim=1, keepdim=True).values
        rank_norm = ((ranks - min_ranks) / (max_ranks - min_ranks)).clamp(0, 1)
        probs = (sparsity.density - sparsity.epsilon) + rank_norm * 2 * sparsity.epsilon
        mask = torch.bernoulli(probs).to(torch.float32)
        block.mul_(mask)
        bits[start // 8:(stop + 7) // 8] = _pack(mask.reshape(-1) != 0)
    return bits
