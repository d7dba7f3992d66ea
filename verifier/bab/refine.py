"""Intermediate bounds tightened by proving the sign of unstable neurons.

An unstable ReLU is relaxed by a triangle, and on deep networks the looseness
compounds layer by layer.  For each ReLU layer after the first, in order, the
network is cut at that layer's pre-activation (``cut_at``) and its bounds are
re-optimized by alpha-CROWN from the earlier layers' bounds, already tightened.
Then each neuron that sampled inputs have only seen on one side of 0 gets a
short ReLU-splitting search (the beta-CROWN branch and bound of ``relu_split``,
on the cut network) that tries to prove it never crosses to the other side; a
proof makes the neuron stable.  Up to 64 neurons are searched at once, one tree
each, their subdomains bounded in shared batches (``prove_rows``).  A neuron's
search ends early when a primal corner reaches the other side, or past its
budget of subdomains; its lowest open bound then still tightens that side.
Neurons nearest to stable go first, each layer gets an equal share of the time
left, and later passes give the searches that ran out four times the budget.

alpha-beta-CROWN tightens intermediate bounds by MILP for the same reason (its
MNIST fully connected configurations); here HiGHS took 3-5 s per neuron.  On
mnistfc 256x4 prop_0_0.03 the unstable ReLUs went from 169 to 68 in 30 s, and
the root bound then proved the case (worst margin -1.00 -> +0.89), which ReLU
splitting alone had not done in 300 s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from verifier.bab.options import BabOptions
from verifier.bab.search import BabStats, margins, search
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import AlphaOptions, BoundResult, Domains, IntermediateBounds, alpha_crown
from verifier.certificate.record import CaseRecorder
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass(frozen=True)
class RefineOutcome:
    """The tightened pre-activation bounds (batch of 1) and what the refinement did."""

    bounds: IntermediateBounds
    tried: int  # neurons a search was run for
    stabilized: int  # of those, proven stable


def cut_at(net: Network, k: int) -> Network:
    """The network whose output is the pre-activation of ReLU layer ``k`` (flat)."""
    pre = net.nodes[net.relu_indices[k]].inputs[0]
    return Network(nodes=net.nodes[: pre + 1], output=pre)


def observed_signs(sub: Network, lower: Tensor, upper: Tensor, samples: int, gen: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
    """Whether some sampled input of the box ``(n_in,)`` gives each output of ``sub`` a value above
    0, and below 0: two ``(n,)`` bool masks (the centre and uniform samples)."""
    u = torch.rand(samples, lower.numel(), generator=gen, dtype=lower.dtype, device=lower.device)
    x = torch.cat([((lower + upper) / 2).unsqueeze(0), lower + u * (upper - lower)])
    with torch.no_grad():
        y = forward(sub, x).reshape(x.shape[0], -1)
    return (y > 0).any(0), (y < 0).any(0)


def refine_bounds(
    net: Network, obj: CaseObjective, known: IntermediateBounds, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, budget: int, samples: int = 1024, rows_per_call: int = 256,
    passes: int = 3, rows_per_search: int = 64, recorder: CaseRecorder | None = None,
) -> RefineOutcome:
    """``known`` (sound on the case box, batch of 1) with unstable neurons proven stable where the
    searches can within ``deadline``; never looser than ``known``.  ``recorder``: every tightening is
    recorded as a lemma group of the case's certificate (then the layer's alpha-CROWN bounds every neuron
    from the earlier layers' bounds as they are).

    Layer by layer (each an equal share of the time left): pass ``i`` lets each neuron's search bound
    ``budget * 4**i`` subdomains, and a later pass tries again the neurons whose searches ran out.
    Up to ``rows_per_search`` neurons are searched at once (``prove_rows``), nearest to stable first; a
    pass stops at a group of which fewer than 1 in 8 were proven (the rest seldom pay), and a pass that
    proved fewer than 1 in 16 of its neurons is the layer's last.
    """
    lower, upper = list(known.lower), list(known.upper)
    K = len(net.relu_indices)
    tried = stabilized = 0
    for k in range(1, K):
        if deadline.expired():
            break
        layer_deadline = deadline.share(1 / (K - k))
        sub = cut_at(net, k)
        lo, hi = lower[k][0].clone(), upper[k][0].clone()
        unstable = int(((lo < 0) & (hi > 0)).sum())
        if unstable == 0:
            continue
        # the cut network's ReLUs are the first ones of ``net`` (those before this pre-activation): k of
        # them in a chain, fewer where this layer reads an earlier branch
        r = len(sub.relu_indices)
        earlier = IntermediateBounds(tuple(lower[:r]), tuple(upper[:r]))
        lemma = None if recorder is None else (recorder, k)
        todo = _candidates(sub, obj, earlier, lo, hi, alpha_opts, layer_deadline, gen, samples, rows_per_call, lemma)
        after_alpha, layer_tried, layer_stabilized = int(((lo < 0) & (hi > 0)).sum()), 0, 0
        for i in range(passes):
            if not todo or layer_deadline.expired():
                break
            out_of_budget, pass_tried, pass_proven = [], 0, 0
            for g in range(0, len(todo), rows_per_search):
                if layer_deadline.expired():
                    break
                group = todo[g : g + rows_per_search]
                share = layer_deadline.remaining() * len(group) / (len(todo) - g)  # its share, by size
                outcome, bound = prove_rows(sub, obj, earlier, torch.stack([c.c for c in group]), opts,
                                            alpha_opts, layer_deadline.within(share), budget * 4**i, lemma)
                outcome = outcome.tolist()
                for cand, o, b in zip(group, outcome, bound.tolist(), strict=True):
                    if o == 0:
                        out_of_budget.append(cand)
                    # proven (b = +inf): the bound on that side becomes 0; else the search's lowest bound
                    # of c_j z_j tightens that side (c_j = -e_j: z_j <= -b; c_j = e_j: z_j >= b)
                    # an unproven row's bound tightens at most to 0, and only when it is a real number
                    b = 0.0 if o > 0 else min(b, 0.0)
                    if not math.isfinite(b):
                        continue
                    if cand.inactive:
                        hi[cand.neuron] = min(float(hi[cand.neuron]), -b)
                    else:
                        lo[cand.neuron] = max(float(lo[cand.neuron]), b)
                proven = sum(o > 0 for o in outcome)
                pass_tried, pass_proven = pass_tried + len(group), pass_proven + proven
                if 8 * proven < len(group):
                    break
            layer_tried, layer_stabilized = layer_tried + pass_tried, layer_stabilized + pass_proven
            if 16 * pass_proven < pass_tried:
                # larger budgets seldom pay either (mnistfc 256x4 prop_4_0.05, last layer: 1 of 49, and 72 s
                # instead of 194 s without this stop; prop_3_0.03: 4 of 58, and the later passes tightened
                # its bounds: 220 s without the stop, a timeout at 300 s with it at 1 in 8)
                break
            todo = out_of_budget
        lower[k], upper[k] = lo.unsqueeze(0), hi.unsqueeze(0)
        tried, stabilized = tried + layer_tried, stabilized + layer_stabilized
        log.info("refine: relu layer %d: %d unstable, %d after alpha-CROWN, %d searches, %d made stable, "
                 "%.1fs left", k, unstable, after_alpha, layer_tried, layer_stabilized, deadline.remaining())
    return RefineOutcome(IntermediateBounds(tuple(lower), tuple(upper)), tried, stabilized)


@dataclass(frozen=True, eq=False)
class _Candidate:
    """A neuron to try and the side to prove."""

    near: float  # min(-l, u) / (u - l): how near to stable
    neuron: int
    inactive: bool  # prove z_j < 0 (else z_j > 0)
    c: Tensor  # (n,) the row to prove positive: -e_j or e_j


def _candidates(
    sub: Network, obj: CaseObjective, earlier: IntermediateBounds, lo: Tensor, hi: Tensor, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, samples: int, rows_per_call: int,
    lemma: tuple[CaseRecorder, int] | None = None,
) -> list[_Candidate]:
    """Tighten the cut network's output bounds ``lo``, ``hi`` ``(n,)`` in place by alpha-CROWN on
    ``+-z_j`` of its unstable outputs (from the ``earlier`` layers' bounds), and return the neurons
    still unstable that sampling saw on one side only, nearest to stable first.  ``lemma`` (the case's
    recorder, the layer): every neuron is bounded, from ``earlier`` as it is, and each part of the rows
    is recorded as a derived lemma group (the checker bounds them again with the same slopes)."""
    domains = Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0))
    above, below = observed_signs(sub, obj.lower, obj.upper, samples, gen)
    out = []
    neurons = torch.arange(lo.numel(), device=lo.device) if lemma else torch.nonzero((lo < 0) & (hi > 0)).flatten()
    for part in neurons.split(rows_per_call):
        eye = torch.eye(lo.numel(), dtype=lo.dtype, device=lo.device)[part]
        C = torch.cat([eye, -eye]).unsqueeze(0)  # (1, 2m, n)
        res = alpha_crown(sub, domains, C, C.new_zeros(1, C.shape[1]), alpha_opts, known=earlier, deadline=deadline,
                          reuse_known=0 if lemma is None else len(sub.relu_indices))
        m = part.numel()
        if lemma is not None:
            _record_derived(sub, obj, C[0], res, *lemma)
        lo[part] = torch.maximum(lo[part], res.lower[0, :m])
        hi[part] = torch.minimum(hi[part], -res.lower[0, m:])
        # a neuron seen on both sides cannot be stable; otherwise try to prove the side it was seen on
        l, u = lo[part], hi[part]
        keep = (l < 0) & (u > 0) & ~(above[part] & below[part])
        near = (torch.minimum(-l, u) / (u - l)).tolist()
        for i in torch.nonzero(keep).flatten().tolist():
            inactive = bool(below[part[i]])
            row = m + i if inactive else i
            out.append(_Candidate(near[i], int(part[i]), inactive, C[0, row]))
        if deadline.expired():
            break
    return sorted(out, key=lambda c: c.near)


def _row_objective(obj: CaseObjective, C: Tensor) -> CaseObjective:
    """The rows ``C`` ``(P, n)`` on the case box, each a polytope of its own (``c_p y <= 0``)."""
    P = C.shape[0]
    return CaseObjective(lower=obj.lower, upper=obj.upper, C=C, d=C.new_zeros(P),
                         groups=torch.eye(P, dtype=torch.bool, device=C.device),
                         strict=torch.zeros(P, dtype=torch.bool, device=C.device))


def _lemma_recorder(sub: Network, obj: CaseObjective, C: Tensor) -> CaseRecorder:
    """A recorder of a lemma group's tree over ``sub`` for the rows ``C`` (each ``+-e_j``)."""
    sizes = [sub.nodes[r].size for r in sub.relu_indices]
    return CaseRecorder(obj.lower.cpu(), obj.upper.cpu(), [1] * C.shape[0], sizes, lemma=True)


def _record_derived(sub: Network, obj: CaseObjective, C: Tensor, res: BoundResult, recorder: CaseRecorder,
                    layer: int) -> None:
    """Record rows ``C`` bounded by ``res`` as a derived lemma group of layer ``layer`` (its root alone)."""
    rec = _lemma_recorder(sub, obj, C)
    rec.root_closures(_row_objective(obj, C), res.slopes if res.slopes is not None else res.intermediate)
    recorder.derived_group(layer, C, rec)


def prove_rows(
    sub: Network, obj: CaseObjective, earlier: IntermediateBounds, C: Tensor, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, budget: int, lemma: tuple[CaseRecorder, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per row ``c_p`` of ``C`` ``(P, n)``: ``1`` when ReLU splitting proves ``c_p @ sub(x) > 0`` on the
    whole case box, ``-1`` when it meets an input where ``c_p @ sub(x) <= 0``, else ``0`` (out of time,
    or more than ``budget`` subdomains bounded for the row, or an undecided leaf); and a lower bound
    ``(P,)`` of ``c_p @ sub(x)`` on the box (``+inf`` where proven): the lowest bound of the row's open
    subdomains when its search stopped.

    One run of the branch-and-bound loop (``search``) over a tree per row: each subdomain answers for
    its own row only (``relu_start``'s copies of the root), and every round bounds the children of all
    trees in one batch.  The roundest subdomains (margins nearest to 0) go first, so that many rows
    finish early.  ``earlier``: the bounds of ``sub``'s ReLU layers on the case box.  ``lemma`` (the
    case's recorder, the layer): the search is recorded as a derived lemma group (a proven row's leaves
    all bound it above 0; an unproven row's bound is the lowest of its leaves, those let go included).
    """
    from verifier.bab.relu_split import named_start, relu_rule, relu_start

    P = C.shape[0]
    rows = _row_objective(obj, C)
    rec = None if lemma is None else _lemma_recorder(sub, obj, C)
    domains = Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0))
    root = alpha_crown(sub, domains, C.unsqueeze(0), C.new_zeros(1, P), alpha_opts, known=earlier, deadline=deadline)
    if rec is not None:
        rec.bounded(rec.root_ident(), rows, torch.full_like(root.lower, -torch.inf), root.lower,
                    root.slopes if root.slopes is not None else root.intermediate)
    rows, start = relu_start(sub, rows, root, per_polytope=True)
    if rec is not None:
        start = named_start(rec, rows, start)
    stats = BabStats()
    rule = relu_rule(sub, rows, lambda x: None, opts, alpha_opts, deadline, stats, rec, start.intermediate)
    tracker = _RowTracker(sub, rows, C, budget, rec)
    rule = replace(rule, bound=tracker.counting(rule.bound), settle=tracker.settle, admit=tracker.admit,
                   drain=tracker.drop, priority=lambda batch: -margins(rows, batch.bound), attack=False,
                   name="refine")
    search(sub, rows, start, rule, lambda x: None, opts, deadline, torch.Generator(device=C.device), stats)
    outcome, bound = tracker.result()
    if lemma is not None:
        lemma[0].derived_group(lemma[1], C, rec)
    return outcome, bound


class _RowTracker:
    """The per-row bookkeeping of ``prove_rows``: effort, give-ups and the lowest bound let go."""

    def __init__(self, sub: Network, rows: CaseObjective, C: Tensor, budget: int,
                 recorder: CaseRecorder | None = None) -> None:
        P = C.shape[0]
        self.sub, self.rows, self.C, self.budget, self.recorder = sub, rows, C, budget, recorder
        self.outcome = torch.zeros(P, dtype=torch.long, device=C.device)
        self.effort = torch.zeros(P, dtype=torch.long, device=C.device)
        self.given_up = torch.zeros(P, dtype=torch.bool, device=C.device)
        # per row, the lowest bound of its open subdomains dropped (given up) so far
        self.frontier = torch.full((P,), torch.inf, dtype=C.dtype, device=C.device)

    def admit(self, parents: SubproblemBatch) -> SubproblemBatch:
        """The parents whose row is still searched (the others' bounds join the frontier)."""
        dead = self.given_up[_owner(parents.bound)]
        self.drop(parents.select(dead))
        return parents.select(~dead)

    def counting(self, bound: Callable[[SubproblemBatch], SubproblemBatch]
                 ) -> Callable[[SubproblemBatch], SubproblemBatch]:
        """``bound``, counting each row's children (before bounding: an empty child's own row becomes +inf)."""
        def counted(children: SubproblemBatch) -> SubproblemBatch:
            self.effort += torch.bincount(_owner(children.bound), minlength=self.effort.numel())
            return bound(children)

        return counted

    def settle(self, open_: SubproblemBatch) -> tuple[SubproblemBatch, None, bool]:
        """A primal corner on the other side, or a leaf still open: the row cannot be proven here."""
        if open_.batch == 0:
            return open_, None, False
        from verifier.bab.relu_split import is_leaf, primal_inputs

        owner = _owner(open_.bound)
        with torch.no_grad():
            y = forward(self.sub, primal_inputs(self.sub, self.rows, open_)).reshape(open_.batch, -1)
        reached = (y * self.C[owner]).sum(1) <= 0
        self.outcome[owner[reached]] = -1
        self.given_up[owner[reached | is_leaf(open_)]] = True
        self.given_up |= self.effort > self.budget
        keep = ~self.given_up[owner]
        self.drop(open_.select(~keep))
        return open_.select(keep), None, False

    def drop(self, batch: SubproblemBatch) -> None:
        """Give up the rows of ``batch``'s subdomains and lower their frontier to their own-row bounds."""
        if batch.batch:
            owner = _owner(batch.bound)
            if self.recorder is not None:  # each keeps its bound in the lemma group
                self.recorder.let_go(batch.ident, self.rows, owner, batch.bound,
                                     batch.slopes if batch.slopes is not None else batch.intermediate, batch.betas,
                                     batch.splits)
            self.given_up[owner] = True
            self.frontier.scatter_reduce_(0, owner, batch.bound.gather(1, owner.unsqueeze(1)).squeeze(1),
                                          reduce="amin")

    def result(self) -> tuple[Tensor, Tensor]:
        """A row is proven when its tree has no open subdomain left and none was let go: never given up,
        or given up on budget after its last subdomain was ruled out (nothing let go: frontier ``+inf``).
        Any other row's bound is the lowest bound of the subdomains it let go."""
        exhausted = self.given_up & (self.frontier == torch.inf) & (self.outcome >= 0)
        proven = ~self.given_up | exhausted
        self.outcome[proven] = 1
        return self.outcome, torch.where(proven, torch.full_like(self.frontier, torch.inf), self.frontier)


def _owner(bound: Tensor) -> Tensor:
    """The row each subdomain ``(B, P)`` answers for: the one that is not ``+inf``."""
    return (bound != torch.inf).to(torch.int8).argmax(dim=1)


def refined_root(
    net: Network, obj: CaseObjective, root: BoundResult, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, stats: BabStats, recorder: CaseRecorder | None = None,
) -> BoundResult:
    """``root`` with its intermediate bounds refined (``refine_bounds``) and the case's rows bounded
    again by alpha-CROWN from them; each bound is the better of the two.  ``recorder``: the refinement's
    lemma groups and the new root bound's closures are recorded."""
    t = time.monotonic()
    before = int(root.intermediate.unstable_count(1)[0])
    out = refine_bounds(net, obj, root.intermediate, opts, alpha_opts, deadline, gen, opts.refine.neuron_budget,
                        recorder=recorder)
    res = alpha_crown(net, Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0)), obj.C.unsqueeze(0),
                      obj.d.unsqueeze(0), alpha_opts, known=out.bounds)
    if recorder is not None:
        recorder.bounded(recorder.root_ident(), obj, root.lower, res.lower,
                         res.slopes if res.slopes is not None else res.intermediate)
    best = replace(res, lower=torch.maximum(res.lower, root.lower))
    after = int(best.intermediate.unstable_count(1)[0])
    log.info("refine: %d unstable ReLUs -> %d, worst margin %.5g -> %.5g", before, after,
             float(obj.polytope_margins(root.lower).min()), float(obj.polytope_margins(best.lower).min()))
    stats.extra.update(refine_time=round(time.monotonic() - t, 4), refine_tried=out.tried,
                       refine_stabilized=out.stabilized, refine_unstable_before=before, refine_unstable_after=after)
    return best
