"""Backward rows over receptive fields (``bounds/patches.py``): each step is the full-map step on the
window, and CROWN's bounds with patches are those over full maps."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.nets import FAMILIES, conv_chain_net, conv_chain_samples_checked, random_box, seeded_boxes
from verifier.bounds import Domains
from verifier.bounds.backward import _relu_back, linear_back
from verifier.bounds.crown import _unit_rows, crown_sweep
from verifier.bounds.patches import Patches, at_windows, conv_back, relu_back, to_dense, unit_patches
from verifier.bounds.relaxation import relu_relaxation
from verifier.network import Conv

CROWN = sys.modules["verifier.bounds.crown"]


def _convs(net) -> list[int]:
    return [i for i, n in enumerate(net.nodes) if isinstance(n.op, Conv)]


def _random_patches(gen: torch.Generator, node: int, shape: tuple[int, ...], size: int, Q: int = 5,
                    groups: int = 2) -> Patches:
    """Random rows (``groups`` per window) on windows of ``size`` at random corners, some partly outside the
    map (zero there)."""
    C, H, W = shape
    coef = torch.randn(2, groups * Q, C, size, size, generator=gen, dtype=torch.float64)
    top = torch.randint(-size + 1, H, (2, Q), generator=gen)
    left = torch.randint(-size + 1, W, (2, Q), generator=gen)
    p = Patches(node, coef, top, left)
    return Patches(node, (p.grouped() * p.window_index(shape)[1]).reshape(coef.shape), top, left)


def test_unit_patches_are_the_unit_rows() -> None:
    net = conv_chain_net(torch.Generator().manual_seed(0))
    for i in _convs(net):
        n = net.nodes[i].size
        idx = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(i))[:7] for _ in range(3)])
        p = unit_patches(net, i, idx)
        if p is None:
            continue
        start, _ = _unit_rows(net, i, idx)
        torch.testing.assert_close(to_dense(p, net.nodes[i].shape), start[i], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_conv_back_on_patches_is_the_full_map_step(seed: int) -> None:
    """For every convolution of the chain (strides, asymmetric padding, dilation, groups): the transposed
    convolution of a patch, scattered into the input map, is that of the patch's full map."""
    gen = torch.Generator().manual_seed(seed)
    net = conv_chain_net(gen)
    for i in _convs(net):
        node = net.nodes[i]
        in_shape = net.nodes[node.inputs[0]].shape
        for size, groups in ((1, 1), (2, 2), (3, 3)):
            p = _random_patches(gen, i, node.shape, size, groups=groups)
            dense = to_dense(p, node.shape)
            want, c_want = linear_back(node, [in_shape], dense)
            got = conv_back(p, node.op, node.inputs[0], in_shape)
            torch.testing.assert_close(to_dense(got, in_shape), want[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(p.coef.sum((-2, -1)) @ node.op.bias, c_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_row", [False, True])
def test_values_read_at_windows(per_row: bool) -> None:
    """Values shared by all rows, or one map per row, read at each row's window."""
    gen = torch.Generator().manual_seed(1)
    shape = (3, 6, 5)
    for size in (1, 2, 4):
        p = _random_patches(gen, 0, shape, size)
        values = torch.randn(2, p.coef.shape[1] if per_row else 1, 90, generator=gen, dtype=torch.float64)
        read = Patches(0, (p.grouped() * at_windows(p, values, shape)).reshape(p.coef.shape), p.top, p.left)
        want = to_dense(p, shape) * values.reshape(2, -1, *shape)
        torch.testing.assert_close(to_dense(read, shape), want, rtol=0, atol=0)


@pytest.mark.parametrize("per_row", [False, True])
def test_relu_back_on_patches_is_the_full_map_step(per_row: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    shape = (3, 6, 5)
    lo = torch.randn(2, 90, generator=gen, dtype=torch.float64)
    relax = relu_relaxation(lo, lo + torch.rand(2, 90, generator=gen, dtype=torch.float64) * 2)
    for size in (1, 3):
        p = _random_patches(gen, 7, shape, size)
        alpha = torch.rand(2, p.coef.shape[1], 90, generator=gen, dtype=torch.float64) if per_row else None
        got, c = relu_back(p, relax.lower_slope(alpha), relax.upper_slope, relax.upper_bias, 6, shape)
        want, c_want = _relu_back(to_dense(p, shape), relax, alpha, None)
        assert got.node == 6
        torch.testing.assert_close(to_dense(got, shape).flatten(2), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, c_want, rtol=1e-12, atol=1e-12)


def _nets():
    yield "conv_chain", conv_chain_net
    yield from FAMILIES.items()


def _sweep_both(monkeypatch: pytest.MonkeyPatch, net, dom: Domains, **kw):
    with_patches = crown_sweep(net, dom, **kw)
    calls = []
    monkeypatch.setattr(CROWN, "unit_patches", lambda *a: calls.append(1))
    full_maps = crown_sweep(net, dom, **kw)
    monkeypatch.undo()
    return with_patches, full_maps, len(calls)


def _assert_same_bounds(a, b) -> None:
    for (la, ua), (lb, ub) in zip(a.nodes.bounds, b.nodes.bounds, strict=True):
        torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ua, ub, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rigorous", [True, False])
@pytest.mark.parametrize("name, family", list(_nets()))
def test_crown_bounds_with_patches_are_those_over_full_maps(
    monkeypatch: pytest.MonkeyPatch, name: str, family, rigorous: bool
) -> None:
    for _, net, lo, hi in seeded_boxes(family, range(3)):
        a, b, calls = _sweep_both(monkeypatch, net, Domains(lo, hi), rigorous=rigorous)
        assert name != "conv_chain" or calls > 0
        _assert_same_bounds(a, b)


def test_patches_with_row_slopes(monkeypatch: pytest.MonkeyPatch) -> None:
    """alpha-CROWN's per-row intermediate slopes are read at each row's window."""
    gen = torch.Generator().manual_seed(4)
    net = conv_chain_net(gen)
    lo, hi = random_box(gen, net.n_inputs, 2, width=0.5)

    def row_slopes(i, idx):
        g = torch.Generator().manual_seed(i)
        return {r: torch.rand(idx.shape[0], 2 * idx.shape[1], net.nodes[r].size, generator=g, dtype=torch.float64)
                for r in net.relu_indices if r < i}

    a, b, _ = _sweep_both(monkeypatch, net, Domains(lo, hi), row_slopes=row_slopes)
    _assert_same_bounds(a, b)


def test_gradients_of_row_slopes_through_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """alpha-CROWN optimizes intermediate slopes through these rows: the gradients are those over full maps."""
    gen = torch.Generator().manual_seed(5)
    net = conv_chain_net(gen)
    lo, hi = random_box(gen, net.n_inputs, 2, width=0.5)
    leaves: dict[tuple[int, int], torch.Tensor] = {}

    def row_slopes(i, idx):
        out = {}
        for r in net.relu_indices:
            if r < i:
                g = torch.Generator().manual_seed(100 * i + r)
                t = torch.rand(idx.shape[0], 2 * idx.shape[1], net.nodes[r].size, generator=g, dtype=torch.float64)
                out[r] = leaves.setdefault((i, r), t.requires_grad_())
        return out

    grads = []
    for patched in (True, False):
        leaves.clear()
        if not patched:
            monkeypatch.setattr(CROWN, "unit_patches", lambda *a: None)
        with torch.enable_grad():
            state = crown_sweep(net, Domains(lo, hi), row_slopes=row_slopes)
            lo_k, hi_k = state.nodes.bounds[net.nodes[net.relu_indices[-1]].inputs[0]]
            total = lo_k.clamp(min=-1e3).sum() - hi_k.clamp(max=1e3).sum()
            keys = sorted(leaves)
            grads.append(torch.autograd.grad(total, [leaves[k] for k in keys], allow_unused=True))
        monkeypatch.undo()
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(g is not None and g.abs().sum() > 0 for g in grads[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_crown_on_the_conv_chain_contains_samples(dtype: torch.dtype) -> None:
    """Rigorous float32 passes keep full maps (their rounding terms read every coefficient)."""
    assert conv_chain_samples_checked(dtype) > 1000
