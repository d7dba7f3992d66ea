"""Reading ONNX without the onnx package's top level: the same arrays and attribute values as onnx's own
helpers, and a model read without ``import onnx``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.onnx_proto import attribute_value, parse_model, proto, tensor_array, uses_external_data

ROOT = Path(__file__).resolve().parents[1]

_TYPES = [(TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64), (TensorProto.INT64, np.int64),
          (TensorProto.INT32, np.int32), (TensorProto.UINT32, np.uint32), (TensorProto.UINT64, np.uint64),
          (TensorProto.BOOL, np.bool_), (TensorProto.FLOAT16, np.float16), (TensorProto.INT8, np.int8)]


@pytest.mark.parametrize("elem,dtype", _TYPES)
@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)])
def test_tensor_arrays_are_those_of_numpy_helper(elem, dtype, raw, shape):
    rng = np.random.default_rng(len(shape))
    values = (rng.standard_normal(shape) * 100).astype(dtype)
    if raw:
        t = helper.make_tensor("t", elem, shape, values.tobytes(), raw=True)
    else:
        t = helper.make_tensor("t", elem, shape, values.reshape(-1).tolist())
    got, expected = tensor_array(t), numpy_helper.to_array(t)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_special_float_values_survive_both_storages():
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4028235e38], dtype=np.float32)
    for raw in (True, False):
        data = values.tobytes() if raw else values.tolist()
        got = tensor_array(helper.make_tensor("t", TensorProto.FLOAT, values.shape, data, raw=raw))
        assert got.tobytes() == values.tobytes()


def test_a_tensor_without_its_data_is_an_error():
    for raw in (True, False):
        t = TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[2, 2])
        if raw:
            t.raw_data = np.ones(3, np.float32).tobytes()
        else:
            t.float_data.append(1.0)
        with pytest.raises(ValueError):
            tensor_array(t)


@pytest.mark.parametrize("value", [1.5, 7, "same", [1.0, 2.5], [1, 2, 3], ["a", "b"], np.ones((2, 2), np.float32)])
def test_attribute_values_are_those_of_helper(value):
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    a = helper.make_attribute("x", value)
    got, expected = attribute_value(a), helper.get_attribute_value(a)
    assert type(got) is type(expected) and got == expected


def test_the_message_classes_are_onnx_own():
    import onnx

    assert proto().ModelProto is onnx.ModelProto and proto().TensorProto is onnx.TensorProto
    model = parse_model((ROOT / "models" / "test_small.onnx").read_bytes())
    assert isinstance(model, onnx.ModelProto) and not uses_external_data(model)


def test_a_model_is_read_without_importing_the_onnx_package():
    code = ("import sys; from verifier.onnx_import import load_onnx; "
            f"net = load_onnx({str(ROOT / 'models' / 'test_small.onnx')!r}); "
            "print(len(net.nodes), 'onnx' in sys.modules, 'onnx.onnx_ml_pb2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    n, whole, pb2 = out.stdout.split()
    assert int(n) > 1 and whole == "False" and pb2 == "True"
