"""Concrete batched forward pass through the IR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    Tensor,
    Transpose,
)
from verifier.sparse import is_sparse, times_weight_t


def forward(net: Network, x: Tensor) -> Tensor:
    """Outputs ``(B, *output_shape)`` for inputs ``(B, *input_shape)`` or ``(B, n_in)``."""
    return forward_all(net, x)[net.output]


def forward_all(net: Network, x: Tensor) -> list[Tensor]:
    """The value of every node, each ``(B, *node.shape)``."""
    values: list[Tensor] = []
    for node in net.nodes:
        args = [values[j] for j in node.inputs]
        if isinstance(node.op, Input):
            values.append(x.reshape(x.shape[0], *node.shape))
        else:
            values.append(apply_node(node, args))
    return values


def apply_node(node: Node, args: list[Tensor]) -> Tensor:
    """One node on batched arguments (the input node excluded)."""
    op = node.op
    if isinstance(op, Dense):
        if is_sparse(op):
            return times_weight_t(op, args[0]) + op.bias
        return torch.nn.functional.linear(args[0], op.weight, op.bias)
    if isinstance(op, Conv):
        return F.conv2d(pad_hw(args[0], op.padding, 0.0), op.weight, op.bias, op.stride, 0, op.dilation, op.groups)
    if isinstance(op, Relu):
        return torch.relu(args[0])
    if isinstance(op, Add):
        return args[0] + args[1]
    if isinstance(op, Scale):
        return args[0] * op.scale + op.shift
    if isinstance(op, Reshape):
        return args[0].reshape(args[0].shape[0], *node.shape)
    if isinstance(op, Transpose):
        return args[0].permute(0, *(p + 1 for p in op.perm))
    if isinstance(op, AvgPool):
        x = pad_hw(args[0], op.padding, 0.0)
        out = F.avg_pool2d(x, op.kernel, op.stride)
        if not op.count_include_pad and any(op.padding):
            ones = pad_hw(torch.ones_like(args[0][:1, :1]), op.padding, 0.0)
            out = out / F.avg_pool2d(ones, op.kernel, op.stride)
        return out
    if isinstance(op, MaxPool):
        return F.max_pool2d(pad_hw(args[0], op.padding, float("-inf")), op.kernel, op.stride)
    if isinstance(op, Pad):
        return pad_last(args[0], op.pads, op.value)
    if isinstance(op, Concat):
        return torch.cat(args, dim=op.axis + 1)
    if isinstance(op, Gather):
        return gather_flat(args[0], op).reshape(args[0].shape[0], *node.shape)
    raise TypeError(f"forward: unhandled node type {type(op).__name__}")


def gather_flat(x: Tensor, op: Gather) -> Tensor:
    """``(B, n_out)``: the entries ``op.index`` of each flattened ``x`` ``(B, *shape)``, 0 where the index is -1."""
    flat = x.flatten(1)
    if not op.fills:
        return flat[:, op.index]
    flat = F.pad(flat, (0, 1))  # index -1 reads the appended 0
    return flat[:, op.index]


def pad_hw(x: Tensor, padding: tuple[int, int, int, int], value: float = 0.0) -> Tensor:
    """``x`` padded on its last two axes by ``(top, left, bottom, right)`` (the IR's conv/pool padding)."""
    top, left, bottom, right = padding
    return F.pad(x, (left, right, top, bottom), value=value) if any(padding) else x


def pad_last(x: Tensor, pads: tuple[int, ...], value: float = 0.0) -> Tensor:
    """``x`` padded ONNX-style (all begins, then all ends) over its last ``len(pads) // 2`` axes; a negative
    pad crops.  The one padding helper besides ``pad_hw``."""
    d = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(d)):  # torch pads from the last axis backwards
        torch_pads += [pads[axis], pads[axis + d]]
    return F.pad(x, torch_pads, value=value)
