"""Constants computed at load time carry rigorous error bounds; exact folds stay exact."""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from verifier import constants as K
from verifier.bounds import Domains, crown
from verifier.network import Dense, has_errors
from verifier.onnx_import import load_onnx_model


def _exact(t: torch.Tensor) -> list[Fraction]:
    return [Fraction(float(v)) for v in t.reshape(-1)]


@pytest.mark.parametrize("seed", range(5))
def test_sums_and_products_bound_their_rounding_exactly(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(50, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (50,), generator=gen)
    b = torch.randn(50, generator=gen, dtype=torch.float64)
    for value, err, exact in ((*K.add(a, None, b, None), [x + y for x, y in zip(_exact(a), _exact(b))]),
                              (*K.mul(a, None, b, None), [x * y for x, y in zip(_exact(a), _exact(b))])):
        assert err is not None
        for v, e, x in zip(_exact(value), _exact(err), exact):
            assert abs(v - x) <= e
    # exact operations stay exact: no error bound at all
    assert K.mul(torch.tensor([0.5, 3.0], dtype=torch.float64), None, torch.tensor([3.0, 0.25], dtype=torch.float64),
                 None)[1] is None
    assert K.add(torch.tensor([1.0]), None, torch.tensor([2.0**-20]), None)[1] is None
    assert K.reciprocal(torch.tensor([4.0, 0.5], dtype=torch.float64))[1] is None
    r, e = K.reciprocal(torch.tensor([3.0], dtype=torch.float64))
    assert abs(Fraction(float(r[0])) - Fraction(1, 3)) <= Fraction(float(e[0]))


def _normalised_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x / 3 -> BatchNorm -> Relu -> Gemm: two inexact constants (1/3 and BatchNorm's scale)."""
    rng = np.random.default_rng(0)
    c = {"c": np.array([3.0], np.float32), "W": rng.normal(size=(3, 4)).astype(np.float32),
         "b": rng.normal(size=3).astype(np.float32), "g": rng.uniform(0.5, 2, 4).astype(np.float32),
         "be": rng.normal(size=4).astype(np.float32), "mu": rng.normal(size=4).astype(np.float32),
         "var": rng.uniform(0.5, 2, 4).astype(np.float32), "shp": np.array([1, 4, 1, 1], np.int64)}
    nodes = [helper.make_node("Div", ["x", "c"], ["h0"]), helper.make_node("Reshape", ["h0", "shp"], ["h1"]),
             helper.make_node("BatchNormalization", ["h1", "g", "be", "mu", "var"], ["h2"], epsilon=0.5),
             helper.make_node("Flatten", ["h2"], ["h3"]), helper.make_node("Relu", ["h3"], ["h4"]),
             helper.make_node("Gemm", ["h4", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v, k) for k, v in c.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounds_of_a_point_contain_the_exact_output_of_a_normalised_model(dtype: torch.dtype) -> None:
    model, c = _normalised_model()
    net = load_onnx_model(model, torch.float64).to(dtype=dtype)
    assert has_errors(net)
    # the stored 1/3 is within its bound of the exact 1/3 (a float32 1/3 is off by about 1e-8)
    div = next(n.op for n in net.nodes if hasattr(n.op, "scale_err") and n.op.scale_err is not None)
    for s, e in zip(_exact(div.scale), _exact(div.scale_err)):
        assert abs(s - Fraction(1, 3)) <= e
    getcontext().prec = 60

    def d(name: str, i) -> Decimal:
        return Decimal(float(c[name][i]))

    for x in np.random.default_rng(1).uniform(-2, 2, (20, 4)):
        h = [(Decimal(float(x[i])) / 3 - d("mu", i)) / (d("var", i) + Decimal(0.5)).sqrt() * d("g", i) + d("be", i)
             for i in range(4)]
        y = [sum(Decimal(float(c["W"][j, i])) * max(h[i], Decimal(0)) for i in range(4)) + Decimal(float(c["b"][j]))
             for j in range(3)]
        xt = torch.tensor(x, dtype=dtype)[None]
        res = crown(net, Domains(xt, xt), need_upper=True)
        for j in range(3):
            assert Decimal(float(res.lower[0, j])) <= y[j] <= Decimal(float(res.upper[0, j]))


def test_exact_models_import_without_error_bounds() -> None:
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(W.T.copy(), "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net = load_onnx_model(model)
    assert not has_errors(net) and isinstance(net.nodes[net.output].op, Dense)
    # a cast that rounds is an error; the same values taken as defined are exact again
    rounded = net.to(dtype=torch.float64)
    assert not has_errors(rounded)
    noisy = net.to(dtype=torch.float64)
    noisy = type(noisy)(tuple(n if not isinstance(n.op, Dense) else type(n)(
        type(n.op)(n.op.weight + 1e-12, n.op.bias), n.inputs, n.shape) for n in noisy.nodes), noisy.output)
    assert has_errors(noisy.to(dtype=torch.float32)) and not has_errors(noisy.to(dtype=torch.float32).as_defined())
