"""Counterexample search: random sampling plus multi-restart PGD, batched.

PGD minimises the violation of a case (``CaseObjective.violation``: the min
over polytopes of the max over their rows of ``C_j y - d_j``) with signed
gradient steps projected to the input box (Madry et al. 2018).  Candidates are
only proposals: ``verifier.validate`` decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from verifier.deadline import Deadline
from verifier.forward import forward
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.options import AttackOptions
from verifier.result import Counterexample

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def _uniform(lower: Tensor, upper: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points per box, ``(K * n, n_in)``, uniform in each box ``(K, n_in)``."""
    r = torch.rand((lower.shape[0], n, lower.shape[1]), generator=gen, dtype=lower.dtype, device=lower.device)
    return (lower.unsqueeze(1) + r * (upper - lower).unsqueeze(1)).reshape(-1, lower.shape[1])


def _violation(net: Network, obj: CaseObjective, x: Tensor, chunk: int) -> Tensor:
    return torch.cat([obj.violation(forward(net, x[i : i + chunk])) for i in range(0, x.shape[0], chunk)])


def sample_candidates(
    net: Network, obj: CaseObjective, lower: Tensor, upper: Tensor, opts: AttackOptions, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random points in the boxes, sorted by violation: ``(points, violations)``."""
    with torch.no_grad():
        x = torch.cat([(lower + upper) / 2, _uniform(lower, upper, opts.samples, gen)])
        v = _violation(net, obj, x, opts.max_batch)
    order = torch.argsort(v)
    return x[order], v[order]


def pgd_candidates(
    net: Network, obj: CaseObjective, lower: Tensor, upper: Tensor, opts: AttackOptions,
    gen: torch.Generator, deadline: Deadline, start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One round of PGD from ``restarts`` points per box: best point per restart, sorted."""
    n_res = opts.restarts
    lo = lower.repeat_interleave(n_res, dim=0)  # (K R, n)
    hi = upper.repeat_interleave(n_res, dim=0)
    width = hi - lo
    x = _uniform(lower, upper, n_res, gen) if start is None else start
    best_x, best_v = x.clone(), torch.full((x.shape[0],), torch.inf, dtype=x.dtype, device=x.device)
    target, first = _schedule(obj, x.shape[0] // n_res, n_res, opts.step_starts, x)
    for t in range(opts.steps + 1):
        x = x.detach().requires_grad_(True)
        margins = obj.output_margins(forward(net, x))  # (K R, P)
        v = margins.amin(dim=-1)  # the violation
        with torch.no_grad():
            better = v < best_v
            best_x[better], best_v[better] = x[better], v[better]
        if t == opts.steps or deadline.expired() or bool((best_v < 0).any()):
            break
        # each restart descends the margin of its own polytope, or (target -1) of the nearest one
        loss = torch.where(target >= 0, margins.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1), v)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        frac = first * (opts.step_end / first) ** (t / max(1, opts.steps - 1))  # (K R, 1)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - frac * width * grad.sign(), lo), hi)
    order = torch.argsort(best_v)
    return best_x[order].detach(), best_v[order].detach()


def _schedule(
    obj: CaseObjective, boxes: int, restarts: int, starts: tuple[float, ...], x: Tensor
) -> tuple[Tensor, Tensor]:
    """Per restart ``(boxes * restarts,)``: the polytope whose margin it descends, and its first step
    ``(boxes * restarts, 1)``.  Restart ``i`` of a box takes step ``starts[i mod S]`` and polytope
    ``(i div S) mod (P + 1)``, where ``P`` means the nearest polytope at each step (``-1``).

    Descending only the nearest polytope's margin follows one output class; an unsafe point of
    another polytope (e.g. another wrong MNIST label) can be missed by every restart.
    """
    P, S = obj.groups.shape[0], len(starts)
    i = torch.arange(restarts, device=x.device)
    target = (i // S) % (P + 1)
    target = torch.where(target < P, target, torch.full_like(target, -1)).repeat(boxes)
    first = torch.tensor(starts, dtype=x.dtype, device=x.device)[i % S].repeat(boxes).unsqueeze(1)
    return target, first


def attack_case(
    net: Network, obj: CaseObjective, validate_fn: Callable[[Tensor], Counterexample | None],
    opts: AttackOptions, deadline: Deadline, gen: torch.Generator,
    lower: Tensor | None = None, upper: Tensor | None = None,
) -> Counterexample | None:
    """Sampling, then rounds of PGD, on boxes ``(K, n_in)`` (default: the case box).

    ``validate_fn`` turns a flat candidate into a validated counterexample or None.
    """
    lower = obj.lower.unsqueeze(0) if lower is None else lower
    upper = obj.upper.unsqueeze(0) if upper is None else upper
    x, v = sample_candidates(net, obj, lower, upper, opts, gen)
    cex = _first_valid(x, v, validate_fn, opts.candidates)
    start = None
    for _ in range(opts.rounds):
        if cex is not None or deadline.expired():
            break
        x, v = pgd_candidates(net, obj, lower, upper, opts, gen, deadline, start)
        cex = _first_valid(x, v, validate_fn, opts.candidates)
        # near misses (rounding between torch and onnxruntime) are pushed further next round
        near = v <= _NEAR_MISS
        start = x[near][torch.arange(x.shape[0]) % int(near.sum())] if bool(near.any()) else None
    return cex


_NEAR_MISS = 1e-4


def _first_valid(
    x: Tensor, v: Tensor, validate_fn: Callable[[Tensor], Counterexample | None], limit: int
) -> Counterexample | None:
    for i in range(min(limit, x.shape[0])):
        if float(v[i]) > _NEAR_MISS:
            break
        cex = validate_fn(x[i])
        if cex is not None:
            return cex
    return None
