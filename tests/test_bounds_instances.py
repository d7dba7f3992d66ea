"""Real instances: the bounds contain onnxruntime's outputs on sampled inputs, and never
rule out every polytope of a case whose ground truth is ``sat``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import REPO, benchmarks_dir
from tests.nets import sample_box
from verifier.bounds import AlphaOptions, Domains, alpha_crown, crown
from verifier.objective import case_objective
from verifier.onnx_import import load_onnx
from vnnlib.reader import read_spec

MODELS = REPO / "models"
SHIPPED = [
    ("test", "test_nano.onnx", "test_nano.vnnlib"),
    ("test", "test_tiny.onnx", "test_tiny.vnnlib"),
    ("test", "test_small.onnx", "test_small.vnnlib"),
    ("test", "test_sat.onnx", "test_prop.vnnlib"),
    ("test", "test_unsat.onnx", "test_prop.vnnlib"),
] + [
    ("acasxu", f"acasxu/ACASXU_run2a_{n}_batch_2000.onnx", f"acasxu/prop_{p}.vnnlib")
    for n, p in [("1_1", 1), ("1_9", 1), ("3_3", 1), ("1_9", 3), ("1_9", 4), ("1_1", 2), ("3_3", 4), ("1_1", 6)]
]


def ground_truth() -> dict[tuple[str, str, str], str]:
    rows = csv.DictReader(open(benchmarks_dir() / "ground_truth.csv"))
    return {(r["benchmark"], r["onnx"], r["vnnlib"]): r["result"] for r in rows}


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's flat outputs ``(N, n_out)`` on the flat inputs ``x`` ``(N, n_in)``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = np.float64 if "double" in inp.type else np.float32
    outs = [sess.run(None, {inp.name: xi.reshape(dims).astype(dtype)})[0].reshape(-1) for xi in x]
    return np.stack(outs)


@pytest.mark.benchmarks
@pytest.mark.parametrize("bench_name,onnx,vnnlib", SHIPPED, ids=[f"{o}:{v}" for _, o, v in SHIPPED])
def test_bounds_agree_with_onnxruntime_and_ground_truth(bench_name: str, onnx: str, vnnlib: str) -> None:
    truth = ground_truth()[(bench_name, Path(onnx).name, Path(vnnlib).name)]
    net = load_onnx(MODELS / onnx)
    spec = read_spec(MODELS / vnnlib, net.n_inputs, net.n_outputs)
    gen = torch.Generator().manual_seed(0)
    for case in spec.cases:
        obj = case_objective(case, net.dtype)
        dom = Domains(obj.lower[None], obj.upper[None])
        C, d = obj.C[None], obj.d[None]
        results = [crown(net, dom, C, d), alpha_crown(net, dom, C, d, AlphaOptions(iterations=10))]
        xs = sample_box(gen, obj.lower[None].double(), obj.upper[None].double(), 200)[0]  # (N, n_in)
        y = _run_onnx(MODELS / onnx, xs.numpy())
        rows = torch.as_tensor(y, dtype=torch.float64) @ obj.C.double().T - obj.d.double()  # (N, S)
        for res in results:
            lower = res.lower[0].double()
            assert (rows >= lower - 1e-4 * (1 + lower.abs())).all(), "a sampled output is below the lower bound"
            if truth == "sat":
                assert not bool(obj.ruled_out(res.lower)), "bounds rule out a case that has a counterexample"


VNNCOMP = [
    ("mnistfc", "mnist-net_256x2.onnx", "prop_7_0.03.vnnlib"),
    ("mnistfc", "mnist-net_256x4.onnx", "prop_2_0.03.vnnlib"),
    ("mnistfc", "mnist-net_256x6.onnx", "prop_1_0.05.vnnlib"),
    ("mnistfc", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib"),
    ("oval21", "cifar_base_kw.onnx", "cifar_base_kw-img1697-eps0.0014379084967320263.vnnlib"),
    ("oval21", "cifar_base_kw.onnx", "cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib"),
    ("oval21", "cifar_base_kw.onnx", "cifar_base_kw-img4549-eps0.00392156862745098.vnnlib"),
]


@pytest.mark.benchmarks
@pytest.mark.parametrize("bench_name,onnx,vnnlib", VNNCOMP, ids=[f"{o}:{v[:24]}" for _, o, v in VNNCOMP])
def test_vnncomp_bounds_agree_with_onnxruntime_and_ground_truth(bench_name: str, onnx: str, vnnlib: str) -> None:
    folder = benchmarks_dir() / bench_name
    truth = ground_truth()[(bench_name, onnx, vnnlib)]
    sub = "nets/" if bench_name == "oval21" else ""
    spec_sub = "vnnlib/" if bench_name == "oval21" else ""
    net = load_onnx(folder / f"{sub}{onnx}")
    spec = read_spec(folder / f"{spec_sub}{vnnlib}", net.n_inputs, net.n_outputs)
    gen = torch.Generator().manual_seed(0)
    case = spec.cases[0]
    obj = case_objective(case, net.dtype)
    dom = Domains(obj.lower[None], obj.upper[None])
    C, d = obj.C[None], obj.d[None]
    results = [crown(net, dom, C, d), alpha_crown(net, dom, C, d, AlphaOptions(iterations=5))]
    xs = sample_box(gen, obj.lower[None].double(), obj.upper[None].double(), 100)[0]
    rows = torch.as_tensor(_run_onnx(folder / f"{sub}{onnx}", xs.numpy()), dtype=torch.float64)
    rows = rows @ obj.C.double().T - obj.d.double()
    for res in results:
        lower = res.lower[0].double()
        assert (rows >= lower - 1e-4 * (1 + lower.abs())).all()
        if truth == "sat":
            assert not bool(obj.ruled_out(res.lower))
