"""MILP, SMT and bounds+enumeration agree on random small networks with disjunctive specs,
and the MILP optimum equals the optimum over enumerated activation patterns.

The enumeration oracle is independent of the exact encodings: it reads each affine block
of the network by evaluating the forward pass on basis vectors, takes stable neurons from
CROWN (verifier.bounds), and enumerates the sign patterns of the other neurons depth
first, one small LP over the input per branch (HiGHS called directly).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import highspy
import numpy as np
import pytest
import torch

from tests.nets import Builder
from verifier.bab.exact_split import smt_verify
from verifier.bounds import Domains, crown
from verifier.deadline import Deadline
from verifier.exact.encoding import encode_network, linear_objective
from verifier.exact.highs import MipStatus, solve_mip
from verifier.exact.milp import MilpOptions, milp_verify
from verifier.exact.options import SmtOptions
from verifier.forward import forward, forward_all
from verifier.network import Conv, Input, Network, Node, Relu, Reshape
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec

BATCHES = 10
PER_BATCH = 30  # 300 networks in all


def random_net(seed: int) -> Network:
    """A dense (4 in 5) or tiny conv (1 in 5) ReLU network: 2-8 inputs, at most 40 ReLUs."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    if seed % 5 == 4:
        b = Builder((1, 2, 4), gen)
        w = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64) / 2
        b.add_op(Conv(w, 0.3 * torch.randn(3, generator=gen, dtype=torch.float64), (1, 1), (0, 0, 0, 0)), (0,))
        b.relu()
        b.add_op(Reshape(), (b.last,), (9,))
        b.dense(int(rng.integers(4, 12)))
        b.relu()
        b.dense(int(rng.integers(2, 4)))
        return _single_weights(b.build())
    n_in = int(rng.integers(2, 9))
    layers = int(rng.integers(1, 4))
    widths = rng.integers(2, 11, size=layers)
    while widths.sum() > 40:
        widths = np.maximum(widths - 1, 3)
    b = Builder((n_in,), gen)
    for w in widths:
        b.dense(int(w))
        b.relu()
    b.dense(int(rng.integers(2, 5)))
    return _single_weights(b.build())


def _single_weights(net: Network) -> Network:
    """float32-representable weights (as in ONNX models), evaluated in float64."""
    return net.to(dtype=torch.float32).as_defined().to(dtype=torch.float64)


def random_spec(net: Network, seed: int) -> Spec:
    """1-2 boxes, each with 1-3 polytopes of 1-2 rows; thresholds near the sampled extremes."""
    rng = np.random.default_rng(10_000 + seed)
    n_in, n_out = net.n_inputs, net.n_outputs
    cases = []
    for _ in range(int(rng.integers(1, 3))):
        lo = rng.uniform(-1.0, 0.5, n_in)
        hi = lo + rng.uniform(0.05, 0.4, n_in)
        xs = torch.as_tensor(rng.uniform(lo, hi, (400, n_in)))
        ys = forward(net, xs).reshape(400, -1).numpy()
        polys = []
        for _ in range(int(rng.integers(1, 4))):
            A = rng.standard_normal((int(rng.integers(1, 3)), n_out))
            vals = ys @ A.T  # (400, k)
            spread = np.maximum(vals.max(axis=0) - vals.min(axis=0), 0.05)  # no threshold on a plateau
            b = vals.min(axis=0) - rng.uniform(-0.1, 0.35, A.shape[0]) * spread  # mostly below the samples
            polys.append(Polytope(A, b))
        cases.append(Case(lo, hi, tuple(polys)))
    return Spec(tuple(cases), n_in, n_out)


@dataclass(frozen=True)
class Block:
    """One affine block ``W x + c`` read from the forward pass, and whether a ReLU follows."""

    W: np.ndarray
    c: np.ndarray
    relu: bool


def affine_blocks(net: Network) -> list[Block]:
    """The chain as affine blocks between ReLUs, each read off the forward pass on basis vectors."""
    cuts = [0, *net.relu_indices]
    blocks = []
    for start, end in zip(cuts, [*net.relu_indices, net.output]):
        stop = net.nodes[end].inputs[0] if isinstance(net.nodes[end].op, Relu) else end
        n = net.nodes[start].size
        basis = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
        out = _run_block(net, start, stop, basis)  # (n + 1, m)
        blocks.append(Block((out[1:] - out[0]).T, out[0], isinstance(net.nodes[end].op, Relu)))
    return blocks


