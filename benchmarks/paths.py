"""Where the VNN-COMP benchmark folders are: ``$VERIFIER_BENCHMARKS``, else ``../shared/benchmarks`` by the clone."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"
VNNCOMP2021 = SHARED_BENCHMARKS / "vnncomp2021"
VNNCOMP2022 = SHARED_BENCHMARKS / "vnncomp2022"


def benchmarks_root() -> Path:
    """The VNN-COMP 2021 folder: ``$VERIFIER_BENCHMARKS`` when set, else ``../shared/benchmarks/vnncomp2021``."""
    env = os.environ.get("VERIFIER_BENCHMARKS")
    return Path(env) if env else VNNCOMP2021
