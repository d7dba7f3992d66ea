"""Mostly-zero Dense weights multiplied as sparse matrices (``verifier/sparse.py``): the same products as
the dense ones for every part and dtype, differentiable, and every analysis on a network with such a
layer sound at sampled points and equal (up to summation order) to the same analysis done densely."""

from __future__ import annotations

import pytest
import torch

import verifier.sparse as sparse
from tests.nets import Builder, check_bounds, random_box, sample_box
from verifier.bounds import Domains, crown, ibp
from verifier.forward import forward
from verifier.network import Dense, Network


def _sparse_weight(gen: torch.Generator, m: int, n: int, per_row: int) -> torch.Tensor:
    w = torch.zeros(m, n, dtype=torch.float64)
    cols = torch.stack([torch.randperm(n, generator=gen)[:per_row] for _ in range(m)])
    return w.scatter_(1, cols, torch.randn(m, per_row, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("part", ["w", "pos", "neg", "abs"])
@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_products_match_the_dense_ones(dtype: torch.dtype, part: str, lead: tuple[int, ...]):
    gen = torch.Generator().manual_seed(0)
    w = _sparse_weight(gen, 300, 400, 3).to(dtype)
    op = Dense(w, torch.zeros(300, dtype=dtype))
    assert sparse.is_sparse(op)
    full = {"w": w, "pos": w.clamp(min=0), "neg": w.clamp(max=0), "abs": w.abs()}[part]
    x = torch.randn(*lead, 400, generator=gen, dtype=torch.float64).to(dtype)
    a = torch.randn(*lead, 300, generator=gen, dtype=torch.float64).to(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(sparse.times_weight_t(op, x, part), x @ full.T, **tol)
    assert torch.allclose(sparse.times_weight(op, a, part), a @ full, **tol)
    # a float32 weight multiplied in float64 (forward linear bounds work in float64)
    assert sparse.times_weight_t(op, x.double(), part).dtype == torch.float64


def test_only_big_mostly_zero_weights_are_sparse():
    gen = torch.Generator().manual_seed(1)
    assert not sparse.is_sparse(Dense(_sparse_weight(gen, 30, 40, 1), torch.zeros(30)))  # small
    dense = torch.randn(300, 400, generator=gen, dtype=torch.float64)
    assert not sparse.is_sparse(Dense(dense, torch.zeros(300)))
    assert sparse.is_sparse(Dense(_sparse_weight(gen, 300, 400, 8), torch.zeros(300)))  # 2 % non-zero
    assert not sparse.is_sparse(Dense(_sparse_weight(gen, 300, 400, 9), torch.zeros(300)))


def test_a_weight_is_never_rounded_into_a_narrower_dtype():
    gen = torch.Generator().manual_seed(4)
    for w in (_sparse_weight(gen, 300, 400, 3), torch.randn(30, 40, generator=gen, dtype=torch.float64)):
        op = Dense(w, torch.zeros(w.shape[0], dtype=torch.float64))
        with pytest.raises(ValueError, match="rounded"):
            sparse.times_weight_t(op, torch.zeros(2, w.shape[1], dtype=torch.float32))
        with pytest.raises(ValueError, match="rounded"):
            sparse.times_weight(op, torch.zeros(2, w.shape[0], dtype=torch.float32))


def test_products_are_differentiable():
    gen = torch.Generator().manual_seed(2)
    w = _sparse_weight(gen, 300, 400, 3)
    op = Dense(w, torch.zeros(300, dtype=torch.float64))
    x = torch.randn(4, 400, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(sparse.times_weight_t(op, x).square().sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad((x2 @ w.T).square().sum(), x2)
    assert torch.allclose(g, g2, rtol=1e-12, atol=1e-12)


def _lattice_net(gen: torch.Generator) -> Network:
    """Two inputs, a wide layer of linear pieces, a mostly-zero layer mixing them in pairs (as the
    min/max banks of a two-level lattice network), a dense head."""
    b = Builder((2,), gen)
    b.dense(400)
    r = b.relu()
    b.add_op(Dense(_sparse_weight(gen, 300, 400, 2), 0.1 * torch.randn(300, generator=gen, dtype=torch.float64)),
             (r,))
    b.relu()
    b.dense(2)
    return b.build(dtype=torch.float64)


@pytest.mark.parametrize("forward_mode", ["off", "on", "filter"])
def test_bounds_sound_and_as_the_dense_products_give(forward_mode: str, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    net = _lattice_net(gen)
    assert sparse.is_sparse(net.nodes[3].op)
    lo, hi = random_box(gen, 2, 4, torch.float64, width=0.5)
    C = torch.randn(4, 2, 2, generator=gen, dtype=torch.float64)
    d = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    xs = sample_box(gen, lo, hi, 300)
    res = crown(net, Domains(lo, hi), C, d, forward=forward_mode)
    check_bounds(net, None, res, C, d, xs, rtol=0.0)
    iv = ibp(net, Domains(lo, hi), C, d)
    check_bounds(net, None, iv, C, d, xs, rtol=0.0)
    y = forward(net, xs.reshape(-1, 2))

    monkeypatch.setattr(sparse, "MAX_DENSITY", -1.0)
    dense_net = Network(tuple(net.nodes), net.output).to(dtype=torch.float64)  # new ops: a fresh cache
    assert not sparse.is_sparse(dense_net.nodes[3].op)
    res_d = crown(dense_net, Domains(lo, hi), C, d, forward=forward_mode)
    assert torch.allclose(res.lower, res_d.lower, rtol=1e-9, atol=1e-9)
    for a, b in zip(res.intermediate.lower + res.intermediate.upper,
                    res_d.intermediate.lower + res_d.intermediate.upper):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert torch.allclose(iv.lower, ibp(dense_net, Domains(lo, hi), C, d).lower, rtol=1e-9, atol=1e-9)
    assert torch.allclose(y, forward(dense_net, xs.reshape(-1, 2)), rtol=1e-12, atol=1e-12)
