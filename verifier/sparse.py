"""Products with a Dense layer's weight, taken as a sparse matrix where the weight is mostly zeros.

Two-level lattice networks (TLL) and other networks exported from structured code have Dense layers
whose weights are more than 99.9 % zeros (a 2048 x 8192 layer with four non-zeros a row); every
analysis multiplies by them (or by their positive part, negative part, absolute value) many times.
Such a weight is multiplied as a CSR matrix, built once per op, part, dtype and device.  The products
are the same sums without the zero terms, so each output still sums at most the layer's input count
of terms and every rounding bound that counts them holds (any order of summation).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Literal

import torch

from verifier.network import Dense

Tensor = torch.Tensor
Part = Literal["w", "pos", "neg", "abs"]

MAX_DENSITY = 0.02  # the share of non-zeros below which CSR products beat dense ones (measured on CPU)
MIN_SIZE = 1 << 16  # smaller weights stay dense: nothing to gain

# per op (dropped with it): whether it is sparse, and its CSR parts by (part, transposed, dtype, device)
_cache: weakref.WeakKeyDictionary[Dense, dict] = weakref.WeakKeyDictionary()


def _entry(op: Dense) -> dict:
    entry = _cache.get(op)
    if entry is None:
        w = op.weight
        entry = {"sparse": w.numel() >= MIN_SIZE and int(torch.count_nonzero(w)) <= MAX_DENSITY * w.numel()}
        _cache[op] = entry
    return entry


def is_sparse(op: Dense) -> bool:
    """Whether ``op``'s weight is multiplied as a sparse matrix."""
    return _entry(op)["sparse"]


def _weight_as(op: Dense, like: Tensor) -> Tensor:
    """``op``'s weight in ``like``'s dtype and device; only a cast that is exact (the same dtype, or
    float32 into float64): a rounded weight would need its error bound, which these products do not add."""
    w = op.weight
    if w.dtype != like.dtype and not (w.dtype == torch.float32 and like.dtype == torch.float64):
        raise ValueError(f"a {w.dtype} weight multiplied in {like.dtype} would be rounded")
    return w.to(device=like.device, dtype=like.dtype)


def _dense_part(w: Tensor, part: Part) -> Tensor:
    if part == "pos":
        return w.clamp(min=0)
    if part == "neg":
        return w.clamp(max=0)
    return w.abs() if part == "abs" else w


def _csr(op: Dense, part: Part, transposed: bool, like: Tensor) -> Tensor:
    entry = _entry(op)
    key = (part, transposed, like.dtype, like.device)
    csr = entry.get(key)
    if csr is None:
        w = _dense_part(_weight_as(op, like), part)
        with warnings.catch_warnings():  # torch calls its CSR support "beta"
            warnings.simplefilter("ignore")
            csr = (w.T if transposed else w).contiguous().to_sparse_csr()
        entry[key] = csr
    return csr


def times_weight_t(op: Dense, x: Tensor, part: Part = "w") -> Tensor:
    """``x @ P.T`` for ``P`` the ``part`` of ``op``'s weight (``x`` ``(..., n)`` -> ``(..., m)``), in
    ``x``'s dtype; differentiable in ``x``."""
    if not is_sparse(op):
        return x @ _dense_part(_weight_as(op, x), part).T
    lead, n = x.shape[:-1], x.shape[-1]
    y = _csr(op, part, False, x) @ x.reshape(-1, n).T  # (m, N)
    return y.T.reshape(*lead, -1)


def times_weight(op: Dense, A: Tensor, part: Part = "w") -> Tensor:
    """``A @ P`` for ``P`` the ``part`` of ``op``'s weight (``A`` ``(..., m)`` -> ``(..., n)``), in
    ``A``'s dtype; differentiable in ``A``."""
    if not is_sparse(op):
        return A @ _dense_part(_weight_as(op, A), part)
    lead, m = A.shape[:-1], A.shape[-1]
    y = _csr(op, part, True, A) @ A.reshape(-1, m).T  # (n, N)
    return y.T.reshape(*lead, -1)
