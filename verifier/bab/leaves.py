"""Leaves of ReLU splitting: subdomains on which no ReLU is unstable, decided exactly.

On a leaf the network is affine on the region (every ReLU's sign is fixed by
rigorous bounds or by a split), so one LP per open polytope over the encoding
with every sign as a constraint minimizes the polytope's margin
``max_j C_j y - d_j`` exactly (up to HiGHS's accuracy).  HiGHS only
proposes answers:

* its optimal point is a counterexample candidate, which must pass the strict
  onnxruntime replay (the deepest point, so rounding in the replay does not
  reject a point on the boundary);
* its duals give the Lagrangian certificate: weights ``lambda >= 0`` of the
  polytope's rows and a coefficient ``nu`` per pre-activation.  Our own
  backward pass recomputes the bound of ``sum_j lambda_j (C_j y - d_j)`` from
  the network's weights with those ``nu`` (``backward_linear``'s ``given``
  rule, rigorous rounding); the polytope is ruled out only when that bound is
  positive, since then some row is positive at every point.

Anything else (no certificate, a rejected candidate, the time limit) leaves the
case undecided, never unsat.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from verifier.bab.search import ValidateFn
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds.backward import backward_linear, concretize
from verifier.bounds.crown import crown_sweep
from verifier.bounds.rounding import down, gamma
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def decide_leaves(
    net: Network, obj: CaseObjective, leaves: SubproblemBatch, validate_fn: ValidateFn, deadline: Deadline,
) -> tuple[Counterexample | None, Tensor]:
    """Decide each leaf, one LP per polytope its bound leaves open: a validated counterexample (the
    first found), and which leaves stayed undecided ``(B,)`` bool."""
    from verifier.exact.encoding import EncodingOptions, as_relu_bounds, as_splits, encode_network, margin_problem
    from verifier.exact.highs import LpSession

    open_polytopes = obj.left_open(leaves.bound)  # (B, P)
    C, d = obj.C.detach().cpu().double().numpy(), obj.d.detach().cpu().double().numpy()
    undecided = torch.zeros(leaves.batch, dtype=torch.bool)
    for i in range(leaves.batch):
        leaf = leaves.select(torch.tensor([i], device=leaves.lower.device))
        lower, upper = leaf.lower.cpu().double().numpy()[0], leaf.upper.cpu().double().numpy()[0]
        splits = as_splits(leaf.splits, net)
        # every neuron's sign constrained, so that the LP is the exact problem on the leaf
        options = EncodingOptions(margin_abs=0.0, margin_rel=0.0, inactive_rows=True)
        enc = encode_network(net, lower, upper, as_relu_bounds(leaf.intermediate, net), splits, options)
        if enc.empty:  # the encoding's float64 intervals cross ours: not a proof; drop our bounds there
            enc = encode_network(net, lower, upper, None, splits, options)
        for p in torch.nonzero(open_polytopes[i]).flatten().tolist():
            if deadline.expired():
                undecided[i:] = True
                return None, undecided
            rows = obj.groups[p].cpu().numpy()
            problem = margin_problem(enc, C[rows], d[rows])
            # the margin column free below, so that its rows (not its bound) carry the duals
            problem = replace(problem, col_lower=np.append(problem.col_lower[:-1], -np.inf))
            session = LpSession(problem)
            session.minimize(problem.cost, problem.offset, deadline.remaining())
            values, duals = session.values(), session.duals()
            if values is not None and float(problem.cost @ values + problem.offset) <= 0:
                cex = validate_fn(torch.as_tensor(enc.input_of(values), dtype=net.dtype))
                if cex is not None:
                    return cex, undecided
            if duals is not None and _certified(net, obj, leaf, rows, enc, duals):
                continue
            log.info("leaf: no certificate and no replayed counterexample; the leaf stays undecided")
            undecided[i] = True
            break
    return None, undecided


def _certified(net: Network, obj: CaseObjective, leaf: SubproblemBatch, rows: np.ndarray, enc, duals: np.ndarray
               ) -> bool:
    """Whether the LP's duals, recomputed rigorously, prove the polytope's rows ``rows`` have a positive
    maximum on the leaf."""
    k = int(rows.sum())
    lam = np.clip(-duals[-k:], 0.0, None)  # the margin rows C_j y - s <= d_j come last
    if not np.any(lam > 0):
        return False
    nu = {}
    for r, (act_rows, act, neg_rows, neg) in zip(net.relu_indices, enc.relu_rows, strict=True):
        v = np.zeros(net.nodes[r].size)
        v[act] = duals[act_rows]
        v[neg] = -duals[neg_rows]
        nu[r] = torch.as_tensor(v, dtype=net.dtype, device=net.device).reshape(1, 1, -1)
    lam_t = torch.as_tensor(lam, dtype=net.dtype, device=net.device).reshape(1, 1, k)
    return bool(lagrangian_bound(net, leaf, obj.C[torch.as_tensor(rows)], obj.d[torch.as_tensor(rows)], lam_t,
                                 nu) > 0)


def lagrangian_bound(net: Network, leaf: SubproblemBatch, C: Tensor, d: Tensor, lam: Tensor,
                     nu: dict[int, Tensor]) -> Tensor:
    """A rigorous lower bound ``(B, 1)`` of ``sum_j lam_j (C_j f(x) - d_j)`` over each domain of ``leaf``,
    with ``nu[r]`` ``(B, 1, n_r)`` as the coefficients of Relu node ``r``'s pre-activation
    (``+inf`` on a domain proven empty)."""
    with torch.no_grad():
        state = crown_sweep(net, leaf.domains, leaf.intermediate, reuse_known=len(net.relu_indices))
        start = lam @ C  # (B, 1, n_out)
        const = -(lam @ d.unsqueeze(-1)).squeeze(-1)  # (B, 1)
        # the combination rounds: at most gamma(k) of its terms, over the outputs' magnitudes
        m_out = state.nodes.mags[net.output].flatten(1).unsqueeze(2)  # (B, n_out, 1)
        terms = ((lam @ C.abs()) @ m_out).squeeze(2) + (lam @ d.abs().unsqueeze(-1)).squeeze(-1)
        A0, c = backward_linear(net, {net.output: start.reshape(start.shape[0], 1, *net.output_shape)}, const,
                                state.relax, given=nu)
        bound = down(concretize(A0, c, (leaf.lower, leaf.upper)) - gamma(C.shape[0] + 1, C.dtype) * terms)
    return torch.where(state.nodes.empty[:, None], torch.full_like(bound, torch.inf), bound)
