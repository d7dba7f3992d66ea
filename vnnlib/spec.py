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

Inputs and outputs are flat vectors ``x``/``y``.  A spec read from VNN-LIB 2.0
also remembers its declarations (``version``, ``network``, ``input_decl``,
``output_decl``): the declared tensors flatten row-major onto ``x`` and ``y``,
and a counterexample is written back in the declared names and shapes.
"""

from __future__ import annotations

import math
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
        A, b = self.A, self.b
        if not (type(A) is np.ndarray and A.dtype == np.float64 and A.ndim == 2):
            A = np.atleast_2d(np.asarray(A, dtype=np.float64))
        if not (type(b) is np.ndarray and b.dtype == np.float64 and b.ndim == 1):
            b = np.asarray(b, dtype=np.float64).reshape(-1)
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
        if not (lo <= hi).all():  # NaN entries fall through to the check below
            bad = np.nonzero(lo > hi)[0]
            if bad.size:
                i = int(bad[0])
                raise SpecError(f"empty input box: X_{i} has lower {lo[i]} > upper {hi[i]}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            i = int(np.nonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0][0])
            raise SpecError(f"input variable X_{i} is unbounded")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        object.__setattr__(self, "polytopes", tuple(self.polytopes))


@dataclass(frozen=True)
class TensorDecl:
    """A VNN-LIB 2.0 input or output: its name, element type (as written) and shape.

    Element ``name[i0,...,ik]`` is entry ``ravel_multi_index((i0,...,ik), shape)`` (row-major) of the
    flat vector; a scalar (shape ``()``) is written ``name`` and is entry 0.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def element(self, flat: int) -> str:
        """The name of flat entry ``flat``, e.g. ``X[0,2]``."""
        if not self.shape:
            return self.name
        index = np.unravel_index(flat, self.shape)
        return f"{self.name}[{','.join(str(int(i)) for i in index)}]"

    def header(self) -> str:
        """``name dtype [d0,d1]`` as in a declaration and a 2.0 assignment."""
        return f"{self.name} {self.dtype} [{','.join(map(str, self.shape))}]"


@dataclass(frozen=True, eq=False)
class Spec:
    """OR over cases; see the module docstring for the sign convention.

    ``version`` is the VNN-LIB version the spec was read from; a ``"2.0"`` spec carries the name of its
    network and the declarations of its one input and one output (``None`` for 1.0, whose variables are
    the flat ``X_i`` and ``Y_j``).
    """

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int
    version: str = "1.0"
    network: str = ""
    input_decl: TensorDecl | None = None
    output_decl: TensorDecl | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        declared = ((self.input_decl, self.n_inputs, "inputs"), (self.output_decl, self.n_outputs, "outputs"))
        for decl, n, what in declared:
            if decl is not None and decl.size != n:
                raise SpecError(f"declared {decl.header()} has {decl.size} entries, spec has {n} {what}")
        if self.version != "1.0" and (self.input_decl is None or self.output_decl is None):
            raise SpecError(f"a VNN-LIB {self.version} spec needs its input and output declarations")
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
