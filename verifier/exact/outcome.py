"""The answer of an exact engine on a whole spec or on one region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier.result import Status

# why an exact engine answers unknown where it found no counterexample on a network with computed constants
INEXACT = "the network has inexact constants (verifier.constants): no exact proof"


@dataclass(frozen=True, eq=False)
class ExactOutcome:
    """``verdict`` is a ``Status`` (never ``ERROR``); a ``SAT`` carries a candidate input ``x``.

    The candidate has passed our own forward pass (or the caller's ``accept``); the caller still
    replays it through onnxruntime before reporting ``sat``.  An ``UNSAT`` is only as strong as the
    engine that gave it: z3's and the certified LP's are proofs, HiGHS's MIP status is a hint.
    """

    verdict: Status
    x: np.ndarray | None = None  # (n_in,) flat, float32-representable, inside the box
    time: float = 0.0
    problems: int = 0  # solver problems run
    binaries: int = 0  # binaries (MILP) or disjunctions (SMT) in the largest problem
    message: str = ""
    # the certified LP's UNSAT: per polytope, the multipliers that proved it: the rows' weights ``(k,)``
    # and each ReLU layer's pre-activation coefficients, side by side ``(H,)`` (``bounds.lagrangian_bound``)
    duals: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.verdict, Status) or self.verdict is Status.ERROR:
            raise ValueError(f"an exact verdict is a Status other than ERROR, not {self.verdict!r}")
        if self.verdict is Status.SAT and self.x is None:
            raise ValueError("a sat outcome needs a candidate input")
