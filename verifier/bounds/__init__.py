"""Rigorous bounds on a network over batches of subdomains: IBP, CROWN, alpha- and beta-CROWN.

These functions are the proofs of the verifier: a region is dropped only when one of their bounds
(or a leaf certificate recomputed by ``backward_linear``) says so.  Every bound they return holds in
real arithmetic for the network's stored weights, whatever the working precision: each pass adds a
bound of its own rounding to a slack (``rounding.py``), so bounds of different passes may be
intersected, and bounds that cross prove a domain empty.  What is optimized (slopes, multipliers) or
chosen (which neurons to bound) only changes how tight a bound is, never whether it holds.

The public bounds API: everything outside ``verifier.bounds`` imports from here, never from its modules.
"""

from verifier.bounds.alpha import AlphaOptions, alpha_crown
from verifier.bounds.beta import beta_crown
from verifier.bounds.crown import (
    CrownState,
    ForwardMode,
    crown,
    free_intercepts,
    linear_bound,
    relaxation_state,
    split_state,
)
from verifier.bounds.ibp import NodeBounds, ibp, mark_empty
from verifier.bounds.lagrangian import lagrangian_bound
from verifier.bounds.prepare import float32_copy
from verifier.bounds.rounding import down, eta, gamma, magnitude, up
from verifier.bounds.types import Betas, BoundResult, Domains, IntermediateBounds, Slopes

__all__ = [
    "AlphaOptions", "Betas", "BoundResult", "CrownState", "Domains", "ForwardMode", "IntermediateBounds", "NodeBounds",
    "Slopes",
    "alpha_crown", "beta_crown", "crown", "down", "eta", "float32_copy", "free_intercepts", "gamma", "ibp",
    "lagrangian_bound", "linear_bound", "magnitude", "mark_empty", "relaxation_state", "split_state", "up",
]
