"""Input splitting for branch and bound: bisect the input box, bound the halves with CROWN.

Branch: strong branching (``strong_branching``) bounds both halves of every
dimension with an estimate (CROWN in float32 without rounding slack, on a copy
of the network) and keeps the split whose worse half bounds best; the chosen
children are then bounded rigorously (CROWN, optionally alpha-CROWN), and each
box is shrunk by its rows' linear bounds (``contract``).

Settle: the corners the linear bounds point to and the box centres are
replayed as counterexample candidates; boxes with few unstable ReLUs go to
ReLU-splitting searches of their own (``relu_leaves``), within a share of the
time (``_LeafGate``), and boxes on which the network is affine to one certified
LP per open polytope (``leaves.decide_leaves``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from verifier.bab.branching import bisect_inputs, input_split_dims, linear_split_dims, strong_input_split
from verifier.bab.contract import contract
from verifier.bab.leaves import decide_leaves
from verifier.bab.options import BabOptions
from verifier.bab.probes import check_centres, unsafe_corners, validate_best
from verifier.bab.relu_split import solve_relu
from verifier.bab.search import BabStats, Rule, ValidateFn
from verifier.bab.subproblems import SubproblemBatch, chunk_size, concat, in_chunks, row_budget
from verifier.bounds import (
    AlphaOptions,
    BoundResult,
    Domains,
    ForwardMode,
    IntermediateBounds,
    alpha_crown,
    crown,
    float32_copy,
)
from verifier.certificate.record import NO_RECORD, CaseRecorder
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

Tensor = torch.Tensor


def input_rule(net: Network, obj: CaseObjective, validate_fn: ValidateFn, opts: BabOptions,
                alpha_opts: AlphaOptions, deadline: Deadline, recorder: CaseRecorder | None = None) -> Rule:
    """Input splitting: strong branching scored by a cheap bound, then alpha-CROWN on what stays open;
    ``recorder`` (optional) records the proof tree."""
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)
    record = recorder or NO_RECORD
    fwd, narrow = opts.input.forward_choice(net.n_inputs, [net.nodes[r].size for r in net.relu_indices])
    scoring = opts.input.branching_score(fwd, narrow)
    # corners of the boxes bounded since the last settle whose concrete outputs looked unsafe
    probes: list[tuple[Tensor, Tensor]] = []

    def keep_best(children: SubproblemBatch, res: BoundResult, slopes: bool = False) -> SubproblemBatch:
        return replace(children, bound=torch.maximum(children.bound, res.lower), intermediate=res.intermediate,
                       slopes=res.slopes if slopes else children.slopes)

    def cheap(children: SubproblemBatch) -> SubproblemBatch:
        # in chunks that keep the backward rows in the CPU's cache (ACAS Xu 3_3/p2: 1.25x more children per
        # second), of children with similar numbers of unstable ReLUs (a chunk's backward pass has as many
        # rows as its most unstable child needs)
        key = None if children.intermediate is None else children.intermediate.unstable_count(children.batch)
        children = record.branched(children)
        return in_chunks(chunk, children, min(opts.input.bound_chunk, memory_chunk(children)), key)

    def bound_children(children: SubproblemBatch, reuse: int = 0) -> SubproblemBatch:
        # a child's box lies in its parent's: the parent's intermediate bounds stay valid
        res = crown(net, children.domains, C, d, known=children.intermediate, need_linear=opts.input.contract,
                    forward=fwd, filter_width=narrow, reuse_known=reuse)
        record.bounded(children.ident, obj, children.bound, res.lower, res.intermediate)
        children = keep_best(children, res)
        if res.linear is None:
            return children
        probes.append(unsafe_corners(net, obj, children, res.linear[0]))
        contracted = contract_children(obj, children, res.linear)
        record.contracted(children.ident, obj, children, contracted)
        return contracted

    chunk = partial(spec_rows_first, obj=obj, bound=bound_children, relu_layers=len(net.relu_indices),
                    enabled=fwd == "filter")
    # no more children at once than the backward rows of their intermediate bounds leave in memory (on a
    # conv net thousands of rows of thousands of values per child); forward bounds alone need none
    largest, budget = max(n.size for n in net.nodes), row_budget(opts.max_memory)
    memory_chunk = partial(chunk_size, reuse=len(net.relu_indices) if fwd == "on" else 0, largest=largest,
                           budget=budget, max_width=narrow)

    def tight(children: SubproblemBatch) -> SubproblemBatch:
        gate.bounded = children.batch
        if opts.input.bound != "alpha":
            return children
        idx = torch.nonzero(~obj.ruled_out(children.bound)).flatten()
        if idx.numel() == 0:
            return children
        sub = children.select(idx)
        res = alpha_crown(net, sub.domains, C, d, alpha_opts, known=sub.intermediate,
                          slopes=sub.slopes if opts.input.warm_start else None, deadline=deadline)
        record.bounded(sub.ident, obj, sub.bound, res.lower, res.slopes, on_box=True)
        bound = children.bound.clone()
        bound[idx] = torch.maximum(sub.bound, res.lower)
        return replace(children, bound=bound)

    def score(children: SubproblemBatch) -> SubproblemBatch:
        # the parents' intermediate bounds as they are: only the spec rows get a backward pass
        res = crown(net, children.domains, C, d, known=children.intermediate, reuse_known=len(net.relu_indices))
        return replace(children, bound=torch.maximum(children.bound, res.lower))

    def branch(parents: SubproblemBatch) -> SubproblemBatch:
        if scoring == "final":
            return cheap(strong_input_split(parents, score, obj))
        if scoring == "full":
            return strong_input_split(parents, estimate, obj, finish=cheap)
        dims = _linear_dims if scoring == "linear" else input_split_dims
        return cheap(bisect_inputs(parents, dims(net, obj, parents)))

    estimate = _estimates(net, obj, opts.input.bound_chunk, probes, fwd, narrow)

    def settle(open_: SubproblemBatch) -> tuple[SubproblemBatch, Counterexample | None, bool]:
        cex = validate_best(probes, validate_fn) or check_centres(net, obj, open_, validate_fn)
        probes.clear()
        if cex is not None or opts.input.exact_unstable <= 0 or open_.intermediate is None:
            return open_, cex, False
        budget, least = gate.turn(open_.batch, deadline)
        if budget is None:
            return open_, cex, False
        t = time.monotonic()
        kept, cex, undecided, _ = relu_leaves(net, obj, open_, validate_fn, opts, alpha_opts, budget, least,
                                              recorder)
        gate.spent(time.monotonic() - t, open_.batch - kept.batch)
        return kept, cex, undecided

    gate = _LeafGate(opts.input.exact_share)

    strong = scoring in ("full", "final")
    batch = max(1, opts.input.batch_size // (2 * net.n_inputs)) if strong else opts.input.batch_size
    return Rule(branch=branch, bound=tight, batch_size=batch, settle=settle, recorder=recorder, parallel=True)


def _linear_dims(net: Network, obj: CaseObjective, parents: SubproblemBatch) -> Tensor:
    """``linear_split_dims`` from the parents' linear bounds on their own intermediate bounds (one backward
    pass of the spec rows, without rounding slack: only the coefficients are read, to rank dimensions);
    ``input_split_dims`` where those are not known."""
    if parents.intermediate is None:
        return input_split_dims(net, obj, parents)
    res = crown(net, parents.domains, obj.C.unsqueeze(0), obj.d.unsqueeze(0), known=parents.intermediate,
                reuse_known=len(net.relu_indices), need_linear=True, rigorous=False)
    return linear_split_dims(obj, parents, res.linear[0])


def spec_rows_first(children: SubproblemBatch, obj: CaseObjective, bound: Callable[..., SubproblemBatch],
                    relu_layers: int, enabled: bool = True) -> SubproblemBatch:
    """``children`` bounded by ``bound(children)``; where ``enabled``, first on their parents' intermediate
    bounds (valid on a child's box: only the spec rows get a backward pass), then, where that leaves a
    polytope open, in full from the boxes as that first bound contracted them (what it cut off holds no
    counterexample): for networks whose intermediate bounds cost full backward passes."""
    if not enabled or children.intermediate is None:
        return bound(children)
    quick = bound(children, reuse=relu_layers)
    proven = obj.ruled_out(quick.bound)
    if bool(proven.all()):
        return quick
    if not bool(proven.any()):
        return bound(quick)
    done, open_ = torch.nonzero(proven).flatten(), torch.nonzero(~proven).flatten()
    # in the children's order (``in_chunks`` puts chunks back by position)
    return concat([quick.select(done), bound(quick.select(open_))]).select(torch.argsort(torch.cat([done, open_])))


def contract_children(obj: CaseObjective, children: SubproblemBatch, linear: tuple[torch.Tensor, torch.Tensor]
                      ) -> SubproblemBatch:
    """``children`` with their boxes shrunk by their rows' linear bounds (``contract``); the rows of a
    polytope ruled out that way get a ``+inf`` bound."""
    open_ = obj.left_open(children.bound)  # (B, P)
    lower, upper, out = contract(*linear, children.lower, children.upper, obj.groups, open_)
    bound = torch.where(obj.rows_of(out), torch.full_like(children.bound, torch.inf), children.bound)
    return replace(children, lower=lower, upper=upper, bound=bound)


def _estimates(net: Network, obj: CaseObjective, chunk: int, probes: list[tuple[Tensor, Tensor]],
               forward: ForwardMode = "off", filter_width: int | None = None
               ) -> Callable[[SubproblemBatch], SubproblemBatch]:
    """Strong branching's ranking of candidate splits: CROWN and contraction without rounding slack, on a
    float32 copy of a float64 network, in chunks of similar children as ``cheap``; nothing is dropped on
    these bounds (the chosen children are bounded again).  The corners that the candidates' linear bounds
    point to go to ``probes`` (counterexample candidates: a narrow one in a corner of the case box is
    often met there first)."""
    dtype = torch.float32 if net.dtype == torch.float64 else net.dtype
    e_net = float32_copy(net) if dtype != net.dtype else net
    e_obj = replace(obj, C=obj.C.to(dtype), d=obj.d.to(dtype))
    C, d = e_obj.C.unsqueeze(0), e_obj.d.unsqueeze(0)

    def one_chunk(children: SubproblemBatch) -> SubproblemBatch:
        dom = _cast(children.domains, dtype)
        res = crown(e_net, dom, C, d, known=_cast(children.intermediate, dtype), need_linear=True, rigorous=False,
                    forward=forward, filter_width=filter_width)
        ranked = replace(children, lower=dom.lower, upper=dom.upper,
                         bound=torch.maximum(children.bound.to(dtype), res.lower), intermediate=None)
        probes.append(unsafe_corners(net, obj, replace(children, bound=ranked.bound.to(children.bound.dtype)),
                                     res.linear[0]))
        return replace(children, bound=contract_children(e_obj, ranked, res.linear).bound.to(children.bound.dtype))

    def estimate(children: SubproblemBatch) -> SubproblemBatch:
        key = None if children.intermediate is None else children.intermediate.unstable_count(children.batch)
        return in_chunks(one_chunk, children, chunk, key)

    return estimate


def relu_count(net: Network) -> int:
    """The number of ReLU neurons of ``net``."""
    return sum(net.nodes[r].size for r in net.relu_indices)


def _cast(x, dtype: torch.dtype):
    """Domains or intermediate bounds in ``dtype`` (for estimates: rounding directions do not matter)."""
    if x is None:
        return None
    if isinstance(x, Domains):
        return Domains(x.lower.to(dtype), x.upper.to(dtype), x.splits)
    return IntermediateBounds(tuple(t.to(dtype) for t in x.lower), tuple(t.to(dtype) for t in x.upper))


class _LeafGate:
    """When input splitting hands boxes to ReLU splitting (``relu_leaves``): within ``share`` of the time,
    or up to half of it while those searches close boxes faster than bisection does (it stalls on ReLUs
    that no input split makes stable), with longer searches per box then."""

    def __init__(self, share: float) -> None:
        self.share, self.start = share, time.monotonic()
        self.time = 0.0  # spent in the searches
        self.proven = 0  # boxes they proved
        self.closed = 0  # boxes bisection closed
        self.bounded = 0  # children bounded in the current round

    def turn(self, still_open: int, deadline: Deadline) -> tuple[Deadline | None, float]:
        """The deadline of this round's searches (None: none this round) and the least time per box."""
        self.closed += self.bounded - still_open
        now = time.monotonic()
        bisecting = max(1e-9, now - self.start - self.time)
        faster = self.time > 0 and self.proven / self.time > self.closed / bisecting
        share = 0.5 if faster else self.share
        if self.time > share * (now - self.start):
            return None, 0.0
        budget = max(0.25, 0.02 * deadline.remaining(), share * (now - self.start) - self.time)
        # the first box searched gets a real try, so that the rates can be compared
        return deadline.within(budget), (2.0 if faster or self.time == 0 else 0.25)

    def spent(self, seconds: float, proven: int) -> None:
        self.time += seconds
        self.proven += proven


def relu_leaves(
    net: Network, obj: CaseObjective, open_: SubproblemBatch, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, least: float = 0.25, recorder: CaseRecorder | None = None,
) -> tuple[SubproblemBatch, Counterexample | None, bool, int]:
    """Search the open boxes with few unstable ReLUs by ReLU splitting (each box its own case), where
    bisecting the input would take many more subdomains; a box leaves only when that search proves it.

    The fewest-unstable boxes go first, each an equal share of ``deadline`` but at least ``least``
    seconds, until the deadline.  Returns the boxes kept, a counterexample, whether some box was left
    undecided (never: the search goes on) and how many boxes were searched."""
    unstable = open_.intermediate.unstable_count(open_.batch)  # (B,)
    linear = unstable == 0  # the network is affine on these boxes: one certified LP per open polytope each
    if bool(linear.any()):
        leaves = open_.select(linear)
        cex, undecided = decide_leaves(net, obj, replace(leaves, splits=_no_splits(net, leaves)), validate_fn,
                                       deadline, recorder or NO_RECORD)
        if cex is not None:
            return open_, cex, False, int(linear.sum())
        keep = ~linear
        keep[torch.nonzero(linear).flatten()[undecided.to(linear.device)]] = True
        open_ = open_.select(keep)
        unstable = unstable[keep]
    few = torch.nonzero(unstable <= opts.input.exact_unstable).flatten()
    picks = few[torch.argsort(unstable[few], stable=True)][: opts.input.exact_per_round].tolist()
    proven = torch.zeros(open_.batch, dtype=torch.bool)
    relu_opts = replace(opts, branching="relu", refine=replace(opts.refine, share=0.0), workers=1)
    tried = 0
    for n, i in enumerate(picks):
        if deadline.expired():
            break
        box = open_.select(torch.tensor([i], device=open_.lower.device))
        sub = replace(obj, lower=box.lower[0], upper=box.upper[0])
        root = BoundResult(box.bound, None, box.intermediate)
        share = max(least, deadline.remaining() / (len(picks) - n))
        status, cex = solve_relu(net, sub, root, validate_fn, relu_opts, alpha_opts,
                                 Deadline.after(share), torch.Generator(device=net.device).manual_seed(i),
                                 BabStats(), recorder, -1 if box.ident is None else int(box.ident[0]))
        tried += 1
        if status is Status.SAT:
            return open_, cex, False, tried
        proven[i] = status is Status.UNSAT
    return open_.select(torch.nonzero(~proven).flatten().to(open_.lower.device)), None, False, tried


def _no_splits(net: Network, batch: SubproblemBatch) -> tuple[Tensor, ...]:
    """Split states with every ReLU free, for a batch of input-split boxes."""
    return tuple(torch.zeros(batch.batch, net.nodes[r].size, dtype=torch.int8, device=batch.lower.device)
                 for r in net.relu_indices)
