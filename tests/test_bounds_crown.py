"""CROWN: soundness on sampled points, exactness on linear pieces, the backward
operators as adjoints of the forward ones, known bounds and empty domains."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.nets import FAMILIES, all_ops_net, check_bounds, dense_net, make_case, random_box, relu_pre, sample_box
from verifier.bounds import Domains, IntermediateBounds, crown, ibp
from verifier.bounds.backward import linear_back
from verifier.bounds.crown import crown_sweep
from verifier.bounds.ibp import intermediate_of
from verifier.forward import apply_node, forward
from verifier.network import Input, MaxPool, Relu

CROWN = sys.modules["verifier.bounds.crown"]

RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_splits", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_crown_contains_samples(family: str, with_splits: bool, dtype: torch.dtype) -> None:
    net, lo, hi, splits, C, d, xs = make_case(family, dtype, with_splits, seed=10 + sorted(FAMILIES).index(family))
    res = crown(net, Domains(lo, hi, splits), C, d, need_upper=True)
    assert res.lower.shape == res.upper.shape == (lo.shape[0], C.shape[1])
    assert check_bounds(net, splits, res, C, d, xs, RTOL[dtype]) > 1000


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_crown_is_at_least_as_tight_as_ibp(family: str) -> None:
    net, lo, hi, splits, C, d, _ = make_case(family, torch.float64, True, seed=3)
    dom = Domains(lo, hi, splits)
    a, b = ibp(net, dom, C, d), crown(net, dom, C, d, need_upper=True)
    assert (b.lower >= a.lower - 1e-12).all() and (b.upper <= a.upper + 1e-12).all()
    live = torch.isfinite(b.lower[:, 0])  # intermediate bounds of empty domains are meaningless
    for k in range(len(net.relu_indices)):
        assert (b.intermediate.lower[k][live] >= a.intermediate.lower[k][live] - 1e-12).all()
        assert (b.intermediate.upper[k][live] <= a.intermediate.upper[k][live] + 1e-12).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_crown_is_exact_on_a_point(family: str) -> None:
    """On a single point every neuron is stable and every window decided: the bounds are
    the value itself.  This checks each backward operator against the forward pass."""
    gen = torch.Generator().manual_seed(5)
    net = FAMILIES[family](gen)
    x = torch.randn(3, net.n_inputs, generator=gen, dtype=torch.float64)
    res = crown(net, Domains(x, x.clone()), need_upper=True)
    y = forward(net, x).flatten(1)
    torch.testing.assert_close(res.lower, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.upper, y, rtol=1e-9, atol=1e-9)


def test_linear_backward_is_the_adjoint_of_forward() -> None:
    """``<A, f(x)> = <A_in, x> + c`` for every linear node type, at random ``A`` and ``x``."""
    gen = torch.Generator().manual_seed(0)
    net = all_ops_net(gen)
    seen = set()
    for node in net.nodes:
        if isinstance(node.op, (Input, Relu, MaxPool)):
            continue
        xs = [torch.randn(2, *net.nodes[j].shape, generator=gen, dtype=torch.float64) for j in node.inputs]
        A = torch.randn(2, 3, *node.shape, generator=gen, dtype=torch.float64)  # (B, R, *shape)
        grads, c = linear_back(node, [net.nodes[j].shape for j in node.inputs], A)
        lhs = (A * apply_node(node, xs).unsqueeze(1)).flatten(2).sum(-1)
        rhs = sum((g * x.unsqueeze(1)).flatten(2).sum(-1) for g, x in zip(grads, xs, strict=True))
        rhs = rhs + (0 if c is None else c)
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
        seen.add(type(node.op).__name__)
    assert seen >= {"Dense", "Conv", "Add", "Scale", "Reshape", "Transpose", "AvgPool", "Pad", "Concat", "Gather"}


def test_known_bounds_tighten_and_stay_sound() -> None:
    """Bounds of a sub-box computed with the parent box's bounds as ``known``."""
    net, lo, hi, _, C, d, _ = make_case("residual", torch.float64, False, seed=7, batch=3)
    parent = crown(net, Domains(lo, hi), C, d)
    mid = (lo + hi) / 2
    child = Domains(lo, mid)
    alone = crown(net, child, C, d)
    with_known = crown(net, child, C, d, known=parent.intermediate)
    assert (with_known.lower >= alone.lower - 1e-12).all()
    gen = torch.Generator().manual_seed(1)
    xs = lo[:, None] + torch.rand(3, 500, lo.shape[1], generator=gen, dtype=lo.dtype) * (mid - lo)[:, None]
    check_bounds(net, None, with_known, C, d, xs, 1e-9)
    # known bounds of batch 1 broadcast over the batch
    one = IntermediateBounds(tuple(t[:1] for t in parent.intermediate.lower),
                             tuple(t[:1] for t in parent.intermediate.upper))
    res = crown(net, Domains(lo[:1].expand(3, -1), mid[:1].expand(3, -1)), C, d, known=one)
    assert torch.isfinite(res.lower).all()


