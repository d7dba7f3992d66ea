"""Load-time folding: rewrites of a ``Network`` that keep its function and shrink its graph.

Each rewrite is exact in real arithmetic; the floating-point rounding of the merged constants is
kept as their error bounds (``verifier.constants``):

* a ``Reshape`` to its input's shape is dropped; ``Reshape`` of ``Reshape`` reads the first input;
* a ``Scale`` (normalization, BatchNorm, Sub/Mul/Div by constants) is folded into the
  ``Dense``/``Conv`` before it, or else into the ``Dense``/``Conv`` after it, moving it past a
  ``Reshape`` when a ``Dense`` follows; two ``Scale``\\ s in a row become one;
* two ``Dense`` in a row (no nonlinearity between) become one; ``Relu`` of ``Relu`` is one ``Relu``;
* a zero ``Pad`` of the spatial axes before a ``Conv`` becomes the conv's padding;
* a ``Gather`` of a ``Reshape``/``Transpose``/``Gather``/zero ``Pad``, and a ``Reshape``/``Transpose`` of a
  ``Gather``, become one ``Gather`` (selections compose without arithmetic); a ``Gather`` that selects
  everything in order is a ``Reshape``; a flat ``Gather`` of a ``Dense`` is a ``Dense`` of the selected rows.

A node is absorbed only when its single consumer is the node that absorbs it (so nothing is
computed twice) and it is not the network's output.  Fold in float64 and cast afterwards to
keep the rounding of merged weights below the model's own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from math import prod

import torch

from verifier import constants as K
from verifier.forward import pad_last
from verifier.network import Conv, Dense, Gather, Network, Node, Pad, Relu, Reshape, Scale, Tensor, Transpose

_Rewrite = Callable[[Network, int, list[list[int]]], "Network | None"]


def fold(net: Network) -> Network:
    """The same function with identity reshapes removed and affine neighbours merged."""
    rewrites: tuple[_Rewrite, ...] = (
        _drop_identity_reshape, _merge_reshapes, _drop_identity_scale, _merge_scales,
        _scale_into_producer, _scale_into_consumer, _scale_past_reshape, _merge_dense, _merge_relus,
        _pad_into_conv, _compose_selections, _drop_identity_gather, _gather_into_dense,
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
    op = node.op
    if (isinstance(op, Scale) and bool((op.scale == 1).all()) and bool((op.shift == 0).all())
            and op.scale_err is None and op.shift_err is None):
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
    a, b = src.op, node.op
    scale, scale_err = K.mul(a.scale, a.scale_err, b.scale, b.scale_err)
    shift, shift_err = K.add(*K.mul(a.shift, a.shift_err, b.scale, b.scale_err), b.shift, b.shift_err)
    op = Scale(scale=scale, shift=shift, scale_err=scale_err, shift_err=shift_err)
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
    sc = node.op
    if isinstance(src.op, Dense):
        (s, es), (t, et) = _flat(sc.scale, sc.scale_err, src.shape), _flat(sc.shift, sc.shift_err, src.shape)
        col = (s[:, None], None if es is None else es[:, None])
    elif isinstance(src.op, Conv):
        s, t = _per_channel(sc.scale, src.shape), _per_channel(sc.shift, src.shape)
        es, et = _per_channel_err(sc.scale_err, src.shape), _per_channel_err(sc.shift_err, src.shape)
        if s is None or t is None or es is False or et is False:
            return None
        col = (s[:, None, None, None], None if es is None else es[:, None, None, None])
    else:
        return None
    weight, weight_err = K.mul(src.op.weight, src.op.weight_err, *col)
    bias, bias_err = K.add(*K.mul(src.op.bias, src.op.bias_err, s, es), t, et)
    op = replace(src.op, weight=weight, bias=bias, weight_err=weight_err, bias_err=bias_err)
    return _with_node(net, i, replace(node, op=op, inputs=src.inputs, name=src.name or node.name))


def _scale_into_consumer(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Dense(Scale(x))`` or ``Conv(Scale(x))`` -> one affine node (conv: see ``_scale_conv``)."""
    node = net.nodes[i]
    c = _sole_consumer(net, i, cons)
    if not isinstance(node.op, Scale) or c is None:
        return None
    dst = net.nodes[c]
    if isinstance(dst.op, Dense):
        sc, d = node.op, dst.op
        (s, es), (t, et) = _flat(sc.scale, sc.scale_err, node.shape), _flat(sc.shift, sc.shift_err, node.shape)
        weight, weight_err = K.mul(d.weight, d.weight_err, s[None, :], None if es is None else es[None, :])
        wt, wt_err = K.matmul(d.weight, d.weight_err, *_column(t, et))
        bias, bias_err = K.add(d.bias, d.bias_err, *_flatten(wt, wt_err))
        op = Dense(weight=weight, bias=bias, weight_err=weight_err, bias_err=bias_err)
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
    es, et = _per_channel_err(scale.scale_err, shape), _per_channel_err(scale.shift_err, shape)
    if s is None or t is None or es is False or et is False or (any(conv.padding) and bool((t != 0).any())):
        return None
    c_out, c_in_g = conv.weight.shape[:2]

    def per_weight(v: Tensor | None) -> Tensor | None:  # input channel of weight[o, j] is group(o) * c_in_g + j
        if v is None:
            return None
        return v.reshape(conv.groups, c_in_g).repeat_interleave(c_out // conv.groups, dim=0)[:, :, None, None]

    weight, weight_err = K.mul(conv.weight, conv.weight_err, per_weight(s), per_weight(es))
    wt, wt_err = K.mul(conv.weight, conv.weight_err, per_weight(t), per_weight(et))
    total, total_err = K.matmul(wt.reshape(c_out, -1), None if wt_err is None else wt_err.reshape(c_out, -1),
                                torch.ones(wt[0].numel(), 1, dtype=wt.dtype), None)
    bias, bias_err = K.add(conv.bias, conv.bias_err, *_flatten(total, total_err))
    return replace(conv, weight=weight, bias=bias, weight_err=weight_err, bias_err=bias_err)


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

    def moved_to(v: Tensor | None) -> Tensor | None:
        return None if v is None else _full(v, node.shape).reshape(reshape.shape)

    sc = node.op
    moved = Scale(scale=moved_to(sc.scale), shift=moved_to(sc.shift), scale_err=moved_to(sc.scale_err),
                  shift_err=moved_to(sc.shift_err))
    net = _with_node(net, i, replace(reshape, inputs=node.inputs))
    return _with_node(net, r, replace(node, op=moved, inputs=(i,), shape=reshape.shape))


def _merge_dense(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Dense2(Dense1(x))`` -> ``Dense(W2 W1, W2 b1 + b2)``, unless ``W2 W1`` has more entries than ``W1`` and
    ``W2`` together (a bottleneck between them: TLL nets' banks, where one product took seconds at load)."""
    node = net.nodes[i]
    if not isinstance(node.op, Dense):
        return None
    p = node.inputs[0]
    src = net.nodes[p]
    if not isinstance(src.op, Dense) or _sole_consumer(net, p, cons) != i:
        return None
    d1, d2 = src.op, node.op
    (m, k), n = d2.weight.shape, d1.weight.shape[1]
    if m * n > m * k + k * n:  # through a bottleneck: the product is bigger (and slower) than its factors
        return None
    weight, weight_err = K.matmul(d2.weight, d2.weight_err, d1.weight, d1.weight_err)
    wb, wb_err = K.matmul(d2.weight, d2.weight_err, *_column(d1.bias, d1.bias_err))
    bias, bias_err = K.add(*_flatten(wb, wb_err), d2.bias, d2.bias_err)
    op = Dense(weight=weight, bias=bias, weight_err=weight_err, bias_err=bias_err)
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


def _source_index(node: Node, in_shape: tuple[int, ...]) -> Tensor | None:
    """For a node that only moves the entries of its one input: the flat input index that each output
    reads (-1: a 0), on the CPU; None for any other node."""
    op, n_in = node.op, prod(in_shape)
    if isinstance(op, Reshape):
        return torch.arange(n_in)
    if isinstance(op, Transpose):
        return torch.arange(n_in).reshape(in_shape).permute(op.perm).reshape(-1)
    if isinstance(op, Pad) and op.value == 0.0:
        return pad_last(torch.arange(n_in).reshape(in_shape), op.pads, -1).reshape(-1)
    if isinstance(op, Gather):
        return op.index.cpu()
    return None


def _compose_selections(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """``Gather(Reshape|Transpose|Gather|zero Pad(x))`` or ``Reshape|Transpose(Gather(x))`` -> one ``Gather(x)``
    (a Pad of a Gather stays: it may fold into a Conv).  Nothing is computed twice, so the first node may
    have other readers."""
    node = net.nodes[i]
    if len(node.inputs) != 1:
        return None
    src = net.nodes[node.inputs[0]]
    if len(src.inputs) != 1 or not (isinstance(node.op, Gather) or (isinstance(src.op, Gather) and
                                                                    isinstance(node.op, (Reshape, Transpose)))):
        return None
    outer, inner = _source_index(node, src.shape), _source_index(src, net.nodes[src.inputs[0]].shape)
    if outer is None or inner is None:
        return None
    index = torch.where(outer >= 0, inner[outer.clamp(min=0)], -1)
    device = node.op.index.device if isinstance(node.op, Gather) else src.op.index.device
    return _with_node(net, i, replace(node, op=Gather(index.to(device)), inputs=src.inputs))


def _drop_identity_gather(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """A ``Gather`` of every entry in order is a ``Reshape`` (dropped when the shape is the same too)."""
    node = net.nodes[i]
    if not isinstance(node.op, Gather):
        return None
    src = net.nodes[node.inputs[0]]
    index = node.op.index
    if index.numel() != src.size or not torch.equal(index.cpu(), torch.arange(src.size)):
        return None
    return _bypass(net, i) if src.shape == node.shape else _with_node(net, i, replace(node, op=Reshape()))


def _gather_into_dense(net: Network, i: int, cons: list[list[int]]) -> Network | None:
    """A flat ``Gather`` of at most as many entries as the ``Dense`` it alone reads -> a ``Dense`` of the
    selected rows (rows of zeros for the index -1); the rows' values are copied, so nothing rounds."""
    node = net.nodes[i]
    if not isinstance(node.op, Gather) or len(node.shape) != 1:
        return None
    p = node.inputs[0]
    src = net.nodes[p]
    if not isinstance(src.op, Dense) or _sole_consumer(net, p, cons) != i or node.size > src.size:
        return None
    index, fills = node.op.index, node.op.fills

    def rows(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return (torch.cat([t, t.new_zeros(1, *t.shape[1:])]) if fills else t)[index].contiguous()

    d = src.op
    op = Dense(weight=rows(d.weight), bias=rows(d.bias), weight_err=rows(d.weight_err), bias_err=rows(d.bias_err))
    return _with_node(net, i, replace(node, op=op, inputs=src.inputs, name=src.name or node.name))


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


def _column(v: Tensor, err: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A vector and its error bound as ``(n, 1)`` columns."""
    return v[:, None], None if err is None else err[:, None]


def _flatten(v: Tensor, err: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """An ``(n, 1)`` column and its error bound as vectors."""
    return v[:, 0], None if err is None else err[:, 0]


def _flat(v: Tensor, err: Tensor | None, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """A constant and its error bound broadcast to ``shape``, flat."""
    return _full(v, shape).reshape(-1), None if err is None else _full(err, shape).reshape(-1)


def _per_channel_err(err: Tensor | None, shape: tuple[int, ...]) -> Tensor | None | bool:
    """``_per_channel`` of an error bound (None stays None; False when it is not per channel)."""
    if err is None:
        return None
    out = _per_channel(err, shape)
    return False if out is None else out


def _broadcast_scale(op: Scale) -> Scale:
    tensors = [t for t in (op.scale, op.shift, op.scale_err, op.shift_err) if t is not None]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))

    def full(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.broadcast_to(t, shape).contiguous()

    return Scale(scale=full(op.scale), shift=full(op.shift), scale_err=full(op.scale_err), shift_err=full(op.shift_err))
