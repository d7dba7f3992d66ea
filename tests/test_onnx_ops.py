"""ONNX operators that move or sum entries (Slice, Split, Gather, GatherElements, nearest Resize/Upsample,
ConvTranspose, ReduceSum; Neg, Sub, Concat, Squeeze/Unsqueeze with axes as inputs): each against
onnxruntime, then through every analysis (IBP/CROWN, the MILP and default engines, export, the checker)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tests.nets import Builder, check_bounds, gather_index, random_box, sample_box
from tests.onnx_builders import GraphBuilder, onnxruntime_runner, save
from verifier.api import verify
from verifier.bounds import AlphaOptions, Domains, alpha_crown, crown, ibp
from verifier.config import Config
from verifier.errors import ModelError, UnsupportedModelError
from verifier.forward import forward
from verifier.network import Conv, Dense, Gather, Network, Relu
from verifier.onnx_export import save_onnx
from verifier.onnx_import import load_onnx, load_onnx_model
from verifier.result import Status
from vnnlib.spec import Case, Polytope, Spec
from vnnlib.writer import write_spec

Build = Callable[[GraphBuilder, str], str]


def check(model, *, n: int = 6, seed: int = 0) -> Network:
    """Import ``model`` and compare it with onnxruntime on ``n`` random inputs (relative 1e-5); the IR."""
    net = load_onnx_model(model)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)
    run = onnxruntime_runner(model)
    expected = np.stack([run(xi).reshape(-1) for xi in x])
    got = forward(net, torch.from_numpy(x).reshape(n, -1)).reshape(n, -1).numpy()
    assert got.shape == expected.shape
    err = np.abs(got - expected) / (1 + np.abs(expected))
    assert err.max() <= 1e-5, f"max relative error {err.max():.3g}"
    return net


def framed(build: Build, shape: tuple[int, ...] = (1, 2, 4, 4), opset: int = 13, n_out: int = 3):
    """``input -> Conv 1x1 (or Gemm) -> Relu -> build -> Relu -> Flatten -> Gemm``: the operator between
    ReLUs, on a tensor of ``shape``."""
    g = GraphBuilder(list(shape), opset=opset, seed=1)
    if len(shape) == 4:
        w, b = g.const(g.random(shape[1], shape[1], 1, 1)), g.const(g.random(shape[1], scale=0.3))
        h = g.op("Conv", g.input, w, b)
    else:
        h = g.dense(g.input, shape[-1], shape[-1])
    h = g.op("Flatten", g.op("Relu", build(g, g.op("Relu", h))), axis=1)
    n = _flat_size(g, h)
    return g.build(g.dense(h, n, n_out))


def _flat_size(g: GraphBuilder, h: str) -> int:
    """The last dimension of the flattened ``h`` (onnxruntime on the model built so far)."""
    shape = [d.dim_value for d in g.inputs[0].type.tensor_type.shape.dim]
    return int(onnxruntime_runner(g.build(h))(np.zeros(shape, np.float32)).shape[-1])


def _resize(opset: int, scales=None, sizes=None, **attrs) -> Build:
    def build(g: GraphBuilder, h: str) -> str:
        s = g.const(np.asarray(scales, np.float32)) if scales is not None else ""
        if opset < 11:
            return g.op("Resize", h, s, mode="nearest", **attrs)
        roi = g.const(np.zeros(0, np.float32))
        return g.op("Resize", h, roi, s, *([g.ints(sizes)] if sizes is not None else []), mode="nearest", **attrs)
    return build


def _split2(g: GraphBuilder, h: str, *inputs: str, **attrs) -> str:
    """Split into two parts of the same shape, combined as ``relu(a) - b`` (Sub of two computed tensors)."""
    a = g.op("Split", h, *inputs, outputs=2, **attrs)
    return g.op("Sub", g.op("Relu", a), a + "_1")


# name -> (build, input shape, opset)
CASES: dict[str, tuple[Build, tuple[int, ...], int]] = {
    "slice-opset9": (lambda g, h: g.op("Slice", h, starts=[1, 0], ends=[3, 100], axes=[2, 3]), (1, 2, 4, 4), 9),
    "slice-steps": (lambda g, h: g.op("Slice", h, g.ints([1, -1]), g.ints([100, -5]), g.ints([2, 3]),
                                      g.ints([2, -2])), (1, 2, 4, 4), 13),
    "slice-negative-no-axes": (lambda g, h: g.op("Slice", h, g.ints([0, 0, -3, 1]), g.ints([1, 2, -1, 4])),
                               (1, 2, 4, 4), 13),
    "split-attribute": (lambda g, h: _split2(g, h, axis=1, split=[3, 3]), (1, 6), 11),
    "split-input": (lambda g, h: _split2(g, h, g.ints([2, 2]), axis=2), (1, 2, 4, 4), 13),
    "split-equal": (lambda g, h: _split2(g, h, axis=-1), (1, 2, 4, 4), 13),
    "split-num-outputs": (lambda g, h: _split2(g, h, axis=1, num_outputs=2), (1, 2, 4, 4), 18),
    "gather-axis2": (lambda g, h: g.op("Gather", h, g.ints([[0, 3], [-1, 0]]), axis=2), (1, 2, 4, 4), 13),
    "gather-scalar": (lambda g, h: g.op("Gather", h, g.const(np.array(1, np.int64)), axis=1), (1, 2, 4, 4), 13),
    "gather-batch-axis": (lambda g, h: g.op("Gather", h, g.ints([0, 0, 0])), (1, 2, 4, 4), 13),
    "gather-elements": (lambda g, h: g.op("GatherElements", h, g.ints(np.array([[0, 5, 5, 1, 2, 0, -1, 0]])),
                                          axis=1), (1, 6), 13),
    "resize-half-pixel": (_resize(13, scales=[1, 1, 2, 3]), (1, 2, 3, 3), 13),
    "resize-asymmetric-ceil": (_resize(13, scales=[1, 1, 2, 2], coordinate_transformation_mode="asymmetric",
                                       nearest_mode="ceil"), (1, 2, 3, 3), 13),
    "resize-pytorch-prefer-ceil": (_resize(11, scales=[1, 1, 3, 2], nearest_mode="round_prefer_ceil",
                                           coordinate_transformation_mode="pytorch_half_pixel"), (1, 2, 3, 3), 11),
    "resize-tf-half-pixel-floor": (_resize(11, scales=[1, 1, 4, 2], nearest_mode="floor",
                                           coordinate_transformation_mode="tf_half_pixel_for_nn"), (1, 2, 3, 3), 11),
    "resize-sizes": (_resize(13, sizes=[1, 2, 6, 9]), (1, 2, 3, 3), 13),
    "resize-opset10": (_resize(10, scales=[1, 1, 2, 2]), (1, 2, 3, 3), 10),
    "upsample-opset9": (lambda g, h: g.op("Upsample", h, g.const(np.array([1, 1, 2, 3], np.float32)),
                                          mode="nearest"), (1, 2, 3, 3), 9),
    "upsample-opset7": (lambda g, h: g.op("Upsample", h, scales=[1.0, 1.0, 3.0, 2.0]), (1, 2, 3, 3), 7),
    "conv-transpose": (lambda g, h: g.op("ConvTranspose", h, g.const(g.random(2, 3, 3, 3, scale=0.3)),
                                         g.const(g.random(3)), strides=[2, 2], pads=[1, 0, 1, 2]), (1, 2, 3, 3), 13),
    "conv-transpose-groups": (lambda g, h: g.op("ConvTranspose", h, g.const(g.random(2, 2, 3, 2, scale=0.3)),
                                                group=2, strides=[3, 2], dilations=[1, 2], pads=[3, 1, 2, 0],
                                                output_padding=[1, 1]), (1, 2, 3, 3), 13),
    "conv-transpose-stride1": (lambda g, h: g.op("ConvTranspose", h, g.const(g.random(2, 2, 2, 2, scale=0.3)),
                                                 pads=[1, 0, 0, 1]), (1, 2, 3, 3), 13),
    "reduce-sum-attribute": (lambda g, h: g.op("ReduceSum", h, axes=[1, -1], keepdims=0), (1, 2, 4, 4), 11),
    "reduce-sum-input": (lambda g, h: g.op("ReduceSum", h, g.ints([2])), (1, 2, 4, 4), 13),
    "reduce-sum-all": (lambda g, h: g.op("Concat", g.op("ReduceSum", h), h, axis=-1), (1, 5), 13),
    "reduce-sum-rank3": (lambda g, h: g.op("ReduceSum", g.op("Reshape", h, g.ints([1, 3, 4])), g.ints([-1])),
                         (1, 12), 13),
    "reduce-sum-noop": (lambda g, h: g.op("ReduceSum", h, g.ints([]), noop_with_empty_axes=1), (1, 2, 4, 4), 13),
    "reduce-sum-scalar": (lambda g, h: g.op("Unsqueeze", g.op("ReduceSum", h, keepdims=0), g.ints([0, 1])),
                          (1, 2, 4, 4), 13),
    "neg": (lambda g, h: g.op("Sub", g.op("Neg", h), h), (1, 2, 4, 4), 13),
    "concat-batch-axis": (lambda g, h: g.op("Concat", h, g.op("Neg", h), axis=0), (1, 2, 4, 4), 13),
    "concat-axis1": (lambda g, h: g.op("Concat", h, g.op("Neg", h), axis=1), (1, 2, 4, 4), 13),
    "concat-axis2": (lambda g, h: g.op("Concat", g.op("Neg", h), h, axis=2), (1, 2, 4, 4), 13),
    "concat-axis3": (lambda g, h: g.op("Concat", h, g.op("Neg", h), h, axis=-1), (1, 2, 4, 4), 13),
    "squeeze-unsqueeze-inputs": (lambda g, h: g.op("Unsqueeze", g.op("Squeeze", g.op("Unsqueeze", h, g.ints([2])),
                                                                      g.ints([2])), g.ints([0, -1])), (1, 6), 13),
}


def case_model(name: str):
    build, shape, opset = CASES[name]
    return framed(build, shape, opset)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_onnxruntime(name: str) -> None:
    net = check(case_model(name))
    assert net.relu_indices


def test_selections_become_gathers_and_sums_dense() -> None:
    kinds = {name: {type(n.op).__name__ for n in load_onnx_model(case_model(name)).nodes} for name in CASES}
    for name in ("slice-steps", "split-input", "gather-axis2", "gather-elements", "resize-half-pixel",
                 "upsample-opset7"):
        assert "Gather" in kinds[name], name
    assert {"Gather", "Conv"} <= kinds["conv-transpose"]
    assert "Gather" not in kinds["conv-transpose-stride1"]  # only the Conv's padding
    assert "Conv" in kinds["reduce-sum-input"] and "Dense" in kinds["reduce-sum-rank3"]


# ---------------------------------------------------------------- every analysis on the imported nets


ANALYSED = ["slice-steps", "split-input", "gather-axis2", "gather-elements", "resize-half-pixel",
            "conv-transpose", "conv-transpose-groups", "reduce-sum-input", "reduce-sum-rank3", "concat-axis3"]


@pytest.mark.parametrize("name", ANALYSED)
def test_bounds_contain_samples(name: str) -> None:
    net = load_onnx_model(case_model(name)).to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    lo, hi = random_box(gen, net.n_inputs, 2, width=0.4)
    xs = sample_box(gen, lo, hi, 300)
    C = torch.randn(2, 3, net.n_outputs, generator=gen, dtype=torch.float64)
    d = torch.zeros(2, 3, dtype=torch.float64)
    dom = Domains(lo, hi)
    for res in (ibp(net, dom, C, d), crown(net, dom, C, d, need_upper=True)):
        assert torch.isfinite(res.lower).all()
        check_bounds(net, None, res, C, d, xs, 1e-9)
    point = crown(net, Domains(lo, lo.clone()), need_upper=True)
    torch.testing.assert_close(point.lower, forward(net, lo).flatten(1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_with_repeats_before_a_relu_is_sound(dtype: torch.dtype) -> None:
    """An entry read four times, a -1, into a ReLU: the backward pass's sums (with rounding slack)."""
    gen = torch.Generator().manual_seed(2)
    b = Builder((5,), gen)
    b.dense(12)
    b.add_op(Gather(gather_index(12)), (b.last,), (3, 4))
    b.relu()
    b.dense(6)
    b.relu()
    b.dense(2)
    net = b.build(dtype=dtype)
    assert isinstance(net.nodes[3].op, Relu) and net.nodes[2].op.repeats == 4
    lo, hi = random_box(gen, 5, 3, dtype=torch.float64, width=2.0)
    lo, hi = lo.to(dtype), hi.to(dtype)
    xs = sample_box(gen, lo.double(), hi.double(), 400)
    C = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64).to(dtype)
    d = torch.zeros(3, 2, dtype=dtype)
    dom = Domains(lo, hi)
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    for res in (ibp(net, dom, C, d), crown(net, dom, C, d, need_upper=True),
                alpha_crown(net, dom, C, d, AlphaOptions(iterations=5))):
        check_bounds(net, None, res, C, d, xs, rtol)


