"""Write a ``Spec`` as VNN-LIB 1.0 or 2.0 text that ``parse_spec`` reads back to the same arrays.

Numbers are written as the shortest text that reads back to the same float64
(``repr`` in 1.0; in 2.0 the same digits without an exponent, as its grammar's
numerals have none), and every row is written in a form whose parse performs no
rounding, so ``parse_spec(write_spec(s))`` reproduces the boxes, ``A``, ``b``
and ``strict`` of ``s`` exactly.  Three things are normalised, without changing
the unsafe region: cases without polytopes are left out (they contain no unsafe
point); a row ``0 . y <= b`` that always holds is left out and a polytope with a
row that never holds is left out; cases with equal boxes are read back as one
case.

``write_assignment`` writes a counterexample in the format of the spec's version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from vnnlib.spec import Case, Polytope, Spec, SpecError, TensorDecl


class _Style(NamedTuple):
    """How one version writes the names of inputs, outputs and numbers."""

    x: Callable[[int], str]
    y: Callable[[int], str]
    num: Callable[[float], str]


def _num(value: float) -> str:
    return repr(float(value))


def _num2(value: float) -> str:
    """The shortest decimal that reads back to ``value``, without exponent (2.0's numerals)."""
    return np.format_float_positional(float(value), unique=True, trim="0")


_V1 = _Style(x=lambda i: f"X_{i}", y=lambda j: f"Y_{j}", num=_num)


def _row(a: np.ndarray, b: float, strict: bool, style: _Style = _V1) -> str | bool:
    """One row ``a . y <= b`` as an atom, or its truth value if ``a`` is zero."""
    nz = np.nonzero(a)[0]
    op = "<" if strict else "<="
    y, num = style.y, style.num
    if nz.size == 0:
        return bool(0.0 < b if strict else 0.0 <= b)
    if nz.size == 1 and a[nz[0]] == 1.0:
        return f"({op} {y(nz[0])} {num(b)})"
    if nz.size == 1 and a[nz[0]] == -1.0:
        return f"({'>' if strict else '>='} {y(nz[0])} {num(-b)})"
    if nz.size == 2 and b == 0.0 and sorted(a[nz]) == [-1.0, 1.0]:
        pos, neg = (nz[0], nz[1]) if a[nz[0]] == 1.0 else (nz[1], nz[0])
        return f"({op} {y(pos)} {y(neg)})"
    terms = " ".join(f"(* {num(a[j])} {y(j)})" for j in nz)
    return f"({op} (+ {terms}) {num(b)})"


def _polytope_atoms(poly: Polytope, style: _Style = _V1) -> list[str] | None:
    """The atoms of a polytope's rows; None if some row can never hold."""
    atoms = []
    for a, b, strict in zip(poly.A, poly.b, poly.strict, strict=True):
        atom = _row(a, float(b), bool(strict), style)
        if atom is False:
            return None
        if atom is not True:
            atoms.append(atom)
    return atoms


def _box_atoms(case: Case, style: _Style = _V1) -> list[str]:
    atoms = []
    for i, (lo, hi) in enumerate(zip(case.lower, case.upper, strict=True)):
        atoms.append(f"(<= {style.x(i)} {style.num(hi)})")
        atoms.append(f"(>= {style.x(i)} {style.num(lo)})")
    return atoms


def _check_finite(spec: Spec) -> None:
    for case in spec.cases:
        for poly in case.polytopes:
            if not (np.all(np.isfinite(poly.A)) and np.all(np.isfinite(poly.b))):
                raise SpecError("cannot write a polytope with non-finite coefficients")


def _outputs_formula(polys: list[list[str]]) -> str:
    """OR over polytopes, each an AND of atoms."""
    if len(polys) == 1:
        return f"(and {' '.join(polys[0])})" if polys[0] else "true"
    return "(or " + " ".join(f"(and {' '.join(atoms)})" for atoms in polys) + ")"


def _declarations(spec: Spec) -> tuple[str, TensorDecl, TensorDecl]:
    """The network name and declarations a 2.0 text gets (``Real`` vectors for a 1.0 spec)."""
    x = spec.input_decl or TensorDecl("X", "Real", (spec.n_inputs,))
    y = spec.output_decl or TensorDecl("Y", "Real", (spec.n_outputs,))
    return spec.network or "network", x, y


def _header(spec: Spec, version: str) -> tuple[list[str], _Style]:
    if version == "1.0":
        lines = ["; VNN-LIB 1.0 property written by vnnlib.writer", ""]
        lines += [f"(declare-const X_{i} Real)" for i in range(spec.n_inputs)]
        lines += [f"(declare-const Y_{j} Real)" for j in range(spec.n_outputs)]
        return lines, _V1
    if version != "2.0":
        raise SpecError(f"cannot write VNN-LIB version {version!r} (1.0 or 2.0)")
    network, x, y = _declarations(spec)
    lines = ["; VNN-LIB 2.0 property written by vnnlib.writer", "", "(vnnlib-version <2.0>)",
             f"(declare-network {network}", f"  (declare-input {x.header()})", f"  (declare-output {y.header()}))"]
    return lines, _Style(x=x.element, y=y.element, num=_num2)


def write_spec(spec: Spec, version: str | None = None) -> str:
    """VNN-LIB text for ``spec``; see the module docstring for what is normalised.

    ``version`` is ``"1.0"`` or ``"2.0"``; by default the version the spec was read from.  A 1.0 spec
    written as 2.0 declares ``X Real [n]`` and ``Y Real [m]``; a 2.0 spec written as 1.0 flattens.
    """
    _check_finite(spec)
    version = version or ("1.0" if spec.input_decl is None else "2.0")
    lines, style = _header(spec, version)
    lines.append("")
    cases = []
    for case in spec.cases:
        polys = [atoms for atoms in (_polytope_atoms(p, style) for p in case.polytopes) if atoms is not None]
        if polys:
            cases.append((case, polys))
    if not cases:
        lines.append("; the unsafe region is empty")
        lines.append("(assert false)")
    elif len(cases) == 1:
        case, polys = cases[0]
        lines.append("; input box")
        lines += [f"(assert {atom})" for atom in _box_atoms(case, style)]
        lines.append("; unsafe outputs")
        if len(polys) == 1:
            lines += [f"(assert {atom})" for atom in polys[0]]
        else:
            lines.append(f"(assert {_outputs_formula(polys)})")
    else:
        lines.append("(assert (or")
        for case, polys in cases:
            lines.append(f"  (and {' '.join(_box_atoms(case, style))}")
            lines.append(f"    {_outputs_formula(polys)})")
        lines.append("))")
    return "\n".join(lines) + "\n"


def write_assignment(spec: Spec | None, x: np.ndarray, y: np.ndarray) -> str:
    """A counterexample ``(x, y = f(x))`` as the text that follows ``sat`` in a result, no final newline.

    1.0 (also when ``spec`` is None): VNN-COMP's ``((X_0 v)\\n (X_1 v) ... (Y_0 v))``.  2.0: the
    standard's command-line assignment format (what VNN-COMP 2026 checks): for the input, then the
    output, a line ``NAME TYPE [d0,d1]`` as declared, then one value per line in row-major order.
    Values are written at full float64 precision.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if spec is None or spec.input_decl is None or spec.output_decl is None:
        entries = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
        entries += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
        return "(" + "\n ".join(entries) + ")"
    lines = []
    for decl, values in ((spec.input_decl, x), (spec.output_decl, y)):
        if values.size != decl.size:
            raise SpecError(f"{decl.header()} needs {decl.size} values, got {values.size}")
        lines.append(decl.header())
        lines += [repr(float(v)) for v in values]
    return "\n".join(lines)
