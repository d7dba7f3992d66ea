"""The typed form of a VNN-LIB property and its one sign convention.

Sign convention (the only place it is written down):

* A ``Spec`` describes the *unsafe* region.  It is an OR over ``Case``\\ s.
* A ``Case`` is an input box ``lower <= x <= upper`` together with an OR over
  output ``Polytope``\\ s.
* A ``Polytope`` is the conjunction ``A y <= b`` (every row must hold).
* The network ``f`` violates the property (answer ``sat``) iff there is a case,
  an ``x`` in its box and a polytope of that case with ``A f(x) <= b``.
* A polytope is *ruled out* on an input region when some row ``j`` has
  ``min over the region of (A_j f(x) - b_j) > 0``.  The property holds (answer
  ``unsat``) when every polytope of every case is ruled out on its box.

Strict comparisons (``<``, ``>``) are read as their closures for proofs (this
only enlarges the unsafe region, so a proof stays sound); ``Polytope.strict``
marks the rows that came from a strict output comparison so that a
counterexample can be checked against the exact, strict condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class SpecError(ValueError):
    """A VNN-LIB text or a ``Spec`` that is malformed or unsupported."""


@dataclass(frozen=True, eq=False)
class Polytope:
    """Unsafe output set ``{y : A y <= b}``; ``strict[j]`` means row j is ``<``."""

    A: np.ndarray  # (k, n_out) float64
    b: np.ndarray  # (k,) float64
    strict: np.ndarray = field(default=None)  # (k,) bool

    def __post_init__(self) -> None:
        A = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        b = np.asarray(self.b, dtype=np.float64).reshape(-1)
        if A.shape[0] != b.shape[0]:
            raise SpecError(f"polytope has {A.shape[0]} rows in A but {b.shape[0]} in b")
        strict = (
            np.zeros(b.shape[0], dtype=bool)
            if self.strict is None
            else np.asarray(self.strict, dtype=bool).reshape(-1)
        )
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "strict", strict)

    def contains(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether output ``y`` lies in the unsafe set, strict rows checked strictly."""
        lhs = self.A @ np.asarray(y, dtype=np.float64).reshape(-1)
        ok = np.where(self.strict, lhs < self.b + tol, lhs <= self.b + tol)
        return bool(np.all(ok))


@dataclass(frozen=True, eq=False)
class Case:
    """One input box with the OR of the unsafe output polytopes over it."""

    lower: np.ndarray  # (n_in,) float64
    upper: np.ndarray  # (n_in,) float64
    polytopes: tuple[Polytope, ...]

    def __post_init__(self) -> None:
        lo = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise SpecError("input box lower and upper have different sizes")
        bad = np.nonzero(lo > hi)[0]
        if bad.size:
            i = int(bad[0])
            raise SpecError(f"empty input box: X_{i} has lower {lo[i]} > upper {hi[i]}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            i = int(np.nonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0][0])
            raise SpecError(f"input variable X_{i} is unbounded")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        object.__setattr__(self, "polytopes", tuple(self.polytopes))


@dataclass(frozen=True, eq=False)
class Spec:
    """OR over cases; see the module docstring for the sign convention."""

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        for case in self.cases:
            if case.lower.shape[0] != self.n_inputs:
                raise SpecError(
                    f"case box has {case.lower.shape[0]} inputs, spec declares {self.n_inputs}"
                )
            for poly in case.polytopes:
                if poly.A.shape[1] != self.n_outputs:
                    raise SpecError(
                        f"polytope has {poly.A.shape[1]} output columns, "
                        f"spec declares {self.n_outputs}"
                    )

    def is_violated_by(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Exact check (no tolerance) that ``(x, f(x) = y)`` is a counterexample."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        for case in self.cases:
            if np.all(x >= case.lower) and np.all(x <= case.upper):
                if any(p.contains(y) for p in case.polytopes):
                    return True
        return False
