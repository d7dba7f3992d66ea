"""The MILP engine: a whole spec (``milp_verify``) or one region (``milp_check``), on HiGHS.

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
from dataclasses import dataclass

import numpy as np
import torch

from verifier.deadline import Deadline
from verifier.exact.encoding import (
    EncodingOptions,
    NetworkEncoding,
    ReluBounds,
    as_relu_bounds,
    as_splits,
    encode_network,
    margin_problem,
    polytope_problem,
)
from verifier.exact.highs import solve_mip
from verifier.exact.lp_relaxation import lp_tighten
from verifier.exact.options import MilpOptions
from verifier.exact.outcome import ExactOutcome
from verifier.exact.witness import Accept, confirmed
from verifier.network import Network
from vnnlib.spec import Case, Polytope, Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Answer:
    """One problem's answer: verdict "unsat" (ruled out), "sat", "timeout" or "unknown"."""

    verdict: str
    x: np.ndarray | None = None
    problems: int = 1


def milp_verify(net: Network, spec: Spec, deadline: Deadline, options: MilpOptions = MilpOptions(),
                accept: Accept | None = None) -> ExactOutcome:
    """Decide ``spec`` on ``net`` by one MILP per (case, polytope).

    ``accept`` (e.g. the strict onnxruntime replay) must take a witness too: a feasible point it
    rejects (one on the boundary) is followed by the deepest point before answering.
    """
    start = time.monotonic()
    problems = binaries = 0
    pending: list[str] = []
    for c, case in enumerate(spec.cases):
        if deadline.expired():
            pending.append("timeout")
            break
        bounds = case_bounds(net, case.lower, case.upper, deadline, options)
        enc = encode_network(net, case.lower, case.upper, bounds, options=_enc_options(options))
        binaries = max(binaries, enc.problem.n_binary)
        log.debug("milp case %d: %d binaries, %d rows", c, enc.problem.n_binary, enc.problem.A.shape[0])
        if enc.empty:
            continue
        for poly in case.polytopes:
            answer = _decide(net, enc, case, poly, deadline, options, accept)
            problems += answer.problems
            if answer.verdict == "sat":
                return ExactOutcome("sat", answer.x, time.monotonic() - start, problems, binaries)
            if answer.verdict != "unsat":
                pending.append(answer.verdict)
    verdict = "unsat" if not pending else ("timeout" if "timeout" in pending else "unknown")
    return ExactOutcome(verdict, None, time.monotonic() - start, problems, binaries)


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
    lower, upper = _flat(lower), _flat(upper)
    bounds = as_relu_bounds(pre_bounds, net)
    split_list = as_splits(splits, net)
    if options.lp_tighten:
        budget = _share(deadline, options.tighten_share)
        bounds = lp_tighten(net, lower, upper, bounds, splits=split_list, deadline=budget, threads=options.threads)
    enc = encode_network(net, lower, upper, bounds, split_list, _enc_options(options))
    if enc.empty:
        return ExactOutcome("unsat", None, time.monotonic() - start, 0, 0, "splits contradict the bounds")
    case = Case(lower, upper, ())
    answer = _decide(net, enc, case, Polytope(polytope_A, polytope_b, strict), deadline, options, accept)
    return ExactOutcome(answer.verdict, answer.x, time.monotonic() - start, answer.problems, enc.problem.n_binary)


def case_bounds(
    net: Network, lower: np.ndarray, upper: np.ndarray, deadline: Deadline, options: MilpOptions = MilpOptions()
) -> ReluBounds | None:
    """The tightest pre-activation bounds the options allow on one box (None: interval only)."""
    bounds = crown_bounds(net, lower, upper) if options.crown_bounds else None
    if options.lp_tighten:
        budget = _share(deadline, options.tighten_share)
        bounds = lp_tighten(net, lower, upper, bounds, deadline=budget, threads=options.threads)
    return bounds


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
            return _Answer("timeout", problems=0)
        solve = solve_mip(polytope_problem(enc, poly.A, poly.b), limit, options.threads)
        log.debug("milp feasibility: %s in %.3fs", solve.message, solve.time)
        if solve.status == "infeasible":
            return _Answer("unsat")
        if solve.status != "feasible":
            return _Answer(solve.status)
        x = confirmed(net, enc.input_of(solve.values), case, poly, accept)
        if x is not None:
            return _Answer("sat", x)
        log.debug("milp candidate failed the forward check; looking for the deepest point")
        answer = _margin(net, enc, case, poly, deadline, options, accept)
        return _Answer(answer.verdict, answer.x, answer.problems + 1)
    return _margin(net, enc, case, poly, deadline, options, accept)


def _margin(net: Network, enc: NetworkEncoding, case: Case, poly: Polytope, deadline: Deadline,
            options: MilpOptions, accept: Accept | None = None) -> _Answer:
    """``min_x max_j A_j f(x) - b_j``, stopped as soon as its sign is known."""
    limit = _limit(deadline, options)
    if limit <= 0:
        return _Answer("timeout", problems=0)
    solve = solve_mip(margin_problem(enc, poly.A, poly.b), limit, options.threads, stop_below=0.0)
    log.debug("milp margin: %s, objective %g, bound %g", solve.message, solve.objective, solve.dual_bound)
    if solve.status == "infeasible" or solve.dual_bound > 0:
        return _Answer("unsat")
    if solve.values is not None:
        x = confirmed(net, enc.input_of(solve.values), case, poly, accept)
        if x is not None:
            return _Answer("sat", x)
    return _Answer("timeout" if solve.status == "timeout" else "unknown")


def crown_bounds(net: Network, lower: np.ndarray, upper: np.ndarray) -> ReluBounds | None:
    """CROWN pre-activation bounds (float64) if the bounding engine provides ``crown``."""
    try:
        from verifier.bounds import Domains, crown
    except ImportError:
        return None
    net64 = net.to(dtype=torch.float64)
    dom = Domains(torch.as_tensor(lower, dtype=torch.float64)[None], torch.as_tensor(upper, dtype=torch.float64)[None])
    with torch.no_grad():
        result = crown(net64, dom)
    return as_relu_bounds(result.intermediate, net)


def _enc_options(options: MilpOptions) -> EncodingOptions:
    return EncodingOptions(relax=False, margin_abs=options.margin_abs, margin_rel=options.margin_rel)


def _share(deadline: Deadline, share: float) -> Deadline:
    """A deadline after ``share`` of the remaining time (the same one when there is no limit)."""
    remaining = deadline.remaining()
    return deadline if not np.isfinite(remaining) else Deadline(time.monotonic() + share * remaining)


def _limit(deadline: Deadline, options: MilpOptions) -> float:
    remaining = deadline.remaining()
    return remaining if options.problem_time_limit is None else min(remaining, options.problem_time_limit)


def _flat(t) -> np.ndarray:
    a = t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
    return a.reshape(-1)
