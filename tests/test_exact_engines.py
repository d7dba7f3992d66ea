"""Engine level: the `test` instances, ACAS Xu samples, deadlines, leaf checks, options."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.nets import dense_net
from verifier.bab.exact_split import smt_verify
from verifier.bounds import Domains, crown
from verifier.deadline import Deadline
from verifier.exact.milp import MilpOptions, count_unstable, milp_check, milp_verify
from verifier.exact.options import SmtOptions
from verifier.exact.outcome import ExactOutcome
from verifier.onnx_import import load_onnx
from verifier.result import Status
from verifier.validate import validate_counterexample
from vnnlib import read_spec
from vnnlib.spec import Case, Polytope, Spec

MODELS = REPO / "models"
TEST_SET = [
    ("test_nano.onnx", "test_nano.vnnlib", "unsat"),
    ("test_tiny.onnx", "test_tiny.vnnlib", "unsat"),
    ("test_small.onnx", "test_small.vnnlib", "unsat"),
    ("test_sat.onnx", "test_prop.vnnlib", "sat"),
    ("test_unsat.onnx", "test_prop.vnnlib", "unsat"),
]
ENGINES = {
    "milp": lambda net, spec, dl: milp_verify(net, spec, dl, MilpOptions()),
    "smt": lambda net, spec, dl: smt_verify(net, spec, dl, SmtOptions()),
}


def test_test_set_ground_truth_matches_the_table(bench: Path) -> None:
    rows = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(open(bench / "ground_truth.csv"))
            if r["benchmark"] == "test"}
    assert {(o, v): want for o, v, want in TEST_SET} == rows


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("onnx_name,vnnlib_name,want", TEST_SET)
def test_test_set_is_decided(onnx_name: str, vnnlib_name: str, want: str, engine: str) -> None:
    net = load_onnx(MODELS / onnx_name)
    spec = read_spec(MODELS / vnnlib_name)
    out = ENGINES[engine](net, spec, Deadline.after(60))
    assert out.verdict is Status(want)
    if want == "sat":  # the witness replays through onnxruntime on the original model
        assert validate_counterexample(MODELS / onnx_name, spec, out.x) is not None


def test_pure_z3_decides_the_small_test_instances() -> None:
    opts = SmtOptions(bounds="none", lp_probe=False, split_unstable=0)
    for onnx_name, vnnlib_name, want in TEST_SET[:3]:
        out = smt_verify(load_onnx(MODELS / onnx_name), read_spec(MODELS / vnnlib_name), Deadline.after(60), opts)
        assert out.verdict is Status(want) and out.problems >= 1


ACAS_SAMPLE = [("1_9", "prop_3.vnnlib"), ("3_3", "prop_3.vnnlib"), ("3_3", "prop_4.vnnlib")]


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("net_id,prop", ACAS_SAMPLE)
def test_acasxu_sample_matches_ground_truth(net_id: str, prop: str, engine: str, bench: Path) -> None:
    """Shipped ACAS Xu nets and properties that the exact engines decide in seconds
    (the full table is benchmarks/experiments/milp_acasxu.py)."""
    onnx_name = f"ACASXU_run2a_{net_id}_batch_2000.onnx"
    truth = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(open(bench / "ground_truth.csv"))
             if r["benchmark"] == "acasxu"}
    net = load_onnx(MODELS / "acasxu" / onnx_name)
    spec = read_spec(MODELS / "acasxu" / prop)
    out = ENGINES[engine](net, spec, Deadline.after(60))
    assert out.verdict is Status(truth[(onnx_name, prop)])
    if out.verdict is Status.SAT:
        assert validate_counterexample(MODELS / "acasxu" / onnx_name, spec, out.x) is not None


def _hard_problem() -> tuple:
    gen = torch.Generator().manual_seed(0)
    net = dense_net(gen, (8, 80, 80, 80, 2), dtype=torch.float32)
    lo, hi = -np.ones(8), np.ones(8)
    spec = Spec((Case(lo, hi, (Polytope(np.array([[1.0, -1.0]]), np.array([-2.0])),)),), 8, 2)
    return net, spec


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_timeout_is_honoured(engine: str) -> None:
    net, spec = _hard_problem()
    start = time.monotonic()
    out = ENGINES[engine](net, spec, Deadline.after(1.0))
    elapsed = time.monotonic() - start
    assert out.verdict in (Status.TIMEOUT, Status.UNKNOWN)
    assert elapsed < 2.0, f"{engine} returned {elapsed:.2f}s after a 1 s deadline"


def test_smt_child_check_is_killed_at_the_deadline() -> None:
    """Without bounds every ReLU is a disjunction: z3 cannot finish, the child
    (a fresh interpreter running z3 only) is killed."""
    net, spec = _hard_problem()
    start = time.monotonic()
    out = smt_verify(net, spec, Deadline.after(2.0), SmtOptions(bounds="none", lp_probe=False))
    assert out.verdict is Status.TIMEOUT and time.monotonic() - start < 3.0


def test_milp_check_on_a_leaf_with_crown_bounds() -> None:
    """A BaB leaf: a sub-box, CROWN's intermediate bounds (a BoundResult) and split states."""
    net = load_onnx(MODELS / "acasxu" / "ACASXU_run2a_3_3_batch_2000.onnx").to(dtype=torch.float64)
    spec = read_spec(MODELS / "acasxu" / "prop_4.vnnlib")
    case = spec.cases[0]
    lo, hi = case.lower.copy(), case.upper.copy()
    hi[0] = lo[0] + 0.25 * (hi[0] - lo[0])
    poly = case.polytopes[0]
    dom = Domains(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    res = crown(net, dom)
    n_unstable = count_unstable(net, lo, hi, res.intermediate)
    assert 0 < n_unstable <= count_unstable(net, lo, hi)
    whole = milp_verify(net, Spec((Case(lo, hi, (poly,)),), 5, 5), Deadline.after(60))
    leaf = milp_check(net, lo, hi, poly.A, poly.b, res.intermediate, Deadline.after(60))
    assert leaf.verdict is whole.verdict and leaf.verdict in (Status.SAT, Status.UNSAT)
    # splitting one unstable neuron both ways covers the leaf: the answers combine to the same
    k = 0
    unstable = np.flatnonzero((res.intermediate.lower[k][0] < 0) & (res.intermediate.upper[k][0] > 0))
    answers = []
    for sign in (1, -1):
        splits = [torch.zeros(1, net.nodes[i].size, dtype=torch.int8) for i in net.relu_indices]
        splits[k][0, unstable[0]] = sign
        answers.append(milp_check(net, lo, hi, poly.A, poly.b, res.intermediate, Deadline.after(60), splits).verdict)
    assert (Status.SAT in answers) == (leaf.verdict is Status.SAT)


def test_outcome_and_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ExactOutcome("proven")
    with pytest.raises(ValueError):
        ExactOutcome(Status.SAT)
    with pytest.raises(ValueError):
        ExactOutcome(Status.ERROR)
    with pytest.raises(ValueError):
        MilpOptions(objective="fast")
    with pytest.raises(ValueError):
        SmtOptions(bounds="exact")


def test_empty_spec_and_expired_deadline() -> None:
    net = load_onnx(MODELS / "test_small.onnx")
    spec = read_spec(MODELS / "test_small.vnnlib")
    assert milp_verify(net, Spec((), spec.n_inputs, spec.n_outputs), Deadline.after(10)).verdict is Status.UNSAT
    assert milp_verify(net, spec, Deadline.after(0)).verdict is Status.TIMEOUT
    assert smt_verify(net, spec, Deadline.after(0)).verdict is Status.TIMEOUT
