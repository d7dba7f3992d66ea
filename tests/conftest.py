"""Shared test fixtures: one torch thread per test, where the VNN-COMP benchmarks are, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.paths import benchmarks_root

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = benchmarks_root()


def benchmarks_dir() -> Path:
    """The VNN-COMP 2021 folder, or skip the test with the reason."""
    if not BENCHMARKS.is_dir():
        pytest.skip(f"VNN-COMP benchmarks not found at {BENCHMARKS} (set VERIFIER_BENCHMARKS)")
    return BENCHMARKS


@pytest.fixture
def bench() -> Path:
    return benchmarks_dir()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on shared cores: one intra-op thread is much faster (applies to every test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device (``slow`` ones always run unless deselected)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
