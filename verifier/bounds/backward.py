"""Backward linear bound propagation (CROWN) through the DAG.

Given rows ``A`` on some nodes and a constant, ``backward_lower`` returns a lower
bound of ``sum_nodes <A_node, value_node> + const`` over the input box: linear
nodes pass ``A`` to their inputs exactly (transposed convolution for Conv and
AvgPool, never a dense matrix), nonlinear nodes through their relaxation, and
the contributions of several consumers of a node are summed before it is passed
on (residual Adds).  All rows of all domains are processed together.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod

import torch
import torch.nn.functional as F

from verifier.bounds.conv_matrix import matrix_pays, transposed_product
from verifier.bounds.patches import Patches, conv_back, patch_pays, relu_back, to_dense
from verifier.bounds.relaxation import MaxPoolRelaxation, ReluRelaxation, relu_rows
from verifier.bounds.rounding import down, eta, gamma, magnitude, unit
from verifier.bounds.types import Tensor
from verifier.forward import pad_hw, pad_last
from verifier.network import (
    Add,
    AvgPool,
    Concat,
    Conv,
    Dense,
    Gather,
    Input,
    MaxPool,
    Network,
    Node,
    Pad,
    Relu,
    Reshape,
    Scale,
    Transpose,
)
from verifier.sparse import times_weight


@dataclass(frozen=True, eq=False)
class Relaxations:
    """Relaxations of the nonlinear nodes, keyed by node index, and the magnitudes of every node's
    values and terms that bound the passes' rounding (``NodeBounds.mags`` and ``NodeBounds.arith``)."""

    relu: dict[int, ReluRelaxation]
    maxpool: dict[int, MaxPoolRelaxation]
    mags: list[Tensor] = field(default_factory=list)
    arith: list[Tensor | None] = field(default_factory=list)
    errs: list[Tensor | None] = field(default_factory=list)
    rigorous: bool = True  # False: estimates without rounding slack (``NodeBounds.rigorous``)


def backward_lower(
    net: Network,
    start: Mapping[int, Tensor],
    const: Tensor,
    box: tuple[Tensor, Tensor],
    relax: Relaxations,
    lower_slopes: Mapping[int, Tensor] | None = None,
    split_terms: Mapping[int, Tensor] | None = None,
    patches: Patches | None = None,
) -> Tensor:
    """Rigorous lower bound ``(B, R)`` of ``sum <A_i, x_i> + const`` over the input box ``(B, n_in)``.

    ``start[i]`` is ``(B, R, *shape_i)``.  ``lower_slopes[r]`` ``(B, R or 1, n_r)`` are the
    ReLU lower-line slopes of Relu node ``r`` (CROWN's choice when absent);
    ``split_terms[r]`` ``(B, R, n_r)`` is added to the coefficients of ``r``'s
    pre-activation (beta-CROWN's split multipliers).  ``patches``: rows given as patches
    (``patches.py``) instead of ``start`` (then empty).
    """
    A0, const = backward_linear(net, start, const, relax, lower_slopes, split_terms, patches=patches)
    return concretize(A0, const, box, relax.rigorous)


