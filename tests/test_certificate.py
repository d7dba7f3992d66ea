"""Proof certificates from the engine: every ``unsat`` with ``proof`` carries a certificate that the
independent checker accepts; ``certify`` answers ``unsat`` only then; tampering is caught."""

from __future__ import annotations

import dataclasses
import time
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
    # the MILP engine's unsat is proven (and recorded) by the bounds and the search: it checks
    result = verify(model, spec, timeout=60, config=_config(certify=True, engine="milp"))
    assert result.status is Status.UNSAT and result.stats.get("milp_certify") == 1 and result.proof is not None
    # z3's unsat is proven again by the search, which records the certificate
    result = verify(model, spec, timeout=60, config=_config(certify=True, engine="smt"))
    assert result.status is Status.UNSAT and result.stats.get("smt_certify") == 1 and result.proof is not None


def test_smt_unsat_without_a_certificate_in_time(tmp_path: Path, monkeypatch):
    """When the search cannot prove z3's unsat again, --proof keeps z3's exact unsat without a certificate
    and --certify answers unknown."""
    import verifier.api as api

    model, spec, _ = _tight_problem(tmp_path, 2, 0.03)
    monkeypatch.setattr(api, "_prove", lambda *a, **k: (Status.TIMEOUT, None))
    result = verify(model, spec, timeout=60, config=_config(proof=True, engine="smt"))
    assert result.status is Status.UNSAT and result.proof is None and "no certificate" in result.message
    result = verify(model, spec, timeout=60, config=_config(certify=True, engine="smt"))
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


# ---------------------------------------------------------------- refinement lemmas

REFINE_FIRST = {"bab": {"branching": "relu", "refine": {"after": 0.0}}, "attack": {"enabled": False}}


def _abs_trick_files(tmp_path: Path) -> tuple[Path, Path]:
    """``tests.test_bab_refine.abs_trick_net`` (its second layer's neuron is -0.1 everywhere, unstable under
    the triangle relaxations) and the spec "output >= 0.05", which only the refined bounds prove at the root."""
    from tests.test_bab_refine import abs_trick_net

    save_onnx(abs_trick_net(), tmp_path / "abs.onnx")
    spec = Spec((Case(-np.ones(1), np.ones(1), (Polytope(np.array([[-1.0]]), np.array([-0.05])),)),), 1, 1)
    (tmp_path / "abs.vnnlib").write_text(write_spec(spec))
    return tmp_path / "abs.onnx", tmp_path / "abs.vnnlib"


def test_refinement_lemmas_check_and_tampered_lemmas_do_not(tmp_path: Path):
    """The refinement (run first here) proves the neuron's sign by a search: its certificate holds that search
    and the layer's alpha-CROWN rows as derived lemma groups; without the search's group, or with it changed,
    the root cannot be closed; the same tree as a claimed group proves the sign, and a false claim fails."""
    model, spec = _abs_trick_files(tmp_path)
    result = verify(model, spec, timeout=30, config=_config(**REFINE_FIRST))
    assert result.status is Status.UNSAT and result.proof is not None, result.message
    assert result.stats["refine_stabilized"] == 1
    save_proof(tmp_path / "p.npz", result.proof)
    proof = load_proof(tmp_path / "p.npz")  # the lemma groups survive the file
    groups = proof.lemmas[0]
    assert all(g.derive for g in groups)
    searched = [m for m, g in enumerate(groups) if g.tree.kind.size > 1]  # a split was needed
    assert len(searched) == 1
    assert check_proof(model, spec, proof).valid
    m = searched[0]
    g = groups[m]

    def valid_with(lemmas) -> bool:
        return check_proof(model, spec, dataclasses.replace(proof, lemmas=(tuple(lemmas),))).valid

    assert valid_with([g])  # the sign it proves is what closes the root
    assert not valid_with([])
    assert not valid_with([x for x in groups if x is not g])
    assert not valid_with([dataclasses.replace(g, side=-g.side)])  # the other sign: the tree bounds it below 0
    # a tree whose closures are gone bounds nothing
    tree = dataclasses.replace(g.tree, close_node=g.tree.close_node[:0], close_poly=g.tree.close_poly[:0],
                               close_weights=g.tree.close_weights[:0], close_alpha=g.tree.close_alpha[:0],
                               close_beta=g.tree.close_beta[:0], close_on_box=g.tree.close_on_box[:0],
                               close_nu=g.tree.close_nu[:0])
    assert not valid_with([dataclasses.replace(g, tree=tree)])
    # claimed instead of derived: "-z > 0" holds at every leaf; "-z > 0.2" (z = -0.1 everywhere) is refused
    claim = np.ones_like(g.claimed)
    assert valid_with([dataclasses.replace(g, derive=False, claimed=claim)])
    false = check_proof(model, spec, dataclasses.replace(
        proof, lemmas=((dataclasses.replace(g, derive=False, claimed=claim, value=g.value + 0.2),),)))
    assert not false.valid and "lemma group 0" in false.reason


