"""Every VNN-COMP 2021 and 2022 model imports, (2021) has the expected folded IR, and matches onnxruntime
(of tllverifybench, one model per size).

Each model is compared on 100 points drawn uniformly from the first input box of one of its
specs (from the set's instances CSV), within ``1e-5 * (1 + |y|)``.  The 2022 sets are gzipped as
distributed (their instances CSVs name the unzipped paths).  The models shipped in the
repository (``models/``) are checked the same way, so this runs without the benchmarks folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import BENCHMARKS, REPO, benchmarks_dir
from tests.onnx_builders import onnxruntime_runner
from verifier.forward import forward
from verifier.onnx_import import load_onnx

N_SAMPLES = 100
SETS = ("acasxu", "mnistfc", "oval21", "test")
SETS_2022 = ("cifar_biasfield", "nn4sys", "reach_prob_density", "rl_benchmarks", "sri_resnet_a", "tllverifybench")
BENCHMARKS_2022 = BENCHMARKS.parent / "vnncomp2022"
HIDDEN = {"cifar_base_kw": 2, "cifar_wide_kw": 2, "cifar_deep_kw": 4}  # oval21 conv layers


def _instances(csv_paths: list[tuple[str, Path]]) -> list[tuple[str, Path, Path]]:
    """(set, model, first spec of that model) for every model named in the instances CSVs."""
    out, seen = [], set()
    for name, csv_path in csv_paths:
        with open(csv_path, newline="") as f:
            for row in csv.reader(f):
                model = csv_path.parent / row[0].strip() if len(row) >= 2 else None
                if model is not None and model not in seen:
                    seen.add(model)
                    out.append((name, model, csv_path.parent / row[1].strip()))
    return out


def _benchmark_csvs() -> list[tuple[str, Path]]:
    if not BENCHMARKS.is_dir():
        return []
    return [(name, p) for name in SETS for p in sorted((BENCHMARKS / name).glob("*_instances.csv"))]


def _first_box(spec_path: Path, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from vnnlib.reader import read_spec
    except ImportError:  # the reader is written by another engineer; a regex suffices for boxes
        return _box_by_regex(spec_path.read_text(), n_inputs)
    case = read_spec(spec_path, n_inputs=n_inputs).cases[0]
    return case.lower, case.upper


def _box_by_regex(text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``(<= X_i c)`` and ``(>= X_i c)`` of every input: the first case's box."""
    lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    for op, i, c in re.findall(r"\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\)", text):
        target = hi if op == "<=" else lo
        if np.isnan(target[int(i)]):
            target[int(i)] = float(c)
    return lo, hi


def _packed(path: Path) -> Path:
    """``path``, or its gzipped file where only that exists."""
    return path if path.is_file() else path.with_name(path.name + ".gz")


def _instances_2022() -> list[tuple[str, Path, Path]]:
    """Every 2022 model, except that of tllverifybench's four models of each size (the same architecture,
    other weights; the largest take about 12 s each) only the first is checked here."""
    csvs = [(name, BENCHMARKS_2022 / name / "instances.csv") for name in SETS_2022]
    found = [(name, p) for name, p in csvs if p.is_file()]
    return [(f"2022/{s}", _packed(m), _packed(v)) for s, m, v in _instances(found)
            if s != "tllverifybench" or m.stem.endswith("_0")]


def _ids(items):
    return [f"{s}/{m.stem}" for s, m, _ in items]


INSTANCES = _instances(_benchmark_csvs())
INSTANCES_2022 = _instances_2022()
SHIPPED = _instances([("test", REPO / "models" / "test_instances.csv")]) + [
    ("acasxu", p, p.parent / "prop_1.vnnlib") for p in sorted((REPO / "models" / "acasxu").glob("*.onnx"))
]
_NO_BENCHMARKS = [pytest.param(
    "", Path(), Path(), marks=pytest.mark.skip(reason=f"VNN-COMP benchmarks not found at {BENCHMARKS}"),
)]


