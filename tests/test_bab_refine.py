"""Intermediate bounds refined by proving neuron signs: the cut network, soundness on random
networks, a neuron only splitting can prove stable, and the refined root inside the portfolio."""

from __future__ import annotations

import time

import pytest
import torch

from tests.nets import Builder, dense_net, relu_pre, sample_box
from verifier.bab.options import BabOptions
from verifier.bab.refine import cut_at, prove_rows, refine_bounds, refined_root
from verifier.bab.search import BabStats
from verifier.bounds import AlphaOptions, Domains, alpha_crown
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Dense, Network
from verifier.objective import CaseObjective

ALPHA = AlphaOptions(iterations=10)


def _objective(lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor) -> CaseObjective:
    """One polytope of the rows ``C y <= d`` on the box."""
    S = C.shape[0]
    return CaseObjective(lower=lower, upper=upper, C=C, d=d, groups=torch.ones(1, S, dtype=torch.bool),
                         strict=torch.zeros(S, dtype=torch.bool))


def _root(net: Network, obj: CaseObjective):
    return alpha_crown(net, Domains(obj.lower[None], obj.upper[None]), obj.C[None], obj.d[None], ALPHA)


def abs_trick_net() -> Network:
    """x in [-1, 1]; layer 1: relu(x), relu(-x), relu(x + 1); layer 2: z = (x + 1) - relu(x) + relu(-x) - 1.1,
    which is -0.1 everywhere (x - relu(x) = -relu(-x)), but triangle relaxations leave it unstable."""
    b = Builder((1,), torch.Generator().manual_seed(0))
    b.add_op(Dense(torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64),
                   torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), (b.last,))
    b.relu()
    b.add_op(Dense(torch.tensor([[-1.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([-1.1], dtype=torch.float64)),
             (b.last,))
    b.relu()
    b.add_op(Dense(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)), (b.last,))
    return b.build()


def test_cut_at_outputs_the_pre_activation_of_that_layer():
    gen = torch.Generator().manual_seed(1)
    net = dense_net(gen, (4, 6, 5, 7, 2))
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    pre, _ = relu_pre(net, x)
    for k in range(len(net.relu_indices)):
        torch.testing.assert_close(forward(cut_at(net, k), x).reshape(20, -1), pre[k])


def test_a_neuron_only_splitting_proves_stable_is_made_stable():
    net = abs_trick_net()
    obj = _objective(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                     torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    root = _root(net, obj)
    assert float(root.intermediate.upper[1][0, 0]) > 0  # the relaxation leaves it unstable
    out = refine_bounds(net, obj, root.intermediate, BabOptions(), ALPHA, Deadline(time.monotonic() + 20),
                        torch.Generator().manual_seed(0), budget=64)
    assert out.tried == 1 and out.stabilized == 1
    assert float(out.bounds.upper[1][0, 0]) <= 0


def _abs_rows():
    """The cut network of ``abs_trick_net`` (z = -0.1 everywhere), its box, the earlier layer's bounds, and
    the rows -z (positive everywhere, only splitting proves it) and z (never positive)."""
    net = abs_trick_net()
    lower, upper = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    obj = _objective(lower, upper, torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    root = _root(net, obj)
    earlier = type(root.intermediate)(root.intermediate.lower[:1], root.intermediate.upper[:1])
    return cut_at(net, 1), obj, earlier, torch.tensor([[-1.0], [1.0]], dtype=torch.float64)


def test_prove_rows_answers_each_row_of_one_batched_search():
    # on the cut network z = -0.1 everywhere: -z > 0 holds (only splitting proves it), z > 0 never does
    sub, obj, earlier, C = _abs_rows()
    out, bound = prove_rows(sub, obj, earlier, C, BabOptions(), ALPHA, Deadline(time.monotonic() + 20), budget=64)
    assert out.tolist() == [1, -1]
    # proven: no bound needed; reached: a lower bound of z, which is -0.1 everywhere
    assert float(bound[0]) == float("inf") and float(bound[1]) <= -0.1 + 1e-9
    # out of time before the first round: nothing is proven; the root's bounds, sound
    out, bound = prove_rows(sub, obj, earlier, C, BabOptions(), ALPHA, Deadline(time.monotonic()), budget=64)
    assert out.tolist() == [0, 0]
    assert float(bound[0]) <= 0.1 + 1e-9 and float(bound[1]) <= -0.1 + 1e-9


@pytest.mark.parametrize("budget", [0, 1, 2, 4])
def test_a_row_given_up_on_budget_never_reports_an_infinite_bound(budget: int):
    """A row whose search ran past its budget is proven only if nothing was let go; otherwise its bound must be
    a real lower bound (at most the true minimum), never +inf: +inf made the refinement's bounds cross (an
    empty box: every case unsat)."""
    sub, obj, earlier, C = _abs_rows()
    out, bound = prove_rows(sub, obj, earlier, C, BabOptions(), ALPHA, Deadline(time.monotonic() + 20), budget)
    true_min = [0.1, -0.1]  # -z and z, with z = -0.1 everywhere
    for o, b, m in zip(out.tolist(), bound.tolist(), true_min, strict=True):
        if o == 1:
            assert b == float("inf") and m > 0
        else:
            assert b <= m + 1e-9, (budget, out.tolist(), bound.tolist())


def test_the_refined_root_proves_what_the_root_could_not():
    # the output is relu(z) with z = -0.1 everywhere: "output >= 0.05" is unsafe and unreachable
    net = abs_trick_net()
    obj = _objective(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                     torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([-0.05], dtype=torch.float64))
    root = _root(net, obj)
    assert not bool(obj.ruled_out(root.lower).all())
    stats = BabStats()
    best = refined_root(net, obj, root, BabOptions(), ALPHA, Deadline(time.monotonic() + 20),
                        torch.Generator().manual_seed(0), stats)
    assert bool(obj.ruled_out(best.lower).all())
    assert stats.extra["refine_stabilized"] == 1 and stats.extra["refine_unstable_after"] < \
        stats.extra["refine_unstable_before"]


@pytest.mark.parametrize("seed", range(12))
def test_refined_bounds_contain_every_sampled_pre_activation(seed):
    gen = torch.Generator().manual_seed(seed)
    net = dense_net(gen, (3, 10, 10, 10, 2))
    centre = torch.randn(3, generator=gen, dtype=torch.float64)
    obj = _objective(centre - 0.5, centre + 0.5, torch.randn(1, 2, generator=gen, dtype=torch.float64),
                     torch.zeros(1, dtype=torch.float64))
    root = _root(net, obj)
    out = refine_bounds(net, obj, root.intermediate, BabOptions(), ALPHA, Deadline(time.monotonic() + 20),
                        torch.Generator().manual_seed(seed), budget=64)
    xs = sample_box(gen, obj.lower[None], obj.upper[None], 4000)[0]
    pre, _ = relu_pre(net, xs)
    for k, z in enumerate(pre):
        lo, hi = out.bounds.lower[k][0], out.bounds.upper[k][0]
        assert bool((lo <= z + 1e-9).all() and (z <= hi + 1e-9).all()), f"layer {k}"
        # never looser than what it started from
        assert bool((lo >= root.intermediate.lower[k][0]).all() and (hi <= root.intermediate.upper[k][0]).all())