def test_lemma_groups_are_checked_in_order_and_name_real_neurons(tmp_path: Path):
    from verifier.certificate import ProofFormatError

    model, spec = _abs_trick_files(tmp_path)
    result = verify(model, spec, timeout=30, config=_config(**REFINE_FIRST))
    proof, groups = result.proof, result.proof.lemmas[0]
    g = next(x for x in groups if x.tree.kind.size > 1)
    bad = dataclasses.replace(g, neuron=g.neuron + 5)
    checked = check_proof(model, spec, dataclasses.replace(proof, lemmas=((bad,),)))
    assert not checked.valid and "names no neuron" in checked.reason
    with pytest.raises(ProofFormatError):
        dataclasses.replace(g, layer=0)
    with pytest.raises(ProofFormatError):
        dataclasses.replace(g, claimed=np.ones_like(g.claimed))  # a derived group claims nothing
    # nor contracts a box: that drops points outside its polytope, where its bound must hold too
    boxed = dataclasses.replace(g.tree, box=np.zeros_like(g.tree.box), box_lower=-np.ones((1, 1)),
                                box_upper=np.ones((1, 1)))
    checked = check_proof(model, spec, dataclasses.replace(proof, lemmas=((dataclasses.replace(g, tree=boxed),),)))
    assert not checked.valid and "contracts a box" in checked.reason


@pytest.mark.parametrize("seed", range(3))
def test_recorded_refinement_checks_and_its_lemma_bounds_contain_samples(seed: int):
    """The refinement with a recorder on random deeper nets: every lemma group it records checks (a claimed
    row that does not raises), the bounds the checker derives contain sampled pre-activations, and every
    neuron a search made stable is stable by the checked lemmas too."""
    from tests.nets import relu_pre
    from tests.test_bab_refine import ALPHA, _objective, _root
    from verifier.bab.options import BabOptions
    from verifier.bab.refine import refine_bounds
    from verifier.certificate.check import _Counts, _lemma_bounds, network_matrices
    from verifier.certificate.format import _lemma_from
    from verifier.certificate.record import CaseRecorder
    from verifier.deadline import Deadline

    gen = torch.Generator().manual_seed(200 + seed)
    net = dense_net(gen, sizes=(3, 12, 12, 12, 2))
    lower, upper = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    obj = _objective(lower, upper, C, torch.zeros(1, dtype=torch.float64))
    root = _root(net, obj)
    rec = CaseRecorder(lower, upper, [1], [12, 12, 12])
    out = refine_bounds(net, obj, root.intermediate, BabOptions(), ALPHA, Deadline(time.monotonic() + 4),
                        torch.Generator().manual_seed(0), budget=16, recorder=rec)
    assert all(why is None for _, why in rec.lemmas) and any(g["rows_derive"][0] for g, _ in rec.lemmas)
    groups = tuple(_lemma_from(g, f"group {m}") for m, (g, _) in enumerate(rec.lemmas))
    case = Case(lower.numpy(), upper.numpy(), (Polytope(np.array([[1.0, -1.0]]), np.array([0.0])),))
    lo, hi = _lemma_bounds(network_matrices(net), case, groups, 0, _Counts())
    x = torch.rand(20000, 3, generator=gen, dtype=torch.float64) * 2 - 1
    pre = torch.cat(relu_pre(net, x)[0], dim=1).numpy()
    assert np.all(pre >= lo) and np.all(pre <= hi)
    # what the engine's searches proved, the checked lemmas prove
    stabilized = 0
    for k in range(1, 3):
        off = 12 * k
        e_lo, e_hi = out.bounds.lower[k][0].numpy(), out.bounds.upper[k][0].numpy()
        r_lo, r_hi = root.intermediate.lower[k][0].numpy(), root.intermediate.upper[k][0].numpy()
        made_active, made_inactive = (e_lo >= 0) & (r_lo < 0), (e_hi <= 0) & (r_hi > 0)
        assert np.all(lo[off:off + 12][made_active] >= 0) and np.all(hi[off:off + 12][made_inactive] <= 0)
        stabilized += int(made_active.sum() + made_inactive.sum())
    assert stabilized >= out.stabilized > 0
