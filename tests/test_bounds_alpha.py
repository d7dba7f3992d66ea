"""alpha-CROWN: soundness on sampled points, CROWN <= alpha-CROWN <= triangle LP <= exact,
a hand-checked two-neuron network, warm starts, deadlines and every node type."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.nets import (
    FAMILIES,
    all_ops_net,
    check_bounds,
    dense_exact_bound,
    dense_lp_bound,
    dense_net,
    make_case,
    random_box,
    random_splits,
    sample_box,
)
from verifier.bounds import AlphaOptions, Domains, alpha_crown, beta_crown, crown, ibp
from verifier.deadline import Deadline
from verifier.network import OP_TYPES, Add, Dense, Input, Network, Node, Relu

RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
FAST = AlphaOptions(iterations=8, early_stop=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_splits", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_alpha_crown_contains_samples(family: str, with_splits: bool, dtype: torch.dtype) -> None:
    net, lo, hi, splits, C, d, xs = make_case(family, dtype, with_splits, seed=20 + sorted(FAMILIES).index(family))
    dom = Domains(lo, hi, splits)
    res = alpha_crown(net, dom, C, d, FAST)
    assert check_bounds(net, splits, res, C, d, xs, RTOL[dtype]) > 1000
    base = crown(net, dom, C, d)
    assert ((res.lower >= base.lower) | (res.lower >= base.lower - RTOL[dtype] * (1 + base.lower.abs()))).all()


def two_neuron_net() -> Network:
    """y = relu(x1 + x2) + relu(x1 - x2) - x1 (the skip path through an Add)."""
    t = torch.tensor
    f64 = torch.float64
    nodes = (
        Node(Input(), (), (2,)),
        Node(Dense(t([[1.0, 1.0], [1.0, -1.0]], dtype=f64), t([0.0, 0.0], dtype=f64)), (0,), (2,)),
        Node(Relu(), (1,), (2,)),
        Node(Dense(t([[1.0, 1.0]], dtype=f64), t([0.0], dtype=f64)), (2,), (1,)),
        Node(Dense(t([[-1.0, 0.0]], dtype=f64), t([0.0], dtype=f64)), (0,), (1,)),
        Node(Add(), (3, 4), (1,)),
    )
    return Network(nodes, 5)


def test_two_neuron_network_by_hand() -> None:
    """On x1 in [-1, 1], x2 in [-0.5, 1]: z1 = x1 + x2 in [-1.5, 2], z2 = x1 - x2 in [-2, 1.5].
    IBP: y >= 0 + 0 - 1 = -1, y <= 2 + 1.5 + 1 = 4.5.
    CROWN: slope 1 on z1 (u > -l), 0 on z2: y >= z1 - x1 = x2 >= -0.5; above, the chords
    give y <= (0.5 x2 + 6) / 3.5 <= 13/7.
    Optimal slopes a1 = a2 = 1/2: y >= 0, which is the true minimum (x = 0)."""
    net = two_neuron_net()
    dom = Domains(torch.tensor([[-1.0, -0.5]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    a, b = ibp(net, dom), crown(net, dom, need_upper=True)
    torch.testing.assert_close(a.lower, torch.tensor([[-1.0]], dtype=torch.float64))
    torch.testing.assert_close(a.upper, torch.tensor([[4.5]], dtype=torch.float64))
    for r in (a, b):
        torch.testing.assert_close(r.intermediate.lower[0], torch.tensor([[-1.5, -2.0]], dtype=torch.float64))
        torch.testing.assert_close(r.intermediate.upper[0], torch.tensor([[2.0, 1.5]], dtype=torch.float64))
    torch.testing.assert_close(b.lower, torch.tensor([[-0.5]], dtype=torch.float64))
    torch.testing.assert_close(b.upper, torch.tensor([[13 / 7]], dtype=torch.float64))
    c = alpha_crown(net, dom, options=AlphaOptions(iterations=200, lr=0.05, early_stop=False))
    assert -0.02 < float(c.lower) <= 1e-12
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(c.slopes.final[0][0, 0], half, atol=0.05, rtol=0)


def test_float32_iterations_keep_fixed_intermediate_slopes() -> None:
    """Warm intermediate slopes given but not optimized: iterating on float32 estimates ends in a rigorous
    float64 bound with those same slopes, about as tight as iterating in float64 (not CROWN's slopes)."""
    gen = torch.Generator().manual_seed(3)
    net = dense_net(gen, (3, 16, 16, 16, 2))
    lo, hi = random_box(gen, 3, 4, width=2.0)
    dom = Domains(lo, hi)
    root = alpha_crown(net, dom, options=AlphaOptions(iterations=30, early_stop=False))
    assert root.slopes.intermediate
    opts = AlphaOptions(iterations=4, early_stop=False, optimize_intermediate=False)
    f64 = alpha_crown(net, dom, options=replace(opts, float32_iterations=False), slopes=root.slopes)
    f32 = alpha_crown(net, dom, options=opts, slopes=root.slopes)
    crown_only = alpha_crown(net, dom, options=opts, slopes=replace(root.slopes, intermediate=()))
    assert (f32.lower >= f64.lower - 1e-4 * (1 + f64.lower.abs())).all()
    assert (f32.lower > crown_only.lower + 1e-3).any()  # the fixed slopes matter here


@pytest.mark.parametrize("intermediate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("box", ["stable", "no relu"])
def test_nothing_to_optimize(box: str, intermediate: bool, dtype: torch.dtype) -> None:
    """Both ReLUs of the two-neuron net are active on a box of x1 > |x2|, and a net without ReLUs has no
    slope at all: the bound is exact and no parameter reaches it (alpha-CROWN used to call backward() on a
    constant there, as the refinement does on the sub-network up to the first layer)."""
    net = two_neuron_net()
    if box == "no relu":  # y = x1 + x2
        net = Network((net.nodes[0], Node(Dense(torch.tensor([[1.0, 1.0]], dtype=torch.float64),
                                                torch.tensor([0.0], dtype=torch.float64)), (0,), (1,))), 1)
    net = net.to(dtype=dtype)
    dom = Domains(torch.tensor([[2.0, -0.5]], dtype=dtype), torch.tensor([[3.0, 0.5]], dtype=dtype))
    opts = AlphaOptions(iterations=5, early_stop=False, optimize_intermediate=intermediate)
    res = alpha_crown(net, dom, options=opts)
    exact = 2.0 if box == "stable" else 1.5  # y = (x1 + x2) + (x1 - x2) - x1 = x1, or y = x1 + x2
    assert exact - 1e-5 <= float(res.lower) <= exact


@pytest.mark.parametrize("with_splits", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_ordering_crown_alpha_lp_exact(seed: int, with_splits: bool) -> None:
    """CROWN <= alpha-CROWN <= triangle LP with alpha-CROWN's intermediate bounds <= exact."""
    gen = torch.Generator().manual_seed(100 + seed)
    net = dense_net(gen, (2, 6, 5, 2))
    lo, hi = random_box(gen, 2, 3, width=1.5)
    splits = random_splits(gen, net, lo, hi, count=2, flip_last=False) if with_splits else None
    C = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64)
    d = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    dom = Domains(lo, hi, splits)
    cr = crown(net, dom, C, d)
    al = alpha_crown(net, dom, C, d, AlphaOptions(iterations=30, early_stop=False))
    for b in range(3):
        cl = [t[b] for t in cr.intermediate.lower]
        cu = [t[b] for t in cr.intermediate.upper]
        al_lo = [t[b] for t in al.intermediate.lower]
        al_hi = [t[b] for t in al.intermediate.upper]
        for s in range(2):
            args = (lo[b], hi[b], C[b, s], float(d[b, s]))
            lp_crown = dense_lp_bound(net, cl, cu, *args)
            lp_alpha = dense_lp_bound(net, al_lo, al_hi, *args)
            exact = dense_exact_bound(net, al_lo, al_hi, *args)
            assert float(cr.lower[b, s]) <= float(al.lower[b, s]) + 1e-9
            assert float(cr.lower[b, s]) <= lp_crown + 1e-7
            assert float(al.lower[b, s]) <= lp_alpha + 1e-7
            assert lp_alpha <= exact + 1e-7


def test_warm_start_select_and_repeat() -> None:
    """A parent's slopes, selected and repeated for its children, are a valid warm start:
    with no iterations the children's bounds are at least the parent's (and CROWN's)."""
    net, lo, hi, splits, C, d, _ = make_case("residual", torch.float64, False, seed=1, batch=4)
    parent = alpha_crown(net, Domains(lo, hi), C, d, AlphaOptions(iterations=15, early_stop=False))
    keep = torch.tensor([0, 2])
    kids = Domains(lo, hi).select(keep).repeat(2)
    warm = parent.slopes.select(keep).repeat(2)
    assert warm.final[0].shape[0] == 4
    known = parent.intermediate.select(keep).repeat(2)
    res = alpha_crown(net, kids, C[keep].repeat(2, 1, 1), d[keep].repeat(2, 1), AlphaOptions(iterations=0),
                      known=known, slopes=warm)
    assert (res.lower >= parent.lower[keep].repeat(2, 1) - 1e-9).all()
    cold = alpha_crown(net, kids, C[keep].repeat(2, 1, 1), d[keep].repeat(2, 1), AlphaOptions(iterations=0))
    assert (res.lower >= cold.lower - 1e-9).all()


def test_shared_intermediate_slopes_and_fixed_intermediate_are_sound() -> None:
    for opts in (AlphaOptions(iterations=6, intermediate_slopes="shared", early_stop=False),
                 AlphaOptions(iterations=6, optimize_intermediate=False, early_stop=False)):
        net, lo, hi, splits, C, d, xs = make_case("conv", torch.float64, True, seed=8)
        res = alpha_crown(net, Domains(lo, hi, splits), C, d, opts)
        assert check_bounds(net, splits, res, C, d, xs, 1e-9) > 1000
        if opts.intermediate_slopes == "shared":
            assert all(t.shape[2] == 1 for row in res.slopes.intermediate for t in row)


def test_expired_deadline_returns_crown() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=3)
    res = alpha_crown(net, Domains(lo, hi), C, d, AlphaOptions(iterations=50), deadline=Deadline(0.0))
    torch.testing.assert_close(res.lower, crown(net, Domains(lo, hi), C, d).lower)


def test_early_stop_keeps_positive_rows() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=3)
    far = d - 100.0  # every row is far above zero
    res = alpha_crown(net, Domains(lo, hi), C, far, AlphaOptions(iterations=50))
    assert (res.lower > 0).all()


