"""ONNX model -> network IR (``verifier.network``), folded at load time.

Batch convention: a graph input of rank >= 2 whose first dimension is 1 or symbolic has a batch
axis, and the IR's per-sample shape is the rest; any other input (e.g. rank 1) has none.  While
importing, every computed tensor is a ``_Var``: an IR node plus a flag saying whether its ONNX
tensor carries that leading size-1 batch axis.  The flag only decides how ONNX axes map to
per-sample axes; since the IR evaluates each sample on its own, it is pure bookkeeping.

Subgraphs that depend only on initializers (e.g. the Shape/Gather/Concat chains that compute
Reshape targets in PyTorch exports) are evaluated at load time with ``onnx.reference``.
Operators that only move entries (Slice, Split, Gather, GatherElements with constant parameters) are run
by ``onnx.reference`` too, on the tensor of flat positions: what comes out says where each entry comes
from, and becomes one ``Gather`` node per output.  Nearest-neighbour Resize/Upsample by integer factors
and ConvTranspose (zero insertion, then a Conv) are selections too, computed here.
Unsupported operators are all collected and reported in one ``UnsupportedModelError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil, prod
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from verifier import constants
from verifier.errors import InputFileError, ModelError, UnsupportedModelError
from verifier.files import read_model_bytes
from verifier.fold import fold
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
    Op,
    Pad,
    Relu,
    Reshape,
    Scale,
    Transpose,
)
from verifier.onnx_proto import attribute_value, parse_model, proto, tensor_array, uses_external_data

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

_FLOAT_TYPES = {1: torch.float32, 11: torch.float64}  # TensorProto.FLOAT, TensorProto.DOUBLE
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_MIXED_INPUTS = {"Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Concat"}  # the others read a computed input 0
_MAX_EXPANDED = 1 << 26  # entries of a dense matrix built for a general linear node
_MAX_LISTED = 20  # unsupported nodes named in the error message


def load_onnx(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Network:
    """Read an ONNX file (``.onnx`` or gzipped ``.onnx.gz``) and import it (see ``load_onnx_model``)."""
    path = Path(path)
    data = read_model_bytes(path)
    try:
        model = parse_model(data)
    except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise InputFileError(f"{path} is not an ONNX model: {_one_line(e)}") from None
    if not model.HasField("graph") or not model.graph.output:
        raise InputFileError(f"{path} is not an ONNX model (it has no graph)")
    if uses_external_data(model):
        try:
            from onnx import external_data_helper

            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # OSError, or onnx's ValidationError for a missing or unsafe location
            raise InputFileError(f"cannot read external data of {path}: {_one_line(e)}") from None
    return load_onnx_model(model, dtype)


def load_onnx_model(model: onnx.ModelProto, dtype: torch.dtype | None = None) -> Network:
    """The folded IR of ``model``, its constants in ``dtype`` (default: the model's float dtype, float32 or
    float64).  Folding runs in float64; constants that it or the final cast rounded carry error bounds."""
    graph = model.graph
    if graph.sparse_initializer:
        raise UnsupportedModelError("unsupported ONNX model: sparse initializers")
    opset = _default_opset(model)
    in_name, in_shape, batched, model_dtype = _graph_input(graph)
    out_name = _graph_output(graph)
    env: dict[str, _Value] = dict(_initializers(graph))
    order, needed = _needed_nodes(graph, out_name, set(env) | {in_name})
    ctx = _Context(opset=opset, opset_imports=tuple(model.opset_import), needed=needed)
    ctx.nodes.append(Node(op=Input(), inputs=(), shape=in_shape, name=in_name))
    env[in_name] = _Var(0, in_shape, batched)
    problems = _convert_all(ctx, order, env)
    if problems:
        more = f", and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise UnsupportedModelError("unsupported ONNX operators: " + ", ".join(problems[:_MAX_LISTED]) + more)
    out = env[out_name]
    if not isinstance(out, _Var):
        raise UnsupportedModelError("unsupported ONNX model: its output does not depend on its input")
    _check_declared_output(graph.output[0], out)
    raw = Network(nodes=tuple(ctx.nodes), output=out.index)
    net = fold(raw)
    _check_finite(net)
    log.debug("imported %d ONNX nodes as %d IR nodes, %d after folding", len(order), len(raw.nodes), len(net.nodes))
    return net.to(dtype=dtype or model_dtype)


@dataclass(frozen=True)
class _Var:
    """A computed tensor: IR node ``index`` of per-sample ``shape``; ``batched``: ONNX has (1, *shape)."""

    index: int
    shape: tuple[int, ...]
    batched: bool

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        return (1, *self.shape) if self.batched else self.shape


class _Poison:
    """The value of a tensor computed by an unsupported node."""


_POISON = _Poison()
_Value = Union[np.ndarray, _Var, _Poison]


class _Unsupported(Exception):
    """Raised by a converter; the message says why (it may be empty)."""


@dataclass
class _Context:
    """What converters read (opset, which tensors are used) and the IR nodes they append."""

    opset: int
    opset_imports: tuple
    needed: set[str]
    nodes: list[Node] = field(default_factory=list)

    def emit(self, op: Op, args: list[_Var], shape: tuple[int, ...], batched: bool, name: str) -> _Var:
        self.nodes.append(Node(op=op, inputs=tuple(a.index for a in args), shape=tuple(shape), name=name))
        return _Var(len(self.nodes) - 1, tuple(shape), batched)


# ---------------------------------------------------------------- graph-level checks and traversal


def _default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            if not 8 <= o.version <= 17:
                log.info("ONNX opset %d is outside the tested range 8 to 17", o.version)
            return int(o.version)
    raise ModelError("ONNX model declares no opset for the default domain")


def _initializers(graph: onnx.GraphProto) -> list[tuple[str, np.ndarray]]:
    out = []
    for t in graph.initializer:
        try:
            out.append((t.name, tensor_array(t)))
        except Exception as e:  # onnx raises ValueError, TypeError or its own errors on bad tensors
            raise ModelError(f"ONNX initializer '{t.name}' is malformed: {_one_line(e)}") from None
    return out


def _graph_input(graph: onnx.GraphProto) -> tuple[str, tuple[int, ...], bool, torch.dtype]:
    """Name, per-sample shape, batch flag and dtype of the one non-constant input."""
    consts = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise UnsupportedModelError(f"unsupported ONNX model: it needs exactly one input, it has {names}")
    vi = inputs[0]
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"unsupported ONNX model: input '{vi.name}' is not a tensor")
    elem = vi.type.tensor_type.elem_type
    if elem not in _FLOAT_TYPES:
        types = proto().TensorProto.DataType
        type_name = types.Name(elem) if elem in types.values() else str(elem)
        raise UnsupportedModelError(f"unsupported ONNX model: input '{vi.name}' has type {type_name}")
    if not vi.type.tensor_type.HasField("shape"):
        raise UnsupportedModelError(f"unsupported ONNX model: input '{vi.name}' has no shape")
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim
    ]
    batched = len(dims) >= 2 and dims[0] in (1, None)
    per_sample = dims[1:] if batched else dims
    if any(d is None for d in per_sample):
        raise UnsupportedModelError(f"unsupported ONNX model: input '{vi.name}' has symbolic dimensions {dims}")
    return vi.name, tuple(int(d) for d in per_sample), batched, _FLOAT_TYPES[elem]


def _graph_output(graph: onnx.GraphProto) -> str:
    if len(graph.output) != 1:
        names = ", ".join(repr(o.name) for o in graph.output) or "none"
        raise UnsupportedModelError(f"unsupported ONNX model: it needs exactly one output, it has {names}")
    return graph.output[0].name


def _needed_nodes(graph: onnx.GraphProto, out_name: str, known: set[str]) -> tuple[list, set[str]]:
    """The nodes the output depends on, in a topological order, and the tensor names they read."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for y in node.output:
            if y and y in producer:
                raise ModelError(f"ONNX tensor '{y}' is produced by two nodes")
            if y:
                producer[y] = i
    order: list[int] = []
    state: dict[int, int] = {}  # 1: on the stack, 2: done
    needed = {out_name}
    stack: list[tuple[int, bool]] = []
    if out_name not in known:
        stack.append((_producer_of(producer, out_name, "the graph output"), False))
    while stack:
        i, expanded = stack.pop()
        if expanded:
            state[i] = 2
            order.append(i)
            continue
        if state.get(i) == 2:
            continue
        if state.get(i) == 1:
            raise ModelError(f"ONNX graph has a cycle through node {_where(graph.node[i])}")
        state[i] = 1
        stack.append((i, True))
        for x in graph.node[i].input:
            if x:
                needed.add(x)
            if x and x not in known and state.get(producer.get(x, -1)) != 2:
                stack.append((_producer_of(producer, x, _where(graph.node[i])), False))
    return [graph.node[i] for i in order], needed


