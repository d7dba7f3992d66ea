"""Backward rows of single neurons over their receptive fields only ("patches").

The backward row of one neuron of a convolutional map is zero outside the
neuron's receptive field, which is a few pixels wide for the first layers back.
A row is kept as a patch: coefficients ``(B, R, C, ph, pw)`` on a window of the
node's ``(C, H, W)`` map whose top-left corner is ``(top, left)`` (it may lie
partly outside the map; entries outside are zero).  Rows come in ``R / Q``
groups of ``Q`` that share their windows (a neuron's lower and upper row), so
corners are ``(B, Q)`` and what is read at the windows is read once per group.
All rows share the patch size, so the transposed convolution of a patch is one
batched call, its result a patch of the convolution's input at
``(top * s - pad, left * s - pad)``.  A ReLU's relaxation is read at each row's
window.  Where a patch would cover the whole map, or the next node is neither a
convolution nor a ReLU, the rows are scattered into full maps and the dense pass
goes on (``backward.py``).  Each coefficient and constant is a sum of the dense
pass's products (without the zero ones, in another order), so the dense pass's
rounding terms bound it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from verifier.bounds.relaxation import relu_rows
from verifier.bounds.types import Tensor
from verifier.network import Conv, Network


@dataclass(frozen=True, eq=False)
class Patches:
    """Rows on node ``node``'s ``(C, H, W)`` map: coefficients ``(B, R, C, ph, pw)``, row ``r`` on the window
    whose top-left corner is ``(top, left)[:, r % Q]`` (``(B, Q)`` long; entries outside the map are zero)."""

    node: int
    coef: Tensor
    top: Tensor
    left: Tensor

    def grouped(self) -> Tensor:
        """The coefficients as ``(B, R / Q, Q, C, ph, pw)``."""
        B, R = self.coef.shape[:2]
        Q = self.top.shape[1]
        return self.coef.reshape(B, R // Q, Q, *self.coef.shape[2:])

    def window_index(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Per window, the flat map positions ``(B, Q, ph * pw)`` (outside the map: clamped to an edge) and
        whether each lies inside ``(B, 1, Q, 1, ph, pw)``."""
        _, H, W = shape
        ph, pw = self.coef.shape[-2:]
        hh = self.top.unsqueeze(2) + torch.arange(ph, device=self.top.device)  # (B, Q, ph)
        ww = self.left.unsqueeze(2) + torch.arange(pw, device=self.top.device)  # (B, Q, pw)
        inside = ((hh >= 0) & (hh < H)).unsqueeze(3) & ((ww >= 0) & (ww < W)).unsqueeze(2)
        flat = hh.clamp(0, H - 1).unsqueeze(3) * W + ww.clamp(0, W - 1).unsqueeze(2)
        return flat.flatten(2), inside.unsqueeze(1).unsqueeze(3)


