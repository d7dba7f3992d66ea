"""Load-time folding: rewrites of a ``Network`` that keep its function and shrink its graph.

Each rewrite is exact in real arithmetic (only floating-point rounding changes):

* a ``Reshape`` to its input's shape is dropped; ``Reshape`` of ``Reshape`` reads the first input;
* a ``Scale`` (normalization, BatchNorm, Sub/Mul/Div by constants) is folded into the
  ``Dense``/``Conv`` before it, or else into the ``Dense``/``Conv`` after it, moving it past a
  ``Reshape`` when a ``Dense`` follows; two ``Scale``\\ s in a row become one;
* two ``Dense`` in a row (no nonlinearity between) become one; ``Relu`` of ``Relu`` is one ``Relu``;
* a zero ``Pad`` of the spatial axes before a ``Conv`` becomes the conv's padding.

A node is absorbed only when its single consumer is the node that absorbs it (so nothing is
computed twice) and it is not the network's output.  Fold in float64 and cast afterwards to
keep the rounding of merged weights below the model's own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from verifier.network import Conv, Dense, Network, Node, Pad, Relu, Reshape, Scale, Tensor

_Rewrite = Callable[[Network, int, list[list[int]]], "Network | None"]


def fold(net: Network) -> Network:
    """The same function with identity reshapes removed and affine neighbours merged."""
    rewrites: tuple[_Rewrite, ...] = (
        _drop_identity_reshape, _merge_reshapes, _drop_identity_scale, _merge_scales,
        _scale_into_producer, _scale_into_consumer, _scale_past_reshape, _merge_dense, _merge_relus,
        _pad_into_conv,
    )
    net = prune(net)
    changed = True
    while changed:
        changed = False
        for rewrite in rewrites:
            i, cons = 1, consumers(net)
            while i < len(net.nodes):
                new = rewrite(net, i, cons)
                if new is None:
                    i += 1
                    continue
                net, changed = prune(new), True
                cons = consumers(net)
    return net


def consumers(net: Network) -> list[list[int]]:
    """For every node, the indices of the nodes that read it."""
    out: list[list[int]] = [[] for _ in net.nodes]
    for i, node in enumerate(net.nodes):
        for j in node.inputs:
            out[j].append(i)
    return out


def prune(net: Network) -> Network:
    """Drop the nodes the output does not depend on and renumber the rest in order."""
    live = {0, net.output}
    for i in range(net.output, 0, -1):
        if i in live:
            live.update(net.nodes[i].inputs)
    keep = sorted(live)
    new_index = {old: new for new, old in enumerate(keep)}
    nodes = tuple(
        replace(net.nodes[i], inputs=tuple(new_index[j] for j in net.nodes[i].inputs)) for i in keep
    )
    return Network(nodes=nodes, output=new_index[net.output])


def _sole_consumer(net: Network, i: int, cons: list[list[int]]) -> int | None:
    """The one node reading node ``i``, if there is exactly one and ``i`` is not the output."""
    if i == net.output or len(cons[i]) != 1:
        return None
    return cons[i][0]


def _with_node(net: Network, i: int, node: Node) -> Network:
    return Network(nodes=net.nodes[:i] + (node,) + net.nodes[i + 1:], output=net.output)


def _bypass(net: Network, i: int) -> Network:
    """Every reader of node ``i`` reads node ``i``'s (single) input instead."""
    src = net.nodes[i].inputs[0]
    nodes = tuple(
        replace(n, inputs=tuple(src if j == i else j for j in n.inputs)) if i in n.inputs else n
        for n in net.nodes
    )
    return Network(nodes=nodes, output=src if net.output == i else net.output)


