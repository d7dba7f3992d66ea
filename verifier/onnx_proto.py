"""The ONNX protobuf classes, and the tensor and attribute conversions the importer needs, without
importing the top of the ``onnx`` package.

``import onnx`` registers the ml_dtypes number formats with numpy, which takes about 0.6 s: more than
reading, folding and bounding an ACAS Xu network together.  The message classes live in the package's
generated module ``onnx.onnx_ml_pb2``, which needs only protobuf.  ``proto()`` runs that module under its
own name without the package's ``__init__``; a later ``import onnx`` finds it in ``sys.modules`` and uses
the same classes.  Anything unusual (another onnx layout, a tensor type or storage not handled here) goes
to the ``onnx`` package itself, so the results are those of ``onnx.numpy_helper``/``onnx.helper``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"
_LOCK = threading.Lock()

# TensorProto.DataType -> (little-endian dtype of raw_data, typed field, dtype of that field's values)
_STORAGE: dict[int, tuple[str, str, str]] = {
    1: ("<f4", "float_data", "float32"),  # FLOAT
    11: ("<f8", "double_data", "float64"),  # DOUBLE
    7: ("<i8", "int64_data", "int64"),  # INT64
    6: ("<i4", "int32_data", "int32"),  # INT32
    13: ("<u8", "uint64_data", "uint64"),  # UINT64
    12: ("<u4", "uint64_data", "uint32"),  # UINT32
}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def proto() -> ModuleType:
    """The module holding ``ModelProto``, ``TensorProto``, ... (``onnx.onnx_ml_pb2``)."""
    module = sys.modules.get(_PB2)
    if module is not None:
        return module
    with _LOCK:
        if _PB2 in sys.modules:
            return sys.modules[_PB2]
        try:
            return _load_alone()
        except Exception:  # any other layout of the package: import it whole
            sys.modules.pop(_PB2, None)
            return importlib.import_module(_PB2)


def _load_alone() -> ModuleType:
    package = importlib.util.find_spec("onnx")
    if package is None or not package.submodule_search_locations:
        raise ImportError("onnx is not installed")
    spec = None
    for folder in package.submodule_search_locations:
        spec = importlib.util.spec_from_file_location(_PB2, f"{folder}/onnx_ml_pb2.py")
        if spec is not None:
            break
    if spec is None or spec.loader is None:
        raise ImportError("onnx has no onnx_ml_pb2 module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PB2] = module
    spec.loader.exec_module(module)
    return module


def parse_model(data: bytes) -> Any:
    """The ``ModelProto`` serialized in ``data`` (protobuf's ``DecodeError`` on bad bytes)."""
    model = proto().ModelProto()
    model.ParseFromString(data)
    return model


def uses_external_data(model: Any) -> bool:
    """Whether any initializer or constant attribute of the main graph keeps its data in another file."""
    graph = model.graph
    tensors = list(graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
            tensors.extend(a.tensors)
    return any(t.data_location == _EXTERNAL for t in tensors)


def tensor_array(t: Any) -> np.ndarray:
    """The array of a ``TensorProto``, as ``onnx.numpy_helper.to_array`` gives it."""
    storage = _STORAGE.get(t.data_type)
    if storage is None or t.HasField("segment") or t.data_location == _EXTERNAL or sys.byteorder != "little":
        from onnx import numpy_helper

        return numpy_helper.to_array(t)
    raw_dtype, field, dtype = storage
    dims = tuple(t.dims)
    if t.HasField("raw_data"):
        return np.frombuffer(t.raw_data, dtype=raw_dtype).reshape(dims)
    return np.asarray(getattr(t, field), dtype=dtype).reshape(dims)


_SCALAR = {1: "f", 2: "i", 3: "s", 4: "t", 5: "g"}  # FLOAT, INT, STRING, TENSOR, GRAPH
_LISTS = {6: "floats", 7: "ints", 8: "strings", 9: "tensors", 10: "graphs"}


def attribute_value(a: Any) -> Any:
    """The value of an ``AttributeProto``, as ``onnx.helper.get_attribute_value`` gives it."""
    if not a.ref_attr_name:
        if a.type in _SCALAR:
            return getattr(a, _SCALAR[a.type])
        if a.type in _LISTS:
            return list(getattr(a, _LISTS[a.type]))
    from onnx import helper

    return helper.get_attribute_value(a)
