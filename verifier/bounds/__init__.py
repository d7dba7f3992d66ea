"""Sound bounds on a network over batches of subdomains: IBP, CROWN, alpha- and beta-CROWN."""

from verifier.bounds.alpha import AlphaOptions, alpha_crown
from verifier.bounds.beta import beta_crown
from verifier.bounds.crown import crown
from verifier.bounds.ibp import ibp
from verifier.bounds.types import Betas, BoundResult, Domains, IntermediateBounds, Slopes

__all__ = [
    "AlphaOptions", "Betas", "BoundResult", "Domains", "IntermediateBounds", "Slopes", "alpha_crown", "beta_crown",
    "crown", "ibp",
]
