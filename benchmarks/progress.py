"""Progress on stderr: a live bar with ETA and tally on a terminal, one line per instance otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from typing import TextIO

TALLY = ("sat", "unsat", "timeout", "unknown", "error", "wrong")


def fmt_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts finished instances and shows them; ``quiet`` shows nothing."""

    def __init__(self, total: int, stream: TextIO | None = None, quiet: bool = False, live: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = (not quiet) and (self.stream.isatty() if live is None else live)
        self.tally: Counter[str] = Counter()
        self.done = 0
        self.started = time.monotonic()
        self.last = ""

    def eta(self) -> float | None:
        """Seconds left at the pace so far (wall time per finished instance, parallelism included)."""
        if self.done == 0:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)

    def tally_text(self) -> str:
        return " ".join(f"{name} {self.tally[name]}" for name in TALLY)

    def add(self, name: str, result: str, seconds: float, wrong: bool = False, note: str = "") -> None:
        """Record one finished instance and show it."""
        self.done += 1
        self.tally[result] += 1
        self.tally["wrong"] += int(wrong)
        self.last = f"{name}: {result}"
        if self.quiet:
            return
        if self.live:
            self.draw()
            if wrong:
                self._line(f"WRONG ANSWER: {name}: {result} {note}".rstrip())
            return
        flag = "  <-- WRONG" if wrong else ""
        extra = f" ({note})" if note else ""
        self.stream.write(f"[{self.done}/{self.total}] {name}: {result} {seconds:.2f}s{extra}{flag}\n")
        self.stream.flush()

    def draw(self) -> None:
        """Redraw the live bar (no-op unless on a terminal)."""
        if not self.live:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        eta = self.eta()
        spent = fmt_seconds(time.monotonic() - self.started)
        head = f"{self.done}/{self.total} {spent} ETA {'?' if eta is None else fmt_seconds(eta)} | {self.tally_text()}"
        bar_width = max(10, min(40, width - len(head) - 4))
        filled = int(bar_width * self.done / max(1, self.total))
        line = f"[{'#' * filled}{'.' * (bar_width - filled)}] {head}"
        tail = f" | {self.last}" if self.last else ""
        self.stream.write("\r\x1b[K" + (line + tail)[: width - 1])
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write("\r\x1b[K" + text + "\n")
        self.draw()

    def close(self) -> None:
        """End the live line and print the final tally."""
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\x1b[K")
        elapsed = fmt_seconds(time.monotonic() - self.started)
        self.stream.write(f"{self.done}/{self.total} done in {elapsed} | {self.tally_text()}\n")
        self.stream.flush()
