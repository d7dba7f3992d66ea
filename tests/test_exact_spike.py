"""Narrow spikes: unsafe regions of width ~1e-4 that sampling and PGD miss.

A spike is ``H * relu(1 - (relu(s - c) + relu(c - s)) / w)`` of a projection
``s = v . x``: peak ``H`` at ``s = c``, zero beyond ``|s - c| >= w``.  Its big-M
constants are of order ``1/w``, and boxes far from the origin add bad scaling;
exactly the regime where a MILP solver with tight tolerances or an unscaled box
has been seen to call a feasible model infeasible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.attack import AttackOptions, attack_case
from verifier.bab.exact_split import smt_verify
from verifier.deadline import Deadline
from verifier.exact.milp import MilpOptions, milp_verify
from verifier.exact.options import SmtOptions
from verifier.forward import forward
from verifier.network import Dense, Input, Network, Node, Relu
from verifier.objective import case_objective
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec


def spike_net(v: np.ndarray, centres: list[float], heights: list[float], width: float,
              distractors: int = 0, seed: int = 0) -> Network:
    """Output 0: the sum of the spikes of ``s = v . x``; output 1: a random ReLU feature."""
    rng = np.random.default_rng(seed)
    n = v.size
    k = len(centres)
    W1 = np.vstack([np.tile(v, (k, 1)), -np.tile(v, (k, 1)), rng.standard_normal((distractors, n))])
    b1 = np.concatenate([-np.asarray(centres), np.asarray(centres), rng.standard_normal(distractors)])
    W2 = np.zeros((k + 1, 2 * k + distractors))
    W2[np.arange(k), np.arange(k)] = -1.0 / width
    W2[np.arange(k), k + np.arange(k)] = -1.0 / width
    W2[k, 2 * k:] = rng.standard_normal(distractors)
    b2 = np.concatenate([np.ones(k), [0.0]])
    W3 = np.zeros((2, k + 1))
    W3[0, :k] = heights
    W3[1, k] = 1.0
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    nodes = (
        Node(Input(), (), (n,)),
        Node(Dense(t(W1), t(b1)), (0,), (W1.shape[0],)),
        Node(Relu(), (1,), (W1.shape[0],)),
        Node(Dense(t(W2), t(b2)), (2,), (k + 1,)),
        Node(Relu(), (3,), (k + 1,)),
        Node(Dense(t(W3), t(np.zeros(2))), (4,), (2,)),
    )
    return Network(nodes, 5)


def spike_spec(lower: np.ndarray, upper: np.ndarray, threshold: float) -> Spec:
    """Unsafe: output 0 at least ``threshold``."""
    poly = Polytope(np.array([[-1.0, 0.0]]), np.array([-threshold]))
    return Spec((Case(lower, upper, (poly,)),), lower.size, 2)


def _misses(net: Network, spec: Spec) -> bool:
    """Sampling and PGD (the pipeline's attack) find no counterexample."""
    case = spec.cases[0]
    obj = case_objective(case, torch.float64)

    def check(x: torch.Tensor):
        y = forward(net, x.reshape(1, -1)).reshape(-1).numpy()
        return True if spec.is_violated_by(x.numpy(), y) else None

    opts = AttackOptions(samples=4096, restarts=64, steps=100)
    return attack_case(net, obj, check, opts, Deadline.after(30), torch.Generator().manual_seed(0)) is None


def _assert_witness(net: Network, spec: Spec, x: np.ndarray) -> None:
    y = forward(net, torch.as_tensor(x)[None]).reshape(-1).numpy()
    assert spec.is_violated_by(x, y)


SCENARIOS = {
    # name: (v, centres, heights, width, box lower, box upper, distractors)
    "1d": (np.array([1.0]), [0.3141], [1.0], 1e-4, np.array([0.0]), np.array([1.0]), 0),
    "4d-far-box": (np.array([0.5, -0.5, 0.5, 0.5]), [200.123], [2.0], 1e-4,
                   np.array([99.0, -101.0, 99.0, 99.0]), np.array([101.0, -99.0, 101.0, 101.0]), 6),
    "two-spikes": (np.array([1.0, 1.0]), [0.2, 0.7071], [0.4, 1.0], 2e-4,
                   np.array([0.0, 0.0]), np.array([0.5, 0.5]), 4),
}


@pytest.mark.parametrize("engine", ["milp", "smt"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_spike_above_threshold_is_found(name: str, engine: str) -> None:
    v, centres, heights, width, lo, hi, distractors = SCENARIOS[name]
    net = spike_net(v, centres, heights, width, distractors)
    spec = spike_spec(lo, hi, 0.9 * max(heights))  # only within 1e-5 of the top spike's centre
    assert _misses(net, spec), "the attack found the spike: the test would not test anything"
    if engine == "milp":
        out = milp_verify(net, spec, Deadline.after(60), MilpOptions())
    else:
        out = smt_verify(net, spec, Deadline.after(60), SmtOptions())
    assert out.verdict is Status.SAT
    _assert_witness(net, spec, out.x)


@pytest.mark.parametrize("engine", ["milp", "smt"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_spike_below_threshold_is_proven(name: str, engine: str) -> None:
    v, centres, heights, width, lo, hi, distractors = SCENARIOS[name]
    net = spike_net(v, centres, heights, width, distractors)
    spec = spike_spec(lo, hi, 1.001 * max(heights))
    if engine == "milp":
        out = milp_verify(net, spec, Deadline.after(60), MilpOptions())
    else:
        out = smt_verify(net, spec, Deadline.after(60), SmtOptions())
    assert out.verdict is Status.UNSAT


@pytest.mark.parametrize("lp_tighten", [False, True])
@pytest.mark.parametrize("objective", ["feasibility", "margin"])
def test_spike_milp_settings(objective: str, lp_tighten: bool) -> None:
    """Every MILP setting finds the 1e-4-wide spike in a far-off box and proves the one below."""
    v, centres, heights, width, lo, hi, distractors = SCENARIOS["4d-far-box"]
    net = spike_net(v, centres, heights, width, distractors)
    opts = MilpOptions(objective=objective, lp_tighten=lp_tighten, crown_bounds=lp_tighten)
    sat = milp_verify(net, spike_spec(lo, hi, 0.99 * heights[0]), Deadline.after(60), opts)
    assert sat.verdict is Status.SAT
    _assert_witness(net, spike_spec(lo, hi, 0.99 * heights[0]), sat.x)
    assert milp_verify(net, spike_spec(lo, hi, 1.0001 * heights[0]), Deadline.after(60), opts).verdict is Status.UNSAT
