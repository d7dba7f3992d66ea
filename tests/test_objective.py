"""The case objective: row stacking, polytope margins, rounding of the box."""

import numpy as np
import torch

from verifier.objective import case_objective, round_toward, with_row_combinations
from vnnlib.spec import Case, Polytope


def _case() -> Case:
    # polytope 0: y0 <= y1 and y0 <= 1 ; polytope 1: y1 <= -2
    p0 = Polytope(np.array([[1.0, -1.0], [1.0, 0.0]]), np.array([0.0, 1.0]))
    p1 = Polytope(np.array([[0.0, 1.0]]), np.array([-2.0]))
    return Case(np.array([-1.0, 0.1]), np.array([1.0, 0.3]), (p0, p1))


def test_rows_and_groups():
    obj = case_objective(_case(), torch.float64)
    assert obj.C.shape == (3, 2) and obj.d.tolist() == [0.0, 1.0, -2.0]
    assert obj.groups.tolist() == [[True, True, False], [False, False, True]]


def test_violation_is_min_over_polytopes_of_max_over_rows():
    obj = case_objective(_case(), torch.float64)
    y = torch.tensor([[0.5, 2.0], [3.0, 0.0], [2.0, -5.0]], dtype=torch.float64)
    # y=(0.5,2): p0 rows -1.5, -0.5 -> -0.5 ; p1 row 4 -> min -0.5 (unsafe)
    # y=(3,0): p0 rows 3, 2 -> 3 ; p1 row 2 -> 2 (safe)
    # y=(2,-5): p0 rows 7, 1 -> 7 ; p1 -3 -> -3 (unsafe)
    assert obj.violation(y).tolist() == [-0.5, 2.0, -3.0]


def test_ruled_out_needs_a_positive_row_in_every_polytope():
    obj = case_objective(_case(), torch.float64)
    lower = torch.tensor([[0.1, -5.0, 0.2], [-1.0, -1.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert obj.ruled_out(lower).tolist() == [True, False, False]


def test_empty_polytope_is_never_ruled_out():
    case = Case(np.zeros(1), np.ones(1), (Polytope(np.zeros((0, 2)), np.zeros(0)),))
    obj = case_objective(case, torch.float64)
    assert obj.ruled_out(torch.zeros(1, 0, dtype=torch.float64)).tolist() == [False]
    assert obj.violation(torch.zeros(1, 2, dtype=torch.float64)).tolist() == [-np.inf]


def test_float32_box_is_widened_and_offsets_raised():
    a = np.array([-0.30353115613746867, 0.1, 1.0 / 3.0, 5.0])
    lo, hi = round_toward(a, torch.float32, -np.inf), round_toward(a, torch.float32, np.inf)
    assert lo.dtype == np.float32 and np.all(lo.astype(np.float64) <= a) and np.all(hi.astype(np.float64) >= a)
    assert lo[3] == hi[3] == 5.0  # exact values are kept
    obj = case_objective(Case(a, a + 1, (Polytope(np.ones((1, 1)), np.array([0.1])),)), torch.float32)
    assert float(obj.d[0]) >= 0.1 and np.all(obj.lower.double().numpy() <= a)


def test_row_combinations_keep_the_unsafe_set_and_rule_out_crossing_rows():
    from verifier.objective import with_row_combinations

    # unsafe: y0 <= 0 and y1 <= 0; on the segment y = (x, 1 - x), x in [0, 1], never both
    case = Case(np.zeros(1), np.ones(1), (Polytope(np.eye(2), np.zeros(2)),))
    obj = case_objective(case, torch.float64)
    comb = with_row_combinations(obj, steps=9)
    assert comb.C.shape == (2 + 9, 2) and comb.groups.shape == (1, 11) and bool(comb.groups.all())
    y = torch.rand(1000, 2, dtype=torch.float64) * 4 - 2
    assert torch.equal(obj.violation(y), comb.violation(y))
    # exact lower bounds over the segment: each row alone has min 0, the half-half combination 0.5
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    rows = torch.stack([x, 1 - x], 1) @ comb.C.T - comb.d  # (101, 11)
    lower = rows.min(0).values.unsqueeze(0)
    assert not bool(obj.ruled_out(lower[:, :2]))
    assert bool(comb.ruled_out(lower))


def test_midpoint_rows_keep_the_spec_rows_and_one_combination_per_pair():
    from verifier.objective import with_row_combinations

    obj = case_objective(_case(), torch.float64)
    assert obj.midpoint_rows().tolist() == [True] * 3  # no combinations: every row is the spec's own
    comb = with_row_combinations(obj, steps=9)  # polytope 0 has one pair: 9 combinations
    keep = comb.midpoint_rows()
    assert keep.tolist() == [True] * 3 + [False] * 4 + [True] + [False] * 4
    small = comb.select_rows(keep)
    assert small.n_rows == 4 and small.groups.tolist() == [[True, True, False, True], [False, False, True, False]]
    assert torch.allclose(small.C[3], (obj.C[0] + obj.C[1]) / 2) and float(small.d[3]) == 0.5
    y = torch.rand(500, 2, dtype=torch.float64) * 6 - 3
    assert torch.equal(small.violation(y), obj.violation(y))
    assert with_row_combinations(obj, steps=2).midpoint_rows().sum() == 3  # 1/3, 2/3: no midpoint


def test_opposite_rows_get_no_combinations():
    """``|y_1| <= t`` as two rows: their half-half combination is the constant ``-t``, which would stand
    for the polytope's margin on every box where both real rows are below it (reach_prob_density robot:
    the search's order was lost to it); every combination of opposite rows is dominated anyway."""
    A = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    case = Case(np.zeros(2), np.ones(2), (Polytope(A, np.array([0.05, 0.05, -0.1])),))
    obj = with_row_combinations(case_objective(case, torch.float64, torch.device("cpu")))
    extra = obj.C[3:]
    assert extra.shape[0] > 0  # the pairs with the third row are combined
    assert not bool((extra.abs().sum(1) == 0).any())  # no constant row
    assert not bool(((extra[:, 0] == 0) & (extra[:, 2] == 0)).any())  # none from the opposite pair alone
