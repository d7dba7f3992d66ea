"""The piecewise-linear structure of each IR node as sparse matrices and index maps.

Every encoding (MILP, LP relaxation, SMT) reads the network through these three
views, all over the row-major flattening of the per-sample tensors (and CROWN takes
a small convolution's ``linear_map`` as its dense matrix, ``bounds/conv_matrix.py``):

* ``linear_map``: Dense, Conv, AvgPool and Scale as ``y = M x + c`` with a
  ``scipy.sparse`` matrix ``M`` built by vectorised index arithmetic;
* ``index_map``: Reshape, Transpose, Pad, Concat and Gather as ``y[i] = x[idx[i]]``
  (``idx[i] = -1`` reads the constant fill value);
* ``maxpool_windows``: the input indices pooled by each MaxPool output.
"""

from __future__ import annotations

from math import prod

import numpy as np
import scipy.sparse as sp

from verifier.network import AvgPool, Concat, Conv, Dense, Gather, MaxPool, Node, Pad, Reshape, Scale, Transpose

LINEAR_OPS = (Dense, Conv, AvgPool, Scale)
INDEX_OPS = (Reshape, Transpose, Pad, Concat, Gather)


def linear_map(node: Node, in_shape: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, c)`` with ``flat(node(x)) = M @ flat(x) + c``, both float64."""
    op = node.op
    if isinstance(op, Dense):
        weight = _np(op.weight)
        return sp.csr_matrix(weight), _np(op.bias).reshape(-1)
    if isinstance(op, Conv):
        return _conv_matrix(op, in_shape, node.shape)
    if isinstance(op, AvgPool):
        return _avgpool_matrix(op, in_shape, node.shape), np.zeros(node.size)
    if isinstance(op, Scale):
        scale = _broadcast(_np(op.scale), node.shape)
        shift = _broadcast(_np(op.shift), node.shape)
        return sp.diags(scale, format="csr"), shift
    raise TypeError(f"linear_map: {type(op).__name__} is not a linear node")


def index_map(node: Node, in_shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, float]:
    """``(idx, fill)``: output ``i`` is input ``idx[i]`` (inputs concatenated), or ``fill`` if -1."""
    op = node.op
    if isinstance(op, Reshape):
        return np.arange(node.size), 0.0
    if isinstance(op, Transpose):
        return np.arange(prod(in_shapes[0])).reshape(in_shapes[0]).transpose(op.perm).reshape(-1), 0.0
    if isinstance(op, Pad):
        return _pad_index(op, in_shapes[0], node.shape), float(op.value)
    if isinstance(op, Concat):
        starts = np.cumsum([0] + [prod(s) for s in in_shapes])
        parts = [starts[t] + np.arange(prod(s)).reshape(s) for t, s in enumerate(in_shapes)]
        return np.concatenate(parts, axis=op.axis).reshape(-1), 0.0
    if isinstance(op, Gather):
        return op.index.detach().cpu().numpy().astype(np.int64), 0.0
    raise TypeError(f"index_map: {type(op).__name__} is not an index node")


def maxpool_windows(op: MaxPool, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Input indices of each output's window, ``(n_out, kh*kw)``; -1 marks padding."""
    rows, cols, valid = _window_indices(in_shape, out_shape, op.kernel, op.stride, op.padding)
    return np.where(valid, cols, -1).reshape(rows.shape[0] * rows.shape[1] * rows.shape[2], -1)


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)


