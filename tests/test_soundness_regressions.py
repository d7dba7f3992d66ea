"""Regression tests for the three wrong answers of the soundness issue, on instances built here.

1. Precision crossing: float32 CROWN bounds intersected with float64 interval bounds crossed by
   rounding on neurons constant over a box of fixed inputs, the leaves were dropped as empty, and a
   spec that every point of the box violates was answered ``unsat``.
2. An uncertified solver answer taken as a proof: HiGHS's ``infeasible`` decided exact leaves and
   the MILP stage.  Here HiGHS is made to lie, so only a proof by other means can give ``unsat``.
3. The replay cast a candidate to float32 before checking the box, so a box whose fixed inputs
   float32 cannot represent admitted no counterexample at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from verifier.api import verify
from verifier.bab.options import BabOptions
from verifier.bab.search import BabStats
from verifier.bab.solve import solve_case
from verifier.bounds import Domains, alpha_crown
from verifier.config import load_config
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Conv, Dense, Input, Network, Node, Relu, Reshape
from verifier.objective import case_objective
from verifier.onnx_export import save_onnx
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec


def _not_float32(x: np.ndarray) -> np.ndarray:
    """Values a few float64 ulps above ``x`` (float32 numbers), which float32 cannot represent."""
    out = x + 3 * np.spacing(np.abs(x))
    assert np.all(out.astype(np.float32).astype(np.float64) != out)
    return out


def cancelling_conv(seed: int, n: int = 20, channels: int = 4, scale: float = 30.0
                    ) -> tuple[Network, np.ndarray, np.ndarray]:
    """A Conv/Relu/Dense net whose pre-activations are sums of large cancelling terms (float32 rounds them
    by far more than their size), on an ``n x n`` box with all inputs fixed at values float32 cannot
    represent except a 3 x 3 corner of width 2e-4; the dense neurons 0-6 do not see the corner, so they
    are constant over the box.  Returns the net and the box."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = _not_float32(rng.uniform(-1, 1, n * n).astype(np.float32).astype(np.float64))
    img = torch.as_tensor(x).reshape(1, 1, n, n)
    w1 = torch.randn(channels, 1, 3, 3, generator=g, dtype=torch.float64) * scale
    b1 = -torch.nn.functional.conv2d(img, w1).mean((0, 2, 3))  # pre-activations around 0
    ho = n - 2
    flat = channels * ho * ho
    w2 = torch.randn(8, flat, generator=g, dtype=torch.float64) * scale / flat**0.5
    reach = torch.zeros(channels, ho, ho, dtype=torch.bool)
    reach[:, :3, :3] = True  # the conv outputs that the free corner reaches feed neuron 7 only
    w2[:7, reach.reshape(-1)] = 0.0
    h = torch.relu(torch.nn.functional.conv2d(img, w1, b1)).reshape(1, -1)
    b2 = -(h @ w2.T)[0] + torch.randn(8, generator=g, dtype=torch.float64) * 1e-3
    w3 = torch.randn(1, 8, generator=g, dtype=torch.float64)
    nodes = (Node(Input(), (), (1, n, n)), Node(Conv(w1, b1, (1, 1), (0, 0, 0, 0)), (0,), (channels, ho, ho)),
             Node(Relu(), (1,), (channels, ho, ho)), Node(Reshape(), (2,), (flat,)), Node(Dense(w2, b2), (3,), (8,)),
             Node(Relu(), (4,), (8,)), Node(Dense(w3, torch.zeros(1, dtype=torch.float64)), (5,), (1,)))
    lo, hi = x.copy(), x.copy()
    corner = np.zeros((n, n), bool)
    corner[:3, :3] = True
    lo[corner.reshape(-1)] -= 1e-4
    hi[corner.reshape(-1)] += 1e-4
    return Network(nodes, 6).to(dtype=torch.float32).as_defined(), lo, hi


