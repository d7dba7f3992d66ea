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

from verifier.network import Conv, Node

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


def conv_matrix(node: Node, in_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The matrix ``M`` ``(C_out Ho Wo, C H W)`` with ``conv(x) = M x`` (bias left out) of Conv node ``node``,
    in ``like``'s dtype and device: ``exact.linear_ops.linear_map``'s, whose entries are the weights
    themselves, placed by index arithmetic."""
    op = node.op
    if op.weight.dtype != like.dtype and not (op.weight.dtype == torch.float32 and like.dtype == torch.float64):
        raise ValueError(f"a {op.weight.dtype} weight multiplied in {like.dtype} would be rounded")
    entry = _cache.setdefault(op, {})
    key = (tuple(in_shape), like.dtype, like.device)
    if key not in entry:
        from verifier.exact.linear_ops import linear_map  # scipy: only for networks that need a matrix

        M, _ = linear_map(node, in_shape)  # float64 copies of the weights: exact, also of float32 ones
        entry[key] = torch.from_numpy(M.toarray()).to(device=like.device, dtype=like.dtype)
    return entry[key]


def transposed_product(node: Node, in_shape: tuple[int, ...], A: Tensor) -> Tensor:
    """Rows ``A`` ``(B, R, C_out, Ho, Wo)`` times Conv node ``node``'s matrix: ``(B, R, C, H, W)``."""
    B, R = A.shape[:2]
    M = conv_matrix(node, in_shape, A)
    return (A.reshape(B * R, -1) @ M).reshape(B, R, *in_shape)