def unit_patches(net: Network, i: int, idx: Tensor) -> Patches | None:
    """Rows ``+e_j`` then ``-e_j`` for the neurons ``idx`` ``(B, R)`` of Conv node ``i`` as 1x1 patches, or
    None where patches do not pay (not a convolution, or its kernel covers its input map)."""
    node = net.nodes[i]
    if not isinstance(node.op, Conv) or len(node.shape) != 3 or not patch_pays(
            node.op, (1, 1), net.nodes[node.inputs[0]].shape):
        return None
    C, H, W = node.shape
    B, R = idx.shape
    channel, pos = idx // (H * W), idx % (H * W)
    coef = torch.zeros(B, 2, R, C, dtype=net.dtype, device=net.device)
    sign = torch.tensor([1.0, -1.0], dtype=net.dtype, device=net.device).reshape(1, 2, 1, 1).expand(B, 2, R, 1)
    coef.scatter_(3, channel.reshape(B, 1, R, 1).expand(B, 2, R, 1), sign)
    return Patches(i, coef.reshape(B, 2 * R, C, 1, 1), pos // W, pos % W)


def patch_pays(op: Conv, size: tuple[int, ...], in_shape: tuple[int, ...]) -> bool:
    """Whether the input patch that a convolution's output patch of ``size`` reads is smaller than the
    convolution's ``(C, H, W)`` input map."""
    kh, kw = op.weight.shape[-2:]
    ph = (size[0] - 1) * op.stride[0] + op.dilation[0] * (kh - 1) + 1
    pw = (size[1] - 1) * op.stride[1] + op.dilation[1] * (kw - 1) + 1
    return len(in_shape) == 3 and ph * pw < in_shape[1] * in_shape[2]


def conv_back(p: Patches, op: Conv, input_node: int, in_shape: tuple[int, ...]) -> Patches:
    """The rows on a convolution's input, as patches (zero outside the input map)."""
    B, R, Co, ph, pw = p.coef.shape
    x = F.conv_transpose2d(p.coef.reshape(B * R, Co, ph, pw), op.weight, None, op.stride, 0, 0, op.groups,
                           op.dilation)
    out = Patches(input_node, x.reshape(B, R, *x.shape[1:]), p.top * op.stride[0] - op.padding[0],
                  p.left * op.stride[1] - op.padding[1])
    _, inside = out.window_index(in_shape)
    return Patches(input_node, (out.grouped() * inside).reshape(out.coef.shape), out.top, out.left)


def at_windows(p: Patches, values: Tensor, shape: tuple[int, ...], flat: Tensor | None = None) -> Tensor:
    """``values`` ``(B, R or 1, n)`` (flat over the node's ``(C, H, W)`` map) read at each row's window:
    ``(B, R / Q or 1, Q, C, ph, pw)``, to multiply ``p.grouped()``; ``flat``: ``p.window_index(shape)[0]``
    if already computed."""
    B, R, C, ph, pw = p.coef.shape
    Q = p.top.shape[1]
    k = R // Q if values.shape[1] == R else 1
    flat = p.window_index(shape)[0] if flat is None else flat
    src = values.reshape(B, k, -1, C, shape[1] * shape[2]).expand(B, k, Q, C, -1)
    index = flat.reshape(B, 1, Q, 1, ph * pw).expand(B, k, Q, C, ph * pw)
    return src.gather(4, index).reshape(B, k, Q, C, ph, pw)


def relu_back(p: Patches, lower_slope: Tensor, upper_slope: Tensor, upper_bias: Tensor, input_node: int,
              shape: tuple[int, ...]) -> tuple[Patches, Tensor]:
    """``backward.py``'s ReLU step on patches: the rows on the ReLU's input and the constant ``(B, R)``;
    ``lower_slope`` ``(B, R or 1, n)``, ``upper_slope`` and ``upper_bias`` ``(B, n)``."""
    flat = p.window_index(shape)[0]
    A_in, neg = relu_rows(p.grouped(), at_windows(p, lower_slope, shape, flat),
                          at_windows(p, upper_slope.unsqueeze(1), shape, flat))
    c = (neg * at_windows(p, upper_bias.unsqueeze(1), shape, flat)).flatten(3).sum(-1)
    return Patches(input_node, A_in.reshape(p.coef.shape), p.top, p.left), c.reshape(c.shape[0], -1)


def to_dense(p: Patches, shape: tuple[int, ...]) -> Tensor:
    """The rows as full maps ``(B, R, C, H, W)``."""
    B, R, C, ph, pw = p.coef.shape
    flat, inside = p.window_index(shape)
    A = p.grouped()
    k, Q = A.shape[1:3]
    index = flat.reshape(B, 1, Q, 1, ph * pw).expand(B, k, Q, C, ph * pw)
    dense = A.new_zeros(B, k, Q, C, shape[1] * shape[2])
    return dense.scatter_add(4, index, (A * inside).flatten(4)).reshape(B, R, *shape)
