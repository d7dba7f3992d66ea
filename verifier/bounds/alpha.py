"""alpha-CROWN (Xu et al. 2021): CROWN with optimized ReLU lower-relaxation slopes.

Each unstable neuron's lower line ``alpha x`` may use any ``alpha`` in [0, 1] and
every choice gives a sound bound, so the slopes are optimized by projected Adam
on the sum of the lower bounds.  The final spec rows have their own slopes; the
bounds of the intermediate layers use slopes per bounded neuron ("per_row") or
one set per bounded node ("shared").  The best bound seen is kept per element,
and the intermediate bounds are intersected across iterations.

The same loop optimizes beta-CROWN's split multipliers (see ``beta.py``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from verifier.bounds.adam import Adam
from verifier.bounds.crown import CrownState, crown_sweep, linear_bound
from verifier.bounds.graph import bounded_nodes
from verifier.bounds.ibp import NodeBounds, intermediate_of, mark_empty
from verifier.bounds.prepare import check_domains, check_known, check_no_tf32, float32_copy, spec_rows
from verifier.bounds.rounding import cast_down, cast_up
from verifier.bounds.types import Betas, BoundResult, Domains, IntermediateBounds, Slopes, Tensor
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.options import AlphaOptions

log = logging.getLogger(__name__)


def alpha_crown(
    net: Network,
    domains: Domains,
    C: Tensor | None = None,
    d: Tensor | None = None,
    options: AlphaOptions = AlphaOptions(),
    known: IntermediateBounds | None = None,
    slopes: Slopes | None = None,
    deadline: Deadline | None = None,
    reuse_known: int = 0,
) -> BoundResult:
    """alpha-CROWN bounds of ``C f(x) - d`` ``(B, S)``, never looser than CROWN's.

    ``slopes`` warm-starts the optimization (e.g. a parent's, via ``Slopes.select`` and
    ``Slopes.repeat``); the result carries the best slopes found.  ``known`` and
    ``reuse_known`` are as in ``crown``.
    """
    warmup = options.float32_warmup
    if (options.optimize_intermediate and options.float32_iterations and net.dtype == torch.float64
            and 0 < warmup < options.iterations
            and sum(net.nodes[r].size for r in net.relu_indices) >= options.float32_warmup_relus):
        first = optimize(net, domains, C, d, replace(options, iterations=warmup), known, slopes, None, deadline,
                         reuse_known, low=True)
        rest = optimize(net, domains, C, d, replace(options, iterations=options.iterations - warmup), known,
                        first.slopes, None, deadline, reuse_known)
        return replace(rest, lower=torch.maximum(first.lower, rest.lower))
    return optimize(net, domains, C, d, options, known, slopes, None, deadline, reuse_known)


def optimize(
    net: Network,
    domains: Domains,
    C: Tensor | None,
    d: Tensor | None,
    options: AlphaOptions,
    known: IntermediateBounds | None,
    slopes: Slopes | None,
    betas: Betas | None | bool,
    deadline: Deadline | None,
    reuse_known: int = 0,
    low: bool | None = None,
    reference: NodeBounds | None = None,
    one_sided: float = 0.0,
) -> BoundResult:
    """The shared optimization loop; ``betas`` is ``None`` for alpha-CROWN, else the
    warm-start multipliers (``True``: start from zero).  ``low``: iterate on float32 estimates and bound
    rigorously once at the end (default: on float64 networks without intermediate slopes);
    ``reference``: node bounds that contain the domains' (``ibp.sweep``); ``one_sided``: as in
    ``crown_sweep``, for the CROWN pass on ``known`` bounds that the iterations start from."""
    check_domains(net, domains)
    check_known(net, known, domains.batch, reuse_known)
    check_no_tf32(domains.lower.device)
    C, d = spec_rows(net, domains.batch, C, d)
    deadline = deadline or Deadline()
    relus = net.relu_indices
    with torch.no_grad():
        base = crown_sweep(net, domains, known, reuse_known=reuse_known, reference=reference,
                           one_sided=one_sided)
        # iteration "-1": CROWN itself, so the result is never looser than CROWN's
        floor = _final(net, domains, base, C, d, list(initial_slopes(net, base, C.shape[1], False).final), [], relus)
    # not with intermediate slopes: the float64 iterations intersect every neuron's bounds across the
    # iterations, which one final evaluation of the best slopes does not (mnistfc 256x4 root: 178 unstable
    # ReLUs instead of 169)
    if low is None:
        low = net.dtype == torch.float64 and options.float32_iterations and not options.optimize_intermediate
    run = _Iterations(net, domains, C, d, base, known, reuse_known, low)
    per_row = options.optimize_intermediate and _use_per_row(net, domains.batch, options)
    init = initial_slopes(run.net, run.base, C.shape[1], per_row)
    alpha = _warm(init, slopes)
    use_beta = betas is not None and betas is not False and domains.splits is not None
    beta = _initial_betas(run.domains, C.shape[1], betas if isinstance(betas, Betas) else None) if use_beta else None
    params = [t.requires_grad_() for t in alpha.final]
    inter = [[t.requires_grad_() for t in row] for row in alpha.intermediate]
    beta_params = [t.requires_grad_() for t in beta.values] if beta is not None else []
    slope_params = params + ([p for row in inter for p in row] if options.optimize_intermediate else [])
    opt = Adam([(slope_params, options.lr), (beta_params, options.lr_beta)], options.lr_decay)

    with torch.no_grad():
        # the iterations compare with CROWN in their own precision (float32 bounds have a larger slack)
        best = floor if not low else _final(run.net, run.domains, run.base, run.C, run.d, list(init.final), [], relus)
        best_final = [t.clone() for t in init.final]
        state, empty = run.base, base.nodes.empty
        if slopes is not None:
            if slopes.intermediate:
                state = crown_sweep(run.net, run.domains, _known_of(run.net, run.base, run.known),
                                    _row_slopes(run.net, alpha.intermediate), reuse_known, rigorous=not low)
                empty = empty | state.nodes.empty
            warm = _final(run.net, run.domains, state, run.C, run.d, params, beta_params, relus)
            _keep(best_final, params, (warm > best)[:, :, None])
            best = torch.maximum(best, warm)
        best_known = _known_of(run.net, state, _known_of(run.net, run.base, run.known))
    best_inter = [[p.detach().clone() for p in row] for row in inter]
    best_beta = [p.detach().clone() for p in beta_params]

    for it in range(options.iterations):
        if deadline.expired() or (options.early_stop and bool(((best > 0) | empty[:, None]).all())):
            log.debug("alpha-crown stops after %d iterations", it)
            break
        if options.optimize_intermediate:
            state = crown_sweep(run.net, run.domains, best_known, _row_slopes(run.net, inter), reuse_known,
                                rigorous=not low)
            empty = empty | state.nodes.empty
        lower = _final(run.net, run.domains, state, run.C, run.d, params, beta_params, relus)  # (B, S)
        loss = -torch.where(empty[:, None], 0.0, lower).sum()
        with torch.no_grad():
            better = lower > best  # (B, S)
            better_dom = lower.sum(1) > best.sum(1)  # (B,)
            best = torch.maximum(best, lower)
            _keep(best_final, params, better[:, :, None])
            _keep(best_beta, beta_params, better[:, :, None])
            for row_best, row in zip(best_inter, inter, strict=True):
                _keep(row_best, row, better_dom.reshape(-1, 1, 1, 1))
            if options.optimize_intermediate:
                best_known = _known_of(run.net, state, best_known)
        if it == options.iterations - 1 or not loss.requires_grad:
            break  # a last step would never be evaluated; or no parameter reaches the bound (no unstable ReLU)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in params + [p for row in inter for p in row]:
                p.clamp_(0.0, 1.0)
            for p in beta_params:
                p.clamp_(min=0.0)

    dtype = net.dtype
    best_final = [t.to(dtype) for t in best_final]
    best_beta = [t.to(dtype) for t in best_beta]
    best_inter = [[t.to(dtype) for t in row] for row in best_inter]
    if low:  # the rigorous bound of the best parameters; the estimates' bounds and empty marks are dropped
        with torch.no_grad():
            state, empty = base, base.nodes.empty
            best_known = _known_of(net, base, known)
            if slopes is not None and slopes.intermediate:  # the fixed intermediate slopes the iterations used
                state = crown_sweep(net, domains, best_known, _row_slopes(net, best_inter), reuse_known)
                empty = empty | state.nodes.empty
                best_known = _known_of(net, state, best_known)
            best = torch.maximum(floor, _final(net, domains, state, C, d, best_final, best_beta, relus))
    lower, _ = mark_empty(best, None, empty)
    if options.optimize_intermediate:
        out_inter = tuple(tuple(r) for r in best_inter)
    else:  # unchanged: hand back what was given (nothing when CROWN's defaults were used)
        out_inter = slopes.intermediate if slopes is not None else ()
    out_slopes = Slopes(tuple(best_final), out_inter)
    out_betas = Betas(tuple(best_beta)) if beta is not None else None
    return BoundResult(lower, None, best_known, out_slopes, out_betas)


class _Iterations:
    """What the optimization iterates on: the network, domains, rows and CROWN state in the working
    precision, or (``low``) float32 copies and estimates without rounding slack (``rigorous=False``)."""

    def __init__(self, net: Network, domains: Domains, C: Tensor, d: Tensor, base: CrownState,
                 known: IntermediateBounds | None, reuse_known: int, low: bool) -> None:
        self.net, self.domains, self.C, self.d, self.base, self.known = net, domains, C, d, base, known
        if not low:
            return
        self.net = float32_copy(net)
        self.domains = Domains(cast_down(domains.lower, torch.float32), cast_up(domains.upper, torch.float32),
                               domains.splits)
        self.C, self.d = C.float(), cast_up(d, torch.float32)
        inter = intermediate_of(net, base.nodes.bounds)
        self.known = _outward(inter if known is None else _known_of(net, base, known))
        with torch.no_grad():
            self.base = crown_sweep(self.net, self.domains, self.known, reuse_known=len(net.relu_indices),
                                    rigorous=False)


def _outward(bounds: IntermediateBounds) -> IntermediateBounds:
    """float32 bounds that contain ``bounds``."""
    return IntermediateBounds(tuple(cast_down(t, torch.float32) for t in bounds.lower),
                              tuple(cast_up(t, torch.float32) for t in bounds.upper))


def _final(net: Network, domains: Domains, state: CrownState, C: Tensor, d: Tensor,
           params: list[Tensor], beta_params: list[Tensor], relus: tuple[int, ...]) -> Tensor:
    """Lower bound ``(B, S)`` of the spec rows from the current slopes (and betas), intersected with the
    interval bound (an estimate if ``state`` is one)."""
    return linear_bound(net, domains, state, C, d, params, beta_params or None, interval=True)


def _keep(best: list[Tensor], current: list[Tensor], mask: Tensor) -> None:
    for b, c in zip(best, current, strict=True):
        b.copy_(torch.where(mask, c.detach(), b))


def _known_of(net: Network, state: CrownState, known: IntermediateBounds | None) -> IntermediateBounds:
    """The pre-activation bounds of ``state`` intersected with ``known`` (detached)."""
    cur = intermediate_of(net, state.nodes.bounds)
    if known is None:
        return IntermediateBounds(tuple(t.detach() for t in cur.lower), tuple(t.detach() for t in cur.upper))
    return IntermediateBounds(
        tuple(torch.maximum(a.detach(), b) for a, b in zip(cur.lower, known.lower, strict=True)),
        tuple(torch.minimum(a.detach(), b) for a, b in zip(cur.upper, known.upper, strict=True)),
    )


def _use_per_row(net: Network, batch: int, options: AlphaOptions) -> bool:
    if options.intermediate_slopes != "auto":
        return options.intermediate_slopes == "per_row"
    sizes = {i: net.nodes[i].size for i in range(len(net.nodes))}
    relus = net.relu_indices
    elements = sum(2 * sizes[i] * sizes[r] for i in bounded_nodes(net) for r in relus if r < i)
    return batch * elements <= options.per_row_budget


def initial_slopes(net: Network, state: CrownState, S: int, per_row: bool) -> Slopes:
    """CROWN's adaptive slopes, laid out for every spec row and bounded node."""
    relus = net.relu_indices
    default = [state.relax.relu[r].default_slope for r in relus]  # (B, n_j)
    final = tuple(t.unsqueeze(1).repeat(1, S, 1) for t in default)
    inter = []
    for i in bounded_nodes(net):
        rows = net.nodes[i].size if per_row else 1
        inter.append(tuple(t[:, None, None, :].repeat(1, 2, rows, 1)
                           for r, t in zip(relus, default, strict=True) if r < i))
    return Slopes(final, tuple(inter))


