"""The SMT engine: an exact encoding in linear real arithmetic, solved by z3.

Every weight enters as the exact rational value of its float (a network whose
loading computed inexact constants gets no ``unsat``), and a ReLU is the
disjunction ``(x <= 0 and y = 0) or (x > 0 and y = x)``, so the answer is
exact for the network's real-arithmetic semantics.  The formula is written as
SMT-LIB text (one named term per neuron, which z3 shares), parsed by z3 in C++.

Rigorous pre-activation bounds (``verifier.bounds``, optional) fix the stable
ReLUs and add the triangle relaxation of the unstable ones as implied lemmas
(Ehlers, ATVA 2017); this removes only branches that hold no input.  On
low-dimensional inputs the box is bisected until few ReLUs are unstable
(``bab.exact_split``: a rule of the one branch-and-bound loop), and each
remaining box is one ``decide_region`` (its ``"smt"`` engine is ``decide_smt``
here).  A check runs in-process for a short first
attempt and then in a child process that is killed at the deadline (z3's own
timeout can overrun by seconds on large rational pivots): a fresh interpreter
running ``exact.z3_child`` on the SMT-LIB text, never a fork of this (torch) process.

This module and ``exact.z3_child`` are the only ones that import ``z3``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import z3

from verifier.deadline import Deadline
from verifier.exact import z3_child
from verifier.exact.encoding import ReluBounds
from verifier.exact.linear_ops import INDEX_OPS, LINEAR_OPS, index_map, linear_map, maxpool_windows
from verifier.exact.options import SmtOptions
from verifier.exact.outcome import INEXACT, ExactOutcome
from verifier.exact.region import Region
from verifier.exact.witness import confirmed
from verifier.network import Add, AvgPool, Input, MaxPool, Network, Relu, has_errors
from verifier.result import Status, combine
from vnnlib.spec import Case, Polytope

log = logging.getLogger(__name__)

_SHRINK = 1e-6  # a witness that fails the float check is looked for again with b - _SHRINK * (1 + |b|)
_IN_PROCESS = 0.5  # seconds of a check run in-process before it moves to a killable child
_WORDS = {s.value for s in (Status.SAT, Status.UNSAT, Status.TIMEOUT, Status.UNKNOWN)}  # z3_child's answers


def decide_smt(net: Network, region: Region, polys: Sequence[Polytope], deadline: Deadline,
               options: SmtOptions) -> ExactOutcome:
    """``decide_region``'s ``"smt"`` engine: z3 on one box, the network once, then each polytope in a
    push/pop scope (``UNKNOWN`` instead of ``UNSAT`` for a network with inexact constants)."""
    if region.splits is not None and any(np.any(s != 0) for s in region.splits):
        raise ValueError("the smt engine decides boxes: it takes no split states")
    start = time.monotonic()
    text, inputs, n_or = _formula(net, region.lower, region.upper, region.bounds)
    ctx = z3.Context()
    solver = z3.SolverFor("QF_LRA", ctx=ctx)
    solver.from_string(text)
    verdicts: list[Status] = []
    sub = Case(region.lower, region.upper, ())
    checks = 0
    for poly in polys:
        verdict, x, n = _decide_polytope(net, solver, text, inputs, sub, poly, deadline, options)
        checks += n
        if verdict is Status.SAT:
            return ExactOutcome(Status.SAT, x, time.monotonic() - start, checks, n_or)
        verdicts.append(verdict)
        if verdict is not Status.UNSAT and deadline.expired():
            break
    verdict, message = combine(verdicts), ""
    if verdict is Status.UNSAT and has_errors(net):
        verdict, message = Status.UNKNOWN, INEXACT
    return ExactOutcome(verdict, None, time.monotonic() - start, checks, n_or, message)


def _decide_polytope(net, solver, text: str, inputs, box: Case, poly: Polytope, deadline, options
                     ) -> tuple[Status, np.ndarray | None, int]:
    """One polytope: ``(verdict, witness, checks run)``; a witness that fails the float check is looked
    for again slightly inside."""
    for n, shrink in enumerate((0.0, _SHRINK), 1):
        b = poly.b - shrink * (1.0 + np.abs(poly.b))
        extra = _polytope_text(poly.A, b)
        solver.push()
        solver.from_string(extra)
        status, values = _check(solver, f"{text}\n{extra}", inputs, deadline, options)
        solver.pop()
        if status is Status.UNSAT:
            # with shrink 0 the closure of the polytope is empty on the box; with a shrink only
            # points within the shrink margin remain, and one of them failed the float check
            return (Status.UNSAT if shrink == 0.0 else Status.UNKNOWN), None, n
        if status is not Status.SAT:
            return status, None, n
        x = confirmed(net, np.array([float(v) for v in values]), box, poly)
        if x is not None:
            return Status.SAT, x, n
        log.debug("smt witness failed the float check (shrink %g)", shrink)
    return Status.UNKNOWN, None, 2


def _check(solver: z3.Solver, text: str, inputs: list[str], deadline: Deadline, options: SmtOptions):
    """``(z3's answer as a Status, input values)``: a short in-process attempt, then a killable child
    on ``text`` (the same formula)."""
    remaining = deadline.remaining()
    if options.problem_time_limit is not None:
        remaining = min(remaining, options.problem_time_limit)
    if remaining <= 0:
        return Status.TIMEOUT, None
    first = min(remaining, _IN_PROCESS) if options.fork else remaining
    status, values = _check_here(solver, inputs, first)
    if status is not Status.TIMEOUT or first >= remaining:
        return status, values
    return _check_child(text, inputs, remaining - first)


def _check_here(solver: z3.Solver, inputs: list[str], seconds: float):
    timer = None
    if np.isfinite(seconds):
        solver.set("timeout", max(1, int(seconds * 1000)))
        timer = threading.Timer(seconds + 0.05, solver.ctx.interrupt)
        timer.daemon = True
        timer.start()
    try:
        status = solver.check()
    finally:
        if timer is not None:
            timer.cancel()
    return _read(solver, status, inputs)


def _check_child(text: str, inputs: list[str], seconds: float):
    """The check in a child interpreter running ``exact.z3_child``, killed when ``seconds`` have passed."""
    header = json.dumps({"timeout_ms": max(1, int(seconds * 1000)) if np.isfinite(seconds) else None,
                         "inputs": inputs})
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # the child imports nothing from its folder
    proc = subprocess.Popen([sys.executable, *safe_path, z3_child.__file__], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = proc.communicate(f"{header}\n{text}", timeout=seconds + 0.1 if np.isfinite(seconds) else None)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Status.TIMEOUT, None
    lines = out.split("\n")
    status = Status(lines[0]) if proc.returncode == 0 and lines[0] in _WORDS else None
    if status is None:
        log.info("smt: the z3 child failed (exit code %s)", proc.returncode)
        return Status.UNKNOWN, None
    return status, ([Fraction(v) for v in lines[1:]] if status is Status.SAT else None)


def _read(solver: z3.Solver, status, inputs: list[str]):
    word, values = z3_child.answer(solver, status, inputs)
    if status != z3.sat and status != z3.unsat:
        log.debug("z3 unknown: %s", solver.reason_unknown())
    return Status(word), values


def _formula(net: Network, lower, upper, bounds: ReluBounds | None) -> tuple[str, list[str], int]:
    """SMT-LIB text of the network on the box; the input names; the number of ReLU disjunctions.

    Every node value gets a name ``v{node}_{index}`` (``define-fun``, so z3 shares the term);
    the outputs are ``out_{index}``."""
    lines: list[str] = []
    names: list[list[str]] = []
    n_or = 0
    relu_k = 0
    for i, node in enumerate(net.nodes):
        op = node.op
        args = [names[j] for j in node.inputs]
        if isinstance(op, Input):
            out = [f"x{j}" for j in range(node.size)]
            lines += [f"(declare-fun {v} () Real)" for v in out]
            lines += [f"(assert (<= {_rat(lo)} {v} {_rat(hi)}))" for v, lo, hi in zip(out, lower, upper)]
        elif isinstance(op, Relu):
            k_bounds = None if bounds is None else (bounds.lower[relu_k], bounds.upper[relu_k])
            out, n = _relu_text(lines, args[0], i, k_bounds)
            relu_k += 1
            n_or += n
        elif isinstance(op, MaxPool):
            out = _maxpool_text(lines, args[0], i, maxpool_windows(op, net.nodes[node.inputs[0]].shape, node.shape))
        elif isinstance(op, Add):
            out = _define(lines, i, [f"(+ {a} {b})" for a, b in zip(args[0], args[1])])
        elif isinstance(op, LINEAR_OPS):
            matrix, offset = linear_map(node, net.nodes[node.inputs[0]].shape)
            out = _define(lines, i, _affine_terms(matrix, offset, args[0], exact_inverse=isinstance(op, AvgPool)))
        elif isinstance(op, INDEX_OPS):
            idx, fill = index_map(node, [net.nodes[j].shape for j in node.inputs])
            flat = [v for a in args for v in a]
            out = [flat[j] if j >= 0 else _rat(fill) for j in idx]
        else:
            raise TypeError(f"smt: unhandled node type {type(op).__name__}")
        names.append(out)
    _define_outputs(lines, names[net.output])
    return "\n".join(lines), names[0], n_or


def _define(lines: list[str], node: int, terms: list[str]) -> list[str]:
    out = [f"v{node}_{j}" for j in range(len(terms))]
    lines += [f"(define-fun {v} () Real {t})" for v, t in zip(out, terms)]
    return out


def _define_outputs(lines: list[str], values: list[str]) -> None:
    lines += [f"(define-fun out_{j} () Real {v})" for j, v in enumerate(values)]


def _affine_terms(matrix, offset: np.ndarray, args: list[str], exact_inverse: bool = False) -> list[str]:
    """The terms ``M x + c``; with ``exact_inverse`` every weight is ``1 / n`` for an integer ``n`` (an average)
    and enters as that exact rational, not as its float."""
    def weight(w: float) -> str:
        return _frac(Fraction(1, int(round(1.0 / w)))) if exact_inverse else _rat(w)

    terms = []
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        parts = [f"(* {weight(w)} {args[j]})" for w, j in zip(matrix.data[lo:hi], matrix.indices[lo:hi]) if w != 0]
        terms.append(f"(+ {' '.join(parts)} {_rat(offset[i])})" if parts else _rat(offset[i]))
    return terms


def _relu_text(lines: list[str], pre: list[str], node: int, bounds) -> tuple[list[str], int]:
    out = []
    fresh = 0
    for j, x in enumerate(pre):
        if bounds is not None and bounds[1][j] <= 0:
            out.append("0.0")
        elif bounds is not None and bounds[0][j] >= 0:
            out.append(x)
        else:
            y = f"r{node}_{j}"
            lines.append(f"(declare-fun {y} () Real)")
            lines.append(f"(assert (or (and (<= {x} 0.0) (= {y} 0.0)) (and (> {x} 0.0) (= {y} {x}))))")
            if bounds is not None:  # implied by the bounds: the triangle relaxation
                lo, hi = _outward(bounds[0][j], -1), _outward(bounds[1][j], +1)  # short numbers pivot faster
                slope = hi / (hi - lo)
                lines.append(f"(assert (and (<= {_frac(lo)} {x} {_frac(hi)}) (>= {y} 0.0) (>= {y} {x}) "
                             f"(<= {y} (+ (* {_frac(slope)} {x}) {_frac(-slope * lo)}))))")
            out.append(y)
            fresh += 1
    return out, fresh


def _maxpool_text(lines: list[str], pre: list[str], node: int, windows: np.ndarray) -> list[str]:
    out = []
    for o, window in enumerate(windows):
        xs = [pre[j] for j in window if j >= 0]
        m = f"m{node}_{o}"
        lines.append(f"(declare-fun {m} () Real)")
        above = " ".join(f"(>= {m} {x})" for x in xs)
        equal = " ".join(f"(= {m} {x})" for x in xs)
        lines.append(f"(assert (and {above} (or {equal})))")
        out.append(m)
    return out


def _polytope_text(A: np.ndarray, b: np.ndarray) -> str:
    rows = []
    for a_row, bj in zip(np.atleast_2d(A), b):
        parts = [f"(* {_rat(a)} out_{j})" for j, a in enumerate(a_row) if a != 0]
        lhs = f"(+ {' '.join(parts)})" if len(parts) > 1 else (parts[0] if parts else "0.0")
        rows.append(f"(assert (<= {lhs} {_rat(bj)}))")
    return "\n".join(rows)


def _rat(value: float) -> str:
    """The exact rational value of a float as an SMT-LIB real term."""
    return _frac(Fraction(float(value)))


def _outward(value: float, direction: int, bits: int = 10) -> Fraction:
    """``value`` rounded away from the inside (down for -1, up for +1) to ``bits`` significant bits."""
    if value == 0 or not np.isfinite(value):
        return Fraction(float(value))
    step = Fraction(2) ** (int(np.floor(np.log2(abs(value)))) - bits)
    scaled = Fraction(float(value)) / step
    whole = (scaled.__floor__() if direction < 0 else scaled.__ceil__())
    return whole * step


def _frac(value: Fraction) -> str:
    num, den = value.numerator, value.denominator
    text = f"{abs(num)}.0" if den == 1 else f"(/ {abs(num)}.0 {den}.0)"
    return f"(- {text})" if num < 0 else text