def test_every_node_type_is_handled_by_every_analysis() -> None:
    """IBP, CROWN, alpha- and beta-CROWN on a network using every IR node type, with and without splits."""
    gen = torch.Generator().manual_seed(0)
    net = all_ops_net(gen)
    assert {type(n.op) for n in net.nodes} == set(OP_TYPES)
    lo, hi = random_box(gen, net.n_inputs, 2, width=0.5)
    xs = sample_box(gen, lo, hi, 300)
    C = torch.randn(2, 2, net.n_outputs, generator=gen, dtype=torch.float64)
    d = torch.zeros(2, 2, dtype=torch.float64)
    splits = random_splits(gen, net, lo, hi, count=4, flip_last=False)
    for dom in (Domains(lo, hi), Domains(lo, hi, splits)):
        for res in (ibp(net, dom, C, d), crown(net, dom, C, d, need_upper=True), alpha_crown(net, dom, C, d, FAST),
                    beta_crown(net, dom, C, d, FAST)):
            assert torch.isfinite(res.lower).all()
            check_bounds(net, dom.splits, res, C, d, xs, 1e-9)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_warmup_is_sound_and_close_to_float64(family: str) -> None:
    """Large networks (here: the threshold at 0 ReLUs) iterate first on float32 estimates, then in float64
    from their best slopes: bounds that hold on samples, never looser than CROWN, with most of what all
    iterations in float64 gain over CROWN."""
    net, lo, hi, splits, C, d, xs = make_case(family, torch.float64, False, seed=40 + sorted(FAMILIES).index(family))
    dom = Domains(lo, hi)
    opts = AlphaOptions(iterations=12, early_stop=False, float32_warmup=8, float32_warmup_relus=0)
    warm = alpha_crown(net, dom, C, d, opts)
    assert check_bounds(net, None, warm, C, d, xs, RTOL[torch.float64]) > 1000
    assert (warm.lower >= crown(net, dom, C, d).lower - 1e-9).all()
    f64 = alpha_crown(net, dom, C, d, replace(opts, float32_warmup=0))
    base = crown(net, dom, C, d).lower
    assert float((warm.lower - base).sum()) >= 0.5 * float((f64.lower - base).sum())  # most of the gain


def test_float32_warmup_only_on_large_float64_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    import verifier.bounds.alpha as alpha

    calls = []
    real = alpha.optimize
    monkeypatch.setattr(alpha, "optimize", lambda *a, **k: calls.append(k.get("low")) or real(*a, **k))
    net, lo, hi, splits, C, d, xs = make_case("dense", torch.float64, False, seed=3)
    relus = sum(net.nodes[r].size for r in net.relu_indices)
    for threshold, expected in ((relus, [True, None]), (relus + 1, [None])):
        calls.clear()
        alpha_crown(net, Domains(lo, hi), C, d, replace(FAST, float32_warmup=4, float32_warmup_relus=threshold))
        assert calls == expected
