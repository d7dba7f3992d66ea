"""The one branch-and-bound loop over the subdomains of one spec case.

Pop the worst open subdomains, branch them, bound all children in one batched
call, drop the children proven safe (every polytope has a row with a positive
lower bound), look for counterexamples among the rest, push them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from verifier.attack import attack_case
from verifier.bab.options import BabOptions
from verifier.bab.parallel import Channel, Helpers, available_cores, parallel_allowed
from verifier.bab.subproblems import Store, SubproblemBatch
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.memory import peak_memory, physical_memory, reset_peak_memory
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

if TYPE_CHECKING:
    from verifier.certificate.record import CaseRecorder

log = logging.getLogger(__name__)
Tensor = torch.Tensor
ValidateFn = Callable[[Tensor], Counterexample | None]


@dataclass
class BabStats:
    """Counters of one search, merged into ``Result.stats``."""

    rounds: int = 0
    bounded: int = 0
    max_queue: int = 0
    max_depth: int = 0
    time_bounding: float = 0.0
    time_branching: float = 0.0
    time_attack: float = 0.0
    time_exact: float = 0.0
    extra: dict = field(default_factory=dict)
    # a run's statistics so far (``verify``'s ``stats``): updated after every round, so that a run stopped
    # from outside (the command's watchdog) still reports its search
    live: dict | None = field(default=None, repr=False, compare=False)

    def as_dict(self, prefix: str = "bab_") -> dict:
        out = {prefix + k: (round(v, 4) if isinstance(v, float) else v)
               for k, v in vars(self).items() if k not in ("extra", "live")}
        out.update(self.extra)
        return out

    def publish(self) -> None:
        if self.live is not None:
            self.live.update(self.as_dict())


def margins(obj: CaseObjective, bound: Tensor) -> Tensor:
    """Per domain, the smallest polytope margin ``(B,)``: above 0 means proven safe."""
    return obj.polytope_margins(bound).amin(dim=-1)


def still_open(obj: CaseObjective, bound: Tensor) -> Tensor:
    """Per domain ``(B,)``, whether ``bound`` leaves it open: not proven safe, a NaN bound included."""
    return obj.left_open(bound).any(dim=-1)


BoundFn = Callable[[SubproblemBatch], SubproblemBatch]


@dataclass(frozen=True)
class Rule:
    """What the loop needs from a branching strategy (input splitting, ReLU splitting, the refinement's
    per-neuron searches).  Only ``bound`` (rigorous bounds) and ``settle`` (exact leaf decisions) may
    drop a subdomain as proven; the other hooks only order, prune by budget, or observe."""

    branch: Callable[[SubproblemBatch], SubproblemBatch]  # parents -> children
    bound: BoundFn  # children with their new bounds (kept at least as high as the parent's)
    batch_size: int  # parents per round
    # open children -> (those still open, a validated counterexample or None, whether any was left undecided)
    settle: Callable[[SubproblemBatch], tuple[SubproblemBatch, Counterexample | None, bool]]
    # the store's order, lowest first (default: the worst polytope margin first)
    priority: Callable[[SubproblemBatch], Tensor] | None = None
    # popped parents -> those still worth branching; a subdomain let go here leaves the search undecided
    # unless the rule accounts for it itself (as the refinement's per-neuron budgets do)
    admit: Callable[[SubproblemBatch], SubproblemBatch] | None = None
    # sees the open subdomains left when the search stops early (time, memory)
    drain: Callable[[SubproblemBatch], None] | None = None
    attack: bool = True  # PGD on the worst open subdomains every ``attack_every`` rounds
    name: str = "bab"
    # the proof tree of the case (``verifier.certificate.record``): the rule names the children it makes
    # and records its bounds; the loop audits every subdomain it drops against the records
    recorder: CaseRecorder | None = None
    # its subdomains may be searched by helper processes running the same rule (``bab/parallel.py``);
    # never where it admits, drains or records (it accounts for its subdomains in one process)
    parallel: bool = False


def search(
    net: Network, obj: CaseObjective, root: SubproblemBatch, rule: Rule, validate_fn: ValidateFn,
    opts: BabOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats, channel: Channel | None = None,
) -> tuple[Status, Counterexample | None]:
    """Best-first branch and bound of one case from ``root``; UNSAT only when no subdomain is left (here
    or in a helper).  ``channel``: this search is a helper's, which gives subdomains back on request."""
    priority = rule.priority or (lambda batch: margins(obj, batch.bound))
    store = Store()
    store.push(root, priority(root))
    helpers = _helpers(net, obj, rule, validate_fn, opts, deadline, gen, channel)
    try:
        status, cex = _loop(net, obj, store, priority, rule, validate_fn, opts, deadline, gen, stats, channel,
                            helpers)
    finally:
        if helpers is not None:
            helpers.close()
            _merge(stats, helpers)
    if status is Status.UNSAT and helpers is not None and helpers.undecided:
        return (Status.TIMEOUT if deadline.expired() else Status.UNKNOWN), None
    return status, cex