def backward_linear(
    net: Network,
    start: Mapping[int, Tensor],
    const: Tensor,
    relax: Relaxations,
    lower_slopes: Mapping[int, Tensor] | None = None,
    split_terms: Mapping[int, Tensor] | None = None,
    given: Mapping[int, Tensor] | None = None,
    patches: Patches | None = None,
) -> tuple[Tensor | None, Tensor]:
    """The linear lower bound ``A0 x + c`` (``A0`` ``(B, R, n_in)``, ``c`` ``(B, R)``) of
    ``sum <A_i, x_i> + const`` that holds on the box the relaxations were built for
    (``backward_lower`` without the last step; ``A0`` is None when the rows do not depend on ``x``).

    ``given[r]`` ``(B, R, n_r)`` replaces the relaxation of Relu node ``r``: any coefficients ``nu``
    are passed to its pre-activation, with the exact ``min`` over its bounds of
    ``A relu(z) - nu z`` as constant (the Lagrangian form; e.g. ``nu`` from an LP's duals).

    ``patches``: rows given as patches (``patches.py``, then ``start`` is empty), passed on as patches
    through convolutions and ReLUs while that is cheaper, then as full maps.

    The bound holds in real arithmetic for the coefficients ``A0`` as computed: every rounding of
    the pass is bounded by a term of ``rounding.py`` and subtracted from ``c``.
    """
    acc = dict(start)
    lower_slopes = lower_slopes or {}
    split_terms = split_terms or {}
    given = given or {}
    rigor = relax.rigorous
    slack = _Slack(net, relax, const)
    if patches is not None:
        j, A_j, const = _patch_walk(net, patches, const, relax, lower_slopes, slack, set(split_terms) | set(given))
        acc[j] = A_j
    for i in range(max(acc), 0, -1):
        A = acc.pop(i, None)
        if A is None:
            continue
        node = net.nodes[i]
        ins = [net.nodes[j].shape for j in node.inputs]
        if isinstance(node.op, Relu) and i in given:
            A_in, c, s = _relu_given(A, relax.relu[i], given[i])
            grads = [A_in.reshape(*A.shape[:2], *ins[0])]
            slack.add(s)
        elif isinstance(node.op, Relu):
            A_in, c = _relu_back(A, relax.relu[i], lower_slopes.get(i), split_terms.get(i))
            grads = [A_in.reshape(*A.shape[:2], *ins[0])]
            if rigor:
                slack.relu(i, A, A_in, split_terms.get(i))
        elif isinstance(node.op, MaxPool):
            A_in, c = _maxpool_back(node.op, ins[0], A, relax.maxpool[i])
            grads = [A_in]
            if rigor:
                slack.add(_dot(A, relax.maxpool[i].terms))
        else:
            grads, c = linear_back(node, ins, A)
            if rigor:
                slack.linear(i, A)
        if c is not None:
            const = const + c
            if rigor:
                slack.add(unit(const.dtype) * const.detach().abs())
        for j, g in zip(node.inputs, grads, strict=True):
            if j in acc:
                acc[j] = acc[j] + g
                if rigor:
                    slack.add(unit(const.dtype) * _dot(acc[j], relax.mags[j]))
            else:
                acc[j] = g
    A0 = acc.get(0)
    return (None if A0 is None else A0.flatten(2)), (slack.lower(const) if rigor else const)


def _patch_walk(
    net: Network, p: Patches, const: Tensor, relax: Relaxations, lower_slopes: Mapping[int, Tensor],
    slack: _Slack, skip: set[int],
) -> tuple[int, Tensor, Tensor]:
    """``backward_linear``'s steps on patch rows through convolutions and ReLUs (not those in ``skip``),
    while a patch stays smaller than its map; returns the node reached, the rows there as full maps and the
    constant.  The products and sums per coefficient are the dense steps' (``linear_back``, ``_relu_back``),
    and so are the rounding terms added; ``_dot``'s float64 form reads only a row's largest coefficient, so it
    takes patches as they are (a rigorous float32 pass goes dense at once)."""
    rigor = relax.rigorous
    while True:
        j = p.node
        node = net.nodes[j]
        A = p.coef
        if rigor and A.dtype != torch.float64:
            return j, to_dense(p, node.shape), const
        if isinstance(node.op, Relu) and j not in skip:
            rel = relax.relu[j]
            p, c = relu_back(p, rel.lower_slope(lower_slopes.get(j)), rel.upper_slope, rel.upper_bias,
                             node.inputs[0], node.shape)
            if rigor:
                slack.relu(j, A, p.coef, None)
        elif isinstance(node.op, Conv) and patch_pays(node.op, A.shape[-2:], net.nodes[node.inputs[0]].shape):
            c = A.sum((-2, -1)) @ node.op.bias
            if rigor:
                slack.linear(j, A)
            p = conv_back(p, node.op, node.inputs[0], net.nodes[node.inputs[0]].shape)
        else:
            return j, to_dense(p, node.shape), const
        const = const + c
        if rigor:
            slack.add(unit(const.dtype) * const.detach().abs())


