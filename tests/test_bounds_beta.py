"""beta-CROWN: sound for any beta >= 0 (sampled points consistent with random splits),
below the exact optimum of split domains, tighter than alpha-CROWN on average, warm starts."""

from __future__ import annotations

import pytest
import torch

from tests.nets import FAMILIES, check_bounds, dense_exact_bound, dense_net, make_case, random_box, random_splits
from verifier.bounds import AlphaOptions, Domains, alpha_crown, beta_crown, crown
from verifier.bounds.backward import concretize
from verifier.bounds.crown import crown_sweep, final_linear

RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_beta_crown_contains_samples(family: str, dtype: torch.dtype) -> None:
    net, lo, hi, splits, C, d, xs = make_case(family, dtype, True, seed=30 + sorted(FAMILIES).index(family))
    res = beta_crown(net, Domains(lo, hi, splits), C, d, AlphaOptions(iterations=8, early_stop=False))
    assert res.betas is not None and all((b >= 0).all() for b in res.betas.values)
    assert check_bounds(net, splits, res, C, d, xs, RTOL[dtype]) > 1000


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_any_nonnegative_beta_is_sound(family: str) -> None:
    """The bound with large random multipliers (no optimization, no max with CROWN)."""
    net, lo, hi, splits, C, d, xs = make_case(family, torch.float64, True, seed=40)
    dom = Domains(lo, hi, splits)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        state = crown_sweep(net, dom)
        terms = {r: -5 * torch.rand(C.shape[0], C.shape[1], s.shape[1], generator=gen, dtype=lo.dtype)
                 * s.double().unsqueeze(1) for r, s in zip(net.relu_indices, splits, strict=True)}
        lower = concretize(*final_linear(net, state, C, d, None, terms), (lo, hi))
    lower = torch.where(state.nodes.empty[:, None], float("inf"), lower)
    res = crown(net, dom, C, d)
    check_bounds(net, splits, type(res)(lower, None, res.intermediate), C, d, xs, 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_beta_crown_below_exact_optimum_of_split_domains(seed: int) -> None:
    gen = torch.Generator().manual_seed(200 + seed)
    net = dense_net(gen, (2, 6, 5, 1))
    lo, hi = random_box(gen, 2, 3, width=1.5)
    splits = random_splits(gen, net, lo, hi, count=3, flip_last=False)
    C = torch.ones(3, 1, 1, dtype=torch.float64)
    d = torch.zeros(3, 1, dtype=torch.float64)
    res = beta_crown(net, Domains(lo, hi, splits), C, d, AlphaOptions(iterations=30, early_stop=False))
    for b in range(3):
        lows = [t[b] for t in res.intermediate.lower]
        ups = [t[b] for t in res.intermediate.upper]
        exact = dense_exact_bound(net, lows, ups, lo[b], hi[b], C[b, 0], 0.0)
        assert float(res.lower[b, 0]) <= exact + 1e-7


def test_beta_crown_is_tighter_than_alpha_crown_on_split_domains() -> None:
    opts = AlphaOptions(iterations=20, early_stop=False)
    gains = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        net, lo, hi, _, C, d, _ = make_case("residual", torch.float64, False, seed=seed, batch=6)
        dom = Domains(lo, hi, random_splits(gen, net, lo, hi, count=4, flip_last=False))
        a, b = alpha_crown(net, dom, C, d, opts), beta_crown(net, dom, C, d, opts)
        gains.append(float((b.lower - a.lower).mean()))
    assert sum(gains) > 0, gains


def test_beta_warm_start_select_and_repeat() -> None:
    net, lo, hi, splits, C, d, _ = make_case("dense", torch.float64, True, seed=5, batch=4)
    dom = Domains(lo, hi, splits)
    parent = beta_crown(net, dom, C, d, AlphaOptions(iterations=15, early_stop=False))
    keep = torch.tensor([1, 2])
    res = beta_crown(net, dom.select(keep).repeat(2), C[keep].repeat(2, 1, 1), d[keep].repeat(2, 1),
                     AlphaOptions(iterations=0), known=parent.intermediate.select(keep).repeat(2),
                     slopes=parent.slopes.select(keep).repeat(2), betas=parent.betas.select(keep).repeat(2))
    assert (res.lower >= parent.lower[keep].repeat(2, 1) - 1e-9).all()
    assert res.betas.values[0].shape == parent.betas.values[0][keep].repeat(2, 1, 1).shape


def test_without_splits_beta_crown_is_alpha_crown() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=6)
    opts = AlphaOptions(iterations=5, early_stop=False)
    a, b = alpha_crown(net, Domains(lo, hi), C, d, opts), beta_crown(net, Domains(lo, hi), C, d, opts)
    torch.testing.assert_close(a.lower, b.lower)
    assert b.betas is None