def _everywhere_unsafe(net: Network, lo: np.ndarray, hi: np.ndarray, seed: int) -> Spec:
    """An output interval that holds the output at every point of the box (from samples, padded by half
    the sampled spread): every input of the box is a counterexample."""
    xs = np.random.default_rng(seed).uniform(lo, hi, (2000, lo.size))
    with torch.no_grad():
        y = forward(net.to(dtype=torch.float64), torch.as_tensor(np.vstack([xs, lo]))).reshape(-1).numpy()
    pad = 0.5 * float(y.max() - y.min()) + 1e-3
    poly = Polytope(np.array([[1.0], [-1.0]]), np.array([y.max() + pad, -(y.min() - pad)]))
    return Spec((Case(lo, hi, (poly,)),), lo.size, 1)


@pytest.mark.parametrize("attack", [True, False])
def test_fixed_inputs_that_float32_cannot_hold_are_not_proven_safe(tmp_path: Path, attack: bool) -> None:
    """Mechanism 1 (``main`` before the fix answered unsat, with or without the attack)."""
    net, lo, hi = cancelling_conv(1)
    spec = _everywhere_unsafe(net, lo, hi, 1)
    save_onnx(net, tmp_path / "m.onnx")
    config = load_config(overrides={"attack": {"enabled": attack}})
    result = verify(tmp_path / "m.onnx", spec, timeout=60, config=config)
    assert result.status is Status.SAT
    cex = result.counterexample
    assert np.all(cex.x >= lo) and np.all(cex.x <= hi) and spec.is_violated_by(cex.x, cex.y)


def test_relu_splitting_keeps_the_leaves_of_constant_neurons_open() -> None:
    """Mechanism 1 at the search, in float32 (rigorous there too): with a replay that confirms nothing,
    the leaves that hold the counterexamples must stay open (the verdict is unknown), never be dropped
    as empty."""
    net, lo, hi = cancelling_conv(1)
    spec = _everywhere_unsafe(net, lo, hi, 1)
    obj = case_objective(spec.cases[0], net.dtype)
    root = alpha_crown(net, Domains(obj.lower[None], obj.upper[None]), obj.C[None], obj.d[None])
    status, cex = solve_case(net, obj, root, lambda x: None, BabOptions(branching="relu"), load_config().alpha,
                             Deadline.after(30), torch.Generator().manual_seed(0), BabStats())
    assert status in (Status.UNKNOWN, Status.TIMEOUT) and cex is None


def needle(seed: int, n: int = 4, width: float = 1e-3, identities: int = 2) -> tuple[Network, np.ndarray]:
    """``y = relu(1 - sum_i |z_i| / w)`` with ``z = M (x - c)`` behind split-identity layers
    (``[relu(h); relu(-h)] -> [R h; -R h]``), ``c`` off-centre in ``[0, 1]^n``: 1 at ``c`` only, a needle
    of relative width about ``w``.  Returns the net and ``c``."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.55, 0.95, n)
    nodes = [Node(Input(), (), (n,))]

    def add(op, size: int) -> None:
        nodes.append(Node(op, (len(nodes) - 1,), (size,)))

    M = rng.normal(size=(n, n))
    add(Dense(torch.tensor(np.concatenate([M, -M])), torch.tensor(np.concatenate([-M @ c, M @ c]))), 2 * n)
    add(Relu(), 2 * n)
    for _ in range(identities):
        R = rng.normal(size=(n, n))
        split = np.block([[R, -R], [-R, R]])
        add(Dense(torch.tensor(split), torch.zeros(2 * n, dtype=torch.float64)), 2 * n)
        add(Relu(), 2 * n)
    add(Dense(torch.full((1, 2 * n), -1.0 / width, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), 1)
    add(Relu(), 1)
    add(Dense(torch.eye(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)), 1)
    return Network(tuple(nodes), len(nodes) - 1).to(dtype=torch.float32).as_defined(), c


def _lying_highs(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS reports every MIP infeasible and every LP without a point, a bound of +inf and zero duals."""
    import verifier.exact.highs as highs
    import verifier.exact.milp as milp

    def mip(problem, time_limit, threads=1, stop_below=None):
        return highs.MipSolve(highs.MipStatus.INFEASIBLE, None, np.inf, np.inf, 0.0, "lie")

    monkeypatch.setattr(highs, "solve_mip", mip)
    monkeypatch.setattr(milp, "solve_mip", mip, raising=False)
    monkeypatch.setattr(highs.LpSession, "minimize", lambda self, cost, offset=0.0, time_limit=None: np.inf)
    monkeypatch.setattr(highs.LpSession, "values", lambda self: None)
    monkeypatch.setattr(highs.LpSession, "duals", lambda self: np.zeros(self.problem.A.shape[0]), raising=False)