def _warm(init: Slopes, given: Slopes | None) -> Slopes:
    """``given`` where its tensors have the expected shapes, ``init`` elsewhere."""
    if given is None:
        return init

    def pick(a: Tensor, b: Tensor | None) -> Tensor:
        if b is None or b.dim() != a.dim():
            return a
        if b.shape == a.shape:
            return b.detach().to(a.dtype).clone().clamp_(0, 1)
        if b.dim() == 4 and b.shape[2] == 1 and b.shape[:2] == a.shape[:2] and b.shape[3] == a.shape[3]:
            return b.detach().to(a.dtype).expand_as(a).clone().clamp_(0, 1)  # shared -> per row
        if b.dim() == 4 and a.shape[2] == 1 and b.shape[:2] == a.shape[:2] and b.shape[3] == a.shape[3]:
            return b.detach().to(a.dtype).mean(2, keepdim=True).clamp_(0, 1)  # per row -> shared
        return a

    final = tuple(pick(a, b) for a, b in zip(init.final, _pad(given.final, len(init.final)), strict=True))
    rows = _pad(given.intermediate, len(init.intermediate))
    inter = tuple(
        tuple(pick(a, b) for a, b in zip(ra, _pad(rb or (), len(ra)), strict=True))
        for ra, rb in zip(init.intermediate, rows, strict=True)
    )
    return Slopes(final, inter)