def _producer_of(producer: dict[str, int], name: str, reader: str) -> int:
    if name not in producer:
        raise ModelError(f"ONNX tensor '{name}' read by {reader} is not defined")
    return producer[name]


def _check_declared_output(vi: onnx.ValueInfoProto, out: _Var) -> None:
    dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
    if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return
    declared = prod(d.dim_value for d in dims)
    if declared != prod(out.shape):
        raise ModelError(
            f"ONNX output '{vi.name}' is declared with shape {[d.dim_value for d in dims]} "
            f"but computes shape {list(out.onnx_shape)}"
        )


def _check_finite(net: Network) -> None:
    for node in net.nodes:
        for key, value in vars(node.op).items():
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                raise ModelError(f"ONNX model has non-finite constants ({key} of node '{node.name}')")


def _convert_all(ctx: _Context, order: list, env: dict[str, _Value]) -> list[str]:
    """Convert the nodes in order, filling ``env``; the list of unsupported-node descriptions."""
    problems: list[str] = []
    for node in order:
        args = [env[x] if x else None for x in node.input]
        reason: str | None = None
        if any(a is _POISON for a in args):
            if node.op_type not in _CONVERTERS or node.domain not in ("", "ai.onnx"):
                reason = ""
            outs: list[_Value] = [_POISON] * len(node.output)
        else:
            try:
                outs = _convert(ctx, node, args)
            except _Unsupported as e:
                reason, outs = str(e), [_POISON] * len(node.output)
        if reason is not None:
            problems.append(f"{node.op_type} ({_where(node)}{': ' + reason if reason else ''})")
        for y, v in zip(node.output, outs):
            if y:
                env[y] = v
    return problems


def _convert(ctx: _Context, node: onnx.NodeProto, args: list) -> list[_Value]:
    if node.domain not in ("", "ai.onnx"):
        raise _Unsupported(f"operator domain '{node.domain}'")
    if node.op_type in _RANDOM_OPS:
        raise _Unsupported("")
    if all(a is None or isinstance(a, np.ndarray) for a in args):
        return _fold_constant(ctx, node, args)
    if node.op_type not in _CONVERTERS:
        raise _Unsupported("")
    if node.op_type not in _MIXED_INPUTS and not isinstance(args[0], _Var):
        raise _Unsupported("its first input is a constant but a later one is computed")
    try:
        outs = _CONVERTERS[node.op_type](ctx, node, args)
    except (ModelError, UnsupportedModelError):
        raise
    except (ValueError, IndexError, KeyError, TypeError, RuntimeError) as e:
        raise ModelError(f"ONNX node {_where(node)} ({node.op_type}) is malformed: {_one_line(e)}") from None
    for y in node.output[len(outs):]:
        if y in ctx.needed:
            raise _Unsupported(f"its output '{y}' is used")
    return outs


def _fold_constant(ctx: _Context, node: onnx.NodeProto, args: list) -> list[_Value]:
    """Evaluate a node whose inputs are all constants with the ONNX reference implementation."""
    if node.op_type == "Constant":
        return [_constant_value(node)]
    if node.op_type == "Identity":
        return [args[0]]
    try:
        return _reference(ctx, node, args)
    except Exception as e:  # the reference implementation raises anything
        raise _Unsupported(f"cannot evaluate it on constants: {_one_line(e)}") from None


def _reference(ctx: _Context, node: onnx.NodeProto, args: list) -> list[np.ndarray | None]:
    """The outputs of ``node`` on the arrays ``args`` by the ONNX reference implementation (which raises
    anything on bad input)."""
    from onnx import TensorProto, helper  # imported only for models that need it
    from onnx.reference import ReferenceEvaluator

    feeds = {x: a for x, a in zip(node.input, args) if x}
    elem = {x: helper.np_dtype_to_tensor_dtype(a.dtype) for x, a in feeds.items()}
    inputs = [helper.make_tensor_value_info(x, elem[x], None) for x in feeds]
    outputs = [helper.make_tensor_value_info(y, TensorProto.UNDEFINED, None) for y in node.output if y]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=list(ctx.opset_imports))
    it = iter(ReferenceEvaluator(model).run(None, feeds))
    return [np.asarray(next(it)) if y else None for y in node.output]


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = _attrs(node)
    if "value" in attrs:
        return tensor_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise _Unsupported(f"attributes {sorted(attrs)}")


# ---------------------------------------------------------------- helpers for converters


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _where(node: onnx.NodeProto) -> str:
    if node.name:
        return f"node '{node.name}'"
    return f"node producing '{node.output[0]}'" if node.output else "unnamed node"


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def _const(arg: _Value | None, what: str) -> np.ndarray:
    if not isinstance(arg, np.ndarray):
        raise _Unsupported(f"{what} must be a constant")
    return arg


def _var(arg: _Value | None, what: str) -> _Var:
    if not isinstance(arg, _Var):
        raise _Unsupported(f"{what} must be computed from the input")
    return arg


