"""The MILP engine: a whole spec (``milp_verify``) or one region (``milp_check``), on HiGHS.

Both go through ``exact.region.decide_region``, whose ``"milp"`` engine is ``decide_milp`` here.
Each (case, polytope) pair is one problem, solved in order with an early exit
on the first confirmed counterexample.  HiGHS's ``infeasible`` is its word, not
a proof (the encoding is float64 and its MIP status is not certified): an
``unsat`` from here is a hint that ``api.run_pipeline`` proves by branch and
bound.  A feasible point is a candidate that our forward pass must confirm (the
caller then replays it through onnxruntime); a time limit gives ``timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from verifier.deadline import Deadline
from verifier.exact.box_bounds import case_bounds, crown_bounds
from verifier.exact.encoding import (
    EncodingOptions,
    NetworkEncoding,
    as_relu_bounds,
    encode_network,
    margin_problem,
    polytope_problem,
)
from verifier.exact.highs import MipStatus, solve_mip
from verifier.exact.lp_relaxation import lp_tighten
from verifier.exact.options import MilpOptions
from verifier.exact.outcome import ExactOutcome
from verifier.exact.region import Region, decide_region
from verifier.exact.witness import Accept, confirmed
from verifier.network import Network
from verifier.result import Status, combine
from vnnlib.spec import Case, Polytope, Spec

__all__ = ["MilpOptions", "case_bounds", "count_unstable", "crown_bounds", "decide_milp", "milp_check",
           "milp_verify"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Answer:
    """One problem's answer: ``UNSAT`` (ruled out, HiGHS's word), ``SAT`` (with ``x``), ``TIMEOUT`` or ``UNKNOWN``."""

    verdict: Status
    x: np.ndarray | None = None
    problems: int = 1


def milp_verify(net: Network, spec: Spec, deadline: Deadline, options: MilpOptions = MilpOptions(),
                accept: Accept | None = None) -> ExactOutcome:
    """Decide ``spec`` on ``net`` by one MILP per (case, polytope), each case a ``decide_region``.

    ``accept`` (e.g. the strict onnxruntime replay) must take a witness too: a feasible point it
    rejects (one on the boundary) is followed by the deepest point before answering.
    """
    start = time.monotonic()
    problems = binaries = 0
    verdicts: list[Status] = []
    for c, case in enumerate(spec.cases):
        if deadline.expired():
            verdicts.append(Status.TIMEOUT)
            break
        region = Region(case.lower, case.upper, bounds=case_bounds(net, case.lower, case.upper, deadline, options))
        outcome = decide_region(net, region, case.polytopes, "milp", deadline, options, accept)
        problems += outcome.problems
        binaries = max(binaries, outcome.binaries)
        log.debug("milp case %d: %s, %d binaries", c, outcome.verdict, outcome.binaries)
        if outcome.verdict is Status.SAT:
            return ExactOutcome(Status.SAT, outcome.x, time.monotonic() - start, problems, binaries)
        verdicts.append(outcome.verdict)
    return ExactOutcome(combine(verdicts), None, time.monotonic() - start, problems, binaries)


def milp_check(
    net: Network,
    lower,
    upper,
    polytope_A: np.ndarray,
    polytope_b: np.ndarray,
    pre_bounds,
    deadline: Deadline,
    splits=None,
    options: MilpOptions = MilpOptions(),
    strict: np.ndarray | None = None,
    accept: Accept | None = None,
) -> ExactOutcome:
    """Decide one polytope on one (sub-)box with split states (+1 active, -1 inactive, 0 free);
    ``accept`` as in ``milp_verify``.

    ``pre_bounds`` must be sound for this sub-box and these splits (a
    BoundResult's ``intermediate`` with one row, ``ReluBounds``, or pairs); they
    are used as given (no LP tightening unless ``options.lp_tighten``).
    """
    start = time.monotonic()
    region = Region.of(net, lower, upper, splits, pre_bounds)
    if options.lp_tighten:
        budget = deadline.share(options.tighten_share)
        splits = None if region.splits is None else list(region.splits)
        bounds = lp_tighten(net, region.lower, region.upper, region.bounds, splits=splits, deadline=budget,
                            threads=options.threads)
        region = replace(region, bounds=bounds)
    outcome = decide_region(net, region, [Polytope(polytope_A, polytope_b, strict)], "milp", deadline, options,
                            accept)
    return replace(outcome, time=time.monotonic() - start)


def decide_milp(net: Network, region: Region, polytopes: Sequence[Polytope], deadline: Deadline,
                options: MilpOptions, accept: Accept | None = None) -> ExactOutcome:
    """``decide_region``'s ``"milp"`` engine: the region encoded once, one problem per polytope."""
    start = time.monotonic()
    splits = None if region.splits is None else list(region.splits)
    enc = encode_network(net, region.lower, region.upper, region.bounds, splits, _enc_options(options))
    if enc.empty:
        return ExactOutcome(Status.UNSAT, None, time.monotonic() - start, 0, 0, "splits contradict the bounds")
    case = Case(region.lower, region.upper, ())
    problems, verdicts = 0, []
    for poly in polytopes:
        answer = _decide(net, enc, case, poly, deadline, options, accept)
        problems += answer.problems
        if answer.verdict is Status.SAT:
            return ExactOutcome(Status.SAT, answer.x, time.monotonic() - start, problems, enc.problem.n_binary)
        verdicts.append(answer.verdict)
    return ExactOutcome(combine(verdicts), None, time.monotonic() - start, problems, enc.problem.n_binary)


def count_unstable(net: Network, lower, upper, pre_bounds=None) -> int:
    """Number of ReLUs whose pre-activation can take both signs on the box (for the auto engine)."""
    bounds = as_relu_bounds(pre_bounds, net)
    enc = encode_network(net, _flat(lower), _flat(upper), bounds, options=EncodingOptions(relax=True))
    return enc.bounds.unstable()


def _decide(net: Network, enc: NetworkEncoding, case: Case, poly: Polytope, deadline: Deadline,
            options: MilpOptions, accept: Accept | None = None) -> _Answer:
    """One polytope: feasibility first (unless margin mode), then the deepest point if needed."""
    if options.objective == "feasibility":
        limit = _limit(deadline, options)
        if limit <= 0:
            return _Answer(Status.TIMEOUT, problems=0)
        solve = solve_mip(polytope_problem(enc, poly.A, poly.b), limit, options.threads)
        log.debug("milp feasibility: %s in %.3fs", solve.message, solve.time)
        if solve.status is MipStatus.INFEASIBLE:
            return _Answer(Status.UNSAT)
        if solve.status is not MipStatus.FEASIBLE:
            return _Answer(Status.TIMEOUT if solve.status is MipStatus.TIMEOUT else Status.UNKNOWN)
        x = confirmed(net, enc.input_of(solve.values), case, poly, accept)
        if x is not None:
            return _Answer(Status.SAT, x)
        log.debug("milp candidate failed the forward check; looking for the deepest point")
        answer = _margin(net, enc, case, poly, deadline, options, accept)
        return _Answer(answer.verdict, answer.x, answer.problems + 1)
    return _margin(net, enc, case, poly, deadline, options, accept)


def _margin(net: Network, enc: NetworkEncoding, case: Case, poly: Polytope, deadline: Deadline,
            options: MilpOptions, accept: Accept | None = None) -> _Answer:
    """``min_x max_j A_j f(x) - b_j``, stopped as soon as its sign is known."""
    limit = _limit(deadline, options)
    if limit <= 0:
        return _Answer(Status.TIMEOUT, problems=0)
    solve = solve_mip(margin_problem(enc, poly.A, poly.b), limit, options.threads, stop_below=0.0)
    log.debug("milp margin: %s, objective %g, bound %g", solve.message, solve.objective, solve.dual_bound)
    if solve.status is MipStatus.INFEASIBLE or solve.dual_bound > 0:
        return _Answer(Status.UNSAT)
    if solve.values is not None:
        x = confirmed(net, enc.input_of(solve.values), case, poly, accept)
        if x is not None:
            return _Answer(Status.SAT, x)
    return _Answer(Status.TIMEOUT if solve.status is MipStatus.TIMEOUT else Status.UNKNOWN)


def _enc_options(options: MilpOptions) -> EncodingOptions:
    return EncodingOptions(relax=False, margin_abs=options.margin_abs, margin_rel=options.margin_rel)


def _limit(deadline: Deadline, options: MilpOptions) -> float:
    remaining = deadline.remaining()
    return remaining if options.problem_time_limit is None else min(remaining, options.problem_time_limit)


def _flat(t) -> np.ndarray:
    a = t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
    return a.reshape(-1)
