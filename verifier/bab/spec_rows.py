"""Which spec rows each subdomain of a ReLU-split search bounds.

A case is proven when every polytope is ruled out, and a polytope is ruled out
on a subdomain as soon as one of its rows has a positive lower bound; rows of a
polytope already ruled out there need no more work.  Bounding cost grows with
the number of rows, so each subdomain bounds only the rows of the polytopes it
leaves open (``needed_rows``), and the root can be replicated once per open
polytope (``one_polytope_each``), each copy answering for its own polytope only.

Conventions: ``bound`` ``(B, S)`` holds a lower bound of each row, except that a
row may be ``+inf`` where the subdomain is not responsible for its polytope
(another copy is).  Either way, a polytope whose margin is positive needs nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import Betas, CrownState, Slopes, down, gamma, linear_bound
from verifier.network import Network
from verifier.objective import CaseObjective, exact_rows

Tensor = torch.Tensor


def combine_rows(obj: CaseObjective, y_mag: Tensor | None = None) -> tuple[CaseObjective, Tensor]:
    """``obj`` with one more row per polytope of several rows: their sum scaled by a power of 2 near
    their average; and the map ``(S', S)``.

    A point of the polytope has every ``C_j y - d_j <= 0``, hence any non-negative combination
    ``<= 0`` too, so a positive lower bound of the combination also rules the polytope out
    (and the concrete violation, a max over rows, is unchanged).  Per-row bounds cannot
    prove ``max_j (C_j y - d_j) > 0`` on a domain where each row alone dips below 0;
    the combination often can, long before the leaves.  ``y_mag`` ``(n_out,)``, a bound of ``|y|`` on
    the case box, covers the rounding of combinations that the working precision cannot hold
    exactly; without it they are left out (``exact_rows``).
    """
    S = obj.n_rows
    multi = torch.nonzero(obj.groups.sum(1) >= 2).flatten()
    counts = obj.groups[multi].sum(1, keepdim=True).double()
    weights = obj.groups[multi].double() / torch.exp2(torch.ceil(torch.log2(counts)))  # (P', S) dyadic
    C, d, keep = exact_rows(weights.cpu().numpy(), obj.C.double().cpu().numpy(), obj.d.double().cpu().numpy(),
                            obj.C.dtype, None if y_mag is None else y_mag.double().cpu().numpy())
    keep_t = torch.as_tensor(keep, device=multi.device)
    multi, weights = multi[keep_t], weights[keep_t].to(obj.C)
    mix = torch.cat([torch.eye(S, dtype=obj.C.dtype, device=obj.C.device), weights])  # (S', S)
    extra = torch.zeros(obj.groups.shape[0], multi.shape[0], dtype=torch.bool, device=obj.groups.device)
    extra[multi, torch.arange(multi.shape[0], device=multi.device)] = True
    return CaseObjective(
        lower=obj.lower, upper=obj.upper, C=torch.cat([obj.C, C.to(obj.C)]), d=torch.cat([obj.d, d.to(obj.d)]),
        groups=torch.cat([obj.groups, extra], 1), strict=torch.cat([obj.strict, obj.strict.new_zeros(multi.shape[0])]),
        basis=mix.double() @ obj.row_basis().to(mix.device),
    ), mix


def mix_rows(t: Tensor, mix: Tensor) -> Tensor:
    """Rows ``(B, S, ...)`` combined by ``mix`` ``(S', S)`` (non-negative) into ``(B, S', ...)``; an
    infinite row with weight 0 does not contribute.  For warm starts (slopes, multipliers): a lower
    bound of a combination is ``mix_lower``."""
    w = mix.reshape(1, *mix.shape, *([1] * (t.dim() - 2)))
    return torch.where(w > 0, w * t.unsqueeze(1), torch.zeros_like(w)).sum(2)


def mix_lower(lower: Tensor, mix: Tensor) -> Tensor:
    """A rigorous lower bound ``(B, S')`` of each combined row from lower bounds ``(B, S)`` of the rows
    (``mix_rows`` rounded down by a bound of its rounding)."""
    value = mix_rows(lower, mix)
    terms = mix_rows(lower.abs(), mix)
    return down(value - gamma(mix.shape[1] + 1, lower.dtype) * terms.nan_to_num(0.0, posinf=0.0))


def open_polytopes(obj: CaseObjective, bound: Tensor) -> Tensor:
    """Indices of the polytopes that ``bound`` ``(S,)`` leaves open, highest margin first."""
    margin = obj.polytope_margins(bound)  # (P,)
    idx = torch.nonzero(obj.left_open(bound)).flatten()
    return idx[torch.argsort(margin[idx], descending=True)]


def one_polytope_each(obj: CaseObjective, bound: Tensor, polytopes: Tensor) -> Tensor:
    """One copy of the root bound ``(S,)`` per polytope in ``polytopes`` ``(P',)``: ``(P', S)``,
    each ``+inf`` outside its own polytope's rows."""
    mine = obj.groups[polytopes]  # (P', S)
    return torch.where(mine, bound.unsqueeze(0), torch.full_like(mine, torch.inf, dtype=bound.dtype))


@dataclass(frozen=True, eq=False)
class RowSubset:
    """Per subdomain, the ``K`` spec rows it bounds (padded by repeating its first one)."""

    idx: Tensor  # (B, K) long, into the S rows
    valid: Tensor  # (B, K) bool: False on the padding

    def gather(self, t: Tensor) -> Tensor:
        """``t`` ``(B, S, ...)`` restricted to the rows: ``(B, K, ...)``."""
        idx = self.idx.reshape(*self.idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return t.gather(1, idx)

    def scatter(self, full: Tensor, part: Tensor) -> Tensor:
        """``full`` ``(B, S, ...)`` with the rows replaced by ``part`` ``(B, K, ...)`` (the padding
        repeats a row with the same values)."""
        idx = self.idx.reshape(*self.idx.shape, *([1] * (full.dim() - 2))).expand(-1, -1, *full.shape[2:])
        return full.scatter(1, idx, part)


def needed_rows(obj: CaseObjective, bound: Tensor) -> RowSubset:
    """The rows of the polytopes each subdomain leaves open (``bound`` ``(B, S)``), at least one."""
    need = obj.rows_of(obj.left_open(bound))  # (B, S)
    K = max(1, int(need.sum(1).max())) if need.numel() else 1
    order = torch.sort(need.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
    valid = need.gather(1, order)
    return RowSubset(torch.where(valid, order, order[:, :1]), valid)


def restrict(obj: CaseObjective, batch: SubproblemBatch, rows: RowSubset
             ) -> tuple[SubproblemBatch, Tensor, Tensor]:
    """``batch`` with its per-row state (bound, final slopes, multipliers) cut to ``rows``, and
    the spec rows ``C`` ``(B, K, n_out)`` and ``d`` ``(B, K)``."""
    B = batch.batch
    sub = replace(
        batch, bound=rows.gather(batch.bound),
        slopes=None if batch.slopes is None else Slopes(tuple(rows.gather(t) for t in batch.slopes.final),
                                                        batch.slopes.intermediate),
        betas=None if batch.betas is None else Betas(tuple(rows.gather(t) for t in batch.betas.values)),
    )
    return sub, rows.gather(obj.C.expand(B, -1, -1)), rows.gather(obj.d.expand(B, -1))


def batch_bound(net: Network, batch: SubproblemBatch, state: CrownState, C: Tensor, d: Tensor) -> Tensor:
    """Lower bounds ``(B, K)`` of the rows ``C``, ``d`` from ``state`` with the batch's own slopes and
    multipliers (one backward pass)."""
    return linear_bound(net, batch.domains, state, C, d, None if batch.slopes is None else batch.slopes.final,
                        None if batch.betas is None else batch.betas.values)