def _drop_identity_reshape(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    node = net.nodes[i]
    if isinstance(node.op, Reshape) and net.nodes[node.inputs[0]].shape == node.shape:
        return _bypass(net, i)
    return None


def _merge_reshapes(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    node = net.nodes[i]
    if not isinstance(node.op, Reshape):
        return None
    src = net.nodes[node.inputs[0]]
    if not isinstance(src.op, Reshape):
        return None
    return _with_node(net, i, replace(node, inputs=src.inputs))


def _drop_identity_scale(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    node = net.nodes[i]
    if isinstance(node.op, Scale) and bool((node.op.scale == 1).all()) and bool((node.op.shift == 0).all()):
        return _bypass(net, i)
    return None


def _merge_scales(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    node = net.nodes[i]
    src = net.nodes[node.inputs[0]] if node.inputs else None
    if not (isinstance(node.op, Scale) and src is not None and isinstance(src.op, Scale)):
        return None
    if _sole_consumer(net, node.inputs[0], cons) != i:
        return None
    # s2 * (s1 x + t1) + t2
    op = Scale(scale=src.op.scale * node.op.scale, shift=src.op.shift * node.op.scale + node.op.shift)
    return _with_node(net, i, replace(node, op=_broadcast_scale(op), inputs=src.inputs))


def _scale_into_producer(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Scale(Dense(x))`` or ``Scale(Conv(x))`` with a per-channel scale -> one affine node."""
    node = net.nodes[i]
    if not isinstance(node.op, Scale):
        return None
    p = node.inputs[0]
    src = net.nodes[p]
    if _sole_consumer(net, p, cons) != i:
        return None
    if isinstance(src.op, Dense):
        s, t = _full(node.op.scale, src.shape).reshape(-1), _full(node.op.shift, src.shape).reshape(-1)
        op = Dense(weight=src.op.weight * s[:, None], bias=src.op.bias * s + t)
    elif isinstance(src.op, Conv):
        s, t = _per_channel(node.op.scale, src.shape), _per_channel(node.op.shift, src.shape)
        if s is None or t is None:
            return None
        op = replace(src.op, weight=src.op.weight * s[:, None, None, None], bias=src.op.bias * s + t)
    else:
        return None
    return _with_node(net, i, replace(node, op=op, inputs=src.inputs, name=src.name or node.name))


def _scale_into_consumer(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Dense(Scale(x))`` or ``Conv(Scale(x))`` -> one affine node (conv: see ``_scale_conv``)."""
    node = net.nodes[i]
    c = _sole_consumer(net, i, cons)
    if not isinstance(node.op, Scale) or c is None:
        return None
    dst = net.nodes[c]
    if isinstance(dst.op, Dense):
        s, t = _full(node.op.scale, node.shape).reshape(-1), _full(node.op.shift, node.shape).reshape(-1)
        op = Dense(weight=dst.op.weight * s[None, :], bias=dst.op.bias + dst.op.weight @ t)
    elif isinstance(dst.op, Conv):
        op = _scale_conv(node.op, node.shape, dst.op)
        if op is None:
            return None
    else:
        return None
    return _with_node(net, c, replace(dst, op=op, inputs=node.inputs))


def _scale_conv(scale: Scale, shape: tuple[int, ...], conv: Conv) -> Conv | None:
    """``conv(s x + t)`` as one conv when ``s``, ``t`` are per channel and the padding cannot see ``t``.

    Padding is applied after the shift, so a nonzero shift folds only into an unpadded conv.
    """
    s, t = _per_channel(scale.scale, shape), _per_channel(scale.shift, shape)
    if s is None or t is None or (any(conv.padding) and bool((t != 0).any())):
        return None
    c_out, c_in_g = conv.weight.shape[:2]
    # input channel of weight[o, j] is group(o) * c_in_g + j
    s_w = s.reshape(conv.groups, c_in_g).repeat_interleave(c_out // conv.groups, dim=0)  # (C_out, C_in/g)
    t_w = t.reshape(conv.groups, c_in_g).repeat_interleave(c_out // conv.groups, dim=0)
    weight = conv.weight * s_w[:, :, None, None]
    bias = conv.bias + (conv.weight * t_w[:, :, None, None]).sum(dim=(1, 2, 3))
    return replace(conv, weight=weight, bias=bias)


def _scale_past_reshape(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Reshape(Scale(x))`` -> ``Scale(Reshape(x))`` when a ``Dense`` reads the reshape."""
    node = net.nodes[i]
    r = _sole_consumer(net, i, cons)
    if not isinstance(node.op, Scale) or r is None or not isinstance(net.nodes[r].op, Reshape):
        return None
    after = _sole_consumer(net, r, cons)
    if after is None or not isinstance(net.nodes[after].op, Dense):
        return None
    reshape = net.nodes[r]
    moved = Scale(
        scale=_full(node.op.scale, node.shape).reshape(reshape.shape),
        shift=_full(node.op.shift, node.shape).reshape(reshape.shape),
    )
    net = _with_node(net, i, replace(reshape, inputs=node.inputs))
    return _with_node(net, r, replace(node, op=moved, inputs=(i,), shape=reshape.shape))


def _merge_dense(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Dense2(Dense1(x))`` -> ``Dense(W2 W1, W2 b1 + b2)``."""
    node = net.nodes[i]
    if not isinstance(node.op, Dense):
        return None
    p = node.inputs[0]
    src = net.nodes[p]
    if not isinstance(src.op, Dense) or _sole_consumer(net, p, cons) != i:
        return None
    w2 = node.op.weight
    op = Dense(weight=w2 @ src.op.weight, bias=w2 @ src.op.bias + node.op.bias)
    return _with_node(net, i, replace(node, op=op, inputs=src.inputs))


def _merge_relus(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    node = net.nodes[i]
    if isinstance(node.op, Relu) and isinstance(net.nodes[node.inputs[0]].op, Relu):
        return _bypass(net, i)
    return None


def _pad_into_conv(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """A zero ``Pad`` of H and W only (no cropping), read only by a ``Conv``, becomes its padding."""
    node = net.nodes[i]
    c = _sole_consumer(net, i, cons)
    if not isinstance(node.op, Pad) or c is None or not isinstance(net.nodes[c].op, Conv):
        return None
    pads = node.op.pads
    if node.op.value != 0.0 or len(pads) != 6 or pads[0] or pads[3] or min(pads) < 0:
        return None
    conv = net.nodes[c].op
    top, left, bottom, right = conv.padding
    padding = (top + pads[1], left + pads[2], bottom + pads[4], right + pads[5])
    return _with_node(net, c, replace(net.nodes[c], op=replace(conv, padding=padding), inputs=node.inputs))


def _full(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t`` broadcast to ``shape`` as a contiguous tensor."""
    return t.expand(shape).contiguous()


def _per_channel(t: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    """``t`` as a ``(C,)`` vector when it is constant over the spatial axes of ``shape`` (C, H, W)."""
    if len(shape) != 3:
        return None
    full = _full(t, shape)  # (C, H, W)
    per_c = full[:, :1, :1]
    if not torch.equal(full, per_c.expand(shape)):
        return None
    return per_c.reshape(-1)


def _broadcast_scale(op: Scale) -> Scale:
    scale, shift = torch.broadcast_tensors(op.scale, op.shift)
    return Scale(scale=scale.contiguous(), shift=shift.contiguous())