@pytest.mark.benchmarks
def test_benchmarks_are_found():
    benchmarks_dir()
    assert {s for s, _, _ in INSTANCES} == set(SETS)
    assert sum(s == "acasxu" for s, _, _ in INSTANCES) == 45


@pytest.mark.benchmarks
@pytest.mark.parametrize("bench_set,model,spec", INSTANCES or _NO_BENCHMARKS, ids=_ids(INSTANCES) or None)
def test_model_matches_onnxruntime_in_its_box(bench_set, model, spec):
    _check_model(bench_set, model, spec)


@pytest.mark.benchmarks
def test_every_2022_model_is_found():
    if not BENCHMARKS_2022.is_dir():
        pytest.skip(f"VNN-COMP 2022 benchmarks not found at {BENCHMARKS_2022}")
    assert {s for s, _, _ in INSTANCES_2022} == {f"2022/{s}" for s in SETS_2022}
    models = list(BENCHMARKS_2022.glob("*/onnx/*.onnx*"))
    assert len(INSTANCES_2022) == len(models) - 3 * len([m for m in models if "tllBench" in m.name]) // 4


@pytest.mark.benchmarks
@pytest.mark.parametrize("bench_set,model,spec", INSTANCES_2022 or _NO_BENCHMARKS,
                         ids=_ids(INSTANCES_2022) or None)
def test_2022_model_matches_onnxruntime_in_its_box(bench_set, model, spec):
    _check_model(bench_set, model, spec)


@pytest.mark.parametrize("bench_set,model,spec", SHIPPED, ids=_ids(SHIPPED))
def test_shipped_model_matches_onnxruntime_in_its_box(bench_set, model, spec):
    _check_model(bench_set, model, spec)


def test_shipped_models_are_found():
    assert len(SHIPPED) >= 8


def _check_model(bench_set: str, model: Path, spec: Path) -> None:
    net = load_onnx(model)
    lo, hi = _first_box(spec, net.n_inputs)
    rng = np.random.default_rng(0)
    x = (lo + (hi - lo) * rng.random((N_SAMPLES, net.n_inputs))).astype(np.float32)  # (S, n_in)
    dims = [d if d > 0 else 1 for d in _input_dims(model)]
    run = onnxruntime_runner(_proto(model) if model.suffix == ".gz" else model)
    expected = np.stack([run(xi.reshape(dims)).reshape(-1) for xi in x])
    got = forward(net, torch.from_numpy(x)).reshape(N_SAMPLES, -1).numpy()
    rel = np.abs(got - expected) / (1 + np.abs(expected))
    assert rel.max() <= 1e-5, f"worst relative error {rel.max():.3g}"
    _check_structure(bench_set, model.stem, [type(n.op).__name__ for n in net.nodes])


def _proto(model: Path):
    import onnx

    from verifier.files import read_model_bytes

    return onnx.load_from_string(read_model_bytes(model))


def _input_dims(model: Path) -> list[int]:
    import onnx

    proto = _proto(model) if model.suffix == ".gz" else onnx.load(str(model), load_external_data=False)
    graph = proto.graph
    consts = {t.name for t in graph.initializer}
    vi = next(i for i in graph.input if i.name not in consts)
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _check_structure(bench_set: str, stem: str, kinds: list[str]) -> None:
    if bench_set.startswith("2022/"):  # imported as they come: only that something is bounded
        assert "Relu" in kinds
    elif bench_set == "acasxu" or stem in ("test_sat", "test_unsat"):
        assert kinds == ["Input", "Reshape"] + ["Dense", "Relu"] * 6 + ["Dense"]
    elif bench_set == "mnistfc":
        k = int(stem.split("x")[-1])
        assert kinds == ["Input", "Reshape"] + ["Dense", "Relu"] * k + ["Dense"]
    elif bench_set == "oval21":
        assert kinds == ["Input"] + ["Conv", "Relu"] * HIDDEN[stem] + ["Reshape", "Dense", "Relu", "Dense"]
    else:
        assert set(kinds) <= {"Input", "Dense", "Relu"}