def _spec(net: Network, threshold: float, lo: np.ndarray, hi: np.ndarray) -> Spec:
    """Unsafe: ``Y_0 - Y_1 <= threshold`` over the box."""
    A = np.zeros((1, net.n_outputs))
    A[0, 0], A[0, 1] = 1.0, -1.0
    return Spec((Case(lo, hi, (Polytope(A, np.array([threshold])),)),), net.n_inputs, net.n_outputs)


def _minimum(net: Network, lo: np.ndarray, hi: np.ndarray) -> float:
    """The exact minimum of ``Y_0 - Y_1`` over the box (HiGHS's MILP on the network's encoding)."""
    from dataclasses import replace

    from verifier.exact.encoding import encode_network, linear_objective
    from verifier.exact.highs import MipStatus, solve_mip

    enc = encode_network(net, lo, hi)
    c = np.zeros(net.n_outputs)
    c[0], c[1] = 1.0, -1.0
    cost, offset = linear_objective(enc, c)
    res = solve_mip(replace(enc.problem, cost=cost, offset=offset), 30.0)
    assert res.status is MipStatus.FEASIBLE
    return float(res.objective)


@pytest.mark.parametrize("name,width", [("split-input", 0.4), ("gather-elements", 0.6), ("resize-half-pixel", 0.6),
                                        ("conv-transpose", 0.4), ("reduce-sum-input", 0.1)])
