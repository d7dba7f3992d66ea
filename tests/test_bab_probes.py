"""Counterexample probes of input splitting: the box corners that minimize the rows' linear lower bounds.

A counterexample on the boundary of the case box is never a box centre; here the only unsafe point
is the corner (1, 1) of the box [0, 1]^2, which the probes reach and the centres never do.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tests.nets import Builder
from verifier.bab.options import BabOptions, InputSplitOptions
from verifier.bab.probes import unsafe_corners
from verifier.bab.search import BabStats
from verifier.bab.solve import solve_case
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import Domains, crown
from verifier.bounds.alpha import AlphaOptions
from verifier.deadline import Deadline
from verifier.network import Dense, Network
from verifier.objective import case_objective
from verifier.onnx_export import save_onnx
from verifier.result import Status
from verifier.validate import Replayer, validate
from vnnlib.spec import Case, Polytope, Spec


def _corner_problem() -> tuple[Network, Spec]:
    """``y = relu(x0) + relu(x1)`` on ``[0, 1]^2``; unsafe: ``y >= 2``, only at the corner (1, 1)."""
    b = Builder((2,), torch.Generator().manual_seed(0))
    b.add_op(Dense(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)), (0,))
    b.relu()
    b.add_op(Dense(torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)), (b.last,))
    case = Case(np.zeros(2), np.ones(2), (Polytope(np.array([[-1.0]]), np.array([-2.0])),))
    return b.build(), Spec((case,), 2, 1)


def test_corners_minimize_the_linear_bounds_and_only_unsafe_ones_are_kept() -> None:
    net, spec = _corner_problem()
    obj = case_objective(spec.cases[0], net.dtype)
    lower = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    upper = torch.tensor([[1.0, 1.0], [0.9, 1.0], [1.0, 1.0]], dtype=torch.float64)
    res = crown(net, Domains(lower, upper), obj.C.expand(3, -1, -1), obj.d.expand(3, -1), need_linear=True)
    children = SubproblemBatch(lower=lower, upper=upper, splits=None, bound=res.lower,
                               depth=torch.zeros(3, dtype=torch.int32))
    x, v = unsafe_corners(net, obj, children, res.linear[0])
    # the row -y + 2 falls as either input grows: its minimizer is the upper corner of each box;
    # the second box's corner (0.9, 1) is safe, and the first and third share the unsafe (1, 1)
    assert x.tolist() == [[1.0, 1.0], [1.0, 1.0]] and v.tolist() == [0.0, 0.0]
    # a box proven safe is not probed
    proven = replace(children, bound=torch.full_like(res.lower, 1.0))
    assert unsafe_corners(net, obj, proven, res.linear[0])[0].shape == (0, 2)


def test_strong_branching_estimates_probe_the_candidates_corners() -> None:
    """Every candidate split that strong branching ranks (not only the chosen one) has its corners probed."""
    from verifier.bab.input_split import _estimates

    net, spec = _corner_problem()
    obj = case_objective(spec.cases[0], net.dtype)
    # the two candidates of splitting x1 of [0.5, 1]^2: only the upper one holds the unsafe corner (1, 1)
    lower = torch.tensor([[0.5, 0.5], [0.5, 0.75]], dtype=torch.float64)
    upper = torch.tensor([[1.0, 0.75], [1.0, 1.0]], dtype=torch.float64)
    children = SubproblemBatch(lower=lower, upper=upper, splits=None, bound=torch.full((2, 1), -torch.inf,
                               dtype=torch.float64), depth=torch.ones(2, dtype=torch.int32))
    probes: list = []
    ranked = _estimates(net, obj, 512, probes)(children)
    assert ranked.bound.dtype == torch.float64 and ranked.lower.equal(lower)  # the boxes stay as they were
    x = torch.cat([p[0] for p in probes])
    assert x.tolist() == [[1.0, 1.0]]


def test_input_splitting_finds_a_corner_counterexample(tmp_path: Path) -> None:
    net, spec = _corner_problem()
    save_onnx(net, tmp_path / "m.onnx")
    replayer = Replayer(tmp_path / "m.onnx")
    obj = case_objective(spec.cases[0], net.dtype)
    root = crown(net, Domains(obj.lower[None], obj.upper[None]), obj.C[None], obj.d[None])

    def check(x: torch.Tensor):
        return validate(replayer, spec, x.detach().cpu().double().numpy(), 0)

    def run(contract: bool) -> tuple[Status, object, BabStats]:
        # no PGD and no ReLU-splitting leaves (whose LP finds the corner too) during the search: only the
        # centres and (with the linear bounds) the corners are probed; strong branching's estimates would
        # probe corners too
        opts = BabOptions(branching="input", attack_every=10**9, input=InputSplitOptions(
            contract=contract, exact_unstable=0, strong_branching="full" if contract else "none"))
        stats = BabStats()
        status, cex = solve_case(net, obj, root, check, opts, AlphaOptions(), Deadline.after(5.0),
                                 torch.Generator().manual_seed(0), stats)
        return status, cex, stats

    status, cex, stats = run(contract=True)
    assert status is Status.SAT and cex.x.tolist() == [1.0, 1.0] and stats.rounds == 1
    assert spec.is_violated_by(cex.x.astype(np.float64), cex.y.astype(np.float64))
    # without linear bounds there are no corner probes: the centres reach the corner only once
    # the boxes around it have shrunk to (about) the point itself, some 50 halvings of each side
    status, cex, stats = run(contract=False)
    assert stats.max_depth > 100 and status in (Status.TIMEOUT, Status.SAT)


def test_a_box_touching_the_unsafe_set_is_never_proven_safe() -> None:
    # the bound of -y + 2 on a box whose corner is (1, 1) is exactly 0, down to boxes a few ulps wide
    # (a centre-radius form of the bounds rounded it to 1e-16 there, and the search answered unsat)
    net, spec = _corner_problem()
    obj = case_objective(spec.cases[0], net.dtype)
    width = torch.tensor([2.0**-k for k in range(0, 54)], dtype=torch.float64)
    upper = torch.ones(width.shape[0], 2, dtype=torch.float64)
    lower = upper - torch.stack([width, width / 2], 1)
    C, d = obj.C.expand(width.shape[0], -1, -1), obj.d.expand(width.shape[0], -1)
    assert float(crown(net, Domains(lower, upper), C, d).lower.max()) <= 0.0
