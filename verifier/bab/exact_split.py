"""The SMT engine's search: input bisection in the one branch-and-bound loop, small boxes decided by z3.

Branch: the box's widest side, relative to the case box, is halved (deepest box first, as a depth-first
search).  Bound: rigorous pre-activation and row bounds of each box (``verifier.bounds``: CROWN or
interval, in float64); a polytope is ruled out on a box only where one of its rows has a positive lower
bound.  Settle: the LP relaxation's optimum on each open box is tried as a counterexample (a hint our
forward pass confirms); a box with few unstable ReLUs (``split_unstable``), too deep, or with too many
inputs to bisect is one ``decide_region(..., "smt")`` on its open polytopes: z3 over exact rationals.
A network with inexact constants gets no ``unsat`` (``verifier.constants``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from verifier.bab.branching import bisect_inputs
from verifier.bab.options import BabOptions
from verifier.bab.search import BabStats, Rule, search
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import Domains, crown, ibp
from verifier.deadline import Deadline
from verifier.exact import ExactOutcome, Region, decide_region
from verifier.exact.options import SmtOptions
from verifier.exact.outcome import INEXACT
from verifier.exact.region import relaxation_candidate
from verifier.forward import forward
from verifier.network import Network, has_errors
from verifier.objective import CaseObjective, case_objective
from verifier.result import Counterexample, Status, combine
from vnnlib.spec import Case, Polytope, Spec

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class _Tally:
    """Counters of one run (private, mutable)."""

    checks: int = 0
    disjunctions: int = 0
    boxes: int = 0


def smt_verify(net: Network, spec: Spec, deadline: Deadline, options: SmtOptions = SmtOptions()) -> ExactOutcome:
    """Decide ``spec`` on ``net`` with z3, case by case; a ``SAT`` carries a candidate that our forward pass
    confirmed (the caller still replays it through onnxruntime)."""
    start = time.monotonic()
    tally = _Tally()
    verdicts: list[Status] = []
    for case in spec.cases:
        status, cex = _search_case(net, case, deadline, options, tally)
        if status is Status.SAT:
            return ExactOutcome(Status.SAT, cex.x, time.monotonic() - start, tally.checks, tally.disjunctions)
        verdicts.append(status)
        if status is not Status.UNSAT and deadline.expired():
            break
    verdict = combine(verdicts)
    message = f"{tally.boxes} boxes"
    if verdict is Status.UNSAT and has_errors(net):
        # z3 decided the network with its constants as stored (and the bounds closed boxes on them);
        # some are only close to the model's
        verdict, message = Status.UNKNOWN, INEXACT
        log.info("smt: %s", message)
    return ExactOutcome(verdict, None, time.monotonic() - start, tally.checks, tally.disjunctions, message)


def smt_check(
    net: Network, lower, upper, polytope_A: np.ndarray, polytope_b: np.ndarray, deadline: Deadline,
    options: SmtOptions = SmtOptions(), strict: np.ndarray | None = None,
) -> ExactOutcome:
    """Decide one polytope on one box."""
    case = Case(np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64),
                (Polytope(polytope_A, polytope_b, strict),))
    return smt_verify(net, Spec((case,), net.n_inputs, net.n_outputs), deadline, options)


def _search_case(net: Network, case: Case, deadline: Deadline, options: SmtOptions, tally: _Tally
                 ) -> tuple[Status, Counterexample | None]:
    if deadline.expired():
        return Status.TIMEOUT, None
    obj = case_objective(case, torch.float64, net.device)
    rule = smt_rule(net, obj, list(case.polytopes), deadline, options, tally)
    root = rule.bound(SubproblemBatch(
        lower=obj.lower.unsqueeze(0), upper=obj.upper.unsqueeze(0), splits=None,
        bound=obj.C.new_full((1, obj.n_rows), -torch.inf), depth=torch.zeros(1, dtype=torch.int32)))
    live = obj.left_open(root.bound)[0]
    if not bool(live.any()):
        return Status.UNSAT, None
    if options.lp_probe:  # the whole box's relaxation first, as for every box the search opens
        region = Region.of(net, root.lower, root.upper, None, root.intermediate)
        x = relaxation_candidate(net, region, [case.polytopes[p] for p in torch.nonzero(live).flatten().tolist()])
        if x is not None:
            return Status.SAT, _witness(net, x)
    # the loop reads only the network's device (no attack in this rule)
    return search(net, obj, root, rule, lambda x: None, BabOptions(), deadline, torch.Generator(), BabStats())


def smt_rule(net: Network, obj: CaseObjective, polys: list[Polytope], deadline: Deadline, options: SmtOptions,
             tally: _Tally) -> Rule:
    """Bisection of the input box with z3 leaves (see the module doc): bounds on ``net`` in float64 (exact
    for its weights), z3 and the witness check on ``net`` as it is."""
    net64 = net.to(dtype=torch.float64)
    full = (obj.upper - obj.lower).clamp(min=1e-300)
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)

    def splittable(batch: SubproblemBatch) -> Tensor:
        if batch.intermediate is None or options.split_unstable <= 0 or net.n_inputs > options.split_max_inputs:
            return torch.zeros(batch.batch, dtype=torch.bool, device=batch.lower.device)
        unstable = batch.intermediate.unstable_count(batch.batch)
        return (batch.depth < options.split_max_depth) & (unstable > options.split_unstable)

    def branch(parents: SubproblemBatch) -> SubproblemBatch:
        # only a root can be settled without a split: it passes through as it is
        split = splittable(parents)
        if not bool(split.all()):
            return parents
        dims = ((parents.upper - parents.lower) / full).argmax(dim=1)
        return bisect_inputs(parents, dims)

    def bound(children: SubproblemBatch) -> SubproblemBatch:
        tally.boxes += children.batch
        if options.bounds == "none":
            return children
        method = crown if options.bounds == "crown" else ibp
        with torch.no_grad():
            res = method(net64, Domains(children.lower, children.upper), C.expand(children.batch, -1, -1),
                         d.expand(children.batch, -1))
        return SubproblemBatch(lower=children.lower, upper=children.upper, splits=None,
                               bound=torch.maximum(children.bound, res.lower), depth=children.depth,
                               intermediate=res.intermediate)

    def settle(open_: SubproblemBatch) -> tuple[SubproblemBatch, Counterexample | None, bool]:
        live = obj.left_open(open_.bound)  # (B, P)
        split = splittable(open_)
        undecided = False
        for i in range(open_.batch):
            region = Region.of(net, open_.lower, open_.upper, None, open_.intermediate, i)
            polytopes = [polys[p] for p in torch.nonzero(live[i]).flatten().tolist()]
            x = relaxation_candidate(net, region, polytopes) if options.lp_probe else None
            if x is None and not bool(split[i]):
                outcome = decide_region(net, region, polytopes, "smt", deadline, options)
                tally.checks += outcome.problems
                tally.disjunctions = max(tally.disjunctions, outcome.binaries)
                x = outcome.x if outcome.verdict is Status.SAT else None
                undecided |= outcome.verdict is not Status.SAT and outcome.verdict is not Status.UNSAT
            if x is not None:
                return open_, _witness(net, x), False
        return open_.select(split), None, undecided

    return Rule(branch=branch, bound=bound, batch_size=1, settle=settle,
                priority=lambda batch: -batch.depth.to(torch.float64), attack=False, name="smt")


def _witness(net: Network, x: np.ndarray) -> Counterexample:
    """A candidate our forward pass confirmed, with our outputs (the caller replays it in onnxruntime)."""
    with torch.no_grad():
        y = forward(net, torch.as_tensor(x, dtype=net.dtype, device=net.device)[None])[0]
    return Counterexample(np.asarray(x, dtype=np.float64), y.cpu().numpy().astype(np.float64))
