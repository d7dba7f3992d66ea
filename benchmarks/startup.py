"""Start-up overhead: seconds from process start to the first line of output, fork vs spawn.

Measured on a trivial instance (``test_nano``) where verification itself is
negligible, so the figure is what every instance pays before any work.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks import child
from benchmarks.supervise import Limits, Task, supervise


@dataclass(frozen=True)
class StartupFigure:
    """Repeated measurements for one mode."""

    mode: str
    first_output: tuple[float, ...]  # seconds, one per repeat
    run_time: tuple[float, ...]
    results: tuple[str, ...]
    setup: float  # one-off cost in the parent (pre-import for fork), seconds

    @property
    def median_first_output(self) -> float:
        return statistics.median(self.first_output) if self.first_output else float("nan")

    @property
    def median_run_time(self) -> float:
        return statistics.median(self.run_time) if self.run_time else float("nan")


def measure(mode: str, onnx: Path, vnnlib: Path, repeat: int, timeout: float = 60.0, threads: int = 1,
            extra: tuple[str, ...] = ()) -> StartupFigure:
    """Run the CLI ``repeat`` times on one instance in ``mode``, one after the other."""
    setup = child.preimport() if mode == "fork" else 0.0
    launch = child.Launch(child.verify_args(onnx, vnnlib, timeout, extra), threads, None)
    tasks = [Task(i, launch, timeout) for i in range(repeat)]
    outcomes = [o for _, o in supervise(tasks, mode, 1, Limits())]
    return StartupFigure(
        mode,
        tuple(o.first_output for o in outcomes),
        tuple(o.run_time for o in outcomes),
        tuple(o.result for o in outcomes),
        setup,
    )


def format_figures(figures: list[StartupFigure]) -> str:
    """A small table: median / min / max time to first output and to exit, per mode."""
    head = f"{'mode':<6} {'n':>3} {'first output: median':>21} {'min':>7} {'max':>7} {'exit: median':>13} " \
           f"{'parent setup':>13}  results"
    lines = [head]
    for f in figures:
        lines.append(
            f"{f.mode:<6} {len(f.first_output):>3} {f.median_first_output:>20.3f}s {min(f.first_output):>6.3f}s "
            f"{max(f.first_output):>6.3f}s {f.median_run_time:>12.3f}s {f.setup:>12.2f}s  "
            f"{','.join(sorted(set(f.results)))}"
        )
    return "\n".join(lines)