def _run_block(net: Network, start: int, stop: int, x: torch.Tensor) -> np.ndarray:
    sub = Network((Node(Input(), (), net.nodes[start].shape),
                   *[_shift(n, start) for n in net.nodes[start + 1: stop + 1]]), stop - start)
    return forward_all(sub, x)[-1].reshape(x.shape[0], -1).numpy()


def _shift(node: Node, start: int) -> Node:
    return Node(node.op, tuple(j - start for j in node.inputs), node.shape, node.name)


class Enumerator:
    """Depth-first enumeration of the sign patterns of the neurons that CROWN leaves unstable."""

    def __init__(self, net: Network, lo: np.ndarray, hi: np.ndarray) -> None:
        self.blocks = affine_blocks(net)
        res = crown(net, Domains(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]))
        self.lower = [t[0].numpy() for t in res.intermediate.lower]
        self.upper = [t[0].numpy() for t in res.intermediate.upper]
        self.box = list(zip(lo, hi))
        self.lps = 0

    def _lp(self, cost, G, h) -> tuple[bool, np.ndarray | None, float]:
        """``(feasible, point, optimum)`` of ``min cost x`` on ``G x <= h`` within the box."""
        self.lps += 1
        n = len(self.box)
        h_ = highspy.Highs()
        h_.setOptionValue("output_flag", False)
        G = np.atleast_2d(G).reshape(-1, n)
        lo, hi = np.array(self.box).T
        Gs = np.ascontiguousarray(G)
        h_.passModel(n, len(h), Gs.size, 2, 1, 0.0, np.asarray(cost, float), lo, hi,
                     np.full(len(h), -np.inf), np.asarray(h, float), np.arange(0, Gs.size + 1, n, dtype=np.int32),
                     np.tile(np.arange(n, dtype=np.int32), len(h)), Gs.reshape(-1), np.zeros(n, dtype=np.uint8))
        h_.run()
        if h_.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return False, None, np.inf
        return True, np.asarray(h_.getSolution().col_value), h_.getInfo().objective_function_value

    def leaves(self):
        """Yield ``(P, q, G, h)`` per feasible full pattern: outputs ``P x + q`` on ``G x <= h``."""
        n = len(self.box)
        P, q = self.blocks[0].W, self.blocks[0].c
        x0 = np.array([(a + b) / 2 for a, b in self.box])
        yield from self._layer(0, P, q, np.zeros((0, n)), np.zeros(0), x0)

    def _layer(self, k, P, q, G, h, x):
        block = self.blocks[k]
        if not block.relu:
            yield P, q, G, h
            return
        yield from self._neuron(k, 0, P, q, np.ones(len(q)), G, h, x)

    def _neuron(self, k, j, P, q, gate, G, h, x):
        if j == len(q):
            nxt = self.blocks[k + 1]
            yield from self._layer(k + 1, nxt.W @ (gate[:, None] * P), nxt.W @ (gate * q) + nxt.c, G, h, x)
            return
        if self.lower[k][j] >= 0:
            yield from self._neuron(k, j + 1, P, q, gate, G, h, x)
            return
        if self.upper[k][j] <= 0:
            yield from self._neuron(k, j + 1, P, q, _set(gate, j, 0.0), G, h, x)
            return
        here = P[j] @ x + q[j] >= 0  # the branch holding the current point needs no LP
        for active in (here, not here):
            sign = -1.0 if active else 1.0  # active: -(P_j x + q_j) <= 0
            G2, h2 = np.vstack([G, sign * P[j]]), np.append(h, -sign * q[j])
            x2 = x
            if active != here:
                feasible, x2, _ = self._lp(np.zeros(len(x)), G2, h2)
                if not feasible:
                    continue
            yield from self._neuron(k, j + 1, P, q, _set(gate, j, 1.0 if active else 0.0), G2, h2, x2)

    def unsafe_point(self, A: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        for P, q, G, h in self.leaves():
            feasible, x, _ = self._lp(np.zeros(P.shape[1]), np.vstack([G, A @ P]), np.append(h, b - A @ q))
            if feasible:
                return x
        return None

    def minimum(self, c: np.ndarray) -> float:
        best = np.inf
        for P, q, G, h in self.leaves():
            feasible, _, value = self._lp(c @ P, G, h)
            if feasible:
                best = min(best, value + c @ q)
        return best


def _set(a: np.ndarray, j: int, v: float) -> np.ndarray:
    out = a.copy()
    out[j] = v
    return out


def enumeration_verdict(net: Network, spec: Spec) -> Status:
    for case in spec.cases:
        en = Enumerator(net, case.lower, case.upper)
        for poly in case.polytopes:
            if en.unsafe_point(poly.A, poly.b) is not None:
                return Status.SAT
    return Status.UNSAT


def _check_witness(net: Network, spec: Spec, x: np.ndarray) -> None:
    y = forward(net, torch.as_tensor(x)[None]).reshape(-1).numpy()
    assert spec.is_violated_by(x, y), "the engine's witness is not a counterexample"


@pytest.mark.parametrize("batch", range(BATCHES))
def test_milp_smt_enumeration_agree(batch: int) -> None:
    tally = {Status.SAT: 0, Status.UNSAT: 0}
    for seed in range(batch * PER_BATCH, (batch + 1) * PER_BATCH):
        net = random_net(seed)
        spec = random_spec(net, seed)
        milp = milp_verify(net, spec, Deadline.after(30), MilpOptions(crown_bounds=False))
        smt = smt_verify(net, spec, Deadline.after(30), SmtOptions(fork=False))
        oracle = enumeration_verdict(net, spec)
        assert (milp.verdict, smt.verdict) == (oracle, oracle), f"seed {seed}"
        for outcome in (milp, smt):
            if outcome.verdict is Status.SAT:
                _check_witness(net, spec, outcome.x)
        tally[oracle] += 1
    assert min(tally.values()) >= PER_BATCH // 6, tally  # both answers well represented


@pytest.mark.parametrize("seed", range(12))
def test_milp_optimum_equals_enumerated_optimum(seed: int) -> None:
    net = random_net(seed)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1.0, 0.0, net.n_inputs)
    hi = lo + rng.uniform(0.1, 0.4, net.n_inputs)
    c = rng.standard_normal(net.n_outputs)
    enc = encode_network(net, lo, hi)
    cost, offset = linear_objective(enc, c)
    res = solve_mip(replace(enc.problem, cost=cost, offset=offset), 30)
    want = Enumerator(net, lo, hi).minimum(c)
    assert res.status is MipStatus.FEASIBLE
    assert res.objective == pytest.approx(want, abs=1e-6 * (1 + abs(want)))


