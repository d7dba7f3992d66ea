"""The LP relaxation: its bounds contain samples, sit between CROWN and the MILP optimum,
LP tightening only tightens, and the certified LP bound follows weak duality."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.nets import FAMILIES, make_case, relu_pre
from verifier.bounds import Domains, crown, ibp
from verifier.exact.encoding import MipProblem, encode_network, linear_objective
from verifier.exact.highs import LpSession, MipStatus, solve_mip
from verifier.exact.lp_relaxation import lp_bounds, lp_tighten
from verifier.network import MaxPool

FAMILIES_LP = ["dense", "conv", "residual", "avgpool", "maxpool", "all_ops"]


@pytest.mark.parametrize("family", FAMILIES_LP)
def test_lp_bounds_contain_samples_and_beat_crown(family: str) -> None:
    net, lo, hi, _, C, d, xs = make_case(family, torch.float64, False, seed=FAMILIES_LP.index(family), batch=2)
    got = lp_bounds(net, lo, hi, C, d)  # (B, S)
    assert got.shape == (2, C.shape[1])
    y = torch.einsum("bso,bno->bns", C, forward_out(net, xs)) - d[:, None]  # (B, N, S)
    assert np.all(got[:, None, :] <= y.numpy() + 1e-9)
    base = crown(net, Domains(lo, hi), C, d)
    seeded = lp_bounds(net, lo, hi, C, d, base.intermediate)
    assert np.all(seeded >= got - 1e-7 * (1 + np.abs(got)))
    if not any(isinstance(n.op, MaxPool) for n in net.nodes):
        # with the same ReLU bounds the triangle LP is at least as tight as CROWN (the big-M
        # relaxation of MaxPool is weaker than CROWN's, so not there)
        assert np.all(seeded >= base.lower.numpy() - 1e-7 * (1 + np.abs(seeded)))


def forward_out(net, xs: torch.Tensor) -> torch.Tensor:
    B, N, n = xs.shape
    _, out = relu_pre(net, xs.reshape(B * N, n))
    return out.reshape(B, N, -1)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_are_ordered_below_the_milp_optimum(seed: int) -> None:
    """IBP <= CROWN-seeded LP <= LP-all <= MILP optimum, and CROWN <= MILP optimum."""
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=seed, batch=1, spec_rows=2)
    interval = ibp(net, Domains(lo, hi), C, d).lower[0].numpy()
    cr = crown(net, Domains(lo, hi), C, d)
    lp = lp_bounds(net, lo[0], hi[0], C[0], d[0], cr.intermediate)
    lp_all = lp_bounds(net, lo[0], hi[0], C[0], d[0], cr.intermediate, tighten=True)
    enc = encode_network(net, lo[0].numpy(), hi[0].numpy())
    for s in range(C.shape[1]):
        cost, offset = linear_objective(enc, C[0, s].numpy(), float(d[0, s]))
        opt = solve_mip(replace(enc.problem, cost=cost, offset=offset), 30)
        assert opt.status is MipStatus.FEASIBLE
        tol = 1e-7 * (1 + abs(opt.objective))
        assert interval[s] <= opt.objective + tol
        assert float(cr.lower[0, s]) <= opt.objective + tol
        assert lp[s] <= lp_all[s] + tol <= opt.objective + 2 * tol
        assert opt.dual_bound <= opt.objective + tol


@pytest.mark.parametrize("family", ["dense", "conv", "maxpool"])
def test_lp_tighten_contains_samples_and_only_tightens(family: str) -> None:
    net, lo, hi, _, _, _, xs = make_case(family, torch.float64, False, seed=3, batch=1)
    base = crown(net, Domains(lo, hi))
    tight = lp_tighten(net, lo[0], hi[0], base.intermediate)
    pre, _ = relu_pre(net, xs[0])
    shrunk = 0
    for k, p in enumerate(pre):
        p = p.numpy()
        assert np.all(p >= tight.lower[k] - 1e-9) and np.all(p <= tight.upper[k] + 1e-9)
        c_lo, c_hi = base.intermediate.lower[k][0].numpy(), base.intermediate.upper[k][0].numpy()
        assert np.all(tight.lower[k] >= c_lo - 2e-6 * (1 + np.abs(c_lo)))  # the encoding widens by 1e-6
        assert np.all(tight.upper[k] <= c_hi + 2e-6 * (1 + np.abs(c_hi)))
        shrunk += int(np.sum(tight.upper[k] - tight.lower[k] < c_hi - c_lo - 1e-6))
    assert shrunk > 0


def test_certified_lp_bound_follows_weak_duality() -> None:
    """min x0 + x1 on the triangle x0 + x1 >= 1, x in [0, 2]^2: the bound is 1; and an
    infeasible LP is reported as +inf only with a Farkas certificate."""
    A = sp.csr_matrix(np.array([[1.0, 1.0]]))
    p = MipProblem(A, np.array([1.0]), np.array([np.inf]), np.zeros(2), np.full(2, 2.0), np.zeros(2, bool))
    session = LpSession(p)
    value = session.minimize(np.array([1.0, 1.0]))
    assert 1.0 - 1e-9 <= value <= 1.0
    assert session.minimize(np.array([-1.0, 0.0]), offset=3.0) == pytest.approx(1.0)
    infeasible = replace(p, row_lower=np.array([5.0]))
    assert LpSession(infeasible).minimize(np.array([1.0, 0.0])) == np.inf


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lp_bounds_accept_single_domains(family: str) -> None:
    net, lo, hi, _, C, d, _ = make_case(family, torch.float64, False, seed=9, batch=1)
    single = lp_bounds(net, lo[0].numpy(), hi[0].numpy(), C[0].numpy(), d[0].numpy())
    batched = lp_bounds(net, lo, hi, C, d)
    assert single.shape == (C.shape[1],)
    np.testing.assert_allclose(single, batched[0], rtol=1e-9, atol=1e-9)
