"""Intermediate bounds tightened by proving the sign of unstable neurons.

An unstable ReLU is relaxed by a triangle, and on deep networks the looseness
compounds layer by layer.  For each ReLU layer after the first, in order, the
network is cut at that layer's pre-activation (``cut_at``) and its bounds are
re-optimized by alpha-CROWN from the earlier layers' bounds, already tightened.
Then each neuron that sampled inputs have only seen on one side of 0 gets a
short ReLU-splitting search (the beta-CROWN branch and bound of ``relu_split``,
on the cut network) that tries to prove it never crosses to the other side; a
proof makes the neuron stable.  A search ends early when its primal corners or
its attack reach the other side.  Neurons nearest to stable go first, each
layer gets an equal share of the time left, and later passes give the searches
that ran out of time four times as long.

alpha-beta-CROWN tightens intermediate bounds by MILP for the same reason (its
MNIST fully connected configurations); here HiGHS took 3-5 s per neuron, the
searches well under 1 s (measured on mnistfc 256x4 prop_0_0.03: the unstable
ReLUs went from 33/57/10/69 per layer to 33/34/0/18 in 36 s, and the root
bound then proved the case, which ReLU splitting alone had not done in 300 s).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from verifier.bab.search import BabOptions, BabStats
from verifier.bounds.alpha import AlphaOptions, alpha_crown
from verifier.bounds.types import BoundResult, Domains, IntermediateBounds, Slopes
from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

log = logging.getLogger(__name__)
Tensor = torch.Tensor
_GIVE_UP = 8  # searches in a row out of time after which a layer's pass stops


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
    deadline: Deadline, gen: torch.Generator, neuron_time: float, samples: int = 1024, rows_per_call: int = 256,
    passes: int = 3,
) -> RefineOutcome:
    """``known`` (sound on the case box, batch of 1) with unstable neurons proven stable where the
    searches can within ``deadline``; never looser than ``known``.

    Pass ``i`` gives each search ``neuron_time * 4**i`` seconds; a later pass (while time is left)
    tries again the neurons whose searches ran out of time, from the tighter earlier layers.
    """
    bounds = known
    reached: set[tuple[int, int]] = set()  # (layer, neuron) shown to take both signs
    tried = stabilized = 0
    for i in range(passes):
        if deadline.expired():
            break
        bounds, t, s = _refine_pass(net, obj, bounds, opts, alpha_opts, deadline, gen, neuron_time * 4**i,
                                    samples, rows_per_call, reached)
        tried, stabilized = tried + t, stabilized + s
        if t == 0:
            break
    return RefineOutcome(bounds, tried, stabilized)


def _refine_pass(
    net: Network, obj: CaseObjective, known: IntermediateBounds, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, neuron_time: float, samples: int, rows_per_call: int,
    reached: set[tuple[int, int]],
) -> tuple[IntermediateBounds, int, int]:
    """One pass over the layers (``refine_bounds``); adds to ``reached``; returns the bounds, the number
    of searches and of neurons made stable."""
    lower, upper = list(known.lower), list(known.upper)
    K = len(net.relu_indices)
    tried = stabilized = 0
    for k in range(1, K):
        if deadline.expired():
            break
        layer_deadline = Deadline(time.monotonic() + deadline.remaining() / (K - k))
        sub = cut_at(net, k)
        lo, hi = lower[k][0].clone(), upper[k][0].clone()
        unstable = int(((lo < 0) & (hi > 0)).sum())
        if unstable == 0:
            continue
        # the cut network's ReLUs are the first ones of ``net`` (those before this pre-activation): k of
        # them in a chain, fewer where this layer reads an earlier branch
        r = len(sub.relu_indices)
        earlier = IntermediateBounds(tuple(lower[:r]), tuple(upper[:r]))
        candidates = [c for c in _candidates(sub, obj, earlier, lo, hi, alpha_opts, layer_deadline, gen, samples,
                                             rows_per_call) if (k, c.neuron) not in reached]
        after_alpha, layer_tried, layer_stabilized, misses = int(((lo < 0) & (hi > 0)).sum()), 0, 0, 0
        for cand in candidates:
            # neurons come nearest to stable first: after a run of searches out of time, the rest seldom pay
            if layer_deadline.expired() or misses >= _GIVE_UP:
                break
            layer_tried += 1
            limit = Deadline(min(layer_deadline.at, time.monotonic() + neuron_time))
            status = prove_row(sub, obj, cand.res, cand.row, cand.c, opts, alpha_opts, limit, gen)
            misses = misses + 1 if status not in (Status.SAT, Status.UNSAT) else 0
            if status is Status.SAT:
                reached.add((k, cand.neuron))
            elif status is Status.UNSAT:
                layer_stabilized += 1
                if cand.inactive:
                    hi[cand.neuron] = 0.0  # -z_j > 0 proven
                else:
                    lo[cand.neuron] = 0.0  # z_j > 0 proven
        lower[k], upper[k] = lo.unsqueeze(0), hi.unsqueeze(0)
        tried, stabilized = tried + layer_tried, stabilized + layer_stabilized
        log.info("refine: relu layer %d: %d unstable, %d after alpha-CROWN, %d searched (%.1fs each at most), "
                 "%d made stable, %.1fs left", k, unstable, after_alpha, layer_tried, neuron_time, layer_stabilized,
                 deadline.remaining())
    return IntermediateBounds(tuple(lower), tuple(upper)), tried, stabilized


@dataclass(frozen=True, eq=False)
class _Candidate:
    """A neuron to try, the side to prove, and the cut network's alpha-CROWN result to start from."""

    near: float  # min(-l, u) / (u - l): how near to stable
    neuron: int
    inactive: bool  # prove z_j < 0 (else z_j > 0)
    res: BoundResult
    row: int  # its row in ``res``
    c: Tensor  # (n,) that row: -e_j or e_j


