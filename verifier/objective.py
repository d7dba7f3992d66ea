"""A spec case as tensors: the rows ``C y - d`` of all its unsafe polytopes.

Per ``vnnlib.spec``: a polytope is ruled out on a region when some row's lower
bound of ``C_j y - d_j`` is above 0; the case is proven when all its
polytopes are ruled out.  A point ``y`` is unsafe when every row of some
polytope has ``C_j y - d_j <= 0`` (``< 0`` for strict rows).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import torch

from vnnlib.spec import Case

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class CaseObjective:
    """The stacked rows of one case's polytopes and which polytope each row belongs to."""

    lower: Tensor  # (n_in,) input box
    upper: Tensor  # (n_in,)
    C: Tensor  # (S, n_out)
    d: Tensor  # (S,)
    groups: Tensor  # (P, S) bool: row s belongs to polytope p
    strict: Tensor  # (S,) bool
    # (S,) for a row combining two rows (``with_row_combinations``), the weight of the first; 0 on the
    # spec's own rows (None: every row is the spec's own)
    mix: Tensor | None = None
    # (S, S0) float64: each row as a non-negative combination of the case's own S0 rows, in the order of
    # its polytopes (None: the rows are the case's own); what a proof certificate names
    basis: Tensor | None = None

    @property
    def n_rows(self) -> int:
        return int(self.C.shape[0])

    def polytope_margins(self, rows: Tensor) -> Tensor:
        """Per polytope, the max over its rows of ``rows`` ``(..., S)`` -> ``(..., P)``.

        A polytope with no rows gets ``-inf`` (its unsafe set is everything).
        """
        if rows.shape[-1] == 0:
            return torch.full((*rows.shape[:-1], self.groups.shape[0]), -torch.inf, dtype=rows.dtype,
                              device=rows.device)
        masked = torch.where(self.groups, rows.unsqueeze(-2), torch.full_like(rows.unsqueeze(-2), -torch.inf))
        return masked.amax(dim=-1)

    def left_open(self, rows: Tensor) -> Tensor:
        """Per polytope ``(..., P)``, whether the row lower bounds ``rows`` ``(..., S)`` leave it open: not
        ruled out, a NaN bound included (``NaN > 0`` and ``NaN <= 0`` are both false)."""
        return ~(self.polytope_margins(rows) > 0)

    def output_margins(self, y: Tensor) -> Tensor:
        """Per polytope, ``max_j C_j y - d_j`` of the outputs ``y`` ``(B, ...)`` -> ``(B, P)``."""
        return self.polytope_margins(y.reshape(y.shape[0], -1) @ self.C.T - self.d)

    def violation(self, y: Tensor) -> Tensor:
        """Signed distance to the unsafe set, ``(B,)``: ``<= 0`` means ``y`` is (closure-)unsafe."""
        return self.output_margins(y).amin(dim=-1)

    def rows_of(self, polytopes: Tensor) -> Tensor:
        """The rows ``(..., S)`` belonging to any of the marked polytopes ``(..., P)`` (bool)."""
        return polytopes.to(self.C.dtype) @ self.groups.to(self.C.dtype) > 0

    def select_rows(self, keep: Tensor) -> CaseObjective:
        """The objective with only the rows ``keep`` ``(S,)`` (bool); keep every row of the spec's own
        so that the unsafe set stays the same."""
        return CaseObjective(self.lower, self.upper, self.C[keep], self.d[keep], self.groups[:, keep],
                             self.strict[keep], None if self.mix is None else self.mix[keep],
                             self.row_basis()[keep])

    def row_basis(self) -> Tensor:
        """``basis``, the identity where the rows are the case's own: ``(S, S0)`` float64."""
        if self.basis is not None:
            return self.basis
        return torch.eye(self.n_rows, dtype=torch.float64, device=self.C.device)

    def midpoint_rows(self) -> Tensor:
        """``(S,)`` bool: the spec's own rows and the combinations of two rows with equal weights."""
        if self.mix is None:
            return torch.ones(self.n_rows, dtype=torch.bool, device=self.C.device)
        return (self.mix == 0) | (self.mix == 0.5)

    def ruled_out(self, row_lower: Tensor) -> Tensor:
        """Per domain ``(B,)``: every polytope has a row whose lower bound is above 0."""
        return (self.polytope_margins(row_lower) > 0).all(dim=-1)


