"""Open subdomains of one spec case, as tensors with a leading batch dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from verifier.bounds import Betas, Domains, IntermediateBounds, Slopes
from verifier.memory import physical_memory

_ROWS_SHARE = 1 / 16  # of BabOptions.max_memory for the backward rows of one bounding call

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class SubproblemBatch:
    """``B`` subdomains: box, split states, best bounds so far and warm-start state."""

    lower: Tensor  # (B, n_in)
    upper: Tensor  # (B, n_in)
    splits: tuple[Tensor, ...] | None  # per relu layer: (B, n_k) int8
    bound: Tensor  # (B, S) best lower bound of each spec row (max over ancestors)
    depth: Tensor  # (B,) int32
    intermediate: IntermediateBounds | None = None
    slopes: Slopes | None = None
    betas: Betas | None = None
    # (B,) long: the ReLU layer whose split made each domain (its bounds up to that layer are its
    # parent's); None where no split made them (roots, input splitting)
    split_layer: Tensor | None = None
    # (B,) long: the node of the proof tree each subdomain is (``verifier.certificate.record``); a child
    # carries its parent's until the recorder names it; None when no proof is recorded
    ident: Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.lower.shape[0])

    @property
    def domains(self) -> Domains:
        return Domains(self.lower, self.upper, self.splits)

    def select(self, idx: Tensor) -> SubproblemBatch:
        return SubproblemBatch(
            lower=self.lower[idx], upper=self.upper[idx],
            splits=None if self.splits is None else tuple(s[idx] for s in self.splits),
            bound=self.bound[idx], depth=self.depth[idx],
            intermediate=None if self.intermediate is None else self.intermediate.select(idx),
            slopes=None if self.slopes is None else self.slopes.select(idx),
            betas=None if self.betas is None else self.betas.select(idx),
            split_layer=None if self.split_layer is None else self.split_layer[idx],
            ident=None if self.ident is None else self.ident[idx],
        )

    def to(self, device: torch.device | str) -> SubproblemBatch:
        def mv(t):
            return None if t is None else t.to(device)

        return SubproblemBatch(
            lower=mv(self.lower), upper=mv(self.upper),
            splits=None if self.splits is None else tuple(mv(s) for s in self.splits),
            bound=mv(self.bound), depth=mv(self.depth),
            intermediate=None if self.intermediate is None else IntermediateBounds(
                tuple(mv(t) for t in self.intermediate.lower), tuple(mv(t) for t in self.intermediate.upper)),
            slopes=None if self.slopes is None else Slopes(
                tuple(mv(t) for t in self.slopes.final),
                tuple(tuple(mv(t) for t in row) for row in self.slopes.intermediate)),
            betas=None if self.betas is None else Betas(tuple(mv(t) for t in self.betas.values)),
            split_layer=mv(self.split_layer), ident=mv(self.ident),
        )

    def nbytes(self) -> int:
        """Bytes held by the batch's tensors."""
        parts = [self.lower, self.upper, self.bound, self.depth, *(self.splits or ())]
        parts += [t for t in (self.split_layer, self.ident) if t is not None]
        if self.intermediate is not None:
            parts += [*self.intermediate.lower, *self.intermediate.upper]
        if self.slopes is not None:
            parts += [*self.slopes.final, *(t for row in self.slopes.intermediate for t in row)]
        if self.betas is not None:
            parts += list(self.betas.values)
        return sum(t.numel() * t.element_size() for t in parts)

    def with_bounds(self, bound: Tensor, **state) -> SubproblemBatch:
        return replace(self, bound=bound, **state)


def concat(batches: list[SubproblemBatch]) -> SubproblemBatch:
    """One batch holding all of ``batches`` (which share their optional fields; ``split_layer`` and
    ``ident`` are kept only when every batch has them)."""
    first = batches[0]
    layered = all(b.split_layer is not None for b in batches)
    named = all(b.ident is not None for b in batches)

    def cat(get):
        return torch.cat([get(b) for b in batches])

    def cat_tuple(get):
        return tuple(torch.cat(ts) for ts in zip(*(get(b) for b in batches)))

    return SubproblemBatch(
        lower=cat(lambda b: b.lower), upper=cat(lambda b: b.upper),
        splits=None if first.splits is None else cat_tuple(lambda b: b.splits),
        bound=cat(lambda b: b.bound), depth=cat(lambda b: b.depth),
        intermediate=None if first.intermediate is None else IntermediateBounds(
            cat_tuple(lambda b: b.intermediate.lower), cat_tuple(lambda b: b.intermediate.upper)),
        slopes=None if first.slopes is None else Slopes(
            cat_tuple(lambda b: b.slopes.final),
            tuple(tuple(torch.cat(ts) for ts in zip(*rows))
                  for rows in zip(*(b.slopes.intermediate for b in batches)))),
        betas=None if first.betas is None else Betas(cat_tuple(lambda b: b.betas.values)),
        split_layer=cat(lambda b: b.split_layer) if layered else None,
        ident=cat(lambda b: b.ident) if named else None,
    )


