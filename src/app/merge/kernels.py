"""Fused one-pass kernels for the direct merges of bfloat16 models (numba).

The torch path (``app.merge.torch_ops``) makes six passes over every chunk (upcast, multiply-add per
model, round back); these kernels make one, reading the mapped parents and writing the working
model's bfloat16 bits directly, with the same float32 operations in the same order: linear is
``r = fma(x_k, w_k, r)`` from ``r = 0`` (torch's ``addcmul_``), slerp is ``x·a + y·b`` with two
roundings (NuSLERP: then ``/ sin θ``), the task-vector methods are ``PT + λ·((IT − PT)·f)``
(f: DARE's and DELLA's L1 rescale; +0 where the method drops an element), and each result is
rounded to bfloat16 to nearest-even as torch rounds it.

``usable()`` compiles them (numba caches the machine code on disk) and checks them bit for bit
against the torch path on a probe, once per process; where numba is missing or any bit differs
(another CPU's torch kernels may fuse differently), the merge keeps the torch path.
"""

from __future__ import annotations

import functools
import logging
import os

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic

from app.merge.torch_ops import (
    new_buffers,
    torch_linear,
    torch_nuslerp,
    torch_slerp,
    torch_task_vector,
)

LOG = logging.getLogger(__name__)
# numba's OpenMP layer leaves its threads spinning after a kernel, beside torch's own OpenMP
# pool: on 2 cores every evaluation after a merge ran 10× slower (docs/benchmarks.md). The
# work-queue layer's threads sleep when idle.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@intrinsic
def _as_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@intrinsic
def _as_u32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


@intrinsic
def _fma(typingctx, x, y, z):
    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(inline="always")
def _load(bf16, i):
    return _as_f32(np.uint32(bf16[i]) << np.uint32(16))


@njit(inline="always")
def _store(out, i, value):
    bits = _as_u32(value)
    if value != value:  # NaN: keep it a NaN
        out[i] = np.uint16(0x7FC0)
    else:
        out[i] = np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
                           >> np.uint32(16))


@njit(parallel=True, cache=True)
def _linear(sources, weights, out):
    for i in prange(out.shape[0]):
        acc = np.float32(0.0)
        for k in range(len(sources)):
            acc = _fma(_load(sources[k], i), weights[k], acc)
        _store(out, i, acc)


@njit(parallel=True, cache=True)
def _slerp(v0, v1, a, b, out):
    for i in prange(out.shape[0]):
        _store(out, i, _load(v0, i) * a + _load(v1, i) * b)


@njit(parallel=True, cache=True)
def _nuslerp(v0, v1, a, b, s, divide, out):
    for i in prange(out.shape[0]):
        value = _load(v0, i) * a + _load(v1, i) * b
        if divide:
            value = value / s
        _store(out, i, value)


@njit(parallel=True, cache=True)
def _task_vector(pt, it, keep, masked, scaled, factor, lam, out):
    for i in prange(out.shape[0]):
        base = _load(pt, i)
        delta = _load(it, i) - base
        if scaled:
            delta = delta * factor
        delta = delta * lam
        if masked and not (keep[i >> 3] >> (i & 7)) & 1:
            delta = np.float32(0.0)
        if delta == 0:  # mergekit sums the masked task vector from +0
            delta = np.float32(0.0)
        _store(out, i, base + delta)


