"""Interval bound propagation (IBP) over every node type, and the forward sweep
that intersects node bounds with known bounds and split states.

The sweep is shared with CROWN, which plugs in tighter bounds for the nodes that
feed a nonlinearity (``refine``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from verifier.bounds.backward import concretize
from verifier.bounds.graph import bounded_nodes, relu_inputs, relu_layers_of
from verifier.bounds.prepare import check_domains, check_known, check_no_tf32, spec_rows
from verifier.bounds.rounding import down, gamma, magnitude, up
from verifier.bounds.types import BoundResult, Domains, IntermediateBounds, Tensor
from verifier.forward import apply_node, pad_hw
from verifier.network import Add, AvgPool, Conv, Dense, Input, Network, Node, Scale
from verifier.sparse import is_sparse, times_weight_t

Interval = tuple[Tensor, Tensor]
# refine(i, the bounds of the nodes before i, interval of node i) -> tighter bounds of node i
Refine = Callable[[int, "NodeBounds", Interval], Interval]


@dataclass(frozen=True, eq=False)
class NodeBounds:
    """Rigorous interval of every node, each ``(B, *node.shape)``, and what the backward passes need
    to bound their own rounding: the magnitude ``max(|lo|, |hi|)`` of every node and, for the linear
    nodes that compute, the magnitude of their terms (``arith``, see ``rounding_terms``)."""

    bounds: list[Interval]
    empty: Tensor  # (B,) bool: the domain holds no input (the splits, or proven bounds that cross)
    mags: list[Tensor] = field(default_factory=list)  # (B, *shape) each
    arith: list[Tensor | None] = field(default_factory=list)  # (B, *shape) or None for exact nodes
    # (B, *shape): how far the node's inexact constants (``*_err``) can move its value, or None
    errs: list[Tensor | None] = field(default_factory=list)
    # False for the float32 estimates that slope optimization iterates on (alpha.py): no rounding slack,
    # bounds that cross mark nothing empty; nothing computed from them may drop a region
    rigorous: bool = True


def ibp(
    net: Network,
    domains: Domains,
    C: Tensor | None = None,
    d: Tensor | None = None,
    known: IntermediateBounds | None = None,
) -> BoundResult:
    """Interval bounds of ``C f(x) - d`` over each domain (upper included)."""
    check_domains(net, domains)
    check_known(net, known, domains.batch)
    check_no_tf32(domains.lower.device)
    C, d = spec_rows(net, domains.batch, C, d)
    nb = sweep(net, domains, known)
    lower, upper = spec_interval(net, nb, C, d)
    lower, upper = mark_empty(lower, upper, nb.empty)
    return BoundResult(lower, upper, intermediate_of(net, nb.bounds), None)


def sweep(
    net: Network,
    domains: Domains,
    known: IntermediateBounds | None = None,
    refine: Refine | None = None,
    rigorous: bool = True,
    as_known: frozenset[int] = frozenset(),
    reference: NodeBounds | None = None,
) -> NodeBounds:
    """Propagate intervals node by node, widened by their rounding error (``rounding_terms``); at each
    node feeding a nonlinearity, intersect with the known bounds, ``refine`` (if given) and the split
    states.  The nodes ``as_known`` (pre-activations) take the known bounds as they are, without
    interval arithmetic (branch and bound's children keep their parent's bounds up to the layer they
    split).

    All bounds are rigorous, so bounds that cross prove the domain empty (a split contradicted, or
    proven bounds that exclude each other); such a domain is marked empty and its bounds replaced
    by their hull, so that later arithmetic on it stays finite.  With ``rigorous=False`` (estimates)
    there is no rounding slack and nothing is marked empty.

    ``reference``: the (rigorous) node bounds of a box and pre-activation bounds that contain every
    domain's (e.g. branch and bound's root, batch 1).  Where every node feeding a nonlinearity is
    ``as_known`` (so no interval below is needed per domain), every other node but the input takes the
    reference's interval, magnitudes and rounding terms (valid on any part of that box) instead of
    interval arithmetic; otherwise it is ignored (an interval computed per domain after a split can be
    far tighter than the reference's).
    """
    B = domains.batch
    need = set(bounded_nodes(net))
    layers_of = relu_layers_of(net)
    nodes = NodeBounds([], torch.zeros(B, dtype=torch.bool, device=domains.lower.device), rigorous=rigorous)
    empty = nodes.empty
    if known is None or not need <= as_known:
        reference = None
    for i, node in enumerate(net.nodes):
        ref = reference is not None and not isinstance(node.op, Input)
        if ref:
            q, e = _expand(reference.arith[i], B), _expand(reference.errs[i], B)
            if i in as_known:
                lo, hi = _known_interval(node, known, layers_of[i][0], B)
            else:
                lo, hi = (_expand(t, B) for t in reference.bounds[i])  # its rounding included
        else:
            lo, hi, q, e = _interval(net, i, nodes, domains, known if i in as_known else None, layers_of, rigorous)
        nodes.bounds.append((lo, hi))
        nodes.arith.append(q)
        nodes.errs.append(e)
        if i in need:
            shape = lo.shape
            lo, hi = lo.flatten(1), hi.flatten(1)  # (B, n_i)
            if known is not None:
                for k in layers_of.get(i, []):
                    lo, hi = torch.maximum(lo, known.lower[k]), torch.minimum(hi, known.upper[k])
            if refine is not None:
                nodes.mags.append(magnitude(lo, hi).reshape(shape))
                rl, ru = refine(i, nodes, (lo.reshape(shape), hi.reshape(shape)))
                nodes.mags.pop()
                lo, hi = torch.maximum(lo, rl.flatten(1)), torch.minimum(hi, ru.flatten(1))
            if domains.splits is not None:
                for k in layers_of.get(i, []):
                    lo, hi = apply_split(lo, hi, domains.splits[k])
            if rigorous:
                empty = empty | (lo > hi).any(1)
            lo, hi = torch.minimum(lo, hi).reshape(shape), torch.maximum(lo, hi).reshape(shape)
            nodes.bounds[i] = (lo, hi)
        nodes.mags.append(_expand(reference.mags[i], B) if ref and i not in need else magnitude(lo, hi))
    return replace(nodes, empty=empty)


def _interval(net: Network, i: int, nodes: NodeBounds, domains: Domains, known: IntermediateBounds | None,
              layers_of: dict[int, list[int]], rigorous: bool
              ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Node ``i``'s interval (the box for the input, ``known`` where given, else interval arithmetic
    widened by its rounding), its rounding terms and its constants' error (``rigorous`` only)."""
    node, B = net.nodes[i], domains.batch
    if isinstance(node.op, Input):
        return domains.lower.reshape(B, *node.shape), domains.upper.reshape(B, *node.shape), None, None
    q = e = None
    if rigorous:
        q = node_terms(node, [nodes.mags[j] for j in node.inputs])
        e = node_error(node, [nodes.mags[j] for j in node.inputs])
    if known is not None:
        return (*_known_interval(node, known, layers_of[i][0], B), q, e)
    lo, hi = interval_node(node, [nodes.bounds[j] for j in node.inputs])
    if q is not None:
        g = gamma(forward_terms(node, [net.nodes[j].shape for j in node.inputs]), lo.dtype)
        width = g * q if e is None else g * q + e
        lo, hi = down(lo - width), up(hi + width)
    return lo, hi, q, e


def _known_interval(node: Node, known: IntermediateBounds, k: int, B: int) -> Interval:
    """ReLU layer ``k``'s known pre-activation bounds, shaped as ``node``."""
    return known.lower[k].expand(B, -1).reshape(B, *node.shape), known.upper[k].expand(B, -1).reshape(B, *node.shape)


def _expand(t: Tensor | None, B: int) -> Tensor | None:
    """A reference's tensor (batch 1 or ``B``) as a batch of ``B`` (a view)."""
    return None if t is None else t.expand(B, *t.shape[1:])


def apply_split(lo: Tensor, hi: Tensor, split: Tensor) -> Interval:
    """Intersect flat bounds ``(B, n)`` with the split states: active ``>= 0``, inactive ``<= 0``."""
    return torch.where(split > 0, lo.clamp(min=0), lo), torch.where(split < 0, hi.clamp(max=0), hi)


def interval_node(node: Node, args: list[Interval]) -> Interval:
    """Interval of one (non-input) node from the intervals of its inputs, as computed (rounded to
    nearest: ``sweep`` widens it by ``forward_terms`` and ``node_terms``)."""
    op = node.op
    if isinstance(op, (Dense, Conv, Scale)):
        # each weight meets the end of the input interval that minimizes (maximizes) the output, as
        # the ends are: a centre-radius form rounds the centre and the radius
        (lo, hi), = args
        if isinstance(op, Dense) and is_sparse(op):
            return (times_weight_t(op, lo, "pos") + times_weight_t(op, hi, "neg") + op.bias,
                    times_weight_t(op, hi, "pos") + times_weight_t(op, lo, "neg") + op.bias)
        if isinstance(op, Dense):
            pos, neg = op.weight.clamp(min=0), op.weight.clamp(max=0)
            return (F.linear(lo, pos, op.bias) + F.linear(hi, neg), F.linear(hi, pos, op.bias) + F.linear(lo, neg))
        if isinstance(op, Conv):
            conv = (op.stride, 0, op.dilation, op.groups)
            pos, neg = op.weight.clamp(min=0), op.weight.clamp(max=0)
            lo, hi = pad_hw(lo, op.padding), pad_hw(hi, op.padding)
            return (F.conv2d(lo, pos, op.bias, *conv) + F.conv2d(hi, neg, None, *conv),
                    F.conv2d(hi, pos, op.bias, *conv) + F.conv2d(lo, neg, None, *conv))
        a, b = lo * op.scale + op.shift, hi * op.scale + op.shift
        return torch.minimum(a, b), torch.maximum(a, b)
    if isinstance(op, Add):
        return args[0][0] + args[1][0], args[0][1] + args[1][1]
    # every remaining op is monotone (nondecreasing) in each input
    return apply_node(node, [a[0] for a in args]), apply_node(node, [a[1] for a in args])


def node_terms(node: Node, mags: list[Tensor]) -> Tensor | None:
    """For a node whose forward computation rounds, a bound ``(B, *shape)`` of the sum of the absolute
    values of the terms summed into each output (``|W| m + |b|`` for an affine node with inputs of
    magnitude ``m``); None for a node that only moves values (exact).  In float64 the rounding terms
    are so small that ``(sum_j |W_ij|) max m + |b_i|`` (no matrix product) does."""
    op = node.op
    if isinstance(op, (Dense, Conv)) and mags[0].dtype == torch.float64:
        rows, bias = _abs_rows(op)  # (m,) or (C,), the same
        top = mags[0].flatten(1).amax(1)  # (B,)
        q = top[:, None] * rows[None] + bias[None]  # (B, m) or (B, C)
        return q if isinstance(op, Dense) else q[:, :, None, None].expand(-1, -1, *node.shape[1:])
    if isinstance(op, Dense):
        return times_weight_t(op, mags[0], "abs") + op.bias.abs()
    if isinstance(op, Conv):
        m = pad_hw(mags[0], op.padding)
        return F.conv2d(m, op.weight.abs(), op.bias.abs(), op.stride, 0, op.dilation, op.groups)
    if isinstance(op, Scale):
        return mags[0] * op.scale.abs() + op.shift.abs()
    if isinstance(op, Add):
        return mags[0] + mags[1]
    if isinstance(op, AvgPool):
        return apply_node(node, mags)
    return None


@functools.lru_cache(maxsize=64)
def _abs_rows(op: Dense | Conv) -> tuple[Tensor, Tensor]:
    """The sum of ``|W|`` over each output's inputs, and ``|b|``."""
    return op.weight.abs().flatten(1).sum(1), op.bias.abs()


def node_error(node: Node, mags: list[Tensor]) -> Tensor | None:
    """For a node with inexact constants, a bound ``(B, *shape)`` of how far they can move its value
    for inputs of magnitude ``mags`` (``|dW| m + |db|``, rounded up); None when its constants are exact."""
    op = node.op
    if isinstance(op, (Dense, Conv)) and (op.weight_err is not None or op.bias_err is not None):
        w = op.weight_err if op.weight_err is not None else torch.zeros_like(op.weight)
        b = op.bias_err if op.bias_err is not None else torch.zeros_like(op.bias)
        if isinstance(op, Dense):
            e = F.linear(mags[0], w, b)
        else:
            e = F.conv2d(pad_hw(mags[0], op.padding), w, b, op.stride, 0, op.dilation, op.groups)
    elif isinstance(op, Scale) and (op.scale_err is not None or op.shift_err is not None):
        e = mags[0] * (op.scale_err if op.scale_err is not None else 0.0)
        e = e + (op.shift_err if op.shift_err is not None else 0.0)
    else:
        return None
    return e * (1 + 2 * gamma(forward_terms(node, []), e.dtype))


def forward_terms(node: Node, in_shapes: list[tuple[int, ...]]) -> int:
    """The most roundings that one output of ``node`` goes through in ``interval_node`` (and ``forward``)."""
    op = node.op
    if isinstance(op, Dense):
        return 2 * op.weight.shape[1] + 2
    if isinstance(op, Conv):
        return 2 * op.weight[0].numel() + 2
    if isinstance(op, AvgPool):
        return op.kernel[0] * op.kernel[1] + 2
    return 2  # Scale: a product and a sum; Add: one sum


def spec_interval(net: Network, nodes: NodeBounds, C: Tensor, d: Tensor) -> Interval:
    """Rigorous interval of ``C y - d``, with ``C`` folded into the output layer when it is Dense."""
    out = net.nodes[net.output]
    slack = None
    if isinstance(out.op, Dense):
        lo, hi = nodes.bounds[out.inputs[0]]
        W = C @ out.op.weight  # (B, S, n)
        c = torch.einsum("bso,o->bs", C, out.op.bias) - d  # (B, S)
    else:
        lo, hi = nodes.bounds[net.output]
        W, c = C, -d
    if isinstance(out.op, Dense) and nodes.rigorous:
        # the products above round: each entry sums n_out + 1 terms, bounded through the layer's terms
        terms = (C.abs() @ nodes.arith[net.output].flatten(1).unsqueeze(2)).squeeze(2) + d.abs()
        slack = gamma(out.op.weight.shape[0] + 2, C.dtype) * terms
        if nodes.errs[net.output] is not None:  # and its constants may be off
            slack = slack + (C.abs() @ nodes.errs[net.output].flatten(1).unsqueeze(2)).squeeze(2)
    box = (lo.flatten(1), hi.flatten(1))  # (B, n)
    lower, upper = concretize(W, c, box, nodes.rigorous), -concretize(-W, -c, box, nodes.rigorous)
    if slack is not None:
        lower, upper = down(lower - slack), up(upper + slack)
    return lower, upper


def mark_empty(lower: Tensor, upper: Tensor | None, empty: Tensor) -> tuple[Tensor, Tensor | None]:
    """``+inf`` lower (``-inf`` upper) bounds for the domains proven empty."""
    inf = torch.tensor(float("inf"), dtype=lower.dtype, device=lower.device)
    lower = torch.where(empty[:, None], inf, lower)
    if upper is not None:
        upper = torch.where(empty[:, None], -inf, upper)
    return lower, upper


def intermediate_of(net: Network, bounds: list[Interval]) -> IntermediateBounds:
    """The pre-activation bounds of each ReLU layer, flat ``(B, n_k)``."""
    pre = relu_inputs(net)
    return IntermediateBounds(
        tuple(bounds[p][0].flatten(1) for p in pre), tuple(bounds[p][1].flatten(1) for p in pre)
    )
