"""Soundness campaign: every engine against an exact oracle on adversarial families of tiny networks.

The truth comes from this module alone, independent of the verifier's bounding and encoding code:
the network's real-arithmetic semantics with every stored weight and every spec number taken as the
exact rational value of its float (``fractions.Fraction``).  ``unsat`` is z3's answer on that encoding
(linear real arithmetic, ReLU as a disjunction); ``sat`` is a witness whose exact margin, recomputed
with rationals, lies inside the unsafe set.

A verifier answer is *wrong* when it is ``unsat`` and the truth is ``sat``, or ``sat`` with a
counterexample that fails our own replay (onnxruntime on ``x`` cast to the model's input dtype, ``x`` in
the box and the outputs in an unsafe polytope, with zero tolerance).  A ``sat`` where the exact truth is
``unsat`` is reported apart: only the float rounding of the model can make it valid.

    python -m benchmarks.soundness --count 1000 --out benchmarks/results/soundness_campaign.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import z3

from verifier.network import Add, Conv, Dense, Input, Network, Node, Relu, Reshape, Scale
from vnnlib.spec import Case, Polytope, Spec

log = logging.getLogger("benchmarks.soundness")

ENGINES: dict[str, dict] = {
    "auto": {"engine": "auto"},
    "bab_input": {"engine": "bab", "bab": {"branching": "input"}},
    "bab_input_fwd": {"engine": "bab", "bab": {"branching": "input", "input": {"forward": "on"}}},
    "bab_input_filter": {"engine": "bab", "bab": {"branching": "input", "input": {"forward": "filter"}}},
    "bab_fsb": {"engine": "bab", "bab": {"branching": "relu", "relu": {"branching": "fsb"}}},
    "bab_babsr": {"engine": "bab", "bab": {"branching": "relu", "relu": {"branching": "babsr"}}},
    "bab_fixed": {"engine": "bab", "bab": {"branching": "relu", "relu": {"intermediate": "fixed"}}},
    "milp": {"engine": "milp"},
    "smt": {"engine": "smt"},
}
COLUMNS = ("family", "seed", "engine", "truth", "truth_witness_replays", "verdict", "time_s", "wrong", "certificate",
           "note")
# z3's work on a box before it is split in halves, in its deterministic resource units (about 1e5 per second
# here): a wall-clock limit would split more under load, and the tree could then outgrow the oracle's timeout
FIRST_RLIMIT = 1_000_000  # on a whole box
BOX_RLIMIT = 150_000  # on a half box
MAX_SPLIT_DEPTH = 40
BOUND_LEMMAS = True  # state each neuron's interval bounds to z3
DESCENT_STEPS = 8  # oracle calls spent walking the threshold down towards the exact optimum


# ----------------------------------------------------------------------------------------------------
# exact semantics: interval arithmetic over rationals (exact at a point) and the z3 encoding


Rows = list[tuple[list[tuple[int, Fraction]], Fraction]]  # per output: [(input index, coefficient)], constant


def _q(values) -> np.ndarray:
    """Exact rationals of a float array (object array of ``Fraction``, same shape)."""
    arr = np.asarray(values.detach().cpu().double().numpy() if hasattr(values, "detach") else values, np.float64)
    out = np.empty(arr.shape, dtype=object)
    for i, v in np.ndenumerate(arr):
        out[i] = Fraction(float(v))
    return out


def _affine_rows(node: Node, in_shape: tuple[int, ...]) -> Rows:
    """Each output of a Dense, Conv or Scale node as exact coefficients over the flat input."""
    op = node.op
    if isinstance(op, Dense):
        w, b = _q(op.weight), _q(op.bias)
        return [([(j, w[i, j]) for j in range(w.shape[1]) if w[i, j] != 0], b[i]) for i in range(w.shape[0])]
    if isinstance(op, Scale):
        size = int(np.prod(node.shape))
        s = np.broadcast_to(_q(op.scale), node.shape).reshape(-1)
        c = np.broadcast_to(_q(op.shift), node.shape).reshape(-1)
        return [([(i, s[i])] if s[i] != 0 else [], c[i]) for i in range(size)]
    if isinstance(op, Conv):
        return _conv_rows(op, in_shape, node.shape)
    raise TypeError(f"soundness oracle: {type(op).__name__} is not an affine node")


def _conv_rows(op: Conv, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Rows:
    """Direct convolution (cross-correlation, zero padding, groups, dilation) as rows."""
    w, b = _q(op.weight), _q(op.bias)
    c_in, h, wd = in_shape
    c_out, oh, ow = out_shape
    per_group_in, per_group_out = c_in // op.groups, c_out // op.groups
    rows: Rows = []
    for co in range(c_out):
        g = co // per_group_out
        for y in range(oh):
            for x in range(ow):
                terms = []
                for ci in range(per_group_in):
                    for ki in range(w.shape[2]):
                        for kj in range(w.shape[3]):
                            iy = y * op.stride[0] - op.padding[0] + ki * op.dilation[0]
                            ix = x * op.stride[1] - op.padding[1] + kj * op.dilation[1]
                            if 0 <= iy < h and 0 <= ix < wd and w[co, ci, ki, kj] != 0:
                                terms.append((((g * per_group_in + ci) * h + iy) * wd + ix, w[co, ci, ki, kj]))
                rows.append((terms, b[co]))
    return rows


def _zq(v: Fraction) -> z3.ArithRef:
    return z3.RealVal(f"{v.numerator}/{v.denominator}")


class ExactNet:
    """Rational interval bounds of every node on a box (exact values on a point box), and optionally
    the z3 encoding of the network on that box (``encode=True``)."""

    def __init__(self, net: Network, lower, upper, solver: z3.Solver | None = None) -> None:
        self.solver = solver
        self.count = 0
        lo, hi = np.asarray(lower, dtype=object).reshape(-1), np.asarray(upper, dtype=object).reshape(-1)
        lo = np.array([Fraction(v) for v in lo], dtype=object)
        hi = np.array([Fraction(v) for v in hi], dtype=object)
        self.inputs = [self._input(i, a, b) for i, (a, b) in enumerate(zip(lo, hi))]
        values: list[tuple[np.ndarray, np.ndarray, list]] = []
        for node in net.nodes:
            values.append(self._node(node, values, net, (lo, hi)))
        self.lower, self.upper, self.exprs = values[net.output]

    def _fresh(self, prefix: str) -> z3.ArithRef:
        self.count += 1
        return z3.Real(f"{prefix}{self.count}")

    def _input(self, i: int, a: Fraction, b: Fraction):
        if self.solver is None or a == b:
            return None if self.solver is None else _zq(a)
        v = z3.Real(f"x{i}")
        self.solver.add(v >= _zq(a), v <= _zq(b))
        return v

    def _node(self, node: Node, values: list, net: Network, box) -> tuple[np.ndarray, np.ndarray, list]:
        op = node.op
        if isinstance(op, Input):
            return box[0], box[1], self.inputs
        args = [values[j] for j in node.inputs]
        if isinstance(op, (Dense, Conv, Scale)):
            return self._affine(_affine_rows(node, net.nodes[node.inputs[0]].shape), *args[0])
        if isinstance(op, Relu):
            return self._relu(*args[0])
        if isinstance(op, Add):
            (la, ha, ea), (lb, hb, eb) = args
            exprs = None if self.solver is None else [self._equal("a", a + b, l_, h_)
                                                      for a, b, l_, h_ in zip(ea, eb, la + lb, ha + hb)]
            return la + lb, ha + hb, exprs
        if isinstance(op, Reshape):
            return args[0]
        raise TypeError(f"soundness oracle: unhandled node type {type(op).__name__}")

    def _equal(self, prefix: str, expr, lo: Fraction, hi: Fraction):
        """A fresh variable equal to ``expr`` (with its implied bounds if ``BOUND_LEMMAS``); a constant when
        ``lo == hi``."""
        if lo == hi:
            return _zq(lo)
        v = self._fresh(prefix)
        self.solver.add(v == expr)
        if BOUND_LEMMAS:
            self.solver.add(v >= _zq(lo), v <= _zq(hi))
        return v

    def _affine(self, rows: Rows, lo: np.ndarray, hi: np.ndarray, exprs) -> tuple[np.ndarray, np.ndarray, list]:
        out_lo = np.empty(len(rows), dtype=object)
        out_hi = np.empty(len(rows), dtype=object)
        out_e = None if self.solver is None else []
        for i, (terms, const) in enumerate(rows):
            out_lo[i] = const + sum((c * (lo[j] if c > 0 else hi[j]) for j, c in terms), Fraction(0))
            out_hi[i] = const + sum((c * (hi[j] if c > 0 else lo[j]) for j, c in terms), Fraction(0))
            if out_e is not None:
                expr = z3.Sum([_zq(c) * exprs[j] for j, c in terms] + [_zq(const)])
                out_e.append(self._equal("z", expr, out_lo[i], out_hi[i]))
        return out_lo, out_hi, out_e

    def _relu(self, lo: np.ndarray, hi: np.ndarray, exprs) -> tuple[np.ndarray, np.ndarray, list]:
        zero = Fraction(0)
        out_lo = np.array([max(v, zero) for v in lo], dtype=object)
        out_hi = np.array([max(v, zero) for v in hi], dtype=object)
        if self.solver is None:
            return out_lo, out_hi, None
        out_e = []
        for a, b, z in zip(lo, hi, exprs):
            if b <= 0:
                out_e.append(_zq(zero))
            elif a >= 0:
                out_e.append(z)
            else:  # max(z, 0) as a disjunction (the triangle relaxation as a lemma makes z3 slower, measured)
                r = self._fresh("r")
                self.solver.add(r >= 0, r >= z, z3.Or(r == z, r == 0))
                out_e.append(r)
        return out_lo, out_hi, out_e


def exact_outputs(net: Network, x) -> np.ndarray:
    """``f(x)`` in exact rational arithmetic (object array of ``Fraction``) at a point ``x``."""
    point = [Fraction(v) if isinstance(v, Fraction) else Fraction(float(v)) for v in np.asarray(x, object).ravel()]
    return ExactNet(net, point, point).lower


def exact_margin(net: Network, polys: tuple[tuple[np.ndarray, np.ndarray], ...], x) -> Fraction:
    """``min_p max_j (A_pj f(x) - b_pj)`` exactly: the spec is violated at ``x`` iff it is ``<= t``
    for the polytopes ``A_p y <= b_p + t``."""
    y = exact_outputs(net, x)
    return min(max(sum((Fraction(float(a)) * v for a, v in zip(row, y)), Fraction(0)) - Fraction(float(b))
                   for row, b in zip(A, b0)) for A, b0 in polys)


@dataclass
class Truth:
    """The exact verdict: ``sat`` (with a rational witness), ``unsat``, or ``dropped`` (z3 timeout)."""

    verdict: str
    witness: tuple[Fraction, ...] | None = None
    case: int | None = None
    time: float = 0.0
    replays: bool | None = None  # the witness rounded to float64 passes the onnxruntime replay

    @property
    def x(self) -> np.ndarray | None:
        return None if self.witness is None else np.array([float(v) for v in self.witness])


def _row_holds(a: np.ndarray, b: float, strict: bool, y: list) -> z3.BoolRef:
    lhs = z3.Sum([_zq(Fraction(float(c))) * v for c, v in zip(a, y) if c != 0] + [_zq(Fraction(0))])
    rhs = _zq(Fraction(float(b)))
    return lhs < rhs if strict else lhs <= rhs


def exact_check(net: Network, spec: Spec, timeout: float) -> Truth:
    """Decide ``spec`` on ``net`` exactly within ``timeout`` seconds: z3 on each case's box, and on halves of
    a box that z3 does not decide within ``BOX_RLIMIT`` (tighter interval bounds fix more ReLUs)."""
    start = time.monotonic()
    deadline = start + timeout
    for index, case in enumerate(spec.cases):
        lo, hi = _q(case.lower), _q(case.upper)
        free = [i for i in range(lo.shape[0]) if lo[i] < hi[i]]
        boxes = [(lo, hi, 0)]
        while boxes:
            lo, hi, depth = boxes.pop()
            left = deadline - time.monotonic()
            if left <= 0:
                return Truth("dropped", time=time.monotonic() - start)
            splittable = bool(free) and depth < MAX_SPLIT_DEPTH
            rlimit = (FIRST_RLIMIT if depth == 0 else BOX_RLIMIT) if splittable else 0
            answer, x = _z3_box(net, lo, hi, case.polytopes, left, rlimit)
            if answer == z3.sat:
                return Truth("sat", x, index, time.monotonic() - start)
            if answer == z3.unsat:
                continue
            if not splittable:
                return Truth("dropped", time=time.monotonic() - start)
            d = max(free, key=lambda i: (hi[i] - lo[i]) / (case.upper[i] - case.lower[i]))
            mid = (lo[d] + hi[d]) / 2
            left_hi, right_lo = hi.copy(), lo.copy()
            left_hi[d], right_lo[d] = mid, mid
            boxes += [(right_lo, hi, depth + 1), (lo, left_hi, depth + 1)]
    return Truth("unsat", time=time.monotonic() - start)


def _z3_box(net: Network, lo: np.ndarray, hi: np.ndarray, polytopes: tuple[Polytope, ...], timeout: float,
            rlimit: int = 0) -> tuple[z3.CheckSatResult, tuple[Fraction, ...] | None]:
    """z3's answer on one rational box within ``timeout`` seconds and ``rlimit`` resource units (0: no limit),
    with a rational witness on sat."""
    solver = z3.SolverFor("QF_LRA")
    solver.set("timeout", max(1, int(timeout * 1000)))
    solver.set("rlimit", rlimit)
    enc = ExactNet(net, lo, hi, solver)
    solver.add(z3.Or([z3.And([_row_holds(a, b, s, enc.exprs) for a, b, s in zip(p.A, p.b, p.strict)])
                      for p in polytopes]))
    answer = solver.check()
    if answer != z3.sat:
        return answer, None
    model = solver.model()
    return answer, tuple(_model_value(model, v, lo[i]) for i, v in enumerate(enc.inputs))


def _model_value(model: z3.ModelRef, v: z3.ArithRef, fallback: float) -> Fraction:
    value = model.eval(v, model_completion=True)
    if isinstance(value, z3.RatNumRef):
        return value.as_fraction()
    return Fraction(fallback)


def in_spec_exactly(net: Network, spec: Spec, case: int, x: tuple[Fraction, ...]) -> bool:
    """Whether rational ``x`` lies in the box of ``case`` and its exact outputs in one of its polytopes."""
    c = spec.cases[case]
    if not all(Fraction(float(a)) <= v <= Fraction(float(b)) for a, b, v in zip(c.lower, c.upper, x)):
        return False
    y = exact_outputs(net, np.array(x, dtype=object))
    for p in c.polytopes:
        lhs = [sum((Fraction(float(a)) * v for a, v in zip(row, y)), Fraction(0)) for row in p.A]
        if all((v < Fraction(float(b))) if s else (v <= Fraction(float(b))) for v, b, s in zip(lhs, p.b, p.strict)):
            return True
    return False


def witness_replays(onnx_path: Path, spec: Spec, x: np.ndarray) -> bool:
    """Whether ``x`` (float64) passes the verifier's own strict onnxruntime replay."""
    from verifier.validate import Replayer, validate

    return validate(Replayer(onnx_path), spec, np.asarray(x, dtype=np.float64)) is not None


