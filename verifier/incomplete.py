"""Incomplete proof stages on one case box: IBP, then CROWN, then alpha-CROWN.

Each stage keeps the best (largest) lower bound of every spec row seen so far;
all of them are sound, so their maximum is too.  A spec of many cases (many
input boxes) first has IBP and CROWN run on all its cases in a few batches
(``screen_cases``); only the cases they leave open pay the per-case stages.
"""

from __future__ import annotations

import logging
import time

import torch

from verifier.bounds import BoundResult, Domains, ForwardMode, alpha_crown, crown, ibp
from verifier.config import Config
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective

log = logging.getLogger(__name__)


def incomplete_stages(
    net: Network, obj: CaseObjective, config: Config, deadline: Deadline, stats: dict,
    screened: BoundResult | None = None,
) -> tuple[bool, BoundResult]:
    """Whether the cheap stages rule out every polytope of the case, and the best root bound
    (``screened``: the case's IBP and CROWN bound from ``screen_cases``, whose stages are then skipped)."""
    domains = Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0))
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)  # (1, S, n_out), (1, S)
    forward = forward_bounds(net, config)
    stages = [("ibp", lambda known: ibp(net, domains, C, d)),
              ("crown", lambda known: crown(net, domains, C, d, known=known, forward=forward)),
              ("alpha", lambda known: alpha_crown(net, domains, C, d, config.alpha, known=known,
                                                  deadline=deadline))]
    if forward == "on" or not root_alpha(net, config):  # forward bounds avoid alpha-CROWN's backward passes
        stages = stages[:2]
    best: BoundResult | None = screened
    if screened is not None:
        stages = [s for s in stages if s[0] == "alpha"]
        if config.stop_after in ("ibp", "crown"):
            return False, screened
    for name, stage in stages:
        t = time.monotonic()
        res = stage(None if best is None else best.intermediate)
        if best is not None:
            res = BoundResult(torch.maximum(res.lower, best.lower), None, res.intermediate, res.slopes, res.betas)
        best = res
        stats[f"{name}_time"] = round(stats.get(f"{name}_time", 0.0) + time.monotonic() - t, 4)
        proven = bool(obj.ruled_out(best.lower).all())
        log.info("%s: worst margin %.5g%s", name, float(obj.polytope_margins(best.lower).min()),
                 " (proven)" if proven else "")
        if proven:
            stats["proved_by"] = name
            return True, best
        if name == config.stop_after or deadline.expired():
            break
    return False, best


def root_alpha(net: Network, config: Config) -> bool:
    """Whether the stages may include alpha-CROWN on the whole box: not before a complete input-splitting
    search that bounds by CROWN alone, unless ``bab.input.root_alpha`` says so."""
    from verifier.bab.solve import choose_branching

    if config.stop_after != "complete" or choose_branching(net, config.bab) != "input":
        return True
    opts = config.bab.input
    return opts.root_alpha or opts.bound == "alpha"


def forward_bounds(net: Network, config: Config) -> ForwardMode:
    """Where the cases of ``net`` get their intermediate bounds (``crown``'s ``forward``: forward linear
    bounds for input splitting on a network of few inputs and many ReLUs; ``bab.input.forward``)."""
    from verifier.bab.input_split import relu_count
    from verifier.bab.solve import choose_branching

    if choose_branching(net, config.bab) != "input":
        return "off"
    return config.bab.input.forward_mode(net.n_inputs, relu_count(net))


def screen_cases(
    net: Network, objectives: list[CaseObjective], config: Config, deadline: Deadline, stats: dict,
    keep_proven: bool = False, chunk: int = 2048,
) -> tuple[dict[int, BoundResult | None], dict[int, BoundResult]]:
    """IBP, then CROWN on the cases IBP leaves open, over all cases at once (cases with the same rows
    per polytope share a batch of up to ``chunk`` boxes): the cases they prove (with their root bound,
    a batch of 1, when ``keep_proven``, else None), and the root bound of each case left open (a case
    is in neither where the deadline passed first)."""
    proven: dict[int, BoundResult | None] = {}
    left: dict[int, BoundResult] = {}
    by_rows: dict[tuple, list[int]] = {}
    for i, obj in enumerate(objectives):
        by_rows.setdefault((tuple(obj.groups.shape), obj.groups.cpu().numpy().tobytes()), []).append(i)
    for group in by_rows.values():
        for start in range(0, len(group), chunk):
            if deadline.expired():
                return proven, left
            part = group[start : start + chunk]
            objs = [objectives[i] for i in part]
            domains = Domains(torch.stack([o.lower for o in objs]), torch.stack([o.upper for o in objs]))
            C, d = torch.stack([o.C for o in objs]), torch.stack([o.d for o in objs])  # (K, S, n_out), (K, S)
            t = time.monotonic()
            res = ibp(net, domains, C, d)
            stats["ibp_time"] = round(stats.get("ibp_time", 0.0) + time.monotonic() - t, 4)
            open_ = _screened(objs[0], res, part, proven, keep_proven)
            if open_.numel() and config.stop_after != "ibp":
                t = time.monotonic()
                sub = crown(net, domains.select(open_), C[open_], d[open_], known=res.intermediate.select(open_),
                            forward=forward_bounds(net, config))
                stats["crown_time"] = round(stats.get("crown_time", 0.0) + time.monotonic() - t, 4)
                lower = torch.maximum(sub.lower, res.lower[open_])
                res = BoundResult(lower, None, sub.intermediate, sub.slopes, sub.betas)
                keep = open_.tolist()
                still = _screened(objs[0], res, [part[k] for k in keep], proven, keep_proven)
                left.update({part[keep[j]]: _one(res, j) for j in still.tolist()})
            else:
                left.update({part[j]: _one(res, j) for j in open_.tolist()})
    log.info("screen: %d of %d cases proven by IBP and CROWN in batches", len(proven), len(objectives))
    stats["screen_proven"] = len(proven)
    return proven, left


def _screened(obj: CaseObjective, res: BoundResult, index: list[int], proven: dict[int, BoundResult | None],
              keep: bool) -> torch.Tensor:
    """Record the cases of the batch ``res`` (rows grouped into polytopes as in ``obj``) that are ruled
    out in ``proven``; the batch positions left open."""
    done = obj.ruled_out(res.lower)
    proven.update({index[j]: _one(res, j) if keep else None for j in torch.nonzero(done).flatten().tolist()})
    return torch.nonzero(~done).flatten()


def _one(res: BoundResult, j: int) -> BoundResult:
    """Entry ``j`` of a batched root bound, as a batch of 1."""
    at = torch.tensor([j], device=res.lower.device)
    return BoundResult(res.lower[j : j + 1], None, res.intermediate.select(at),
                       None if res.slopes is None else res.slopes.select(at),
                       None if res.betas is None else res.betas.select(at))