def in_chunks(bound: Callable[[SubproblemBatch], SubproblemBatch], batch: SubproblemBatch, size: int,
              key: Tensor | None = None) -> SubproblemBatch:
    """``bound`` applied to chunks of at most ``size`` of ``batch`` (in increasing ``key`` ``(B,)`` when
    given, so that a chunk holds similar subdomains); the result is in the batch's order."""
    if batch.batch <= size:
        return bound(batch)
    order = torch.arange(batch.batch, device=batch.lower.device) if key is None else torch.argsort(key, stable=True)
    parts = concat([bound(batch.select(order[s : s + size])) for s in range(0, batch.batch, size)])
    return parts if key is None else parts.select(torch.argsort(order))


class Store:
    """The open subdomains, kept on the CPU; popped lowest priority first (or deepest first)."""

    def __init__(self) -> None:
        self._parts: list[SubproblemBatch] = []
        self._prio: list[Tensor] = []
        self.size = 0
        self.max_size = 0
        self.nbytes = 0  # held by the stored tensors

    def push(self, batch: SubproblemBatch, priority: Tensor) -> None:
        """Add ``batch`` with ``priority`` ``(B,)`` (lower pops first)."""
        if batch.batch == 0:
            return
        self._parts.append(batch.to("cpu"))
        self._prio.append(priority.detach().to("cpu"))
        self.size += batch.batch
        self.nbytes += self._parts[-1].nbytes()
        self.max_size = max(self.max_size, self.size)

    def pop(self, n: int, deepest: bool = False) -> SubproblemBatch:
        """The ``n`` subdomains of lowest priority (all if fewer); ``deepest``: the deepest ones
        first, lowest priority among equals (depth-first, which keeps the store from growing)."""
        merged, prio = self._merged()
        if n >= merged.batch:
            self._parts, self._prio, self.size, self.nbytes = [], [], 0, 0
            return merged
        order = torch.argsort(prio)
        if deepest:
            order = order[torch.argsort(-merged.depth[order], stable=True)]
        take, rest = order[:n], order[n:]
        kept = merged.select(rest)
        self._parts, self._prio = [kept], [prio[rest]]
        self.size, self.nbytes = int(rest.shape[0]), kept.nbytes()
        return merged.select(take)

    def min_priority(self) -> float:
        return min(float(p.min()) for p in self._prio) if self._prio else float("inf")

    def _merged(self) -> tuple[SubproblemBatch, Tensor]:
        if len(self._parts) > 1:
            self._parts, self._prio = [concat(self._parts)], [torch.cat(self._prio)]
        return self._parts[0], self._prio[0]


def chunk_size(batch: SubproblemBatch, reuse: int, largest: int, budget: float, max_width: int | None = None
               ) -> int:
    """How many of ``batch`` to bound at once so that the backward rows stay within ``budget`` bytes.

    Recomputing the pre-activation bounds of ReLU layer ``k >= reuse`` (of at most ``max_width`` neurons,
    where given: the others take forward bounds) passes one row per unstable neuron back through nodes of
    up to ``largest`` values: after a split in an early layer of a convolutional network that is
    thousands of rows of thousands of values per subdomain.
    """
    inter = batch.intermediate
    if inter is None or batch.batch == 0:
        return max(1, batch.batch)
    rows = sum(int(u.sum(1).max()) for u in inter.unstable()[reuse:] if max_width is None or u.shape[1] <= max_width)
    per_domain = (rows + 1) * largest * batch.lower.element_size()
    return max(1, min(batch.batch, int(budget // per_domain)))


def row_budget(max_memory: float) -> float:
    """Bytes the backward rows of one bounding call may take: a share of ``BabOptions.max_memory`` (the
    optimization keeps several such tensors and their gradients alive at once)."""
    return _ROWS_SHARE * max_memory * physical_memory()