@pytest.mark.parametrize("engine", ["auto", "milp"])
def test_a_solver_that_calls_everything_infeasible_proves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str,
) -> None:
    """Mechanism 2: HiGHS's status is a hint.  With a HiGHS that lies, the needle (sat: its tip is a
    counterexample) must not be answered unsat (``main`` before the fix did, through its MILP leaves)."""
    net, c = needle(0)
    poly = Polytope(np.array([[-1.0]]), np.array([-0.9]))  # unsafe: y >= 0.9, around the tip only
    spec = Spec((Case(np.zeros(c.size), np.ones(c.size), (poly,)),), c.size, 1)
    save_onnx(net, tmp_path / "m.onnx")
    _lying_highs(monkeypatch)
    result = verify(tmp_path / "m.onnx", spec, timeout=10, config=load_config(overrides={"engine": engine}))
    assert result.status is not Status.UNSAT


def test_the_needle_is_found() -> None:
    """The same needle with an honest HiGHS: the tip is found and replayed (0.6-1 s here)."""
    net, c = needle(0)
    poly = Polytope(np.array([[-1.0]]), np.array([-0.9]))
    spec = Spec((Case(np.zeros(c.size), np.ones(c.size), (poly,)),), c.size, 1)
    result = verify(net, spec, timeout=60)
    assert result.status is Status.SAT and spec.is_violated_by(result.counterexample.x, result.counterexample.y)


def test_a_box_of_fixed_inputs_that_float32_cannot_hold_has_counterexamples(tmp_path: Path) -> None:
    """Mechanism 3: every point of a box with fixed inputs at non-float32 values is a counterexample;
    ``main`` before the fix answered unknown (its replay rejected every point)."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    w2 = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    nodes = (Node(Input(), (), (12,)), Node(Dense(w1, torch.zeros(6, dtype=torch.float64)), (0,), (6,)),
             Node(Relu(), (1,), (6,)), Node(Dense(w2, torch.zeros(1, dtype=torch.float64)), (2,), (1,)))
    net = Network(nodes, 3).to(dtype=torch.float32).as_defined()
    x = _not_float32(np.random.default_rng(0).uniform(-1, 1, 12).astype(np.float32).astype(np.float64))
    lo, hi = x.copy(), x.copy()
    lo[:2] -= 0.05
    hi[:2] += 0.05
    spec = _everywhere_unsafe(net, lo, hi, 0)
    save_onnx(net, tmp_path / "m.onnx")
    result = verify(tmp_path / "m.onnx", spec, timeout=30)
    assert result.status is Status.SAT
    assert np.array_equal(result.counterexample.x[2:], x[2:])  # the fixed values, as written


def test_a_normalization_folded_into_the_next_layer_keeps_its_rounding(tmp_path: Path) -> None:
    """Found by the soundness campaign (family ``scales``, seed 129): a float32 model whose input
    normalization (``x / std - mean / std``) loading folds into the next Dense.  Folded in float64 and cast
    back to float32, the weights were another network's, and the spec (a counterexample 3e-7 inside the
    unsafe set) was answered unsat by every engine that loaded the ONNX file; the folded constants now
    carry their rounding (``verifier.constants``)."""
    from benchmarks.soundness import make_problem
    from vnnlib.writer import write_spec

    problem = make_problem("scales", 129)
    assert problem.truth.verdict == "sat"
    save_onnx(problem.net, tmp_path / "m.onnx")
    (tmp_path / "s.vnnlib").write_text(write_spec(problem.spec))
    for engine in ("auto", "smt", "milp"):
        result = verify(tmp_path / "m.onnx", tmp_path / "s.vnnlib", timeout=30,
                        config=load_config(overrides={"engine": engine}))
        assert result.status is not Status.UNSAT, engine
