"""The network IR: an immutable DAG of a few node types, in topological order.

Every tensor here is per sample: shapes exclude the batch dimension, and every
analysis runs on batches ``(B, *shape)``.  Node 0 is the single ``Input``;
``Network.output`` is the index of the output node.  VNN-LIB's ``X_i`` and
``Y_i`` index the row-major flattening of the input and output tensors.

Normalization, BatchNorm and chains of affine maps are folded at load time, so
analyses see mostly ``Dense``/``Conv``/``Relu``; ``Scale`` remains only where
no neighbouring affine node can absorb it.  A constant that loading computed
(``1 / c``, BatchNorm's scale, a folded weight) or rounded to the model's dtype
carries an elementwise bound of its distance to the exact value (``*_err``,
``None`` where exact; ``verifier.constants``), which every bound adds to its slack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from typing import Union

import torch

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class Input:
    """The network input."""


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = W x + b`` on a flat input ``(n,)`` giving ``(m,)``."""

    weight: Tensor  # (m, n)
    bias: Tensor  # (m,)
    weight_err: Tensor | None = None  # (m, n) bounds of |exact - weight|; None: exact
    bias_err: Tensor | None = None  # (m,)


@dataclass(frozen=True, eq=False)
class Conv:
    """2-D convolution on ``(C, H, W)``; padding is (top, left, bottom, right)."""

    weight: Tensor  # (C_out, C_in / groups, kh, kw)
    bias: Tensor  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    weight_err: Tensor | None = None  # bounds of |exact - weight|; None: exact
    bias_err: Tensor | None = None


@dataclass(frozen=True, eq=False)
class Relu:
    """``max(x, 0)`` elementwise."""


@dataclass(frozen=True, eq=False)
class Add:
    """Elementwise sum of two nodes of the same shape."""


@dataclass(frozen=True, eq=False)
class Scale:
    """Elementwise ``x * scale + shift`` (constants broadcastable to the shape)."""

    scale: Tensor
    shift: Tensor
    scale_err: Tensor | None = None  # bounds of |exact - scale|; None: exact
    shift_err: Tensor | None = None


@dataclass(frozen=True, eq=False)
class Reshape:
    """Row-major reshape to ``Node.shape`` (Flatten is a reshape to ``(n,)``)."""


@dataclass(frozen=True, eq=False)
class Transpose:
    """Permutation of the per-sample axes."""

    perm: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class AvgPool:
    """2-D average pooling on ``(C, H, W)``; padding is (top, left, bottom, right)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = True


@dataclass(frozen=True, eq=False)
class MaxPool:
    """2-D max pooling on ``(C, H, W)``; padding (top, left, bottom, right) is -inf."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class Pad:
    """Constant padding; ``pads`` as in ONNX over the per-sample axes (begins, then ends)."""

    pads: tuple[int, ...]
    value: float = 0.0


@dataclass(frozen=True, eq=False)
class Concat:
    """Concatenation of the inputs along a per-sample axis."""

    axis: int


@dataclass(frozen=True, eq=False)
class Gather:
    """A selection on the row-major flattenings: ``out.flatten()[i] = in.flatten()[index[i]]``, or 0 where
    ``index[i] = -1``.  No arithmetic: ONNX Slice, Split, Gather, GatherElements, nearest-neighbour Resize
    and ConvTranspose's zero insertion all become one.  An entry read by several outputs gets their rows'
    sum in a backward pass (``repeats`` terms at most)."""

    index: Tensor  # (n_out,) int64, each in [-1, n_in)
    fills: bool = field(init=False)  # some index is -1
    repeats: int = field(init=False)  # the most outputs that read one input entry

    def __post_init__(self) -> None:
        if self.index.dtype != torch.int64 or self.index.dim() != 1:
            raise ValueError("Gather needs a flat int64 index")
        valid = self.index[self.index >= 0]
        object.__setattr__(self, "fills", bool(valid.numel() < self.index.numel()))
        object.__setattr__(self, "repeats", int(torch.bincount(valid).max()) if valid.numel() else 0)


