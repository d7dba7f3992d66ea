"""CROWN: backward linear bounds, layer by layer, over a batch of subdomains.

The bounds of each node feeding a nonlinearity are computed in topological
order: interval bounds first (intersected with the known bounds and the split
states), then a backward pass only for the neurons that are still unstable,
intersected again.  The spec rows ``C`` start the last backward pass, so they
are folded into the output layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch

from verifier.bounds.backward import Relaxations, backward_linear, backward_lower, concretize
from verifier.bounds.forward_linear import ForwardTracker, forward_intermediate, supports
from verifier.bounds.graph import relu_inputs
from verifier.bounds.ibp import Interval, NodeBounds, apply_split, intermediate_of, mark_empty, spec_interval, sweep
from verifier.bounds.patches import unit_patches
from verifier.bounds.prepare import check_domains, check_known, check_no_tf32, spec_rows
from verifier.bounds.relaxation import maxpool_relaxation, relu_relaxation
from verifier.bounds.rounding import cast_down, cast_up, down
from verifier.bounds.types import BoundResult, Domains, IntermediateBounds, Tensor
from verifier.network import Dense, MaxPool, Network, Relu

# rows_alpha(i, idx) -> lower slopes for the backward pass that bounds node i on rows idx (B, R):
# {relu node r: (B, 2R or 1, n_r)} (the first R rows bound from below, the last R from above)
RowSlopes = Callable[[int, Tensor], Mapping[int, Tensor]]
# where CROWN's intermediate bounds come from: backward passes ("off"), forward linear bounds ("on"), or
# backward passes only for what forward linear bounds leave unstable ("filter")
ForwardMode = Literal["off", "on", "filter"]


@dataclass(frozen=True, eq=False)
class CrownState:
    """Bounds of every node and the relaxations of every nonlinear node."""

    nodes: NodeBounds
    relax: Relaxations


def crown(
    net: Network,
    domains: Domains,
    C: Tensor | None = None,
    d: Tensor | None = None,
    known: IntermediateBounds | None = None,
    need_upper: bool = False,
    reuse_known: int = 0,
    need_linear: bool = False,
    rigorous: bool = True,
    forward: ForwardMode = "off",
    filter_width: int | None = None,
) -> BoundResult:
    """CROWN bounds of ``C f(x) - d`` ``(B, S)`` over each domain (``None`` C: the outputs),
    intersected with the interval bounds.  ``known`` pre-activation bounds (e.g. the
    parent's) are intersected with the computed ones; the ReLU layers below
    ``reuse_known`` take them as they are, without a backward pass (after a split at
    layer ``k``, layers ``0..k`` are unchanged, so branch-and-bound can pass ``k + 1``).
    ``need_linear`` also returns the rows' linear lower bounds in ``x`` (``BoundResult.linear``).
    ``rigorous=False``: estimates without rounding slack (``NodeBounds.rigorous``), to rank
    choices only; nothing may be dropped on them.  ``forward="on"``: the intermediate bounds by forward
    linear bounds (``forward_linear``; cheaper on few inputs), only the spec rows by a backward pass
    (where the network has nodes it does not handle, or splits, as without it).  ``"filter"``:
    CROWN's bounds, with the backward passes only for the neurons that forward linear bounds (relaxed
    from the CROWN bounds of the layers below) leave unstable, and none for nodes before any ReLU (where
    forward bounds are exact up to rounding); with ``filter_width``, only in the ReLU layers of at most that
    many neurons (the wider ones take the forward bounds)."""
    check_domains(net, domains)
    if forward == "on" and domains.splits is None:
        fwd = forward_intermediate(net, domains, known)
        if fwd is not None:
            known, reuse_known = fwd, len(net.relu_indices)
    check_known(net, known, domains.batch, reuse_known)
    check_no_tf32(domains.lower.device)
    C, d = spec_rows(net, domains.batch, C, d)
    with torch.no_grad():
        state = crown_sweep(net, domains, known, reuse_known=reuse_known, rigorous=rigorous,
                            forward_filter=forward == "filter", filter_width=filter_width)
        S = d.shape[1]
        A0, const = final_linear(net, state, C, d, need_upper=need_upper)
        bound = concretize(A0, const, (domains.lower, domains.upper), rigorous)
        lower, upper = bound[:, :S], (-bound[:, S:] if need_upper else None)
        linear = (A0[:, :S], const[:, :S]) if need_linear else None
        ibp_lower, ibp_upper = spec_interval(net, state.nodes, C, d)
        lower = torch.maximum(lower, ibp_lower)
        upper = None if upper is None else torch.minimum(upper, ibp_upper)
    lower, upper = mark_empty(lower, upper, state.nodes.empty)
    return BoundResult(lower, upper, intermediate_of(net, state.nodes.bounds), None, linear=linear)


def crown_sweep(
    net: Network,
    domains: Domains,
    known: IntermediateBounds | None = None,
    row_slopes: RowSlopes | None = None,
    reuse_known: int = 0,
    rigorous: bool = True,
    forward_filter: bool = False,
    filter_width: int | None = None,
    reference: NodeBounds | None = None,
    one_sided: float = 0.0,
) -> CrownState:
    """Bounds of every node, CROWN-tightened at the inputs of the nonlinear nodes
    (except the pre-activations of ReLU layers below ``reuse_known``, taken from ``known``);
    ``rigorous=False`` only for estimates that nothing is dropped on (``NodeBounds.rigorous``);
    ``forward_filter``: see ``crown``; ``reference``: see ``ibp.sweep``.  A convolution's neurons' rows
    run over their receptive fields (``patches.py``; the same bounds as over full maps, up to rounding).

    ``one_sided`` (> 0, with ``known`` bounds and no ``row_slopes``): an unstable ReLU input whose known
    bounds ``[l, u]`` are lopsided (``-l > one_sided * u`` or ``u > one_sided * -l``) gets a backward row
    for its smaller side only and keeps the known bound of the other: the triangle relaxation's upper
    line ``u (z - l) / (u - l)`` has its intercept ``-l u / (u - l)`` between ``min(u, -l) / 2`` and
    ``min(u, -l)``, nearly insensitive to the larger side, and a lopsided neuron seldom turns stable on
    its larger side.  A skipped side is looser, never wrong."""
    if 0 < one_sided < 1:  # a neuron could be lopsided both ways and lose both rows
        raise ValueError(f"one_sided must be 0 (off) or at least 1, not {one_sided}")
    relax = Relaxations({}, {}, rigorous=rigorous)
    box = (domains.lower, domains.upper)
    maxpool_inputs = {n.inputs[0] for n in net.nodes if isinstance(n.op, MaxPool)}
    pre = relu_inputs(net)
    reused = set(pre[:reuse_known]) - maxpool_inputs
    tracker = ForwardTracker(net, domains) if forward_filter and supports(net) and domains.splits is None else None

    def refine(i: int, nodes: NodeBounds, current: Interval) -> Interval:
        if i in reused:
            return current
        _relax_upto(net, i + 1, nodes.bounds, relax)
        lo, hi = current[0].flatten(1), current[1].flatten(1)  # (B, n_i)
        if tracker is not None and i not in maxpool_inputs:
            # forward bounds from the (CROWN-tightened) bounds of the ReLU layers below: only what they
            # leave unstable gets a backward pass; before any ReLU they are exact up to rounding
            fl, fu = tracker.bounds_at(i, [nodes.bounds[p] if p < i else None for p in pre])
            lo = torch.maximum(lo, cast_down(fl.flatten(1), lo.dtype))
            hi = torch.minimum(hi, cast_up(fu.flatten(1), hi.dtype))
            current = (lo.reshape(current[0].shape), hi.reshape(current[1].shape))
            if tracker.affine_at(i) or (filter_width is not None and lo.shape[1] > filter_width):
                return current
        wanted = torch.ones_like(lo, dtype=torch.bool) if i in maxpool_inputs else (lo < 0) & (hi > 0)
        R = int(wanted.sum(1).max()) if wanted.numel() else 0
        if R == 0:
            return current
        idx = _first(wanted, R)  # (B, R)
        patches = unit_patches(net, i, idx)
        if one_sided > 0 and known is not None and row_slopes is None and patches is None and i not in maxpool_inputs:
            want_lo, want_hi = wanted & ~(-lo > one_sided * hi), wanted & ~(hi > one_sided * -lo)
        else:
            want_lo = want_hi = wanted
        idx_lo = idx if want_lo is wanted else _first(want_lo, int(want_lo.sum(1).max()))  # (B, R_lo)
        idx_hi = idx if want_hi is wanted else _first(want_hi, int(want_hi.sum(1).max()))  # (B, R_hi)
        R_lo = idx_lo.shape[1]
        if patches is None:
            start, const = _unit_rows(net, i, idx_lo, idx_hi)
        else:
            start, const = {}, torch.zeros(*patches.coef.shape[:2], dtype=net.dtype, device=net.device)
        slopes = row_slopes(i, idx) if row_slopes is not None else None
        bound = backward_lower(net, start, const, box,
                               replace(relax, mags=nodes.mags, arith=nodes.arith, errs=nodes.errs), slopes,
                               patches=patches)  # (B, R_lo + R_hi)
        if isinstance(net.nodes[i].op, Dense) and rigorous and nodes.errs[i] is not None:
            # the rows of a Dense node start from its weight as stored: add what its constants may be off by
            e = nodes.errs[i].flatten(1)
            bound = down(bound - torch.cat([e.gather(1, idx_lo), e.gather(1, idx_hi)], 1))
        # only the wanted entries: a padding row's bound would make a domain's bounds depend on its batch
        valid_lo, valid_hi = want_lo.gather(1, idx_lo), want_hi.gather(1, idx_hi)
        new_lo = torch.full_like(lo, float("-inf")).scatter(
            1, idx_lo, torch.where(valid_lo, bound[:, :R_lo], -torch.inf))
        new_hi = torch.full_like(hi, float("inf")).scatter(
            1, idx_hi, torch.where(valid_hi, -bound[:, R_lo:], torch.inf))
        if tracker is not None:
            new_lo, new_hi = torch.maximum(new_lo, lo), torch.minimum(new_hi, hi)
        return new_lo, new_hi

    nodes = sweep(net, domains, known, refine, rigorous, frozenset(reused) if known is not None else frozenset(),
                  reference if rigorous else None)
    _relax_upto(net, len(net.nodes), nodes.bounds, relax)
    return CrownState(nodes, replace(relax, mags=nodes.mags, arith=nodes.arith, errs=nodes.errs))


def _relax_upto(net: Network, end: int, bounds: list[Interval], relax: Relaxations) -> None:
    """Add the relaxations of the nonlinear nodes before ``end`` that are still missing."""
    for r in range(end):
        node = net.nodes[r]
        if isinstance(node.op, Relu) and r not in relax.relu:
            lo, hi = bounds[node.inputs[0]]
            relax.relu[r] = relu_relaxation(lo.flatten(1), hi.flatten(1))
        elif isinstance(node.op, MaxPool) and r not in relax.maxpool:
            lo, hi = bounds[node.inputs[0]]
            relax.maxpool[r] = maxpool_relaxation(node.op, lo, hi)


def _first(mask: Tensor, R: int) -> Tensor:
    """Per row of ``mask`` ``(B, n)``, the indices ``(B, R)`` of its true entries first (then others)."""
    return torch.sort(mask.to(torch.int8), stable=True, dim=1, descending=True).indices[:, :R]


def _unit_rows(net: Network, i: int, idx: Tensor, idx_hi: Tensor | None = None
               ) -> tuple[dict[int, Tensor], Tensor]:
    """Rows ``+e_j`` for the neurons ``idx`` ``(B, R)`` of node ``i`` then ``-e_j`` for those of ``idx_hi``
    ``(B, R')`` (default ``idx``); a Dense node's rows are taken straight from its weight (no one-hot
    matrix)."""
    node = net.nodes[i]
    B = idx.shape[0]
    dtype, device = net.dtype, net.device
    dense = isinstance(node.op, Dense)

    def rows(ix: Tensor) -> tuple[Tensor, Tensor]:  # (B, R, n) rows and (B, R) constants
        if dense:
            return node.op.weight[ix], node.op.bias[ix]
        eye = torch.zeros(B, ix.shape[1], node.size, dtype=dtype, device=device).scatter_(2, ix.unsqueeze(2), 1.0)
        return eye.reshape(B, ix.shape[1], *node.shape), torch.zeros(B, ix.shape[1], dtype=dtype, device=device)

    A_lo, c_lo = rows(idx)
    A_hi, c_hi = (A_lo, c_lo) if idx_hi is None or idx_hi is idx else rows(idx_hi)
    return {node.inputs[0] if dense else i: torch.cat([A_lo, -A_hi], 1)}, torch.cat([c_lo, -c_hi], 1)


def final_linear(
    net: Network,
    state: CrownState,
    C: Tensor,
    d: Tensor,
    slopes: Mapping[int, Tensor] | None = None,
    split_terms: Mapping[int, Tensor] | None = None,
    need_upper: bool = False,
) -> tuple[Tensor, Tensor]:
    """Linear lower bounds ``A x + c`` of ``C f(x) - d`` on each domain from the relaxations in
    ``state``: ``A`` ``(B, S, n_in)``, ``c`` ``(B, S)``; with ``need_upper`` ``2 S`` rows, the last
    ``S`` bounding ``d - C f(x)`` from below."""
    B = d.shape[0]
    A, const = C, -d
    if need_upper:
        A, const = torch.cat([C, -C], 1), torch.cat([-d, d], 1)
    start = {net.output: A.reshape(B, A.shape[1], *net.nodes[net.output].shape)}
    A0, const = backward_linear(net, start, const, state.relax, slopes, split_terms)
    if A0 is None:  # the rows do not depend on the input
        A0 = const.new_zeros(B, const.shape[1], net.n_inputs)
    return A0, const


def relaxation_state(net: Network, domains: Domains, known: IntermediateBounds,
                     reference: NodeBounds | None = None) -> CrownState:
    """Node bounds and relaxations of every node from ``known`` bounds of every ReLU layer's
    pre-activation, without any backward pass (rigorous); ``reference``: node bounds that contain the
    domains' (``ibp.sweep``), taken for every other node instead of interval arithmetic."""
    with torch.no_grad():
        return crown_sweep(net, domains, known, reuse_known=len(net.relu_indices), reference=reference)


def split_state(net: Network, state: CrownState, parent: Tensor, flat: Tensor, active: Tensor) -> CrownState:
    """The state of children of the domains in ``state``: child ``m`` is domain ``parent[m]`` with the ReLU at
    ``flat[m]`` (index over all ReLU layers, an unstable neuron of that domain) fixed active where
    ``active[m]``, else inactive.

    Every bound, magnitude and relaxation is the parent's, which holds on the child's part of the parent;
    only the split neuron's pre-activation bounds (``apply_split``) and relaxation (``relu_relaxation`` of
    them: identity or zero) change.  Its rounding terms stay the parent's, which bound the child's (a
    smaller interval, no intercept).  So no interval sweep is needed; the bound is what
    ``relaxation_state`` of the children gives, up to the rounding slack of the nodes that interval sweep
    would have tightened.
    """
    B = state.nodes.empty.shape[0]

    def take(t: object) -> object:
        return t.index_select(0, parent) if isinstance(t, Tensor) and t.shape[0] == B else t

    def take_fields(x: object) -> object:
        return replace(x, **{f.name: take(getattr(x, f.name)) for f in fields(x)})

    relus, pre = net.relu_indices, relu_inputs(net)
    sizes = torch.tensor([net.nodes[r].size for r in relus], device=flat.device)
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    layer = torch.searchsorted(offsets[1:], flat, right=True)
    bounds = [(take(lo), take(hi)) for lo, hi in state.nodes.bounds]
    relu = {r: take_fields(x) for r, x in state.relax.relu.items()}
    for k, r in enumerate(relus):
        rows = (layer == k).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        cols, x = flat[rows] - offsets[k], relu[r]
        sign = torch.where(active[rows], 1, -1)
        lo_s, hi_s = apply_split(x.lower[rows, cols], x.upper[rows, cols], sign)
        col = relu_relaxation(lo_s.unsqueeze(1), hi_s.unsqueeze(1))
        patched = {}
        for name in ("lower", "upper", "active", "unstable", "default_slope", "upper_slope", "upper_bias"):
            t = getattr(x, name).clone()
            t[rows, cols] = getattr(col, name).squeeze(1)
            patched[name] = t
        relu[r] = replace(x, **patched)
        shape = bounds[pre[k]][0].shape
        bounds[pre[k]] = (patched["lower"].reshape(shape), patched["upper"].reshape(shape))
    mags = [take(t) for t in state.nodes.mags]
    arith = [take(t) for t in state.nodes.arith]
    errs = [take(t) for t in state.nodes.errs]
    nodes = NodeBounds(bounds, take(state.nodes.empty), mags, arith, errs, state.nodes.rigorous)
    maxpool = {i: take_fields(x) for i, x in state.relax.maxpool.items()}
    return CrownState(nodes, replace(state.relax, relu=relu, maxpool=maxpool, mags=mags, arith=arith, errs=errs))


def linear_bound(
    net: Network, domains: Domains, state: CrownState, C: Tensor, d: Tensor,
    slopes: Sequence[Tensor] | None = None, betas: Sequence[Tensor] | None = None, interval: bool = False,
) -> Tensor:
    """Lower bound ``(B, S)`` of ``C f(x) - d`` on each domain from the relaxations in ``state``, with
    ``slopes`` (per ReLU layer, ``(B, S or 1, n_k)``) as the lower slopes of the unstable ReLUs and
    ``betas`` (per ReLU layer, ``(B, S, n_k)``) as the multipliers of the domains' splits; with
    ``interval``, intersected with the interval bound.  Rigorous when ``state`` is, whatever the slopes
    in [0, 1] and non-negative multipliers; differentiable in them, in the box and in the relaxations.

    beta-CROWN (Wang et al. 2021, Thm. 3.1): a split ``s_j z_j >= 0`` (``s_j = +1`` active, ``-1``
    inactive) enters the Lagrangian with ``beta_j >= 0``, adding ``-beta_j s_j`` to ``z_j``'s coefficient.
    """
    relus = net.relu_indices
    slope_map = None if slopes is None else dict(zip(relus, slopes, strict=True))
    terms = None
    if betas is not None:
        terms = {r: -b * s.to(b.dtype).unsqueeze(1) for r, b, s in zip(relus, betas, domains.splits, strict=True)}
    lower = concretize(*final_linear(net, state, C, d, slope_map, terms), (domains.lower, domains.upper),
                       state.nodes.rigorous)
    if interval:
        lower = torch.maximum(lower, spec_interval(net, state.nodes, C, d)[0])
    return lower


def free_intercepts(net: Network, state: CrownState) -> tuple[CrownState, dict[int, Tensor]]:
    """``state`` with each ReLU's upper-relaxation intercepts ``(B, n_k)`` replaced by leaf tensors that
    require gradients (returned by ReLU node), so that a bound's gradient with respect to them tells
    how much of it each neuron's relaxation costs (BaBSR, Bunel et al. 2020)."""
    relus = net.relu_indices
    bias = {r: state.relax.relu[r].upper_bias.detach().clone().requires_grad_() for r in relus}
    relax = replace(state.relax, relu={r: replace(state.relax.relu[r], upper_bias=bias[r]) for r in relus})
    return CrownState(state.nodes, relax), bias