class _Slack:
    """The running bound of a backward pass's rounding (a private accumulator of ``backward_linear``)."""

    def __init__(self, net: Network, relax: Relaxations, const: Tensor) -> None:
        self.net, self.relax = net, relax
        self.total = torch.zeros_like(const)
        self.single = _single_consumer(net)
        self.folded: set[int] = set()  # linear nodes whose slack a Relu after them already counted

    def add(self, s: Tensor) -> None:
        self.total = self.total + s

    def relu(self, i: int, A: Tensor, A_in: Tensor, split_term: Tensor | None) -> None:
        relax, p = self.relax, self.net.nodes[i].inputs[0]
        u = unit(A.dtype)
        w_p = self._weight(p) if self.single[p] else None
        if w_p is None:
            self.add(_dot(A, relax.relu[i].terms))
        else:
            # |A_in| <= (1 + 8u) |A| apart from the split term: one product counts the node before too
            self.folded.add(p)
            w_p = w_p.flatten(1)
            self.add(_dot(A, relax.relu[i].terms + (1 + 8 * u) * w_p))
            if split_term is not None:
                self.add(_dot(split_term, w_p))
        if split_term is not None:  # the split term's sum rounds once more
            self.add(u * _dot(A_in, relax.mags[p]))

    def linear(self, i: int, A: Tensor) -> None:
        w = None if i in self.folded else self._weight(i)
        if w is not None:
            self.add(_dot(A, w))

    def _weight(self, i: int) -> Tensor | None:
        node = self.net.nodes[i]
        return _slack_weight(node, [self.net.nodes[j].shape for j in node.inputs], self.relax, i)

    def lower(self, const: Tensor) -> Tensor:
        """``const`` lowered by the slack (the slack's own sums of non-negative terms are covered by the
        reserve in ``gamma``), rounded down."""
        return down(const - (self.total + eta(const.dtype)))


def _dot(A: Tensor, w: Tensor) -> Tensor:
    """An upper bound of ``<|A_r|, w>`` per row: ``A`` ``(B, R, *shape)``, ``w`` ``(B, *shape)`` non-negative
    -> ``(B, R)``.  In float64 the rounding terms are so small that ``max |A_r| sum w`` (up to
    ``n`` times larger, half the cost) does; float32 takes the exact product."""
    with torch.no_grad():
        A, w = A.detach().flatten(2), w.flatten(1)
        if A.dtype == torch.float64:
            return torch.maximum(A.amax(-1), -A.amin(-1)) * w.sum(-1, keepdim=True)
        return (A.abs() @ w.unsqueeze(2)).squeeze(2)


def _slack_weight(node: Node, ins: list[tuple[int, ...]], relax: Relaxations, i: int) -> Tensor | None:
    """``w`` ``(B, *shape)`` such that ``linear_back`` on rows ``A`` rounds by at most ``<|A|, w>``, with what
    the node's inexact constants can change (``relax.errs``); None for a node that only moves values."""
    op = node.op
    if isinstance(op, Gather):  # an entry read k times gets a sum of k rows in ``linear_back``
        if op.repeats <= 1:
            return None
        m = relax.mags[node.inputs[0]].flatten(1)
        m = (F.pad(m, (0, 1)) if op.fills else m)[:, op.index]  # the magnitude of what each output reads
        return gamma(op.repeats, m.dtype) * m.reshape(m.shape[0], *node.shape)
    if isinstance(op, Pad) and op.value:
        return gamma(backward_terms(node, ins), relax.mags[i].dtype) * abs(op.value) * torch.ones_like(relax.mags[i])
    terms = relax.arith[i] if i < len(relax.arith) else None
    if terms is None or isinstance(op, Add):  # Add only copies the rows
        return None
    weight = gamma(backward_terms(node, ins), terms.dtype) * terms
    err = relax.errs[i] if relax.errs else None
    return weight if err is None else weight + err


@functools.cache
def _single_consumer(net: Network) -> tuple[bool, ...]:
    """Per node, whether exactly one node reads it."""
    count = [0] * len(net.nodes)
    for node in net.nodes:
        for j in node.inputs:
            count[j] += 1
    return tuple(c == 1 for c in count)


def backward_terms(node: Node, in_shapes: list[tuple[int, ...]]) -> int:
    """The most roundings of one coefficient or constant that the backward pass of ``node`` computes."""
    op = node.op
    if isinstance(op, Dense):
        return op.weight.shape[0] + 1
    if isinstance(op, Conv):
        c_out, _, kh, kw = op.weight.shape
        return max(c_out * kh * kw, node.shape[1] * node.shape[2] + c_out) + 1
    if isinstance(op, AvgPool):
        return op.kernel[0] * op.kernel[1] + 2
    if isinstance(op, Pad):
        return 2 * node.size + 1
    return node.size + 1  # Scale: a product per coefficient, and the sum of the constant terms


