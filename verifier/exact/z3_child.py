"""z3 in a child process: one check read from standard input, its answer written to standard output.

``exact.smt`` runs this file (``python z3_child.py``, a fresh interpreter, never a fork of the
verifier's torch process) for checks that may outlast their time limit: z3's own timeout can overrun
by seconds on large rational pivots, so the parent kills the child at the deadline.  It imports z3
and the standard library only.

Input: one JSON line ``{"timeout_ms": int | null, "inputs": [names]}``, then the SMT-LIB text.
Output: z3's word (``sat``, ``unsat``, ``timeout`` or ``unknown``), then on ``sat`` one exact
rational per input, one per line.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import z3


def answer(solver: z3.Solver, status, inputs: list[str]) -> tuple[str, list[Fraction] | None]:
    """z3's word for ``status`` and, on ``sat``, the exact values of the named inputs."""
    if status == z3.sat:
        model = solver.model()
        return "sat", [fraction(model.eval(z3.Real(name, solver.ctx), model_completion=True)) for name in inputs]
    if status == z3.unsat:
        return "unsat", None
    reason = solver.reason_unknown()
    return ("timeout" if ("timeout" in reason or "canceled" in reason) else "unknown"), None


def fraction(value) -> Fraction:
    if z3.is_rational_value(value):
        return Fraction(value.numerator_as_long(), value.denominator_as_long())
    return Fraction(value.as_decimal(30).rstrip("?"))


def main() -> None:
    header = json.loads(sys.stdin.readline())
    solver = z3.SolverFor("QF_LRA")
    solver.from_string(sys.stdin.read())
    if header["timeout_ms"] is not None:
        solver.set("timeout", int(header["timeout_ms"]))
    word, values = answer(solver, solver.check(), header["inputs"])
    sys.stdout.write("\n".join([word, *(str(v) for v in values or [])]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
