"""beta-CROWN (Wang et al. 2021): split constraints enter the bound through multipliers.

On a domain where neuron ``i`` is forced active (``s_i = +1``, ``z_i >= 0``) or
inactive (``s_i = -1``, ``z_i <= 0``), ``s_i z_i >= 0``, so for any ``beta >= 0``

    min f  >=  min (f - sum_i beta_i s_i z_i)

over any relaxation of the domain (eq. 3-5 of the paper).  The term is added to
the coefficients of the pre-activations during the backward pass of the final
spec rows, and the multipliers are optimized jointly with the slopes (same loop
as alpha-CROWN, ``alpha.optimize``).  The intermediate bounds use the splits
through the intersected pre-activation bounds only.
"""

from __future__ import annotations

from verifier.bounds.alpha import AlphaOptions, optimize
from verifier.bounds.ibp import NodeBounds
from verifier.bounds.types import Betas, BoundResult, Domains, IntermediateBounds, Slopes, Tensor
from verifier.deadline import Deadline
from verifier.network import Network

DEFAULT_OPTIONS = AlphaOptions()


def beta_crown(
    net: Network,
    domains: Domains,
    C: Tensor | None = None,
    d: Tensor | None = None,
    options: AlphaOptions = DEFAULT_OPTIONS,
    known: IntermediateBounds | None = None,
    slopes: Slopes | None = None,
    betas: Betas | None = None,
    deadline: Deadline | None = None,
    reuse_known: int = 0,
    reference: NodeBounds | None = None,
    one_sided: float = 0.0,
) -> BoundResult:
    """beta-CROWN bounds of ``C f(x) - d`` ``(B, S)``: alpha-CROWN plus optimized split
    multipliers (``result.betas``, one per spec row and neuron; zero where unsplit).

    ``slopes`` and ``betas`` warm-start the optimization (e.g. the parent's, selected
    and repeated for its children).  ``known`` and ``reuse_known`` are as in ``crown``; ``reference``:
    node bounds that contain the domains' (``ibp.sweep``); ``one_sided``: as in ``crown_sweep``.
    Without split states this is alpha-CROWN.
    """
    return optimize(net, domains, C, d, options, known, slopes, True if betas is None else betas, deadline,
                    reuse_known, reference=reference, one_sided=one_sided)
