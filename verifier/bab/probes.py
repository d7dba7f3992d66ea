"""Counterexample candidates met during the search: concrete points whose outputs already look unsafe.

They are only proposals: each goes through the strict replay (``ValidateFn``) before ``sat``.
"""

from __future__ import annotations

import torch

from verifier.bab.search import ValidateFn, still_open
from verifier.bab.subproblems import SubproblemBatch
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample

Tensor = torch.Tensor
Candidates = tuple[Tensor, Tensor]  # points (K, n_in) and their concrete violations (K,), best first

LIMIT = 8  # candidates replayed per check


def unsafe_points(net: Network, obj: CaseObjective, x: Tensor) -> Candidates:
    """The (at most ``LIMIT``) points of ``x`` ``(K, n_in)`` whose concrete violation is at most 0, best first."""
    if x.shape[0] == 0:
        return x, x.new_zeros(0)
    with torch.no_grad():
        v = obj.violation(forward(net, x))
    keep = torch.nonzero(v <= 0).flatten()
    keep = keep[torch.argsort(v[keep])[:LIMIT]]
    return x[keep], v[keep]


def validate_best(candidates: list[Candidates], validate_fn: ValidateFn) -> Counterexample | None:
    """Replay the best ``LIMIT`` of the ``candidates``; the first that passes, or None."""
    if not candidates:
        return None
    x, v = torch.cat([c[0] for c in candidates]), torch.cat([c[1] for c in candidates])
    for i in torch.argsort(v)[:LIMIT].tolist():
        cex = validate_fn(x[i])
        if cex is not None:
            return cex
    return None


def check_points(net: Network, obj: CaseObjective, x: Tensor, validate_fn: ValidateFn) -> Counterexample | None:
    """Replay the points of ``x`` whose concrete outputs look unsafe, best first."""
    return validate_best([unsafe_points(net, obj, x)], validate_fn)


def check_centres(net: Network, obj: CaseObjective, batch: SubproblemBatch, validate_fn: ValidateFn
                  ) -> Counterexample | None:
    """Replay the box centres whose concrete outputs look unsafe."""
    return check_points(net, obj, (batch.lower + batch.upper) / 2, validate_fn)


def unsafe_corners(net: Network, obj: CaseObjective, children: SubproblemBatch, A: Tensor) -> Candidates:
    """The box corners minimizing each row's linear lower bound ``A`` ``(B, S, n_in)`` on the children
    still open, whose concrete violation is at most 0.

    A narrow counterexample of a low-dimensional input often sits on the boundary of the case box,
    where no box centre ever lies; once a box is small, the minimizers of its nearly exact linear
    bounds land on it."""
    open_ = still_open(obj, children.bound)
    lo, hi = children.lower[open_].unsqueeze(1), children.upper[open_].unsqueeze(1)
    return unsafe_points(net, obj, torch.where(A[open_] >= 0, lo, hi).reshape(-1, children.lower.shape[1]))