def _t(a: np.ndarray) -> torch.Tensor:
    """A float64 tensor (folding runs in float64; the net is cast to the model's dtype at the end)."""
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _reshape(ctx: _Context, v: _Var, onnx_shape: tuple[int, ...], name: str) -> _Var:
    """``v`` viewed with the ONNX shape ``onnx_shape`` (same element count, row-major order)."""
    onnx_shape = tuple(int(d) for d in onnx_shape)
    if prod(onnx_shape) != prod(v.onnx_shape):
        raise ModelError(f"cannot reshape {list(v.onnx_shape)} to {list(onnx_shape)} in '{name}'")
    batched = v.batched and len(onnx_shape) >= 1 and onnx_shape[0] == 1
    shape = onnx_shape[1:] if batched else onnx_shape
    if shape == v.shape:
        return _Var(v.index, shape, batched)
    return ctx.emit(Reshape(), [v], shape, batched, name)


def _with_batch(ctx: _Context, v: _Var, name: str) -> _Var:
    """``v`` with its leading ONNX axis as the batch axis (operators such as Conv need one)."""
    if v.batched:
        return v
    if len(v.shape) >= 2 and v.shape[0] == 1:
        return ctx.emit(Reshape(), [v], v.shape[1:], True, name)
    raise _Unsupported(f"its input of shape {list(v.shape)} has no leading batch axis")


def _unbatched(ctx: _Context, v: _Var, name: str) -> _Var:
    """``v`` with its size-1 batch axis kept as a per-sample axis (for operators that mix it in)."""
    return ctx.emit(Reshape(), [v], v.onnx_shape, False, name) if v.batched else v


def _linear(ctx: _Context, v: _Var, fn: Callable[[torch.Tensor], torch.Tensor], name: str,
            bias: torch.Tensor | None = None, fn_err: Callable[[torch.Tensor], torch.Tensor] | None = None,
            bias_err: torch.Tensor | None = None) -> _Var:
    """The linear map ``fn`` (on ONNX-shaped tensors with a leading basis axis), plus ``bias`` (broadcast to
    its output), as Reshape, Dense, Reshape.  ``fn`` of a basis vector picks entries of its constants (times
    1), so the weight is exactly those entries; ``fn_err`` picks their error bounds the same way."""
    n = prod(v.onnx_shape)
    out_shape = tuple(fn(torch.zeros((1, *v.onnx_shape), dtype=torch.float64)).shape[1:])
    if n * prod(out_shape) > _MAX_EXPANDED:
        raise _Unsupported(f"its {n} x {prod(out_shape)} linear map is too large to expand")
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *v.onnx_shape)
    weight = fn(basis).reshape(n, -1).T  # (m, n)
    b = torch.zeros(out_shape, dtype=torch.float64) if bias is None else torch.broadcast_to(bias, out_shape)
    errs = {}
    if fn_err is not None:
        errs["weight_err"] = fn_err(basis).reshape(n, -1).T.contiguous()
    if bias_err is not None:
        errs["bias_err"] = torch.broadcast_to(bias_err, out_shape).reshape(-1).contiguous()
    flat = v if len(v.shape) == 1 else ctx.emit(Reshape(), [v], (n,), False, name)
    dense = ctx.emit(Dense(weight=weight.contiguous(), bias=b.reshape(-1).contiguous(), **errs), [flat],
                     (weight.shape[0],), False, name)
    return _reshape_flat(ctx, dense, out_shape, v.batched, name)


def _reshape_flat(ctx: _Context, flat: _Var, out_shape: tuple[int, ...], batched: bool, name: str) -> _Var:
    """A flat ``(m,)`` result viewed as the ONNX shape ``out_shape`` computed from a (batched) input."""
    keep_batch = batched and len(out_shape) >= 1 and out_shape[0] == 1
    shape = out_shape[1:] if keep_batch else out_shape
    if shape == flat.shape:
        return _Var(flat.index, shape, keep_batch)
    return ctx.emit(Reshape(), [flat], shape, keep_batch, name)


def _broadcast_const(ctx: _Context, v: _Var, c: np.ndarray, name: str) -> tuple[_Var, torch.Tensor]:
    """``v`` (raised in rank if the constant demands it) and ``c`` as a per-sample tensor of its rank."""
    c = np.asarray(c, dtype=np.float64)
    try:
        out = tuple(np.broadcast_shapes(v.onnx_shape, c.shape))
    except ValueError:
        raise ModelError(f"'{name}': shapes {list(v.onnx_shape)} and {list(c.shape)} do not broadcast") from None
    if out != v.onnx_shape:
        k = len(out) - len(v.onnx_shape)
        if k <= 0 or out[k:] != v.onnx_shape or any(d != 1 for d in out[:k]):
            raise _Unsupported(f"a constant of shape {list(c.shape)} enlarges the computed tensor")
        v = _reshape(ctx, v, out, name)
    c = c.reshape((1,) * (len(out) - c.ndim) + c.shape)
    if v.batched:
        c = c[0]
    return v, _t(c)


def _emit_scale(ctx: _Context, v: _Var, scale: torch.Tensor, shift: torch.Tensor, name: str,
                scale_err: torch.Tensor | None = None, shift_err: torch.Tensor | None = None) -> _Var:
    scale, shift = torch.broadcast_tensors(scale, shift)
    errs = {k: torch.broadcast_to(e, scale.shape).contiguous() for k, e in (("scale_err", scale_err),
                                                                             ("shift_err", shift_err)) if e is not None}
    op = Scale(scale=scale.contiguous(), shift=shift.contiguous(), **errs)
    return ctx.emit(op, [v], v.shape, v.batched, name)


