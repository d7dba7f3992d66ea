"""A spec case as tensors: the rows ``C y - d`` of all its unsafe polytopes.

Per ``vnnlib.spec``: a polytope is ruled out on a region when some row's lower
bound of ``C_j y - d_j`` is above 0; the case is proven when all its
polytopes are ruled out.  A point ``y`` is unsafe when every row of some
polytope has ``C_j y - d_j <= 0`` (``< 0`` for strict rows).
"""

from __future__ import annotations

from dataclasses import dataclass

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
                             self.strict[keep], None if self.mix is None else self.mix[keep])

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
    ``lam r_i + (1 - lam) r_j`` of each pair for ``lam`` in ``1/(steps+1) .. steps/(steps+1)``.

    A combination is below ``max(r_i, r_j)``, so one with a positive lower bound
    rules its polytope out just like a positive row does (where the rows cross,
    no single row can).  The unsafe set and ``violation`` are unchanged.
    """
    lam = torch.arange(1, steps + 1, dtype=obj.C.dtype, device=obj.C.device) / (steps + 1)  # (L,)
    C, d, groups, strict = [obj.C], [obj.d], [obj.groups], [obj.strict]
    mix = [obj.mix if obj.mix is not None else torch.zeros_like(obj.d)]
    for p in range(obj.groups.shape[0]):
        rows = torch.nonzero(obj.groups[p]).flatten()
        if not 2 <= rows.numel() <= max_rows:
            continue
        i, j = torch.triu_indices(rows.numel(), rows.numel(), 1, device=rows.device)
        i, j = rows[i], rows[j]  # (Q,) pairs
        l = lam.repeat(i.numel()).unsqueeze(1)  # (Q L, 1)
        i, j = i.repeat_interleave(steps), j.repeat_interleave(steps)
        C.append(l * obj.C[i] + (1 - l) * obj.C[j])
        d.append(l.squeeze(1) * obj.d[i] + (1 - l.squeeze(1)) * obj.d[j])
        g = torch.zeros(obj.groups.shape[0], i.numel(), dtype=torch.bool, device=obj.groups.device)
        g[p] = True
        groups.append(g)
        strict.append(torch.zeros(i.numel(), dtype=torch.bool, device=obj.strict.device))
        mix.append(l.squeeze(1))
    return CaseObjective(obj.lower, obj.upper, torch.cat(C), torch.cat(d), torch.cat(groups, dim=1),
                         torch.cat(strict), torch.cat(mix))


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

    return CaseObjective(
        lower=t(case.lower, -np.inf), upper=t(case.upper, np.inf), C=t(A), d=t(b, np.inf),
        groups=torch.as_tensor(groups, device=device), strict=torch.as_tensor(strict, device=device),
    )
