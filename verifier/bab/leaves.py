"""Leaves of ReLU splitting: subdomains on which no ReLU is unstable, decided exactly.

A thin adapter: each leaf becomes an ``exact.region.Region`` and its open polytopes go to
``decide_region``'s certified ``"lp"`` engine (``exact.certified_lp``: HiGHS's optimum is a candidate
for the strict replay, its duals count only once ``bounds.lagrangian`` has recomputed them rigorously).
Anything but a proof or a replayed counterexample leaves the leaf undecided.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verifier.bab.search import ValidateFn
from verifier.bab.subproblems import SubproblemBatch
from verifier.certificate.record import NO_RECORD
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

Tensor = torch.Tensor


def decide_leaves(
    net: Network, obj: CaseObjective, leaves: SubproblemBatch, validate_fn: ValidateFn, deadline: Deadline,
    record: Any = NO_RECORD,
) -> tuple[Counterexample | None, Tensor]:
    """Decide each leaf, one LP per polytope its bound leaves open: a validated counterexample (the
    first found), and which leaves stayed undecided ``(B,)`` bool; ``record`` gets the proofs' multipliers."""
    from verifier.exact.region import decide_region

    open_polytopes = obj.left_open(leaves.bound)  # (B, P)
    undecided = torch.zeros(leaves.batch, dtype=torch.bool)
    found: list[Counterexample] = []

    def accept(x: np.ndarray) -> bool:
        cex = validate_fn(torch.as_tensor(x, dtype=net.dtype))
        if cex is not None:
            found.append(cex)
        return cex is not None

    for i in range(leaves.batch):
        indices = torch.nonzero(open_polytopes[i]).flatten().tolist()
        polytopes = [_polytope(obj, p) for p in indices]
        outcome = decide_region(net, _region(net, leaves, i), polytopes, "lp", deadline, accept=accept)
        if outcome.verdict is Status.SAT:
            return found[-1], undecided
        if outcome.verdict is Status.UNSAT and leaves.ident is not None:
            record.solved(int(leaves.ident[i]), obj, indices, outcome.duals)
        if outcome.verdict is not Status.UNSAT:
            undecided[i] = True
            if deadline.expired():
                undecided[i:] = True
                return None, undecided
    return None, undecided


def _region(net: Network, leaves: SubproblemBatch, i: int):
    """Leaf ``i`` as a ``Region`` (float64 arrays hold the network's dtype exactly)."""
    from verifier.exact.region import Region

    return Region.of(net, leaves.lower, leaves.upper, leaves.splits, leaves.intermediate, i)


def _polytope(obj: CaseObjective, p: int):
    from vnnlib.spec import Polytope

    rows = obj.groups[p].cpu().numpy()
    return Polytope(obj.C[rows].detach().cpu().double().numpy(), obj.d[rows].detach().cpu().double().numpy())
