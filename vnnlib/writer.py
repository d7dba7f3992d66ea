"""Write a ``Spec`` as VNN-LIB 1.0 text that ``parse_spec`` reads back to the same arrays.

Numbers are written with ``repr`` (the shortest text that reads back to the
same float64), and every row is written in a form whose parse performs no
rounding, so ``parse_spec(write_spec(s))`` reproduces the boxes, ``A``, ``b``
and ``strict`` of ``s`` exactly.  Three things are normalised, without changing
the unsafe region: cases without polytopes are left out (they contain no unsafe
point); a row ``0 . y <= b`` that always holds is left out and a polytope with a
row that never holds is left out; cases with equal boxes are read back as one
case.
"""

from __future__ import annotations

import numpy as np

from vnnlib.spec import Case, Polytope, Spec, SpecError


def _num(value: float) -> str:
    return repr(float(value))


def _row(a: np.ndarray, b: float, strict: bool) -> str | bool:
    """One row ``a . y <= b`` as an atom, or its truth value if ``a`` is zero."""
    nz = np.nonzero(a)[0]
    op = "<" if strict else "<="
    if nz.size == 0:
        return bool(0.0 < b if strict else 0.0 <= b)
    if nz.size == 1 and a[nz[0]] == 1.0:
        return f"({op} Y_{nz[0]} {_num(b)})"
    if nz.size == 1 and a[nz[0]] == -1.0:
        return f"({'>' if strict else '>='} Y_{nz[0]} {_num(-b)})"
    if nz.size == 2 and b == 0.0 and sorted(a[nz]) == [-1.0, 1.0]:
        pos, neg = (nz[0], nz[1]) if a[nz[0]] == 1.0 else (nz[1], nz[0])
        return f"({op} Y_{pos} Y_{neg})"
    terms = " ".join(f"(* {_num(a[j])} Y_{j})" for j in nz)
    return f"({op} (+ {terms}) {_num(b)})"


def _polytope_atoms(poly: Polytope) -> list[str] | None:
    """The atoms of a polytope's rows; None if some row can never hold."""
    atoms = []
    for a, b, strict in zip(poly.A, poly.b, poly.strict, strict=True):
        atom = _row(a, float(b), bool(strict))
        if atom is False:
            return None
        if atom is not True:
            atoms.append(atom)
    return atoms


def _box_atoms(case: Case) -> list[str]:
    atoms = []
    for i, (lo, hi) in enumerate(zip(case.lower, case.upper, strict=True)):
        atoms.append(f"(<= X_{i} {_num(hi)})")
        atoms.append(f"(>= X_{i} {_num(lo)})")
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


def write_spec(spec: Spec) -> str:
    """VNN-LIB text for ``spec``; see the module docstring for what is normalised."""
    _check_finite(spec)
    lines = ["; VNN-LIB 1.0 property written by vnnlib.writer", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(spec.n_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(spec.n_outputs)]
    lines.append("")
    cases = []
    for case in spec.cases:
        polys = [atoms for atoms in map(_polytope_atoms, case.polytopes) if atoms is not None]
        if polys:
            cases.append((case, polys))
    if not cases:
        lines.append("; the unsafe region is empty")
        lines.append("(assert false)")
    elif len(cases) == 1:
        case, polys = cases[0]
        lines.append("; input box")
        lines += [f"(assert {atom})" for atom in _box_atoms(case)]
        lines.append("; unsafe outputs")
        if len(polys) == 1:
            lines += [f"(assert {atom})" for atom in polys[0]]
        else:
            lines.append(f"(assert {_outputs_formula(polys)})")
    else:
        lines.append("(assert (or")
        for case, polys in cases:
            lines.append(f"  (and {' '.join(_box_atoms(case))}")
            lines.append(f"    {_outputs_formula(polys)})")
        lines.append("))")
    return "\n".join(lines) + "\n"
