"""Options of the attack and of the slope optimization, apart from their engines (which import torch), so
that reading a config imports no engine.  The other parts live beside their packages without torch
(``verifier.bab.options``, ``verifier.exact.options``); ``verifier.config`` composes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class AttackOptions:
    """Budget of the attack; all counts are per input box."""

    enabled: bool = True
    samples: int = 1024  # uniform random samples before PGD
    restarts: int = 32  # PGD starting points
    steps: int = 50  # PGD steps per round
    rounds: int = 1  # rounds of fresh restarts (branch and bound attacks again later)
    # first step of each restart's schedule, as a fraction of the box width, taken in turn by the restarts
    # (1.0: a jump to the corner the gradient's signs point at, which finds counterexamples that small
    # first steps miss; benchmarks/results/README.md)
    step_starts: tuple[float, ...] = (0.1, 1.0)
    step_end: float = 0.002  # last step, as a fraction of the box width
    candidates: int = 8  # best candidates handed to validation per round
    time_limit: float = 20.0  # seconds for the attack before bounding starts
    max_batch: int = 8192  # points evaluated at once

    def __post_init__(self) -> None:
        if not self.step_starts or min(self.step_starts) <= 0 or self.step_end <= 0:
            raise ValueError("AttackOptions: step_starts must be one or more positive fractions, step_end > 0")


@dataclass(frozen=True)
class AlphaOptions:
    """Options of the slope (and split multiplier) optimization."""

    iterations: int = 20
    lr: float = 0.1  # Adam step for the slopes
    lr_beta: float = 0.05  # Adam step for beta-CROWN's multipliers
    lr_decay: float = 0.98  # per iteration
    early_stop: bool = True  # stop once every row of every domain is > 0
    # with float64 networks and no intermediate slopes to optimize (branch and bound), iterate on float32
    # estimates (no rounding slack: they only steer the optimization) and bound with the best slopes and
    # multipliers once, rigorously, at the end
    float32_iterations: bool = True
    # with intermediate slopes, on float64 networks of at least float32_warmup_relus ReLU neurons (where an
    # iteration in float64 costs seconds): the first float32_warmup iterations on float32 estimates, the
    # rest rigorously in float64 from their best slopes (which keeps the intersection of every neuron's
    # bounds across those iterations)
    float32_warmup: int = 15
    float32_warmup_relus: int = 8192
    optimize_intermediate: bool = True  # also optimize the slopes of the intermediate bounds
    intermediate_slopes: Literal["auto", "per_row", "shared"] = "auto"
    per_row_budget: int = 2**24  # "auto": per-row slopes while B * elements stays below this

    def __post_init__(self) -> None:
        if self.float32_warmup < 0 or self.float32_warmup_relus < 0:
            raise ValueError("AlphaOptions: float32_warmup and float32_warmup_relus must be at least 0")
        if self.iterations < 0 or self.lr <= 0 or self.lr_beta <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError("AlphaOptions: iterations >= 0, lr > 0, lr_beta > 0, 0 < lr_decay <= 1")
        if self.intermediate_slopes not in ("auto", "per_row", "shared"):
            raise ValueError(f"AlphaOptions: unknown intermediate_slopes {self.intermediate_slopes!r}")
