"""ReLU splitting for branch and bound: choose a neuron, bound the two children with
beta-CROWN, decide the leaves exactly.

Start: the root is copied once per polytope its bound leaves open, each copy
answering for that polytope only, and every subdomain bounds only the rows of
the polytopes it leaves open (``spec_rows``), so a subdomain of a 9-polytope
MNIST spec bounds one row, not nine.

Branch: each parent splits the free unstable ReLU with the best score.  The
BaBSR-style score (Bunel et al. 2020) is the part of the parent's final lower
bound owed to the intercept of that neuron's upper relaxation: with ``a_j`` the
coefficient of the neuron's output in the bound of the row to improve, the chord
``u (z - l) / (u - l)`` contributes ``min(a_j, 0) * (-l u / (u - l))``, which a
split removes.  Filtered strong branching (De Palma et al. 2021, FSB) takes the
top-k neurons by that score and bounds both children of each candidate with one
batched backward pass that reuses the parent's slopes, multipliers and
pre-activation bounds; the candidate whose worse child bounds best wins, and its
children keep that bound.

Bound: beta-CROWN (Wang et al. 2021) on the children not already proven, warm
started from the parent's slopes and multipliers; children are grouped by the
layer they split, so each group reuses the pre-activation bounds of every layer
up to that one and recomputes (by CROWN, intersected with the parent's) only
the layers after it.

Settle: a child whose pre-activation bounds leave no neuron unstable is a leaf:
the network is affine on it, and ``leaves.decide_leaves`` decides it (an LP's
duals recomputed rigorously rule a polytope out, or its deepest point passes
the strict replay); anything else leaves the case undecided, never unsat.
Before that, the input corner minimizing each open child's linear bound is
evaluated, and validated when it looks unsafe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from verifier.bab.branching import babsr_scores, children_state, fast_bound, fsb_choice, split_relus, target_rows
from verifier.bab.leaves import decide_leaves
from verifier.bab.options import BabOptions
from verifier.bab.probes import check_points
from verifier.bab.search import BabStats, Rule, ValidateFn, margins, search
from verifier.bab.spec_rows import (
    batch_bound,
    combine_rows,
    mix_lower,
    mix_rows,
    needed_rows,
    one_polytope_each,
    open_polytopes,
    restrict,
)
from verifier.bab.subproblems import SubproblemBatch, chunk_size, concat, in_chunks, row_budget
from verifier.bounds import (
    AlphaOptions,
    Betas,
    BoundResult,
    Domains,
    IntermediateBounds,
    NodeBounds,
    Slopes,
    beta_crown,
    ibp,
    magnitude,
    relaxation_state,
)
from verifier.certificate.record import NO_RECORD, CaseRecorder
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

log = logging.getLogger(__name__)
Tensor = torch.Tensor
_MIN_GROUP = 64  # children bounded together at least (unless fewer are left), whatever layer they split
_PROBE = 16  # children bounded both ways by ``intermediate: auto``'s probe


def relu_start(net: Network, obj: CaseObjective, root: BoundResult, per_polytope: bool = True
               ) -> tuple[CaseObjective, SubproblemBatch]:
    """The objective the search works on (``obj`` with ``combine_rows``) and its root subdomains.

    With ``per_polytope`` the root is copied once per polytope the root bound leaves
    open, each copy answering for its own polytope only (``one_polytope_each``), so that
    every subdomain bounds the rows of one polytope; otherwise one root bounds the rows
    of all the polytopes it leaves open.  A root has no split yet, the root bound, and
    the root's final-layer slopes and multipliers.
    """
    rows, mix = combine_rows(obj, output_magnitude(net, obj))
    start = relu_root(net, rows, root, mix)
    polytopes = open_polytopes(rows, start.bound[0])
    if not per_polytope or polytopes.numel() == 0:
        return rows, start
    copies = start.select(torch.zeros(polytopes.numel(), dtype=torch.long, device=polytopes.device))
    return rows, replace(copies, bound=one_polytope_each(rows, start.bound[0], polytopes))


def output_magnitude(net: Network, obj: CaseObjective) -> Tensor:
    """A rigorous bound ``(n_out,)`` of ``|f(x)|`` on the case box (interval bounds)."""
    res = ibp(net, Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0)))
    return magnitude(res.lower[0], res.upper[0])


def relu_root(net: Network, obj: CaseObjective, root: BoundResult, mix: Tensor) -> SubproblemBatch:
    """The case box with no split yet, the root bound, its final-layer slopes and its multipliers.

    ``mix`` ``(S', S)`` (non-negative) maps the root's spec rows to ``obj``'s; a combined
    row starts from the combination of the bounds, slopes and multipliers.  The slopes of
    the intermediate layers are left out: with them every child gets a second CROWN pass
    over its intermediate layers (measured on mnistfc 256x4 prop_0_0.03: 1.5x fewer
    subdomains bounded in 60 s, and a worse worst margin); the root's intermediate bounds
    are kept anyway, and every child's are intersected with its parent's.
    """
    B = root.lower.shape[0]
    splits = tuple(torch.zeros(B, net.nodes[r].size, dtype=torch.int8, device=obj.lower.device)
                   for r in net.relu_indices)
    slopes = None if root.slopes is None else Slopes(tuple(mix_rows(t, mix) for t in root.slopes.final), ())
    betas = None if root.betas is None else Betas(tuple(mix_rows(t, mix) for t in root.betas.values))
    return SubproblemBatch(
        lower=obj.lower.expand(B, -1), upper=obj.upper.expand(B, -1), splits=splits,
        bound=mix_lower(root.lower, mix), depth=torch.zeros(B, dtype=torch.int32, device=obj.lower.device),
        intermediate=root.intermediate, slopes=slopes, betas=betas,
    )


def is_leaf(batch: SubproblemBatch) -> Tensor:
    """Domains ``(B,)`` on which no pre-activation can take both signs (the network is linear there)."""
    return batch.intermediate.unstable_count(batch.batch) == 0


def primal_inputs(net: Network, obj: CaseObjective, batch: SubproblemBatch, reference: NodeBounds | None = None
                  ) -> Tensor:
    """Per domain, the box corner ``(B, n_in)`` minimizing the linear lower bound of the row to improve.

    The bound is ``c + A x`` minimized over the box, so ``x_i`` is the lower end where
    ``A_i >= 0``; ``A`` is the gradient of the bound with respect to both box ends.  ``reference``: as in
    ``relaxation_state``.
    """
    state = relaxation_state(net, batch.domains, batch.intermediate, reference)
    rows = needed_rows(obj, batch.bound)
    sub, C, d = restrict(obj, batch, rows)
    weight = rows.gather(target_rows(obj, batch.bound)) * rows.valid  # (B, K)
    lo, hi = batch.lower.detach().clone().requires_grad_(), batch.upper.detach().clone().requires_grad_()
    with torch.enable_grad():
        lower = batch_bound(net, replace(sub, lower=lo, upper=hi), state, C, d)
        g_lo, g_hi = torch.autograd.grad((lower * weight).sum(), [lo, hi])
    return torch.where(g_lo + g_hi >= 0, batch.lower, batch.upper)


def reuse_groups(layer: Tensor, todo: Tensor, min_size: int) -> list[tuple[Tensor, int]]:
    """Groups ``(mask, reuse_known)`` of the children in ``todo`` ``(B,)`` by split ``layer`` ``(B,)``:
    after a split in layer ``k`` the bounds of layers ``0..k`` stay as they are, so a group
    reuses them (``k + 1``); a group smaller than ``min_size`` joins the next shallower one."""
    groups, pending = [], torch.zeros_like(todo)
    layers = torch.unique(layer[todo]).tolist()
    for i, k in enumerate(reversed(layers)):
        pending = pending | (todo & (layer == k))
        if int(pending.sum()) >= min_size or i == len(layers) - 1:
            groups.append((pending, k + 1))
            pending = torch.zeros_like(todo)
    return groups


def relu_rule(
    net: Network, obj: CaseObjective, validate_fn: ValidateFn, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, stats: BabStats, recorder: CaseRecorder | None = None,
    root: IntermediateBounds | None = None,
) -> Rule:
    """The ReLU-split rule: BaBSR or FSB branching, beta-CROWN bounds, exact leaves; ``recorder``
    (optional) records the proof tree.  ``root``: pre-activation bounds on ``obj``'s box that contain
    every subdomain's (its first domain is taken, e.g. of the start): the interval bounds they give every
    node (``relaxation_state``) stand in for each subdomain's own interval arithmetic (not with a
    recorder: a certificate's checker recomputes them per subdomain)."""
    record = recorder or NO_RECORD
    reference = None
    if root is not None and recorder is None:
        first = root.select(torch.zeros(1, dtype=torch.long, device=obj.lower.device))
        reference = relaxation_state(net, Domains(obj.lower[None], obj.upper[None]), first).nodes
    beta_opts = replace(alpha_opts, iterations=opts.relu.beta_iterations, intermediate_slopes="shared",
                        optimize_intermediate=opts.relu.beta_intermediate)
    largest = max((n.size for n in net.nodes), default=1)
    budget = row_budget(opts.max_memory)

    def branch(parents: SubproblemBatch) -> SubproblemBatch:
        # only a root can be a leaf: passed through to be settled, as if split in the last layer (its
        # bounds are all reused)
        leaf = is_leaf(parents)
        passed = replace(parents.select(leaf), split_layer=torch.full(
            (int(leaf.sum()),), len(net.relu_indices) - 1, dtype=torch.long, device=leaf.device))
        split = parents.select(~leaf)
        if split.batch == 0:
            return passed
        # the parents' relaxations, shared by the scores and the children's one-pass bounds (children on
        # their parents' relaxations with the split neuron's changed; a certificate's replay recomputes them)
        state = relaxation_state(net, split.domains, split.intermediate, reference)
        shared = state if recorder is None else None
        scores = babsr_scores(net, obj, split, state)
        if opts.relu.branching == "fsb" and opts.relu.fsb_candidates > 1:
            flat, lower = fsb_choice(net, obj, split, scores, opts.relu.fsb_candidates, shared)
            children = record.branched(split_relus(split, flat), flat.repeat(2))
        else:
            flat = scores.argmax(dim=1)
            children = record.branched(split_relus(split, flat), flat.repeat(2))
            parent = torch.arange(split.batch, device=flat.device)
            lower = fast_bound(net, obj, children,
                               None if shared is None else children_state(net, shared, parent, flat))
        record.bounded(children.ident, obj, children.bound, lower,
                       children.intermediate if children.slopes is None else children.slopes, children.betas,
                       children.splits)
        children = replace(children, bound=torch.maximum(children.bound, lower))
        return concat([children, passed]) if bool(leaf.any()) else children

    def bound(children: SubproblemBatch) -> SubproblemBatch:
        # children already proven by the branching's one-pass bound skip beta-CROWN (unless they
        # have no slopes yet: a root from CROWN; then all get them, so that the batch stays uniform)
        todo = ~obj.ruled_out(children.bound)
        if not net.relu_indices:  # nothing to optimize: the root leaf goes to the exact check as it is
            return children
        if children.slopes is None or children.betas is None:
            todo = torch.ones_like(todo)
        parts = [children.select(~todo)] if not bool(todo.all()) else []
        last = len(net.relu_indices) - 1
        sample = _probe_sample(children.split_layer, todo, last) if mode[0] == "probe" else None
        if sample is not None:
            ways = {"recompute": lambda b: _grouped(b, b.split_layer, tight, largest, budget, stats),
                    "fixed": lambda b: _grouped(b, torch.full_like(b.split_layer, last), tight, largest, budget, stats)}
            mode[0], probed = probe_intermediate(obj, children.select(sample), ways, stats)
            parts.append(probed)
            todo = todo & ~sample
        split_layer = torch.full_like(children.split_layer, last) if mode[0] == "fixed" else children.split_layer
        if bool(todo.any()):
            parts.append(_grouped(children.select(todo), split_layer[todo], tight, largest, budget, stats))
        return concat(parts) if len(parts) > 1 else parts[0]

    # "auto": decided by the first probe (not with a recorder: its replay reads the bounds one way)
    mode = [{"auto": "probe" if recorder is None else "recompute"}.get(opts.relu.intermediate,
                                                                       opts.relu.intermediate)]

    def tight(children: SubproblemBatch, reuse: int) -> SubproblemBatch:
        rows = needed_rows(obj, children.bound)
        sub, C, d = restrict(obj, children, rows)
        res = beta_crown(net, children.domains, C, d, beta_opts, known=children.intermediate,
                         slopes=sub.slopes, betas=sub.betas, deadline=deadline, reuse_known=reuse,
                         reference=reference, one_sided=opts.relu.one_sided)
        S = obj.n_rows
        # rows not bounded keep their state; without any (a root from CROWN), any valid start will do
        old_final = children.slopes.final if children.slopes is not None else tuple(
            t[:, :1].expand(-1, S, -1) for t in res.slopes.final)
        old_betas = children.betas.values if children.betas is not None else tuple(
            torch.zeros_like(t[:, :1]).expand(-1, S, -1) for t in res.betas.values)
        slopes = Slopes(tuple(rows.scatter(f, t) for f, t in zip(old_final, res.slopes.final, strict=True)),
                        res.slopes.intermediate)
        betas = Betas(tuple(rows.scatter(f, t) for f, t in zip(old_betas, res.betas.values, strict=True)))
        bound = rows.scatter(children.bound, torch.maximum(sub.bound, res.lower))
        out = replace(children, bound=bound, intermediate=res.intermediate, slopes=slopes, betas=betas)
        record.bounded(children.ident, obj, children.bound,
                       rows.scatter(torch.full_like(children.bound, -torch.inf), res.lower), slopes, betas,
                       children.splits)
        return out

    def settle(open_: SubproblemBatch) -> tuple[SubproblemBatch, Counterexample | None, bool]:
        cex = check_primals(net, obj, open_, validate_fn, reference)
        if cex is not None:
            return open_, cex, False
        leaf = is_leaf(open_)
        if not bool(leaf.any()):
            return open_, None, False
        leaves = open_.select(leaf)
        stats.extra["bab_leaves"] = stats.extra.get("bab_leaves", 0) + leaves.batch
        cex, undecided = decide_leaves(net, obj, leaves, validate_fn, deadline, record)
        return open_.select(~leaf), cex, bool(undecided.any())

    return Rule(branch=branch, bound=bound, batch_size=opts.relu.batch_size, settle=settle, recorder=recorder,
                parallel=True)


def _grouped(children: SubproblemBatch, split_layer: Tensor, tight, largest: int, budget: float, stats: BabStats
             ) -> SubproblemBatch:
    """``tight(batch, reuse)`` on every child, grouped by the layers whose bounds they reuse (after
    ``split_layer``), in chunks where the backward rows would not fit in memory."""
    parts = []
    everyone = torch.ones(children.batch, dtype=torch.bool, device=split_layer.device)
    for group, reuse in reuse_groups(split_layer, everyone, _MIN_GROUP):
        members = children.select(group)
        step = chunk_size(members, reuse, largest, budget)
        if step < members.batch:
            stats.extra["bab_bound_chunks"] = stats.extra.get("bab_bound_chunks", 0) + 1
        parts.append(in_chunks(lambda b, reuse=reuse: tight(b, reuse), members, step))
    return concat(parts) if len(parts) > 1 else parts[0]


def _probe_sample(split_layer: Tensor, todo: Tensor, last: int) -> Tensor | None:
    """The first ``_PROBE`` children in ``todo`` split before the last ReLU layer (only there do the two
    ways differ), or None while there are fewer."""
    early = todo & (split_layer < last)
    if int(early.sum()) < _PROBE:
        return None
    keep = torch.zeros_like(early)
    keep[early.nonzero().squeeze(1)[:_PROBE]] = True
    return keep


def probe_intermediate(obj: CaseObjective, sample: SubproblemBatch, ways: dict, stats: BabStats
                       ) -> tuple[str, SubproblemBatch]:
    """Bound ``sample`` each way (``ways``: name to bounding function) and choose the way whose children's
    worst margins rose most per second; returns its name and its bounds of the sample."""
    gains, times, outs = {}, {}, {}
    for name, way in ways.items():
        start = time.monotonic()
        outs[name] = way(sample)
        times[name] = max(time.monotonic() - start, 1e-6)
        gains[name] = float(_gain(obj, sample.bound, outs[name].bound))
    choice = max(ways, key=lambda name: gains[name] / times[name])
    log.info("bab: intermediate bounds probe on %d children: %s: %s", sample.batch,
             ", ".join(f"{n} {gains[n]:.4g} in {times[n]:.2f}s" for n in ways), choice)
    stats.extra["bab_intermediate"] = choice
    return choice, outs[choice]


def _gain(obj: CaseObjective, before: Tensor, after: Tensor) -> Tensor:
    """How much the worst open polytope margins of a batch rose (each child's capped at 0, proven)."""
    start, end = margins(obj, before), margins(obj, after)
    live = torch.isfinite(start) & torch.isfinite(end)
    return (end.clamp(max=0) - start.clamp(max=0))[live].clamp(min=0).sum()


def check_primals(net: Network, obj: CaseObjective, batch: SubproblemBatch, validate_fn: ValidateFn,
                  reference: NodeBounds | None = None) -> Counterexample | None:
    """Validate the primal corners (``primal_inputs``) whose concrete outputs already look unsafe."""
    return None if batch.batch == 0 else check_points(net, obj, primal_inputs(net, obj, batch, reference),
                                                      validate_fn)


def named_start(recorder: CaseRecorder, rows: CaseObjective, start: SubproblemBatch, node: int = 0
                ) -> SubproblemBatch:
    """``relu_start``'s roots named as node ``node`` of the proof tree; copies of it (one per open polytope)
    become a chain of forks."""
    start = replace(start, ident=torch.full((start.batch,), node, dtype=torch.long, device=start.lower.device))
    if start.batch > 1:
        start = recorder.forked(start, rows.left_open(start.bound).to(torch.int8).argmax(1).cpu())
    return start


def solve_relu(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
    recorder: CaseRecorder | None = None, node: int = 0,
) -> tuple[Status, Counterexample | None]:
    """Decide one case by ReLU splitting from the bound its incomplete stages reached; ``recorder``
    (optional) records the search as the subtree of its node ``node``, dropped unless it proves the case."""
    rows, start = relu_start(net, obj, root, opts.relu.per_polytope)
    if recorder is not None:
        mark = recorder.mark()
        start = named_start(recorder, rows, start, node)
    rule = relu_rule(net, rows, validate_fn, opts, alpha_opts, deadline, stats, recorder, start.intermediate)
    status, cex = search(net, rows, start, rule, validate_fn, opts, deadline, gen, stats)
    if recorder is not None:
        if status is Status.UNSAT:
            recorder.proven(node)
        else:
            recorder.discard(mark)
    return status, cex