def concretize(A0: Tensor | None, const: Tensor, box: tuple[Tensor, Tensor], rigorous: bool = True) -> Tensor:
    """A rigorous lower bound ``(B, R)`` of the minimum of ``A0 x + const`` over the box ``[lo, hi]`` ``(B, n_in)``
    (``rigorous=False``: the minimum as computed, an estimate)."""
    if A0 is None:
        return const
    lo, hi = box
    # each coefficient takes its minimizing end of the box as it is: the centre-radius form rounds the
    # centre and the radius, which can lift the bound of a box touching the unsafe set above 0
    value = const + (A0.clamp(min=0) @ lo.unsqueeze(2)).squeeze(2) + (A0.clamp(max=0) @ hi.unsqueeze(2)).squeeze(2)
    if not rigorous:
        return value
    with torch.no_grad():
        terms = _dot(A0, magnitude(lo, hi)) + const.detach().abs()
        slack = gamma(2 * A0.shape[-1] + 3, A0.dtype) * terms + eta(A0.dtype)
    return down(value - slack)


def _relu_back(
    A: Tensor, relax: ReluRelaxation, alpha: Tensor | None, split_term: Tensor | None
) -> tuple[Tensor, Tensor]:
    A_in, neg = relu_rows(A.flatten(2), relax.lower_slope(alpha), relax.upper_slope.unsqueeze(1))  # (B, R, n)
    c = (neg @ relax.upper_bias.unsqueeze(-1)).squeeze(-1)  # (B, R): the intercepts by a matrix product
    if split_term is not None:
        A_in = A_in + split_term
    return A_in, c


