"""The ``"lp"`` engine of ``decide_region``: regions on which every ReLU's sign is fixed, decided by a certified LP.

On such a region the network is affine (every sign fixed by the bounds or by a split), so one LP per
polytope over the encoding with every sign as a constraint minimizes the polytope's margin
``max_j A_j y - b_j`` exactly (up to HiGHS's accuracy).  HiGHS only proposes answers:

* its optimal point is a counterexample candidate, which must pass the caller's ``accept`` (the strict
  onnxruntime replay; the deepest point, so rounding in the replay does not reject a point on the
  boundary) or, without one, our forward pass;
* its duals give the Lagrangian certificate: weights ``lambda >= 0`` of the polytope's rows and a
  coefficient ``nu`` per pre-activation.  ``verifier.bounds.lagrangian`` recomputes the bound of
  ``sum_j lambda_j (A_j y - b_j)`` from the network's weights with those ``nu`` (rigorous rounding); the
  polytope is ruled out only when that bound is positive, since then some row is positive at every point.

Anything else (no certificate, a rejected candidate, the time limit) leaves the region undecided, never
unsat.  On a region with unstable ReLUs the LP is a relaxation: its certificates still prove, its
candidates are still replayed, it just decides less.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from verifier.bounds import Domains, IntermediateBounds, lagrangian_bound
from verifier.deadline import Deadline
from verifier.exact.encoding import EncodingOptions, NetworkEncoding, encode_network, margin_problem
from verifier.exact.highs import LpSession
from verifier.exact.outcome import ExactOutcome
from verifier.exact.region import Region
from verifier.exact.witness import Accept, confirmed
from verifier.network import Network
from verifier.result import Status, combine
from vnnlib.spec import Case, Polytope

log = logging.getLogger(__name__)
# every neuron's sign constrained, so that the LP is the exact problem on the region
_OPTIONS = EncodingOptions(margin_abs=0.0, margin_rel=0.0, inactive_rows=True)


def decide_lp(net: Network, region: Region, polytopes: Sequence[Polytope], deadline: Deadline,
              accept: Accept | None = None) -> ExactOutcome:
    """One certified LP per polytope; returns at the first ``SAT`` or undecided polytope."""
    start = time.monotonic()
    splits = None if region.splits is None else list(region.splits)
    enc = encode_network(net, region.lower, region.upper, region.bounds, splits, _OPTIONS)
    if enc.empty:  # the encoding's float64 intervals cross ours: not a proof; drop our bounds there
        enc = encode_network(net, region.lower, region.upper, None, splits, _OPTIONS)
    verdicts: list[Status] = []
    proofs: list[tuple[np.ndarray, np.ndarray]] = []
    for n, poly in enumerate(polytopes):
        if deadline.expired():
            return ExactOutcome(Status.TIMEOUT, None, time.monotonic() - start, n)
        problem = margin_problem(enc, poly.A, poly.b)
        # the margin column free below, so that its rows (not its bound) carry the duals
        problem = replace(problem, col_lower=np.append(problem.col_lower[:-1], -np.inf))
        session = LpSession(problem)
        session.minimize(problem.cost, problem.offset, deadline.remaining())
        values, duals = session.values(), session.duals()
        if values is not None and float(problem.cost @ values + problem.offset) <= 0:
            x = _candidate(net, region, poly, enc.input_of(values), accept)
            if x is not None:
                return ExactOutcome(Status.SAT, x, time.monotonic() - start, n + 1)
        # an empty region (its split signs contradict): the LP's Farkas ray, with the rows' weights 0 where
        # it gives none, certifies that no point satisfies the signs (HiGHS's "duals" of an infeasible LP
        # certify nothing)
        ray = session.farkas_ray()
        proof = (_certified(net, region, poly, enc, ray, empty=True) if ray is not None
                 else _certified(net, region, poly, enc, duals) if duals is not None else None)
        if proof is not None:
            verdicts.append(Status.UNSAT)
            proofs.append(proof)
            continue
        log.info("region: no certificate and no replayed counterexample; the region stays undecided")
        verdicts.append(Status.TIMEOUT if deadline.expired() else Status.UNKNOWN)
        break
    verdict = combine(verdicts)
    return ExactOutcome(verdict, None, time.monotonic() - start, len(verdicts),
                        duals=tuple(proofs) if verdict is Status.UNSAT else ())


def _candidate(net: Network, region: Region, poly: Polytope, x: np.ndarray, accept: Accept | None
               ) -> np.ndarray | None:
    """The LP's point as given to ``accept`` (which decides alone), or through our forward pass."""
    if accept is not None:
        return x if accept(x) else None
    return confirmed(net, x, Case(region.lower, region.upper, ()), poly)


