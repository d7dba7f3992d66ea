"""Strict counterexample validation through onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.validate import Replayer, snap_into_box, validate
from vnnlib.spec import Case, Polytope, Spec


def _model(path, dtype=np.float32):
    """y = relu(W x + b) with W = [[1, 1], [1, -1]], b = 0: a two-input, two-output net."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    w = numpy_helper.from_array(np.array([[1.0, 1.0], [1.0, -1.0]], dtype=dtype), "W")
    b = numpy_helper.from_array(np.zeros(2, dtype=dtype), "B")
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 2])],
                              [helper.make_tensor_value_info("y", elem, [1, 2])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _spec(strict=False):
    # unsafe: y0 >= 1.5 (written -y0 <= -1.5), inputs in [0, 1]^2
    poly = Polytope(np.array([[-1.0, 0.0]]), np.array([-1.5]), np.array([strict]))
    return Spec((Case(np.zeros(2), np.ones(2), (poly,)),), 2, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_true_counterexample_is_accepted_with_onnxruntime_outputs(tmp_path, dtype):
    rep = Replayer(_model(tmp_path / "m.onnx", dtype))
    cex = validate(rep, _spec(), np.array([0.9, 0.8]))
    # the values as written are float64; the model ran on them cast to its dtype
    assert cex is not None and cex.x.dtype == np.float64 and cex.y.dtype == dtype
    np.testing.assert_allclose(cex.y, [1.7, 0.1], rtol=1e-6)


def test_points_outside_the_unsafe_set_or_the_box_are_rejected(tmp_path):
    rep = Replayer(_model(tmp_path / "m.onnx"))
    assert validate(rep, _spec(), np.array([0.5, 0.5])) is None  # y0 = 1 < 1.5
    assert validate(rep, _spec(), np.array([1.5, 0.5])) is None  # outside the box (not snapped)


def test_strict_rows_are_checked_strictly(tmp_path):
    rep = Replayer(_model(tmp_path / "m.onnx"))
    x = np.array([0.75, 0.75])  # y0 = 1.5 exactly
    assert validate(rep, _spec(strict=False), x) is not None
    assert validate(rep, _spec(strict=True), x) is None


def test_snap_moves_a_rounded_point_back_inside():
    lo = np.array([-0.30353115613746867, 0.1])
    case = Case(lo, lo + 1e-9, (Polytope(np.zeros((0, 1)), np.zeros(0)),))
    x32 = lo.astype(np.float32)  # a float32 candidate, outside the box by its rounding
    x = snap_into_box(x32, case)
    assert x is not None and np.all(x >= case.lower) and np.all(x <= case.upper)
    assert snap_into_box(lo + 1e-3, case) is None  # far outside: not moved


def test_a_box_that_float32_cannot_represent_still_has_counterexamples(tmp_path):
    """Mechanism 3 of the soundness issue: fixed inputs at float64 values that are not float32 numbers.
    Every point of the box is unsafe; the written values (float64, in the box) are the counterexample
    and the float32 model runs on them cast.  The old replay cast first and rejected every point."""
    rep = Replayer(_model(tmp_path / "m.onnx"))
    x0 = 0.9000000000000000222  # not a float32 number
    assert np.float64(np.float32(x0)) != x0
    box = Case(np.array([x0, 0.8]), np.array([x0, 0.8]), (Polytope(np.array([[-1.0, 0.0]]), np.array([-1.5])),))
    cex = validate(rep, Spec((box,), 2, 2), np.array([x0, 0.8]))
    assert cex is not None and cex.x[0] == x0 and cex.x[1] == 0.8
    # a float32 candidate near the fixed value is snapped onto it
    cex = validate(rep, Spec((box,), 2, 2), np.array([x0, 0.8], dtype=np.float32))
    assert cex is not None and cex.x[0] == x0


def test_replayer_opens_onnxruntime_lazily_and_unreadable_models_confirm_nothing(tmp_path):
    """A proof never opens onnxruntime; a model it cannot open confirms no candidate (never sat)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    replayer = Replayer(bad)  # no session yet: nothing is read
    assert "session" not in vars(replayer)
    case = Case(np.zeros(1), np.ones(1), (Polytope(np.ones((1, 1)), np.ones(1), np.zeros(1, bool)),))
    assert validate(replayer, Spec((case,), 1, 1), np.array([0.5])) is None
    assert not replayer.available


def test_written_values_are_the_ones_the_model_ran_on_where_they_lie_in_the_box(tmp_path):
    """A checker that casts the written values to the model's dtype before checking the box (VNN-COMP
    2026's, for VNN-LIB 2.0) sees the same point: each written value is a float32 number when its cast
    stays in the box, and stays float64 only where it cannot (a fixed input float32 cannot represent)."""
    rep = Replayer(_model(tmp_path / "m.onnx"))
    cex = validate(rep, _spec(), np.array([0.9, 0.8]))
    assert cex is not None and np.all(cex.x == cex.x.astype(np.float32))
    assert np.all(cex.x >= 0) and np.all(cex.x <= 1)
    lo = np.nextafter(np.float64(np.float32(0.9)), 1.0)  # just above a float32 number: the cast leaves the box
    box = Case(np.array([lo, 0.5]), np.array([1.0, 1.0]), (Polytope(np.array([[-1.0, 0.0]]), np.array([-1.5])),))
    cex = validate(rep, Spec((box,), 2, 2), np.array([lo, 0.8]))
    assert cex is not None and cex.x[0] == lo and cex.x[1] == np.float32(0.8)
