"""Interval bound propagation (IBP) over every node type, and the forward sweep
that intersects node bounds with known bounds and split states.

The sweep is shared with CROWN, which plugs in tighter bounds for the nodes that
feed a nonlinearity (``refine``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from verifier.bounds.backward import concretize
from verifier.bounds.graph import bounded_nodes, relu_inputs, relu_layers_of
from verifier.bounds.prepare import check_domains, check_known, disable_tf32, spec_rows
from verifier.bounds.types import BoundResult, Domains, IntermediateBounds, Tensor
from verifier.forward import apply_node
from verifier.network import Add, Conv, Dense, Input, Network, Node, Scale

Interval = tuple[Tensor, Tensor]
# refine(i, intervals of the nodes before i, interval of node i) -> tighter bounds of node i
Refine = Callable[[int, list[Interval], Interval], Interval]


@dataclass(frozen=True, eq=False)
class NodeBounds:
    """Interval of every node, each ``(B, *node.shape)``, and the empty-domain mask."""

    bounds: list[Interval]
    empty: Tensor  # (B,) bool: the splits (with the known bounds) are infeasible


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
    disable_tf32(domains.lower.device)
    C, d = spec_rows(net, domains.batch, C, d)
    nb = sweep(net, domains, known)
    lower, upper = spec_interval(net, nb.bounds, C, d)
    lower, upper = mark_empty(lower, upper, nb.empty)
    return BoundResult(lower, upper, intermediate_of(net, nb.bounds), None)


def sweep(
    net: Network,
    domains: Domains,
    known: IntermediateBounds | None = None,
    refine: Refine | None = None,
) -> NodeBounds:
    """Propagate intervals node by node; at each node feeding a nonlinearity,
    intersect with the known bounds, ``refine`` (if given) and the split states.

    A domain is marked empty only when a split contradicts the bounds by more than
    a rounding margin (``split_conflict``); bounds that cross by less (rounding,
    e.g. on a single-point box) are replaced by their hull.
    """
    B = domains.batch
    need = set(bounded_nodes(net))
    layers_of = relu_layers_of(net)
    bounds: list[Interval] = []
    empty = torch.zeros(B, dtype=torch.bool, device=domains.lower.device)
    for i, node in enumerate(net.nodes):
        if isinstance(node.op, Input):
            lo, hi = domains.lower.reshape(B, *node.shape), domains.upper.reshape(B, *node.shape)
        else:
            lo, hi = interval_node(node, [bounds[j] for j in node.inputs])
        if i in need:
            shape = lo.shape
            lo, hi = lo.flatten(1), hi.flatten(1)  # (B, n_i)
            if known is not None:
                for k in layers_of.get(i, []):
                    lo, hi = torch.maximum(lo, known.lower[k]), torch.minimum(hi, known.upper[k])
            if refine is not None:
                rl, ru = refine(i, bounds, (lo.reshape(shape), hi.reshape(shape)))
                lo, hi = torch.maximum(lo, rl.flatten(1)), torch.minimum(hi, ru.flatten(1))
            if domains.splits is not None:
                for k in layers_of.get(i, []):
                    empty = empty | split_conflict(lo, hi, domains.splits[k])
                    lo, hi = apply_split(lo, hi, domains.splits[k])
            lo, hi = torch.minimum(lo, hi).reshape(shape), torch.maximum(lo, hi).reshape(shape)
        bounds.append((lo, hi))
    return NodeBounds(bounds, empty)


def split_conflict(lo: Tensor, hi: Tensor, split: Tensor) -> Tensor:
    """Domains ``(B,)`` where a neuron forced active has ``u < 0`` or one forced inactive has
    ``l > 0``, by more than a rounding margin (relative ``2^10`` machine epsilons)."""
    margin = 1024 * torch.finfo(lo.dtype).eps * (1 + lo.abs() + hi.abs())  # (B, n)
    bad = ((split > 0) & (hi < -margin)) | ((split < 0) & (lo > margin))
    return bad.any(1)


def apply_split(lo: Tensor, hi: Tensor, split: Tensor) -> Interval:
    """Intersect flat bounds ``(B, n)`` with the split states: active ``>= 0``, inactive ``<= 0``."""
    return torch.where(split > 0, lo.clamp(min=0), lo), torch.where(split < 0, hi.clamp(max=0), hi)


def interval_node(node: Node, args: list[Interval]) -> Interval:
    """Interval of one (non-input) node from the intervals of its inputs."""
    op = node.op
    if isinstance(op, (Dense, Conv, Scale)):
        # each weight meets the end of the input interval that minimizes (maximizes) the output, as
        # the ends are: a centre-radius form rounds the centre and the radius, which can lift the
        # lower bound of a box that touches the unsafe set above 0
        (lo, hi), = args
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


def pad_hw(x: Tensor, padding: tuple[int, int, int, int], value: float = 0.0) -> Tensor:
    """Pad the last two axes by (top, left, bottom, right)."""
    top, left, bottom, right = padding
    return F.pad(x, (left, right, top, bottom), value=value) if any(padding) else x


def spec_interval(net: Network, bounds: list[Interval], C: Tensor, d: Tensor) -> Interval:
    """Interval of ``C y - d``, with ``C`` folded into the output layer when it is Dense."""
    out = net.nodes[net.output]
    if isinstance(out.op, Dense):
        lo, hi = bounds[out.inputs[0]]
        W = C @ out.op.weight  # (B, S, n)
        c = torch.einsum("bso,o->bs", C, out.op.bias) - d  # (B, S)
    else:
        lo, hi = bounds[net.output]
        W, c = C, -d
    box = (lo.flatten(1), hi.flatten(1))  # (B, n)
    return concretize(W, c, box), -concretize(-W, -c, box)


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
