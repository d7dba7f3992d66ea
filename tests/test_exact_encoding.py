"""The exact encodings: every node type, point boxes, optima against samples, split states."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.nets import FAMILIES, consistent, random_splits, relu_pre, sample_box
from verifier.bab.exact_split import smt_check
from verifier.deadline import Deadline
from verifier.exact.encoding import (
    EncodingOptions,
    as_relu_bounds,
    encode_network,
    linear_objective,
    margin_problem,
    polytope_problem,
)
from verifier.exact.highs import MipStatus, solve_mip
from verifier.exact.linear_ops import INDEX_OPS, LINEAR_OPS, index_map, linear_map, maxpool_windows
from verifier.exact.milp import MilpOptions, count_unstable, milp_check
from verifier.exact.options import SmtOptions
from verifier.forward import forward, forward_all
from verifier.network import OP_TYPES, Add, Input, MaxPool, Relu
from verifier.result import Status


def _minimize(enc, c, time_limit=30.0):
    cost, offset = linear_objective(enc, c)
    return solve_mip(replace(enc.problem, cost=cost, offset=offset), time_limit)


def test_every_node_type_is_covered() -> None:
    handled = set(LINEAR_OPS) | set(INDEX_OPS) | {Input, Relu, MaxPool, Add}
    assert handled == set(OP_TYPES)
    gen = torch.Generator().manual_seed(0)
    net = FAMILIES["all_ops"](gen)
    assert {type(n.op) for n in net.nodes} == set(OP_TYPES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_linear_and_index_maps_match_forward(family: str) -> None:
    gen = torch.Generator().manual_seed(3)
    net = FAMILIES[family](gen)
    x = torch.randn(5, *net.input_shape, generator=gen, dtype=torch.float64)
    values = forward_all(net, x)
    for node_id, node in enumerate(net.nodes):
        args = [values[j].reshape(5, -1).numpy() for j in node.inputs]
        got = values[node_id].reshape(5, -1).numpy()
        if isinstance(node.op, LINEAR_OPS):
            M, c = linear_map(node, net.nodes[node.inputs[0]].shape)
            np.testing.assert_allclose((M @ args[0].T).T + c, got, rtol=1e-10, atol=1e-10)
        elif isinstance(node.op, INDEX_OPS):
            idx, fill = index_map(node, [net.nodes[j].shape for j in node.inputs])
            flat = np.concatenate(args, axis=1)
            want = np.where(idx >= 0, flat[:, np.maximum(idx, 0)], fill)
            np.testing.assert_array_equal(want, got)
        elif isinstance(node.op, MaxPool):
            win = maxpool_windows(node.op, net.nodes[node.inputs[0]].shape, node.shape)
            vals = np.where(win >= 0, args[0][:, np.maximum(win, 0)], -np.inf).max(axis=2)
            np.testing.assert_array_equal(vals, got)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_point_box_reproduces_forward_in_milp_and_smt(family: str) -> None:
    """On a one-point box every output's MILP minimum is the forward value; z3 agrees exactly."""
    gen = torch.Generator().manual_seed(7)
    net = FAMILIES[family](gen)
    x0 = (torch.rand(net.n_inputs, generator=gen, dtype=torch.float64) - 0.5).numpy()
    y0 = forward(net, torch.as_tensor(x0)[None]).reshape(-1).numpy()
    enc = encode_network(net, x0, x0)
    for i in range(net.n_outputs):
        c = np.eye(net.n_outputs)[i]
        res = _minimize(enc, c)
        assert res.status is MipStatus.FEASIBLE
        assert res.objective == pytest.approx(y0[i], abs=1e-6)
    # z3 (interval bounds fix every ReLU of a point box): y_0 <= y0_0 -+ 1e-9 is unsat / sat
    opts = SmtOptions(bounds="interval", lp_probe=False)
    A = np.eye(net.n_outputs)[:1]
    assert smt_check(net, x0, x0, A, y0[:1] - 1e-9, Deadline.after(30), opts).verdict is Status.UNSAT
    assert smt_check(net, x0, x0, A, y0[:1] + 1e-9, Deadline.after(30), opts).verdict is Status.SAT


@pytest.mark.parametrize("family,width", [("dense", 0.5), ("residual", 0.5), ("avgpool", 0.1), ("maxpool", 0.1)])
def test_milp_optimum_brackets_samples_and_is_attained(family: str, width: float) -> None:
    """min c f(x) by MILP is below every sample and attained by the MILP's own input."""
    gen = torch.Generator().manual_seed(11)
    net = FAMILIES[family](gen)
    n = net.n_inputs
    lo = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5).numpy()
    hi = lo + width
    c = torch.randn(net.n_outputs, generator=gen, dtype=torch.float64).numpy()
    enc = encode_network(net, lo, hi)
    res = _minimize(enc, c, time_limit=60.0)
    assert res.status is MipStatus.FEASIBLE and res.dual_bound >= res.objective - 1e-4 * (1 + abs(res.objective))
    xs = sample_box(gen, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], 2000)[0]
    ys = forward(net, xs).reshape(len(xs), -1).numpy() @ c
    assert ys.min() >= res.objective - 1e-6
    x = enc.input_of(res.values)
    assert np.all(x >= lo) and np.all(x <= hi)
    y = forward(net, torch.as_tensor(x)[None]).reshape(-1).numpy() @ c
    assert y == pytest.approx(res.objective, abs=1e-5)


