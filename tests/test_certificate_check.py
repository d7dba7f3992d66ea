"""The proof-certificate format and its independent checker, on tiny hand-built nets whose truth we know."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.nets import FAMILIES, Builder, gather_index, sample_box
from tests.onnx_builders import GraphBuilder, save
from verifier.certificate import (
    CaseProof,
    Proof,
    ProofFormatError,
    UnsupportedCheckError,
    check_proof,
    empty_case_proof,
    load_proof,
    proof_meta,
    save_proof,
)
from verifier.certificate import check as checker
from verifier.forward import forward_all
from verifier.network import Add, AvgPool, Concat, Gather, MaxPool, Network, Pad, Relu, Reshape, Scale, Transpose

REPO = Path(__file__).resolve().parents[1]

ABS = [([[1.0], [-1.0]], [0.0, 0.0]), ([[1.0, 1.0]], [0.0])]  # y = relu(x) + relu(-x) = |x|


# ---------------------------------------------------------------- builders


def dense_model(path: Path, layers, n_in: int) -> Path:
    """Gemm layers with a ReLU between consecutive ones (float64 weights, so exact)."""
    g = GraphBuilder([1, n_in], dtype=np.float64)
    h = g.input
    for k, (W, b) in enumerate(layers):
        h = g.op("Gemm", h, g.const(np.asarray(W, float)), g.const(np.asarray(b, float)), transB=1)
        if k < len(layers) - 1:
            h = g.op("Relu", h)
    return save(g.build(h), path)


def forward(layers, X: np.ndarray) -> np.ndarray:
    h = X
    for k, (W, b) in enumerate(layers):
        h = h @ np.asarray(W, float).T + np.asarray(b, float)
        if k < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def spec_file(path: Path, cases, n_in: int, n_out: int) -> Path:
    """``cases``: ``[(lower, upper, [polytope, ...])]``, a polytope a list of atoms like ``"(<= Y_0 -0.1)"``."""
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    terms = []
    for lo, hi, polys in cases:
        box = " ".join(f"(>= X_{i} {float(lo[i])!r}) (<= X_{i} {float(hi[i])!r})" for i in range(n_in))
        terms += [f"(and {box} {' '.join(p)})" for p in polys]
    lines.append(f"(assert (or {' '.join(terms)}))")
    path.write_text("\n".join(lines) + "\n")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def close(node: int, poly: int = 0, w=(1.0,), alpha: int = -1, beta: int = -1, on_box: bool = False) -> tuple:
    return node, poly, w, alpha, beta, on_box


def case(kind, arg=None, point=None, box=None, closes=(), alpha=None, beta=None, boxes=None, cuts=(), R=1,
         n_in=1, H=2) -> dict:
    """A case's arrays (the tree in preorder; ``closes`` from ``close``; ``cuts`` as (node, poly, weights))."""
    N = len(kind)
    arrays = empty_case_proof(n_in, R, H).arrays()
    arrays.update(kind=np.array(kind, np.int8), arg=np.array(arg if arg is not None else [-1] * N, np.int64),
                  point=np.array(point if point is not None else [np.nan] * N, np.float64),
                  box=np.array(box if box is not None else [-1] * N, np.int64))
    if closes:
        node, poly, w, al, be, ob = zip(*closes)
        arrays.update(close_node=np.array(node, np.int64), close_poly=np.array(poly, np.int64),
                      close_weights=np.array(w, np.float64).reshape(len(closes), R),
                      close_alpha=np.array(al, np.int64), close_beta=np.array(be, np.int64),
                      close_on_box=np.array(ob, bool), close_nu=np.full(len(closes), -1, np.int64))
    if alpha is not None:
        arrays["alpha"] = np.array(alpha, np.float32).reshape(-1, H)
    if beta is not None:
        arrays["beta"] = np.array(beta, np.float32).reshape(-1, H)
    if boxes is not None:
        arrays["box_lower"] = np.array([b[0] for b in boxes], np.float64).reshape(-1, n_in)
        arrays["box_upper"] = np.array([b[1] for b in boxes], np.float64).reshape(-1, n_in)
    if cuts:
        node, poly, w = zip(*cuts)
        arrays.update(contract_node=np.array(node, np.int64), contract_poly=np.array(poly, np.int64),
                      contract_weights=np.array(w, np.float64).reshape(len(cuts), R))
    return arrays


def proof(model: Path, spec: Path, cases: list[dict], relu_sizes) -> Proof:
    return Proof.from_arrays(proof_meta(sha(model), sha(spec), len(cases), relu_sizes), cases)


