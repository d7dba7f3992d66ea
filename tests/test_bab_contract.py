"""Input-box contraction: CROWN's linear row bounds, hand-checked cuts, and no unsafe point ever cut off."""

from __future__ import annotations

import pytest
import torch

from tests.nets import dense_net, random_box, sample_box
from verifier.bab.contract import contract
from verifier.bounds import Domains, crown
from verifier.bounds.backward import concretize
from verifier.forward import forward


def test_halfspace_cuts_the_box_by_hand() -> None:
    # x0 + x1 - 0.5 <= 0 on [0, 1]^2: both coordinates at most 0.5; x0 - x1 + 2 <= 0 (second polytope) is empty
    A = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]], dtype=torch.float64)
    c = torch.tensor([[-0.5, 2.0]], dtype=torch.float64)
    lo, hi = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    groups = torch.tensor([[True, False], [False, True]])
    new_lo, new_hi, out = contract(A, c, lo, hi, groups, torch.ones(1, 2, dtype=torch.bool))
    assert out.tolist() == [[False, True]]
    assert new_lo.tolist() == [[0.0, 0.0]]
    assert new_hi[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert (new_hi >= 0.5).all()  # the slack only ever loosens a cut


def test_rows_of_one_polytope_cut_together() -> None:
    # x0 >= 0.75 and x0 + x1 <= 1 on [0, 1]^2: x1 <= 0.25 follows only from both rows together
    A = torch.tensor([[[-1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    c = torch.tensor([[0.75, -1.0]], dtype=torch.float64)
    lo, hi = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    new_lo, new_hi, out = contract(A, c, lo, hi, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool))
    assert not out.any()
    assert new_lo[0].tolist() == pytest.approx([0.75, 0.0], abs=1e-4)
    assert new_hi[0].tolist() == pytest.approx([1.0, 0.25], abs=1e-4)


def test_hull_over_polytopes_and_closed_ones() -> None:
    # polytope 0 keeps x0 <= 0.25, polytope 1 keeps x0 >= 0.5 (its rows alone); the box keeps their hull,
    # unless polytope 1 is already ruled out (not open), when only polytope 0's box is kept
    A = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    c = torch.tensor([[-0.25, 0.5]], dtype=torch.float64)
    lo, hi = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    groups = torch.eye(2, dtype=torch.bool)
    new_lo, new_hi, _ = contract(A, c, lo, hi, groups, torch.ones(1, 2, dtype=torch.bool))
    assert new_lo[0, 0] == 0.0 and new_hi[0, 0] == 1.0
    new_lo, new_hi, out = contract(A, c, lo, hi, groups, torch.tensor([[True, False]]))
    assert out.tolist() == [[False, True]]
    assert float(new_hi[0, 0]) == pytest.approx(0.25, abs=1e-4)


def test_everything_ruled_out_keeps_the_box() -> None:
    A = torch.ones(2, 1, 3)
    c = torch.full((2, 1), 10.0)
    lo, hi = torch.zeros(2, 3), torch.ones(2, 3)
    new_lo, new_hi, out = contract(A, c, lo, hi, torch.ones(1, 1, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool))
    assert out.all() and torch.equal(new_lo, lo) and torch.equal(new_hi, hi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_linear_row_bounds_hold_and_contraction_keeps_every_unsafe_point(seed: int, dtype: torch.dtype) -> None:
    """On random networks and boxes: CROWN's linear row bounds lie below the rows at sampled points and
    concretize to at most its bound; a sampled point of a polytope (all its rows <= 0) stays in the
    contracted box and its polytope stays open."""
    gen = torch.Generator().manual_seed(100 + seed)
    net = dense_net(gen, sizes=(4, 12, 12, 3)).to(dtype=dtype)
    B, S, N = 6, 4, 4000
    lo, hi = random_box(gen, 4, B, torch.float64, width=1.0)
    lo, hi = lo.to(dtype), hi.to(dtype)
    xs = sample_box(gen, lo.double(), hi.double(), N)  # (B, N, n), the vertices included
    N = xs.shape[1]
    y = forward(net.to(dtype=torch.float64), xs.reshape(B * N, -1)).reshape(B, N, -1)
    C = torch.randn(S, 3, generator=gen, dtype=torch.float64)
    rows = torch.einsum("so,bno->bns", C, y)  # (B, N, S)
    d = torch.quantile(rows, 0.25, dim=1)  # about a quarter of the points satisfy each row
    res = crown(net, Domains(lo, hi), C.to(dtype).expand(B, -1, -1), d.to(dtype), need_linear=True)
    A, c = res.linear
    assert A.shape == (B, S, 4) and c.shape == (B, S)
    lin = torch.einsum("bsn,bkn->bks", A.double(), xs) + c.double()[:, None]  # (B, N, S)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert (lin <= rows - d[:, None] + tol).all()
    assert (concretize(A, c, (lo, hi)) <= res.lower + tol).all()

    groups = torch.tensor([[True, True, False, False], [False, False, True, True]])
    open_ = torch.ones(B, 2, dtype=torch.bool)
    new_lo, new_hi, out = contract(A, c, lo, hi, groups, open_)
    inside = (rows - d[:, None] <= 0)  # (B, N, S)
    kept = 0
    for p in range(2):
        unsafe = inside[..., groups[p]].all(-1)  # (B, N): points of polytope p
        assert not (unsafe.any(1) & out[:, p]).any(), "a polytope with a sampled point was ruled out"
        pts = xs[unsafe]  # (K, n)
        which = torch.nonzero(unsafe)[:, 0]
        ulp = 1e-12  # sample_box's vertices lower + (upper - lower) can land an ulp past upper
        assert (pts >= new_lo.double()[which] - ulp).all() and (pts <= new_hi.double()[which] + ulp).all()
        kept += pts.shape[0]
    assert kept > 100  # the check saw many unsafe points
    assert (new_lo >= lo).all() and (new_hi <= hi).all()
