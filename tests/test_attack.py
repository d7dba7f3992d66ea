"""The attack: finds counterexamples that validate, never claims one that does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from verifier.attack import AttackOptions, attack_case, pgd_candidates
from verifier.deadline import Deadline
from verifier.network import Dense, Input, Network, Node, Relu
from verifier.objective import case_objective
from verifier.result import Counterexample
from verifier.validate import Replayer, validate
from vnnlib.spec import Case, Polytope

MODELS = Path(__file__).resolve().parents[1] / "models"


def _tent() -> Network:
    """y = relu(x) + relu(-x) = |x| on one input."""
    w1 = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    nodes = (Node(Input(), (), (1,)), Node(Dense(w1, torch.zeros(2, dtype=torch.float64)), (0,), (2,)),
             Node(Relu(), (1,), (2,)), Node(Dense(torch.ones(1, 2, dtype=torch.float64),
                                                  torch.zeros(1, dtype=torch.float64)), (2,), (1,)))
    return Network(nodes, 3)


def test_pgd_reaches_a_corner_region_and_hands_only_unsafe_points_to_validation():
    net = _tent()
    # unsafe: |x| >= 0.99 on [-1, 1]: only 1% of the box at each end
    case = Case(np.array([-1.0]), np.array([1.0]), (Polytope(np.array([[-1.0]]), np.array([-0.99])),))
    obj = case_objective(case, torch.float64)
    seen = []

    def check(x: torch.Tensor) -> Counterexample | None:
        seen.append(float(x[0]))
        y = abs(float(x[0]))
        return Counterexample(x.numpy(), np.array([y])) if y >= 0.99 else None

    opts = AttackOptions(samples=4, restarts=4, steps=50)
    cex = attack_case(net, obj, check, opts, Deadline.after(10), torch.Generator().manual_seed(0))
    assert cex is not None and abs(cex.x[0]) >= 0.99


def test_pgd_restarts_also_descend_a_polytope_that_is_not_the_nearest():
    # y1 = relu(x) + 0.1 (never <= 0; nearest, and flat once x < 0), y2 = 0.7 (x + 2) - 0.9 (<= 0 for x <= -5/7)
    w1 = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 0.0], [0.0, 0.7]], dtype=torch.float64)
    nodes = (Node(Input(), (), (1,)), Node(Dense(w1, torch.tensor([0.0, 2.0], dtype=torch.float64)), (0,), (2,)),
             Node(Relu(), (1,), (2,)), Node(Dense(w2, torch.tensor([0.1, -0.9], dtype=torch.float64)), (2,), (2,)))
    net = Network(nodes, 3)
    polys = (Polytope(np.array([[1.0, 0.0]]), np.array([0.0])), Polytope(np.array([[0.0, 1.0]]), np.array([0.0])))
    obj = case_objective(Case(np.array([-1.0]), np.array([1.0]), polys), torch.float64)
    start = torch.full((6, 1), 0.5, dtype=torch.float64)  # every restart where polytope 1 is the nearest
    x, v = pgd_candidates(net, obj, obj.lower[None], obj.upper[None], AttackOptions(restarts=6, steps=50),
                          torch.Generator().manual_seed(0), Deadline(), start)
    assert float(v[0]) <= 0 and float(x[0, 0]) <= -5 / 7


def test_no_candidate_when_the_property_holds():
    net = _tent()
    case = Case(np.array([-1.0]), np.array([1.0]), (Polytope(np.array([[-1.0]]), np.array([-1.5])),))
    obj = case_objective(case, torch.float64)
    calls = []
    cex = attack_case(net, obj, lambda x: calls.append(x), AttackOptions(samples=64, restarts=8, steps=20),
                      Deadline.after(10), torch.Generator().manual_seed(0))
    assert cex is None and calls == []  # nothing that looks unsafe is ever proposed


@pytest.mark.parametrize("model, prop", [
    ("test_sat.onnx", "test_prop.vnnlib"),
    ("acasxu/ACASXU_run2a_1_9_batch_2000.onnx", "acasxu/prop_3.vnnlib"),
    ("acasxu/ACASXU_run2a_1_9_batch_2000.onnx", "acasxu/prop_4.vnnlib"),
    ("acasxu/ACASXU_run2a_2_1_batch_2000.onnx", "acasxu/prop_2.vnnlib"),
])
def test_attack_finds_the_known_sat_acasxu_instances(model, prop):
    from verifier.onnx_import import load_onnx
    from vnnlib import read_spec

    net = load_onnx(MODELS / model)
    spec = read_spec(MODELS / prop, net.n_inputs, net.n_outputs)
    replayer = Replayer(MODELS / model)
    obj = case_objective(spec.cases[0], net.dtype)
    cex = attack_case(net, obj, lambda x: validate(replayer, spec, x.double().numpy(), 0), AttackOptions(),
                      Deadline.after(30), torch.Generator().manual_seed(0))
    assert cex is not None
    assert spec.is_violated_by(cex.x.astype(np.float64), replayer.run(cex.x).astype(np.float64))


@pytest.mark.parametrize("seed", range(3))
def test_attack_finds_the_mnistfc_counterexample_that_small_first_steps_miss(bench, seed):
    # mnistfc 256x4 prop_1_0.05 (sat): PGD whose steps start at 0.1 of the box width stalls at a margin
    # of +0.985 from every start; restarts that start at the full width reach it
    from verifier.onnx_import import load_onnx
    from vnnlib import read_spec

    model, prop = bench / "mnistfc" / "mnist-net_256x4.onnx", bench / "mnistfc" / "prop_1_0.05.vnnlib"
    net = load_onnx(model)
    spec = read_spec(prop, net.n_inputs, net.n_outputs)
    replayer = Replayer(model)
    obj = case_objective(spec.cases[0], net.dtype)
    cex = attack_case(net, obj, lambda x: validate(replayer, spec, x.double().numpy(), 0), AttackOptions(),
                      Deadline.after(30), torch.Generator().manual_seed(seed))
    assert cex is not None
    assert spec.is_violated_by(cex.x.astype(np.float64), replayer.run(cex.x).astype(np.float64))
