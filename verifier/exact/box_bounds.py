"""Rigorous pre-activation bounds on one box for the exact engines (shared by the MILP and SMT engines).

The bounds come from ``verifier.bounds`` (CROWN or IBP, float64, rigorous rounding), optionally
LP-tightened (``lp_relaxation.lp_tighten``, whose bounds are recomputed rigorously); they only fix
stable ReLUs and tighten the encodings, they never decide a polytope by themselves except through
``rigorous_bounds``'s ``ruled`` (a row's rigorous lower bound above 0).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from verifier.deadline import Deadline
from verifier.exact.encoding import ReluBounds, as_relu_bounds
from verifier.exact.lp_relaxation import lp_tighten
from verifier.exact.options import MilpOptions
from verifier.network import Network
from vnnlib.spec import Polytope


def case_bounds(
    net: Network, lower: np.ndarray, upper: np.ndarray, deadline: Deadline, options: MilpOptions = MilpOptions()
) -> ReluBounds | None:
    """The tightest pre-activation bounds the options allow on one box (None: interval only)."""
    bounds = crown_bounds(net, lower, upper) if options.crown_bounds else None
    if options.lp_tighten:
        budget = share(deadline, options.tighten_share)
        bounds = lp_tighten(net, lower, upper, bounds, deadline=budget, threads=options.threads)
    return bounds


def crown_bounds(net: Network, lower: np.ndarray, upper: np.ndarray) -> ReluBounds | None:
    """CROWN pre-activation bounds (float64) if the bounding engine provides ``crown``."""
    try:
        from verifier.bounds import Domains, crown
    except ImportError:
        return None
    net64 = net.to(dtype=torch.float64)
    dom = Domains(torch.as_tensor(lower, dtype=torch.float64)[None], torch.as_tensor(upper, dtype=torch.float64)[None])
    with torch.no_grad():
        result = crown(net64, dom)
    return as_relu_bounds(result.intermediate, net)


def rigorous_bounds(net: Network, lower: np.ndarray, upper: np.ndarray, polys: list[Polytope], kind: str
                    ) -> tuple[ReluBounds | None, list[bool]]:
    """Pre-activation bounds on the box by ``kind`` ("none", "interval" or "crown"; None for "none"), and per
    polytope whether the same bounds rule it out there (some row's lower bound above 0, ``vnnlib.spec``)."""
    if kind == "none":
        return None, [False] * len(polys)
    from verifier.bounds import Domains, crown, ibp

    net64 = net.to(dtype=torch.float64)
    dom = Domains(torch.as_tensor(lower, dtype=torch.float64)[None], torch.as_tensor(upper, dtype=torch.float64)[None])
    C = np.concatenate([p.A for p in polys]) if polys else np.zeros((0, net.n_outputs))
    d = np.concatenate([p.b for p in polys]) if polys else np.zeros(0)
    bound = crown if kind == "crown" else ibp
    with torch.no_grad():
        res = bound(net64, dom, torch.as_tensor(C)[None], torch.as_tensor(d)[None])
    lower_rows = res.lower[0].numpy()
    ruled, start = [], 0
    for p in polys:
        ruled.append(bool(np.any(lower_rows[start:start + p.A.shape[0]] > 0)))
        start += p.A.shape[0]
    inter = res.intermediate
    relu = ReluBounds(tuple(t[0].numpy() for t in inter.lower), tuple(t[0].numpy() for t in inter.upper))
    return relu, ruled


def share(deadline: Deadline, fraction: float) -> Deadline:
    """A deadline after ``fraction`` of the remaining time (the same one when there is no limit)."""
    remaining = deadline.remaining()
    return deadline if not np.isfinite(remaining) else Deadline(time.monotonic() + fraction * remaining)
