"""Cactus plots: instances solved against time, one line per results CSV.

An instance is solved by a run when it answered ``sat``/``unsat`` within its
recorded time limit and the ground truth (when given) does not refute it.
matplotlib is optional (``pip install .[plots]``) and imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.results import ResultRow
from benchmarks.truth import Truth, contradicts


class PlotError(RuntimeError):
    """Plotting is impossible here (matplotlib missing) or was asked for nothing."""


def solved_times(rows: list[ResultRow], truth: Truth | None = None) -> np.ndarray:
    """Sorted run times of the solved instances among ``rows``."""
    times = [
        r.run_time
        for r in rows
        if r.result in ("sat", "unsat")
        and not (truth and contradicts(r.result, truth.get(*r.key)))
        and not (r.timeout > 0 and r.run_time > r.timeout)
    ]
    return np.sort(np.asarray(times, dtype=np.float64))  # (n_solved,)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'relu-verifier[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cactus(series: dict[str, np.ndarray], out: Path, title: str = "", total: int | None = None,
           time_limit: float | None = None) -> Path:
    """Write a cactus plot (x: time, log scale; y: instances solved) of sorted solve times per label.

    The time axis spans at least a decade, and reaches ``time_limit`` when given.
    """
    if not series:
        raise PlotError("nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    longest = max((float(t[-1]) for t in series.values() if t.size), default=1.0)
    shortest = min((float(t[0]) for t in series.values() if t.size), default=0.1)
    floor = max(1e-3, min(shortest * 0.8, 0.1))
    right = max(longest * 1.25, (time_limit or 0.0) * 1.15, floor * 10)
    for label, times in series.items():
        t = np.maximum(times, floor)  # (n,) a log axis has no room for 0
        xs = np.concatenate([[floor], t, [right]])
        ys = np.concatenate([[0], np.arange(1, t.size + 1), [t.size]])
        ax.step(xs, ys, where="post", linewidth=1.8, label=f"{label} ({t.size} solved)")
    if time_limit:
        ax.axvline(time_limit, color="grey", linestyle="--", linewidth=1, label=f"time limit {time_limit:g}s")
    ax.set_xscale("log")
    ax.set_xlim(floor, right)
    top = max([t.size for t in series.values()] + [total or 0])
    ax.set_ylim(0, max(1, top) * 1.05)
    if total:
        ax.axhline(total, color="grey", linestyle=":", linewidth=1, label=f"{total} instances")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("time per instance (s, log scale)")
    ax.set_ylabel("instances solved")
    ax.set_title(title or "Instances solved within a time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
