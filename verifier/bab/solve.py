"""Complete verification of one spec case by branch and bound.

The portfolio per case: input splitting for low-dimensional inputs (then ReLU
splitting, for ReLUs that no input split makes stable), ReLU splitting otherwise,
restarted from refined intermediate bounds on deep networks.  Every region the
search drops is ruled out by a rigorous bound (``verifier.bounds``) or a leaf's
rigorously recomputed LP certificate (``leaves``); solvers only propose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from verifier.bab.branching import bisect_inputs, input_split_dims, strong_input_split
from verifier.bab.contract import contract
from verifier.bab.leaves import decide_leaves
from verifier.bab.probes import check_centres, unsafe_corners, validate_best
from verifier.bab.refine import refined_root
from verifier.bab.relu_split import solve_relu
from verifier.bab.search import BabOptions, BabStats, Rule, ValidateFn, search
from verifier.bab.subproblems import SubproblemBatch, in_chunks
from verifier.bounds import AlphaOptions, BoundResult, Domains, IntermediateBounds, alpha_crown, crown, float32_copy
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

Tensor = torch.Tensor


def choose_branching(net: Network, opts: BabOptions) -> str:
    """``input`` for low-dimensional inputs, else ``relu`` (unless the options say)."""
    if opts.branching != "auto":
        return opts.branching
    return "input" if net.n_inputs <= opts.input_split_max_dim else "relu"


def solve_case(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
) -> tuple[Status, Counterexample | None]:
    """Decide one case, starting from the bound its incomplete stages reached."""
    root_batch = SubproblemBatch(
        lower=obj.lower.unsqueeze(0), upper=obj.upper.unsqueeze(0), splits=None, bound=root.lower,
        depth=torch.zeros(1, dtype=torch.int32, device=obj.lower.device), intermediate=root.intermediate,
    )
    unstable = int(root.intermediate.unstable_count(1)[0]) if root.intermediate is not None else None
    stats.extra["root_unstable"] = unstable if unstable is not None else -1
    if choose_branching(net, opts) == "input":
        # a portfolio: input splitting first, then ReLU splitting (some low-dimensional instances have
        # ReLUs that no input split makes stable)
        input_deadline = deadline.share(opts.input_share if opts.branching == "auto" else 1.0)
        # on small boxes the rows seldom cross: the combinations other than the midpoints proved nothing
        # more on ACAS Xu but took about half of the bounding time (benchmarks/results/README.md)
        keep = torch.ones_like(obj.strict) if opts.input_all_combinations else obj.midpoint_rows()
        obj_in = obj.select_rows(keep)
        root_in = replace(root_batch, bound=root_batch.bound[:, keep])
        rule = _input_rule(net, obj_in, validate_fn, opts, alpha_opts, input_deadline)
        status, cex = search(net, obj_in, root_in, rule, validate_fn, opts, input_deadline, gen, stats)
        if status not in (Status.TIMEOUT, Status.UNKNOWN) or deadline.expired():
            return status, cex
        stats.extra["bab_switched_to_relu"] = 1
        return solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats)
    return _relu_portfolio(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats)


def _relu_portfolio(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
) -> tuple[Status, Counterexample | None]:
    """ReLU splitting; on networks of several ReLU layers it starts again from a refined root once it
    has used its first share."""
    widest = max((net.nodes[r].size for r in net.relu_indices), default=0)
    if (opts.refine_share > 0 and len(net.relu_indices) >= 2 and widest <= opts.refine_max_width
            and root.intermediate is not None):
        status, cex = solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline.share(opts.refine_after),
                                 gen, stats)
        if status not in (Status.TIMEOUT, Status.UNKNOWN) or deadline.expired():
            return status, cex
        root = refined_root(net, obj, root, opts, alpha_opts, deadline.share(opts.refine_share), gen, stats)
        if bool(obj.ruled_out(root.lower).all()):
            return Status.UNSAT, None
    return solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats)


def _input_rule(net: Network, obj: CaseObjective, validate_fn: ValidateFn, opts: BabOptions,
                alpha_opts: AlphaOptions, deadline: Deadline) -> Rule:
    """Input splitting: strong branching scored by a cheap bound, then alpha-CROWN on what stays open."""
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)
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
        return in_chunks(cheap_chunk, children, opts.bound_chunk, key)

    def cheap_chunk(children: SubproblemBatch) -> SubproblemBatch:
        # a child's box lies in its parent's: the parent's intermediate bounds stay valid
        res = crown(net, children.domains, C, d, known=children.intermediate, need_linear=opts.contract)
        children = keep_best(children, res)
        if res.linear is None:
            return children
        probes.append(unsafe_corners(net, obj, children, res.linear[0]))
        return contract_children(obj, children, res.linear)

    def tight(children: SubproblemBatch) -> SubproblemBatch:
        gate.bounded = children.batch
        if opts.bound != "alpha":
            return children
        idx = torch.nonzero(~obj.ruled_out(children.bound)).flatten()
        if idx.numel() == 0:
            return children
        sub = children.select(idx)
        res = alpha_crown(net, sub.domains, C, d, alpha_opts, known=sub.intermediate,
                          slopes=sub.slopes if opts.warm_start else None, deadline=deadline)
        bound = children.bound.clone()
        bound[idx] = torch.maximum(sub.bound, res.lower)
        return replace(children, bound=bound)

    def score(children: SubproblemBatch) -> SubproblemBatch:
        # the parents' intermediate bounds as they are: only the spec rows get a backward pass
        res = crown(net, children.domains, C, d, known=children.intermediate, reuse_known=len(net.relu_indices))
        return replace(children, bound=torch.maximum(children.bound, res.lower))

    def branch(parents: SubproblemBatch) -> SubproblemBatch:
        if opts.strong_branching == "final":
            return cheap(strong_input_split(parents, score, obj))
        if opts.strong_branching == "full":
            return strong_input_split(parents, estimate, obj, finish=cheap)
        return cheap(bisect_inputs(parents, input_split_dims(net, obj, parents)))

    estimate = _estimates(net, obj, opts.bound_chunk, probes)

    def settle(open_: SubproblemBatch) -> tuple[SubproblemBatch, Counterexample | None, bool]:
        cex = validate_best(probes, validate_fn) or check_centres(net, obj, open_, validate_fn)
        probes.clear()
        if cex is not None or opts.exact_unstable <= 0 or open_.intermediate is None:
            return open_, cex, False
        budget, least = gate.turn(open_.batch, deadline)
        if budget is None:
            return open_, cex, False
        t = time.monotonic()
        kept, cex, undecided, _ = relu_leaves(net, obj, open_, validate_fn, opts, alpha_opts, budget, least)
        gate.spent(time.monotonic() - t, open_.batch - kept.batch)
        return kept, cex, undecided

    gate = _LeafGate(opts.exact_share)

    strong = opts.strong_branching != "none"
    batch = max(1, opts.batch_size // (2 * net.n_inputs)) if strong else opts.batch_size
    return Rule(branch=branch, bound=tight, batch_size=batch, settle=settle)


def contract_children(obj: CaseObjective, children: SubproblemBatch, linear: tuple[torch.Tensor, torch.Tensor]
                      ) -> SubproblemBatch:
    """``children`` with their boxes shrunk by their rows' linear bounds (``contract``); the rows of a
    polytope ruled out that way get a ``+inf`` bound."""
    open_ = obj.left_open(children.bound)  # (B, P)
    lower, upper, out = contract(*linear, children.lower, children.upper, obj.groups, open_)
    bound = torch.where(obj.rows_of(out), torch.full_like(children.bound, torch.inf), children.bound)
    return replace(children, lower=lower, upper=upper, bound=bound)


def _estimates(net: Network, obj: CaseObjective, chunk: int, probes: list[tuple[Tensor, Tensor]]
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
        res = crown(e_net, dom, C, d, known=_cast(children.intermediate, dtype), need_linear=True, rigorous=False)
        ranked = replace(children, lower=dom.lower, upper=dom.upper,
                         bound=torch.maximum(children.bound.to(dtype), res.lower), intermediate=None)
        probes.append(unsafe_corners(net, obj, replace(children, bound=ranked.bound.to(children.bound.dtype)),
                                     res.linear[0]))
        return replace(children, bound=contract_children(e_obj, ranked, res.linear).bound.to(children.bound.dtype))

    def estimate(children: SubproblemBatch) -> SubproblemBatch:
        key = None if children.intermediate is None else children.intermediate.unstable_count(children.batch)
        return in_chunks(one_chunk, children, chunk, key)

    return estimate


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
    alpha_opts: AlphaOptions, deadline: Deadline, least: float = 0.25,
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
                                       deadline)
        if cex is not None:
            return open_, cex, False, int(linear.sum())
        keep = ~linear
        keep[torch.nonzero(linear).flatten()[undecided.to(linear.device)]] = True
        open_ = open_.select(keep)
        unstable = unstable[keep]
    few = torch.nonzero(unstable <= opts.exact_unstable).flatten()
    picks = few[torch.argsort(unstable[few], stable=True)][: opts.exact_per_round].tolist()
    proven = torch.zeros(open_.batch, dtype=torch.bool)
    relu_opts = replace(opts, branching="relu", refine_share=0.0)
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
                                 BabStats())
        tried += 1
        if status is Status.SAT:
            return open_, cex, False, tried
        proven[i] = status is Status.UNSAT
    return open_.select(torch.nonzero(~proven).flatten().to(open_.lower.device)), None, False, tried


def _no_splits(net: Network, batch: SubproblemBatch) -> tuple[Tensor, ...]:
    """Split states with every ReLU free, for a batch of input-split boxes."""
    return tuple(torch.zeros(batch.batch, net.nodes[r].size, dtype=torch.int8, device=batch.lower.device)
                 for r in net.relu_indices)
