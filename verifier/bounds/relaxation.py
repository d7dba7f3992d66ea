"""Linear relaxations of the nonlinear nodes, as small pure functions of their input bounds.

ReLU (Zhang et al. 2018, CROWN; Xu et al. 2021, alpha-CROWN): on an unstable
neuron ``l < 0 < u`` the output lies between ``alpha x`` (any ``alpha`` in
[0, 1]) and the chord ``u / (u - l) (x - l)``; a stable neuron is exact.  The
chord is computed in floating point and may dip below the ReLU at ``l`` or
``u`` by a few units in the last place; its intercept is raised by a bound of
that dip, so the upper line is valid in real arithmetic on ``[l, u]``.

MaxPool: for each window with element bounds ``l_j, u_j`` and ``j* = argmax l_j``,
``x_{j*} <= max_j x_j``; above, ``max_j x_j = x_{j*}`` when ``l_{j*} >= u_k`` for
every other ``k`` (the window is decided), and ``max_j x_j <= max_j u_j`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from verifier.bounds.rounding import eta, gamma, magnitude, unit, up
from verifier.bounds.types import Tensor
from verifier.forward import pad_hw
from verifier.network import MaxPool


@dataclass(frozen=True, eq=False)
class ReluRelaxation:
    """Relaxation of one ReLU layer over a batch of domains, flat over neurons."""

    lower: Tensor  # (B, n) the rigorous pre-activation bounds it was built for
    upper: Tensor  # (B, n)
    active: Tensor  # (B, n) 1.0 where l >= 0 (identity), else 0.0
    unstable: Tensor  # (B, n) bool, l < 0 < u
    default_slope: Tensor  # (B, n) CROWN's adaptive lower slope (1 if u > -l else 0)
    upper_slope: Tensor  # (B, n)
    upper_bias: Tensor  # (B, n) valid in real arithmetic (raised by its rounding)
    # (B, n): the backward pass of a row with coefficients A on the outputs rounds by at most <|A|, terms>
    terms: Tensor

    def lower_slope(self, alpha: Tensor | None = None) -> Tensor:
        """Lower-line slopes ``(B, R or 1, n)``: ``alpha`` ``(B, R, n)`` on unstable neurons."""
        if alpha is None:
            return self.default_slope.unsqueeze(1)
        return torch.where(self.unstable.unsqueeze(1), alpha, self.active.unsqueeze(1))


def relu_rows(A: Tensor, lower: Tensor, upper_slope: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients ``A`` on a ReLU's outputs passed to its input: the lower line's slope where ``A >= 0``,
    the upper line's where ``A < 0``; also ``min(A, 0)``, which multiplies the upper line's intercept.
    ``lower`` and ``upper_slope`` broadcast against ``A``."""
    # plain products and sums (a broadcasting torch.where is several times slower on CPU), written as
    # A * lower + neg * (upper - lower): fewer passes over the rows, which dominate CROWN's time on small
    # networks (measured 1.3-2x on ACAS Xu)
    neg = A.clamp(max=0)
    return torch.addcmul(A * lower, neg, upper_slope - lower), neg


def relu_upper_line(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the chord ``u / (u - l) (x - l)``, guarded against ``u = l``."""
    width = (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
    slope = upper / width
    return slope, -slope * lower


def relu_relaxation(lower: Tensor, upper: Tensor) -> ReluRelaxation:
    """The relaxation of ``relu`` for rigorous pre-activation bounds ``(B, n)``."""
    inactive = upper <= 0
    active = (lower >= 0) & ~inactive
    unstable = ~(active | inactive)
    chord_slope, chord_bias = relu_upper_line(lower, upper)
    # the rounded chord lies below the ReLU by at most 3 u (|u| + |intercept|) at the ends (slope and
    # intercept are each within a few roundings); 5 u and ETA leave room
    u = unit(lower.dtype)
    chord_bias = up(chord_bias + (5 * u * (upper.abs() + chord_bias.abs()) + eta(lower.dtype)))
    zero, one = torch.zeros_like(lower), torch.ones_like(lower)
    upper_slope = torch.where(unstable, chord_slope, torch.where(active, one, zero))
    upper_bias = torch.where(unstable, chord_bias, zero)
    default = torch.where(unstable, (upper > -lower).to(lower.dtype), active.to(lower.dtype))
    # ``_relu_back`` rounds each passed coefficient by at most 9 u |A| (slopes in [0, 1]) and the intercept
    # sum by gamma(n) |A| |bias|
    terms = 10 * u * magnitude(lower, upper) + gamma(lower.shape[1] + 1, lower.dtype) * upper_bias
    return ReluRelaxation(lower, upper, active.to(lower.dtype), unstable, default, upper_slope, upper_bias, terms)


@dataclass(frozen=True, eq=False)
class MaxPoolRelaxation:
    """Per output element: the window element with the largest lower bound, whether the
    window is decided, and the constant upper bound used when it is not."""

    argmax: Tensor  # (B, C, L) long: flat position of x_{j*} in the padded (Hp * Wp) plane
    decided: Tensor  # (B, C, L) bool
    upper_const: Tensor  # (B, C, L)
    padded_hw: tuple[int, int]
    terms: Tensor  # (B, C, L): the backward pass rounds by at most <|A|, terms>


def maxpool_relaxation(op: MaxPool, lower: Tensor, upper: Tensor) -> MaxPoolRelaxation:
    """The relaxation of one MaxPool node for input bounds ``(B, C, H, W)``."""
    B, C, H, W = lower.shape
    lo = pad_hw(lower, op.padding, float("-inf"))
    hi = pad_hw(upper, op.padding, float("-inf"))
    Hp, Wp = lo.shape[-2:]
    K = op.kernel[0] * op.kernel[1]

    def windows(t: Tensor) -> Tensor:  # (B, C, Hp, Wp) -> (B, C, K, L)
        return F.unfold(t.reshape(B * C, 1, Hp, Wp), op.kernel, stride=op.stride).reshape(B, C, K, -1)

    lw, uw = windows(lo), windows(hi)
    pos = torch.arange(Hp * Wp, device=lower.device, dtype=lower.dtype).reshape(1, 1, Hp, Wp)
    pos = F.unfold(pos, op.kernel, stride=op.stride).reshape(K, -1).round().long()  # (K, L)
    j = lw.argmax(2, keepdim=True)  # (B, C, 1, L)
    best_lower = lw.gather(2, j).squeeze(2)  # (B, C, L)
    others = uw.scatter(2, j, float("-inf")).amax(2)
    argmax = pos.expand(B, C, -1, -1).gather(2, j).squeeze(2)  # (B, C, L)
    upper_const = uw.amax(2)
    # a coefficient moved to its argmax is summed with those of the other windows covering that input
    # (at most ``overlap``), and the constants of all the windows of a row are summed
    overlap = -(-op.kernel[0] // op.stride[0]) * -(-op.kernel[1] // op.stride[1])
    mag = magnitude(lo, hi).nan_to_num(0.0, posinf=0.0).reshape(B, C, -1).gather(2, argmax)
    terms = (gamma(overlap + 1, lower.dtype) * mag
             + gamma(C * argmax.shape[2] + 1, lower.dtype) * upper_const.abs().nan_to_num(0.0, posinf=0.0))
    return MaxPoolRelaxation(
        argmax=argmax,
        decided=best_lower >= others,
        upper_const=upper_const,
        padded_hw=(Hp, Wp),
        terms=terms,
    )