def _helpers(net: Network, obj: CaseObjective, rule: Rule, validate_fn: ValidateFn, opts: BabOptions,
             deadline: Deadline, gen: torch.Generator, channel: Channel | None) -> Helpers | None:
    """The helper processes of a top-level search of a rule that allows them (started later, if ever)."""
    # a rule that admits, drains or records accounts for its subdomains in this process alone
    private = rule.admit is not None or rule.drain is not None or rule.recorder is not None
    if not rule.parallel or private or channel is not None or net.device.type != "cpu":
        return None
    workers = opts.workers if opts.ray else opts.workers or available_cores()  # with Ray, 0: its CPUs
    if workers == 1 or (not opts.ray and not parallel_allowed(workers)):
        return None

    def helper_search(batch: SubproblemBatch, ch: Channel, g: torch.Generator):
        st = BabStats()  # with a channel, the helper's search starts no helpers of its own
        status, cex = search(net, obj, batch, rule, validate_fn, opts, deadline, g, st, ch)
        return status, cex, st

    return Helpers(helper_search, workers, deadline, gen.initial_seed() + 7919, ray=opts.ray)


def _merge(stats: BabStats, helpers: Helpers) -> None:
    for st in helpers.stats:
        stats.rounds += st.rounds
        stats.bounded += st.bounded
        stats.max_depth = max(stats.max_depth, st.max_depth)
        stats.time_bounding += st.time_bounding
        stats.time_branching += st.time_branching
        stats.time_attack += st.time_attack
        stats.time_exact += st.time_exact
    if helpers.handed:
        stats.extra["bab_workers"] = helpers.workers
        stats.extra["bab_handed"] = stats.extra.get("bab_handed", 0) + helpers.handed
        stats.extra["bab_given_back"] = stats.extra.get("bab_given_back", 0) + helpers.returned