def with_row_combinations(obj: CaseObjective, steps: int = 9, max_rows: int = 8) -> CaseObjective:
    """``obj`` plus, for each polytope of 2 to ``max_rows`` rows, the rows
    ``lam r_i + (1 - lam) r_j`` of each pair for ``lam`` near ``1/(steps+1) .. steps/(steps+1)``.

    A combination is below ``max(r_i, r_j)``, so one with a positive lower bound
    rules its polytope out just like a positive row does (where the rows cross,
    no single row can).  Pairs of opposite rows (``_opposite``) get none.  The unsafe
    set and ``violation`` are unchanged.  ``lam`` is rounded to a multiple of 1/256 so
    that combinations of small integer coefficients are exact (``exact_rows`` keeps
    only exact combinations).
    """
    lam = np.round(np.arange(1, steps + 1) / (steps + 1) * 256) / 256  # (L,) multiples of 1/256
    C64, d64 = obj.C.double().cpu().numpy(), obj.d.double().cpu().numpy()
    weights, owner, first = [], [], []
    for p in range(obj.groups.shape[0]):
        rows = torch.nonzero(obj.groups[p]).flatten().tolist()
        if not 2 <= len(rows) <= max_rows:
            continue
        for a, i in enumerate(rows):
            for j in rows[a + 1:]:
                if _opposite(C64[i], C64[j]):
                    continue
                w = np.zeros((steps, obj.n_rows))
                w[:, i], w[:, j] = lam, 1 - lam
                weights.append(w)
                owner += [p] * steps
                first += list(lam)
    if not weights:
        return replace(obj, mix=obj.mix if obj.mix is not None else torch.zeros_like(obj.d))
    w = np.concatenate(weights)
    C, d, keep = exact_rows(w, C64, d64, obj.C.dtype)
    owner_t = torch.as_tensor(owner, device=obj.groups.device)[torch.as_tensor(keep)]
    g = torch.zeros(obj.groups.shape[0], int(keep.sum()), dtype=torch.bool, device=obj.groups.device)
    g[owner_t, torch.arange(owner_t.numel(), device=g.device)] = True
    lam_kept = torch.as_tensor(np.asarray(first)[keep], dtype=obj.d.dtype, device=obj.d.device)
    mix = obj.mix if obj.mix is not None else torch.zeros_like(obj.d)
    basis = obj.row_basis()
    combined = torch.as_tensor(w[keep], dtype=torch.float64, device=basis.device) @ basis
    return CaseObjective(obj.lower, obj.upper, torch.cat([obj.C, C.to(obj.C)]), torch.cat([obj.d, d.to(obj.d)]),
                         torch.cat([obj.groups, g], dim=1),
                         torch.cat([obj.strict, torch.zeros(g.shape[1], dtype=torch.bool, device=obj.strict.device)]),
                         torch.cat([mix, lam_kept]), torch.cat([basis, combined]))