def uniform_tree(depth: int, lower, upper) -> tuple[list, list, list]:
    """A full tree of input splits at the midpoints (dimensions in turn), in preorder."""
    kind, arg, point = [], [], []

    def grow(d: int, lo: np.ndarray, hi: np.ndarray) -> None:
        if d == depth:
            kind.append(0), arg.append(-1), point.append(np.nan)
            return
        j = d % lo.size
        p = (lo[j] + hi[j]) / 2
        kind.append(1), arg.append(j), point.append(p)
        grow(d + 1, lo, np.where(np.arange(lo.size) == j, p, hi))
        grow(d + 1, np.where(np.arange(lo.size) == j, p, lo), hi)

    grow(0, np.asarray(lower, float), np.asarray(upper, float))
    return kind, arg, point


@pytest.fixture
def abs_files(tmp_path):
    """``y = |x|`` on ``x in [-1, 2]``, unsafe ``y <= -0.1`` (the property holds)."""
    model = dense_model(tmp_path / "abs.onnx", ABS, 1)
    spec = spec_file(tmp_path / "abs.vnnlib", [([-1.0], [2.0], [["(<= Y_0 -0.1)"]])], 1, 1)
    return model, spec


@pytest.fixture
def no_interval(monkeypatch):
    """The checker without its interval bound of the spec rows, so that a test exercises the backward pass
    alone (``|x| >= 0`` is the interval bound's on the examples below)."""
    from verifier.certificate import check

    def nothing(cc, bd, pos, c, const, slack, under):
        return np.full(pos.shape[0], -np.inf), np.zeros(pos.shape[0])

    monkeypatch.setattr(check, "_interval_rows", nothing)


def test_the_interval_bound_of_the_rows_closes_what_it_proves(abs_files):
    model, spec = abs_files
    r = check_proof(model, spec, proof(model, spec, [case([0], closes=[close(0)])], [2]))
    assert r.valid, r.reason


SPLIT_AT_0 = dict(kind=[1, 0, 0], arg=[0, -1, -1], point=[0.0, np.nan, np.nan], closes=[close(1), close(2)])
# z_0 = x split: inactive child (x <= 0) closes by CROWN; the active child needs beta_0 = 1 to cancel y >= x
RELU_SPLIT = dict(kind=[2, 0, 0], arg=[0, -1, -1], closes=[close(1), close(2, beta=0)], beta=[[1.0, 0.0]])


# ---------------------------------------------------------------- valid certificates


def test_root_leaf_closed_by_adaptive_crown(tmp_path):
    model = dense_model(tmp_path / "abs.onnx", ABS, 1)
    spec = spec_file(tmp_path / "p.vnnlib", [([-1.0], [2.0], [["(<= Y_0 -1.5)"]])], 1, 1)  # CROWN: y >= x >= -1
    r = check_proof(model, spec, proof(model, spec, [case([0], closes=[close(0)])], [2]))
    assert r.valid, r.reason
    assert (r.cases, r.nodes, r.leaves, r.closures) == (1, 1, 1, 1)


def test_input_split_proves_what_the_root_cannot(abs_files, no_interval):
    model, spec = abs_files
    root = check_proof(model, spec, proof(model, spec, [case([0], closes=[close(0)])], [2]))
    assert not root.valid and "does not rule out polytope 0 at node 0" in root.reason
    r = check_proof(model, spec, proof(model, spec, [case(**SPLIT_AT_0)], [2]))
    assert r.valid, r.reason
    assert (r.nodes, r.leaves, r.closures) == (3, 2, 2)


def test_relu_split_needs_its_multiplier(abs_files, no_interval, tmp_path):
    model, spec = abs_files
    r = check_proof(model, spec, proof(model, spec, [case(**RELU_SPLIT)], [2]))
    assert r.valid, r.reason
    no_beta = dict(RELU_SPLIT, closes=[close(1), close(2)])
    r = check_proof(model, spec, proof(model, spec, [case(**no_beta)], [2]))
    assert not r.valid and "at node 2" in r.reason
    # a certificate given as a file path is read with load_proof
    save_proof(tmp_path / "p.npz", proof(model, spec, [case(**RELU_SPLIT)], [2]))
    assert check_proof(model, spec, tmp_path / "p.npz").valid


