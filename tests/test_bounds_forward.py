"""Forward linear bounds (``bounds/forward_linear.py``): sound on random networks of every supported
family, dtype and box width (sampled points, box faces crowded), never looser than the interval bounds,
and as CROWN's intermediate bounds (``crown(..., forward="on")``) sound for the spec rows too; as CROWN's
filter (``forward="filter"``) sound and no looser than CROWN's own bounds."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.nets import (
    Builder,
    check_bounds,
    conv_net,
    dense_net,
    gather_index,
    random_box,
    relu_pre,
    residual_net,
    sample_box,
)
from verifier.bounds import Domains, crown, ibp
from verifier.bounds.forward_linear import forward_intermediate, supports
from verifier.network import Dense, Gather, Network, Scale


def _selection_net(gen: torch.Generator) -> Network:
    """A Scale on a conv's input, a Gather with repeats and a filled 0 between dense layers."""
    b = Builder((2, 3, 3), gen)
    s = b.add_op(Scale(b._randn(2, 1, 1), b._randn(2, 1, 1) * 0.1), (b.last,))
    b.conv(3, k=2, padding=(0, 0, 1, 1), src=s)
    b.relu()
    b.dense(12)
    r = b.relu()
    b.add_op(Gather(gather_index(12)), (r,), (12,))
    b.dense(8)
    b.relu()
    b.dense(2)
    return b.build(dtype=torch.float64)


