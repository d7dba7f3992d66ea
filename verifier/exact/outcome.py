"""The answer of an exact engine on a whole spec or on one region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VERDICTS = ("unsat", "sat", "unknown", "timeout")


@dataclass(frozen=True, eq=False)
class ExactOutcome:
    """``verdict`` is one of ``VERDICTS``; a ``sat`` carries a candidate input ``x``.

    The candidate has passed our own forward pass; the caller still replays it
    through onnxruntime before reporting ``sat``.
    """

    verdict: str
    x: np.ndarray | None = None  # (n_in,) flat, float32-representable, inside the box
    time: float = 0.0
    problems: int = 0  # solver problems run
    binaries: int = 0  # binaries (MILP) or disjunctions (SMT) in the largest problem
    message: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")
        if self.verdict == "sat" and self.x is None:
            raise ValueError("a sat outcome needs a candidate input")