def bits(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 tensor's storage as uint16 (a view: writes go to the tensor)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def linear(sources: list[torch.Tensor], weights: list[float], out: torch.Tensor) -> None:
    _linear(tuple(bits(s) for s in sources), np.array(weights, dtype=np.float32), bits(out))


def slerp(v0: torch.Tensor, v1: torch.Tensor, a: float, b: float, out: torch.Tensor) -> None:
    _slerp(bits(v0), bits(v1), np.float32(a), np.float32(b), bits(out))


def nuslerp(v0: torch.Tensor, v1: torch.Tensor, a: float, b: float, sin_theta: float | None,
            out: torch.Tensor) -> None:
    _nuslerp(bits(v0), bits(v1), np.float32(a), np.float32(b),
             np.float32(1.0 if sin_theta is None else sin_theta), sin_theta is not None,
             bits(out))


def task_vector(pt: torch.Tensor, it: torch.Tensor, keep: np.ndarray | None, weight: float,
                out: torch.Tensor, factor: torch.Tensor | None = None) -> None:
    masked, scaled = keep is not None, factor is not None
    _task_vector(bits(pt), bits(it), keep if masked else np.zeros(1, np.uint8), masked,
                 scaled, np.float32(factor.item() if scaled else 1.0), np.float32(weight),
                 bits(out))


@functools.cache
def usable() -> bool:
    """Whether the kernels run here and equal the torch path bit for bit on a probe (a fact
    about this machine and its torch build, so it is probed once per process)."""
    try:
        buffers = new_buffers()
        g = torch.Generator().manual_seed(0)
        n = (1 << 20) + 37
        x, y, z = (torch.randn(n, generator=g).mul_(s).to(torch.bfloat16) for s in (1, 3e-3, 40))
        x[:64], y[32:96] = -0.0, 0.0  # signed zeros, where an fma and a plain add differ
        y[200:264] = torch.finfo(torch.bfloat16).tiny / 4  # subnormals
        cases = [((x, y), [0.3, 0.7]), ((x, y, z), [0.5, 0.3, 0.2]), ((y,), [1.0]),
                 ((x, z), [0.77, 0.23])]
        for sources, weights in cases:
            mine, ref = torch.empty_like(x), torch.empty_like(x)
            linear(list(sources), weights, mine)
            torch_linear(list(sources), weights, ref, buffers)
            if not np.array_equal(bits(mine), bits(ref)):
                raise ArithmeticError(f"linear {weights} differs from torch")
        for a, b in ((0.7, 0.3), (0.31, 0.6921), (1.0, 0.0)):
            mine, ref = torch.empty_like(x), torch.empty_like(x)
            slerp(x, z, a, b, mine)
            torch_slerp(x, z, torch.tensor([a]), torch.tensor([b]), ref, buffers)
            if not np.array_equal(bits(mine), bits(ref)):
                raise ArithmeticError(f"slerp {a}, {b} differs from torch")
        for a, b, sin_theta in ((0.6, 0.45, 0.83), (0.3, 0.7, None)):  # arc, colinear
            mine, ref = torch.empty_like(x), torch.empty_like(x)
            nuslerp(x, z, a, b, sin_theta, mine)
            tensors = (a, b, None) if sin_theta is None else tuple(
                torch.tensor([v], dtype=torch.float32) for v in (a, b, sin_theta))
            torch_nuslerp(x, z, *tensors, ref, buffers)
            if not np.array_equal(bits(mine), bits(ref)):
                raise ArithmeticError(f"nuslerp {a}, {b}, {sin_theta} differs from torch")
        it = x.clone()
        it[::3] = z[::3]  # equal to PT (a zero task vector) at two thirds of the elements
        keep = np.packbits(torch.rand(n, generator=g).numpy() < 0.5, bitorder="little")
        factor = torch.tensor(1.7320508, dtype=torch.float32)  # an L1 rescale factor
        for mask, weight, f in ((None, 0.3, None), (keep, 0.7, None), (keep, 0.0, None),
                                (None, 2.5, None), (keep, 0.3, factor), (keep, 0.9, factor)):
            mine, ref = torch.empty_like(x), torch.empty_like(x)
            task_vector(x, it, mask, weight, mine, f)
            torch_task_vector(x, it, mask, weight, ref, buffers, f)
            if not np.array_equal(bits(mine), bits(ref)):
                raise ArithmeticError(f"task vector {weight} differs from torch")
    except Exception as e:  # no numba, no compiler for this CPU, or other arithmetic
        LOG.info("fused merge kernels not used (%s: %s); merging with torch", type(e).__name__, e)
        return False
    return True
