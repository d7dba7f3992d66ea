"""Forward linear bounds: each node's value bounded by affine functions of the input, layer by layer.

For a network with few inputs, the backward passes that CROWN runs for every intermediate layer cost
about (neurons of the layer) x (weights below it) each; propagating two affine functions of the
``n_in`` inputs forward costs about ``n_in`` forward passes in all (forward-mode LiRPA: Xu et al.,
"Automatic Perturbation Analysis for Scalable Certified Robustness and Beyond", NeurIPS 2020, sec. 3.2).
The pre-activation bounds found this way become CROWN's known intermediate bounds, and only the spec
rows get a backward pass.  Looser than backward bounds on wide boxes, so it is used where boxes are
split small (input splitting on low-dimensional inputs).

Rigour: every node carries ``Al x + cl - el <= z(x) <= Au x + cu + eu`` for every ``x`` in the box,
computed in float64 from the stored weights (exact in float64).  Each sum of ``K`` rounded terms is off
by at most ``gamma_K`` times the sum of the terms' magnitudes (Higham, eq. 3.5; ``rounding.gamma``);
an error in a coefficient row is charged to the slack ``e`` times ``max |x_j|``.  A constant computed
at load carries its own bound (``weight_err``, ``bias_err``, ...), charged times the magnitude of its
operand.  ReLU: the upper chord's slope is rounded up, the lower line is ``0`` or ``z`` (CROWN's
adaptive choice).  Nodes of other kinds are not handled (``None``: the caller falls back to CROWN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from verifier.bounds.graph import relu_inputs
from verifier.bounds.rounding import cast_down, cast_up, down, gamma, up
from verifier.bounds.types import Domains, IntermediateBounds
from verifier.forward import gather_flat, pad_hw
from verifier.network import Add, Conv, Dense, Gather, Input, Network, Relu, Reshape, Scale
from verifier.sparse import times_weight_t

Tensor = torch.Tensor
_F64 = torch.float64
_U = 2.0**-53  # float64's unit roundoff
_SUPPORTED = (Input, Dense, Conv, Relu, Reshape, Add, Scale, Gather)


@dataclass(frozen=True, eq=False)
class _Lin:
    """Affine bounds of one node: ``A`` ``(B, n_in, *shape)``, ``c`` and slack ``e`` ``(B, *shape)``."""

    Al: Tensor
    cl: Tensor
    el: Tensor
    Au: Tensor
    cu: Tensor
    eu: Tensor


def supports(net: Network) -> bool:
    """Whether every node of ``net`` has forward linear bounds here."""
    return all(isinstance(n.op, _SUPPORTED) for n in net.nodes)


def forward_intermediate(net: Network, domains: Domains, known: IntermediateBounds | None = None
                         ) -> IntermediateBounds | None:
    """Sound pre-activation bounds of every ReLU layer over each box ``(B, n_in)`` (intersected with
    ``known``, e.g. a parent box's), in the network's dtype; None where ``net`` has unsupported nodes
    or the domains carry ReLU splits."""
    if not supports(net) or domains.splits is not None:
        return None
    from verifier.bounds.ibp import ibp

    # interval bounds (with ``known``) as well: on wide boxes they are the tighter ones in deep layers
    interval = ibp(net, domains, known=known).intermediate
    tracker = ForwardTracker(net, domains)
    bounds: list[tuple[Tensor, Tensor]] = []
    for k, p in enumerate(relu_inputs(net)):
        L, U = tracker.bounds_at(p, bounds)
        L = torch.maximum(L, interval.lower[k].to(_F64).reshape(L.shape))
        U = torch.minimum(U, interval.upper[k].to(_F64).reshape(U.shape))
        bounds.append((L, U))
    dtype = net.dtype
    return IntermediateBounds(tuple(cast_down(L.flatten(1), dtype) for L, _ in bounds),
                              tuple(cast_up(U.flatten(1), dtype) for _, U in bounds))


class ForwardTracker:
    """Forward linear bounds of one batch of boxes, advanced node by node on demand, each ReLU relaxed
    from the pre-activation bounds its caller has by then (e.g. CROWN-tightened ones)."""

    def __init__(self, net: Network, domains: Domains) -> None:
        if not supports(net) or domains.splits is not None:
            raise ValueError("forward linear bounds need supported nodes and no ReLU splits")
        self.net = net
        self.lo, self.hi = domains.lower.to(_F64), domains.upper.to(_F64)
        B, n = self.lo.shape
        self.xmag = torch.maximum(self.lo.abs(), self.hi.abs())  # (B, n)
        self.last_use = {j: i for i, node in enumerate(net.nodes) for j in node.inputs}
        in_shape = net.nodes[0].shape
        eye = torch.eye(n, dtype=_F64, device=self.lo.device).expand(B, n, n).reshape(B, n, *in_shape)
        zero = self.lo.new_zeros(B, *in_shape)
        self.state: dict[int, _Lin] = {0: _Lin(eye, zero, zero, eye, zero, zero)}
        self.done = 0  # nodes 0..done have their state
        self.relu_of = {r: k for k, r in enumerate(net.relu_indices)}
        self.relus_passed: set[int] = set()  # ReLU nodes whose relaxation entered some state so far

    def affine_at(self, i: int) -> bool:
        """Whether node ``i``'s forward bounds (once computed) passed no ReLU: exact up to rounding."""
        return not any(r < i for r in self.relus_passed)

    def bounds_at(self, i: int, relu_bounds: Sequence[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, Tensor]:
        """Rigorous float64 bounds ``(B, *shape)`` of node ``i``, advancing through the nodes before it;
        ``relu_bounds[k]`` bounds the pre-activation of the ``k``-th ReLU layer (any shape that holds
        its entries in order), for every ReLU layer before node ``i`` (the others are not read)."""
        net, relu_of = self.net, self.relu_of
        B, n = self.lo.shape
        for j in range(self.done + 1, i + 1):
            node, op = net.nodes[j], net.nodes[j].op
            args = [self.state[m] for m in node.inputs]
            if isinstance(op, Relu):
                pre_shape = args[0].cl.shape
                L, U = (t.to(_F64).reshape(pre_shape) for t in relu_bounds[relu_of[j]])
                self.state[j] = _relu(args[0], L, U, self.xmag)
                self.relus_passed.add(j)
            elif isinstance(op, Reshape):
                a = args[0]
                self.state[j] = _Lin(a.Al.reshape(B, n, *node.shape), a.cl.reshape(B, *node.shape),
                                     a.el.reshape(B, *node.shape), a.Au.reshape(B, n, *node.shape),
                                     a.cu.reshape(B, *node.shape), a.eu.reshape(B, *node.shape))
            elif isinstance(op, Gather):  # a selection: no arithmetic
                a, g = args[0], (op, node.shape)
                self.state[j] = _Lin(_pick(a.Al, 2, *g), _pick(a.cl, 1, *g), _pick(a.el, 1, *g),
                                     _pick(a.Au, 2, *g), _pick(a.cu, 1, *g), _pick(a.eu, 1, *g))
            elif isinstance(op, Add):
                self.state[j] = _add(args[0], args[1], self.xmag)
            elif isinstance(op, Dense | Conv | Scale):
                mag = None
                if _errs(op):
                    L, U = _concretize(args[0], self.lo, self.hi, self.xmag)
                    mag = torch.maximum(L.abs(), U.abs())
                self.state[j] = _affine(op, args[0], self.xmag, mag)
            for m in node.inputs:  # free what no later node reads
                if self.last_use.get(m) == j and m != 0:
                    self.state.pop(m, None)
            self.done = j
        return _concretize(self.state[i], self.lo, self.hi, self.xmag)


def _pick(t: Tensor, lead: int, op: Gather, shape: tuple[int, ...]) -> Tensor:
    """The Gather ``op`` applied to ``t`` past its ``lead`` leading axes."""
    return gather_flat(t.reshape(-1, *t.shape[lead:]), op).reshape(*t.shape[:lead], *shape)


def _dot(A: Tensor, v: Tensor) -> Tensor:
    """``sum_j A[:, j] * v[:, j]`` for ``A`` ``(B, n, *shape)`` and ``v`` ``(B, n)``."""
    return (A * v.reshape(*v.shape, *([1] * (A.dim() - 2)))).sum(1)


def _concretize(a: _Lin, lo: Tensor, hi: Tensor, xmag: Tensor) -> tuple[Tensor, Tensor]:
    """Rigorous ``min`` of the lower function and ``max`` of the upper one over the box."""
    g = gamma(2 * lo.shape[1] + 2, _F64)
    lower = _dot(a.Al.clamp(min=0), lo) + _dot(a.Al.clamp(max=0), hi) + a.cl
    upper = _dot(a.Au.clamp(min=0), hi) + _dot(a.Au.clamp(max=0), lo) + a.cu
    err_l = g * (_dot(a.Al.abs(), xmag) + a.cl.abs())
    err_u = g * (_dot(a.Au.abs(), xmag) + a.cu.abs())
    return down(down(lower - a.el) - err_l), up(up(upper + a.eu) + err_u)


def _relu(a: _Lin, L: Tensor, U: Tensor, xmag: Tensor) -> _Lin:
    """ReLU of a node with pre-activation bounds ``[L, U]``: chord above, ``0`` or ``z`` below."""
    active, dead = L >= 0, U <= 0
    unstable = ~active & ~dead
    # the chord through (L, 0) and (U, U): slope U / (U - L) rounded up, intercept -L * slope rounded up
    width = down(torch.where(unstable, U - L, torch.ones_like(U)))
    s = torch.where(unstable, up(U.clamp(min=0) / width), active.to(_F64))
    t = torch.where(unstable, up(-L * s), torch.zeros_like(L))
    lam = torch.where(unstable, (U >= -L).to(_F64), active.to(_F64))
    m = lam.unsqueeze(1)
    Au = a.Au * s.unsqueeze(1)
    cu = a.cu * s + t
    # s * A and s * c + t are rounded: one product (and one sum) per entry
    err = 2 * _U * (_dot(Au.abs(), xmag) + 2 * (cu.abs() + t.abs()))
    eu = (a.eu * s) * (1 + 2 * _U) + err
    return _Lin(a.Al * m, a.cl * lam, a.el * lam, Au, cu, eu * (1 + 4 * _U))


def _add(a: _Lin, b: _Lin, xmag: Tensor) -> _Lin:
    Al, Au, cl, cu = a.Al + b.Al, a.Au + b.Au, a.cl + b.cl, a.cu + b.cu
    err_l = _U * (_dot(a.Al.abs() + b.Al.abs(), xmag) + a.cl.abs() + b.cl.abs())
    err_u = _U * (_dot(a.Au.abs() + b.Au.abs(), xmag) + a.cu.abs() + b.cu.abs())
    g = 1 + 4 * _U
    return _Lin(Al, cl, (a.el + b.el + err_l) * g, Au, cu, (a.eu + b.eu + err_u) * g)


def _errs(op: Dense | Conv | Scale) -> bool:
    if isinstance(op, Scale):
        return op.scale_err is not None or op.shift_err is not None
    return op.weight_err is not None or op.bias_err is not None


def _affine(op: Dense | Conv | Scale, a: _Lin, xmag: Tensor, mag: Tensor | None) -> _Lin:
    """``W z + b`` of a node with affine bounds ``a`` (``mag``: a bound of ``|z|``, when the op's
    constants carry error bounds)."""
    B, n = xmag.shape
    if isinstance(op, Dense):
        W = op.weight  # multiplied by ``times_weight_t`` (sparse where mostly zeros), in float64
        lin = lambda x, w: x @ w.T  # noqa: E731  (B, ..., n_in_node) -> (B, ..., m)
        bias, K = op.bias.to(_F64), 2 * W.shape[1] + 1
    elif isinstance(op, Conv):
        W = op.weight.to(_F64)

        def lin(x: Tensor, w: Tensor) -> Tensor:
            shape = x.shape
            flat = x.reshape(-1, *shape[-3:])
            y = F.conv2d(pad_hw(flat, op.padding, 0.0), w, None, op.stride, 0, op.dilation, op.groups)
            return y.reshape(*shape[:-3], *y.shape[1:])

        bias, K = op.bias.to(_F64).reshape(-1, 1, 1), 2 * W[0].numel() + 1
    else:
        W = op.scale.to(_F64)
        lin = lambda x, w: x * w  # noqa: E731
        bias, K = op.shift.to(_F64), 3
    # one product with W+ and one with W- of everything that goes through the op, stacked on the rows axis:
    # the coefficients, the constants, the slacks, and the magnitudes v of the rows' and constants' terms
    v = _dot(a.Al.abs() + a.Au.abs(), xmag) + a.cl.abs() + a.cu.abs()
    X = torch.cat([a.Al, a.Au, torch.stack([a.cl, a.cu, a.el, a.eu, v], 1)], 1)  # (B, 2n + 5, *shape)
    if isinstance(op, Dense):
        P, N = times_weight_t(op, X, "pos"), times_weight_t(op, X, "neg")
    else:
        P, N = lin(X, W.clamp(min=0)), lin(X, W.clamp(max=0))
    Pc, Nc = P[:, 2 * n :], N[:, 2 * n :]
    Al = P[:, :n] + N[:, n : 2 * n]
    Au = P[:, n : 2 * n] + N[:, :n]
    cl = Pc[:, 0] + Nc[:, 1] + bias
    cu = Pc[:, 1] + Nc[:, 0] + bias
    g = gamma(K, _F64)
    # rounding of the rows and constants: gamma_K times the magnitudes of their terms, |W| v
    rnd = g * (Pc[:, 4] - Nc[:, 4] + bias.abs())
    if mag is not None:
        rnd = rnd + _const_err(op, lin, mag)
    el = (Pc[:, 2] - Nc[:, 3]) * (1 + g) + rnd
    eu = (Pc[:, 3] - Nc[:, 2]) * (1 + g) + rnd
    return _Lin(Al, cl, el * (1 + 4 * _U), Au, cu, eu * (1 + 4 * _U))


def _const_err(op: Dense | Conv | Scale, lin, mag: Tensor) -> Tensor:
    """How far the op's output may be off because its stored constants are: ``|dW| |z| + |db|``."""
    if isinstance(op, Scale):
        w_err, b_err = op.scale_err, op.shift_err
    else:
        w_err, b_err = op.weight_err, op.bias_err
    out = lin(mag, w_err.to(_F64)) if w_err is not None else 0.0
    if b_err is not None:
        b = b_err.to(_F64)
        out = out + (b.reshape(-1, 1, 1) if isinstance(op, Conv) else b)
    return out * (1 + 4 * _U)