def tiny_net(seed: int) -> Network:
    """2-4 inputs, one or two ReLU layers of 2-4 neurons: small enough for z3 without bounds."""
    rng = np.random.default_rng(seed)
    b = Builder((int(rng.integers(2, 5)),), torch.Generator().manual_seed(seed))
    for _ in range(int(rng.integers(1, 3))):
        b.dense(int(rng.integers(2, 5)))
        b.relu()
    b.dense(int(rng.integers(2, 4)))
    return _single_weights(b.build())


def test_pure_z3_agrees_with_milp_and_enumeration() -> None:
    """z3 on the bare disjunctive encoding (no bounds, no LP, no splitting) is an exact
    oracle independent of every bound; it must agree with the MILP and the enumeration."""
    opts = SmtOptions(bounds="none", lp_probe=False, split_unstable=0, fork=False)
    tally = {Status.SAT: 0, Status.UNSAT: 0}
    for seed in range(60):
        net = tiny_net(seed)
        spec = random_spec(net, seed)
        smt = smt_verify(net, spec, Deadline.after(30), opts)
        milp = milp_verify(net, spec, Deadline.after(30), MilpOptions(crown_bounds=False, lp_tighten=False))
        oracle = enumeration_verdict(net, spec)
        assert (smt.verdict, milp.verdict) == (oracle, oracle), f"seed {seed}"
        if smt.verdict is Status.SAT:
            _check_witness(net, spec, smt.x)
        tally[oracle] += 1
    assert min(tally.values()) >= 10, tally
