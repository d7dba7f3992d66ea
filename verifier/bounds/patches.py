"""Backward rows of single neurons over their receptive fields only ("patches").

The backward row of one neuron of a convolutional map is zero outside the
neuron's receptive field, which is a few pixels wide for the first layers back.
A row is kept as a patch: coefficients ``(B, R, C, ph, pw)`` on a window of the
node's ``(C, H, W)`` map whose top-left corner is ``(top, left)`` ``(B, R)``
(it may lie partly outside the map; entries outside are zero).  All rows share
the patch size, so the transposed convolution of a patch is one batched call,
its result a patch of the convolution's input at ``(top * s - pad, left * s - pad)``.
A ReLU's relaxation is read at each row's window.  Where a patch would cover
the whole map, or the next node is neither a convolution nor a ReLU, the rows
are scattered into full maps and the dense pass goes on (``backward.py``).
The arithmetic per coefficient is the dense pass's: the same products and sums
(only the zeros outside the window are not computed), so its rounding terms hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from verifier.bounds.types import Tensor
from verifier.network import Conv, Network


@dataclass(frozen=True, eq=False)
class Patches:
    """Rows on node ``node``'s ``(C, H, W)`` map: coefficients ``(B, R, C, ph, pw)`` on the window whose
    top-left corner is ``(top, left)`` ``(B, R)`` (long; entries outside the map are zero)."""

    node: int
    coef: Tensor
    top: Tensor
    left: Tensor

    def window_index(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Per row, the flat map positions ``(B, R, ph * pw)`` of the window (outside the map: clamped to
        an edge) and whether each lies inside ``(B, R, 1, ph, pw)``."""
        _, H, W = shape
        ph, pw = self.coef.shape[-2:]
        hh = self.top.unsqueeze(2) + torch.arange(ph, device=self.top.device)  # (B, R, ph)
        ww = self.left.unsqueeze(2) + torch.arange(pw, device=self.top.device)  # (B, R, pw)
        inside = ((hh >= 0) & (hh < H)).unsqueeze(3) & ((ww >= 0) & (ww < W)).unsqueeze(2)
        flat = hh.clamp(0, H - 1).unsqueeze(3) * W + ww.clamp(0, W - 1).unsqueeze(2)
        return flat.flatten(2), inside.unsqueeze(2)


def unit_patches(net: Network, i: int, idx: Tensor) -> Patches | None:
    """Rows ``+e_j`` then ``-e_j`` for the neurons ``idx`` ``(B, R)`` of Conv node ``i`` as 1x1 patches, or
    None where patches do not pay (not a convolution, or its kernel covers its input map)."""
    node = net.nodes[i]
    if not isinstance(node.op, Conv) or len(node.shape) != 3:
        return None
    first = conv_patch_size(node.op, (1, 1))
    _, Hi, Wi = net.nodes[node.inputs[0]].shape
    if first[0] * first[1] >= Hi * Wi:
        return None
    C, H, W = node.shape
    B, R = idx.shape
    channel, pos = idx // (H * W), idx % (H * W)
    coef = torch.zeros(B, 2 * R, C, 1, 1, dtype=net.dtype, device=net.device)
    ones = torch.ones(B, R, 1, 1, 1, dtype=net.dtype, device=net.device)
    index = torch.cat([channel, channel], 1).reshape(B, 2 * R, 1, 1, 1)
    coef.scatter_(2, index, torch.cat([ones, -ones], 1))
    top, left = pos // W, pos % W
    return Patches(i, coef, torch.cat([top, top], 1), torch.cat([left, left], 1))


def conv_patch_size(op: Conv, size: tuple[int, int]) -> tuple[int, int]:
    """The size of the input patch a convolution's output patch of ``size`` reads."""
    kh, kw = op.weight.shape[-2:]
    return ((size[0] - 1) * op.stride[0] + op.dilation[0] * (kh - 1) + 1,
            (size[1] - 1) * op.stride[1] + op.dilation[1] * (kw - 1) + 1)


def conv_back(p: Patches, op: Conv, input_node: int, in_shape: tuple[int, ...]) -> Patches:
    """The rows on a convolution's input, as patches (zero outside the input map)."""
    B, R, Co, ph, pw = p.coef.shape
    x = F.conv_transpose2d(p.coef.reshape(B * R, Co, ph, pw), op.weight, None, op.stride, 0, 0, op.groups,
                           op.dilation)
    x = x.reshape(B, R, *x.shape[1:])
    out = Patches(input_node, x, p.top * op.stride[0] - op.padding[0], p.left * op.stride[1] - op.padding[1])
    _, inside = out.window_index(in_shape)
    return Patches(input_node, x * inside, out.top, out.left)


def at_windows(p: Patches, values: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``values`` ``(B, R or 1, n)`` (flat over the node's ``(C, H, W)`` map) read at each row's window:
    ``(B, R, C, ph, pw)``."""
    B, R, C, ph, pw = p.coef.shape
    flat, _ = p.window_index(shape)
    src = values.reshape(B, values.shape[1], C, -1).expand(B, R, C, -1)
    return src.gather(3, flat.unsqueeze(2).expand(B, R, C, ph * pw)).reshape(B, R, C, ph, pw)


def to_dense(p: Patches, shape: tuple[int, ...]) -> Tensor:
    """The rows as full maps ``(B, R, C, H, W)``."""
    B, R, C, ph, pw = p.coef.shape
    flat, inside = p.window_index(shape)
    src = (p.coef * inside).flatten(3)
    dense = p.coef.new_zeros(B, R, C, shape[1] * shape[2])
    return dense.scatter_add(3, flat.unsqueeze(2).expand(B, R, C, ph * pw), src).reshape(B, R, *shape)
