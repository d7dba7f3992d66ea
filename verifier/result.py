"""The one verdict type: ``Status`` and ``Result``."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Status(enum.Enum):
    SAT = "sat"  # a counterexample exists (and was replayed through onnxruntime)
    UNSAT = "unsat"  # the property is proven
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


def combine(statuses: Iterable[Status]) -> Status:
    """The verdict of a disjunction of parts (cases, polytopes, regions) from the verdicts of its parts.

    Any ``SAT`` part makes the whole ``SAT``; all parts ``UNSAT`` (or none) make it ``UNSAT``; otherwise
    the whole is undecided: ``TIMEOUT`` if some part ran out of time, else ``UNKNOWN`` (an ``ERROR``
    part counts as undecided).  The one place verdicts are combined.
    """
    seen = set(statuses)
    if Status.SAT in seen:
        return Status.SAT
    if seen <= {Status.UNSAT}:
        return Status.UNSAT
    return Status.TIMEOUT if Status.TIMEOUT in seen else Status.UNKNOWN


@dataclass(frozen=True, eq=False)
class Counterexample:
    """An input inside the spec box and the onnxruntime outputs on it (both flat)."""

    x: np.ndarray  # (n_in,) float64, inside the box: the values written (the model runs on them cast to its dtype)
    y: np.ndarray  # (n_out,) as onnxruntime computed it


@dataclass(frozen=True, eq=False)
class Result:
    """The outcome of one verification; ``SAT`` always carries a validated counterexample."""

    status: Status
    counterexample: Counterexample | None = None
    time: float = 0.0
    stats: dict[str, float | int | str] = field(default_factory=dict)
    message: str = ""
    # the certificate of an UNSAT answer when one was asked for (``verifier.certificate.Proof``)
    proof: Any = None
    # the spec as read (``vnnlib.Spec``): a counterexample is written in its version's format
    spec: Any = None

    def __post_init__(self) -> None:
        if self.status is Status.SAT and self.counterexample is None:
            raise ValueError("a SAT result needs a validated counterexample")
