"""Branching rules: bisect an input dimension, or split an unstable ReLU.

Each rule takes a batch of parents and returns ``2 B`` children, the first
``B`` of which are the "low" (or active) halves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from verifier.bab.spec_rows import RowSubset, batch_bound, needed_rows, restrict
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import CrownState, IntermediateBounds, free_intercepts, mark_empty, relaxation_state, split_state
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective

Tensor = torch.Tensor


def target_rows(obj: CaseObjective, bound: Tensor) -> Tensor:
    """Per domain, a weight over spec rows ``(B, S)`` selecting the row to improve.

    The polytope with the lowest margin is the one keeping the domain open; its
    row with the highest lower bound is the cheapest to push above 0.
    """
    margins = obj.polytope_margins(bound)  # (B, P)
    worst = margins.argmin(dim=-1)  # (B,)
    in_worst = obj.groups[worst]  # (B, S)
    masked = torch.where(in_worst, bound, torch.full_like(bound, -torch.inf))
    row = masked.argmax(dim=-1)
    return torch.nn.functional.one_hot(row, bound.shape[1]).to(bound.dtype)


MAX_ASPECT = 1024.0  # a dimension this many times (relatively) narrower than a box's widest one is not split


def relative_width(width: Tensor, full: Tensor) -> Tensor:
    """Box widths ``(B, n)`` as fractions of the case box's widths ``full`` ``(n,)`` (0 where ``full`` is 0)."""
    return width / full.clamp(min=torch.finfo(width.dtype).tiny)


def splittable(relative: Tensor) -> Tensor:
    """Which dimensions of boxes with relative widths ``(B, n)`` may be bisected: nonzero width, within
    ``MAX_ASPECT`` of the relatively widest.  Bounding the aspect ratio makes every width go to zero
    along any infinite branch, which input splitting's completeness needs."""
    return (relative > 0) & (relative * MAX_ASPECT >= relative.amax(dim=-1, keepdim=True))


def input_split_dims(net: Network, obj: CaseObjective, parents: SubproblemBatch) -> Tensor:
    """Gradient-times-width score of each input dimension at the box centres: ``(B,)`` dims."""
    width = parents.upper - parents.lower  # (B, n)
    centre = ((parents.lower + parents.upper) / 2).detach().requires_grad_(True)
    with torch.enable_grad():
        rows = forward(net, centre).reshape(centre.shape[0], -1) @ obj.C.T  # (B, S)
        weight = target_rows(obj, parents.bound)
        (grad,) = torch.autograd.grad((rows * weight).sum(), centre)
    score = grad.abs() * width
    # a dimension of zero width cannot be split; fall back to the widest one where all scores vanish
    score = torch.where(splittable(relative_width(width, obj.upper - obj.lower)), score,
                        torch.full_like(score, -1.0))
    flat = score.amax(dim=1) <= 0
    dims = score.argmax(dim=1)
    return torch.where(flat, width.argmax(dim=1), dims)


def linear_split_dims(obj: CaseObjective, parents: SubproblemBatch, coefficients: Tensor) -> Tensor:
    """The input dimension ``(B,)`` along which each parent's linear lower bound of the row to improve
    (``coefficients`` ``(B, S, n)``, the rows' linear bounds in ``x`` on the parent's box) loses most to the
    box's width, ``|a_i| w_i``: bisecting it lifts the better half's bound by that much with the same
    relaxation (alpha-beta-CROWN's "sb" input split scores alike)."""
    width = parents.upper - parents.lower  # (B, n)
    a = (coefficients * target_rows(obj, parents.bound).unsqueeze(2)).sum(1).abs()
    score = torch.where(splittable(relative_width(width, obj.upper - obj.lower)), a * width,
                        torch.full_like(width, -1.0))
    flat = score.amax(dim=1) <= 0
    return torch.where(flat, width.argmax(dim=1), score.argmax(dim=1))


