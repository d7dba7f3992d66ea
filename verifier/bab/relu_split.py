"""ReLU splitting for branch and bound: choose a neuron, bound the two children with
beta-CROWN, decide the leaves exactly.

Branch: each parent splits the free unstable ReLU with the best score.  The
BaBSR-style score (Bunel et al. 2020) is the part of the parent's final lower
bound owed to the intercept of that neuron's upper relaxation: with ``a_j`` the
coefficient of the neuron's output in the bound of the row to improve, the chord
``u (z - l) / (u - l)`` contributes ``min(a_j, 0) * (-l u / (u - l))``, which a
split removes.  Filtered strong branching (De Palma et al. 2021, FSB) takes the
top-k neurons by that score and bounds both children of each candidate with one
batched backward pass that reuses the parent's slopes and multipliers; the
candidate whose worse child bounds best wins.

Bound: beta-CROWN (Wang et al. 2021) on the children, warm-started from the
parent's slopes and multipliers, reusing the pre-activation bounds of every
layer up to the split one.

Settle: a child whose pre-activation bounds leave no neuron unstable is a leaf:
the network is linear on it, so the exact engine's leaf check (an LP with the
splits as constraints) rules each open polytope out, or yields a candidate that
must pass the strict onnxruntime replay; anything else leaves the case undecided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from verifier.bab.branching import relu_scores, split_relus, target_rows
from verifier.bab.search import BabOptions, BabStats, Rule, ValidateFn, search
from verifier.bab.subproblems import SubproblemBatch, concat
from verifier.bounds.alpha import AlphaOptions
from verifier.bounds.backward import Relaxations
from verifier.bounds.beta import beta_crown
from verifier.bounds.crown import CrownState, crown_sweep, final_bounds
from verifier.bounds.ibp import mark_empty
from verifier.bounds.types import Betas, BoundResult, Slopes
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

log = logging.getLogger(__name__)
Tensor = torch.Tensor
_PRIMAL_CHECKS = 8  # most candidates validated per round


def combine_rows(obj: CaseObjective) -> tuple[CaseObjective, Tensor]:
    """``obj`` with one more row per polytope of several rows: their average; and the map ``(S', S)``.

    A point of the polytope has every ``C_j y - d_j <= 0``, hence any convex combination
    ``<= 0`` too, so a positive lower bound of the average also rules the polytope out
    (and the concrete violation, a max over rows, is unchanged).  Per-row bounds cannot
    prove ``max_j (C_j y - d_j) > 0`` on a domain where each row alone dips below 0;
    the average often can, long before the leaves.
    """
    S = obj.n_rows
    multi = torch.nonzero(obj.groups.sum(1) >= 2).flatten()
    weights = obj.groups[multi].to(obj.C.dtype)  # (P', S)
    weights = weights / weights.sum(1, keepdim=True)
    mix = torch.cat([torch.eye(S, dtype=obj.C.dtype, device=obj.C.device), weights])  # (S', S)
    extra = torch.zeros(obj.groups.shape[0], multi.shape[0], dtype=torch.bool, device=obj.groups.device)
    extra[multi, torch.arange(multi.shape[0], device=multi.device)] = True
    return CaseObjective(
        lower=obj.lower, upper=obj.upper, C=mix @ obj.C, d=mix @ obj.d, groups=torch.cat([obj.groups, extra], 1),
        strict=torch.cat([obj.strict, obj.strict.new_zeros(multi.shape[0])]),
    ), mix


def _mix_rows(t: Tensor, mix: Tensor) -> Tensor:
    """Rows ``(B, S, ...)`` combined by ``mix`` ``(S', S)`` (non-negative) into ``(B, S', ...)``; an
    infinite row with weight 0 does not contribute."""
    w = mix.reshape(1, *mix.shape, *([1] * (t.dim() - 2)))
    return torch.where(w > 0, w * t.unsqueeze(1), torch.zeros_like(w)).sum(2)


def relu_starts(net: Network, obj: CaseObjective, root: BoundResult, per_polytope: bool = True
                ) -> list[tuple[CaseObjective, SubproblemBatch]]:
    """The searches that decide the case: each an objective and its root subdomain.

    The objective gains the rows of ``combine_rows`` and keeps only the polytopes the
    root bound leaves open (the others are ruled out on the whole box, so every
    subdomain would bound their rows for nothing); ``per_polytope`` makes one search per
    open polytope, most promising (highest root margin) first, so that each subdomain
    bounds the rows of one polytope only.  A root has no split yet, the root bound, and
    the root's slopes and multipliers (intermediate slopes shared by rows).
    """
    rows, mix = combine_rows(obj)
    margin = rows.polytope_margins(_mix_rows(root.lower, mix)[0])  # (P,)
    open_ = torch.nonzero(margin <= 0).flatten()
    if open_.numel() == 0:  # all ruled out: one search that ends at once
        open_ = torch.arange(margin.shape[0], device=margin.device)
    open_ = open_[torch.argsort(margin[open_], descending=True)]
    parts = [open_[i : i + 1] for i in range(open_.numel())] if per_polytope else [open_]
    out = []
    for polytopes in parts:
        used = rows.groups[polytopes].any(0)  # (S',)
        sub = CaseObjective(lower=rows.lower, upper=rows.upper, C=rows.C[used], d=rows.d[used],
                            groups=rows.groups[polytopes][:, used], strict=rows.strict[used])
        out.append((sub, relu_root(net, sub, root, mix[used])))
    return out


def relu_root(net: Network, obj: CaseObjective, root: BoundResult, mix: Tensor | None = None) -> SubproblemBatch:
    """The case box with no split yet, the root bound and its slopes (intermediate ones shared by rows).

    ``mix`` ``(S', S)`` (non-negative) maps the root's spec rows to ``obj``'s; a combined
    row starts from the combination of the bounds, slopes and multipliers.
    """
    B = root.lower.shape[0]
    mix = torch.eye(obj.n_rows, dtype=root.lower.dtype, device=root.lower.device) if mix is None else mix
    splits = tuple(torch.zeros(B, net.nodes[r].size, dtype=torch.int8, device=obj.lower.device)
                   for r in net.relu_indices)
    slopes = None if root.slopes is None else Slopes(
        tuple(_mix_rows(t, mix) for t in root.slopes.final),
        tuple(tuple(t.mean(2, keepdim=True) for t in row) for row in root.slopes.intermediate))
    betas = None if root.betas is None else Betas(tuple(_mix_rows(t, mix) for t in root.betas.values))
    return SubproblemBatch(
        lower=obj.lower.expand(B, -1), upper=obj.upper.expand(B, -1), splits=splits,
        bound=_mix_rows(root.lower, mix), depth=torch.zeros(B, dtype=torch.int32, device=obj.lower.device),
        intermediate=root.intermediate, slopes=slopes, betas=betas,
    )


def is_leaf(batch: SubproblemBatch) -> Tensor:
    """Domains ``(B,)`` on which no pre-activation can take both signs (the network is linear there)."""
    leaf = torch.ones(batch.batch, dtype=torch.bool, device=batch.lower.device)
    for unstable in batch.intermediate.unstable():
        leaf &= ~unstable.any(1)
    return leaf


def _state(net: Network, batch: SubproblemBatch) -> CrownState:
    """Node bounds and relaxations from the batch's pre-activation bounds, without any backward pass."""
    with torch.no_grad():
        return crown_sweep(net, batch.domains, batch.intermediate, reuse_known=len(net.relu_indices))


def _final_lower(net: Network, obj: CaseObjective, batch: SubproblemBatch, state: CrownState) -> Tensor:
    """Lower bounds ``(B, S)`` of the spec rows from ``state`` with the batch's slopes and multipliers."""
    B, relus = batch.batch, net.relu_indices
    C, d = obj.C.expand(B, -1, -1), obj.d.expand(B, -1)
    slopes = None if batch.slopes is None else dict(zip(relus, batch.slopes.final, strict=True))
    terms = None
    if batch.betas is not None:
        # beta-CROWN's split term (beta.py): -beta_j s_j added to the coefficient of z_j
        terms = {r: -b * s.to(b.dtype).unsqueeze(1) for r, b, s in zip(relus, batch.betas.values, batch.splits,
                                                                          strict=True)}
    lower, _ = final_bounds(net, batch.domains, state, C, d, slopes, terms)
    return lower


def _worst_rows(obj: CaseObjective, bound: Tensor) -> Tensor:
    """One-hot weights ``(Q, B, S)``: slot ``q`` picks the ``q``-th row of each domain's worst polytope
    (all zero where that polytope has fewer rows)."""
    worst = obj.polytope_margins(bound).argmin(dim=-1)  # (B,)
    rows = obj.groups[worst]  # (B, S)
    rank = rows.cumsum(dim=1) - 1
    Q = int(obj.groups.sum(1).max())
    q = torch.arange(Q, device=bound.device)[:, None, None]
    return (rows & (rank == q)).to(bound.dtype)


def babsr_scores(net: Network, obj: CaseObjective, parents: SubproblemBatch) -> Tensor:
    """Per domain, the score of every ReLU over all layers ``(B, sum n_k)``; ``-inf`` where not splittable.

    For each row of the worst polytope, the intercepts of a neuron's upper relaxation
    lower that row's bound by ``-a_j * intercept_j`` (read off as the gradient of the
    bound with respect to the intercepts); the score is the largest share of a row's
    gap ``-lb`` owed to the neuron, so that every row of the polytope gets candidates.
    The triangle height breaks ties.
    """
    state = _state(net, parents)
    relus = net.relu_indices
    slots = _worst_rows(obj, parents.bound)  # (Q, B, S)
    gap = (-parents.bound).clamp(min=1e-12)  # (B, S)
    score = torch.zeros(parents.batch, sum(net.nodes[r].size for r in relus), dtype=gap.dtype,
                        device=gap.device)
    with torch.enable_grad():
        bias = {r: state.relax.relu[r].upper_bias.detach().clone().requires_grad_() for r in relus}
        relax = Relaxations({r: replace(state.relax.relu[r], upper_bias=bias[r]) for r in relus},
                            state.relax.maxpool)
        lower = _final_lower(net, obj, parents, CrownState(state.nodes, relax))  # (B, S)
        for q, weight in enumerate(slots):
            grads = torch.autograd.grad((lower * weight).sum(), [bias[r] for r in relus], allow_unused=True,
                                        retain_graph=q + 1 < len(slots))
            share = torch.cat([torch.zeros_like(bias[r]) if g is None else -g * bias[r].detach()
                               for r, g in zip(relus, grads, strict=True)], dim=1)  # (B, N)
            score = torch.maximum(score, share / (weight * gap).sum(1, keepdim=True).clamp(min=1e-12))
    tie = relu_scores(parents)  # (B, N) triangle heights, -1 where not splittable
    score = score + 1e-6 * tie.clamp(min=0)
    return torch.where(tie >= 0, score, torch.full_like(score, -torch.inf))


def primal_inputs(net: Network, obj: CaseObjective, batch: SubproblemBatch) -> Tensor:
    """Per domain, the box corner ``(B, n_in)`` minimizing the linear lower bound of the row to improve.

    The bound is ``c + A x`` minimized over the box, so ``x_i`` is the lower end where
    ``A_i >= 0``; ``A`` is the gradient of the bound with respect to both box ends.
    """
    state = _state(net, batch)
    lo, hi = batch.lower.detach().clone().requires_grad_(), batch.upper.detach().clone().requires_grad_()
    with torch.enable_grad():
        lower = _final_lower(net, obj, replace(batch, lower=lo, upper=hi), state)
        g_lo, g_hi = torch.autograd.grad((lower * target_rows(obj, batch.bound)).sum(), [lo, hi])
    return torch.where(g_lo + g_hi >= 0, batch.lower, batch.upper)


def fast_bound(net: Network, obj: CaseObjective, batch: SubproblemBatch) -> Tensor:
    """Lower bounds ``(B, S)`` from one backward pass with the batch's own slopes, multipliers and
    pre-activation bounds (``+inf`` where the splits are infeasible)."""
    state = _state(net, batch)
    with torch.no_grad():
        lower, _ = mark_empty(_final_lower(net, obj, batch, state), None, state.nodes.empty)
    return lower


def fsb_choice(net: Network, obj: CaseObjective, parents: SubproblemBatch, scores: Tensor, k: int
               ) -> tuple[Tensor, Tensor]:
    """Per parent, the neuron ``(B,)`` (flat index) among its top-``k`` by ``scores`` whose children bound
    best, and those children's ``fast_bound`` ``(2 B, S)`` (active halves, then inactive ones).

    All ``2 k B`` candidate children are bounded at once by ``fast_bound``.
    """
    B = parents.batch
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1)  # (B, k)
    tiled = parents.select(torch.arange(B, device=scores.device).repeat(k))  # copy j*B+b = parent b
    lower = fast_bound(net, obj, split_relus(tiled, top.indices.T.reshape(-1)))  # (2 k B, S)
    lower = lower.reshape(2, k, B, -1)  # (2, k, B, S)
    m = obj.polytope_margins(lower).amin(dim=-1)  # (2, k, B)
    # the worse child decides; ties (both proven, or equally open) go to the better sum
    score = torch.minimum(m[0], m[1]).clamp(max=0) * 1e3 + m[0].clamp(max=1) + m[1].clamp(max=1)
    score = torch.where(top.values.T > -torch.inf, score, torch.full_like(score, -torch.inf))
    best = score.argmax(dim=0)  # (B,)
    b = torch.arange(B, device=best.device)
    return top.indices[b, best], lower[:, best, b].reshape(2 * B, -1)


@dataclass
class _LastSplit:
    """The first ReLU layer whose bounds the last ``branch`` call may have changed (read by ``bound``)."""

    reuse: int = 0


def relu_rule(
    net: Network, obj: CaseObjective, validate_fn: ValidateFn, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, stats: BabStats,
) -> Rule:
    """The ReLU-split rule: BaBSR or FSB branching, beta-CROWN bounds, exact leaves."""
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)
    beta_opts = replace(alpha_opts, iterations=opts.beta_iterations, intermediate_slopes="shared",
                        optimize_intermediate=opts.beta_intermediate)
    sizes = torch.tensor([net.nodes[r].size for r in net.relu_indices], device=obj.lower.device)
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    last = _LastSplit()

    def branch(parents: SubproblemBatch) -> SubproblemBatch:
        leaf = is_leaf(parents)  # only a root can be one: passed through to be settled
        split = parents.select(~leaf)
        if split.batch == 0:
            last.reuse = len(net.relu_indices)
            return parents
        scores = babsr_scores(net, obj, split)
        if opts.relu_branching == "fsb" and opts.fsb_candidates > 1:
            flat, lower = fsb_choice(net, obj, split, scores, opts.fsb_candidates)
            children = split_relus(split, flat)
        else:
            flat = scores.argmax(dim=1)
            children = split_relus(split, flat)
            lower = fast_bound(net, obj, children)
        children = replace(children, bound=torch.maximum(children.bound, lower))
        layer = torch.searchsorted(offsets[1:], flat, right=True)  # (B,)
        # after a split in layer k the bounds of layers 0..k stay as they are (crown's reuse_known)
        last.reuse = int(layer.min()) + 1
        return concat([children, parents.select(leaf)]) if bool(leaf.any()) else children

    def bound(children: SubproblemBatch) -> SubproblemBatch:
        # children already proven by the branching's one-pass bound skip beta-CROWN
        todo = ~obj.ruled_out(children.bound)
        if children.slopes is None or children.betas is None or bool(todo.all()):
            return tight(children)
        return concat([tight(children.select(todo)), children.select(~todo)])

    def tight(children: SubproblemBatch) -> SubproblemBatch:
        res = beta_crown(net, children.domains, C, d, beta_opts, known=children.intermediate,
                         slopes=children.slopes, betas=children.betas, deadline=deadline, reuse_known=last.reuse)
        return replace(children, bound=torch.maximum(children.bound, res.lower), intermediate=res.intermediate,
                       slopes=res.slopes, betas=res.betas)

    def settle(open_: SubproblemBatch) -> tuple[SubproblemBatch, Counterexample | None, bool]:
        cex = check_primals(net, obj, open_, validate_fn)
        if cex is not None:
            return open_, cex, False
        leaf = is_leaf(open_)
        if not bool(leaf.any()):
            return open_, None, False
        leaves = open_.select(leaf)
        stats.extra["bab_leaves"] = stats.extra.get("bab_leaves", 0) + leaves.batch
        cex, undecided = decide_leaves(net, obj, leaves, validate_fn, deadline)
        return open_.select(~leaf), cex, undecided

    return Rule(branch=branch, bound=bound, batch_size=opts.relu_batch_size, settle=settle)


