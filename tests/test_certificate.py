"""Proof certificates from the engine: every ``unsat`` with ``proof`` carries a certificate that the
independent checker accepts; ``certify`` answers ``unsat`` only then; tampering is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.nets import dense_net
from verifier.api import verify
from verifier.certificate import check_proof, load_proof, save_proof
from verifier.config import Config, load_config
from verifier.forward import forward
from verifier.onnx_export import save_onnx
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec
from vnnlib.writer import write_spec

ROOT = Path(__file__).resolve().parents[1]
ACAS = ROOT / "models" / "acasxu"


def _config(**overrides) -> Config:
    return load_config(overrides={"proof": True, **overrides})


def _tight_problem(tmp_path: Path, seed: int, margin: float) -> tuple[Path, Path, float]:
    """A small random net and the spec ``y_0 - y_1 <= t`` on a box, ``t`` ``margin`` below the least value
    seen on many samples (0.03: mostly unsat, and close enough that the root bound does not prove it)."""
    gen = torch.Generator().manual_seed(seed)
    net = dense_net(gen, sizes=(3, 10, 10, 2))
    lo, hi = -np.ones(3), np.ones(3)
    x = torch.rand(20000, 3, generator=gen, dtype=torch.float64) * 2 - 1
    y = forward(net, x).reshape(-1, 2)
    t = float((y[:, 0] - y[:, 1]).min()) - margin
    spec = Spec((Case(lo, hi, (Polytope(np.array([[1.0, -1.0]]), np.array([t])),)),), 3, 2)
    save_onnx(net, tmp_path / f"m{seed}.onnx")
    (tmp_path / f"s{seed}.vnnlib").write_text(write_spec(spec))
    return tmp_path / f"m{seed}.onnx", tmp_path / f"s{seed}.vnnlib", t


def test_acas_xu_unsat_carries_a_certificate_that_checks(tmp_path: Path):
    model, spec = ACAS / "ACASXU_run2a_1_1_batch_2000.onnx", ACAS / "prop_1.vnnlib"
    result = verify(model, spec, timeout=120, config=_config())
    assert result.status is Status.UNSAT and result.proof is not None, result.message
    save_proof(tmp_path / "p.npz", result.proof)
    checked = check_proof(model, spec, tmp_path / "p.npz")
    assert checked.valid, checked.reason
    assert checked.leaves > 1  # input splitting was needed: more than the root

    # the same tree without one of its closures leaves a polytope open somewhere
    proof = load_proof(tmp_path / "p.npz")
    case = proof.cases[0]
    fewer = dataclasses.replace(case, close_node=case.close_node[1:], close_poly=case.close_poly[1:],
                                close_weights=case.close_weights[1:], close_alpha=case.close_alpha[1:],
                                close_beta=case.close_beta[1:], close_on_box=case.close_on_box[1:],
                                **({"close_nu": case.close_nu[1:]} if hasattr(case, "close_nu") else {}))
    assert not check_proof(model, spec, dataclasses.replace(proof, cases=(fewer,))).valid


@pytest.mark.parametrize("branching", ["input", "relu"])
def test_random_nets_every_unsat_certificate_checks(tmp_path: Path, branching: str):
    """Input splitting and ReLU splitting (with LP leaves) on small random nets near their optimum."""
    proven, with_splits = 0, 0
    for seed in range(7):
        model, spec, _ = _tight_problem(tmp_path, seed, 0.03)
        config = _config(bab={"branching": branching}, attack={"enabled": False})
        result = verify(model, spec, timeout=20, config=config)
        if result.status is not Status.UNSAT:
            continue
        assert result.proof is not None, result.message
        checked = check_proof(model, spec, result.proof)
        assert checked.valid, (seed, checked.reason)
        proven += 1
        with_splits += checked.nodes > 1
    assert proven >= 4 and with_splits >= 3


def test_certify_answers_unsat_only_with_a_checked_certificate(tmp_path: Path):
    model, spec, _ = _tight_problem(tmp_path, 2, 0.03)
    result = verify(model, spec, timeout=60, config=_config(certify=True))
    assert result.status is Status.UNSAT and result.stats.get("check_time") is not None
    # the MILP engine records no proof: certified, its unsat becomes unknown (and says why)
    result = verify(model, spec, timeout=60, config=_config(certify=True, engine="milp"))
    assert result.status is Status.UNKNOWN and "no certificate" in result.message


def test_a_sat_instance_has_no_certificate(tmp_path: Path):
    model, spec, t = _tight_problem(tmp_path, 1, -1e-2)  # t above a value seen: a counterexample exists
    result = verify(model, spec, timeout=60, config=_config(certify=True))
    assert result.status is Status.SAT and result.proof is None


def test_a_certificate_does_not_check_against_another_spec(tmp_path: Path):
    model, spec, t = _tight_problem(tmp_path, 4, 0.03)
    result = verify(model, spec, timeout=60, config=_config())
    assert result.status is Status.UNSAT and result.proof is not None
    other = Spec((Case(-np.ones(3), np.ones(3), (Polytope(np.array([[1.0, -1.0]]), np.array([t - 1.0])),)),),
                 3, 2)
    (tmp_path / "other.vnnlib").write_text(write_spec(other))
    assert not check_proof(model, tmp_path / "other.vnnlib", result.proof).valid


def test_the_command_line_writes_a_certificate_that_verify_check_accepts(tmp_path: Path, capsys):
    from verifier.certificate.check_cli import main as check_main
    from verifier.cli import main

    model, spec = ACAS / "ACASXU_run2a_1_1_batch_2000.onnx", ACAS / "prop_1.vnnlib"
    proof = tmp_path / "proof.npz"
    assert main([str(model), str(spec), "--timeout", "120", "--proof", str(proof), "--certify"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "unsat" and proof.is_file()
    assert check_main([str(model), str(spec), str(proof)]) == 0
    assert capsys.readouterr().out.startswith("valid: 1 cases, ")


def test_relu_splitting_leaves_and_forks_check(tmp_path: Path):
    """ReLU splitting down to leaves decided by the certified LP (their closures carry its multipliers) and,
    with two polytopes open at the root, one search per polytope (forks)."""
    from tests.test_bab_relu import _objective_with_shift

    gen = torch.Generator().manual_seed(104)
    net = dense_net(gen, (2, 5, 5, 2))
    spec, _ = _objective_with_shift(net, gen, (2, 2), -0.01)
    case = spec.cases[0]
    hard = case.polytopes[1]  # the first is proven at the root
    twins = Spec((Case(case.lower, case.upper, (hard, Polytope(hard.A, hard.b + 1e-3))),), spec.n_inputs,
                 spec.n_outputs)
    save_onnx(net, tmp_path / "m.onnx")
    config = _config(bab={"branching": "relu"}, attack={"enabled": False})
    kinds = []
    for name, s in (("leaves", spec), ("forks", twins)):
        (tmp_path / f"{name}.vnnlib").write_text(write_spec(s))
        result = verify(tmp_path / "m.onnx", tmp_path / f"{name}.vnnlib", timeout=30, config=config)
        assert result.status is Status.UNSAT and result.proof is not None, result.message
        checked = check_proof(tmp_path / "m.onnx", tmp_path / f"{name}.vnnlib", result.proof)
        assert checked.valid, checked.reason
        kinds.append(result.proof.cases[0])
    assert kinds[0].nu.shape[0] > 0  # LP leaves
    assert (kinds[1].kind == 3).any()  # forks
