"""A rigorous bound of a Lagrangian combination of spec rows, given the multipliers of the pre-activations.

An LP solver's duals on a region where every ReLU's sign is fixed (``exact.certified_lp``) are only a
hint; this recomputes what they claim with our own backward pass and rigorous rounding: weights
``lam >= 0`` of the rows ``C_j y - d_j`` and coefficients ``nu[r]`` of each Relu node's pre-activation
(``backward_linear``'s ``given`` rule).  The bound is sound for any ``lam >= 0`` and ``nu``; good duals
only make it tight.
"""

from __future__ import annotations

import torch

from verifier.bounds.backward import backward_linear, concretize
from verifier.bounds.crown import crown_sweep
from verifier.bounds.rounding import down, gamma
from verifier.bounds.types import Domains, IntermediateBounds, Tensor
from verifier.network import Network


def lagrangian_bound(net: Network, domains: Domains, known: IntermediateBounds | None, C: Tensor, d: Tensor,
                     lam: Tensor, nu: dict[int, Tensor]) -> Tensor:
    """A rigorous lower bound ``(B, 1)`` of ``sum_j lam_j (C_j f(x) - d_j)`` over each domain, with ``C``
    ``(k, n_out)``, ``d`` ``(k,)``, ``lam`` ``(B, 1, k)`` and ``nu[r]`` ``(B, 1, n_r)`` as the coefficients of
    Relu node ``r``'s pre-activation; ``known`` bounds (sound on the domains) are used as given for every
    ReLU layer.  ``+inf`` on a domain proven empty."""
    with torch.no_grad():
        reuse = len(net.relu_indices) if known is not None else 0
        state = crown_sweep(net, domains, known, reuse_known=reuse)
        start = lam @ C  # (B, 1, n_out)
        const = -(lam @ d.unsqueeze(-1)).squeeze(-1)  # (B, 1)
        # the combination rounds: at most gamma(k) of its terms, over the outputs' magnitudes
        m_out = state.nodes.mags[net.output].flatten(1).unsqueeze(2)  # (B, n_out, 1)
        terms = ((lam @ C.abs()) @ m_out).squeeze(2) + (lam @ d.abs().unsqueeze(-1)).squeeze(-1)
        A0, c = backward_linear(net, {net.output: start.reshape(start.shape[0], 1, *net.output_shape)}, const,
                                state.relax, given=nu)
        bound = down(concretize(A0, c, (domains.lower, domains.upper)) - gamma(C.shape[0] + 1, C.dtype) * terms)
    return torch.where(state.nodes.empty[:, None], torch.full_like(bound, torch.inf), bound)
