"""Network IR -> ONNX (opset 13), so that a network built in memory can be replayed in onnxruntime.

Every IR tensor becomes an ONNX tensor with a leading batch axis of size 1 (the
convention ``verifier.onnx_import`` reads back); constants keep the network's
float dtype (float32 or float64).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

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

OPSET = 13
_ELEM = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE}


def save_onnx(net: Network, path: str | os.PathLike) -> None:
    """Write ``net`` as an ONNX model file (one input ``input``, one output ``output``)."""
    Path(path).write_bytes(to_onnx(net).SerializeToString())


def to_onnx(net: Network) -> onnx.ModelProto:
    """``net`` as a checked ONNX model of opset 13."""
    if net.dtype not in _ELEM:
        raise ValueError(f"ONNX export supports float32 and float64 networks, not {net.dtype}")
    graph = _Graph(net.dtype)
    names: list[str] = []
    for i, node in enumerate(net.nodes):
        names.append(graph.node(i, node, [names[j] for j in node.inputs]))
    elem = _ELEM[net.dtype]
    out = net.nodes[net.output]
    graph.nodes.append(helper.make_node("Identity", [names[net.output]], ["output"], name="output"))
    g = helper.make_graph(
        graph.nodes, "verifier_export",
        [helper.make_tensor_value_info("input", elem, [1, *net.input_shape])],
        [helper.make_tensor_value_info("output", elem, [1, *out.shape])],
        graph.initializers,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="verifier")
    model.ir_version = 7  # readable by every onnxruntime that supports opset 13
    onnx.checker.check_model(model)
    return model


class _Graph:
    """Accumulates ONNX nodes and initializers while the IR nodes are visited in order."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: torch.Tensor | np.ndarray, integer: bool = False) -> str:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        arr = arr.astype(np.int64 if integer else self.np_dtype)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def emit(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def node(self, i: int, node: Node, args: list[str]) -> str:
        """Emit IR node ``i``; returns the name of its output tensor."""
        op, out = node.op, f"n{i}"
        if isinstance(op, Input):
            return "input"
        if isinstance(op, Dense):
            w, b = self.const(f"{out}_w", op.weight), self.const(f"{out}_b", op.bias)
            return self.emit("Gemm", [args[0], w, b], out, transB=1)
        if isinstance(op, Conv):
            w, b = self.const(f"{out}_w", op.weight), self.const(f"{out}_b", op.bias)
            return self.emit("Conv", [args[0], w, b], out, strides=list(op.stride), pads=_hw_pads(op.padding),
                             dilations=list(op.dilation), group=op.groups, kernel_shape=list(op.weight.shape[2:]))
        if isinstance(op, Relu):
            return self.emit("Relu", args, out)
        if isinstance(op, Add):
            return self.emit("Add", args, out)
        if isinstance(op, Scale):
            scaled = self.emit("Mul", [args[0], self.const(f"{out}_scale", op.scale)], f"{out}_mul")
            return self.emit("Add", [scaled, self.const(f"{out}_shift", op.shift)], out)
        if isinstance(op, Reshape):
            return self.emit("Reshape", [args[0], self.const(f"{out}_shape", [1, *node.shape], True)], out)
        if isinstance(op, Transpose):
            return self.emit("Transpose", args, out, perm=[0, *(p + 1 for p in op.perm)])
        if isinstance(op, AvgPool):
            return self.emit("AveragePool", args, out, kernel_shape=list(op.kernel), strides=list(op.stride),
                             pads=_hw_pads(op.padding), count_include_pad=int(op.count_include_pad))
        if isinstance(op, MaxPool):
            return self.emit("MaxPool", args, out, kernel_shape=list(op.kernel), strides=list(op.stride),
                             pads=_hw_pads(op.padding))
        if isinstance(op, Pad):
            d = len(op.pads) // 2  # begins, then ends, of the per-sample axes; the batch axis gets 0
            pads = [0, *op.pads[:d], 0, *op.pads[d:]]
            value = self.const(f"{out}_value", np.array(op.value))
            return self.emit("Pad", [args[0], self.const(f"{out}_pads", pads, True), value], out, mode="constant")
        if isinstance(op, Concat):
            return self.emit("Concat", args, out, axis=op.axis + 1)
        if isinstance(op, Gather):
            return self.gather(out, op, node, args[0])
        raise TypeError(f"ONNX export: unhandled node type {type(op).__name__}")


    def gather(self, out: str, op: Gather, node: Node, arg: str) -> str:
        """Flatten to ``(1, n)`` (with a 0 appended for the index -1), Gather on axis 1, reshape back."""
        flat = self.emit("Flatten", [arg], f"{out}_flat", axis=1)
        index = op.index.detach().cpu().numpy()
        if op.fills:
            pads = self.const(f"{out}_pads", [0, 0, 0, 1], True)  # a 0 at the end: ONNX reads index -1 there
            flat = self.emit("Pad", [flat, pads, self.const(f"{out}_value", np.array(0.0))], f"{out}_fill",
                             mode="constant")
        picked = self.emit("Gather", [flat, self.const(f"{out}_index", index, True)], f"{out}_pick", axis=1)
        return self.emit("Reshape", [picked, self.const(f"{out}_shape", [1, *node.shape], True)], out)


def _hw_pads(padding: tuple[int, int, int, int]) -> list[int]:
    """IR (top, left, bottom, right) as ONNX pads (H begin, W begin, H end, W end): the same order."""
    return list(padding)