def test_split_states_are_respected() -> None:
    """Forcing every neuron to its sign at a point of the box keeps that point inside
    and makes the network affine: the bound is then the exact minimum over the region."""
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=2, batch=2)
    x0 = (lo + hi) / 2
    pre, _ = relu_pre(net, x0)
    splits = tuple(torch.where(p >= 0, 1, -1).to(torch.int8) for p in pre)
    res = crown(net, Domains(lo, hi, splits), C, d, need_upper=True)
    y0 = torch.einsum("bso,bo->bs", C, forward(net, x0)) - d
    assert (res.lower <= y0 + 1e-9).all() and (res.upper >= y0 - 1e-9).all()
    for k, s in enumerate(splits):  # the split is applied to the intermediate bounds
        assert (res.intermediate.lower[k][s > 0] >= 0).all()
        assert (res.intermediate.upper[k][s < 0] <= 0).all()


def test_contradictory_splits_give_an_empty_domain() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=4, batch=2)
    base = crown(net, Domains(lo, hi), C, d)
    stable_off = base.intermediate.upper[0][0] < 0
    if not stable_off.any():
        pytest.skip("no stable-inactive neuron in layer 0")
    splits = [torch.zeros_like(t, dtype=torch.int8) for t in base.intermediate.lower]
    splits[0][0, int(torch.nonzero(stable_off)[0])] = 1
    res = crown(net, Domains(lo, hi, tuple(splits)), C, d, need_upper=True)
    assert (res.lower[0] == float("inf")).all() and (res.upper[0] == float("-inf")).all()
    torch.testing.assert_close(res.lower[1], base.lower[1])


def test_bad_arguments_raise_one_line_errors() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=0, batch=2)
    with pytest.raises(ValueError, match="domains need lower/upper"):
        crown(net, Domains(lo[:, :1], hi[:, :1]), C, d)
    with pytest.raises(ValueError, match="net.to"):
        crown(net, Domains(lo.float(), hi.float()), C, d)
    with pytest.raises(ValueError, match="C must be"):
        crown(net, Domains(lo, hi), C[:, :, :1], d)
    with pytest.raises(ValueError, match="lower > upper"):
        crown(net, Domains(hi, lo), C, d)


def test_reuse_known_after_a_split_matches_recomputing() -> None:
    """After splitting a neuron of layer 1, layers 0 and 1 are unchanged: reusing the
    parent's bounds for them gives the same bounds as recomputing, and stays sound."""
    gen = torch.Generator().manual_seed(11)
    net = dense_net(gen, (3, 8, 8, 8, 2))
    lo, hi = random_box(gen, 3, 4, width=2.0)
    C = torch.randn(4, 2, 2, generator=gen, dtype=torch.float64)
    d = torch.zeros(4, 2, dtype=torch.float64)
    parent = crown(net, Domains(lo, hi), C, d)
    score = torch.where(parent.intermediate.unstable()[1], 1.0, 0.0)
    j = score.argmax(1)  # an unstable neuron of layer 1 per domain (if any)
    splits = [torch.zeros(8, 8, dtype=torch.int8) for _ in range(3)]
    splits[1][torch.arange(4), j] = 1
    splits[1][torch.arange(4, 8), j] = -1
    kids = Domains(lo, hi).repeat(2)
    kids = Domains(kids.lower, kids.upper, tuple(splits))
    known = parent.intermediate.repeat(2)
    fresh = crown(net, kids, C.repeat(2, 1, 1), d.repeat(2, 1), known=known)
    reused = crown(net, kids, C.repeat(2, 1, 1), d.repeat(2, 1), known=known, reuse_known=2)
    torch.testing.assert_close(reused.lower, fresh.lower, rtol=1e-9, atol=1e-9)
    xs = sample_box(gen, kids.lower, kids.upper, 400)
    check_bounds(net, kids.splits, reused, C.repeat(2, 1, 1), d.repeat(2, 1), xs, 1e-9)
    with pytest.raises(ValueError, match="reuse_known needs known"):
        crown(net, kids, C.repeat(2, 1, 1), d.repeat(2, 1), reuse_known=1)


