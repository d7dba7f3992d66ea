"""Input splitting's choice of dimension from the parents' linear bounds (``linear_split_dims``)."""

from __future__ import annotations

import numpy as np
import torch

from verifier.bab.branching import linear_split_dims
from verifier.bab.subproblems import SubproblemBatch
from verifier.objective import case_objective
from vnnlib.spec import Case, Polytope


def _objective(n: int):
    """Two polytopes of one row each over two outputs, on the box [0, 1]^n."""
    polys = [Polytope(np.array([[1.0, 0.0]]), np.array([0.0])), Polytope(np.array([[0.0, 1.0]]), np.array([0.0]))]
    return case_objective(Case(np.zeros(n), np.ones(n), polys), torch.float64)


def _parents(lower, upper, bound) -> SubproblemBatch:
    lower, upper = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    B = lower.shape[0]
    return SubproblemBatch(lower, upper, None, torch.tensor(bound, dtype=torch.float64),
                           torch.zeros(B, dtype=torch.int32))


def test_the_row_to_improve_and_the_width_decide() -> None:
    obj = _objective(3)
    # row 0 is the worse (the one to improve) in parent 0, row 1 in parent 1
    parents = _parents([[0, 0, 0], [0, 0, 0]], [[1, 1, 0.1], [1, 0.5, 1]], [[-2.0, -1.0], [-1.0, -3.0]])
    A = torch.tensor([[[1.0, 3.0, 20.0], [50.0, 0.0, 0.0]],
                      [[0.0, 0.0, 90.0], [-1.0, 4.0, 1.5]]], dtype=torch.float64)
    # parent 0: |a| w on row 0 = (1, 3, 2) -> dim 1; parent 1: row 1 = (1, 2, 1.5) -> dim 1 (the sign of a
    # coefficient does not matter, the other row's large coefficients do not count)
    assert linear_split_dims(obj, parents, A).tolist() == [1, 1]
    A[1, 1, 0] = -3.0
    assert linear_split_dims(obj, parents, A).tolist() == [1, 0]


def test_no_coefficient_falls_back_to_the_widest_and_narrow_dims_wait() -> None:
    obj = _objective(3)
    parents = _parents([[0, 0, 0], [0, 0, 0]], [[0.2, 0.9, 0.5], [1, 1, 1e-4]], [[-1.0, 0.5], [-1.0, 0.5]])
    A = torch.zeros(2, 2, 3, dtype=torch.float64)
    A[1, 0, 2] = 1e6  # dim 2 of parent 1 is too narrow next to the others (``splittable``)
    A[1, 0, 0] = 1.0
    assert linear_split_dims(obj, parents, A).tolist() == [1, 0]
