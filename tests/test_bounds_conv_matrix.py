"""A convolution's transposed product as a matrix product (``bounds/conv_matrix.py``): the matrix is the
convolution, its entries are the weights themselves, and CROWN's and alpha-CROWN's bounds through it are
those through ``conv_transpose2d``."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from tests.nets import FAMILIES, conv_chain_net, conv_chain_samples_checked, random_box, seeded_boxes
from verifier.bounds import Domains, alpha_crown, crown
from verifier.bounds.backward import _transpose_conv
from verifier.bounds.conv_matrix import conv_matrix, matrix_pays, transposed_product
from verifier.network import Conv, Node
from verifier.options import AlphaOptions

CM = sys.modules["verifier.bounds.conv_matrix"]
BACKWARD = sys.modules["verifier.bounds.backward"]

# (C_in, C_out, H, W, k, stride, padding (top, left, bottom, right), dilation, groups)
CONVS = [
    (4, 6, 5, 5, 3, 1, (1, 1, 1, 1), 1, 1),
    (4, 6, 7, 6, 3, 2, (0, 1, 2, 1), 1, 2),
    (6, 4, 9, 9, 3, 2, (2, 2, 2, 2), 2, 2),
    (3, 8, 4, 4, 1, 1, (0, 0, 0, 0), 1, 1),
    (2, 3, 6, 5, 2, 3, (1, 0, 0, 2), 1, 1),
]


def _conv(gen: torch.Generator, spec, dtype=torch.float64) -> tuple[Node, tuple[int, int, int]]:
    """A Conv node of ``spec`` and its input shape."""
    ci, co, h, w, k, s, pad, dil, g = spec
    weight = torch.randn(co, ci // g, k, k, generator=gen, dtype=dtype)
    op = Conv(weight, torch.zeros(co, dtype=dtype), (s, s), pad, (dil, dil), g)
    out_shape = tuple(_apply(op, torch.zeros(1, ci, h, w, dtype=dtype)).shape[1:])
    return Node(op, (0,), out_shape), (ci, h, w)


def _apply(op: Conv, x: torch.Tensor) -> torch.Tensor:
    top, left, bottom, right = op.padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), op.weight, None, op.stride, 0, op.dilation, op.groups)


@pytest.mark.parametrize("spec", CONVS)
def test_the_matrix_is_the_convolution_and_holds_the_weights_exactly(spec) -> None:
    gen = torch.Generator().manual_seed(0)
    node, in_shape = _conv(gen, spec)
    op = node.op
    x = torch.randn(3, *in_shape, generator=gen, dtype=torch.float64)
    y = _apply(op, x)
    M = conv_matrix(node, in_shape, x)
    assert M.shape == (y[0].numel(), x[0].numel())
    torch.testing.assert_close(x.flatten(1) @ M.T, y.flatten(1), rtol=1e-13, atol=1e-13)
    # every entry is a weight or zero, and each row holds each tap's weight at most once
    weights = set(op.weight.flatten().tolist())
    assert set(M[M != 0].tolist()) <= weights
    assert int((M != 0).sum(1).max()) <= op.weight[0].numel()


@pytest.mark.parametrize("spec", CONVS)
def test_transposed_product_is_conv_transpose(spec) -> None:
    gen = torch.Generator().manual_seed(1)
    node, in_shape = _conv(gen, spec)
    op = node.op
    A = torch.randn(2, 5, *node.shape, generator=gen, dtype=torch.float64)
    ref = _transpose_conv(A, op.weight, in_shape, op.stride, op.padding, op.dilation, op.groups)
    torch.testing.assert_close(transposed_product(node, in_shape, A), ref, rtol=1e-13, atol=1e-13)


def test_a_float64_weight_is_not_rounded_into_float32() -> None:
    node, in_shape = _conv(torch.Generator().manual_seed(2), CONVS[0])
    with pytest.raises(ValueError, match="rounded"):
        conv_matrix(node, in_shape, torch.zeros(1, dtype=torch.float32))


def test_when_the_matrix_pays() -> None:
    """Small maps (the last blocks of a CIFAR ResNet) in float64; 8x8 maps and larger do not; float32 only
    where the matrix has fewer entries than the convolution's products."""
    def op(c_out: int, c_in: int, k: int = 3) -> Conv:
        return Conv(torch.zeros(c_out, c_in, k, k), torch.zeros(c_out), (1, 1), (1, 1, 1, 1))

    f64, f32 = torch.float64, torch.float32
    assert matrix_pays(op(128, 128), (128, 2, 2), (128, 2, 2), f64)
    assert matrix_pays(op(128, 128), (128, 2, 2), (128, 2, 2), f32)
    assert matrix_pays(op(64, 64), (64, 4, 4), (64, 4, 4), f64)
    assert not matrix_pays(op(64, 64), (64, 4, 4), (64, 4, 4), f32)
    assert not matrix_pays(op(32, 32), (32, 8, 8), (32, 8, 8), f64)
    assert not matrix_pays(op(16, 3), (3, 32, 32), (16, 16, 16), f64)


def _everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CM.RATIO, torch.float64, 1e9)
    monkeypatch.setitem(CM.RATIO, torch.float32, 1e9)


def _nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BACKWARD, "matrix_pays", lambda *a: False)


def _conv_nets():
    yield "conv_chain", conv_chain_net
    yield "conv", FAMILIES["conv"]
    yield "all_ops", FAMILIES["all_ops"]


@pytest.mark.parametrize("rigorous", [True, False])
@pytest.mark.parametrize("name, family", list(_conv_nets()))
def test_crown_bounds_through_the_matrix_are_those_through_conv_transpose(
    monkeypatch: pytest.MonkeyPatch, name: str, family, rigorous: bool
) -> None:
    for gen, net, lo, hi in seeded_boxes(family, range(2)):
        C = torch.randn(3, 2, net.n_outputs, generator=gen, dtype=torch.float64)
        results = []
        for setting in (_everywhere, _nowhere):
            setting(monkeypatch)
            results.append(crown(net, Domains(lo, hi), C, need_upper=True, rigorous=rigorous))
            monkeypatch.undo()
        a, b = results
        torch.testing.assert_close(a.lower, b.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.upper, b.upper, rtol=1e-12, atol=1e-12)
        for la, lb in zip(a.intermediate.lower, b.intermediate.lower, strict=True):
            torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)


def test_alpha_crown_through_the_matrix_optimizes_as_through_conv_transpose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slopes' gradients pass through the matrix product: the same optimized bound."""
    gen = torch.Generator().manual_seed(3)
    net = conv_chain_net(gen)
    lo, hi = random_box(gen, net.n_inputs, 2, width=0.5)
    C = torch.randn(2, 2, net.n_outputs, generator=gen, dtype=torch.float64)
    opts = AlphaOptions(iterations=5, float32_iterations=False)
    results = []
    for setting in (_everywhere, _nowhere):
        setting(monkeypatch)
        results.append(alpha_crown(net, Domains(lo, hi), C, options=opts).lower)
        monkeypatch.undo()
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_crown_through_the_matrix_contains_samples(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """Every convolution as a matrix, in float32 too: the rounding terms still bound the products."""
    _everywhere(monkeypatch)
    assert conv_chain_samples_checked(dtype) > 1000