# ----------------------------------------------------------------------------------------------------
# problem families


PolySet = tuple[tuple[np.ndarray, np.ndarray], ...]  # polytopes (A, b0): unsafe when A y <= b0 + t


@dataclass(frozen=True, eq=False)
class Template:
    """A network and cases whose unsafe threshold ``t`` is still to be placed (or a fixed spec)."""

    net: Network
    cases: tuple[tuple[np.ndarray, np.ndarray, PolySet], ...] = ()  # (lower, upper, polytopes)
    hints: tuple[np.ndarray, ...] = ()  # points where the margin is known to be small
    scale: float | None = None  # the margin's natural size (None: the spread of sampled margins)
    fixed: Spec | None = None  # a spec that needs no threshold
    note: str = ""
    strict: frozenset[tuple[int, int]] = frozenset()  # (case, polytope) whose rows are strict (<)

    def spec(self, t: float) -> Spec:
        if self.fixed is not None:
            return self.fixed
        cases = tuple(Case(lo, hi, tuple(Polytope(A, b0 + t, np.full(len(b0), (c, p) in self.strict))
                                         for p, (A, b0) in enumerate(polys)))
                      for c, (lo, hi, polys) in enumerate(self.cases))
        return Spec(cases, self.net.n_inputs, self.net.n_outputs)