def _spatial_pads(attrs: dict, size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                  dilations: tuple[int, ...]) -> tuple[int, ...]:
    """ONNX pads (begins, then ends) from ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    d = len(size)
    if auto in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", [0] * (2 * d)))
        if len(pads) != 2 * d:
            raise ModelError(f"pads {list(pads)} do not match a {d}-D kernel")
        return pads
    if auto == "VALID":
        return (0,) * (2 * d)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={auto}")
    begins, ends = [], []
    for n, k, s, dil in zip(size, kernel, strides, dilations):
        total = max((ceil(n / s) - 1) * s + (k - 1) * dil + 1 - n, 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return tuple(begins + ends)


def _out_size(n: int, k: int, s: int, dil: int, pad: int, ceil_mode: bool = False) -> int:
    span = n + pad - ((k - 1) * dil + 1)
    out = (ceil(span / s) if ceil_mode else span // s) + 1
    if out < 1:
        raise ModelError(f"kernel {k} does not fit an axis of size {n} padded by {pad}")
    return out


# ---------------------------------------------------------------- converters (variable inputs)


def _cv_identity(ctx: _Context, node, args) -> list[_Value]:
    return [args[0]]


def _cv_dropout(ctx: _Context, node, args) -> list[_Value]:
    if len(args) >= 3 and args[2] is not None and bool(np.any(_const(args[2], "training_mode"))):
        raise _Unsupported("training_mode is true")
    return [args[0]]


def _cv_cast(ctx: _Context, node, args) -> list[_Value]:
    if _attrs(node).get("to") not in _FLOAT_TYPES:
        raise _Unsupported("cast of a computed tensor to a non-float type")
    return [args[0]]


def _cv_shape(ctx: _Context, node, args) -> list[_Value]:
    attrs = _attrs(node)
    shape = np.asarray(_var(args[0], "input").onnx_shape, dtype=np.int64)
    return [shape[attrs.get("start", 0):attrs.get("end", None)]]


def _cv_size(ctx: _Context, node, args) -> list[_Value]:
    return [np.asarray(prod(_var(args[0], "input").shape), dtype=np.int64)]


def _cv_relu(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    return [ctx.emit(Relu(), [v], v.shape, v.batched, _name(node))]


def _cv_neg(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    ones = torch.ones((1,) * len(v.shape), dtype=torch.float64)
    return [_emit_scale(ctx, v, -ones, 0 * ones, _name(node))]


def _cv_arith(ctx: _Context, node, args) -> list[_Value]:
    """Add, Sub, Mul, Div with a constant operand; Add and Sub of two computed tensors."""
    a, b = args
    op, name = node.op_type, _name(node)
    if isinstance(a, _Var) and isinstance(b, _Var):
        return [_add_vars(ctx, a, b, op, name)]
    first = isinstance(a, _Var)
    v, c = _broadcast_const(ctx, *((a, b) if first else (b, a)), name)
    one = torch.ones_like(c)
    if op == "Add":
        return [_emit_scale(ctx, v, one, c, name)]
    if op == "Sub":
        return [_emit_scale(ctx, v, one, -c, name) if first else _emit_scale(ctx, v, -one, c, name)]
    if op == "Mul":
        return [_emit_scale(ctx, v, c, 0 * c, name)]
    if not first:
        raise _Unsupported("division by a computed tensor")
    if bool((c == 0).any()):
        raise ModelError(f"'{name}' divides by a constant that contains zeros")
    inverse, err = constants.reciprocal(c)  # x / c as x * (1 / c), off by at most err
    return [_emit_scale(ctx, v, inverse, 0 * c, name, scale_err=err)]


def _add_vars(ctx: _Context, a: _Var, b: _Var, op: str, name: str) -> _Var:
    if op not in ("Add", "Sub"):
        raise _Unsupported(f"{op} of two computed tensors")
    if a.onnx_shape != b.onnx_shape:
        raise _Unsupported(f"{op} broadcasts computed tensors {list(a.onnx_shape)} and {list(b.onnx_shape)}")
    if a.batched != b.batched:
        a, b = _unbatched(ctx, a, name), _unbatched(ctx, b, name)
    if op == "Sub":
        ones = torch.ones((1,) * len(b.shape), dtype=torch.float64)
        b = _emit_scale(ctx, b, -ones, 0 * ones, name + "/neg")
    return ctx.emit(Add(), [a, b], a.shape, a.batched, name)


def _cv_matmul(ctx: _Context, node, args) -> list[_Value]:
    a, b = args
    name = _name(node)
    if isinstance(a, _Var) and isinstance(b, _Var):
        raise _Unsupported("product of two computed tensors")
    if isinstance(a, _Var):
        v, w = a, np.asarray(b, dtype=np.float64)
        if w.ndim == 2 and len(v.shape) == 1 and (v.batched or len(v.onnx_shape) == 1):
            _check_inner(v.shape[0], w.shape[0], name)
            return [ctx.emit(Dense(weight=_t(w.T), bias=torch.zeros(w.shape[1], dtype=torch.float64)),
                             [v], (w.shape[1],), v.batched, name)]
        return [_linear(ctx, v, _right_matmul(_t(w), len(v.onnx_shape)), name)]
    w, v = np.asarray(a, dtype=np.float64), b
    if w.ndim == 2 and len(v.onnx_shape) == 1:
        _check_inner(w.shape[1], v.shape[0], name)
        return [ctx.emit(Dense(weight=_t(w), bias=torch.zeros(w.shape[0], dtype=torch.float64)),
                         [v], (w.shape[0],), False, name)]
    if v.batched and len(v.shape) == 1:
        v = _unbatched(ctx, v, name)  # the constant multiplies the (size-1) batch axis
    return [_linear(ctx, v, _left_matmul(_t(w), len(v.onnx_shape)), name)]


def _check_inner(n_x: int, n_w: int, name: str) -> None:
    if n_x != n_w:
        raise ModelError(f"'{name}': inner dimensions {n_x} and {n_w} of the product differ")


def _right_matmul(w: torch.Tensor, x_rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``E -> E @ w`` (numpy matmul semantics per basis element ``E[i]`` of rank ``x_rank``)."""
    def fn(e: torch.Tensor) -> torch.Tensor:
        n = e.shape[0]
        if w.ndim == 1:
            return torch.matmul(e, w)
        if x_rank == 1:
            return torch.matmul(e.reshape(n, *([1] * (w.ndim - 1)), e.shape[-1]), w).squeeze(-2)
        return torch.matmul(e.reshape(n, *([1] * max(w.ndim - x_rank, 0)), *e.shape[1:]), w)
    return fn


