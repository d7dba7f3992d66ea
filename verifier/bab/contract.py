"""Input-box contraction: shrink a subdomain's box to the part where the unsafe set can lie.

On a subdomain, CROWN gives each spec row a linear lower bound valid on its box,
``row_s(x) >= a_s . x + c_s``.  A point of polytope ``p`` has ``row_s(x) <= 0`` for
each of its rows (in the closure), hence ``a_s . x + c_s <= 0``: the polytope's
points lie in the box cut by these halfspaces.  Interval constraint propagation
(bound tightening of each variable by each halfspace, a few rounds) shrinks the
box per polytope; a polytope whose box becomes empty is ruled out, and the
subdomain keeps the hull of the boxes of the polytopes left.  Every point cut off
is proven safe, so the search only has to cover what remains (this is the
input-space counterpart of LP-exact bounds on a star set, at interval cost).

Dropping part of a box is a proof step: the linear bounds are rigorous
(``backward_linear``), each cut is loosened by a bound of its own rounding
(``rounding.gamma``), and each new end is rounded outward.
"""

from __future__ import annotations

import torch

from verifier.bounds import down, eta, gamma, up

Tensor = torch.Tensor


def contract(
    A: Tensor, c: Tensor, lower: Tensor, upper: Tensor, groups: Tensor, open_: Tensor, rounds: int = 3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Shrink boxes ``[lower, upper]`` ``(B, n)`` by the halfspaces ``A x + c <= 0`` of each polytope.

    ``A`` ``(B, S, n)`` and ``c`` ``(B, S)`` are the rows' linear lower bounds on the boxes,
    ``groups`` ``(P, S)`` the rows of each polytope and ``open_`` ``(B, P)`` the polytopes
    still to be covered.  Returns the new boxes (the hull over the open polytopes left) and,
    per domain and polytope, whether the polytope is now ruled out ``(B, P)`` (which includes
    the polytopes that were not open).  A domain with every polytope ruled out keeps its box.
    """
    usable = torch.isfinite(c) & torch.isfinite(A).all(-1)  # (B, S)
    A = torch.where(usable.unsqueeze(-1), A, torch.zeros_like(A))
    b = torch.where(usable, -c, torch.zeros_like(c))  # each row: A x <= b
    member = groups.unsqueeze(0) & usable.unsqueeze(1)  # (B, P, S)
    lo = lower.unsqueeze(1).expand(-1, groups.shape[0], -1)  # (B, P, n)
    hi = upper.unsqueeze(1).expand(-1, groups.shape[0], -1)
    empty = ~open_
    for _ in range(rounds):
        lo, hi, cut_empty = _propagate(A, b, lo, hi, member)
        empty = empty | cut_empty | (lo > hi).any(-1)
    keep = ~empty  # (B, P)
    inf = torch.full_like(lo, torch.inf)
    new_lower = torch.where(keep.unsqueeze(-1), lo, inf).amin(1)
    new_upper = torch.where(keep.unsqueeze(-1), hi, -inf).amax(1)
    any_open = keep.any(1, keepdim=True)
    # never outside the old box (the propagated boxes already are not, up to the slack)
    new_lower = torch.where(any_open, torch.maximum(new_lower, lower), lower)
    new_upper = torch.where(any_open, torch.minimum(new_upper, upper), upper)
    return new_lower, new_upper, empty


def _propagate(A: Tensor, b: Tensor, lo: Tensor, hi: Tensor, member: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One round of bound tightening of the boxes ``(B, P, n)`` by the rows ``A x <= b`` of each polytope.

    For a row, ``a_j x_j <= b - sum_{k != j} min(a_k lo_k, a_k hi_k)`` bounds ``x_j``; all rows
    use the same (old) box and the results are intersected.
    """
    a = A.unsqueeze(1)  # (B, 1, S, n)
    low_term = torch.minimum(a * lo.unsqueeze(2), a * hi.unsqueeze(2))  # (B, P, S, n)
    total = low_term.sum(-1)  # (B, P, S)
    # the products, the sum and the subtractions below round by at most this much
    slack = gamma(A.shape[-1] + 4, A.dtype) * (low_term.abs().sum(-1) + b.abs().unsqueeze(1)) + eta(A.dtype)
    bb = b.unsqueeze(1)  # (B, 1, S)
    row_empty = member & (total > bb + slack)  # min over the box already above b
    rhs = (bb + slack - total).unsqueeze(-1) + low_term  # (B, P, S, n): b - sum_{k != j} min_k, loosened
    quotient = rhs / torch.where(a == 0, torch.ones_like(a), a)
    on = member.unsqueeze(-1)
    new_hi = torch.where(on & (a > 0), up(quotient), torch.full_like(quotient, torch.inf)).amin(2)  # (B, P, n)
    new_lo = torch.where(on & (a < 0), down(quotient), torch.full_like(quotient, -torch.inf)).amax(2)
    return torch.maximum(lo, new_lo), torch.minimum(hi, new_hi), row_empty.any(-1)
