"""One wall-clock deadline passed down to every engine."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """An absolute point in ``time.monotonic()`` seconds (``inf`` for none)."""

    at: float = math.inf

    @staticmethod
    def after(seconds: float | None) -> Deadline:
        return Deadline(math.inf if seconds is None else time.monotonic() + max(0.0, seconds))

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at
