"""IR -> ONNX export: onnxruntime and the re-imported IR agree with the original network."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.nets import FAMILIES, Builder, dense_net
from verifier.forward import forward
from verifier.network import Conv, Pad, Reshape
from verifier.onnx_export import save_onnx, to_onnx
from verifier.onnx_import import load_onnx


def _ort(path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip(tmp_path, family: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(hash(family) % 1000)
    net = FAMILIES[family](gen).to(dtype=dtype)
    path = tmp_path / "m.onnx"
    save_onnx(net, path)
    x = torch.randn(16, *net.input_shape, generator=gen, dtype=torch.float64).to(dtype)
    want = forward(net, x).numpy()
    back = load_onnx(path)
    assert back.dtype == dtype and back.input_shape == net.input_shape and back.output_shape == net.output_shape
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(forward(back, x).numpy(), want, rtol=tol, atol=tol)
    if dtype == torch.float64 and any(isinstance(n.op, Conv) for n in net.nodes):
        pytest.skip("onnxruntime's CPU provider has no float64 Conv; re-import checked only")
    np.testing.assert_allclose(_ort(path, x.numpy()).reshape(want.shape), want, rtol=tol, atol=tol)


def test_negative_pad_and_flat_reshape(tmp_path) -> None:
    gen = torch.Generator().manual_seed(3)
    b = Builder((2, 3, 4), gen)
    p = b.add_op(Pad((0, 1, -1, 0, -1, 2), 0.25), (b.last,))  # crops and pads
    b.add_op(Reshape(), (p,), (b.shape(p)[0] * b.shape(p)[1] * b.shape(p)[2],))
    b.dense(3)
    net = b.build()
    save_onnx(net, tmp_path / "p.onnx")
    x = torch.randn(5, 2, 3, 4, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(_ort(tmp_path / "p.onnx", x.numpy()).reshape(5, 3), forward(net, x).numpy(),
                               rtol=1e-10, atol=1e-10)


def test_rejects_other_dtypes() -> None:
    net = dense_net(torch.Generator().manual_seed(0)).to(dtype=torch.float16)
    with pytest.raises(ValueError, match="float32 and float64"):
        to_onnx(net)
