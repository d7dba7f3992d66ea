"""Rigorous pre-activation bounds on one box for the MILP engine.

The bounds come from ``verifier.bounds`` (CROWN or IBP, float64, rigorous rounding), optionally
LP-tightened (``lp_relaxation.lp_tighten``, whose bounds are recomputed rigorously); they only fix
stable ReLUs and tighten the encodings, they never decide a polytope by themselves.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.deadline import Deadline
from verifier.exact.encoding import ReluBounds, as_relu_bounds
from verifier.exact.lp_relaxation import lp_tighten
from verifier.exact.options import MilpOptions
from verifier.network import Network


def case_bounds(
    net: Network, lower: np.ndarray, upper: np.ndarray, deadline: Deadline, options: MilpOptions = MilpOptions()
) -> ReluBounds | None:
    """The tightest pre-activation bounds the options allow on one box (None: interval only)."""
    bounds = crown_bounds(net, lower, upper) if options.crown_bounds else None
    if options.lp_tighten:
        budget = deadline.share(options.tighten_share)
        bounds = lp_tighten(net, lower, upper, bounds, deadline=budget, threads=options.threads)
    return bounds


def crown_bounds(net: Network, lower: np.ndarray, upper: np.ndarray) -> ReluBounds:
    """CROWN pre-activation bounds (float64, rigorous) on the box."""
    from verifier.bounds import Domains, crown

    net64 = net.to(dtype=torch.float64)
    dom = Domains(torch.as_tensor(lower, dtype=torch.float64)[None], torch.as_tensor(upper, dtype=torch.float64)[None])
    with torch.no_grad():
        result = crown(net64, dom)
    return as_relu_bounds(result.intermediate, net)