def test_conv_adjoint_on_every_stride_padding_and_dilation() -> None:
    """``<A, conv(x)> = <conv^T(A), x>`` for the backward pass's transposed convolution, whether it crops
    symmetric padding inside ``conv_transpose2d`` or an asymmetric one after it."""
    import itertools

    import torch.nn.functional as F

    from verifier.bounds.backward import _transpose_conv

    gen = torch.Generator().manual_seed(0)
    checked = 0
    for H, k, s, pad, dil in itertools.product([5, 6, 8], [1, 2, 3, 4], [1, 2, 3],
                                               [(0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (1, 0, 1, 0), (0, 1, 2, 1)],
                                               [1, 2]):
        top, left, bottom, right = pad
        if (H + top + bottom - dil * (k - 1) - 1) < 0 or (H + left + right - dil * (k - 1) - 1) < 0:
            continue
        x = torch.randn(1, 4, H, H, generator=gen, dtype=torch.float64)
        w = torch.randn(6, 4, k, k, generator=gen, dtype=torch.float64)
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, None, (s, s), 0, (dil, dil))
        A = torch.randn(1, 3, *y.shape[1:], generator=gen, dtype=torch.float64)
        At = _transpose_conv(A, w, (4, H, H), (s, s), pad, (dil, dil), 1)
        assert At.shape == (1, 3, 4, H, H)
        lhs = (A[0] * y).flatten(1).sum(1)
        rhs = (At[0] * x).flatten(1).sum(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
        checked += 1
    assert checked > 300


@pytest.mark.parametrize("family", ["dense", "residual", "all_ops"])
def test_one_sided_rows_keep_the_known_larger_side(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``one_sided``, a neuron whose known bounds are lopsided keeps its known larger side and gets a
    backward row for the other one only (fewer rows in all); the bounds stay sound, and with 0 they are the
    two-sided ones."""
    net, lo, hi, _, C, d, _ = make_case(family, torch.float64, False, seed=11, batch=3)
    dom = Domains(lo, hi)
    tight = intermediate_of(net, crown_sweep(net, dom).nodes.bounds)
    # known bounds widened unevenly, so that many neurons are lopsided by them
    gen = torch.Generator().manual_seed(3)
    known = IntermediateBounds(
        tuple(t - 3 * torch.rand(t.shape, generator=gen, dtype=t.dtype) * (1 + t.abs()) for t in tight.lower),
        tuple(t + 0.1 * torch.rand(t.shape, generator=gen, dtype=t.dtype) for t in tight.upper))
    rows: list[int] = []
    real = CROWN.backward_lower

    def counting(*a, **k):
        out = real(*a, **k)
        rows.append(out.shape[1])
        return out

    monkeypatch.setattr(CROWN, "backward_lower", counting)
    both = intermediate_of(net, crown_sweep(net, dom, known).nodes.bounds)
    two_sided_rows = sum(rows)
    rows.clear()
    same = intermediate_of(net, crown_sweep(net, dom, known, one_sided=0.0).nodes.bounds)
    rows.clear()
    one = intermediate_of(net, crown_sweep(net, dom, known, one_sided=2.0).nodes.bounds)
    assert sum(rows) < two_sided_rows
    for a, b in zip(both.lower + both.upper, same.lower + same.upper, strict=True):
        assert torch.equal(a, b)
    # the first ReLU layer (no relaxation below it): a computed side is the two-sided one, a skipped side
    # lies between the known bound and the two-sided one (interval arithmetic may still tighten it)
    kl, ku = known.lower[0], known.upper[0]
    unstable = (kl < 0) & (ku > 0)
    low_side = unstable & (-kl > 2.0 * ku)  # only the upper row
    high_side = unstable & (ku > 2.0 * -kl)  # only the lower row
    assert low_side.any()
    assert torch.equal(one.upper[0][low_side], both.upper[0][low_side])
    assert (one.lower[0][low_side] >= kl[low_side]).all()
    assert (one.lower[0][low_side] <= both.lower[0][low_side]).all()
    assert torch.equal(one.lower[0][high_side], both.lower[0][high_side])
    assert (one.upper[0][high_side] <= ku[high_side]).all()
    assert (one.upper[0][high_side] >= both.upper[0][high_side]).all()
    rest = unstable & ~low_side & ~high_side
    assert torch.equal(one.lower[0][rest], both.lower[0][rest]) and torch.equal(one.upper[0][rest], both.upper[0][rest])
    # sound everywhere: sampled pre-activations lie inside
    xs = sample_box(gen, lo, hi, 200)
    pre, _ = relu_pre(net, xs.reshape(-1, xs.shape[-1]))
    for k, p in enumerate(pre):
        p = p.reshape(3, -1, p.shape[-1])
        assert (p >= one.lower[k][:, None] - 1e-9).all() and (p <= one.upper[k][:, None] + 1e-9).all()