def bisect_inputs(parents: SubproblemBatch, dims: Tensor) -> SubproblemBatch:
    """Children halving each parent's box along ``dims`` ``(B,)``."""
    b = torch.arange(parents.batch, device=parents.lower.device)
    mid = (parents.lower[b, dims] + parents.upper[b, dims]) / 2
    low_upper = parents.upper.clone()
    low_upper[b, dims] = mid
    high_lower = parents.lower.clone()
    high_lower[b, dims] = mid
    return SubproblemBatch(
        lower=torch.cat([parents.lower, high_lower]), upper=torch.cat([low_upper, parents.upper]),
        splits=None, bound=parents.bound.repeat(2, 1), depth=(parents.depth + 1).repeat(2),
        intermediate=None if parents.intermediate is None else parents.intermediate.repeat(2),
        slopes=None if parents.slopes is None else parents.slopes.repeat(2),
        ident=None if parents.ident is None else parents.ident.repeat(2),
    )


def relu_scores(parents: SubproblemBatch) -> Tensor:
    """Per domain, a score of every ReLU over all layers ``(B, sum n_k)``; -1 where not splittable.

    The score is the height of the triangle relaxation's upper line at 0,
    ``-l u / (u - l)``: the largest error the relaxation of that neuron makes.
    """
    inter, splits = parents.intermediate, parents.splits
    scores = []
    for k, (lo, hi) in enumerate(zip(inter.lower, inter.upper)):
        free = (lo < 0) & (hi > 0) & (splits[k] == 0)
        gap = (-lo * hi) / (hi - lo).clamp_min(1e-12)
        scores.append(torch.where(free, gap, torch.full_like(gap, -1.0)))
    return torch.cat(scores, dim=1)


def split_relus(parents: SubproblemBatch, flat: Tensor) -> SubproblemBatch:
    """Children fixing the ReLU at ``flat`` ``(B,)`` (index over all layers): active first, then inactive;
    each child records the layer it split (``split_layer``)."""
    sizes = [s.shape[1] for s in parents.splits]
    offsets = torch.tensor([0, *sizes], device=flat.device).cumsum(0)
    layer = torch.searchsorted(offsets[1:], flat, right=True)  # (B,)
    b = torch.arange(parents.batch, device=flat.device)
    splits_on, splits_off = [], []
    lo_on, lo_off, hi_on, hi_off = [], [], [], []
    for k, s in enumerate(parents.splits):
        rows = b[layer == k]
        cols = flat[layer == k] - offsets[k]
        on, off = s.clone(), s.clone()
        on[rows, cols], off[rows, cols] = 1, -1
        splits_on.append(on)
        splits_off.append(off)
        lo, hi = parents.intermediate.lower[k], parents.intermediate.upper[k]
        l_on, h_off = lo.clone(), hi.clone()
        l_on[rows, cols] = lo[rows, cols].clamp_min(0)
        h_off[rows, cols] = hi[rows, cols].clamp_max(0)
        lo_on.append(l_on)
        lo_off.append(lo)
        hi_on.append(hi)
        hi_off.append(h_off)
    inter = IntermediateBounds(tuple(torch.cat(p) for p in zip(lo_on, lo_off)),
                               tuple(torch.cat(p) for p in zip(hi_on, hi_off)))
    return SubproblemBatch(
        lower=parents.lower.repeat(2, 1), upper=parents.upper.repeat(2, 1),
        splits=tuple(torch.cat(p) for p in zip(splits_on, splits_off)),
        bound=parents.bound.repeat(2, 1), depth=(parents.depth + 1).repeat(2), intermediate=inter,
        slopes=None if parents.slopes is None else parents.slopes.repeat(2),
        betas=None if parents.betas is None else parents.betas.repeat(2),
        split_layer=layer.repeat(2), ident=None if parents.ident is None else parents.ident.repeat(2),
    )


