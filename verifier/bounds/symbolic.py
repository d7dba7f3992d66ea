"""Forward linear bounds ("symbolic intervals"): cheap pre-activation bounds for
networks with few inputs.

Every neuron carries a lower and an upper linear function of the input,
``x Wl + bl <= z <= x Wu + bu``, pushed forward layer by layer (Wang et al.
2018, ReluVal/Neurify; the forward mode of Xu et al. 2020, auto_LiRPA).  At a
ReLU the upper function goes through the chord ``u/(u-l) (z - l)`` and the
lower one through ``alpha z`` with CROWN's adaptive ``alpha``; both lines are
monotone, so applying them to the bounding functions is sound.  The cost per
layer is ``B * m * n * n_in``, far below a backward pass per neuron when
``n_in`` is small (ACAS Xu: 5 inputs).
"""

from __future__ import annotations

import torch

from verifier.bounds.relaxation import relu_relaxation
from verifier.bounds.types import Domains, IntermediateBounds, Tensor
from verifier.network import Dense, Input, Network, Relu, Reshape, Scale


def supports_symbolic(net: Network) -> bool:
    """Whether the network is a chain of the node types handled here."""
    chain = all(len(n.inputs) == 1 and n.inputs[0] == i - 1 for i, n in enumerate(net.nodes) if i)
    kinds = all(isinstance(n.op, (Input, Dense, Relu, Reshape, Scale)) for n in net.nodes)
    flat = all(len(n.shape) == 1 or isinstance(n.op, (Input, Reshape)) for n in net.nodes)
    return chain and kinds and flat


def _concretize(W: Tensor, b: Tensor, mid: Tensor, rad: Tensor, sign: float) -> Tensor:
    """Min (sign -1) or max (sign +1) of ``x W + b`` over the box ``mid +- rad``: ``(B, m)``."""
    return b + (mid.unsqueeze(1) @ W).squeeze(1) + sign * (rad.unsqueeze(1) @ W.abs()).squeeze(1)


def _right(W: Tensor, M: Tensor) -> Tensor:
    """``W @ M`` for coefficients ``(B, n_in, m)`` as one large matrix product."""
    B, n, m = W.shape
    return (W.reshape(B * n, m) @ M).reshape(B, n, -1)


def symbolic_bounds(net: Network, domains: Domains) -> IntermediateBounds:
    """Pre-activation bounds of every ReLU layer ``(B, n_k)``, from forward linear bounds.

    Split states are intersected like everywhere else (+1: lower >= 0, -1: upper <= 0).
    """
    lo_in, hi_in = domains.lower, domains.upper  # (B, n)
    B, n = lo_in.shape
    mid, rad = (lo_in + hi_in) / 2, (hi_in - lo_in) / 2
    eye = torch.eye(n, dtype=lo_in.dtype, device=lo_in.device).expand(B, n, n)
    Wl = Wu = eye  # (B, n_in, m): coefficients kept transposed so each layer is one big product
    bl = bu = torch.zeros(B, n, dtype=lo_in.dtype, device=lo_in.device)
    lowers, uppers = [], []
    for node in net.nodes[1:]:
        op = node.op
        if isinstance(op, Dense):
            Wp, Wn = op.weight.clamp(min=0).T, op.weight.clamp(max=0).T  # (m, m')
            Wl, Wu = _right(Wl, Wp) + _right(Wu, Wn), _right(Wu, Wp) + _right(Wl, Wn)
            bl, bu = bl @ Wp + bu @ Wn + op.bias, bu @ Wp + bl @ Wn + op.bias
        elif isinstance(op, Scale):
            s = op.scale.expand(node.shape).reshape(1, -1)
            t = op.shift.expand(node.shape).reshape(1, -1)
            sp, sn = s.clamp(min=0), s.clamp(max=0)
            Wl, Wu = sp.unsqueeze(1) * Wl + sn.unsqueeze(1) * Wu, sp.unsqueeze(1) * Wu + sn.unsqueeze(1) * Wl
            bl, bu = sp * bl + sn * bu + t, sp * bu + sn * bl + t
        elif isinstance(op, Relu):
            k = len(lowers)
            lo = _concretize(Wl, bl, mid, rad, -1.0)
            hi = _concretize(Wu, bu, mid, rad, 1.0)
            if domains.splits is not None:
                s = domains.splits[k]
                lo = torch.where(s > 0, lo.clamp(min=0), lo)
                hi = torch.where(s < 0, hi.clamp(max=0), hi)
            lowers.append(lo)
            uppers.append(hi)
            relax = relu_relaxation(lo, torch.maximum(hi, lo))
            a = relax.default_slope
            Wl, bl = a.unsqueeze(1) * Wl, a * bl
            Wu, bu = relax.upper_slope.unsqueeze(1) * Wu, relax.upper_slope * bu + relax.upper_bias
        elif not isinstance(op, Reshape):
            raise TypeError(f"symbolic bounds: unhandled node type {type(op).__name__}")
    return IntermediateBounds(tuple(lowers), tuple(uppers))
