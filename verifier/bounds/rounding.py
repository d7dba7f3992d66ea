"""Rounding-error bounds that make every bound of this package rigorous in the arithmetic it runs in.

The bounding passes run in the network's dtype (float32 or float64) with
round-to-nearest.  Every computed quantity that ends up in a proof is a sum of
at most ``K`` products, whose error is at most ``gamma(K) * sum |terms|``
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5;
it holds for any summation order, blocked or with FMA).  Each pass adds such a
term, computed from magnitudes it already has, to a *slack* that is subtracted
from the bound at the end; ``ETA`` covers underflow (flushed or gradual).
The slack is itself computed in floating point: ``gamma`` carries a 5 %
reserve that covers the relative error of summing non-negative terms.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

_UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# absolute error of all the underflows of one bound: at most 2^40 operations, each off by at most the
# smallest normal number (flush-to-zero) or half the smallest subnormal
ETA = {torch.float32: 2.0**-80, torch.float64: 2.0**-960}


def unit(dtype: torch.dtype) -> float:
    """The unit roundoff of ``dtype`` (half a unit in the last place of 1)."""
    return _UNIT[dtype]


def gamma(k: int, dtype: torch.dtype) -> float:
    """An upper bound of ``gamma_k = k u / (1 - k u)``, with room for the rounding of the slack itself.

    Raises ``ValueError`` when ``k`` terms are too many for the precision (``k u`` above 1 %).
    """
    u = _UNIT[dtype]
    ku = max(1, int(k)) * u
    if ku > 0.01:
        raise ValueError(f"{k} terms per sum are too many for rigorous {dtype} bounds; use float64")
    return 1.05 * ku / (1.0 - ku)


def eta(dtype: torch.dtype) -> float:
    """The absolute allowance for underflow in one bound."""
    return ETA.get(dtype, 2.0**-80)


def down(x: Tensor) -> Tensor:
    """``x`` one step toward ``-inf`` (a value computed to nearest, made a lower bound); infinities stay."""
    return torch.where(torch.isinf(x), x, torch.nextafter(x, x.new_tensor(float("-inf"))))


def up(x: Tensor) -> Tensor:
    """``x`` one step toward ``+inf``; infinities stay."""
    return torch.where(torch.isinf(x), x, torch.nextafter(x, x.new_tensor(float("inf"))))


def cast_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` cast to ``dtype``, rounded toward ``-inf`` where the cast is inexact."""
    y = x.to(dtype)
    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, y.new_tensor(float("-inf"))), y)


def cast_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` cast to ``dtype``, rounded toward ``+inf`` where the cast is inexact."""
    y = x.to(dtype)
    return torch.where(y.to(x.dtype) < x, torch.nextafter(y, y.new_tensor(float("inf"))), y)


def magnitude(lo: Tensor, hi: Tensor) -> Tensor:
    """``max(|lo|, |hi|)``: a bound of ``|v|`` for every ``v`` in ``[lo, hi]``."""
    return torch.maximum(lo.abs(), hi.abs())