@pytest.fixture
def backward_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of every backward pass that ``crown`` makes for intermediate bounds, as they happen."""
    crown_module = sys.modules["verifier.bounds.crown"]
    original = crown_module.backward_lower
    rows: list[int] = []

    def counting(*args, **kwargs):
        rows.append(int(args[2].shape[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(crown_module, "backward_lower", counting)
    return rows


FAMILIES = {
    "dense": lambda g: dense_net(g, sizes=(2, 24, 24, 24, 3)),
    "wide": lambda g: dense_net(g, sizes=(3, 64, 32, 16, 2)),
    "conv": conv_net,
    "residual": residual_net,
    "selection": _selection_net,
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [2.0, 0.05])
def test_forward_bounds_contain_every_sampled_point(family: str, dtype: torch.dtype, width: float):
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        net = FAMILIES[family](gen).to(dtype=dtype)
        lo, hi = random_box(gen, net.n_inputs, 4, torch.float64, width=width)
        lo, hi = lo.to(dtype), hi.to(dtype)
        fwd = forward_intermediate(net, Domains(lo, hi))
        assert fwd is not None
        xs = sample_box(gen, lo.double(), hi.double(), 300)
        pre, _ = relu_pre(net.to(dtype=torch.float64), xs.reshape(-1, net.n_inputs))
        for k, p in enumerate(pre):
            p = p.reshape(4, -1, p.shape[-1])
            assert bool((p >= fwd.lower[k].double()[:, None]).all()), (family, seed, k)
            assert bool((p <= fwd.upper[k].double()[:, None]).all()), (family, seed, k)
            # never looser than the interval bounds
            iv = ibp(net, Domains(lo, hi)).intermediate
            assert bool((fwd.lower[k] >= iv.lower[k]).all() and (fwd.upper[k] <= iv.upper[k]).all())
        C = torch.randn(4, 3, net.n_outputs, generator=gen, dtype=torch.float64).to(dtype)
        d = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(dtype)
        res = crown(net, Domains(lo, hi), C, d, forward="on")
        check_bounds(net, None, res, C, d, xs, rtol=0.0)


def test_constants_with_error_bounds_widen_the_bounds():
    """A Dense whose stored weight may be off by ``weight_err`` (a constant computed at load): the bounds
    must hold for every weight within it, not only for the stored one."""
    gen = torch.Generator().manual_seed(5)
    net = dense_net(gen, sizes=(2, 6, 6, 1))
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    plain = forward_intermediate(net, Domains(lo, hi))
    first = net.nodes[1]
    err = torch.full_like(first.op.weight, 1e-3)
    nodes = list(net.nodes)
    nodes[1] = type(first)(Dense(first.op.weight, first.op.bias, err, None), first.inputs, first.shape, first.name)
    widened = forward_intermediate(Network(tuple(nodes), net.output), Domains(lo, hi))
    assert bool((widened.lower[0] <= plain.lower[0] - 1e-3).all())
    assert bool((widened.upper[1] >= plain.upper[1]).all())


def test_intersected_with_known_bounds_and_unsupported_nets_decline():
    gen = torch.Generator().manual_seed(1)
    net = dense_net(gen, sizes=(2, 8, 8, 1))
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    full = forward_intermediate(net, Domains(lo, hi))
    known = type(full)(tuple(lw + 0.25 * (up - lw) for lw, up in zip(full.lower, full.upper)), full.upper)
    tight = forward_intermediate(net, Domains(lo, hi), known)
    assert all(bool((t >= k).all()) for t, k in zip(tight.lower, known.lower))
    from tests.nets import pool_net

    assert not supports(pool_net(gen, "max"))
    assert forward_intermediate(pool_net(gen, "max"), Domains(-torch.ones(1, 72, dtype=torch.float64),
                                                              torch.ones(1, 72, dtype=torch.float64))) is None


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [2.0, 0.05])
def test_forward_filter_keeps_crowns_bounds_with_fewer_backward_rows(family: str, dtype: torch.dtype, width: float,
                                                                      backward_rows: list[int]):
    """CROWN whose backward passes are spent only on what forward bounds leave unstable: its bounds hold
    at every sampled point, no layer has more unstable neurons than with CROWN (the spec bounds may still
    differ either way: CROWN's adaptive lower slopes change with the bounds below), and the first layer
    (affine in the input) gets no backward pass at all and CROWN's bounds up to rounding."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        net = FAMILIES[family](gen).to(dtype=dtype)
        lo, hi = random_box(gen, net.n_inputs, 4, torch.float64, width=width)
        box = Domains(lo.to(dtype), hi.to(dtype))
        C = torch.randn(4, 3, net.n_outputs, generator=gen, dtype=torch.float64).to(dtype)
        d = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(dtype)
        plain = crown(net, box, C, d)
        backward_rows.clear()
        filt = crown(net, box, C, d, forward="filter")
        rows = list(backward_rows)
        xs = sample_box(gen, box.lower.double(), box.upper.double(), 300)
        check_bounds(net, None, filt, C, d, xs, rtol=0.0)
        # the first layer is affine in the input: forward bounds are CROWN's up to rounding
        scale = 1e-9 if dtype == torch.float64 else 1e-4
        for a, b in ((filt.intermediate.lower[0], plain.intermediate.lower[0]),
                     (plain.intermediate.upper[0], filt.intermediate.upper[0])):
            assert bool((a >= b - scale * (1 + b.abs())).all()), (family, seed)
        # a neuron that forward bounds prove stable keeps their (looser) bound on its far side, which its
        # relaxation does not use: compare what the relaxations use, the unstable neurons
        def unstable(res) -> list[int]:
            return [int(((lw < 0) & (up > 0)).sum()) for lw, up in zip(res.intermediate.lower, res.intermediate.upper)]

        assert all(a <= b for a, b in zip(unstable(filt), unstable(plain))), (family, seed)
        iv = ibp(net, box).intermediate
        assert sum(rows) <= 2 * sum(int(((lw < 0) & (up > 0)).sum(1).max()) for lw, up in zip(iv.lower, iv.upper))
        if isinstance(net.nodes[net.nodes[net.relu_indices[0]].inputs[0]].op, Dense):
            assert len(rows) < len(net.relu_indices), "the affine first layer needs no backward pass"


def test_filter_restricted_to_narrow_layers_is_sound_and_between_forward_and_full_filter(backward_rows: list[int]):
    """``filter_width``: backward passes only for the ReLU layers of at most that many neurons (the wider
    ones keep forward bounds): sound at sampled points, no backward rows in the wide layers, and the
    narrow layers' unstable counts no more than with forward bounds alone."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        net = dense_net(gen, sizes=(2, 64, 32, 8, 4, 2))
        lo, hi = random_box(gen, 2, 4, torch.float64, width=1.0)
        box = Domains(lo, hi)
        C = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
        d = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        backward_rows.clear()
        part = crown(net, box, C, d, forward="filter", filter_width=8)
        rows = list(backward_rows)
        xs = sample_box(gen, lo, hi, 300)
        check_bounds(net, None, part, C, d, xs, rtol=0.0)
        on = crown(net, box, C, d, forward="on")
        for k in range(4):
            unstable = [int(((r.intermediate.lower[k] < 0) & (r.intermediate.upper[k] > 0)).sum()) for r in (part, on)]
            assert unstable[0] <= unstable[1], (seed, k)
        # at most one backward pass per narrow layer (8 and 4 neurons), two rows per neuron
        assert len(rows) <= 2 and all(r <= 2 * 8 for r in rows), rows
