"""IBP: sampled forward passes lie inside the bounds, on every network family."""

from __future__ import annotations

import pytest
import torch

from tests.nets import FAMILIES, check_bounds, make_case
from verifier.bounds import Domains, ibp

RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_splits", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ibp_contains_samples(family: str, with_splits: bool, dtype: torch.dtype) -> None:
    net, lo, hi, splits, C, d, xs = make_case(family, dtype, with_splits, seed=sorted(FAMILIES).index(family))
    res = ibp(net, Domains(lo, hi, splits), C, d)
    assert res.lower.shape == (lo.shape[0], C.shape[1]) and res.lower.dtype == dtype
    checks = check_bounds(net, splits, res, C, d, xs, RTOL[dtype])
    assert checks > 1000


def test_ibp_empty_domain_is_plus_infinity() -> None:
    net, lo, hi, _, C, d, _ = make_case("dense", torch.float64, False, seed=1, batch=2)
    n0 = net.nodes[net.relu_indices[0]].size
    s0 = torch.zeros(2, n0, dtype=torch.int8)
    # a neuron forced active whose IBP upper bound is negative makes the domain empty
    res0 = ibp(net, Domains(lo, hi), C, d)
    neg = res0.intermediate.upper[0][0] < 0
    if not neg.any():
        pytest.skip("no stable-inactive neuron in this random net")
    s0[0, int(torch.nonzero(neg)[0])] = 1
    splits = (s0,) + tuple(torch.zeros_like(s) for s in res0.intermediate.lower[1:])
    res = ibp(net, Domains(lo, hi, tuple(s.to(torch.int8) for s in splits)), C, d)
    assert torch.isinf(res.lower[0]).all() and (res.lower[0] > 0).all()
    assert torch.isfinite(res.lower[1]).all()
