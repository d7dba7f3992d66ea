"""Specs of many input boxes (nn4sys style): IBP and CROWN run on all cases in batches first; only the
cases they leave open are attacked and searched.  Verdicts must stay exact, counterexamples validated,
and certificates of screened cases must check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.nets import dense_net
from verifier.api import verify
from verifier.certificate import check_proof
from verifier.config import load_config
from verifier.forward import forward
from verifier.onnx_export import save_onnx
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec
from vnnlib.writer import write_spec


def _many_boxes(tmp_path: Path, seed: int, boxes: int, width: float, inside: float) -> tuple[Path, Path, Spec]:
    """A 1-input net and ``boxes`` small boxes along the input, each with the two polytopes ``y <= a``
    and ``y >= b`` around the box's sampled output range widened by ``inside`` (negative: the bounds
    cut into the range, so every box has a counterexample)."""
    gen = torch.Generator().manual_seed(seed)
    net = dense_net(gen, sizes=(1, 16, 16, 1))
    centres = np.linspace(-1, 1, boxes)
    cases = []
    for c in centres:
        lo, hi = np.array([c - width]), np.array([c + width])
        x = torch.linspace(lo[0], hi[0], 201, dtype=torch.float64).reshape(-1, 1)
        y = forward(net, x).reshape(-1)
        a, b = float(y.min()) - inside, float(y.max()) + inside
        cases.append(Case(lo, hi, (Polytope(np.array([[1.0]]), np.array([a])),
                                   Polytope(np.array([[-1.0]]), np.array([-b])))))
    spec = Spec(tuple(cases), 1, 1)
    save_onnx(net, tmp_path / "m.onnx")
    (tmp_path / "s.vnnlib").write_text(write_spec(spec))
    return tmp_path / "m.onnx", tmp_path / "s.vnnlib", spec


def test_many_tight_boxes_are_proven_by_the_batched_screen(tmp_path: Path):
    model, spec, _ = _many_boxes(tmp_path, 0, 300, 1e-4, 0.05)
    result = verify(model, spec, timeout=60)
    assert result.status is Status.UNSAT
    assert result.stats["screen_proven"] == 300
    assert "attack_time" in result.stats and result.stats["attack_time"] < 1.0  # no case was left to attack


def test_a_box_the_screen_leaves_open_is_searched_and_proven(tmp_path: Path):
    """Wide boxes with a thin margin: the screen proves some, the per-case stages the others."""
    model, spec, _ = _many_boxes(tmp_path, 1, 6, 0.2, 0.02)
    result = verify(model, spec, timeout=60)
    assert result.status is Status.UNSAT
    assert result.stats["screen_proven"] < 6


def test_one_box_with_a_counterexample_among_many_is_found(tmp_path: Path):
    model, spec_path, spec = _many_boxes(tmp_path, 2, 200, 1e-4, 0.05)
    # box 137 alone: its upper threshold cuts into the outputs it reaches
    bad = spec.cases[137]
    b = float(-bad.polytopes[1].b[0]) - 0.06
    cases = list(spec.cases)
    cases[137] = Case(bad.lower, bad.upper, (bad.polytopes[0], Polytope(np.array([[-1.0]]), np.array([-b]))))
    spec = Spec(tuple(cases), 1, 1)
    spec_path.write_text(write_spec(spec))
    result = verify(model, spec_path, timeout=60)
    assert result.status is Status.SAT
    x = result.counterexample.x
    assert bad.lower[0] <= x[0] <= bad.upper[0]
    assert result.stats["screen_proven"] == 199


def test_screened_cases_carry_certificates_that_check(tmp_path: Path):
    model, spec, _ = _many_boxes(tmp_path, 3, 40, 0.05, 0.02)
    result = verify(model, spec, timeout=60, config=load_config(overrides={"proof": True}))
    assert result.status is Status.UNSAT and result.proof is not None, result.message
    assert 0 < result.stats["screen_proven"]
    checked = check_proof(model, spec, result.proof)
    assert checked.valid, checked.reason
    assert len(result.proof.cases) == 40


def test_alpha_crown_runs_at_the_root_only_where_it_serves() -> None:
    """Before input splitting (whose children CROWN bounds) the root gets IBP and CROWN only, unless
    ``bab.input.root_alpha`` says so; the incomplete mode that stops after alpha-CROWN still runs it."""
    folder = Path(__file__).resolve().parents[1] / "models" / "acasxu"
    model, spec = folder / "ACASXU_run2a_1_1_batch_2000.onnx", folder / "prop_3.vnnlib"
    plain = verify(model, spec, timeout=60, config=load_config())
    asked = verify(model, spec, timeout=60, config=load_config(overrides={"bab": {"input": {"root_alpha": True}}}))
    incomplete = verify(model, spec, timeout=60, config=load_config(overrides={"stop_after": "alpha"}))
    assert plain.status is asked.status is Status.UNSAT
    assert "crown_time" in plain.stats and "alpha_time" not in plain.stats
    assert "alpha_time" in asked.stats and "alpha_time" in incomplete.stats