class Net:
    """Appends IR nodes with explicit float64 weights; ``build`` casts to the model dtype."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.nodes: list[Node] = [Node(Input(), (), tuple(shape), "x")]

    @property
    def last(self) -> int:
        return len(self.nodes) - 1

    def add(self, op, inputs: tuple[int, ...], shape: tuple[int, ...]) -> int:
        self.nodes.append(Node(op, tuple(inputs), tuple(shape), f"n{len(self.nodes)}"))
        return self.last

    def flat(self, src: int) -> int:
        shape = self.nodes[src].shape
        return src if len(shape) == 1 else self.add(Reshape(), (src,), (int(np.prod(shape)),))

    def dense(self, w: np.ndarray, b: np.ndarray, src: int | None = None) -> int:
        src = self.flat(self.last if src is None else src)
        return self.add(Dense(torch.tensor(w, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)),
                        (src,), (w.shape[0],))

    def conv(self, w: np.ndarray, b: np.ndarray, stride: int, padding: tuple[int, int, int, int],
             src: int | None = None) -> int:
        src = self.last if src is None else src
        _, h, wd = self.nodes[src].shape
        oh = (h + padding[0] + padding[2] - w.shape[2]) // stride + 1
        ow = (wd + padding[1] + padding[3] - w.shape[3]) // stride + 1
        op = Conv(torch.tensor(w, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), (stride, stride),
                  padding)
        return self.add(op, (src,), (w.shape[0], oh, ow))

    def relu(self, src: int | None = None) -> int:
        src = self.last if src is None else src
        return self.add(Relu(), (src,), self.nodes[src].shape)

    def build(self, dtype: torch.dtype) -> Network:
        return Network(tuple(self.nodes), self.last).to(dtype=dtype)


def _width(rng: np.random.Generator) -> int:
    return int(rng.integers(3, 13))


def _random_dense(rng: np.random.Generator, net: Net, sizes: list[int], scales: list[float] | None = None) -> int:
    """Dense/ReLU layers of ``sizes`` (the last without ReLU) on ``net.last``."""
    for i, m in enumerate(sizes):
        n = int(np.prod(net.nodes[net.last].shape))
        s = 1.0 if scales is None else scales[i]
        net.dense(s * rng.standard_normal((m, n)) / np.sqrt(n), s * 0.3 * rng.standard_normal(m))
        if i < len(sizes) - 1:
            net.relu()
    return net.last


def _as_dtype(v: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    return v.astype(np.float32).astype(np.float64) if dtype == torch.float32 else v.astype(np.float64)


def _random_box(rng: np.random.Generator, n: int, dtype: torch.dtype, centre_scale: float = 1.0,
                width: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    centre = centre_scale * rng.standard_normal(n)
    half = width * (0.05 + 0.5 * rng.random(n))
    return _as_dtype(centre - half, dtype), _as_dtype(centre + half, dtype)


def _rows(rng: np.random.Generator, n_out: int, rows: int, offsets: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((rows, n_out)), offsets * rng.standard_normal(rows)


def needle(rng: np.random.Generator) -> Template:
    """A bump of relative width 1e-4 ... 3e-3 behind exact split-identity layers, plus a small random net."""
    n = int(rng.integers(4, 6))
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    lo, hi = _random_box(rng, n, dtype, width=2.0)
    c = _as_dtype(lo + (0.15 + 0.7 * rng.random(n)) * (hi - lo), dtype)
    if rng.random() < 0.2:  # the peak on a face of the box
        i = int(rng.integers(n))
        c[i] = lo[i] if rng.random() < 0.5 else hi[i]
    w = (10.0 ** rng.uniform(-4, -2.5)) * (hi - lo)
    eye = np.eye(n)
    net = Net((n,))
    net.dense(np.vstack([eye, -eye]), np.concatenate([-c, c]), src=0)  # x - c, c - x
    net.relu()
    for _ in range(2 if n == 4 else 1):  # relu(h) - relu(-h) = h: the identity, exact in real arithmetic
        split = np.vstack([np.hstack([eye, -eye]), np.hstack([-eye, eye])])
        net.dense(split, np.zeros(2 * n))
        net.relu()
    net.dense(np.concatenate([-1.0 / w, -1.0 / w])[None], np.ones(1))  # 1 - sum |x_i - c_i| / w_i
    bump = net.relu()
    n_out = int(rng.integers(1, 3))
    alpha = float(rng.choice([0.0, 0.05, 0.2]))
    k = int(rng.integers(3, 7))
    net.dense(rng.standard_normal((k, n)) / np.sqrt(n), 0.3 * rng.standard_normal(k), src=0)
    g = net.relu()
    head = np.zeros((n_out, 1))
    head[0, 0] = 1.0
    if n_out > 1:
        head[1:, 0] = rng.standard_normal(n_out - 1)
    a = net.dense(head, np.zeros(n_out), src=bump)
    gw = alpha * rng.standard_normal((n_out, k)) / np.sqrt(k)
    bb = net.dense(gw, alpha * 0.3 * rng.standard_normal(n_out), src=g)
    net.add(Add(), (a, bb), (n_out,))
    A = np.zeros((1, n_out))
    A[0, 0] = -1.0  # unsafe: y_0 >= -t, the bump's top
    return Template(net.build(dtype), ((lo, hi, ((A, np.zeros(1)),)),), hints=(c,), scale=1.0,
                    note=f"n={n} alpha={alpha} w/width={w[0] / (hi[0] - lo[0]):.1e}")


def _ulp_off(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    """``v`` (float32 values) moved by 1-3 float64 ulps, so that float32 cannot represent it."""
    out = v.astype(np.float64).copy()
    for i in range(out.size):
        direction = np.inf if rng.random() < 0.5 else -np.inf
        for _ in range(int(rng.integers(1, 4))):
            out[i] = np.nextafter(out[i], direction)
    return out


def fixed_inputs(rng: np.random.Generator) -> Template:
    """A float32 conv net on a box whose inputs are mostly fixed at values float32 cannot represent."""
    side = int(rng.choice([6, 8]))
    n = side * side
    net = Net((1, side, side))
    net.conv(rng.standard_normal((2, 1, 3, 3)) / 3, 0.3 * rng.standard_normal(2), 2, (1, 1, 1, 1))
    net.relu()
    _random_dense(rng, net, [int(rng.integers(4, 8)), 2])
    model = net.build(torch.float32)
    base = _ulp_off(rng, rng.standard_normal(n).astype(np.float32))
    free = rng.choice(n, size=int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8])), replace=False)  # 0: a point box
    lo, hi = base.copy(), base.copy()
    half = 10.0 ** rng.uniform(-3, -0.5, free.size)
    lo[free], hi[free] = _ulp_off(rng, (base[free] - half).astype(np.float32)), base[free] + half
    note = f"side={side} free={free.size}"
    if rng.random() < 0.3:  # an output interval holding every sampled output, a little widened
        j = int(rng.integers(2))
        ys = _sample_outputs(model, lo, hi, rng)[:, j]
        pad = 1e-6 * (1 + np.abs(ys).max()) + 1e-3 * (ys.max() - ys.min())
        A = np.zeros((2, 2))
        A[0, j], A[1, j] = 1.0, -1.0
        spec = Spec((Case(lo, hi, (Polytope(A, np.array([ys.max() + pad, -(ys.min() - pad)])),)),), n, 2)
        return Template(model, fixed=spec, note=note + " interval")
    A, b0 = _rows(rng, 2, int(rng.integers(1, 3)))
    return Template(model, ((lo, hi, ((A, b0),)),), note=note)


def scales(rng: np.random.Generator) -> Template:
    """A dense net with per-layer scale factors 1e-3 ... 1e3, a normalization Scale, inputs at any scale."""
    n_in, n_out = int(rng.integers(2, 7)), int(rng.integers(1, 4))
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    x_scale = 10.0 ** rng.uniform(-3, 3)
    lo, hi = _random_box(rng, n_in, dtype, centre_scale=x_scale, width=x_scale * 10.0 ** rng.uniform(-2, 0))
    net = Net((n_in,))
    std = x_scale * 10.0 ** rng.uniform(-1, 1, n_in)
    mean = x_scale * rng.standard_normal(n_in)
    net.add(Scale(torch.tensor(1.0 / std), torch.tensor(-mean / std)), (0,), (n_in,))
    layers = [_width(rng) for _ in range(int(rng.integers(1, 3)))] + [n_out]
    _random_dense(rng, net, layers, list(10.0 ** rng.uniform(-3, 3, len(layers))))
    A, b0 = _rows(rng, n_out, int(rng.integers(1, 3)))
    return Template(net.build(dtype), ((lo, hi, ((A, b0),)),), note=f"x_scale={x_scale:.1e}")


def dead_dup(rng: np.random.Generator) -> Template:
    """A dense net with duplicated, scaled-duplicate, opposite, dead, always-active and always-zero neurons."""
    n_in, n_out = int(rng.integers(2, 7)), int(rng.integers(1, 4))
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    lo, hi = _random_box(rng, n_in, dtype)
    reach = float(np.abs(np.concatenate([lo, hi])).max())
    net = Net((n_in,))
    kinds = []
    for width in (int(rng.integers(5, 11)), int(rng.integers(4, 9))):
        n = int(np.prod(net.nodes[net.last].shape))
        w, b = rng.standard_normal((width, n)) / np.sqrt(n), 0.3 * rng.standard_normal(width)
        for i in range(1, width):
            kind = str(rng.choice(["dup", "scaled", "neg", "dead", "zero", "live", "keep", "keep"]))
            j = int(rng.integers(0, i))
            if kind == "dup":
                w[i], b[i] = w[j], b[j]
            elif kind == "scaled":
                w[i], b[i] = 2.0 * w[j], 2.0 * b[j]
            elif kind == "neg":
                w[i], b[i] = -w[j], -b[j]
            elif kind == "dead":  # below zero on any input reachable by interval bounds
                b[i] = -(np.abs(w[i]).sum() * reach * 10 + 1) if n == n_in else -1e3
            elif kind in ("zero", "live"):
                w[i], b[i] = 0.0, (0.0 if kind == "zero" else abs(b[i]) + 0.5)
            kinds.append(kind)
        net.dense(w, b)
        net.relu()
    _random_dense(rng, net, [n_out])
    A, b0 = _rows(rng, n_out, int(rng.integers(1, 3)))
    counts = Counter(kinds)
    return Template(net.build(dtype), ((lo, hi, ((A, b0),)),), note=" ".join(f"{k}={v}" for k, v in counts.items()))


def disjunctive(rng: np.random.Generator) -> Template:
    """A dense net and a spec with 2-3 cases (boxes), each with 1-3 polytopes of 1-3 rows."""
    n_in, n_out = int(rng.integers(2, 6)), int(rng.integers(2, 5))
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    net = Net((n_in,))
    _random_dense(rng, net, [_width(rng) for _ in range(int(rng.integers(1, 3)))] + [n_out])
    cases, boxes = [], []
    for _ in range(int(rng.integers(2, 4))):
        lo, hi = _random_box(rng, n_in, dtype)
        box = str(rng.choice(["new", "new", "same", "inside"])) if cases else "new"
        if box == "same":  # an equal box: the reader merges the two cases
            lo, hi = cases[-1][0], cases[-1][1]
        elif box == "inside":  # a box nested in the previous one
            a, b = cases[-1][0], cases[-1][1]
            lo, hi = np.sort(_as_dtype(a + rng.random((2, n_in)) * (b - a), dtype), axis=0)
        boxes.append(box)
        polys = tuple(_rows(rng, n_out, int(rng.integers(1, 4)), offsets=0.3) for _ in range(int(rng.integers(1, 4))))
        cases.append((lo, hi, polys))
    strict = frozenset((c, p) for c, case in enumerate(cases) for p in range(len(case[2])) if rng.random() < 0.25)
    return Template(net.build(dtype), tuple(cases), note=f"cases={'+'.join(boxes)} strict={len(strict)}",
                    strict=strict)


def conv(rng: np.random.Generator) -> Template:
    """A float32 conv net (padding, stride) on a 1x4x4 or 2x3x3 input, ReLU, dense layers."""
    shape = (1, 4, 4) if rng.random() < 0.5 else (2, 3, 3)
    k = int(rng.integers(2, 4))
    stride = int(rng.integers(1, 3))
    pad = tuple(int(v) for v in rng.integers(0, 2, 4))
    oh = (shape[1] + pad[0] + pad[2] - k) // stride + 1
    ow = (shape[2] + pad[1] + pad[3] - k) // stride + 1
    c_out = max(1, min(3, 20 // (oh * ow)))
    net = Net(shape)
    net.conv(rng.standard_normal((c_out, shape[0], k, k)) / (k * np.sqrt(shape[0])), 0.3 * rng.standard_normal(c_out),
             stride, pad)
    net.relu()
    n_out = int(rng.integers(2, 4))
    _random_dense(rng, net, [int(rng.integers(4, 9)), n_out])
    lo, hi = _random_box(rng, int(np.prod(shape)), torch.float32, width=0.5)
    A, b0 = _rows(rng, n_out, int(rng.integers(1, 3)))
    return Template(net.build(torch.float32), ((lo, hi, ((A, b0),)),),
                    note=f"in={shape} k={k} s={stride} pad={pad} relus={c_out * oh * ow}+")


def residual(rng: np.random.Generator) -> Template:
    """Dense/ReLU blocks with Add skip connections (over an affine node or over a ReLU block)."""
    n_in, n_out = int(rng.integers(2, 7)), int(rng.integers(1, 4))
    dtype = torch.float64 if rng.random() < 0.7 else torch.float32
    w = int(rng.integers(4, 8))
    net = Net((n_in,))
    h = _random_dense(rng, net, [w])
    r = net.relu()
    _random_dense(rng, net, [w, w])
    skip = h if rng.random() < 0.5 else r
    net.add(Add(), (net.last, skip), (w,))
    net.relu()
    _random_dense(rng, net, [n_out])
    lo, hi = _random_box(rng, n_in, dtype)
    A, b0 = _rows(rng, n_out, int(rng.integers(1, 3)))
    return Template(net.build(dtype), ((lo, hi, ((A, b0),)),), note=f"w={w} skip={'affine' if skip == h else 'relu'}")


FAMILIES: dict[str, Callable[[np.random.Generator], Template]] = {
    "needle": needle, "fixed_inputs": fixed_inputs, "scales": scales, "dead_dup": dead_dup,
    "disjunctive": disjunctive, "conv": conv, "residual": residual,
}


# ----------------------------------------------------------------------------------------------------
# threshold placement: sampling and gradient descent (hints only), then the exact oracle walks it down


def _sample_box(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, count: int) -> np.ndarray:
    """Half uniform, half arcsine-distributed points (crowding the faces), plus corners for few free inputs."""
    n = lo.shape[0]
    t = np.vstack([rng.random((count // 2, n)), np.sin(np.pi / 2 * rng.random((count - count // 2, n))) ** 2])
    free = np.nonzero(hi > lo)[0]
    if 0 < free.size <= 6:
        corners = np.zeros((2 ** free.size, n))
        corners[:, free] = np.array(np.meshgrid(*[[0.0, 1.0]] * free.size)).reshape(free.size, -1).T
        t = np.vstack([t, corners])
    return np.clip(lo + t * (hi - lo), lo, hi)  # lo + 1 * (hi - lo) may round past hi


def _forward64(net: Network, x: torch.Tensor) -> torch.Tensor:
    from verifier.forward import forward

    return forward(net, x).reshape(x.shape[0], -1)


def _sample_outputs(net: Network, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    with torch.no_grad():
        return _forward64(net.to(dtype=torch.float64), torch.tensor(_sample_box(rng, lo, hi, 512))).numpy()


def _margins(net64: Network, x: torch.Tensor, polys: PolySet) -> torch.Tensor:
    y = _forward64(net64, x)
    per = [(y @ torch.tensor(A).T - torch.tensor(b0)).amax(1) for A, b0 in polys]
    return torch.stack(per, 1).amin(1)


def _descend(net64: Network, x: torch.Tensor, lo: np.ndarray, hi: np.ndarray, polys: PolySet,
             steps: int = 40) -> tuple[float, np.ndarray]:
    """Projected sign-gradient descent of the margin from the points ``x`` ``(N, n)``: the best value and point."""
    tlo, thi = torch.tensor(lo), torch.tensor(hi)
    start = x.clone()
    for step in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(_margins(net64, x, polys).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - 0.05 * 0.9 ** step * (thi - tlo) * g.sign(), tlo), thi)
    with torch.no_grad():
        xs = torch.cat([start, x])
        m = _margins(net64, xs, polys)
    i = int(m.argmin())
    return float(m[i]), xs[i].numpy().copy()


def approx_minimum(tpl: Template, rng: np.random.Generator) -> tuple[float, int, np.ndarray, float]:
    """The smallest margin found by sampling and descent: value, case, point, and the spread of the
    sampled margins."""
    net64 = tpl.net.to(dtype=torch.float64)
    best, spread = (np.inf, 0, None), 0.0
    for index, (lo, hi, polys) in enumerate(tpl.cases):
        xs = _sample_box(rng, lo, hi, 1024)
        hints = [np.clip(h, lo, hi) for h in tpl.hints]
        xs = torch.tensor(np.vstack([xs, *hints]) if hints else xs)
        with torch.no_grad():
            m = _margins(net64, xs, polys)
        spread = max(spread, float(m.std()))
        value, x = _descend(net64, xs[m.argsort()[:64]], lo, hi, polys, steps=60)
        if value < best[0]:
            best = (value, index, x)
    return best[0], best[1], best[2], spread


def _improve(tpl: Template, best: tuple[Fraction, int, tuple]) -> tuple[Fraction, int, tuple]:
    """``best`` (exact margin, case, rational point), or a better point found by descent from it."""
    lo, hi, polys = tpl.cases[best[1]]
    x0 = torch.tensor([[float(v) for v in best[2]]], dtype=torch.float64)
    _, x = _descend(tpl.net.to(dtype=torch.float64), x0, lo, hi, polys, steps=20)
    m = exact_margin(tpl.net, polys, x)
    return (m, best[1], tuple(Fraction(float(v)) for v in x)) if m < best[0] else best


@dataclass
class Problem:
    """A generated problem with its exact truth (``truth.verdict == 'dropped'``: no truth)."""

    family: str
    seed: int
    net: Network
    spec: Spec
    truth: Truth
    note: str = ""
    oracle_time: float = 0.0
    extra: dict = field(default_factory=dict)


def _rng(family: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([list(FAMILIES).index(family), seed])


def make_problem(family: str, seed: int, z3_timeout: float = 60.0) -> Problem:
    """Generate ``family``'s problem ``seed`` and its exact truth.  The threshold walks down from the best
    known margin with the oracle until unsat (``gap`` below the best witness); odd seeds then aim at sat
    (``delta`` past the best witness), even seeds keep the unsat threshold."""
    rng = _rng(family, seed)
    tpl = FAMILIES[family](rng)
    start = time.monotonic()
    if tpl.fixed is not None:
        truth = exact_check(tpl.net, tpl.fixed, z3_timeout)
        return Problem(family, seed, tpl.net, tpl.fixed, truth, tpl.note, time.monotonic() - start)
    m_hat, case, x_hat, spread = approx_minimum(tpl, rng)
    k = int(rng.choice([1, 2, 3, 4, 6] + ([9] if tpl.net.dtype == torch.float64 else [])))  # float32: 1e-9 is noise
    delta = (tpl.scale if tpl.scale is not None else spread + 1e-3 * abs(m_hat) + 1e-12) * 10.0 ** -k
    best = (exact_margin(tpl.net, tpl.cases[case][2], x_hat), case, tuple(Fraction(float(v)) for v in x_hat))
    note_walk = ""
    gap = delta  # walk down from the best known margin in growing steps until the oracle says unsat
    t = float(best[0]) - gap
    for _ in range(DESCENT_STEPS):
        truth = exact_check(tpl.net, tpl.spec(t), max(1.0, z3_timeout - (time.monotonic() - start)))
        if truth.verdict == "dropped" and seed % 2 == 1:  # a sat problem needs no proof: the witness certifies it
            truth = Truth("sat", best[2], best[1])
            note_walk = " (z3 timeout in the walk)"
            break
        if truth.verdict != "sat":
            break
        witness = (exact_margin(tpl.net, tpl.cases[truth.case][2], truth.witness), truth.case, truth.witness)
        best = _improve(tpl, min(best, witness, key=lambda b: b[0]))
        gap *= 8
        t = float(best[0]) - gap
    else:  # the walk ran out: a sat problem below
        truth = Truth("sat", best[2], best[1])
        note_walk = " (walk ran out)"
    note = f"{tpl.note} delta=1e-{k}*{delta * 10 ** k:.2g} gap={gap / delta:g}delta{note_walk}"
    if truth.verdict == "dropped":
        return Problem(family, seed, tpl.net, tpl.spec(t), truth, note, time.monotonic() - start)
    if seed % 2 == 1 or truth.verdict == "sat":  # aim at sat: the best witness lies delta inside the unsafe set
        t = float(best[0]) + delta
        truth = Truth("sat", best[2], best[1])
    # else aim at unsat: the threshold just below the exact optimum, as the oracle checked it
    spec = tpl.spec(t)
    if truth.verdict == "sat" and not in_spec_exactly(tpl.net, spec, truth.case, truth.witness):
        raise AssertionError(f"{family} {seed}: the exact witness does not violate the final spec")
    return Problem(family, seed, tpl.net, spec, truth, note, time.monotonic() - start)


# ----------------------------------------------------------------------------------------------------
# running the verifier


class _HardTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _HardTimeout


class _Warnings(logging.Handler):
    """Collects the verifier's warnings during one run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:200])


