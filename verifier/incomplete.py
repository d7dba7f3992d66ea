"""Incomplete proof stages on one case box: IBP, then CROWN, then alpha-CROWN.

Each stage keeps the best (largest) lower bound of every spec row seen so far;
all of them are sound, so their maximum is too.
"""

from __future__ import annotations

import logging
import time

import torch

from verifier.bounds import BoundResult, Domains, alpha_crown, crown, ibp
from verifier.config import Config
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective

log = logging.getLogger(__name__)


def incomplete_stages(
    net: Network, obj: CaseObjective, config: Config, deadline: Deadline, stats: dict
) -> tuple[bool, BoundResult]:
    """Whether the cheap stages rule out every polytope of the case, and the best root bound."""
    domains = Domains(obj.lower.unsqueeze(0), obj.upper.unsqueeze(0))
    C, d = obj.C.unsqueeze(0), obj.d.unsqueeze(0)  # (1, S, n_out), (1, S)
    stages = [("ibp", lambda known: ibp(net, domains, C, d)),
              ("crown", lambda known: crown(net, domains, C, d, known=known)),
              ("alpha", lambda known: alpha_crown(net, domains, C, d, config.alpha, known=known,
                                                  deadline=deadline))]
    best: BoundResult | None = None
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
