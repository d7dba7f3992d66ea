"""Values that the bounding functions take and return: domains, bounds, slopes, betas.

Everything is batched along a leading dimension ``B`` (one entry per subdomain)
and can be selected or repeated along it, so that branch-and-bound can keep
the state of many subdomains in a few tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor
Index = Tensor  # a 1-D long index or a bool mask over the batch


def _sel(t: Tensor, idx: Index) -> Tensor:
    return t[idx]


def _rep(t: Tensor, times: int) -> Tensor:
    return t.repeat(times, *([1] * (t.dim() - 1)))


@dataclass(frozen=True, eq=False)
class Domains:
    """A batch of ``B`` subdomains: an input box and optional ReLU split states.

    ``splits[k]`` belongs to ReLU layer ``k`` (node ``net.relu_indices[k]``), flat:
    0 free, +1 forced active (pre-activation >= 0), -1 forced inactive (<= 0).
    """

    lower: Tensor  # (B, n_in)
    upper: Tensor  # (B, n_in)
    splits: tuple[Tensor, ...] | None = None  # per relu layer: (B, n_k) int8

    @property
    def batch(self) -> int:
        return self.lower.shape[0]

    def select(self, idx: Index) -> Domains:
        """The sub-batch at ``idx`` (long indices or a bool mask)."""
        splits = None if self.splits is None else tuple(_sel(s, idx) for s in self.splits)
        return Domains(_sel(self.lower, idx), _sel(self.upper, idx), splits)

    def repeat(self, times: int) -> Domains:
        """The batch tiled ``times`` times: entry ``i * B + b`` is entry ``b``."""
        splits = None if self.splits is None else tuple(_rep(s, times) for s in self.splits)
        return Domains(_rep(self.lower, times), _rep(self.upper, times), splits)


@dataclass(frozen=True, eq=False)
class IntermediateBounds:
    """Pre-activation bounds of each ReLU layer, flat, already intersected with the splits."""

    lower: tuple[Tensor, ...]  # per relu layer: (B, n_k)
    upper: tuple[Tensor, ...]  # per relu layer: (B, n_k)

    def select(self, idx: Index) -> IntermediateBounds:
        return IntermediateBounds(
            tuple(_sel(t, idx) for t in self.lower), tuple(_sel(t, idx) for t in self.upper)
        )

    def repeat(self, times: int) -> IntermediateBounds:
        return IntermediateBounds(
            tuple(_rep(t, times) for t in self.lower), tuple(_rep(t, times) for t in self.upper)
        )

    def unstable(self) -> tuple[Tensor, ...]:
        """Per layer, the neurons whose pre-activation can take both signs: (B, n_k) bool."""
        return tuple((lo < 0) & (hi > 0) for lo, hi in zip(self.lower, self.upper, strict=True))

    def unstable_count(self, batch: int) -> Tensor:
        """Per domain of a batch of ``batch``, the number of unstable neurons over all layers: (B,) long."""
        count = torch.zeros(batch, dtype=torch.long, device=self.lower[0].device if self.lower else "cpu")
        for u in self.unstable():
            count = count + u.sum(dim=1)
        return count


@dataclass(frozen=True, eq=False)
class Slopes:
    """Lower-relaxation slopes (alpha) of every ReLU layer, for warm starts.

    ``final[j]`` holds one slope per spec row and neuron of ReLU layer ``j``.
    ``intermediate[i][j]`` holds the slopes used when bounding the ``i``-th bounded
    node (the inputs of the nonlinear nodes, in topological order) for every ReLU
    layer ``j`` before it; axis 1 picks the lower (0) or upper (1) bound, axis 2
    the neuron of the bounded node (size 1 when the slopes are shared by all rows).
    """

    final: tuple[Tensor, ...]  # per relu layer j: (B, S, n_j)
    intermediate: tuple[tuple[Tensor, ...], ...]  # per bounded node i, relu j: (B, 2, n_i or 1, n_j)

    def select(self, idx: Index) -> Slopes:
        return Slopes(
            tuple(_sel(t, idx) for t in self.final),
            tuple(tuple(_sel(t, idx) for t in row) for row in self.intermediate),
        )

    def repeat(self, times: int) -> Slopes:
        return Slopes(
            tuple(_rep(t, times) for t in self.final),
            tuple(tuple(_rep(t, times) for t in row) for row in self.intermediate),
        )


@dataclass(frozen=True, eq=False)
class Betas:
    """Multipliers (beta >= 0) of the split constraints, one per spec row and neuron."""

    values: tuple[Tensor, ...]  # per relu layer k: (B, S, n_k)

    def select(self, idx: Index) -> Betas:
        return Betas(tuple(_sel(t, idx) for t in self.values))

    def repeat(self, times: int) -> Betas:
        return Betas(tuple(_rep(t, times) for t in self.values))


@dataclass(frozen=True, eq=False)
class BoundResult:
    """Bounds of ``C f(x) - d`` over each domain, and the state that produced them.

    ``lower`` is ``+inf`` (and ``upper`` ``-inf``) for a domain whose splits are
    proven infeasible.
    """

    lower: Tensor  # (B, S)
    upper: Tensor | None  # (B, S), when asked for
    intermediate: IntermediateBounds
    slopes: Slopes | None = None
    betas: Betas | None = None
    # linear lower bounds of the rows in the input, valid on each domain: (B, S, n_in) and (B, S)
    linear: tuple[Tensor, Tensor] | None = None