def _broadcast(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A constant broadcast against a per-sample shape, tolerating a leading batch axis of 1."""
    full = np.broadcast_shapes(value.shape, (1, *shape))
    return np.broadcast_to(value, full).reshape(-1).astype(np.float64)


def _window_indices(in_shape, out_shape, kernel, stride, padding, dilation=(1, 1)):
    """Flat input index of each (channel, oh, ow, ki, kj); rows ``(C, OH, OW, kh*kw)``."""
    c, h, w = in_shape
    _, oh, ow = out_shape
    kh, kw = kernel
    ii = (np.arange(oh)[:, None] * stride[0] - padding[0])[:, None, :, None] + (
        np.arange(kh) * dilation[0]
    )[None, None, :, None]  # (OH, 1, kh, 1)
    jj = (np.arange(ow)[:, None] * stride[1] - padding[1])[None, :, None, :] + (
        np.arange(kw) * dilation[1]
    )[None, None, None, :]  # (1, OW, 1, kw)
    valid = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)  # (OH, OW, kh, kw)
    flat_hw = ii * w + jj  # (OH, OW, kh, kw)
    chan = np.arange(c)[:, None, None, None, None]
    cols = chan * (h * w) + flat_hw[None]  # (C, OH, OW, kh, kw)
    valid = np.broadcast_to(valid[None], cols.shape)
    rows = np.arange(c * oh * ow).reshape(c, oh, ow)
    return rows, cols.reshape(c, oh, ow, kh * kw), valid.reshape(c, oh, ow, kh * kw)


def _avgpool_matrix(op: AvgPool, in_shape, out_shape) -> sp.csr_matrix:
    rows, cols, valid = _window_indices(in_shape, out_shape, op.kernel, op.stride, op.padding)
    k = op.kernel[0] * op.kernel[1]
    if op.count_include_pad:
        vals = np.full(cols.shape, 1.0 / k)
    else:
        vals = np.broadcast_to(1.0 / valid.sum(axis=-1, keepdims=True), cols.shape)
    r = np.broadcast_to(rows[..., None], cols.shape)
    shape = (prod(out_shape), prod(in_shape))
    return sp.csr_matrix((vals[valid], (r[valid], cols[valid])), shape=shape)


def _conv_matrix(op: Conv, in_shape, out_shape) -> tuple[sp.csr_matrix, np.ndarray]:
    weight = _np(op.weight)  # (Co, Cg, kh, kw)
    c_out, c_g, kh, kw = weight.shape
    c_in, h, w = in_shape
    _, oh, ow = out_shape
    per_group = c_out // op.groups
    # input position of every (co, oh, ow, ci, ki, kj) term
    ii = np.arange(oh)[:, None] * op.stride[0] - op.padding[0] + np.arange(kh)[None, :] * op.dilation[0]
    jj = np.arange(ow)[:, None] * op.stride[1] - op.padding[1] + np.arange(kw)[None, :] * op.dilation[1]
    ii = ii[None, :, None, None, :, None]  # (1, OH, 1, 1, kh, 1)
    jj = jj[None, None, :, None, None, :]  # (1, 1, OW, 1, 1, kw)
    chan = (np.arange(c_out) // per_group)[:, None] * c_g + np.arange(c_g)[None, :]  # (Co, Cg)
    chan = chan[:, None, None, :, None, None]  # (Co, 1, 1, Cg, 1, 1)
    full = (c_out, oh, ow, c_g, kh, kw)
    valid = np.broadcast_to((ii >= 0) & (ii < h) & (jj >= 0) & (jj < w), full)
    cols = np.broadcast_to(chan * (h * w) + ii * w + jj, full)
    rows = np.broadcast_to(np.arange(c_out * oh * ow).reshape(c_out, oh, ow, 1, 1, 1), full)
    vals = np.broadcast_to(weight[:, None, None], full)
    keep = valid & (vals != 0)
    matrix = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(c_out * oh * ow, c_in * h * w))
    bias = np.repeat(_np(op.bias).reshape(-1), oh * ow)
    return matrix, bias


def _pad_index(op: Pad, in_shape, out_shape) -> np.ndarray:
    d = len(in_shape)
    begins = np.asarray(op.pads[:d]).reshape((d,) + (1,) * d)
    src = np.indices(out_shape) - begins  # (d, *out_shape)
    inside = np.all((src >= 0) & (src < np.asarray(in_shape).reshape((d,) + (1,) * d)), axis=0)
    clipped = [np.clip(src[a], 0, in_shape[a] - 1) for a in range(d)]
    flat = np.ravel_multi_index(clipped, in_shape)
    return np.where(inside, flat, -1).reshape(-1)
