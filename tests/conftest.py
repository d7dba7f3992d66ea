"""Shared test fixtures: where the VNN-COMP benchmarks are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(
    os.environ.get("VERIFIER_BENCHMARKS", str(REPO.parent / "shared" / "benchmarks" / "vnncomp2021"))
)


def benchmarks_dir() -> Path:
    """The VNN-COMP 2021 folder, or skip the test with the reason."""
    if not BENCHMARKS.is_dir():
        pytest.skip(f"VNN-COMP benchmarks not found at {BENCHMARKS} (set VERIFIER_BENCHMARKS)")
    return BENCHMARKS


@pytest.fixture
def bench() -> Path:
    return benchmarks_dir()
