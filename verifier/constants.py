"""Arithmetic on network constants that keeps a rigorous bound of its distance to the exact values.

The network a proof is about is the model file's graph in real arithmetic.  Loading computes some
constants (``1 / c`` for a division, BatchNorm's scale, the weights of two folded affine nodes) and
casts them to the model's dtype; each such constant carries an elementwise bound ``err`` of
``|exact - stored|`` (``None`` where the stored value is exact), and the bounds add it to their
slack (``verifier.bounds``).  Sums and products record their exact rounding error
(error-free transformations: Knuth's TwoSum, Dekker's TwoProduct), so exact folds stay exact;
matrix products and square roots use the standard bounds.  Everything here is float64.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
Err = Tensor | None  # an elementwise bound of |exact - value|, or None when the value is exact

_U = 2.0**-53
_TINY = 2.0**-960  # underflow in the transformations below


def exact(value: Tensor) -> tuple[Tensor, Err]:
    """A constant read from the file (exact)."""
    return value, None


def _up(e: Tensor) -> Tensor:
    """``e`` (a sum of non-negative terms computed to nearest) made an upper bound (0 stays 0: all its
    terms were 0)."""
    return torch.where(e == 0, e, e * (1 + 8 * _U) + _TINY)


def _clean(e: Tensor | None) -> Err:
    return None if e is None or not bool((e != 0).any()) else e


def _z(e: Err, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if e is None else e


def add(a: Tensor, ea: Err, b: Tensor, eb: Err) -> tuple[Tensor, Err]:
    """``a + b`` (broadcast) and its error bound."""
    s = a + b
    bb = s - a
    rounding = ((a - (s - bb)) + (b - bb)).abs()  # exact: a + b = s + rounding (Knuth)
    if ea is None and eb is None:
        return s, _clean(rounding)
    return s, _clean(_up(rounding + _z(ea, s) + _z(eb, s)))


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    c = 134217729.0 * x  # 2^27 + 1 (Veltkamp)
    hi = c - (c - x)
    return hi, x - hi


def mul(a: Tensor, ea: Err, b: Tensor, eb: Err) -> tuple[Tensor, Err]:
    """``a * b`` (broadcast) and its error bound."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    rounding = (((ah * bh - p) + ah * bl + al * bh) + al * bl).abs()  # exact: a b = p + rounding (Dekker)
    tiny = (p.abs() < 2.0**-900) & (a != 0) & (b != 0)  # near underflow the transformation is not exact
    rounding = torch.where(tiny, p.abs() + _TINY, rounding)
    if ea is None and eb is None:
        return p, _clean(rounding)
    ea, eb = _z(ea, a), _z(eb, b)
    return p, _clean(_up(rounding + a.abs() * eb + ea * b.abs() + ea * eb))


def matmul(A: Tensor, eA: Err, B: Tensor, eB: Err) -> tuple[Tensor, Err]:
    """``A @ B`` and its error bound (Higham's ``gamma_k |A| |B|`` for the rounding)."""
    k = A.shape[-1]
    value = A @ B
    gamma = 1.05 * k * _U / (1 - k * _U)
    err = gamma * (A.abs() @ B.abs())
    if eA is not None:
        err = err + eA @ (B.abs() + _z(eB, B))
    if eB is not None:
        err = err + A.abs() @ eB
    return value, _clean(_up(err))


def reciprocal(c: Tensor) -> tuple[Tensor, Err]:
    """``1 / c`` (exact for powers of two)."""
    r = 1.0 / c
    mantissa, _ = torch.frexp(c)
    return r, _clean(torch.where(mantissa.abs() == 0.5, torch.zeros_like(r), 2 * _U * r.abs()))


def batchnorm_scale(gamma: Tensor, var: Tensor, eps: float) -> tuple[Tensor, Err]:
    """``gamma / sqrt(var + eps)``: four correctly rounded operations on exact inputs, each off by at
    most ``u`` relative (the square root halves its argument's), so 4 u relative (5 u kept)."""
    s = gamma / torch.sqrt(var + eps)
    return s, _clean(5 * _U * s.abs())


def cast_error(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``|value - cast(value)|``: what casting the float64 ``value`` to ``dtype`` changes."""
    return (value - value.to(dtype).to(value.dtype)).abs()
