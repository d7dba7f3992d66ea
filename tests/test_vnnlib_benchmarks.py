"""Every VNN-COMP spec parses, with the input/output counts of its model (parsing only: quick)."""

from __future__ import annotations

import csv
import gzip
import math
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.experiments import parse_specs
from vnnlib import read_spec, write_spec
from vnnlib.reader import parse_spec

MODELS = Path(__file__).resolve().parents[1] / "models"


def _spec_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith((".vnnlib", ".vnnlib.gz")))


@cache
def _read(path: Path):
    """Each spec is parsed once per test session (the tests only look at the result)."""
    return read_spec(path)


@cache
def _model_io(path: Path) -> tuple[int, int]:
    """Number of input and output values of an ONNX model (batch dimension dropped)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}
    (inp,) = [v for v in graph.input if v.name not in inits]

    def size(value) -> int:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        return math.prod(d for d in dims if d > 0)

    return size(inp), size(graph.output[0])


@pytest.mark.benchmarks
def test_every_spec_parses(bench):
    files = _spec_files(bench)
    assert len(files) >= 70
    failures = []
    for path in files:
        try:
            spec = _read(path)
            assert spec.cases and all(case.polytopes for case in spec.cases)
        except Exception as err:  # collect them all, then fail once
            failures.append(f"{path}: {err}")
    assert not failures, "\n".join(failures)


@pytest.mark.benchmarks
def test_instances_match_their_models(bench):
    rows = []
    for listing in sorted(bench.glob("*/*_instances.csv")):
        with open(listing, newline="") as f:
            rows += [(listing.parent, r[0], r[1]) for r in csv.reader(f) if r]
    assert len(rows) >= 70
    for folder, onnx_name, spec_name in rows:
        n_in, n_out = _model_io(folder / onnx_name)
        spec = _read(folder / spec_name)
        assert (spec.n_inputs, spec.n_outputs) == (n_in, n_out), (onnx_name, spec_name)


@pytest.mark.benchmarks
@pytest.mark.parametrize(
    ("pattern", "n_in", "n_out", "polytopes"),
    [("acasxu/prop_6.vnnlib", 5, 5, [4, 4]), ("mnistfc/prop_0_0.03.vnnlib", 784, 10, [9])],
)
def test_known_shapes(bench, pattern, n_in, n_out, polytopes):
    spec = read_spec(bench / pattern)
    assert (spec.n_inputs, spec.n_outputs) == (n_in, n_out)
    assert [len(c.polytopes) for c in spec.cases] == polytopes


@pytest.mark.benchmarks
def test_oval21_specs_are_one_box_and_nine_polytopes(bench):
    for path in _spec_files(bench / "oval21"):
        spec = _read(path)
        assert (spec.n_inputs, spec.n_outputs, len(spec.cases)) == (3072, 10, 1)
        case = spec.cases[0]
        assert np.all(case.lower <= case.upper) and len(case.polytopes) == 9
        for poly in case.polytopes:  # each is Y_label - Y_other <= 0
            assert poly.A.shape == (1, 10) and sorted(poly.A[0]) == [-1.0] + [0.0] * 8 + [1.0]


@pytest.mark.benchmarks
def test_benchmark_specs_round_trip_through_the_writer(bench):
    for path in _spec_files(bench / "acasxu") + _spec_files(bench / "test"):
        spec = read_spec(path)
        back = parse_spec(write_spec(spec))
        assert len(back.cases) == len(spec.cases)
        for a, b in zip(spec.cases, back.cases):
            np.testing.assert_array_equal(a.lower, b.lower)
            assert [p.A.tolist() for p in a.polytopes] == [p.A.tolist() for p in b.polytopes]


def test_parse_specs_script_table_and_csv(tmp_path, capsys):
    bad = tmp_path / "specs" / "bad.vnnlib"
    bad.parent.mkdir()
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    good = tmp_path / "specs" / "sub" / "prop_6.vnnlib.gz"
    good.parent.mkdir()
    good.write_bytes(gzip.compress((MODELS / "acasxu" / "prop_6.vnnlib").read_bytes()))
    out_csv = tmp_path / "t.csv"
    assert parse_specs.main([str(tmp_path / "specs"), "--csv", str(out_csv), "--repeat", "2"]) == 1
    table = capsys.readouterr().out
    assert "sub/prop_6.vnnlib.gz" in table and "ERROR bad.vnnlib:2:1: unbalanced" in table
    assert "total" in table and "(2 files)" in table
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["cases"], r["polytopes"]) for r in rows] == [
        ("bad.vnnlib", "0", "0"),
        ("sub/prop_6.vnnlib.gz", "2", "8"),
    ]
    assert float(rows[1]["ms"]) > 0 and rows[0]["error"]
    assert parse_specs.main([str(tmp_path / "nowhere")]) == 2
