"""mergekit's elementwise merge arithmetic in torch, chunk by chunk (the reference the fused
kernels are checked against, and the path where they do not apply).

Every function reads float32 copies of one work buffer's length of elements at a time into two
caller-owned work buffers, computes in mergekit 0.1.5's order and rounds once into ``out``'s
dtype. The operations are elementwise (the sum over fine-tunes runs along the models' axis), so
the chunk length changes no bit: ``CHUNK`` on CPU (the buffers stay in cache), up to
``DEVICE_CHUNK`` on a GPU, where every source is on the device and each launch should be large.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch

CHUNK = 1 << 20  # elements per float32 work buffer on CPU (4 MB: stays in cache)
DEVICE_CHUNK = 1 << 26  # at most, on a GPU (256 MB each: a few launches per tensor)
Buffers = tuple[torch.Tensor, torch.Tensor]


def new_buffers(device: str | torch.device = "cpu", size: int = CHUNK) -> Buffers:
    """Two float32 work buffers of ``size`` elements (a multiple of 8: chunks start on whole
    bytes of kept-bits)."""
    return torch.empty(size, device=device), torch.empty(size, device=device)


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


@functools.lru_cache(maxsize=64)
def scalars(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float32 tensor on ``device``, made once (no host copy per tensor)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=8)
def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def dropped(keep: np.ndarray | torch.Tensor, start: int, stop: int, device) -> torch.Tensor:
    """Where packed kept-bits (little order) are unset, for elements ``start:stop`` (chunks
    start on whole bytes), as a bool mask on ``device``; bits held as a uint8 tensor on the
    device are unpacked there."""
    if isinstance(keep, torch.Tensor):
        packed = keep[start // 8:(stop + 7) // 8].unsqueeze(-1)
        return (packed >> _shifts(keep.device)).bitwise_and_(1).view(-1)[:stop - start] == 0
    bits = np.unpackbits(keep[start // 8:(stop + 7) // 8], count=stop - start, bitorder="little")
    return torch.from_numpy(bits).to(device) == 0


def torch_linear(sources: list[torch.Tensor], weights: list[float], out: torch.Tensor,
                 buffers: Buffers) -> None:
    """mergekit's linear_merge: float32 zeros, then addcmul_(tensor, weight) per model."""
    coefficients = scalars(tuple(map(float, weights)), out.device)
    acc, buf = buffers
    for start, stop in chunks(out.numel(), acc.numel()):
        x, y = acc[:stop - start].zero_(), buf[:stop - start]
        for k, source in enumerate(sources):
            x.addcmul_(y.copy_(source[start:stop]), coefficients[k:k + 1])
        out[start:stop].copy_(x)


def torch_slerp(v0: torch.Tensor, v1: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                out: torch.Tensor, buffers: Buffers) -> None:
    """mergekit's last slerp step: ``a·v0 + b·v1`` in float32 (two roundings)."""
    acc, buf = buffers
    for start, stop in chunks(out.numel(), acc.numel()):
        x, y = acc[:stop - start], buf[:stop - start]
        x.copy_(v0[start:stop]).mul_(a)
        x.add_(y.copy_(v1[start:stop]).mul_(b))
        out[start:stop].copy_(x)


def torch_nuslerp(v0: torch.Tensor, v1: torch.Tensor, a, b, sin_theta: torch.Tensor | None,
                  out: torch.Tensor, buffers: Buffers) -> None:
    """mergekit's NuSLERP step: ``(a·v0 + b·v1) / sin θ`` (``a``, ``b``: 1-element tensors), or
    ``a·v0 + b·v1`` with Python scalars where the parents are colinear."""
    acc, buf = buffers
    for start, stop in chunks(out.numel(), acc.numel()):
        x, y = acc[:stop - start], buf[:stop - start]
        x.copy_(v0[start:stop]).mul_(a)
        x.add_(y.copy_(v1[start:stop]).mul_(b))
        if sin_theta is not None:
            x.div_(sin_theta)
        out[start:stop].copy_(x)


def torch_task_vector(pt: torch.Tensor, it: torch.Tensor,
                      keep: np.ndarray | torch.Tensor | None, weight: float,
                      out: torch.Tensor, buffers: Buffers,
                      factor: torch.Tensor | None = None) -> None:
    """``PT + λ·((IT − PT)·factor)``, +0 where ``keep`` (packed bits, or None for all) is
    unset; without a factor ``PT + λ·(IT − PT)``."""
    lam = scalars((float(weight),), out.device)
    acc, buf = buffers
    for start, stop in chunks(out.numel(), acc.numel()):
        x, y = acc[:stop - start], buf[:stop - start]
        x.copy_(it[start:stop]).sub_(y.copy_(pt[start:stop]))
        if factor is not None:  # mergekit: masked · (‖delta‖₁ / ‖masked‖₁), then · λ
            x.mul_(factor)
        x.mul_(lam)
        if keep is not None:
            x.masked_fill_(dropped(keep, start, stop, x.device), 0.0)
        x.masked_fill_(x == 0, 0.0)  # mergekit sums the masked task vector from +0
        out[start:stop].copy_(y.add_(x))


def torch_task_vectors(pt: torch.Tensor, its: list[torch.Tensor], keeps: list, factors: list,
                       weights: list[float], consensus: bool, out: torch.Tensor,
                       buffers: Buffers) -> None:
    """mergekit's generalized task arithmetic over several fine-tunes: per fine-tune
    ``(IT_k − PT)·factor_k`` where kept (+0 elsewhere), times its weight; with sign election
    only the entries whose sign matches their sum's; summed over the fine-tunes (torch's sum
    over the models' axis, as mergekit's) and added to PT in float32."""
    base_buf, _ = buffers
    n = out.numel()
    deltas = torch.empty((len(its), min(base_buf.numel(), n)), dtype=torch.float32,
                         device=out.device)
    w = scalars(tuple(map(float, weights)), out.device).unsqueeze(-1)
    for start, stop in chunks(n, base_buf.numel()):
        base = base_buf[:stop - start].copy_(pt[start:stop])
        x = deltas[:, :stop - start]
        for row, it, keep, factor in zip(x, its, keeps, factors):
            row.copy_(it[start:stop]).sub_(base)
            if factor is not None:
                row.mul_(factor)
            if keep is not None:
                row.masked_fill_(dropped(keep, start, stop, row.device), 0.0)
        x.mul_(w)
        if consensus:  # mergekit's get_mask(method="sum")
            majority = (x.sum(dim=0) >= 0).to(x.dtype) * 2 - 1
            mixed = (x * (x.sign() == majority)).sum(dim=0)
        else:
            mixed = x.sum(dim=0)
        out[start:stop].copy_(base.add_(mixed))