def _opposite(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether rows ``a`` and ``b`` point in opposite directions (``b = -k a``, ``k > 0``; e.g. the two sides of
    ``|y_j| <= t``).  Their combinations are constant (where ``k`` matches ``lam``) or a scaled row with a worse
    offset: they rule out nothing a row does not, and a constant one would mask the real margin."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return na > 0 and nb > 0 and float(a @ b) <= -(1 - 1e-12) * na * nb


def exact_rows(weights: np.ndarray, C: np.ndarray, d: np.ndarray, dtype: torch.dtype,
               y_mag: np.ndarray | None = None) -> tuple[Tensor, Tensor, np.ndarray]:
    """The rows ``weights @ [C, d]`` (``weights`` ``(S', S)`` non-negative), as far as ``dtype`` holds them.

    A non-negative combination of a polytope's rows is ``<= 0`` wherever all of them are, so it may
    rule the polytope out, but only if it is at most the combination it claims to be.  ``d'`` is
    rounded up.  Where ``dtype`` cannot hold ``C'`` exactly, the row is kept only when ``y_mag``
    ``(n_out,)`` bounds ``|y|`` on the whole case box: ``d'`` then also rises by
    ``sum |C' - C_exact| y_mag``, which covers the difference at every point.  Returns ``C'``
    ``(K, n_out)``, ``d'`` ``(K,)`` and which rows were kept ``(S',)``.
    """
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    exact_C = [[sum((Fraction(float(w)) * Fraction(float(c)) for w, c in zip(col_w, col) if w), Fraction(0))
                for col in C.T] for col_w in weights]
    cast = np.array([[float(v) for v in row] for row in exact_C], dtype=np.float64).reshape(len(exact_C), C.shape[1])
    cast = cast.astype(np_dtype)
    error = [sum((abs(Fraction(float(c)) - e) * Fraction(float(m)) for c, e, m in
                  zip(row_c, row_e, y_mag if y_mag is not None else np.zeros(len(row_c)))), Fraction(0))
             for row_c, row_e in zip(cast, exact_C)]
    exact = np.array([all(Fraction(float(c)) == e for c, e in zip(row_c, row_e))
                      for row_c, row_e in zip(cast, exact_C)], dtype=bool)
    keep = exact if y_mag is None else np.ones(len(exact_C), dtype=bool)
    exact_d = [sum((Fraction(float(w)) * Fraction(float(v)) for w, v in zip(row_w, d) if w), Fraction(0)) + err
               for row_w, err in zip(weights, error)]
    d_up = np.array([_round_up(v, np_dtype) for v in exact_d], dtype=np_dtype)
    return torch.as_tensor(cast[keep]), torch.as_tensor(d_up[keep]), keep


def _round_up(value: Fraction, np_dtype: type) -> float:
    """The least ``np_dtype`` number at least ``value``."""
    f = np_dtype(float(value))
    while Fraction(float(f)) < value:
        f = np.nextafter(f, np_dtype(np.inf))
    return f


def round_toward(a: np.ndarray, dtype: torch.dtype, toward: float) -> np.ndarray:
    """Cast float64 ``a`` to ``dtype``, rounding toward ``toward`` (+-inf) where inexact.

    Input boxes are widened and row offsets raised so that a proof about the cast
    spec is a proof about the original one.
    """
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    cast = np.asarray(a, dtype=np.float64).astype(np_dtype)
    if toward == 0.0 or np_dtype == np.float64:
        return cast
    wrong = cast < a if toward > 0 else cast > a
    return np.where(wrong, np.nextafter(cast, np_dtype(toward)), cast)


def spec_fits(case: Case, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds every output coefficient of ``case`` exactly (the box and the offsets are
    rounded outward instead)."""
    if dtype == torch.float64:
        return True
    return all(np.array_equal(p.A.astype(np.float32).astype(np.float64), p.A) for p in case.polytopes)


def case_objective(case: Case, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> CaseObjective:
    """Stack the polytopes of ``case`` into one row matrix."""
    n_out = case.polytopes[0].A.shape[1] if case.polytopes else 0
    A = np.concatenate([p.A for p in case.polytopes], axis=0) if case.polytopes else np.zeros((0, n_out))
    b = np.concatenate([p.b for p in case.polytopes]) if case.polytopes else np.zeros(0)
    strict = np.concatenate([p.strict for p in case.polytopes]) if case.polytopes else np.zeros(0, bool)
    groups = np.zeros((len(case.polytopes), A.shape[0]), dtype=bool)
    start = 0
    for p_idx, poly in enumerate(case.polytopes):
        groups[p_idx, start : start + poly.A.shape[0]] = True
        start += poly.A.shape[0]

    def t(a: np.ndarray, toward: float = 0.0) -> Tensor:
        return torch.as_tensor(round_toward(a, dtype, toward), device=device)

    if not spec_fits(case, dtype):
        raise ValueError(f"the spec's output coefficients are not exact in {dtype}; bound in float64")
    return CaseObjective(
        lower=t(case.lower, -np.inf), upper=t(case.upper, np.inf), C=t(A), d=t(b, np.inf),
        groups=torch.as_tensor(groups, device=device), strict=torch.as_tensor(strict, device=device),
    )