def test_relu_bounds_of_the_encoding_contain_samples() -> None:
    gen = torch.Generator().manual_seed(5)
    for family in sorted(FAMILIES):
        net = FAMILIES[family](gen)
        lo = -0.4 * np.ones(net.n_inputs)
        hi = 0.4 * np.ones(net.n_inputs)
        bounds = encode_network(net, lo, hi, options=EncodingOptions(relax=True)).bounds
        xs = sample_box(gen, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], 500)[0]
        pre, _ = relu_pre(net, xs)
        for k, p in enumerate(pre):
            assert np.all(p.numpy() >= bounds.lower[k] - 1e-12) and np.all(p.numpy() <= bounds.upper[k] + 1e-12)


def test_margin_and_feasibility_problems_agree() -> None:
    gen = torch.Generator().manual_seed(2)
    net = FAMILIES["dense"](gen)
    lo, hi = -np.ones(3), np.ones(3)
    enc = encode_network(net, lo, hi)
    A = np.array([[1.0, -1.0], [0.0, 1.0]])
    margin = solve_mip(margin_problem(enc, A, np.zeros(2)), 30)
    assert margin.status is MipStatus.FEASIBLE
    for b_shift, expect in ((margin.objective + 1e-4, MipStatus.FEASIBLE),
                            (margin.objective - 1e-4, MipStatus.INFEASIBLE)):
        res = solve_mip(polytope_problem(enc, A, np.full(2, b_shift)), 30)
        assert res.status is expect


def test_milp_check_respects_split_states() -> None:
    """A leaf with split states: sat whenever a consistent sample is unsafe, and every
    witness satisfies the split states and the polytope."""
    gen = torch.Generator().manual_seed(4)
    net = FAMILIES["dense"](gen, (3, 8, 8, 2))
    lo = torch.full((1, 3), -1.0, dtype=torch.float64)
    hi = torch.full((1, 3), 1.0, dtype=torch.float64)
    xs = sample_box(gen, lo, hi, 4000)[0]
    pre, out = relu_pre(net, xs)
    c = np.array([1.0, -1.0])
    vals = out.numpy() @ c
    for trial in range(6):
        splits = random_splits(gen, net, lo, hi, count=3, flip_last=trial % 2 == 1)
        ok = consistent(pre, splits).numpy()
        target = vals[ok].min() if ok.any() else 0.0
        for b in (target + 0.01, target - 0.5):
            res = milp_check(net, lo, hi, c[None], np.array([b]), None, Deadline.after(30), splits,
                             MilpOptions(lp_tighten=trial % 2 == 0))
            assert res.verdict in (Status.SAT, Status.UNSAT)
            if ok.any() and b > target:
                assert res.verdict is Status.SAT
            if res.verdict is Status.SAT:
                pre_x, out_x = relu_pre(net, torch.as_tensor(res.x)[None])
                for p, s in zip(pre_x, splits):  # up to rounding at the split boundary
                    assert torch.all((s <= 0) | (p >= -1e-9)) and torch.all((s >= 0) | (p <= 1e-9))
                assert float(out_x[0].numpy() @ c) <= b


def test_count_unstable_and_bound_formats() -> None:
    gen = torch.Generator().manual_seed(6)
    net = FAMILIES["dense"](gen, (3, 8, 8, 2))
    lo, hi = -np.ones(3), np.ones(3)
    enc = encode_network(net, lo, hi, options=EncodingOptions(relax=True))
    n = count_unstable(net, lo, hi)
    assert n == enc.bounds.unstable() and n > 0
    pairs = [(a[None], b[None]) for a, b in zip(enc.bounds.lower, enc.bounds.upper)]
    assert count_unstable(net, lo, hi, pairs) == n
    assert as_relu_bounds(None, net) is None
    with pytest.raises(ValueError):
        as_relu_bounds(pairs[:1], net)


@pytest.mark.parametrize("where", [0, 1])
def test_contradicting_splits_stop_the_encoding_and_are_certified_empty(where: int) -> None:
    """Splits that contradict a layer's bounds make the region empty: no layer after it is encoded (its
    columns' crossed bounds gave NaN intervals and RuntimeWarnings there), every later layer's bounds are
    crossed, and the certified LP still proves the region empty (through the encoded layer's rows)."""
    import warnings

    from verifier.exact.region import Region, decide_region
    from vnnlib.spec import Polytope

    gen = torch.Generator().manual_seed(11)
    net = FAMILIES["dense"](gen, (3, 8, 8, 8, 2))
    lo, hi = np.full(3, -0.02), np.full(3, 0.02)
    free = encode_network(net, lo, hi, options=EncodingOptions(relax=True)).bounds
    splits = [np.zeros(b.size, dtype=np.int8) for b in free.lower]
    dead = np.flatnonzero(free.upper[where] < 0)
    live = np.flatnonzero(free.lower[where] > 0)
    assert dead.size + live.size > 0, "the family needs a stable neuron in this layer"
    if live.size:
        splits[where][live[0]] = -1  # inactive, although its pre-activation is above 0 everywhere
    else:
        splits[where][dead[0]] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = encode_network(net, lo, hi, splits=splits, options=EncodingOptions(relax=True))
        assert enc.empty
        assert [b.size for b in enc.bounds.lower] == [b.size for b in free.lower]
        for k in range(where + 1, len(splits)):
            assert np.all(enc.bounds.lower[k] > enc.bounds.upper[k])
        poly = Polytope(np.array([[1.0, -1.0]]), np.array([-1e6]))
        out = decide_region(net, Region(lo, hi, tuple(splits)), [poly], "lp", Deadline.after(30))
    assert out.verdict is Status.UNSAT