def _certified(net: Network, region: Region, poly: Polytope, enc: NetworkEncoding, duals: np.ndarray,
               empty: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows' weights and the pre-activations' coefficients (all ReLU layers side by side) when the
    LP's duals (``empty``: its Farkas ray), recomputed rigorously, prove that some row of ``poly`` is
    positive at every point of the region; else None.  Weights all 0 with a positive bound prove the
    region has no point at all."""
    k = poly.A.shape[0]
    lam = np.clip(-duals[-k:], 0.0, None)  # the margin rows A_j y - s <= b_j come last
    if not empty and not np.any(lam > 0):
        return None
    dtype, device = net.dtype, net.device
    C, d = _exactly(poly.A, dtype, device), _exactly(poly.b, dtype, device)
    if C is None or d is None:
        log.info("region: the polytope is not exact in %s; no certificate", dtype)
        return None
    nu = {}
    for r, (act_rows, act, neg_rows, neg) in zip(net.relu_indices, enc.relu_rows, strict=True):
        v = np.zeros(net.nodes[r].size)
        v[act] = duals[act_rows]
        v[neg] = -duals[neg_rows]
        nu[r] = torch.as_tensor(v, dtype=dtype, device=device).reshape(1, 1, -1)
    lam_t = torch.as_tensor(lam, dtype=dtype, device=device).reshape(1, 1, k)
    domains, known = _torch_region(net, region)
    if not bool(lagrangian_bound(net, domains, known, C, d, lam_t, nu) > 0):
        return None
    flat = [nu[r].flatten().double().cpu().numpy() for r in net.relu_indices]
    return lam_t.flatten().double().cpu().numpy(), np.concatenate(flat) if flat else np.zeros(0)


def _torch_region(net: Network, region: Region) -> tuple[Domains, IntermediateBounds | None]:
    """The region in the network's dtype, rounded outwards where that dtype cannot hold it (a larger
    region: the bound over it holds on the region)."""
    dtype, device = net.dtype, net.device

    def out(a: np.ndarray, direction: float) -> torch.Tensor:
        return _outward(a, direction, dtype, device)[None]  # (1, n)

    splits = None if region.splits is None else tuple(
        torch.as_tensor(s, dtype=torch.int8, device=device)[None] for s in region.splits)
    domains = Domains(out(region.lower, -1.0), out(region.upper, 1.0), splits)
    if region.bounds is None:
        return domains, None
    known = IntermediateBounds(tuple(out(lo, -1.0) for lo in region.bounds.lower),
                               tuple(out(hi, 1.0) for hi in region.bounds.upper))
    return domains, known


def _outward(a: np.ndarray, direction: float, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.as_tensor(a, dtype=dtype)
    back = t.double().numpy()
    wrong = back < a if direction > 0 else back > a
    if wrong.any():
        t = torch.where(torch.as_tensor(wrong), torch.nextafter(t, torch.full_like(t, direction * np.inf)), t)
    return t.to(device)


def _exactly(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor | None:
    t = torch.as_tensor(a, dtype=dtype)
    return t.to(device) if np.array_equal(t.double().numpy(), a) else None