def _relu_given(A: Tensor, relax: ReluRelaxation, nu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``A relu(z) >= nu z + h`` with ``h = min`` over ``z`` in ``[l, u]`` of ``A relu(z) - nu z`` (at ``l``,
    ``u`` or ``0``: the function is piecewise linear), and a bound of the rounding of ``h``."""
    A = A.flatten(2)  # (B, R, n)
    lo, hi = relax.lower.unsqueeze(1), relax.upper.unsqueeze(1)  # (B, 1, n)
    at_lo = A * lo.clamp(min=0) - nu * lo
    at_hi = A * hi.clamp(min=0) - nu * hi
    h = torch.minimum(at_lo, at_hi)
    h = torch.where((lo < 0) & (hi > 0), h.clamp(max=0), h)  # z = 0 gives 0
    c = h.sum(-1)
    with torch.no_grad():
        m = magnitude(relax.lower, relax.upper)
        n = A.shape[-1]
        slack = gamma(3, A.dtype) * (_dot(A, m) + _dot(nu, m)) + gamma(n + 1, A.dtype) * h.detach().abs().sum(-1)
    return nu, c, slack


def _maxpool_back(
    op: MaxPool, in_shape: tuple[int, ...], A: Tensor, relax: MaxPoolRelaxation
) -> tuple[Tensor, Tensor]:
    B, R, C = A.shape[:3]
    Hp, Wp = relax.padded_hw
    A = A.reshape(B, R, C, -1)  # (B, R, C, L)
    decided = relax.decided.unsqueeze(1)
    coef = torch.where(decided, A, A.clamp(min=0))
    c = torch.where(decided, 0.0, A.clamp(max=0) * relax.upper_const.unsqueeze(1)).flatten(2).sum(-1)
    idx = relax.argmax.unsqueeze(1).expand(B, R, C, -1)
    plane = A.new_zeros(B, R, C, Hp * Wp).scatter_add(3, idx, coef).reshape(B, R, C, Hp, Wp)
    top, left = op.padding[0], op.padding[1]
    return plane[..., top:top + in_shape[1], left:left + in_shape[2]], c


def linear_back(node: Node, ins: list[tuple[int, ...]], A: Tensor) -> tuple[list[Tensor], Tensor | None]:
    """Rows on the inputs of a linear node, and the constant ``(B, R)`` it adds."""
    op = node.op
    B, R = A.shape[:2]
    if isinstance(op, Dense):
        A = A.flatten(2)
        return [times_weight(op, A)], A @ op.bias
    if isinstance(op, Conv):
        return [_conv_back(node, ins[0], A)], A.sum((-2, -1)) @ op.bias
    if isinstance(op, AvgPool):
        return [_avgpool_back(op, ins[0], A)], None
    if isinstance(op, Add):
        return [A, A], None
    if isinstance(op, Scale):
        shift = op.shift.expand(node.shape)
        return [A * op.scale], (A * shift).flatten(2).sum(-1)
    if isinstance(op, Reshape):
        return [A.reshape(B, R, *ins[0])], None
    if isinstance(op, Transpose):
        inverse = [op.perm.index(a) for a in range(len(op.perm))]
        return [A.permute(0, 1, *(p + 2 for p in inverse))], None
    if isinstance(op, Pad):
        A_in = pad_last(A, tuple(-p for p in op.pads))
        c = op.value * (A.flatten(2).sum(-1) - A_in.flatten(2).sum(-1)) if op.value else None
        return [A_in], c
    if isinstance(op, Concat):
        sizes = [s[op.axis] for s in ins]
        return list(A.split(sizes, dim=op.axis + 2)), None
    if isinstance(op, Gather):  # the adjoint of a selection: scatter-add (an index of -1 drops its row)
        n_in = prod(ins[0])
        index = torch.where(op.index < 0, n_in, op.index) if op.fills else op.index
        A_in = A.new_zeros(B, R, n_in + int(op.fills)).index_add(2, index, A.flatten(2))
        return [A_in[:, :, :n_in].reshape(B, R, *ins[0])], None
    if isinstance(op, Input):
        raise ValueError("the input node has no inputs")
    raise TypeError(f"CROWN: unhandled node type {type(op).__name__}")


def _transpose_conv(
    A: Tensor, weight: Tensor, in_shape: tuple[int, ...], stride: tuple[int, int],
    padding: tuple[int, int, int, int], dilation: tuple[int, int], groups: int,
) -> Tensor:
    """Adjoint of a convolution on the padded input, cropped to the unpadded input."""
    B, R, Co, Ho, Wo = A.shape
    C, H, W = in_shape
    top, left, bottom, right = padding
    kh, kw = weight.shape[-2:]
    extra = (
        H + top + bottom - ((Ho - 1) * stride[0] + dilation[0] * (kh - 1) + 1),
        W + left + right - ((Wo - 1) * stride[1] + dilation[1] * (kw - 1) + 1),
    )
    if top == bottom and left == right and all(0 <= e < max(s, d) for e, s, d in zip(extra, stride, dilation)):
        # symmetric padding: conv_transpose2d crops it itself, into a contiguous result (a cropped view
        # would be copied again by every later flatten)
        x = F.conv_transpose2d(A.reshape(B * R, Co, Ho, Wo), weight, None, stride, (top, left), extra, groups,
                               dilation)
        return x.reshape(B, R, C, H, W)
    x = F.conv_transpose2d(A.reshape(B * R, Co, Ho, Wo), weight, None, stride, 0, extra, groups, dilation)
    return x[:, :, top:top + H, left:left + W].reshape(B, R, C, H, W)


def _conv_back(node: Node, in_shape: tuple[int, ...], A: Tensor) -> Tensor:
    op = node.op
    if matrix_pays(op, in_shape, A.shape[2:], A.dtype):
        return transposed_product(node, in_shape, A)
    return _transpose_conv(A, op.weight, in_shape, op.stride, op.padding, op.dilation, op.groups)


def _avgpool_back(op: AvgPool, in_shape: tuple[int, ...], A: Tensor) -> Tensor:
    C, H, W = in_shape
    kh, kw = op.kernel
    ones = A.new_ones(C, 1, kh, kw)
    if op.count_include_pad or not any(op.padding):
        divisor: Tensor | float = float(kh * kw)
    else:
        top, left, bottom, right = op.padding
        mask = pad_hw(A.new_ones(1, 1, H, W), op.padding)
        divisor = F.conv2d(mask, ones[:1], stride=op.stride)[0, 0]  # (Ho, Wo) window counts
    return _transpose_conv(A / divisor, ones, in_shape, op.stride, op.padding, (1, 1), C)