def strong_input_split(
    parents: SubproblemBatch, bound: Callable[[SubproblemBatch], SubproblemBatch], obj: CaseObjective,
    finish: Callable[[SubproblemBatch], SubproblemBatch] | None = None,
) -> SubproblemBatch:
    """Bisect every parent along the input dimension whose two halves bound best.

    All ``n_in`` candidate splits of all parents are scored in one batched call
    of ``bound`` (a cheap method); the chosen children keep what it computed, or,
    with ``finish``, are bisected again and bounded by ``finish`` (when ``bound``
    only estimates).
    """
    B, n = parents.lower.shape
    dims = torch.arange(n, device=parents.lower.device).repeat_interleave(B)  # (n B,) dim of each copy
    tiled = parents.select(torch.arange(B, device=dims.device).repeat(n))  # copy j*B+b = parent b
    # score each split by its children's own bounds, not by what they inherit from the parent
    tiled = replace(tiled, bound=torch.full_like(tiled.bound, -torch.inf))
    cand = bound(bisect_inputs(tiled, dims))  # (2 n B): low halves, then high halves
    m = obj.polytope_margins(cand.bound).amin(dim=-1).reshape(2, n, B)
    # the better child decides: the split that comes closest to proving one half outright.  Scoring by
    # the worse child (or the sum) keeps bisecting the steepest dimension for small gains on both halves
    # while the unstable ReLUs that the other dimensions cause stay (measured on ACAS Xu 3_3/p2:
    # depth 40, margin stuck at -0.02).  Near-ties (e.g. no split helps yet) go to the relatively widest
    # dimension, so that no dimension is split forever while the others stay wide.
    best_child = torch.maximum(m[0], m[1]).clamp(max=0)  # (n, B)
    relative = relative_width(parents.upper - parents.lower, obj.upper - obj.lower)  # (B, n)
    best_child = torch.where(splittable(relative).T, best_child, torch.full_like(best_child, -torch.inf))
    top = best_child.amax(dim=0, keepdim=True)  # (1, B)
    near = best_child >= top - (1e-3 * top.abs() + 1e-6)
    relative = relative.T  # (n, B)
    best = torch.where(near, relative, torch.full_like(relative, -1.0)).argmax(dim=0)  # (B,)
    if finish is not None:
        return finish(bisect_inputs(parents, best))
    b = torch.arange(B, device=best.device)
    low = best * B + b
    chosen = cand.select(torch.cat([low, low + n * B]))
    return replace(chosen, bound=torch.maximum(chosen.bound, parents.bound.repeat(2, 1)))


def _worst_rows(obj: CaseObjective, bound: Tensor) -> Tensor:
    """One-hot weights ``(Q, B, S)``: slot ``q`` picks the ``q``-th row of each domain's worst polytope
    (all zero where that polytope has fewer rows)."""
    worst = obj.polytope_margins(bound).argmin(dim=-1)  # (B,)
    rows = obj.groups[worst]  # (B, S)
    rank = rows.cumsum(dim=1) - 1
    Q = int(obj.groups.sum(1).max())
    q = torch.arange(Q, device=bound.device)[:, None, None]
    return (rows & (rank == q)).to(bound.dtype)


def babsr_scores(net: Network, obj: CaseObjective, parents: SubproblemBatch, state: CrownState | None = None
                 ) -> Tensor:
    """Per domain, the score of every ReLU over all layers ``(B, sum n_k)``; ``-inf`` where not splittable.

    For each row of the worst polytope, the intercepts of a neuron's upper relaxation
    lower that row's bound by ``-a_j * intercept_j`` (read off as the gradient of the
    bound with respect to the intercepts); the score is the largest share of a row's
    gap ``-lb`` owed to the neuron, so that every row of the polytope gets candidates.
    The triangle height breaks ties.  ``state``: the parents' ``relaxation_state`` if already computed.
    """
    if state is None:
        state = relaxation_state(net, parents.domains, parents.intermediate)
    relus = net.relu_indices
    rows = needed_rows(obj, parents.bound)  # the worst polytope is open, so its rows are among them
    sub, C, d = restrict(obj, parents, rows)
    slots = rows.gather(_worst_rows(obj, parents.bound).permute(1, 2, 0)).permute(2, 0, 1) * rows.valid  # (Q, B, K)
    gap = (-sub.bound).clamp(min=1e-12)  # (B, K)
    score = torch.zeros(parents.batch, sum(net.nodes[r].size for r in relus), dtype=gap.dtype,
                        device=gap.device)
    with torch.enable_grad():
        free, bias = free_intercepts(net, state)
        lower = batch_bound(net, sub, free, C, d)  # (B, K)
        # no intercept reaches the bound (every ReLU before the rows stable, as in the refinement's
        # sub-networks): every score stays 0
        for q, weight in enumerate(slots if lower.requires_grad else ()):
            grads = torch.autograd.grad((lower * weight).sum(), [bias[r] for r in relus], allow_unused=True,
                                        retain_graph=q + 1 < len(slots))
            share = torch.cat([torch.zeros_like(bias[r]) if g is None else -g * bias[r].detach()
                               for r, g in zip(relus, grads, strict=True)], dim=1)  # (B, N)
            score = torch.maximum(score, share / (weight * gap).sum(1, keepdim=True).clamp(min=1e-12))
    tie = relu_scores(parents)  # (B, N) triangle heights, -1 where not splittable
    score = score + 1e-6 * tie.clamp(min=0)
    return torch.where(tie >= 0, score, torch.full_like(score, -torch.inf))


