"""A convolution's transposed product as one matrix product where its maps are small.

Backward passes multiply every row by a convolution's transpose.  On CPU a
float64 ``conv_transpose2d`` runs at 3-17 GMAC/s, while a matrix product runs
at 60-80; on small maps (the last blocks of a CIFAR ResNet: 4x4 and 2x2) the
convolution's dense matrix has few more entries than its products, so one
matrix product is several times faster (128 channels on 2x2 maps: 15x).  The
matrix holds each weight, unchanged, at every position the convolution reads
it, and zeros elsewhere, so each coefficient is the same sum of non-zero
products as the transposed convolution's (plus exact zero terms), and every
rounding bound that counts the convolution's terms (``backward_terms``) holds.
It is built once per op, dtype and device.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from verifier.network import Conv

Tensor = torch.Tensor

# dense products per transposed-convolution product below which the matrix product wins (measured on
# CPU, 1000 rows: float64 1.8x as many products ran 3.6-4.2x faster, 7.1x as many 0.66-1.35x as fast;
# float32 convolutions run near the matrix product's speed: 0.44x as many ran 2x faster, 1.8x as many 1.1x)
RATIO = {torch.float64: 4.0, torch.float32: 1.0}
MAX_ENTRIES = 1 << 22  # matrices larger than this (32 MB in float64) are not built

_cache: weakref.WeakKeyDictionary[Conv, dict] = weakref.WeakKeyDictionary()


def matrix_pays(op: Conv, in_shape: tuple[int, ...], out_shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether the transposed product of ``op`` from ``out_shape`` to ``in_shape`` is cheaper as a matrix
    product in ``dtype``."""
    c_out, c_per_group, kh, kw = op.weight.shape
    n_in = in_shape[0] * in_shape[1] * in_shape[2]
    n_out = out_shape[0] * out_shape[1] * out_shape[2]
    products = n_out * c_per_group * kh * kw
    return n_in * n_out <= min(MAX_ENTRIES, RATIO.get(dtype, 0.0) * products)


def conv_matrix(op: Conv, in_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The matrix ``M`` ``(C_out Ho Wo, C H W)`` with ``conv(x) = M x`` (bias left out), in ``like``'s dtype
    and device; its entries are the weights themselves."""
    if op.weight.dtype != like.dtype and not (op.weight.dtype == torch.float32 and like.dtype == torch.float64):
        raise ValueError(f"a {op.weight.dtype} weight multiplied in {like.dtype} would be rounded")
    entry = _cache.setdefault(op, {})
    key = (tuple(in_shape), like.dtype, like.device)
    if key not in entry:
        entry[key] = _build(op, in_shape).to(device=like.device, dtype=like.dtype)
    return entry[key]


def _build(op: Conv, in_shape: tuple[int, ...]) -> Tensor:
    C, H, W = in_shape
    c_out, c_per_group, kh, kw = op.weight.shape
    top, left, bottom, right = op.padding
    # each input position's 1-based index, 0 in the padding, read window by window as the convolution reads it
    index = torch.arange(1, C * H * W + 1, dtype=torch.float64).reshape(1, C, H, W)
    index = F.pad(index, (left, right, top, bottom))
    cols = F.unfold(index, (kh, kw), dilation=op.dilation, stride=op.stride)[0].long()  # (C kh kw, L)
    L = cols.shape[1]
    cols = cols.reshape(op.groups, c_per_group * kh * kw, L)  # group g reads its own input channels
    w = op.weight.detach().cpu().reshape(op.groups, c_out // op.groups, c_per_group * kh * kw)
    # row (o, l) of output channel o (in group g) at position l reads input cols[g, :, l] with weights w[g, o]
    rows = torch.arange(c_out * L).reshape(op.groups, c_out // op.groups, 1, L)
    rows = rows.expand(-1, -1, c_per_group * kh * kw, -1)
    cols = cols[:, None].expand_as(rows)
    vals = w[..., None].expand(*rows.shape)
    keep = cols > 0
    M = torch.zeros(c_out * L, C * H * W, dtype=op.weight.dtype)
    # distinct taps of one window read distinct positions, so no entry is written twice
    M[rows[keep], cols[keep] - 1] = vals[keep]
    return M


def transposed_product(op: Conv, in_shape: tuple[int, ...], A: Tensor) -> Tensor:
    """Rows ``A`` ``(B, R, C_out, Ho, Wo)`` times the convolution's matrix: ``(B, R, C, H, W)``."""
    B, R = A.shape[:2]
    M = conv_matrix(op, in_shape, A)
    return (A.reshape(B * R, -1) @ M).reshape(B, R, *in_shape)