def _pad(items: tuple, n: int) -> tuple:
    return tuple(items[:n]) + (None,) * max(0, n - len(items))


def _row_slopes(net: Network, inter: list[list[Tensor]]):
    """The ``RowSlopes`` callback of ``crown_sweep`` for the given intermediate slopes."""
    position = {i: k for k, i in enumerate(bounded_nodes(net))}
    relus = net.relu_indices

    def row_slopes(i: int, idx: Tensor) -> dict[int, Tensor]:
        B, R = idx.shape
        out = {}
        for r, a in zip(relus, inter[position[i]], strict=False):  # relus before node i
            if a.shape[2] == 1:
                rows = a.expand(B, 2, R, a.shape[3])
            else:
                rows = a.gather(2, idx[:, None, :, None].expand(B, 2, R, a.shape[3]))
            out[r] = rows.reshape(B, 2 * R, a.shape[3])
        return out

    return row_slopes


def _initial_betas(domains: Domains, S: int, given: Betas | None) -> Betas:
    assert domains.splits is not None
    init = [torch.zeros(s.shape[0], S, s.shape[1], dtype=domains.lower.dtype, device=domains.lower.device)
            for s in domains.splits]
    if given is not None and len(given.values) == len(init):
        init = [g.detach().to(z.dtype).clone().clamp_(min=0) if g.shape == z.shape else z
                for z, g in zip(init, given.values, strict=True)]
    return Betas(tuple(init))
