"""Tiny ONNX models built in memory with ``onnx.helper``, for the tests of every team.

Example::

    g = GraphBuilder([1, 3, 8, 8], opset=13)
    h = g.op("Conv", g.input, g.const(g.random(4, 3, 3, 3)), pads=[1, 1, 1, 1])
    y = g.op("Relu", h)
    model = g.build(y)
    y_ort = run_onnxruntime(model, x)  # x of the ONNX input shape
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class GraphBuilder:
    """Accumulates nodes and initializers of one graph; ``build`` makes the model."""

    def __init__(
        self, input_shape: Sequence[int | str], *, dtype: type = np.float32, opset: int = 13,
        input_name: str = "x", seed: int = 0,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.input = input_name
        self.inputs = [helper.make_tensor_value_info(input_name, _ELEM[self.dtype], list(input_shape))]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, prefix: str = "t") -> str:
        """A new unique tensor name."""
        self._count += 1
        return f"{prefix}{self._count}"

    def random(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        """Normal random values of the model's dtype."""
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def const(self, value, name: str | None = None, dtype: type | None = None) -> str:
        """An initializer (float arrays get the model's dtype unless ``dtype`` is given)."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        name = name or self.fresh("c")
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """An int64 initializer (shapes, axes, pads)."""
        return self.const(np.asarray(values, dtype=np.int64), dtype=np.int64)

    def add_input(self, name: str, shape: Sequence[int | str]) -> str:
        """A further graph input (for tests of models with several inputs)."""
        self.inputs.append(helper.make_tensor_value_info(name, _ELEM[self.dtype], list(shape)))
        return name

    def op(self, op_type: str, *inputs: str, name: str | None = None, outputs: int = 1, **attrs) -> str:
        """Append a node; returns its first output's name (the others are ``<first>_<k>``)."""
        first = self.fresh("t")
        outs = [first] + [f"{first}_{k}" for k in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name or f"n{self._count}", **attrs))
        return first

    def dense(self, x: str, n_in: int, n_out: int, *, name: str | None = None) -> str:
        """A random ``Gemm`` with ``transB=1`` (the PyTorch ``Linear`` export)."""
        w, b = self.const(self.random(n_out, n_in, scale=n_in ** -0.5)), self.const(self.random(n_out))
        return self.op("Gemm", x, w, b, name=name, transB=1)

    def build(self, output: str | Sequence[str], output_shape: Sequence[int | str] | None = None) -> onnx.ModelProto:
        """The model with graph output(s) ``output`` (shape left unknown unless given)."""
        outs = [output] if isinstance(output, str) else list(output)
        values = [helper.make_tensor_value_info(o, _ELEM[self.dtype], output_shape) for o in outs]
        graph = helper.make_graph(self.nodes, "test", self.inputs, values, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="tests.onnx_builders")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


def mlp(
    sizes: Sequence[int], *, seed: int = 0, dtype: type = np.float32, opset: int = 13, batch: int | str | None = 1,
) -> onnx.ModelProto:
    """Gemm/Relu layers of the given widths; input ``[batch, sizes[0]]`` (``[sizes[0]]`` if batch is None)."""
    g = GraphBuilder([sizes[0]] if batch is None else [batch, sizes[0]], dtype=dtype, opset=opset, seed=seed)
    h = g.input
    if batch is None:
        h = g.op("Unsqueeze", h, axes=[0]) if opset < 13 else g.op("Unsqueeze", h, g.ints([0]))
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        h = g.dense(h, n_in, n_out, name=f"fc{k}")
        if k < len(sizes) - 2:
            h = g.op("Relu", h, name=f"relu{k}")
    return g.build(h)


def cnn(
    input_shape: Sequence[int] = (1, 3, 8, 8), channels: Sequence[int] = (4, 8), n_out: int = 5, *,
    seed: int = 0, opset: int = 13,
) -> onnx.ModelProto:
    """Conv(3x3, pad 1, stride 2)/Relu blocks, then Flatten and a Gemm (the oval21 shape)."""
    g = GraphBuilder(input_shape, opset=opset, seed=seed)
    h, c, hw = g.input, input_shape[1], tuple(input_shape[2:])
    for k, c_out in enumerate(channels):
        w, b = g.const(g.random(c_out, c, 3, 3, scale=(9 * c) ** -0.5)), g.const(g.random(c_out))
        h = g.op("Relu", g.op("Conv", h, w, b, name=f"conv{k}", pads=[1, 1, 1, 1], strides=[2, 2]))
        c, hw = c_out, tuple((n + 2 - 3) // 2 + 1 for n in hw)
    h = g.op("Flatten", h, axis=1)
    return g.build(g.dense(h, c * int(np.prod(hw)), n_out, name="fc"))


def run_onnxruntime(model: onnx.ModelProto | str | Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for input ``x`` (given in the model's ONNX input shape)."""
    return onnxruntime_runner(model)(x)


def onnxruntime_runner(model: onnx.ModelProto | str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """One single-threaded onnxruntime session, as a function of the input (ONNX input shape)."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path``; returns the path."""
    path = Path(path)
    onnx.save(model, str(path))
    return path