def check_primals(net: Network, obj: CaseObjective, batch: SubproblemBatch, validate_fn: ValidateFn
                  ) -> Counterexample | None:
    """Validate the primal corners (``primal_inputs``) whose concrete outputs already look unsafe."""
    if batch.batch == 0:
        return None
    x = primal_inputs(net, obj, batch)
    with torch.no_grad():
        v = obj.violation(forward(net, x))
    for i in torch.argsort(v)[: _PRIMAL_CHECKS].tolist():
        if float(v[i]) > 0:
            break
        cex = validate_fn(x[i])
        if cex is not None:
            return cex
    return None


def decide_leaves(
    net: Network, obj: CaseObjective, leaves: SubproblemBatch, validate_fn: ValidateFn, deadline: Deadline,
) -> tuple[Counterexample | None, bool]:
    """Decide each leaf exactly, one problem per polytope its bound leaves open.

    The problem (the exact engine's encoding with the splits, an LP unless MaxPool
    needs binaries) minimizes the polytope's margin ``max_j C_j y - d_j``: a positive
    optimum rules the polytope out; otherwise the deepest point is the candidate, so
    that rounding in the replay does not reject a point on the boundary.  Returns a
    validated counterexample (the first found) and whether some leaf stayed undecided
    (time limit, solver trouble, or a candidate the replay rejected).
    """
    from verifier.exact.encoding import as_relu_bounds, as_splits, encode_network, margin_problem
    from verifier.exact.highs import solve_mip

    open_polytopes = obj.polytope_margins(leaves.bound) <= 0  # (B, P)
    C, d = obj.C.detach().cpu().double().numpy(), obj.d.detach().cpu().double().numpy()
    groups = obj.groups.cpu().numpy()
    undecided = False
    for i in range(leaves.batch):
        leaf = leaves.select(torch.tensor([i], device=leaves.lower.device))
        enc = encode_network(net, leaf.lower.cpu().double().numpy(), leaf.upper.cpu().double().numpy(),
                             as_relu_bounds(leaf.intermediate, net), as_splits(leaf.splits, net))
        if enc.empty:
            continue
        for p in torch.nonzero(open_polytopes[i]).flatten().tolist():
            if deadline.expired():
                return None, True
            rows = groups[p]
            solve = solve_mip(margin_problem(enc, C[rows], d[rows]), deadline.remaining())
            if solve.status == "infeasible" or solve.dual_bound > 0:
                continue
            if solve.values is not None:
                cex = validate_fn(torch.as_tensor(enc.input_of(solve.values), dtype=net.dtype))
                if cex is not None:
                    return cex, undecided
                log.info("leaf: deepest point (margin %.3g) rejected by the replay; leaf undecided", solve.objective)
            undecided = True
            break
    return None, undecided


def solve_relu(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
) -> tuple[Status, Counterexample | None]:
    """Decide one case by ReLU splitting: one ``search`` per part of ``relu_starts``; the first
    counterexample decides, and every part must be proven for UNSAT."""
    verdict = Status.UNSAT
    for rows, start in relu_starts(net, obj, root, opts.relu_per_polytope):
        rule = relu_rule(net, rows, validate_fn, opts, alpha_opts, deadline, stats)
        status, cex = search(net, rows, start, rule, validate_fn, opts, deadline, gen, stats)
        if status is Status.SAT:
            return status, cex
        if status is not Status.UNSAT:
            verdict = Status.TIMEOUT if deadline.expired() else Status.UNKNOWN
            if deadline.expired():
                break
    return verdict, None
