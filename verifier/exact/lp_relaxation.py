"""The LP (triangle) relaxation as a bounding method, and layerwise LP tightening.

Every unstable ReLU is replaced by its convex hull on ``[l, u]`` (Ehlers,
ATVA 2017).  Each LP is built once and solved for many objectives by changing
only the cost vector (warm-started simplex); every returned bound is recomputed
by weak duality (see ``LpSession``) for the LP as encoded in float64: hints for
the MILP engine, not proofs about the network.
"""

from __future__ import annotations

import logging

import numpy as np

from verifier.deadline import Deadline
from verifier.exact.encoding import (
    Affine,
    EncodingOptions,
    MipProblem,
    ReluBounds,
    as_relu_bounds,
    as_splits,
    encode_network,
    linear_objective,
)
from verifier.exact.highs import LpSession
from verifier.network import Network

log = logging.getLogger(__name__)


def lp_tighten(
    net: Network,
    lower: np.ndarray,
    upper: np.ndarray,
    pre_bounds=None,
    *,
    splits=None,
    deadline: Deadline | None = None,
    all_neurons: bool = False,
    threads: int = 1,
) -> ReluBounds:
    """Pre-activation bounds tightened layer by layer: min and max of every unstable
    neuron (every neuron with ``all_neurons``) over the triangle relaxation of the layers
    before it.  ``pre_bounds`` (optional, sound) seed the relaxation; on an expired
    deadline the remaining neurons keep their interval bounds."""
    deadline = deadline or Deadline()
    pre = as_relu_bounds(pre_bounds, net)

    def tighten(k: int, problem: MipProblem, expr: Affine, lo: np.ndarray, hi: np.ndarray):
        todo = np.flatnonzero(np.ones(lo.shape, dtype=bool) if all_neurons else (lo < 0) & (hi > 0))
        if todo.size == 0 or deadline.expired():
            return lo, hi
        lo, hi = lo.copy(), hi.copy()
        session = LpSession(problem, threads)
        for j in todo:  # one warm-started LP per objective
            if deadline.expired():
                log.debug("lp_tighten: deadline reached in relu layer %d", k)
                break
            cost = _expr_row(expr, j, problem.n_cols)
            lo[j] = max(lo[j], session.minimize(cost, expr.c[j], deadline.remaining()))
            if deadline.expired():
                break
            hi[j] = min(hi[j], -session.minimize(-cost, -expr.c[j], deadline.remaining()))
        return lo, hi

    enc = encode_network(
        net, lower, upper, pre, as_splits(splits, net), EncodingOptions(relax=True), hook=tighten
    )
    return enc.bounds


def lp_bounds(
    net: Network,
    lower,
    upper,
    C,
    d=None,
    pre_bounds=None,
    *,
    tighten: bool = False,
    deadline: Deadline | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Lower bound of each row of ``C f(x) - d`` over the triangle relaxation.

    ``lower``/``upper`` are ``(n_in,)`` or ``(B, n_in)``; ``C`` is ``(S, n_out)`` or
    ``(B, S, n_out)``; ``d`` is ``(S,)``, ``(B, S)`` or None; ``pre_bounds`` are
    per-layer ``(B, n_k)`` or ``(n_k,)`` (e.g. a BoundResult's ``intermediate``).
    Returns ``(S,)`` or ``(B, S)``; ``+inf`` marks an empty domain.  With
    ``tighten`` the intermediate bounds are first LP-tightened (the "LP-all" bound).
    """
    lower, upper = _np(lower), _np(upper)
    batched = lower.ndim == 2
    lower, upper = lower.reshape(-1, net.n_inputs), upper.reshape(-1, net.n_inputs)
    B = lower.shape[0]
    C = np.broadcast_to(_np(C).reshape(-1, *_np(C).shape[-2:]), (B, *_np(C).shape[-2:]))  # (B, S, n_out)
    S = C.shape[1]
    d = np.zeros((B, S)) if d is None else np.broadcast_to(_np(d).reshape(-1, S), (B, S))
    deadline = deadline or Deadline()
    out = np.full((B, S), -np.inf)
    for b in range(B):  # one LP per domain, re-solved for each spec row
        pre = as_relu_bounds(pre_bounds, net, b)
        if tighten:
            pre = lp_tighten(net, lower[b], upper[b], pre, deadline=deadline, threads=threads)
        enc = encode_network(net, lower[b], upper[b], pre, options=EncodingOptions(relax=True))
        if enc.empty:
            out[b] = np.inf
            continue
        session = LpSession(enc.problem, threads)
        for s in range(S):
            cost, offset = linear_objective(enc, C[b, s], d[b, s])
            out[b, s] = session.minimize(cost, offset, deadline.remaining())
    return out if batched else out[0]


def _expr_row(expr: Affine, j: int, n_cols: int) -> np.ndarray:
    """Row ``j`` of the expression as a dense cost vector ``(n_cols,)``."""
    row = np.zeros(n_cols)
    lo, hi = expr.M.indptr[j], expr.M.indptr[j + 1]
    np.add.at(row, expr.M.indices[lo:hi], expr.M.data[lo:hi])
    return row


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