def _left_matmul(w: torch.Tensor, x_rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``E -> w @ E`` (numpy matmul semantics per basis element ``E[i]`` of rank ``x_rank``)."""
    def fn(e: torch.Tensor) -> torch.Tensor:
        n = e.shape[0]
        if w.ndim == 1:
            return torch.matmul(w, e) if x_rank > 1 else torch.matmul(e, w)
        if x_rank == 1:
            return torch.matmul(w, e.reshape(n, *([1] * (w.ndim - 1)), e.shape[-1], 1)).squeeze(-1)
        return torch.matmul(w, e.reshape(n, *([1] * max(w.ndim - x_rank, 0)), *e.shape[1:]))
    return fn


def _cv_gemm(ctx: _Context, node, args) -> list[_Value]:
    """``alpha * A' B' + beta * C`` with exactly one of A, B computed."""
    attrs = _attrs(node)
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = torch.tensor(float(attrs.get("alpha", 1.0))), torch.tensor(float(attrs.get("beta", 1.0)))
    ta, tb = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))
    if isinstance(a, _Var) == isinstance(b, _Var):
        raise _Unsupported("product of two computed tensors")
    bias, bias_err = constants.mul(_t(_const(c, "C")) if c is not None else torch.zeros((), dtype=torch.float64),
                                   None, beta.double(), None)
    if isinstance(a, _Var):
        v, wb = a, _t(b)
        wb, wb_err = constants.mul(wb.T if tb else wb, None, alpha.double(), None)  # (K, N)
        if len(v.onnx_shape) != 2 or wb.ndim != 2:
            raise ModelError("Gemm needs 2-D operands")
        if v.batched and not ta:
            _check_inner(v.shape[0], wb.shape[0], _name(node))
            n = wb.shape[1]
            errs = {"weight_err": None if wb_err is None else wb_err.T.contiguous(),
                    "bias_err": None if bias_err is None else torch.broadcast_to(bias_err, (n,)).contiguous()}
            full_bias = bias.expand(1, n)[0].contiguous()
            return [ctx.emit(Dense(weight=wb.T.contiguous(), bias=full_bias, **errs), [v], (n,), True, _name(node))]
        return [_linear(ctx, v, lambda e: (e.transpose(1, 2) if ta else e) @ wb, _name(node), bias,
                        None if wb_err is None else lambda e: (e.transpose(1, 2) if ta else e) @ wb_err, bias_err)]
    v, wa = b, _t(a)
    wa, wa_err = constants.mul(wa.T if ta else wa, None, alpha.double(), None)  # (M, K)
    if len(v.onnx_shape) != 2 or wa.ndim != 2:
        raise ModelError("Gemm needs 2-D operands")
    v = _unbatched(ctx, v, _name(node))  # the constant multiplies the (size-1) batch axis
    return [_linear(ctx, v, lambda e: wa @ (e.transpose(1, 2) if tb else e), _name(node), bias,
                    None if wa_err is None else lambda e: wa_err @ (e.transpose(1, 2) if tb else e), bias_err)]


def _cv_flatten(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    r = len(v.onnx_shape)
    axis = int(_attrs(node).get("axis", 1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis <= r:
        raise ModelError(f"Flatten axis {axis} out of range for rank {r}")
    s = v.onnx_shape
    return [_reshape(ctx, v, (prod(s[:axis]), prod(s[axis:])), _name(node))]


def _cv_reshape(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    target = [int(d) for d in _const(args[1], "the target shape").reshape(-1)]
    allowzero = bool(_attrs(node).get("allowzero", 0))
    return [_reshape(ctx, v, _reshape_target(v.onnx_shape, target, allowzero), _name(node))]


def _reshape_target(shape: tuple[int, ...], target: list[int], allowzero: bool) -> tuple[int, ...]:
    """ONNX Reshape semantics: 0 copies the input dimension, -1 is inferred."""
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise ModelError(f"Reshape target {target} copies dimension {i} of a rank-{len(shape)} tensor")
            d = shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ModelError(f"invalid Reshape target {target}")
    if -1 in out:
        known = prod(d for d in out if d != -1)
        if known == 0 or prod(shape) % known:
            raise ModelError(f"cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = prod(shape) // known
    return tuple(out)


def _axes(ctx: _Context, node, args) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, the second input after."""
    if ctx.opset < 13:
        axes = _attrs(node).get("axes")
    else:
        axes = _const(args[1], "axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None else None
    return None if axes is None else [int(a) for a in axes]


def _cv_squeeze(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    s = v.onnx_shape
    axes = _axes(ctx, node, args)
    if axes is None:
        axes = [i for i, d in enumerate(s) if d == 1]
    axes = [a + len(s) if a < 0 else a for a in axes]
    if any(not 0 <= a < len(s) or s[a] != 1 for a in axes):
        raise ModelError(f"cannot squeeze axes {axes} of shape {list(s)}")
    return [_reshape(ctx, v, tuple(d for i, d in enumerate(s) if i not in axes), _name(node))]


def _cv_unsqueeze(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    axes = _axes(ctx, node, args)
    if axes is None:
        raise ModelError("Unsqueeze without axes")
    r = len(v.onnx_shape) + len(axes)
    axes = sorted(a + r if a < 0 else a for a in axes)
    if len(set(axes)) != len(axes) or any(not 0 <= a < r for a in axes):
        raise ModelError(f"invalid Unsqueeze axes {axes}")
    dims = iter(v.onnx_shape)
    return [_reshape(ctx, v, tuple(1 if i in axes else next(dims) for i in range(r)), _name(node))]


def _cv_transpose(ctx: _Context, node, args) -> list[_Value]:
    v = args[0]
    r = len(v.onnx_shape)
    perm = [int(p) for p in _attrs(node).get("perm", range(r - 1, -1, -1))]
    if sorted(perm) != list(range(r)):
        raise ModelError(f"invalid Transpose perm {perm} for rank {r}")
    out_shape = tuple(v.onnx_shape[p] for p in perm)
    # the size-1 batch axis does not change the row-major order: permute the other axes, then view
    q = tuple(p - 1 for p in perm if p != 0) if v.batched else tuple(perm)
    if q != tuple(range(len(q))):
        v = ctx.emit(Transpose(perm=q), [v], tuple(v.shape[p] for p in q), v.batched, _name(node))
    return [_reshape(ctx, v, out_shape, _name(node))]


def _cv_conv(ctx: _Context, node, args) -> list[_Value]:
    name = _name(node)
    w = _const(args[1], "the weight")
    if w.ndim == 3:
        return [_conv1d(ctx, node, args)]
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D convolution")
    v = _with_batch(ctx, args[0], name)
    attrs = _attrs(node)
    if len(v.shape) != 3:
        raise ModelError(f"Conv '{name}' with a 2-D kernel reads a tensor of shape {list(v.onnx_shape)}")
    group = int(attrs.get("group", 1))
    c_out, c_in_g, kh, kw = w.shape
    if c_in_g * group != v.shape[0] or c_out % group:
        raise ModelError(f"Conv '{name}': weight {list(w.shape)} and group {group} do not fit {v.shape[0]} channels")
    if tuple(attrs.get("kernel_shape", (kh, kw))) != (kh, kw):
        raise ModelError(f"Conv '{name}': kernel_shape disagrees with the weight")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dil = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    pads = _spatial_pads(attrs, v.shape[1:], (kh, kw), strides, dil)
    bias = _t(_const(args[2], "the bias")) if len(args) > 2 and args[2] is not None else torch.zeros(c_out)
    hw = v.shape[1:]
    out_hw = tuple(_out_size(hw[i], (kh, kw)[i], strides[i], dil[i], pads[i] + pads[i + 2]) for i in range(2))
    op = Conv(weight=_t(w), bias=bias.to(torch.float64), stride=strides, padding=pads, dilation=dil, groups=group)
    return [ctx.emit(op, [v], (c_out, *out_hw), True, name)]


def _conv1d(ctx: _Context, node, args) -> _Var:
    """A 1-D Conv as a 2-D one over (C, 1, L)."""
    name = _name(node)
    v = _with_batch(ctx, args[0], name)
    if len(v.shape) != 2:
        raise ModelError(f"Conv '{name}' with a 1-D kernel reads a tensor of shape {list(v.onnx_shape)}")
    attrs = _attrs(node)
    w = args[1]
    (s,), (d,) = attrs.get("strides", (1,)), attrs.get("dilations", (1,))
    pb, pe = _spatial_pads(attrs, v.shape[1:], w.shape[2:], (s,), (d,))
    from onnx import helper  # imported only for models that need it

    attrs2 = [helper.make_attribute("strides", [1, s]), helper.make_attribute("dilations", [1, d]),
              helper.make_attribute("pads", [0, pb, 0, pe]), helper.make_attribute("group", attrs.get("group", 1))]
    node2 = helper.make_node("Conv", list(node.input), list(node.output), name=name)
    node2.attribute.extend(attrs2)
    v2 = ctx.emit(Reshape(), [v], (v.shape[0], 1, v.shape[1]), True, name)
    out = _cv_conv(ctx, node2, [v2, w[:, :, None, :], *args[2:]])[0]
    return ctx.emit(Reshape(), [out], (out.shape[0], out.shape[2]), True, name)


def _cv_batchnorm(ctx: _Context, node, args) -> list[_Value]:
    name = _name(node)
    attrs = _attrs(node)
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    v = _with_batch(ctx, args[0], name)
    gamma, beta, mean, var = (_per_channel(_const(a, "statistics"), v.shape, name) for a in args[1:5])
    s, s_err = constants.batchnorm_scale(gamma, var, float(attrs.get("epsilon", 1e-5)))
    ms, ms_err = constants.mul(mean, None, s, s_err)
    shift, shift_err = constants.add(beta, None, -ms, ms_err)  # beta - mean * s
    return [_emit_scale(ctx, v, s, shift, name, scale_err=s_err, shift_err=shift_err)]


def _per_channel(a: np.ndarray, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """A per-channel constant of a ``(C, ...)`` tensor as ``(C, 1, ..., 1)`` (or full shape)."""
    if a.size == shape[0]:
        return _t(a.reshape(shape[0], *([1] * (len(shape) - 1))))
    if tuple(a.shape) == shape:
        return _t(a)
    raise ModelError(f"BatchNormalization '{name}': statistics of shape {list(a.shape)} for input {list(shape)}")


def _cv_pool(ctx: _Context, node, args) -> list[_Value]:
    name = _name(node)
    attrs = _attrs(node)
    v = _with_batch(ctx, args[0], name)
    if len(v.shape) != 3:
        raise _Unsupported(f"pooling over a tensor of shape {list(v.onnx_shape)} (only 2-D is supported)")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise ModelError(f"'{name}': kernel_shape {list(kernel)} is not 2-D")
    if any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
        raise _Unsupported("dilations")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    pads = _spatial_pads(attrs, v.shape[1:], kernel, strides, (1, 1))
    hw = v.shape[1:]
    out_hw = tuple(_out_size(hw[i], kernel[i], strides[i], 1, pads[i] + pads[i + 2]) for i in range(2))
    if attrs.get("ceil_mode", 0):
        ceil_hw = tuple(_out_size(hw[i], kernel[i], strides[i], 1, pads[i] + pads[i + 2], True) for i in range(2))
        if ceil_hw != out_hw:
            raise _Unsupported("ceil_mode changes the output size")
    if node.op_type == "MaxPool":
        op: Op = MaxPool(kernel=kernel, stride=strides, padding=pads)
    else:
        op = AvgPool(kernel=kernel, stride=strides, padding=pads,
                     count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return [ctx.emit(op, [v], (v.shape[0], *out_hw), True, name)]


def _cv_global_pool(ctx: _Context, node, args) -> list[_Value]:
    name = _name(node)
    v = _with_batch(ctx, args[0], name)
    if len(v.shape) != 3:
        raise _Unsupported(f"global pooling over a tensor of shape {list(v.onnx_shape)} (only 2-D is supported)")
    kernel = (v.shape[1], v.shape[2])
    op: Op = MaxPool(kernel=kernel, stride=(1, 1)) if node.op_type == "GlobalMaxPool" else AvgPool(kernel, (1, 1))
    return [ctx.emit(op, [v], (v.shape[0], 1, 1), True, name)]


def _cv_pad(ctx: _Context, node, args) -> list[_Value]:
    attrs = _attrs(node)
    v = args[0]
    r = len(v.onnx_shape)
    if attrs.get("mode", "constant") != "constant":
        raise _Unsupported(f"mode={attrs['mode']}")
    if ctx.opset < 11:
        pads, value = [int(p) for p in attrs.get("pads", ())], float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in _const(args[1], "pads").reshape(-1)]
        value = 0.0
        if len(args) > 2 and args[2] is not None:
            value = float(_const(args[2], "constant_value").reshape(-1)[0])
        if len(args) > 3 and args[3] is not None:
            pads = _pads_on_axes(pads, [int(a) for a in _const(args[3], "axes").reshape(-1)], r)
    if len(pads) != 2 * r:
        raise ModelError(f"Pad '{_name(node)}': {len(pads)} pads for a rank-{r} tensor")
    if min(pads) < 0:
        raise _Unsupported("negative pads (cropping)")
    if v.batched and (pads[0] or pads[r]):
        v = _unbatched(ctx, v, _name(node))
    if v.batched:
        pads = pads[1:r] + pads[r + 1:]
    if not any(pads):
        return [v]
    d = len(v.shape)
    shape = tuple(n + pads[i] + pads[i + d] for i, n in enumerate(v.shape))
    return [ctx.emit(Pad(pads=tuple(pads), value=value), [v], shape, v.batched, _name(node))]


def _pads_on_axes(pads: list[int], axes: list[int], r: int) -> list[int]:
    """Opset-18 ``axes``: pads given for some axes only, as full begins-then-ends pads."""
    full = [0] * (2 * r)
    for i, a in enumerate(axes):
        a = a + r if a < 0 else a
        full[a], full[a + r] = pads[i], pads[i + len(axes)]
    return full


def _cv_concat(ctx: _Context, node, args) -> list[_Value]:
    name = _name(node)
    if any(not isinstance(a, _Var) for a in args):
        raise _Unsupported("concatenation of a computed tensor with a constant")
    r = len(args[0].onnx_shape)
    axis = int(_attrs(node)["axis"])
    axis = axis + r if axis < 0 else axis
    if len({len(a.onnx_shape) for a in args}) != 1:
        raise ModelError(f"Concat '{name}' of tensors of different ranks")
    if axis == 0 or len({a.batched for a in args}) != 1:
        args = [_unbatched(ctx, a, name) for a in args]
    first = args[0]
    axis -= 1 if first.batched else 0
    rest = [tuple(d for i, d in enumerate(a.shape) if i != axis) for a in args]
    if len(set(rest)) != 1 or not 0 <= axis < len(first.shape):
        raise ModelError(f"Concat '{name}': shapes {[list(a.onnx_shape) for a in args]} do not fit")
    if len(args) == 1:
        return [first]
    shape = list(first.shape)
    shape[axis] = sum(a.shape[axis] for a in args)
    return [ctx.emit(Concat(axis=axis), list(args), tuple(shape), first.batched, name)]


# ---------------------------------------------------------------- selections (Gather nodes) and sums


def _positions(v: _Var) -> np.ndarray:
    """The flat position of every entry of ``v``, in its ONNX shape (float64: exact below 2^53)."""
    return np.arange(prod(v.onnx_shape), dtype=np.float64).reshape(v.onnx_shape)


def _emit_selection(ctx: _Context, v: _Var, picked: np.ndarray, name: str, needed: bool = True,
                    fills: bool = False) -> _Value:
    """The tensor of ONNX shape ``picked.shape`` whose entries are those of ``v`` at the flat positions
    ``picked`` (with ``fills``, -1: a 0); a Reshape (or nothing) when it takes every entry in order.  An
    empty tensor is unsupported where ``needed``, else left as poison."""
    flat = picked.reshape(-1)
    n = prod(v.onnx_shape)
    index = flat.astype(np.int64)
    if not np.array_equal(index, flat) or np.any(index < (-1 if fills else 0)) or np.any(index >= n):
        raise _Unsupported("it computes new values (only selections of entries are supported)")
    if index.size == 0:
        if needed:
            raise _Unsupported("an output is empty")
        return _POISON
    out_shape = tuple(int(d) for d in picked.shape)
    if index.size == n and np.array_equal(index, np.arange(n)):
        return _reshape(ctx, v, out_shape, name)
    keep_batch = v.batched and len(out_shape) >= 1 and out_shape[0] == 1
    shape = out_shape[1:] if keep_batch else out_shape
    return ctx.emit(Gather(torch.from_numpy(index)), [v], shape, keep_batch, name)


def _cv_select(ctx: _Context, node, args) -> list[_Value]:
    """Slice, Split, Gather, GatherElements: the reference implementation on the positions of the input
    (every other input a constant) says which entry each output reads."""
    v = args[0]
    for x, a in zip(node.input[1:], args[1:]):
        if a is not None:
            _const(a, f"its input '{x}'")
    try:
        outs = _reference(ctx, node, [_positions(v), *args[1:]])
    except Exception as e:  # the reference implementation raises anything
        raise ModelError(f"ONNX node {_where(node)} ({node.op_type}) is malformed: {_one_line(e)}") from None
    name = _name(node)
    return [None if o is None else _emit_selection(ctx, v, o, f"{name}/{k}" if k else name, y in ctx.needed)
            for k, (y, o) in enumerate(zip(node.output, outs))]


_NEAREST_COORDINATES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _cv_resize(ctx: _Context, node, args) -> list[_Value]:
    """Resize and Upsample in mode nearest by integer factors: a selection."""
    v, attrs = args[0], _attrs(node)
    shape = v.onnx_shape
    if attrs.get("mode", "nearest") != "nearest":
        raise _Unsupported(f"mode={attrs['mode']} (only nearest is supported)")
    factors = _resize_factors(ctx, node, args, attrs, shape)
    if node.op_type == "Upsample" or ctx.opset < 11:  # Upsample and Resize-10: x = i / s, floor
        coordinates, rounding = "asymmetric", "floor"
    else:
        coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
        rounding = attrs.get("nearest_mode", "round_prefer_floor")
    if coordinates not in _NEAREST_COORDINATES:
        raise _Unsupported(f"coordinate_transformation_mode={coordinates}")
    if rounding not in _NEAREST_MODES:
        raise ModelError(f"Resize {_where(node)}: unknown nearest_mode {rounding}")
    picked = _positions(v)
    for axis, (size, f) in enumerate(zip(shape, factors)):
        if f != 1:
            picked = np.take(picked, _nearest_source(size, f, coordinates, rounding), axis=axis)
    return [_emit_selection(ctx, v, picked, _name(node))]


def _resize_factors(ctx: _Context, node, args, attrs: dict, shape: tuple[int, ...]) -> list[int]:
    """The integer factor of every axis, from the scales or the sizes (given for ``axes`` only, opset 18)."""
    if node.op_type == "Upsample" and "scales" in attrs:
        scales, sizes = np.asarray(attrs["scales"], dtype=np.float64), None
    elif node.op_type == "Upsample" or ctx.opset < 11:
        scales, sizes = _const(args[1], "scales"), None
    else:
        given = [None if len(args) <= k or args[k] is None else _const(args[k], "scales and sizes")
                 for k in (2, 3)]
        scales, sizes = (a if a is not None and a.size else None for a in given)
        if sizes is not None and attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise _Unsupported(f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']}")
    axes = [int(a) + len(shape) if int(a) < 0 else int(a) for a in attrs.get("axes", range(len(shape)))]
    given = scales if sizes is None else sizes
    if given is None or given.size != len(axes):
        raise ModelError(f"Resize {_where(node)}: needs scales or sizes for the {len(axes)} axes")
    factors = [1] * len(shape)
    for a, g in zip(axes, given.reshape(-1).tolist()):
        f = g if sizes is None else g / shape[a]
        if f != int(f) or f < 1:
            raise _Unsupported(f"{'scale' if sizes is None else 'size'} {g} on an axis of size {shape[a]} "
                               "(only integer upsampling factors are supported)")
        factors[a] = int(f)
    return factors


def _nearest_source(size: int, f: int, coordinates: str, rounding: str) -> np.ndarray:
    """For an axis of ``size`` entries upsampled ``f`` times: the entry each output reads (ONNX Resize's
    coordinate transformation, nearest rounding, clamped to the axis)."""
    i = np.arange(size * f, dtype=np.float64)
    if coordinates == "asymmetric":
        x = i / f
    elif coordinates == "tf_half_pixel_for_nn":
        x = (i + 0.5) / f
    else:  # half_pixel, and pytorch_half_pixel (the same where the output has more than one entry)
        x = (i + 0.5) / f - 0.5
    tie = x - np.floor(x) == 0.5
    if rounding == "floor":
        r = np.floor(x)
    elif rounding == "ceil":
        r = np.ceil(x)
    elif rounding == "round_prefer_floor":
        r = np.where(tie, np.floor(x), np.floor(x + 0.5))
    else:
        r = np.where(tie, np.ceil(x), np.floor(x + 0.5))
    return np.clip(r, 0, size - 1).astype(np.int64)


def _cv_conv_transpose(ctx: _Context, node, args) -> list[_Value]:
    """2-D ConvTranspose as a selection (the input's entries spread ``stride`` apart, zeros between them;
    none for stride 1) read by a padded Conv of stride 1 with the flipped kernel: exact, no expanded matrix."""
    name = _name(node)
    w = _const(args[1], "the weight")  # (C_in, C_out / group, kh, kw)
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D transposed convolution")
    v = _with_batch(ctx, args[0], name)
    attrs = _attrs(node)
    group = int(attrs.get("group", 1))
    c_in, c_out_g, kh, kw = w.shape
    if len(v.shape) != 3 or c_in != v.shape[0] or c_in % group:
        raise ModelError(f"ConvTranspose '{name}': weight {list(w.shape)} and group {group} do not fit "
                         f"input {list(v.onnx_shape)}")
    if tuple(attrs.get("kernel_shape", (kh, kw))) != (kh, kw):
        raise ModelError(f"ConvTranspose '{name}': kernel_shape disagrees with the weight")
    if "output_shape" in attrs:
        raise _Unsupported("output_shape")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
        raise _Unsupported(f"auto_pad={attrs['auto_pad']}")
    strides = [int(s) for s in attrs.get("strides", (1, 1))]
    dil = [int(d) for d in attrs.get("dilations", (1, 1))]
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))] if attrs.get("auto_pad", "NOTSET") != "VALID" else [0] * 4
    extra = [int(p) for p in attrs.get("output_padding", (0, 0))]
    sources, padding, out_hw = [], [0] * 4, []
    for a, (n, k, s, d) in enumerate(zip(v.shape[1:], (kh, kw), strides, dil)):
        # the input spread s apart, (k - 1) d - pads zeros before and after it (the Conv's padding; if
        # negative: cropped), and output_padding more zeros at the end
        before, after = (k - 1) * d - pads[a], (k - 1) * d - pads[a + 2] + extra[a]
        padding[a], padding[a + 2] = max(before, 0), max(after, 0)
        q = np.arange(max(-before, 0), (n - 1) * s + 1 - max(-after, 0))  # position in the spread axis
        sources.append(np.where(q % s == 0, q // s, -1))
        out_hw.append(padding[a] + q.size + padding[a + 2] - (k - 1) * d)
        if q.size < 1 or out_hw[-1] < 1:
            raise ModelError(f"ConvTranspose '{name}': pads {pads} leave no output")
    hw = v.shape[1] * v.shape[2]
    picked = (np.arange(c_in)[:, None, None] * hw + sources[0][None, :, None] * v.shape[2]
              + sources[1][None, None, :])
    picked = np.where((sources[0][None, :, None] >= 0) & (sources[1][None, None, :] >= 0), picked, -1)
    spread = _emit_selection(ctx, v, picked[None].astype(np.float64), name, fills=True)
    c_in_g = c_in // group
    weight = w.reshape(group, c_in_g, c_out_g, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    c_out = group * c_out_g
    bias = _t(_const(args[2], "the bias")) if len(args) > 2 and args[2] is not None else torch.zeros(c_out)
    op = Conv(weight=_t(weight.reshape(c_out, c_in_g, kh, kw)), bias=bias.to(torch.float64), stride=(1, 1),
              padding=tuple(padding), dilation=tuple(dil), groups=group)
    return [ctx.emit(op, [spread], (c_out, *out_hw), True, name)]


def _cv_reduce_sum(ctx: _Context, node, args) -> list[_Value]:
    """ReduceSum as a Conv of ones over the summed axes of a ``(C, H, W)`` tensor, else as a Dense of 0/1
    weights on the flattened input (both exact constants)."""
    v, attrs, name = args[0], _attrs(node), _name(node)
    shape = v.onnx_shape
    r = len(shape)
    if ctx.opset < 13:
        axes = attrs.get("axes")
    else:
        axes = _const(args[1], "axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None else None
    if not axes:
        if ctx.opset >= 13 and attrs.get("noop_with_empty_axes", 0):
            return [v]
        axes = range(r)
    axes = {int(a) + r if int(a) < 0 else int(a) for a in axes}
    if any(not 0 <= a < r for a in axes):
        raise ModelError(f"ReduceSum '{name}': axes {sorted(axes)} out of range for rank {r}")
    kept = tuple(1 if a in axes else d for a, d in enumerate(shape))
    out_shape = kept if attrs.get("keepdims", 1) else tuple(d for a, d in enumerate(shape) if a not in axes)
    summed = {a for a in axes if shape[a] > 1}  # summing a size-1 axis only drops it
    if not summed:
        return [_reshape(ctx, v, out_shape, name)]
    if v.batched and len(v.shape) == 3 and 0 not in summed:
        c, h, w = v.shape
        kernel = (h if 2 in summed else 1, w if 3 in summed else 1)
        if 1 in summed:  # all channels into one
            op = Conv(weight=torch.ones(1, c, *kernel, dtype=torch.float64), bias=torch.zeros(1, dtype=torch.float64),
                      stride=(1, 1), padding=(0, 0, 0, 0))
        else:  # each channel on its own
            op = Conv(weight=torch.ones(c, 1, *kernel, dtype=torch.float64), bias=torch.zeros(c, dtype=torch.float64),
                      stride=(1, 1), padding=(0, 0, 0, 0), groups=c)
        return [_reshape(ctx, ctx.emit(op, [v], kept[1:], True, name), out_shape, name)]
    n, m = prod(shape), prod(kept)
    if n * m > _MAX_EXPANDED:
        raise _Unsupported(f"its {n} x {m} sum is too large to expand")
    coords = np.indices(shape).reshape(r, n)
    coords[sorted(axes)] = 0
    weight = torch.zeros(m, n, dtype=torch.float64)
    weight[torch.from_numpy(np.ravel_multi_index(tuple(coords), kept)), torch.arange(n)] = 1.0
    flat = v if len(v.shape) == 1 else ctx.emit(Reshape(), [v], (n,), False, name)
    dense = ctx.emit(Dense(weight=weight, bias=torch.zeros(m, dtype=torch.float64)), [flat], (m,), False, name)
    return [_reshape_flat(ctx, dense, out_shape, v.batched, name)]


_Converter = Callable[[_Context, "onnx.NodeProto", list], list[_Value]]
_CONVERTERS: dict[str, _Converter] = {
    "Identity": _cv_identity, "Dropout": _cv_dropout, "Cast": _cv_cast, "Shape": _cv_shape, "Size": _cv_size,
    "Relu": _cv_relu, "Neg": _cv_neg, "Add": _cv_arith, "Sub": _cv_arith, "Mul": _cv_arith, "Div": _cv_arith,
    "MatMul": _cv_matmul, "Gemm": _cv_gemm, "Flatten": _cv_flatten, "Reshape": _cv_reshape,
    "Squeeze": _cv_squeeze, "Unsqueeze": _cv_unsqueeze, "Transpose": _cv_transpose, "Conv": _cv_conv,
    "BatchNormalization": _cv_batchnorm, "AveragePool": _cv_pool, "MaxPool": _cv_pool,
    "GlobalAveragePool": _cv_global_pool, "GlobalMaxPool": _cv_global_pool, "Pad": _cv_pad, "Concat": _cv_concat,
    "Slice": _cv_select, "Split": _cv_select, "Gather": _cv_select, "GatherElements": _cv_select,
    "Resize": _cv_resize, "Upsample": _cv_resize, "ConvTranspose": _cv_conv_transpose, "ReduceSum": _cv_reduce_sum,
}