def _loop(
    net: Network, obj: CaseObjective, store: Store, priority: Callable[[SubproblemBatch], Tensor], rule: Rule,
    validate_fn: ValidateFn, opts: BabOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
    channel: Channel | None, helpers: Helpers | None,
) -> tuple[Status, Counterexample | None]:
    undecided = False
    memory = opts.max_memory * physical_memory()
    batch_size, last_peak = rule.batch_size, None
    started = last_progress = time.monotonic()
    while store.size or (helpers is not None and helpers.busy):
        if deadline.expired():
            return _stop(store, rule, Status.TIMEOUT)
        if store.size > opts.max_domains or store.nbytes > memory:
            log.info("%s: %d open subdomains (%.2f GB), giving up", rule.name, store.size, store.nbytes / 1e9)
            stats.extra["bab_out_of_memory"] = 1
            return _stop(store, rule, Status.UNKNOWN)
        cex = _exchange(helpers, store, priority, time.monotonic() - started > opts.parallel_after)
        if cex is not None:
            return Status.SAT, cex
        if not store.size:  # all open subdomains are in helpers, and none came back yet
            continue
        deepest = store.nbytes > memory / 2
        if deepest and "bab_depth_first" not in stats.extra:
            log.info("%s: %.2f GB of open subdomains, depth-first from now", rule.name, store.nbytes / 1e9)
            stats.extra["bab_depth_first"] = 1
        reset_peak_memory()
        parents = store.pop(batch_size, deepest=deepest).to(net.device)
        if rule.admit is not None:
            parents = rule.admit(parents)
            if parents.batch == 0:
                continue
        t = time.monotonic()
        children = rule.branch(parents)
        stats.time_branching += time.monotonic() - t

        t = time.monotonic()
        children = rule.bound(children)
        stats.time_bounding += time.monotonic() - t
        stats.bounded += children.batch
        stats.rounds += 1
        stats.max_depth = max(stats.max_depth, int(children.depth.max()))

        t = time.monotonic()
        before = children.select(still_open(obj, children.bound))
        open_, cex, left = rule.settle(before)
        stats.time_exact += time.monotonic() - t
        if rule.recorder is not None:
            _audit(rule.recorder, obj, children, before, open_)
        undecided |= left
        if cex is None and rule.attack and open_.batch and stats.rounds % opts.attack_every == 0:
            t = time.monotonic()
            cex = _attack_worst(net, obj, open_, margins(obj, open_.bound), validate_fn, opts, deadline, gen)
            stats.time_attack += time.monotonic() - t
        if cex is not None:
            return Status.SAT, cex
        store.push(open_, priority(open_))
        stats.max_queue = max(stats.max_queue, store.size)
        batch_size, last_peak = _adapt_batch(batch_size, rule.batch_size, parents.batch, last_peak, 2 * memory,
                                             stats)
        stats.publish()
        if channel is not None and channel.serve(lambda: store.pop(store.size // 2) if store.size >= 2 else None):
            return Status.UNKNOWN, None
        if time.monotonic() - last_progress > opts.progress_every:
            last_progress = time.monotonic()
            log.info("%s: open %d (%.0f MB), %s %.4g, bounded %d, depth %d, %.1fs left", rule.name, store.size,
                     store.nbytes / 1e6, "next priority" if rule.priority else "worst margin",
                     store.min_priority(), stats.bounded, stats.max_depth, deadline.remaining())
    if undecided:  # some leaf was left undecided: out of time if the deadline has passed
        return (Status.TIMEOUT if deadline.expired() else Status.UNKNOWN), None
    return Status.UNSAT, None


def _exchange(helpers: Helpers | None, store: Store, priority: Callable[[SubproblemBatch], Tensor], due: bool
              ) -> Counterexample | None:
    """Start the helpers once ``due``, then trade subdomains with them (waiting when the store is empty)."""
    if helpers is None or not (helpers.helpers or due):
        return None
    helpers.start()
    return helpers.exchange(store.pop, store.size, lambda b: store.push(b, priority(b)), store.size == 0)


def _audit(recorder: CaseRecorder, obj: CaseObjective, children: SubproblemBatch, before: SubproblemBatch,
           after: SubproblemBatch) -> None:
    """Every child ruled out by its bounds, and every one ``settle`` decided, has a recorded reason."""
    recorder.audit(children.ident, obj, children.bound)
    if before.ident is not None and after.batch < before.batch:
        kept = torch.isin(before.ident, after.ident) if after.ident is not None else torch.zeros_like(before.ident,
                                                                                                     dtype=torch.bool)
        recorder.dropped(before.ident[~kept])


def _stop(store: Store, rule: Rule, status: Status) -> tuple[Status, None]:
    """Hand what is left open to the rule's ``drain`` and answer ``status``."""
    if rule.drain is not None and store.size:
        rule.drain(store.pop(store.size))
    return status, None


def _adapt_batch(size: int, most: int, popped: int, last_peak: float | None, budget: float, stats: BabStats
                 ) -> tuple[int, float | None]:
    """The number of parents for the next round, from this round's peak resident memory: halved while
    the next round's peak, extrapolated from this one's and its growth since the last, would pass
    ``budget``; doubled back (up to ``most``) while it stays under a quarter of it.  Also returns the peak."""
    peak = peak_memory()
    if peak is None or popped < size:  # unknown, or a round smaller than the batch size says little
        return size, last_peak
    growth = max(1.0, peak / last_peak) if last_peak else 1.0
    if peak * growth > budget and size > 1:
        size = max(1, size // 2)
        log.info("branch and bound: %.1f GB at the peak of a round, %d parents per round from now", peak / 1e9, size)
        stats.extra["bab_batch_halved"] = stats.extra.get("bab_batch_halved", 0) + 1
        return size, None
    if peak * growth < budget / 4 and size < most:
        return min(most, 2 * size), None
    return size, peak


def _attack_worst(
    net: Network, obj: CaseObjective, batch: SubproblemBatch, m: Tensor, validate_fn: ValidateFn,
    opts: BabOptions, deadline: Deadline, gen: torch.Generator,
) -> Counterexample | None:
    # half the attacked subdomains have the lowest bounds, half the most unsafe-looking centres
    # (a narrow counterexample sits where the concrete outputs come close, not where bounds are loosest)
    with torch.no_grad():
        centre_v = obj.violation(forward(net, (batch.lower + batch.upper) / 2))
    k = max(1, opts.attack_domains // 2)
    picks = torch.unique(torch.cat([torch.argsort(m)[:k], torch.argsort(centre_v)[:k]]))
    return attack_case(net, obj, validate_fn, opts.attack, deadline, gen, batch.lower[picks], batch.upper[picks])