def test_engines_decide_a_tiny_spec(tmp_path, name: str, width: float) -> None:
    """0.2 % above the exact minimum of ``Y_0 - Y_1`` over a box: sat; 0.2 % below: unsat, for the MILP
    engine and the default one (branch and bound runs on most); the default engine's unsat is also
    certified by the independent checker."""
    model = save(case_model(name), tmp_path / "m.onnx")
    net = load_onnx(model, dtype=torch.float64)
    centre = np.random.default_rng(0).standard_normal(net.n_inputs)
    lo, hi = centre - width, centre + width
    best = _minimum(net, lo, hi)
    gap = 0.002 * (1 + abs(best))
    above, below = tmp_path / "above.vnnlib", tmp_path / "below.vnnlib"
    above.write_text(write_spec(_spec(net, best + gap, lo, hi)))
    below.write_text(write_spec(_spec(net, best - gap, lo, hi)))
    for engine in ("milp", "auto"):
        sat = verify(model, above, timeout=60, config=Config(engine=engine))
        assert sat.status is Status.SAT, (engine, sat)
        unsat = verify(model, below, timeout=60, config=Config(engine=engine, certify=engine == "auto"))
        assert unsat.status is Status.UNSAT, (engine, unsat)


@pytest.mark.parametrize("name", ANALYSED + ["split-equal", "upsample-opset9"])
def test_export_round_trips(tmp_path, name: str) -> None:
    net = load_onnx_model(case_model(name))
    path = tmp_path / "e.onnx"
    save_onnx(net, path)
    back = load_onnx(path)
    x = torch.randn(5, *net.input_shape, generator=torch.Generator().manual_seed(0))
    want = forward(net, x).numpy()
    np.testing.assert_allclose(forward(back, x).numpy(), want, rtol=1e-6, atol=1e-6)
    run = onnxruntime_runner(path)
    got = np.stack([run(xi[None].numpy()).reshape(want.shape[1:]) for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- folding


def test_slice_of_a_dense_is_a_dense_of_its_rows() -> None:
    g = GraphBuilder([1, 4])
    h = g.op("Slice", g.dense(g.input, 4, 8), g.ints([1]), g.ints([7]), g.ints([1]), g.ints([2]))
    net = check(g.build(g.dense(g.op("Relu", h), 3, 2)))
    assert [type(n.op).__name__ for n in net.nodes] == ["Input", "Dense", "Relu", "Dense"]
    assert net.nodes[1].op.weight.shape == (3, 4)


def test_chained_selections_become_one_gather_and_identities_vanish() -> None:
    g = GraphBuilder([1, 2, 4, 4])
    h = g.op("Relu", g.input)
    h = g.op("Slice", h, g.ints([0]), g.ints([100]), g.ints([3]))  # everything: nothing
    h = g.op("Transpose", g.op("Slice", h, g.ints([1]), g.ints([4]), g.ints([2])), perm=[0, 3, 1, 2])
    h = g.op("Gather", g.op("Reshape", h, g.ints([1, -1])), g.ints([0, 5, 5, 7]), axis=1)
    net = check(g.build(g.op("Relu", h)))
    assert [type(n.op).__name__ for n in net.nodes] == ["Input", "Relu", "Gather", "Relu"]


def test_constant_subgraphs_with_the_new_operators_are_evaluated_at_load() -> None:
    g = GraphBuilder([1, 2, 3])
    c = g.const(g.random(4, 2, 3))
    part = g.op("Slice", c, g.ints([1]), g.ints([2]), g.ints([0]))  # (1, 2, 3)
    a, _ = (s := g.op("Split", part, g.ints([1, 1]), axis=1, outputs=2)), s + "_1"
    shift = g.op("Gather", g.op("ReduceSum", c, g.ints([0]), keepdims=1), g.ints([0]), axis=1)  # (1, 1, 3)
    h = g.op("Add", g.op("Add", g.input, part), g.op("Mul", shift, a))
    up = g.op("Resize", g.const(np.arange(3, dtype=np.float32).reshape(1, 1, 3)), "",
              g.const(np.array([1, 2, 1], np.float32)), mode="nearest")  # (1, 2, 3)
    net = check(g.build(g.op("Relu", g.op("Add", h, up))))
    assert [type(n.op).__name__ for n in net.nodes] == ["Input", "Scale", "Relu"]


# ---------------------------------------------------------------- unsupported variants: one line each


@pytest.mark.parametrize("build,needle", [
    (lambda g, h: g.op("Resize", h, "", g.const(np.array([1, 1, 2, 2], np.float32)), mode="linear"),
     "Resize (node 'bad': mode=linear"),
    (lambda g, h: g.op("Resize", h, "", g.const(np.array([1, 1, 1.5, 2], np.float32)), mode="nearest"),
     "only integer upsampling factors"),
    (lambda g, h: g.op("Resize", h, "", g.const(np.array([1, 1, 0.5, 1], np.float32)), mode="nearest"),
     "only integer upsampling factors"),
    (lambda g, h: g.op("Resize", h, "", g.const(np.array([1, 1, 2, 2], np.float32)), mode="nearest",
                       coordinate_transformation_mode="align_corners"), "coordinate_transformation_mode=align_corners"),
    (lambda g, h: g.op("Upsample", h, g.const(np.array([1, 1, 2, 2], np.float32)), mode="linear"), "mode=linear"),
    (lambda g, h: g.op("GatherElements", h, h, axis=1), "must be a constant"),
    (lambda g, h: g.op("Gather", h, g.op("Cast", h, to=7), axis=1), "Cast (node"),
    (lambda g, h: g.op("ConvTranspose", h, g.const(g.random(2, 2, 3, 3)), output_shape=[7, 7]), "output_shape"),
    (lambda g, h: g.op("ConvTranspose", h, g.const(g.random(2, 2, 3)), strides=[2]), "1-D transposed convolution"),
])
def test_unsupported_variants_are_one_line(build: Build, needle: str) -> None:
    g = GraphBuilder([1, 2, 3, 3] if "1-D" not in needle else [1, 2, 3])
    h = build(g, g.op("Relu", g.input))
    g.nodes[-1].name = "bad"
    with pytest.raises(UnsupportedModelError) as e:
        load_onnx_model(g.build(g.op("Relu", h)))
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg


@pytest.mark.parametrize("build,needle", [
    (lambda g, h: g.op("Gather", h, g.ints([0, 4]), axis=2), "(Gather) is malformed"),
    (lambda g, h: g.op("Slice", h, g.ints([0]), g.ints([2]), g.ints([7])), "(Slice) is malformed"),
    (lambda g, h: g.op("Resize", h, "", g.const(np.array([1, 2], np.float32)), mode="nearest"), "needs scales"),
])
def test_malformed_parameters_are_one_line_model_errors(build: Build, needle: str) -> None:
    g = GraphBuilder([1, 2, 3, 3])
    with pytest.raises(ModelError) as e:
        load_onnx_model(g.build(g.op("Relu", build(g, g.op("Relu", g.input)))))
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)


def test_reduce_sum_weights_are_ones() -> None:
    """ReduceSum is a Conv of ones on (C, H, W) tensors, else a Dense of zeros and ones."""
    for name, kind in (("reduce-sum-attribute", Conv), ("reduce-sum-input", Conv), ("reduce-sum-rank3", Dense)):
        build, shape, opset = CASES[name]
        net = load_onnx_model(framed(build, shape, opset))
        ones = {1.0} if kind is Conv else {0.0, 1.0}
        assert any(isinstance(n.op, kind) and set(torch.unique(n.op.weight).tolist()) == ones for n in net.nodes), name


def test_lp_leaves_whose_split_signs_contradict_are_closed_by_a_farkas_ray(tmp_path) -> None:
    """A wider box on the ReduceSum net: thousands of ReLU-splitting leaves are empty (their split signs
    contradict). HiGHS calls their LP infeasible, and its 'duals' there certify nothing; the Farkas ray,
    recomputed rigorously (weights 0, the pre-activations' coefficients from the ray), closes them."""
    model = save(case_model("reduce-sum-input"), tmp_path / "m.onnx")
    net = load_onnx(model, dtype=torch.float64)
    centre = np.random.default_rng(0).standard_normal(net.n_inputs)
    lo, hi = centre - 0.25, centre + 0.25
    best = _minimum(net, lo, hi)
    below = tmp_path / "below.vnnlib"
    below.write_text(write_spec(_spec(net, best - 0.002 * (1 + abs(best)), lo, hi)))
    result = verify(model, below, timeout=90)  # the milp engine certifies HiGHS's answer by the same search
    assert result.status is Status.UNSAT, (result.status, result.message)