def fast_bound(net: Network, obj: CaseObjective, batch: SubproblemBatch, state: CrownState | None = None
               ) -> Tensor:
    """The batch's bound ``(B, S)`` with its needed rows recomputed by one backward pass with its own
    slopes, multipliers and pre-activation bounds (all ``+inf`` where the splits are infeasible);
    ``state``: the batch's relaxation state if known (default: ``relaxation_state``)."""
    rows = needed_rows(obj, batch.bound)
    sub, C, d = restrict(obj, batch, rows)
    return _open_rows_bound(net, sub, rows, C, d, batch.bound, state)


def _open_rows_bound(net: Network, sub: SubproblemBatch, rows: RowSubset, C: Tensor, d: Tensor, full: Tensor,
                     state: CrownState | None) -> Tensor:
    """``full`` ``(B, S)`` with ``rows`` replaced by ``sub``'s bound of ``C``, ``d`` (``restrict``'s) from one
    backward pass on ``state`` (default: ``relaxation_state`` of ``sub``); ``+inf`` where the splits are
    infeasible."""
    if state is None:
        state = relaxation_state(net, sub.domains, sub.intermediate)
    with torch.no_grad():
        lower = rows.scatter(full, batch_bound(net, sub, state, C, d))
    return mark_empty(lower, None, state.nodes.empty)[0]


def children_state(net: Network, state: CrownState, parent: Tensor, flat: Tensor) -> CrownState:
    """The relaxation state of ``split_relus(parents.select(parent), flat)``'s children from the parents'
    ``state`` (``split_state``: active halves, then inactive ones)."""
    n = parent.shape[0]
    active = torch.arange(2 * n, device=flat.device) < n
    return split_state(net, state, parent.repeat(2), flat.repeat(2), active)


def fsb_choice(net: Network, obj: CaseObjective, parents: SubproblemBatch, scores: Tensor, k: int,
               state: CrownState | None = None) -> tuple[Tensor, Tensor]:
    """Per parent, the neuron ``(B,)`` (flat index) among its top-``k`` by ``scores`` whose children bound
    best, and those children's ``fast_bound`` ``(2 B, S)`` (active halves, then inactive ones).

    All ``2 k B`` candidate children are bounded at once as ``fast_bound`` does, on the rows their
    parents leave open (the per-row state is cut to those rows before it is copied ``2 k`` times); with
    the parents' relaxation ``state``, on the parents' state with the split neuron changed
    (``children_state``).
    """
    B = parents.batch
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1)  # (B, k)
    tile = torch.arange(B, device=scores.device).repeat(k)  # copy j*B+b = parent b
    flat = top.indices.T.reshape(-1)
    rows = needed_rows(obj, parents.bound)
    sub, C, d = restrict(obj, parents, rows)
    children = split_relus(sub.select(tile), flat)
    both = tile.repeat(2)  # child m is a copy of parent both[m]
    lower = _open_rows_bound(net, children, RowSubset(rows.idx[both], rows.valid[both]), C[both], d[both],
                             parents.bound[both], None if state is None else children_state(net, state, tile, flat))
    lower = lower.reshape(2, k, B, -1)  # (2, k, B, S)
    m = obj.polytope_margins(lower).amin(dim=-1)  # (2, k, B)
    # the worse child decides; ties (both proven, or equally open) go to the better sum
    score = torch.minimum(m[0], m[1]).clamp(max=0) * 1e3 + m[0].clamp(max=1) + m[1].clamp(max=1)
    score = torch.where(top.values.T > -torch.inf, score, torch.full_like(score, -torch.inf))
    best = score.argmax(dim=0)  # (B,)
    b = torch.arange(B, device=best.device)
    return top.indices[b, best], lower[:, best, b].reshape(2 * B, -1)