@pytest.fixture
def contract_files(tmp_path):
    """``y0 = x`` (an always active ReLU), ``y1 = |x|`` on ``[-2, 1]``; unsafe: ``y0 >= 0.5 and y1 <= 0.4``."""
    layers = [([[1.0], [1.0], [-1.0]], [5.0, 0.0, 0.0]), ([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [-5.0, 0.0])]
    model = dense_model(tmp_path / "c.onnx", layers, 1)
    spec = spec_file(tmp_path / "c.vnnlib", [([-2.0], [1.0], [["(>= Y_0 0.5)", "(<= Y_1 0.4)"]])], 1, 2)
    return model, spec


# the cut -y0 + 0.5 <= 0 contracts [-2, 1] to [0.5, 1]; there, relu(x) >= x (slope 1) gives y1 - 0.4 >= 0.1
CONTRACT = dict(kind=[0], box=[0], boxes=[([0.5 - 1e-9], [1.0])], cuts=[(0, 0, [1.0, 0.0])],
                closes=[close(0, w=[0.0, 1.0], alpha=0, on_box=True)], alpha=[[0.0, 1.0, 0.0]], R=2, H=3)


def test_contraction_then_closure_on_the_contracted_box(contract_files):
    model, spec = contract_files
    r = check_proof(model, spec, proof(model, spec, [case(**CONTRACT)], [3]))
    assert r.valid, r.reason
    # the same closure over the whole box fails: the contraction did the work
    whole = dict(CONTRACT, closes=[close(0, w=[0.0, 1.0], alpha=0)])
    assert not check_proof(model, spec, proof(model, spec, [case(**whole)], [3])).valid


def test_children_start_from_the_contracted_box(contract_files):
    model, spec = contract_files
    tree = dict(CONTRACT, kind=[1, 0, 0], arg=[0, -1, -1], point=[0.75, np.nan, np.nan], box=[0, -1, -1],
                closes=[close(1, w=[0.0, 1.0]), close(2, w=[0.0, 1.0])])
    r = check_proof(model, spec, proof(model, spec, [case(**tree)], [3]))
    assert r.valid, r.reason
    outside = dict(tree, point=[0.3, np.nan, np.nan])  # inside the case box, outside the contracted one
    r = check_proof(model, spec, proof(model, spec, [case(**outside)], [3]))
    assert not r.valid and "splits input 0 at 0.3, outside" in r.reason


def test_two_cases_with_two_polytopes(tmp_path):
    model = dense_model(tmp_path / "abs.onnx", ABS, 1)
    spec = spec_file(tmp_path / "s.vnnlib", [([-1.0], [0.0], [["(<= Y_0 -0.1)"], ["(>= Y_0 5)"]]),
                                             ([0.0], [2.0], [["(<= Y_0 -0.1)"]])], 1, 1)
    first = case([0], closes=[close(0, 0), close(0, 1)])
    r = check_proof(model, spec, proof(model, spec, [first, case([0], closes=[close(0)])], [2]))
    assert r.valid, r.reason
    assert (r.cases, r.nodes, r.closures) == (2, 2, 3)
    r = check_proof(model, spec, proof(model, spec, [case([0], closes=[close(0, 0)]), case([0], closes=[close(0)])],
                                       [2]))
    assert not r.valid and r.reason == "case 0: leaf node 0 leaves polytope(s) [1] open"
    r = check_proof(model, spec, proof(model, spec, [first, case([0])], [2]))
    assert not r.valid and r.reason.startswith("case 1: leaf node 0")


def test_strict_row_at_an_exact_zero_bound(tmp_path, no_interval):
    # y = relu(x) on [-1, -0.5] is exactly 0; every product of the bound has a zero factor, so it is exact
    model = dense_model(tmp_path / "r.onnx", [([[1.0]], [0.0]), ([[1.0]], [0.0])], 1)
    strict = spec_file(tmp_path / "lt.vnnlib", [([-1.0], [-0.5], [["(< Y_0 0)"]])], 1, 1)
    r = check_proof(model, strict, proof(model, strict, [case([0], closes=[close(0)], H=1)], [1]))
    assert r.valid, r.reason
    loose = spec_file(tmp_path / "le.vnnlib", [([-1.0], [-0.5], [["(<= Y_0 0)"]])], 1, 1)  # x = -1 violates it
    r = check_proof(model, loose, proof(model, loose, [case([0], closes=[close(0)], H=1)], [1]))
    assert not r.valid and "does not rule out polytope 0" in r.reason


# ---------------------------------------------------------------- tampering


def _mutated(base: dict, **changes) -> dict:
    return dict(base, **changes)


TAMPERED = {
    "leaf removed": (SPLIT_AT_0, dict(kind=[1, 0], arg=[0, -1], point=[0.0, np.nan], closes=[close(1)]),
                     "malformed: node 0 misses a child"),
    "node added": (SPLIT_AT_0, dict(kind=[1, 0, 0, 0], arg=[0, -1, -1, -1], point=[0.0] + [np.nan] * 3),
                   "malformed: the tree ends before node 3"),
    "closure dropped": (SPLIT_AT_0, dict(closes=[close(1)]), "leaf node 2 leaves polytope(s) [0] open"),
    "point outside the box": (SPLIT_AT_0, dict(point=[2.5, np.nan, np.nan]), "outside"),
    "point NaN": (SPLIT_AT_0, dict(point=[np.nan, np.nan, np.nan]), "outside"),
    "input dimension out of range": (SPLIT_AT_0, dict(arg=[1, -1, -1]), "names no input"),
    "ReLU split flipped": (RELU_SPLIT, dict(closes=[close(1, beta=0), close(2)]), "at node 1"),
    "ReLU split twice": (RELU_SPLIT, dict(kind=[2, 2, 0, 0, 0], arg=[0, 0, -1, -1, -1],
                                          closes=[close(2), close(3), close(4, beta=0)]),
                         "splits neuron 0 again"),
    "slope above 1": (RELU_SPLIT, dict(closes=[close(1), close(2, beta=0, alpha=0)], alpha=[[1.5, 0.0]]),
                      "slope is outside [0, 1]"),
    "slope NaN": (RELU_SPLIT, dict(alpha=[[np.nan, 0.0]]), "slope is outside [0, 1]"),
    "negative multiplier": (RELU_SPLIT, dict(beta=[[-1.0, 0.0]]), "multiplier is negative"),
    "multiplier on an unsplit neuron": (RELU_SPLIT, dict(beta=[[1.0, 0.5]]), "on an unsplit neuron"),
    "negative weight": (SPLIT_AT_0, dict(closes=[close(1), close(2, w=[-1.0])]), "weights"),
    # all-zero weights are allowed (a Farkas closure of an empty region) but bound 0 here: not positive
    "zero weights": (SPLIT_AT_0, dict(closes=[close(1), close(2, w=[0.0])]), "does not rule out"),
    "slope row out of range": (SPLIT_AT_0, dict(closes=[close(1), close(2, alpha=0)]), "names no slope row"),
    "polytope out of range": (SPLIT_AT_0, dict(closes=[close(1), close(2, poly=1)]), "names no polytope"),
    "closure on a box the node lacks": (SPLIT_AT_0, dict(closes=[close(1), close(2, on_box=True)]),
                                        "without one"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_tampered_certificates_are_rejected(abs_files, no_interval, name):
    model, spec = abs_files
    base, changes, reason = TAMPERED[name]
    assert check_proof(model, spec, proof(model, spec, [case(**base)], [2])).valid
    r = check_proof(model, spec, proof(model, spec, [case(**_mutated(base, **changes))], [2]))
    assert not r.valid and reason in r.reason, r.reason


def test_a_contracted_box_smaller_than_the_hull_is_rejected(contract_files):
    model, spec = contract_files
    small = dict(CONTRACT, boxes=[([0.6], [1.0])])
    r = check_proof(model, spec, proof(model, spec, [case(**small)], [3]))
    assert not r.valid and "does not contain the hull" in r.reason


def test_another_model_or_spec(abs_files, tmp_path):
    model, spec = abs_files
    good = proof(model, spec, [case(**SPLIT_AT_0)], [2])
    # y = relu(x) - 0.2 relu(-x) is -0.2 at x = -1: the property is false for this model
    other = dense_model(tmp_path / "other.onnx", [ABS[0], ([[1.0, -0.2]], [0.0])], 1)
    r = check_proof(other, spec, good)
    assert not r.valid and r.reason == "certificate is for another model (sha256 differs)"
    forged = Proof(dict(good.meta, model_sha256=sha(other)), good.cases)
    r = check_proof(other, spec, forged)
    assert not r.valid and "does not rule out polytope 0 at node 1" in r.reason
    other_spec = spec_file(tmp_path / "o.vnnlib", [([-1.0], [2.0], [["(<= Y_0 -0.2)"]])], 1, 1)
    r = check_proof(model, other_spec, good)
    assert not r.valid and r.reason == "certificate is for another spec (sha256 differs)"
    r = check_proof(model, spec, Proof(dict(good.meta, relu_sizes=[3]), good.cases))
    assert not r.valid and "ReLU layer sizes" in r.reason


# ---------------------------------------------------------------- the file format


def test_format_round_trip_and_errors(abs_files, tmp_path):
    model, spec = abs_files
    p = proof(model, spec, [case(**RELU_SPLIT)], [2])
    path = tmp_path / "cert.npz"
    save_proof(path, p)
    back = load_proof(path)
    assert back.meta == p.meta
    for k, v in p.cases[0].arrays().items():
        got = back.cases[0].arrays()[k]
        assert got.dtype == v.dtype and np.array_equal(got, v, equal_nan=True), k

    def rewrite(**edit) -> Path:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        data.update(edit)
        out = tmp_path / "edited.npz"
        with open(out, "wb") as f:
            np.savez_compressed(f, **{k: v for k, v in data.items() if v is not None})
        return out

    bad = {
        "version": (dict(meta=np.array(json.dumps(dict(p.meta, version=3)))), "unsupported certificate version 3"),
        "format": (dict(meta=np.array(json.dumps(dict(p.meta, format="x")))), "not a relu-verifier-proof"),
        "missing": ({"case0/box": None}, "case 0: missing 'box'"),
        "dtype": ({"case0/kind": np.zeros(3, np.int64)}, "'kind' must be a 1-d int8 array"),
        "shape": ({"case0/arg": np.zeros(2, np.int64)}, "different lengths"),
        "extra case": ({"case1/kind": np.zeros(1, np.int8)}, "unexpected arrays"),
        # a lemma group: its rows are required, and groups are numbered from 0
        "lemma rows": ({f"case0/lemma0/{k}": v for k, v in p.cases[0].arrays().items()},
                       "case 0 lemma 0: 'rows_layer' missing"),
        "lemma number": ({"case0/lemma1/kind": np.zeros(1, np.int8)}, "not numbered 0, 1"),
        "lemma name": ({"case0/lemmax/kind": np.zeros(1, np.int8)}, "unknown array 'lemmax/kind'"),
    }
    for edit, message in bad.values():
        with pytest.raises(ProofFormatError, match=message.replace("(", r"\(")):
            load_proof(rewrite(**edit))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ProofFormatError, match="not a certificate file"):
        load_proof(tmp_path / "junk.npz")
    with pytest.raises(ProofFormatError, match="cannot read certificate"):
        load_proof(tmp_path / "missing.npz")
    with pytest.raises(ProofFormatError, match="3 cases"):
        Proof(proof_meta("a", "b", 3, [2]), p.cases)
    with pytest.raises(ProofFormatError, match="int8"):
        CaseProof(kind=np.zeros(1), arg=np.zeros(1, np.int64), point=np.zeros(1), box=np.zeros(1, np.int64))


# ---------------------------------------------------------------- soundness


def _random_net(seed: int):
    rng = np.random.default_rng(seed)
    sizes = [2, 5, 5, 1]
    return [(rng.standard_normal((m, n)), rng.standard_normal(m) * 0.5) for n, m in zip(sizes[:-1], sizes[1:])]


def _deep_tree_proof(model: Path, spec: Path, depth: int, alphas: np.ndarray | None = None) -> Proof:
    kind, arg, point = uniform_tree(depth, [-1.0, -1.0], [1.0, 1.0])
    leaves = [i for i, k in enumerate(kind) if k == 0]
    closes = [close(n, alpha=-1 if alphas is None else j) for j, n in enumerate(leaves)]
    return proof(model, spec, [case(kind, arg, point, closes=closes, alpha=alphas, n_in=2, H=10)], [5, 5])


def _random_model_on_a_grid(tmp_path: Path, seed: int, n: int) -> tuple[list, Path, np.ndarray]:
    """A random net on two inputs, its ONNX file, and its first output on an ``n`` x ``n`` grid of
    ``[-1, 1]^2``."""
    layers = _random_net(seed)
    g = np.linspace(-1, 1, n)
    return layers, dense_model(tmp_path / "n.onnx", layers, 2), forward(layers, np.stack(np.meshgrid(g, g),
                                                                                       -1).reshape(-1, 2))[:, 0]


@pytest.mark.parametrize("seed", range(6))
def test_no_certificate_proves_a_false_property(tmp_path, seed):
    layers, model, y = _random_model_on_a_grid(tmp_path, seed, 101)
    threshold = float(y.min()) + 1e-3  # the sampled minimizer violates "y > threshold"
    spec = spec_file(tmp_path / "n.vnnlib", [([-1.0, -1.0], [1.0, 1.0], [[f"(<= Y_0 {threshold!r})"]])], 2, 1)
    for depth in (0, 4, 8):
        r = check_proof(model, spec, _deep_tree_proof(model, spec, depth))
        assert not r.valid and "does not rule out" in r.reason
    rng = np.random.default_rng(seed)
    alphas = rng.uniform(0, 1, (2**6, 10)).astype(np.float32)  # any slopes
    r = check_proof(model, spec, _deep_tree_proof(model, spec, 6, alphas))
    assert not r.valid and "does not rule out" in r.reason


@pytest.mark.parametrize("seed", range(4))
def test_no_contracted_box_cuts_off_a_point_of_the_polytope(tmp_path, seed):
    rng = np.random.default_rng(seed)
    layers = [(rng.standard_normal((5, 2)), rng.standard_normal(5) * 0.5), (rng.standard_normal((5, 5)),
              rng.standard_normal(5) * 0.5), (rng.standard_normal((2, 5)), rng.standard_normal(2) * 0.5)]
    model = dense_model(tmp_path / "n.onnx", layers, 2)
    X = rng.uniform(-1, 1, (20000, 2))
    y = forward(layers, X)
    t = y[0] + 0.5 * y.std(0)  # the first sample and others lie in {y0 <= t0, y1 <= t1}
    spec = spec_file(tmp_path / "n.vnnlib", [([-1.0, -1.0], [1.0, 1.0], [[f"(<= Y_0 {float(t[0])!r})",
                                                                        f"(<= Y_1 {float(t[1])!r})"]])], 2, 2)
    inside = X[(y <= t).all(1)]
    lo, hi = inside.min(0), inside.max(0)
    for d, side in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the samples' hull, one side moved in by 1e-9
        shrunk = [lo.copy(), hi.copy()]
        shrunk[side][d] += 1e-9 if side == 0 else -1e-9
        tree = case([0], box=[0], boxes=[tuple(shrunk)], cuts=[(0, 0, [1.0, 0.0]), (0, 0, [0.0, 1.0])], R=2, n_in=2,
                    H=10)
        r = check_proof(model, spec, proof(model, spec, [tree], [5, 5]))
        assert not r.valid and "does not contain the hull" in r.reason


@pytest.mark.parametrize("seed", range(4, 8))
def test_deep_trees_prove_true_properties(tmp_path, seed):
    layers, model, y = _random_model_on_a_grid(tmp_path, seed, 201)
    lipschitz = np.prod([np.linalg.norm(W, 2) for W, _ in layers])
    threshold = float(y.min() - lipschitz * 0.01 - 0.05 * (y.max() - y.min()))  # below the true minimum
    spec = spec_file(tmp_path / "n.vnnlib", [([-1.0, -1.0], [1.0, 1.0], [[f"(<= Y_0 {threshold!r})"]])], 2, 1)
    r = check_proof(model, spec, _deep_tree_proof(model, spec, 8))
    assert r.valid, r.reason


def _branchy_net(gen: torch.Generator) -> Network:
    """A ReLU on the input, two ReLU layers reading one node, a ReLU's output used twice."""
    b = Builder((3,), gen)
    r0 = b.relu(0)
    d1 = b.dense(5, src=r0)
    a = b.add_op(Add(), (b.relu(d1), b.add_op(Relu(), (d1,))))
    r2 = b.relu(b.dense(4, src=a))
    b.dense(2, src=b.add_op(Concat(0), (r2, r0)))
    return b.build(dtype=torch.float64)


@pytest.mark.parametrize("family", ["dense", "conv", "residual", "avgpool", "branchy"])
def test_bounds_contain_the_region_samples(family):
    """Intermediate bounds and closure bounds (random slopes, multipliers, weights) under every sample."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        net = _branchy_net(gen) if family == "branchy" else FAMILIES[family](gen)
        m, B, rng = checker.network_matrices(net), 4, np.random.default_rng(seed)
        x = torch.randn(B, net.n_inputs, dtype=torch.float64, generator=gen)
        lo, hi = (x - 0.3).numpy(), (x + 0.3).numpy()
        box = torch.tensor(lo)[:, None], torch.tensor(hi)[:, None]
        pts = sample_box(gen, *(t[:, 0] for t in box), 300).clamp(*box)  # (B, S, n), the corners rounded in
        values = forward_all(net, pts.reshape(-1, net.n_inputs))
        pre = np.concatenate([values[p].reshape(B, pts.shape[1], -1).numpy() for _, p, _, _ in m.layers], 2)
        splits = np.zeros((B, m.H), np.int8)  # three neurons split the way the first sample has them
        for b in range(B):
            g = rng.choice(m.H, 3, replace=False)
            splits[b, g] = np.where(pre[b, 0, g] >= 0, 1, -1)
        inside = np.all((splits[:, None] == 0) | (splits[:, None] * pre >= 0), 2)  # (B, S)
        bd, pre_lo, pre_hi = checker._sweep(m, lo, hi, splits, np.full((B, m.H), -np.inf), np.full((B, m.H), np.inf))
        out = values[net.output].reshape(B, pts.shape[1], -1).numpy()
        c = rng.standard_normal((B, out.shape[2]))
        slack, under = np.zeros((B, 1)), np.zeros((B, 1))
        a, const = checker._backward(m, bd, np.arange(B), m.output, c[:, None, :].copy(), np.zeros((B, 1)), slack,
                                     under, rng.uniform(0, 1, (B, m.H)), rng.uniform(0, 2, (B, m.H)) * splits)
        v, S = checker._concretize(a, const, slack, under, lo, hi)
        linear = np.einsum("bsn,bn->bs", pts.numpy(), a[:, 0]) + const - S  # the cut a . x + c
        g = np.einsum("bso,bo->bs", out, c)
        for b in range(B):
            assert inside[b, 0] and not bd.empty[b]
            assert np.all(pre_lo[b] <= pre[b, inside[b]]) and np.all(pre[b, inside[b]] <= pre_hi[b])
            assert v[b, 0] - S[b, 0] <= g[b, inside[b]].min()
            assert np.all(linear[b, inside[b]] <= g[b, inside[b]])


def test_cancellation_that_float_rounding_hides_is_caught(tmp_path):
    # y = -(relu(1e16 x) + relu(x) - relu(1e16 x)) = -x on [1, 2]: the property y > -0.5 is false, but in
    # float64 the coefficient -1e16 - 1 + 1e16 of x rounds to 0, which would "prove" y = 0 > -0.5
    layers = [([[1e16], [1.0], [1e16]], [0.0, 0.0, 0.0]), ([[-1.0, -1.0, 1.0]], [0.0])]
    naive = 0.0
    for w2, w1 in zip(layers[1][0][0], [1e16, 1.0, 1e16]):
        naive += w2 * w1
    assert naive == 0.0
    model = dense_model(tmp_path / "adv.onnx", layers, 1)
    spec = spec_file(tmp_path / "adv.vnnlib", [([1.0], [2.0], [["(<= Y_0 -0.5)"]])], 1, 1)
    for depth in (0, 6):
        kind, arg, point = uniform_tree(depth, [1.0], [2.0])
        closes = [close(i) for i, k in enumerate(kind) if k == 0]
        r = check_proof(model, spec, proof(model, spec, [case(kind, arg, point, closes=closes, H=3)], [3]))
        assert not r.valid and "does not rule out" in r.reason


# ---------------------------------------------------------------- operators


def _every_linear_op_net() -> Network:
    """Every node type the checker supports (tests/nets.py's all_ops_net with AvgPools for its MaxPool)."""
    b = Builder((2, 4, 4), torch.Generator().manual_seed(0))
    s = b.add_op(Scale(b._randn(2, 1, 1), b._randn(2, 1, 1) * 0.1), (b.last,))
    c1 = b.conv(4, k=3, padding=(1, 1, 1, 1), src=s)
    r1 = b.relu()
    c2 = b.conv(4, k=3, padding=(1, 3, 3, 1), dilation=2, groups=2, src=r1)
    r2 = b.relu(b.add_op(Add(), (c2, c1)))
    p1 = b.add_op(AvgPool((3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=True), (r2,))
    p2 = b.add_op(AvgPool((3, 3), (2, 2), (1, 0, 1, 1), count_include_pad=False), (r2,))
    t = b.add_op(Transpose((1, 2, 0)), (b.add_op(Concat(0), (p1, p2)),))
    p = b.add_op(Pad((0, 1, -1, 0, 0, 1), 0.5), (t,))
    g = b.add_op(Gather(gather_index(b.nodes[p].size)), (p,), b.nodes[p].shape)
    b.add_op(Reshape(), (g,), (b.nodes[p].size,))
    b.dense(7)
    r3 = b.relu()
    b.add_op(Scale(b._randn(7), b._randn(7) * 0.1), (r3,))
    b.dense(3)
    return b.build(dtype=torch.float64)


def test_every_supported_operator_matches_the_forward_pass():
    net = _every_linear_op_net()
    m = checker.network_matrices(net)
    assert m.base == 1  # the CROWN passes stop at the input's Scale (its bounds are the box's image)
    x = torch.randn(4, net.n_inputs, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    H = m.H
    for width in (0.0, 0.2):
        lo, hi = x.numpy() - width, x.numpy() + width
        bd, _, _ = checker._sweep(m, lo, hi, np.zeros((4, H), np.int8), np.full((4, H), -np.inf),
                                  np.full((4, H), np.inf))
        points = [x] if width == 0 else [torch.tensor(lo + (hi - lo) * t) for t in np.random.default_rng(0).
                                         uniform(0, 1, (20, *lo.shape))]
        for xs in points:
            for i, v in enumerate(forward_all(net, xs)):
                v = v.reshape(4, -1).numpy()
                assert np.all(bd.lo[i] <= v) and np.all(v <= bd.hi[i]), i
        if width == 0:  # a point box gives (almost) the point
            assert max(float(np.max(h - lo_)) for lo_, h in zip(bd.lo, bd.hi)) < 1e-9


def test_constants_are_intervals():
    """A model's constants carry error radii: every network with constants within them stays inside."""
    b = Builder((1, 3, 3), torch.Generator().manual_seed(2))
    b.add_op(Scale(b._randn(1, 1, 1), b._randn(1, 1, 1)), (b.last,))
    b.conv(2, k=2, padding=(0, 0, 1, 1))
    b.relu()
    b.dense(3)
    net = b.build(dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)

    def tensors(op) -> dict:
        return {k: v for k, v in vars(op).items() if isinstance(v, torch.Tensor) and not k.endswith("_err")}

    radius = {i: {k: 0.05 * torch.rand(v.shape, generator=gen, dtype=torch.float64)
                  for k, v in tensors(n.op).items()} for i, n in enumerate(net.nodes) if tensors(n.op)}

    def network(change) -> Network:
        return Network(tuple(dataclasses.replace(n, op=dataclasses.replace(n.op, **change(i, n.op)))
                             if i in radius else n for i, n in enumerate(net.nodes)), net.output)

    m = checker.network_matrices(network(lambda i, op: {f"{k}_err": r for k, r in radius[i].items()}))
    x = torch.randn(3, 9, dtype=torch.float64, generator=gen)
    bd, _, _ = checker._sweep(m, x.numpy(), x.numpy(), np.zeros((3, m.H), np.int8), np.full((3, m.H), -np.inf),
                              np.full((3, m.H), np.inf))
    assert np.all(bd.hi[net.output] - bd.lo[net.output] > 1e-3)  # the radii widen a point's bounds
    for _ in range(20):
        other = network(lambda i, op: {k: v + radius[i][k] * (2 * torch.rand(v.shape, generator=gen,
                                                                           dtype=torch.float64) - 1)
                                       for k, v in tensors(op).items()})
        for i, v in enumerate(forward_all(other, x)):
            v = v.reshape(3, -1).numpy()
            assert np.all(bd.lo[i] <= v) and np.all(v <= bd.hi[i]), i


def test_maxpool_is_unsupported():
    b = Builder((1, 4, 4), torch.Generator().manual_seed(0))
    b.conv(2, k=3, padding=(1, 1, 1, 1))
    b.relu()
    b.add_op(MaxPool((2, 2), (2, 2)), (b.last,))
    with pytest.raises(UnsupportedCheckError, match="MaxPool"):
        checker.network_matrices(b.build(dtype=torch.float64))


# ---------------------------------------------------------------- independence and the command line


def test_the_checker_imports_no_engine_module(abs_files, tmp_path):
    model, spec = abs_files
    path = tmp_path / "p.npz"
    save_proof(path, proof(model, spec, [case(**SPLIT_AT_0)], [2]))
    code = (
        "import sys\n"
        "import verifier.certificate\n"
        "assert 'torch' not in sys.modules\n"
        "from verifier.certificate.check import check_proof\n"
        f"assert check_proof({str(model)!r}, {str(spec)!r}, {str(path)!r}).valid\n"
        "engine = ('verifier.bounds', 'verifier.bab', 'verifier.exact', 'verifier.incomplete', 'verifier.api')\n"
        "loaded = [m for m in sys.modules if m.startswith(engine)]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.certificate.check_cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_command_line(abs_files, tmp_path):
    model, spec = abs_files
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    save_proof(good, proof(model, spec, [case(**SPLIT_AT_0)], [2]))
    false = spec_file(tmp_path / "false.vnnlib", [([-1.0], [2.0], [["(<= Y_0 0.5)"]])], 1, 1)  # x = 0 violates it
    save_proof(bad, proof(model, false, [case([0], closes=[close(0)])], [2]))
    proc = _cli(model, spec, good)
    assert proc.returncode == 0 and proc.stdout.startswith("valid: 1 cases, 3 nodes, 2 leaves checked in ")
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.rstrip().endswith(" s)")
    proc = _cli(model, false, bad)
    assert proc.returncode == 1 and proc.stdout.startswith("invalid: case 0: closure 0 does not rule out")
    assert len(proc.stdout.splitlines()) == 1
    with np.load(good) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = np.array(json.dumps(dict(json.loads(str(data["meta"])), version=3)))
    with open(tmp_path / "v3.npz", "wb") as f:
        np.savez_compressed(f, **data)
    for args in ((model, spec, tmp_path / "none.npz"), (tmp_path / "none.onnx", spec, good),
                 (model, tmp_path / "none.vnnlib", good), (spec, spec, good), (model, spec, tmp_path / "v3.npz")):
        proc = _cli(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("kind", ["diag", "selection", "identity", "repeated"])
def test_structured_maps_compute_what_their_matrix_does(kind):
    """A diagonal or a selection (the checker's form of Scale, Reshape, Transpose, Pad, Concat, Gather)
    gives the same floats as its dense matrix in every use; a selection reading an input twice is a matrix."""
    rng = np.random.default_rng(0)
    n = 6
    if kind == "diag":
        d = rng.standard_normal(n)
        lin, M = checker._diag(d), np.diag(d)
    else:
        src = {"selection": np.array([3, -1, 0, 5, 1, -1]), "identity": np.arange(n),
               "repeated": np.array([2, 2, -1, 0, 4, 1])}[kind]
        lin, M = checker._selection(n, src, n), checker._select(n, src, n)
    assert (lin.dense is not None) == (kind == "repeated")
    assert lin.identity == (kind == "identity")
    L = rng.standard_normal((3, 4, n))
    assert np.array_equal(lin.back(L), L @ M)
    idx = rng.integers(0, n, (3, 4))
    assert np.array_equal(lin.rows(idx), M[idx])
    lo = rng.standard_normal((5, n))
    hi = lo + rng.uniform(0, 1, (5, n))
    P, N = np.maximum(M, 0), np.minimum(M, 0)
    a, b = lin.interval(lo, hi)
    assert np.array_equal(a, lo @ P.T + hi @ N.T) and np.array_equal(b, hi @ P.T + lo @ N.T)
    assert np.array_equal(lin.magnitude(np.abs(hi)), np.abs(hi) @ np.abs(M).T)
