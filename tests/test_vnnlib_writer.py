"""VNN-LIB writer: what it writes parses back to the same arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnnlib import Case, Polytope, Spec, SpecError, parse_spec, read_spec, write_spec

MODELS = Path(__file__).resolve().parents[1] / "models"

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.1, 5.81e-05, -3.141592, 1e-300, 123456789.125]
)


@st.composite
def polytopes(draw, n_out: int) -> Polytope:
    k = draw(st.integers(0, 3))
    coef = FLOATS | st.sampled_from([1.0, -1.0, 0.0, 2.0])
    rows = []
    for _ in range(k):
        row = draw(st.lists(coef, min_size=n_out, max_size=n_out))
        if not any(row):  # an all-zero row is a constant: the writer folds it away
            row[draw(st.integers(0, n_out - 1))] = 1.0
        rows.append(row)
    if k and n_out >= 2 and draw(st.booleans()):  # the Y_i <= Y_j shape
        i, j = draw(st.permutations(range(n_out)))[:2]
        rows[0] = [1.0 if m == i else -1.0 if m == j else 0.0 for m in range(n_out)]
    A = np.array(rows, dtype=np.float64).reshape(k, n_out)
    b = np.array(draw(st.lists(FLOATS, min_size=k, max_size=k)), dtype=np.float64)
    strict = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=bool)
    return Polytope(A, b, strict)


@st.composite
def specs(draw) -> Spec:
    n_in = draw(st.integers(1, 4))
    n_out = draw(st.integers(1, 4))
    cases = []
    for k in range(draw(st.integers(1, 3))):
        lo = np.array(draw(st.lists(FLOATS, min_size=n_in, max_size=n_in)))
        width = np.array(draw(st.lists(st.floats(0, 10), min_size=n_in, max_size=n_in)))
        lo[0] = 100.0 * k + lo[0] / 1e5  # distinct boxes: equal ones would be read back merged
        polys = tuple(draw(polytopes(n_out)) for _ in range(draw(st.integers(1, 3))))
        cases.append(Case(lo, lo + width, polys))
    return Spec(tuple(cases), n_in, n_out)


def assert_specs_equal(a: Spec, b: Spec) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases):
        np.testing.assert_array_equal(ca.lower, cb.lower)
        np.testing.assert_array_equal(ca.upper, cb.upper)
        assert len(ca.polytopes) == len(cb.polytopes)
        for pa, pb in zip(ca.polytopes, cb.polytopes):
            np.testing.assert_array_equal(pa.A, pb.A)
            np.testing.assert_array_equal(pa.b, pb.b)
            np.testing.assert_array_equal(pa.strict, pb.strict)


@given(specs())
@settings(max_examples=200, deadline=None)
def test_random_specs_round_trip_exactly(spec):
    assert_specs_equal(parse_spec(write_spec(spec)), spec)


@pytest.mark.parametrize(
    "path", sorted(MODELS.glob("*.vnnlib")) + sorted((MODELS / "acasxu").glob("*.vnnlib")), ids=lambda p: p.name
)
def test_shipped_specs_round_trip(path):
    spec = read_spec(path)
    assert_specs_equal(parse_spec(write_spec(spec)), spec)


def test_gz_round_trip(tmp_path):
    spec = read_spec(MODELS / "acasxu" / "prop_6.vnnlib")
    path = tmp_path / "prop_6.vnnlib.gz"
    with gzip.open(path, "wt") as f:
        f.write(write_spec(spec))
    assert_specs_equal(read_spec(path, 5, 5), spec)


def _spec(polys, n_out=3, lower=(0.0,), upper=(1.0,)):
    return Spec((Case(np.array(lower), np.array(upper), tuple(polys)),), len(lower), n_out)


def test_readable_forms():
    poly = Polytope(
        np.array([[1.0, -1.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.5]]),
        np.array([0.0, 2.5, 1e-05, 3.0]),
        np.array([False, True, False, False]),
    )
    text = write_spec(_spec([poly]))
    for line in [
        "(declare-const X_0 Real)",
        "(declare-const Y_2 Real)",
        "(assert (<= X_0 1.0))",
        "(assert (>= X_0 0.0))",
        "(assert (<= Y_0 Y_1))",
        "(assert (> Y_2 -2.5))",
        "(assert (<= Y_1 1e-05))",
        "(assert (<= (+ (* 2.0 Y_0) (* 0.5 Y_2)) 3.0))",
    ]:
        assert line in text.splitlines()


def test_zero_row_polytope_is_always_violated():
    every = Polytope(np.zeros((0, 2)), np.zeros(0))
    some = Polytope(np.array([[1.0, 0.0]]), np.array([0.0]))
    for polys in ([every], [some, every]):
        back = parse_spec(write_spec(_spec(polys, n_out=2)))
        assert [p.A.shape[0] for p in back.cases[0].polytopes] == [p.A.shape[0] for p in polys]
    two = Spec((Case([0.0], [1.0], (every,)), Case([2.0], [3.0], (some,))), 1, 2)
    assert_specs_equal(parse_spec(write_spec(two)), two)


def test_normalisations_keep_the_unsafe_region():
    always = Polytope(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([1.0, 5.0]))  # 0 <= 1 holds
    never = Polytope(np.array([[0.0, 0.0]]), np.array([0.0]), np.array([True]))  # 0 < 0 fails
    back = parse_spec(write_spec(_spec([always, never], n_out=2)))
    (poly,) = back.cases[0].polytopes
    np.testing.assert_array_equal(poly.A, [[1.0, 0.0]])
    np.testing.assert_array_equal(poly.b, [5.0])
    empty_case = Case([5.0], [6.0], ())
    spec = Spec((Case([0.0], [1.0], (always,)), empty_case), 1, 2)
    assert len(parse_spec(write_spec(spec)).cases) == 1
    assert parse_spec(write_spec(Spec((), 2, 2))).cases == ()
    nothing = parse_spec(write_spec(_spec([never], n_out=2)))
    assert nothing.cases == () and nothing.n_inputs == 1


def test_equal_boxes_are_read_back_as_one_case():
    p = Polytope(np.array([[1.0]]), np.array([0.0]))
    q = Polytope(np.array([[-1.0]]), np.array([-1.0]))
    spec = Spec((Case([0.0], [1.0], (p,)), Case([0.0], [1.0], (q,))), 1, 1)
    back = parse_spec(write_spec(spec))
    assert len(back.cases) == 1 and len(back.cases[0].polytopes) == 2


def test_non_finite_coefficients_are_rejected():
    bad = Polytope(np.array([[np.nan]]), np.array([0.0]))
    with pytest.raises(SpecError, match="non-finite"):
        write_spec(_spec([bad], n_out=1))
    inf = Polytope(np.array([[1.0]]), np.array([np.inf]))
    with pytest.raises(SpecError, match="non-finite"):
        write_spec(_spec([inf], n_out=1))