def recheck(onnx_path: Path, spec: Spec, x: np.ndarray) -> str | None:
    """Our own strict replay of a counterexample: None if valid, else why not."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.shape[0] != spec.n_inputs or not np.all(np.isfinite(x)):
        return f"bad shape or value {x.shape}"
    inside = [c for c in spec.cases if np.all(c.lower <= x) and np.all(x <= c.upper)]
    if not inside:
        return "x outside every box"
    feed = x.astype(dtype).reshape([d if isinstance(d, int) and d > 0 else 1 for d in inp.shape])
    y = np.asarray(session.run(None, {inp.name: feed})[0], dtype=np.float64).reshape(-1)
    for case in inside:
        for p in case.polytopes:
            lhs = p.A @ y
            if np.all(np.where(p.strict, lhs < p.b, lhs <= p.b)):
                return None
    return f"outputs {y.tolist()} in no unsafe polytope"


def run_engine(problem: Problem, engine: str, onnx_path: Path, vnnlib_path: Path, timeout: float,
               via_onnx: bool, dtype: str | None = None, proof: bool = False) -> dict:
    """One verifier run and its judgement against the truth; a CSV row.  With ``proof``, an ``unsat``
    answer's certificate is checked by the independent checker (column ``certificate``)."""
    from verifier.api import verify
    from verifier.config import load_config
    cfg = load_config(overrides={**ENGINES[engine], "seed": problem.seed, "threads": 1,
                                 **({"dtype": dtype} if dtype else {}), **({"proof": True} if proof else {})})
    handler = _Warnings()
    logging.getLogger("verifier").addHandler(handler)
    notes, verdict, certificate = [], "error", ""
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout + 60))
    try:
        if via_onnx:
            result = verify(onnx_path, vnnlib_path, timeout=timeout, config=cfg)
        else:
            result = verify(problem.net, problem.spec, timeout=timeout, config=cfg, onnx_path=onnx_path)
        verdict = str(result.status)
        if proof and verdict == "unsat":
            certificate = _certificate_verdict(result, onnx_path, vnnlib_path)
    except _HardTimeout:
        notes.append(f"hard timeout: no answer {timeout + 60:.0f}s")
    except Exception as e:  # any failure of the verifier is recorded, never scored as a verdict
        notes.append(f"exception {type(e).__name__}: {str(e)[:200]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        logging.getLogger("verifier").removeHandler(handler)
    elapsed = time.monotonic() - start
    truth = problem.truth.verdict
    wrong = False
    if verdict == "sat":
        why = recheck(onnx_path, problem.spec, result.counterexample.x)
        if why is not None:
            wrong = True
            notes.append(f"WRONG: counterexample fails our replay: {why}")
        elif truth == "unsat":
            notes.append("SUSPICIOUS: sat (replayed) where the exact truth is unsat")
    elif verdict == "unsat" and truth == "sat":
        wrong = True
        notes.append("WRONG: unsat but an exact counterexample exists")
    notes += [f"warning: {m}" for m in handler.messages[:3]]
    notes.append("via onnx" if via_onnx else "via ir")
    return {"family": problem.family, "seed": problem.seed, "engine": engine, "truth": truth,
            "truth_witness_replays": problem.truth.replays, "verdict": verdict, "time_s": round(elapsed, 3),
            "wrong": wrong, "certificate": certificate, "note": "; ".join(notes)}


def _certificate_verdict(result, onnx_path: Path, vnnlib_path: Path) -> str:
    """``valid``, ``rejected: why`` or ``none: why`` for the certificate of an ``unsat`` result."""
    from verifier.certificate import check_proof

    if result.proof is None:
        return f"none: {result.message.removeprefix('no certificate: ')}"[:200]
    checked = check_proof(onnx_path, vnnlib_path, result.proof)
    return "valid" if checked.valid else f"rejected: {checked.reason}"[:200]


def _export_check(problem: Problem, onnx_path: Path, rng: np.random.Generator) -> str:
    """A note if onnxruntime on the exported model disagrees with the exact semantics beyond rounding."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    case = problem.spec.cases[0]
    for x in _sample_box(rng, case.lower, case.upper, 4)[:4]:
        exact = np.array([float(v) for v in exact_outputs(problem.net, x)])
        y = session.run(None, {inp.name: x.astype(dtype).reshape(1, *problem.net.input_shape)})[0].reshape(-1)
        if np.any(np.abs(y - exact) > 1e-3 * (1 + np.abs(exact).max())):
            return f"EXPORT MISMATCH exact {exact.tolist()} onnxruntime {y.tolist()}"
    return ""


def _canonical(spec: Spec) -> dict:
    """Each distinct box with the set of its polytopes' exact bytes (cases with equal boxes merged)."""
    out: dict = defaultdict(set)
    for c in spec.cases:
        out[c.lower.tobytes(), c.upper.tobytes()] |= {(p.A.tobytes(), p.b.tobytes(), p.strict.tobytes())
                                                      for p in c.polytopes}
    return dict(out)


def _spec_roundtrip(spec: Spec, text: str) -> str:
    """A note if the written VNN-LIB does not read back to the same boxes and polytopes, bit for bit."""
    from vnnlib.reader import parse_spec

    back = parse_spec(text, spec.n_inputs, spec.n_outputs)
    return "" if _canonical(back) == _canonical(spec) else "vnnlib read-back differs from the written spec"


def run_problem(family: str, seed: int, engines: list[str], timeout: float, z3_timeout: float,
                dtype: str | None = None, via: str = "alternate", proof: bool = False) -> list[dict]:
    """Generate one problem, decide it exactly, run every engine; the CSV rows.  The verifier reads the
    ONNX and VNN-LIB files (``via='onnx'``), or gets the network and spec objects (``'ir'``), or the first
    for seeds 0, 1 mod 4 and the second for 2, 3 (``'alternate'``); with ``proof`` always the files, and
    every ``unsat`` answer's certificate is checked."""
    from verifier.onnx_export import save_onnx
    from vnnlib.writer import write_spec

    torch.set_num_threads(1)
    problem = make_problem(family, seed, z3_timeout)
    base = {"family": family, "seed": seed, "truth": problem.truth.verdict}
    if problem.truth.verdict == "dropped":
        return [{**base, "engine": "oracle", "truth_witness_replays": None, "verdict": "", "time_s":
                 round(problem.oracle_time, 3), "wrong": False, "certificate": "",
                 "note": f"z3 timeout; {problem.note}"}]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, vnnlib_path = Path(tmp) / "model.onnx", Path(tmp) / "spec.vnnlib"
        save_onnx(problem.net, onnx_path)
        text = write_spec(problem.spec)
        vnnlib_path.write_text(text)
        if problem.truth.verdict == "sat":
            problem.truth.replays = witness_replays(onnx_path, problem.spec, problem.truth.x)
        checks = [_export_check(problem, onnx_path, _rng(family, seed)), _spec_roundtrip(problem.spec, text)]
        checks = [c for c in checks if c]
        via_onnx = proof or via == "onnx" or (via == "alternate" and seed % 4 < 2)
        rows = [run_engine(problem, e, onnx_path, vnnlib_path, timeout, via_onnx, dtype, proof) for e in engines]
    for row in rows:
        row["note"] = "; ".join([*checks, row["note"], problem.note, f"oracle {problem.oracle_time:.2f}s"])
    return rows


# ----------------------------------------------------------------------------------------------------
# campaign, table and summary


def jobs(count: int, families: list[str], seed_offset: int) -> Iterator[tuple[str, int]]:
    """Problem ``i`` is family ``families[i % F]`` with seed ``seed_offset + i // F``."""
    for i in range(count):
        yield families[i % len(families)], seed_offset + i // len(families)


def summarize(rows: list[dict], engines: list[str]) -> str:
    """A markdown summary: family x engine decided/wrong/undecided, the truth mix and z3 drops."""
    fams = list(dict.fromkeys(r["family"] for r in rows))
    cell: dict[tuple[str, str], Counter] = defaultdict(Counter)
    truths: dict[str, Counter] = defaultdict(Counter)
    seen = set()
    for r in rows:
        if (r["family"], r["seed"]) not in seen:
            seen.add((r["family"], r["seed"]))
            truths[r["family"]][r["truth"]] += 1
        if r["engine"] == "oracle":
            continue
        c = cell[r["family"], r["engine"]]
        decided = r["verdict"] in ("sat", "unsat")
        c["decided"] += decided
        c["wrong"] += _flag(r["wrong"])
        c["undecided"] += not decided
        c["time"] += float(r["time_s"])
    lines = ["| family | problems | sat | unsat | z3 dropped | " + " | ".join(engines) + " |",
             "|---" * (5 + len(engines)) + "|"]
    total = Counter()
    for f in fams:
        t = truths[f]
        parts = []
        for e in engines:
            c = cell[f, e]
            total.update({(e, k): v for k, v in c.items()})
            parts.append(f"{c['decided']}/{c['wrong']}/{c['undecided']}")
        lines.append(f"| {f} | {sum(t.values())} | {t['sat']} | {t['unsat']} | {t['dropped']} | " + " | ".join(parts)
                     + " |")
    all_t = sum(truths.values(), Counter())
    lines.append(f"| **all** | {sum(all_t.values())} | {all_t['sat']} | {all_t['unsat']} | {all_t['dropped']} | "
                 + " | ".join(f"{total[e, 'decided']}/{total[e, 'wrong']}/{total[e, 'undecided']}" for e in engines)
                 + " |")
    lines += ["", "Cells: decided / wrong / undecided (timeout, unknown, error).", "",
              "| engine | total time s | errors | sat vs exact unsat |", "|---|---|---|---|"]
    for e in engines:
        er = [r for r in rows if r["engine"] == e]
        lines.append(f"| {e} | {sum(float(r['time_s']) for r in er):.0f} | "
                     f"{sum(r['verdict'] == 'error' for r in er)} | "
                     f"{sum(r['verdict'] == 'sat' and r['truth'] == 'unsat' for r in er)} |")
    if any(r.get("certificate") for r in rows):
        lines += ["", "| engine | unsat answers | certificate valid | rejected | none |", "|---|---|---|---|---|"]
        for e in engines:
            cs = [r.get("certificate") or "" for r in rows if r["engine"] == e and r["verdict"] == "unsat"]
            lines.append(f"| {e} | {len(cs)} | {sum(c == 'valid' for c in cs)} | "
                         f"{sum(c.startswith('rejected') for c in cs)} | {sum(c.startswith('none') for c in cs)} |")
        why = Counter(c for r in rows if (c := r.get("certificate") or "").startswith("none"))
        lines += ["", "Why no certificate: " + "; ".join(f"{w} ({n})" for w, n in why.most_common())]
    replays = [r for r in rows if r["truth"] == "sat" and r["engine"] == engines[0]]
    lines += ["", f"Exact sat witnesses that pass the onnxruntime replay: "
              f"{sum(_flag(r['truth_witness_replays']) for r in replays)} of {len(replays)}."]
    bad = [r for r in rows if _flag(r["wrong"]) or "SUSPICIOUS" in r["note"] or "MISMATCH" in r["note"]
           or r["verdict"] == "error" or "differs" in r["note"] or (r.get("certificate") or "").startswith("rejected")]
    if bad:
        lines += ["", "Rows to look at:", ""]
        lines += [f"- {r['family']} seed {r['seed']} {r['engine']}: truth {r['truth']}, verdict {r['verdict']}: "
                  f"{r['note']}" for r in bad[:100]]
    return "\n".join(lines) + "\n"


def _flag(v) -> bool:
    return v is True or str(v) == "True"


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [dict(r, seed=int(r["seed"])) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soundness", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=70, help="problems in all, spread round-robin over the families")
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per verifier run")
    p.add_argument("--z3-timeout", type=float, default=60.0, help="seconds of z3 per problem (else dropped)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "float64"), help="the verifier's bounding dtype (default: its own)")
    p.add_argument("--via", choices=("alternate", "onnx", "ir"), default="alternate",
                   help="files (onnx) or objects (ir) into the verifier; alternate: by seed")
    p.add_argument("--proof", action="store_true",
                   help="ask every run for a proof certificate and check each unsat answer's (via the files)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and skip their problems")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/soundness_campaign.csv"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("verifier").setLevel(logging.WARNING)
    families, engines = args.families.split(","), args.engines.split(",")
    unknown = sorted(set(families) - set(FAMILIES)) + sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown family or engine: {', '.join(unknown)}")
    rows = _read_rows(args.out) if args.resume else []
    done = {(r["family"], r["seed"]) for r in rows}
    todo = [j for j in jobs(args.count, families, args.seed_offset) if j not in done]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with args.out.open("a" if args.resume else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if not rows:
            writer.writeheader()
        for i, new in enumerate(_results(todo, engines, args), 1):
            writer.writerows(new)
            f.flush()
            rows += new
            r0 = new[0]
            log.info("[%d/%d %.0fs] %s %d truth=%s %s%s", i, len(todo), time.monotonic() - start, r0["family"],
                     r0["seed"], r0["truth"], " ".join(f"{r['engine']}={r['verdict']}" for r in new),
                     " WRONG" if any(r["wrong"] for r in new) else "")
    summary = summarize(rows, engines)
    header = (f"# Soundness campaign\n\n`python -m benchmarks.soundness {' '.join(argv or sys.argv[1:])}`: "
              f"{len({(r['family'], r['seed']) for r in rows})} problems, {time.monotonic() - start:.0f} s wall "
              f"(this invocation), {args.workers} workers, {args.timeout:g} s per run, "
              f"bounding dtype {args.dtype or 'default'}, via {args.via}.\n\n")
    args.out.with_suffix(".md").write_text(header + summary)
    print(summary)
    return 1 if any(_flag(r["wrong"]) for r in rows) else 0


def _worker_init() -> None:
    torch.set_num_threads(1)
    logging.getLogger("verifier").setLevel(logging.WARNING)


def _results(todo: list[tuple[str, int]], engines: list[str], args) -> Iterator[list[dict]]:
    """The rows of each problem as they finish (in-process for one worker)."""
    if args.workers <= 1:
        _worker_init()
        for family, seed in todo:
            yield run_problem(family, seed, engines, args.timeout, args.z3_timeout, args.dtype, args.via, args.proof)
        return
    import multiprocessing

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = {pool.submit(run_problem, f, s, engines, args.timeout, args.z3_timeout, args.dtype, args.via,
                               args.proof): (f, s)
                   for f, s in todo}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as e:  # a generator or oracle failure: recorded, the campaign goes on
                f, s = futures[fut]
                log.error("%s %d failed: %s", f, s, e)
                yield [{"family": f, "seed": s, "engine": "oracle", "truth": "error", "truth_witness_replays": None,
                        "verdict": "", "time_s": 0, "wrong": False, "certificate": "",
                        "note": f"campaign error {type(e).__name__}: {e}"}]


if __name__ == "__main__":
    sys.exit(main())
