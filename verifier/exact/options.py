"""Options of the exact engines, apart from the engines so that reading a config imports no solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MilpOptions:
    """Options of the MILP engine."""

    problem_time_limit: float | None = None  # seconds per MILP problem; the deadline always applies
    lp_tighten: bool = True  # LP-tighten the unstable ReLUs' bounds before the MILP (per case)
    tighten_share: float = 0.5  # at most this share of the remaining time goes to LP tightening
    crown_bounds: bool = True  # intersect with CROWN bounds from verifier.bounds when it provides them
    # "feasibility" (A y <= b as constraints) or "margin" (min max_j A_j y - b_j)
    objective: Literal["feasibility", "margin"] = "feasibility"
    threads: int = 1
    margin_abs: float = 1e-6  # given bounds are widened by margin_abs + margin_rel * |bound|
    margin_rel: float = 1e-6

    def __post_init__(self) -> None:
        if self.objective not in ("feasibility", "margin"):
            raise ValueError(f"objective must be 'feasibility' or 'margin', not {self.objective!r}")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if not 0.0 < self.tighten_share <= 1.0:
            raise ValueError("tighten_share must be in (0, 1]")


@dataclass(frozen=True)
class SmtOptions:
    """Options of the SMT engine."""

    bounds: Literal["none", "interval", "crown"] = "crown"  # rigorous bounds; "none": the pure exact encoding
    split_unstable: int = 8  # bisect the input box while more ReLUs than this are unstable (0: never)
    split_max_inputs: int = 10  # only split boxes of at most this many inputs
    split_max_depth: int = 24
    lp_probe: bool = True  # try the LP relaxation's optimum (HiGHS) as a counterexample on each box
    problem_time_limit: float | None = None  # seconds per z3 check; the deadline always applies
    # run checks longer than half a second in a killable child process (a fresh interpreter with z3 only,
    # fed the SMT-LIB text; never a fork of this process), so that the time limit holds
    fork: bool = True

    def __post_init__(self) -> None:
        if self.bounds not in ("none", "interval", "crown"):
            raise ValueError(f"bounds must be none, interval or crown, not {self.bounds!r}")