Op = Union[Input, Dense, Conv, Relu, Add, Scale, Reshape, Transpose, AvgPool, MaxPool, Pad, Concat, Gather]
OP_TYPES: tuple[type, ...] = (
    Input, Dense, Conv, Relu, Add, Scale, Reshape, Transpose, AvgPool, MaxPool, Pad, Concat, Gather,
)


@dataclass(frozen=True, eq=False)
class Node:
    """One operation, the indices of the nodes it reads, and its output shape."""

    op: Op
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str = ""

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True, eq=False)
class Network:
    """An immutable DAG of nodes in topological order (node 0 is the input)."""

    nodes: tuple[Node, ...]
    output: int

    def __post_init__(self) -> None:
        if not self.nodes or not isinstance(self.nodes[0].op, Input):
            raise ValueError("node 0 of a Network must be its Input")
        for i, node in enumerate(self.nodes):
            if any(j >= i or j < 0 for j in node.inputs):
                raise ValueError(f"node {i} ({node.name}) reads a later node")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output].shape

    @property
    def n_inputs(self) -> int:
        return self.nodes[0].size

    @property
    def n_outputs(self) -> int:
        return self.nodes[self.output].size

    @property
    def relu_indices(self) -> tuple[int, ...]:
        """Indices of the Relu nodes, in order; split states are kept per entry."""
        return tuple(i for i, n in enumerate(self.nodes) if isinstance(n.op, Relu))

    @property
    def dtype(self) -> torch.dtype:
        for node in self.nodes:
            for t in _tensors(node.op):
                return t.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        for node in self.nodes:
            for t in _tensors(node.op):
                return t.device
        return torch.device("cpu")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Network:
        """The same network with every constant moved to ``device`` and cast to ``dtype`` (a cast that
        rounds adds to the constants' error bounds)."""
        nodes = tuple(replace(n, op=_op_to(n.op, device, dtype)) for n in self.nodes)
        return Network(nodes=nodes, output=self.output)

    def as_defined(self) -> Network:
        """The network whose exact constants are these values (error bounds dropped): for networks built
        in code, e.g. random weights rounded to float32 on purpose."""
        nodes = tuple(replace(n, op=replace(n.op, **{k: None for k in vars(n.op) if k.endswith("_err")}))
                      for n in self.nodes)
        return Network(nodes=nodes, output=self.output)


def _tensors(op: Op) -> list[Tensor]:
    """The float constants of ``op`` (a Gather's integer index is not one)."""
    return [v for k, v in vars(op).items()
            if isinstance(v, Tensor) and v.is_floating_point() and not k.endswith("_err")]


def has_errors(net: Network) -> bool:
    """Whether some constant of ``net`` is not exact (see the module docstring)."""
    return any(k.endswith("_err") and v is not None for n in net.nodes for k, v in vars(n.op).items())


def _op_to(op: Op, device, dtype) -> Op:
    """``op`` with its constants on ``device`` in ``dtype``; a cast that rounds adds to their error bounds
    (which are rounded up)."""
    fields = vars(op)
    changes = {}
    for k, v in fields.items():
        if not isinstance(v, Tensor) or k.endswith("_err"):
            continue
        if not v.is_floating_point():  # an index moves, but keeps its type
            changes[k] = v.to(device=device)
            continue
        changes[k] = v.to(device=device, dtype=dtype)
        err = fields.get(k + "_err")
        if dtype is not None and dtype != v.dtype:
            rounded = (v.double() - changes[k].double().to(v.device)).abs()
            if bool((rounded != 0).any()):
                err = rounded if err is None else err.double() + rounded
        if err is not None:
            e = err.to(device=device, dtype=dtype or err.dtype)
            changes[k + "_err"] = torch.where(e.double() < err.double().to(e.device), torch.nextafter(
                e, torch.tensor(float("inf"), dtype=e.dtype, device=e.device)), e)
        elif k + "_err" in fields:
            changes[k + "_err"] = None
    return replace(op, **changes) if changes else op
