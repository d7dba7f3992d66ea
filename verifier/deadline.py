"""One wall-clock deadline passed down to every engine."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """An absolute point in ``time.monotonic()`` seconds (``inf`` for none)."""

    at: float = math.inf

    def __reduce__(self):
        # monotonic clocks of two processes (or machines) share no origin: a copy keeps the time left
        return Deadline.after, (None if math.isinf(self.at) else self.remaining(),)

    @staticmethod
    def after(seconds: float | None) -> Deadline:
        return Deadline(math.inf if seconds is None else time.monotonic() + max(0.0, seconds))

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def within(self, seconds: float) -> Deadline:
        """This deadline, or ``seconds`` from now if that comes first."""
        return Deadline(min(self.at, time.monotonic() + max(0.0, seconds)))

    def share(self, fraction: float) -> Deadline:
        """The point after ``fraction`` of the time left (this deadline itself for ``fraction >= 1``)."""
        if fraction >= 1:
            return self
        return self.within(fraction * self.remaining()) if fraction > 0 else Deadline(time.monotonic())