def _candidates(
    sub: Network, obj: CaseObjective, earlier: IntermediateBounds, lo: Tensor, hi: Tensor, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, samples: int, rows_per_call: int,
) -> list[_Candidate]:
    """Tighten the cut network's output bounds ``lo``, ``hi`` ``(n,)`` in place by alpha-CROWN on
    ``+-z_j`` of its unstable outputs (from the ``earlier`` layers' bounds), and return the neurons
    still unstable that sampling saw on one side only, nearest to stable first."""
    domains = Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0))
    above, below = observed_signs(sub, obj.lower, obj.upper, samples, gen)
    out = []
    for part in torch.nonzero((lo < 0) & (hi > 0)).flatten().split(rows_per_call):
        eye = torch.eye(lo.numel(), dtype=lo.dtype, device=lo.device)[part]
        C = torch.cat([eye, -eye]).unsqueeze(0)  # (1, 2m, n)
        res = alpha_crown(sub, domains, C, C.new_zeros(1, C.shape[1]), alpha_opts, known=earlier, deadline=deadline)
        m = part.numel()
        lo[part] = torch.maximum(lo[part], res.lower[0, :m])
        hi[part] = torch.minimum(hi[part], -res.lower[0, m:])
        # a neuron seen on both sides cannot be stable; otherwise try to prove the side it was seen on
        l, u = lo[part], hi[part]
        keep = (l < 0) & (u > 0) & ~(above[part] & below[part])
        near = (torch.minimum(-l, u) / (u - l)).tolist()
        for i in torch.nonzero(keep).flatten().tolist():
            inactive = bool(below[part[i]])
            row = m + i if inactive else i
            out.append(_Candidate(near[i], int(part[i]), inactive, res, row, C[0, row]))
        if deadline.expired():
            break
    return sorted(out, key=lambda c: c.near)


def prove_row(
    sub: Network, obj: CaseObjective, res: BoundResult, row: int, c: Tensor, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator,
) -> Status:
    """``UNSAT`` when ReLU splitting proves ``c @ sub(x) > 0`` on the whole box within ``deadline``,
    ``SAT`` when it finds an input where ``c @ sub(x) <= 0``, else ``TIMEOUT`` or ``UNKNOWN``; it starts
    from row ``row`` of the cut network's alpha-CROWN result ``res``."""
    from verifier.bab.relu_split import solve_relu

    one = CaseObjective(lower=obj.lower, upper=obj.upper, C=c.unsqueeze(0), d=c.new_zeros(1),
                        groups=torch.ones(1, 1, dtype=torch.bool, device=c.device),
                        strict=torch.zeros(1, dtype=torch.bool, device=c.device))
    slopes = None if res.slopes is None else Slopes(tuple(s[:, row : row + 1] for s in res.slopes.final),
                                                    res.slopes.intermediate)
    root = BoundResult(res.lower[:, row : row + 1], None, res.intermediate, slopes, None)
    if bool(one.ruled_out(root.lower).all()):
        return Status.UNSAT

    def reaches(x: Tensor) -> Counterexample | None:
        # a point on the other side: the neuron is unstable (an internal witness, never reported)
        with torch.no_grad():
            y = forward(sub, x.reshape(1, -1).to(c.dtype)).reshape(-1)
        return Counterexample(x.cpu().numpy(), y.cpu().numpy()) if float(c @ y) <= 0 else None

    return solve_relu(sub, one, root, reaches, opts, alpha_opts, deadline, gen, BabStats())[0]


def refined_root(
    net: Network, obj: CaseObjective, root: BoundResult, opts: BabOptions, alpha_opts: AlphaOptions,
    deadline: Deadline, gen: torch.Generator, stats: BabStats,
) -> BoundResult:
    """``root`` with its intermediate bounds refined (``refine_bounds``) and the case's rows bounded
    again by alpha-CROWN from them; each bound is the better of the two."""
    t = time.monotonic()
    before = int(root.intermediate.unstable_count(1)[0])
    out = refine_bounds(net, obj, root.intermediate, opts, alpha_opts, deadline, gen, opts.refine_neuron_time)
    res = alpha_crown(net, Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0)), obj.C.unsqueeze(0),
                      obj.d.unsqueeze(0), alpha_opts, known=out.bounds)
    best = replace(res, lower=torch.maximum(res.lower, root.lower))
    after = int(best.intermediate.unstable_count(1)[0])
    log.info("refine: %d unstable ReLUs -> %d, worst margin %.5g -> %.5g", before, after,
             float(obj.polytope_margins(root.lower).min()), float(obj.polytope_margins(best.lower).min()))
    stats.extra.update(refine_time=round(time.monotonic() - t, 4), refine_tried=out.tried,
                       refine_stabilized=out.stabilized, refine_unstable_before=before, refine_unstable_after=after)
    return best
