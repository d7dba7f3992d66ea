"""The independent checker of proof certificates (``verifier.certificate.format``): numpy, float64.

It reads the network with the project's ONNX importer (in float64, constants as intervals ``[v - err,
v + err]``) and the spec with ``vnnlib.reader``, and nothing else of the verifier: every bound is
recomputed here.  The certificate's parameters (slopes, multipliers, weights, boxes) are untrusted; a
wrong one can only make a check fail.

What is checked is the meaning written in ``format.py``.  At each tree node, for a whole tree level at
once: interval bounds of every node over the node's region; for each ReLU layer in turn, its
pre-activation bounds intersected with CROWN bounds (every entry not already known to be ``<= 0``, with
CROWN's adaptive lower slopes), with the parent's bounds and with the split constraints (an empty
intersection: the region is empty).  Then the closures over the region, the contraction (cuts propagated
over the box, ``ROUNDS`` rounds), the closures over the contracted box, and the node's children.

Rigorous arithmetic.  Everything runs in IEEE binary64 with round-to-nearest and gradual underflow
(checked at start).  A computed value stands for a set of real values, and each proven bound is
``computed value - S`` with ``S`` a bound of every rounding and constant error:

* A sum of ``k`` products computed in any order (matmul, einsum, sum) is within
  ``gamma_k * sum |terms|`` of the exact sum, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53`` (Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5), plus at most ``2^-1075`` per
  nonzero product that underflows.
* Backward (CROWN) pass: the coefficients ``L`` are whatever floats we compute.  At a linear node,
  ``L . v_i = sum_k P_k . v_k + L . b + e`` with ``P_k = fl(L M_k)`` and
  ``|e| <= |L| . (gamma (|M| mag + |b|) + E mag + e_b)``, where ``mag`` bounds ``|v_k|`` (interval
  bounds) and ``E``, ``e_b`` are the constants' error radii.  At a ReLU, ``relu(z) >= alpha z``
  (``alpha`` in [0, 1]) for a coefficient ``>= 0`` and ``relu(z) <= s z + t`` (the chord, ``t``
  rounded up so that it holds for the computed ``s``) for one ``< 0``; ``fl(L s)`` is within
  ``u |L| mag`` of ``L s``.  A split neuron's coefficient gets ``-beta s_g`` (``s_g z_g >= 0`` on the
  region).  The relative parts add up in ``slack``; the underflow parts are counted (weighted by the
  magnitude they multiply) in ``under`` and turned into ``under * 2^-1070`` (32 times ``2^-1075``).
  A product with a zero factor is exact, so a bound built from exact zeros has ``S = 0`` exactly.
* ``slack`` is itself a float sum of non-negative terms, each with a relative error below ``2^-24``
  (every sum here has under ``2^26`` terms): multiplying by ``1 + 2^-20`` covers it.
* A bound ``v`` (computed) and its error ``S`` decide by the exact float comparison ``v > S``; a bound
  stored as a float is rounded with ``nextafter`` toward the safe side.  Overflow (inf, NaN) fails safe.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from pathlib import Path

import numpy as np

from verifier.certificate.format import CaseProof, LemmaProof, Proof, load_proof
from verifier.errors import EXIT_UNSUPPORTED, InputFileError, VerifierError
from vnnlib.reader import read_spec
from vnnlib.spec import Case, Polytope

U = 2.0**-53  # unit roundoff of float64
INFLATE = 1.0 + 2.0**-20  # covers the rounding of the error bounds themselves
UNDER_UNIT = 2.0**-1070  # per counted product that may underflow (each is off by at most 2^-1075)
TERM_FLOOR = 2.0**-1030  # added to each error term: covers the underflows in computing the term
IBP_FLOOR = 2.0**-1000  # absolute underflow allowance of an interval bound
MAX_TERMS = 2**26  # longest sum we give a gamma for
ROUNDS = 5  # rounds of bound propagation in a contraction
ELEMENTS = 2**23  # largest array a chunk of work may build (float64 entries)


class UnsupportedCheckError(VerifierError):
    """The model uses an operator the checker does not handle."""

    exit_code = EXIT_UNSUPPORTED


class _Invalid(Exception):
    """The certificate does not prove the property (the message says why)."""


@dataclass(frozen=True)
class CheckResult:
    """Whether the certificate proves the property, why not, and how much was checked."""

    valid: bool
    reason: str
    cases: int
    nodes: int
    leaves: int
    closures: int
    seconds: float
    load_seconds: float = 0.0  # of ``seconds``: reading the model (importing torch and onnx the first time)


def gamma(k: int) -> float:
    """``gamma_k = k u / (1 - k u)`` (Higham eq. 3.5): the relative error bound of a sum of ``k`` products."""
    if k >= MAX_TERMS:
        raise UnsupportedCheckError(f"sums of {k} terms are too long for the checker's error bounds")
    return k * U / (1.0 - k * U)


def _lower(x: np.ndarray) -> np.ndarray:
    """A computed lower bound made safe: one step down, non-finite values to -inf."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(x), np.nextafter(x, -np.inf), -np.inf)


def _upper(x: np.ndarray) -> np.ndarray:
    """A computed upper bound made safe: one step up, non-finite values to +inf."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(x), np.nextafter(x, np.inf), np.inf)


def _check_arithmetic() -> None:
    """Round-to-nearest and gradual underflow, which the error bounds assume (also in the threads of a
    matrix product large enough to use them)."""
    one, tiny = np.array([1.0, -1.0]), np.array([2.0**-1022])
    nearest = np.all(one + np.array([2.0**-54, -(2.0**-54)]) == one) and np.all(
        one + np.array([3 * 2.0**-54, -3 * 2.0**-54]) == np.array([1 + 2.0**-52, -1 - 2.0**-52]))
    gradual = (tiny * 0.5)[0] == 2.0**-1023 and (np.array([2.0**-1074]) * 1.0)[0] != 0
    big = np.full((256, 256), 2.0**-1070) @ np.full((256, 256), 0.5)  # subnormal products, summed exactly
    if not (nearest and gradual and np.all(big == 2.0**-1063)):
        raise UnsupportedCheckError("the floating-point unit is not in round-to-nearest with gradual underflow")


# ---------------------------------------------------------------- the network as matrices


@dataclass(frozen=True, eq=False)
class _Lin:
    """A linear map from ``m`` values to ``n``: a matrix ``dense`` ``(n, m)``, a diagonal ``diag`` ``(n,)``
    (``n == m``), or a selection ``src`` ``(n,)``, ``out[j] = in[src[j]]`` (``-1``: 0) reading each input
    at most once.  The last two compute what the matrix would, without its zero products."""

    n: int
    m: int
    dense: np.ndarray | None = None
    diag: np.ndarray | None = None
    src: np.ndarray | None = None
    pos_t: np.ndarray | None = None  # dense: max(M, 0)^T
    neg_t: np.ndarray | None = None  # dense: min(M, 0)^T, None where M >= 0
    abs_t: np.ndarray | None = None  # dense: |M|^T
    identity: bool = False

    def back(self, L: np.ndarray) -> np.ndarray:
        """``L M`` for rows ``L`` ``(..., n)``."""
        if self.dense is not None:
            return (L.reshape(-1, self.n) @ self.dense).reshape(*L.shape[:-1], self.m)
        if self.diag is not None:
            return L * self.diag
        if self.identity:
            return L
        out = np.zeros((*L.shape[:-1], self.m))
        ok = self.src >= 0
        out[..., self.src[ok]] = L[..., ok]
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``M[idx]`` ``(*idx.shape, m)``."""
        if self.dense is not None:
            return self.dense[idx]
        out = np.zeros((*idx.shape, self.m))
        if self.diag is not None:
            np.put_along_axis(out, idx[..., None], self.diag[idx][..., None], -1)
        else:
            s = self.src[idx]
            np.put_along_axis(out, np.maximum(s, 0)[..., None], (s >= 0)[..., None].astype(np.float64), -1)
        return out

    def interval(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The computed ends ``(B, n)`` of ``M x`` over ``lo <= x <= hi`` (rounding not included)."""
        if self.dense is not None:
            if self.neg_t is None:
                return lo @ self.pos_t, hi @ self.pos_t
            return lo @ self.pos_t + hi @ self.neg_t, hi @ self.pos_t + lo @ self.neg_t
        if self.diag is not None:
            p, q = np.maximum(self.diag, 0.0), np.minimum(self.diag, 0.0)
            return lo * p + hi * q, hi * p + lo * q
        return self.gather(lo), self.gather(hi)

    def magnitude(self, mag: np.ndarray) -> np.ndarray:
        """``|M| mag`` ``(B, n)`` (computed)."""
        if self.dense is not None:
            return mag @ self.abs_t
        if self.diag is not None:
            return mag * np.abs(self.diag)
        return self.gather(mag)

    def gather(self, x: np.ndarray) -> np.ndarray:
        if self.identity:
            return x
        return np.where(self.src >= 0, x[..., np.maximum(self.src, 0)], 0.0)


def _dense(M: np.ndarray) -> _Lin:
    M = np.ascontiguousarray(M, dtype=np.float64)
    neg = np.ascontiguousarray(np.minimum(M, 0).T) if (M < 0).any() else None
    return _Lin(M.shape[0], M.shape[1], dense=M, pos_t=np.ascontiguousarray(np.maximum(M, 0).T), neg_t=neg,
                abs_t=np.ascontiguousarray(np.abs(M).T))


def _diag(d: np.ndarray) -> _Lin:
    d = np.ascontiguousarray(d, dtype=np.float64).reshape(-1)
    return _Lin(d.size, d.size, diag=d)


def _selection(n: int, src: np.ndarray, m: int) -> _Lin:
    """``out[j] = in[src[j]]`` (``src[j] < 0``: 0); a matrix where an input is read twice."""
    src = np.asarray(src, dtype=np.int64).reshape(n)
    used = src[src >= 0]
    if np.unique(used).size < used.size:
        return _dense(_select(n, src, m))
    return _Lin(n, m, src=src, identity=bool(n == m and np.array_equal(src, np.arange(n))))


@dataclass(frozen=True, eq=False)
class _Affine:
    """``y = sum_k M_k x_k + b`` on flat vectors; the exact constants lie within ``err`` of these."""

    inputs: tuple[int, ...]
    maps: tuple[_Lin, ...]
    errs: tuple[_Lin | None, ...]  # a bound of |exact - M|, None where exact
    bias: np.ndarray  # (n,)
    bias_err: np.ndarray | None
    gam: float  # gamma of the longest sum a pass through the node computes


@dataclass(frozen=True, eq=False)
class _Net:
    """Per node: None (the input), an ``_Affine``, or an int (a ReLU: the node it reads)."""

    ops: tuple[_Affine | int | None, ...]
    sizes: tuple[int, ...]
    output: int
    layers: tuple[tuple[int, int, int, int], ...]  # per ReLU layer: (relu node, input node, offset, size)

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def H(self) -> int:
        return sum(n for *_, n in self.layers)

    @cached_property
    def base(self) -> int:
        """Where a backward pass for bounds may stop: node 1 when it alone reads the input, through a diagonal
        or a selection (its interval bounds are then the image of the region's box, up to their rounding);
        else the input itself (0)."""
        op = self.ops[1] if len(self.ops) > 1 else None
        if not isinstance(op, _Affine) or op.inputs != (0,) or op.maps[0].dense is not None:
            return 0
        readers = [o for o in self.ops[2:] if (isinstance(o, _Affine) and 0 in o.inputs) or o == 0]
        return 0 if readers else 1

    @property
    def offsets(self) -> np.ndarray:
        """The first global neuron index of each ReLU layer."""
        return np.array([off for _, _, off, _ in self.layers], dtype=np.int64)


def _err(make, e: np.ndarray | None) -> _Lin | None:
    """The error map ``make(e)`` of a constant's radii ``e``; None where they are all 0 (exact)."""
    return None if e is None or not e.any() else make(e)


def _affine(inputs, maps: list[_Lin], errs: list[_Lin | None], bias, bias_err) -> _Affine:
    n = maps[0].n
    bias = np.zeros(n) if bias is None else np.asarray(bias, dtype=np.float64).reshape(n)
    if bias_err is not None:
        bias_err = np.asarray(bias_err, dtype=np.float64).reshape(n)
        bias_err = bias_err if bias_err.any() else None
    gam = gamma(2 * sum(m.m for m in maps) + n + 3)
    return _Affine(tuple(inputs), tuple(maps), tuple(errs), bias, bias_err, gam)


def _select(n: int, src: np.ndarray, n_in: int) -> np.ndarray:
    """The (n, n_in) 0/1 matrix with ``out[j] = in[src[j]]`` (``src[j] < 0``: nothing)."""
    M = np.zeros((n, n_in))
    rows = np.nonzero(src >= 0)[0]
    M[rows, src[rows]] = 1.0
    return M


def _windows(in_shape, out_shape, kernel, stride, padding, dilation=(1, 1)) -> np.ndarray:
    """``(Ho*Wo, kh, kw)``: the flat ``H*W`` position each kernel tap of each output reads, -1 in padding."""
    _, H, W = in_shape
    _, Ho, Wo = out_shape
    oh = np.arange(Ho)[:, None, None, None]
    ow = np.arange(Wo)[None, :, None, None]
    ih = oh * stride[0] - padding[0] + np.arange(kernel[0])[None, None, :, None] * dilation[0]
    iw = ow * stride[1] - padding[1] + np.arange(kernel[1])[None, None, None, :] * dilation[1]
    pos = np.where((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), ih * W + iw, -1)
    return pos.reshape(Ho * Wo, kernel[0], kernel[1])


def _conv(op, in_shape, out_shape, arr) -> tuple[np.ndarray, np.ndarray | None]:
    w = arr(op.weight)  # (C_out, C_in / groups, kh, kw)
    c_out, cpg, kh, kw = w.shape
    pos = _windows(in_shape, out_shape, (kh, kw), op.stride, op.padding, op.dilation)  # (L, kh, kw)
    hw, L = in_shape[1] * in_shape[2], pos.shape[0]
    co = np.arange(c_out)[:, None, None, None, None]
    ci = (co // (c_out // op.groups)) * cpg + np.arange(cpg)[None, :, None, None, None]
    pix = pos[None, None]
    row = np.broadcast_to(co * L + np.arange(L)[None, None, :, None, None], (c_out, cpg, L, kh, kw))
    col = np.broadcast_to(ci * hw + pix, row.shape)
    ok = np.broadcast_to(pix >= 0, row.shape)
    shape = (c_out * L, in_shape[0] * hw)

    def fill(values: np.ndarray) -> np.ndarray:
        M = np.zeros(shape)
        M[row[ok], col[ok]] = np.broadcast_to(values[:, :, None], row.shape)[ok]
        return M

    err = arr(op.weight_err)
    return fill(w), None if err is None else fill(np.broadcast_to(err, w.shape))


def _avgpool(op, in_shape, out_shape) -> np.ndarray:
    pos = _windows(in_shape, out_shape, op.kernel, op.stride, op.padding)  # (L, kh, kw)
    L, hw = pos.shape[0], in_shape[1] * in_shape[2]
    count = (pos >= 0).sum((1, 2)) if not op.count_include_pad else np.full(L, op.kernel[0] * op.kernel[1])
    M = np.zeros((in_shape[0] * L, in_shape[0] * hw))
    c = np.arange(in_shape[0])[:, None, None, None]
    row = np.broadcast_to(c * L + np.arange(L)[None, :, None, None], (in_shape[0],) + pos.shape)
    col = np.broadcast_to(c * hw + pos[None], row.shape)
    ok = col >= c * hw
    M[row[ok], col[ok]] = np.broadcast_to((1.0 / count)[None, :, None, None], row.shape)[ok]
    return M


def _pad_source(in_shape, pads) -> np.ndarray:
    """Flat input position of each output entry of an ONNX-style Pad (negative pads crop), -1: the value."""
    d, D = len(pads) // 2, len(in_shape)
    idx = np.arange(prod(in_shape)).reshape(in_shape)
    grow = [(0, 0)] * (D - d) + [(max(pads[a], 0), max(pads[a + d], 0)) for a in range(d)]
    idx = np.pad(idx, grow, constant_values=-1)
    cut = [slice(None)] * (D - d) + [slice(max(-pads[a], 0), idx.shape[D - d + a] - max(-pads[a + d], 0))
                                     for a in range(d)]
    return idx[tuple(cut)].reshape(-1)


def _node_op(node, shapes: list[tuple[int, ...]], arr) -> _Affine | int | None:
    """The checker's form of one IR node (``shapes``: its inputs' shapes)."""
    from verifier import network as N

    op, n = node.op, prod(node.shape)
    if isinstance(op, N.Input):
        return None
    if isinstance(op, N.Relu):
        return node.inputs[0]
    if isinstance(op, N.Dense):
        return _affine(node.inputs, [_dense(arr(op.weight))], [_err(_dense, arr(op.weight_err))], arr(op.bias),
                       arr(op.bias_err))
    if isinstance(op, N.Conv):
        M, E = _conv(op, shapes[0], node.shape, arr)
        per_pixel = n // op.bias.shape[0]
        bias_err = None if op.bias_err is None else np.repeat(arr(op.bias_err), per_pixel)
        return _affine(node.inputs, [_dense(M)], [_err(_dense, E)], np.repeat(arr(op.bias), per_pixel), bias_err)
    if isinstance(op, N.Scale):
        def full(t):
            return None if t is None else np.broadcast_to(arr(t), (1, *node.shape)).reshape(n)
        err = full(op.scale_err)
        return _affine(node.inputs, [_diag(full(op.scale))], [_err(_diag, err)],
                       full(op.shift), full(op.shift_err))
    if isinstance(op, (N.Add, N.Reshape)):
        return _affine(node.inputs, [_selection(n, np.arange(n), n)] * len(node.inputs), [None] * len(node.inputs),
                       None, None)
    if isinstance(op, N.Transpose):
        src = np.arange(prod(shapes[0])).reshape(shapes[0]).transpose(op.perm).reshape(-1)
        return _affine(node.inputs, [_selection(n, src, n)], [None], None, None)
    if isinstance(op, N.AvgPool):
        M = _avgpool(op, shapes[0], node.shape)
        # |fl(1/c) - 1/c| <= 2u fl(1/c)
        return _affine(node.inputs, [_dense(M)], [_err(_dense, M * 2.0**-52)], None, None)
    if isinstance(op, N.Pad):
        src = _pad_source(shapes[0], op.pads)
        return _affine(node.inputs, [_selection(n, src, prod(shapes[0]))], [None], np.where(src < 0, op.value, 0.0),
                       None)
    if isinstance(op, N.Concat):
        owner = np.concatenate([np.full(s, k) for k, s in enumerate(shapes)], op.axis).reshape(-1)
        where = np.concatenate([np.arange(prod(s)).reshape(s) for s in shapes], op.axis).reshape(-1)
        maps = [_selection(n, np.where(owner == k, where, -1), prod(s)) for k, s in enumerate(shapes)]
        return _affine(node.inputs, maps, [None] * len(maps), None, None)
    if isinstance(op, N.Gather):  # out[j] = in[index[j]], 0 where the index is -1
        src = np.asarray(op.index.detach().cpu(), dtype=np.int64).reshape(n)
        if np.any(src < -1) or np.any(src >= prod(shapes[0])):
            raise UnsupportedCheckError(f"Gather node '{node.name}' has an index out of range")
        return _affine(node.inputs, [_selection(n, src, prod(shapes[0]))], [None], None, None)
    raise UnsupportedCheckError(f"the checker does not support {type(op).__name__} (node '{node.name}')")


def load_network(path: str | os.PathLike) -> _Net:
    """The model at ``path`` as matrices (read by ``verifier.onnx_import`` in float64)."""
    import torch

    from verifier.onnx_import import load_onnx

    return network_matrices(load_onnx(path, dtype=torch.float64))


def network_matrices(net) -> _Net:
    """The checker's form of an IR ``verifier.network.Network``: every constant as a float64 numpy array."""
    import torch

    def arr(t) -> np.ndarray | None:
        return None if t is None else t.detach().to("cpu", torch.float64).numpy().copy()

    ops = tuple(_node_op(node, [net.nodes[k].shape for k in node.inputs], arr) for node in net.nodes)
    layers, offset = [], 0
    for r in net.relu_indices:
        n = net.nodes[r].size
        layers.append((r, net.nodes[r].inputs[0], offset, n))
        offset += n
    return _Net(ops, tuple(node.size for node in net.nodes), net.output, tuple(layers))


# ---------------------------------------------------------------- bounds over a batch of regions


@dataclass(eq=False)
class _Bounds:
    """Rigorous bounds of every node over a batch of regions, and what a backward pass needs."""

    lo: list[np.ndarray] = field(default_factory=list)  # per node (B, n_i)
    hi: list[np.ndarray] = field(default_factory=list)
    mag: list[np.ndarray] = field(default_factory=list)  # max(|lo|, |hi|)
    term: dict[int, np.ndarray] = field(default_factory=dict)  # (B, n_i): error per unit of |coefficient|
    under: dict[int, np.ndarray] = field(default_factory=dict)  # (B, 1): underflow count of a nonzero row
    slope: dict[int, np.ndarray] = field(default_factory=dict)  # ReLU node -> (B, n) upper slopes
    icpt: dict[int, np.ndarray] = field(default_factory=dict)  # (B, n) upper intercepts
    low: dict[int, np.ndarray] = field(default_factory=dict)  # (B, n) adaptive lower slopes
    unstable: dict[int, np.ndarray] = field(default_factory=dict)  # (B, n) bool
    layer: dict[int, tuple[int, int]] = field(default_factory=dict)  # ReLU node -> (offset, size)
    empty: np.ndarray | None = None  # (B,) the region is empty


def _sweep(net: _Net, lo0: np.ndarray, hi0: np.ndarray, splits: np.ndarray, parent_lo: np.ndarray,
           parent_hi: np.ndarray, fresh: np.ndarray | None = None) -> tuple[_Bounds, np.ndarray, np.ndarray]:
    """Bounds of every node over the regions ``box x splits``; pre-activations by interval and CROWN
    bounds intersected with the parent's (``(B, H)``) and the split constraints.  Also returns the
    pre-activation bounds ``(B, H)``.  ``fresh`` ``(B,)``: region ``b``'s ReLU layers before ``fresh[b]``
    are bounded as in its parent (same box, same splits before them): their CROWN pass is not repeated."""
    bd = _Bounds(empty=np.zeros(lo0.shape[0], dtype=bool))
    pre_lo, pre_hi = np.empty_like(parent_lo), np.empty_like(parent_hi)
    # the nodes whose bounds are the same in every region of the batch (e.g. before the first ReLU of a
    # tree of ReLU splits: one box): computed once
    same = [bool((lo0 == lo0[:1]).all() and (hi0 == hi0[:1]).all())]
    for i, op in enumerate(net.ops):
        if op is None:
            lo, hi = lo0, hi0
        elif isinstance(op, _Affine):
            same.append(all(same[k] for k in op.inputs))
            lo, hi = _interval(op, bd, i, same[i])
        else:
            same.append(False)
            lo, hi = np.maximum(bd.lo[op], 0.0), np.maximum(bd.hi[op], 0.0)
        bd.lo.append(lo), bd.hi.append(hi), bd.mag.append(np.maximum(np.abs(lo), np.abs(hi)))
        mine = [layer for layer in net.layers if layer[1] == i]
        if not mine:
            continue
        same[i] = False
        for _, _, off, n in mine:
            lo = np.fmax(lo, parent_lo[:, off:off + n])
            hi = np.fmin(hi, parent_hi[:, off:off + n])
        bd.lo[i], bd.hi[i] = lo, hi
        bd.mag[i] = np.maximum(np.abs(lo), np.abs(hi))
        need = None if fresh is None else fresh <= net.layers.index(mine[0])
        lo, hi = _crown_tighten(net, bd, i, need)
        for _, _, off, n in mine:  # the split constraints after CROWN, as the engine does (same neurons refined)
            s = splits[:, off:off + n]
            lo, hi = np.where(s > 0, np.fmax(lo, 0.0), lo), np.where(s < 0, np.fmin(hi, 0.0), hi)
        bd.lo[i], bd.hi[i] = lo, hi
        bd.mag[i] = np.maximum(np.abs(bd.lo[i]), np.abs(bd.hi[i]))
        bd.empty |= (bd.lo[i] > bd.hi[i]).any(1)
        for r, _, off, n in mine:
            pre_lo[:, off:off + n], pre_hi[:, off:off + n] = bd.lo[i], bd.hi[i]
            _relax(bd, r, i, off, n)
    return bd, pre_lo, pre_hi


def _interval(op: _Affine, bd: _Bounds, i: int, same: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of an affine node; records its backward-pass error terms.  ``same``: its inputs' bounds
    are the same in every region (computed on the first, the same floats for all)."""
    lo, hi, t = op.bias, op.bias, op.gam * np.abs(op.bias)
    mass = 0.0
    B = bd.lo[0].shape[0]
    rows = slice(0, 1) if same else slice(None)
    with np.errstate(invalid="ignore", over="ignore"):
        for k, M, E in zip(op.inputs, op.maps, op.errs):
            klo, khi, kmag = bd.lo[k][rows], bd.hi[k][rows], bd.mag[k][rows]
            a, b = M.interval(klo, khi)
            lo, hi = lo + a, hi + b
            t = t + op.gam * M.magnitude(kmag) + (0.0 if E is None else E.magnitude(kmag))
            mass = mass + kmag.sum(1, keepdims=True)
        # with every input and constant zero every product is an exact zero: no floor is needed
        live = (mass > 0) | bool(op.bias.any() or (op.bias_err is not None))  # (B, 1)
        t = t + (0.0 if op.bias_err is None else op.bias_err) + TERM_FLOOR * live
        # (B, 1): per row, the products of its coefficients err by 2^-1075 each, times what they multiply
        under = lo.shape[1] * (mass + 2.0 * live)
        err = t * INFLATE + IBP_FLOOR * live
        lo, hi = np.where(live, _lower(lo - err), lo), np.where(live, _upper(hi + err), hi)
        n = lo.shape[1]
        bd.term[i] = np.broadcast_to(t, (B, n))
        bd.under[i] = np.broadcast_to(under, (B, 1)) if same else under
        return (np.broadcast_to(lo, (B, n)), np.broadcast_to(hi, (B, n))) if same else (lo, hi)


def _relax(bd: _Bounds, r: int, p: int, off: int, n: int) -> None:
    """The linear relaxation of ReLU node ``r`` from its input's bounds."""
    lo, hi, mag = bd.lo[p], bd.hi[p], bd.mag[p]
    active = lo >= 0
    inactive = (hi <= 0) & ~active
    unstable = ~(active | inactive)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = np.where(unstable & np.isfinite(hi), hi / (hi - lo), 0.0)  # in [0, 1]: fl(hi - lo) >= hi
        need = np.maximum(np.where(s > 0, -s * lo, 0.0), hi * (1.0 - s))  # the chord holds at lo and hi
        t = _upper(need * (1.0 + 2.0**-50) + 2.0**-1060)
    bd.slope[r] = np.where(unstable, s, active.astype(np.float64))
    bd.icpt[r] = np.where(unstable, t, 0.0)
    bd.low[r] = np.where(unstable, (hi > -lo).astype(np.float64), active.astype(np.float64))
    bd.unstable[r] = unstable
    bd.layer[r] = (off, n)
    with np.errstate(invalid="ignore", over="ignore"):
        bd.term[r] = np.where(unstable, U * mag + gamma(n + 2) * bd.icpt[r] + TERM_FLOOR, 0.0)
        bd.under[r] = np.where(unstable, mag + 2.0, 0.0).sum(1, keepdims=True)  # (B, 1)


def _crown_tighten(net: _Net, bd: _Bounds, i: int, need: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Node ``i``'s bounds intersected with its CROWN bounds (rows ``+e_j`` and ``-e_j``) on the entries
    that can take both signs (the neurons the engine refines: then both compute the same relaxations), in
    the regions ``need`` ``(B,)`` (all by default)."""
    lo, hi, op = bd.lo[i], bd.hi[i], net.ops[i]
    if isinstance(op, _Affine) and set(op.inputs) == {0}:
        return lo, hi  # an affine map of the box: CROWN is its interval bound
    want = (lo < 0) & (hi > 0)
    if need is not None:
        want &= need[:, None]
    count = want.sum(1)
    if not count.any():
        return lo, hi
    lo, hi = lo.copy(), hi.copy()
    # regions with about as many wanted entries share a pass (each pads its rows to the most in its pass)
    key = np.ceil(np.log(np.maximum(count, 1)) / np.log(1.25)).astype(np.int64)
    for k in np.unique(key[count > 0]):
        at = np.nonzero((key == k) & (count > 0))[0]
        _tighten_regions(net, bd, i, at, want[at], lo, hi)
    return lo, hi


def _tighten_regions(net: _Net, bd: _Bounds, i: int, at: np.ndarray, want: np.ndarray, lo: np.ndarray,
                     hi: np.ndarray) -> None:
    """``_crown_tighten`` in the regions ``at`` on their entries ``want`` ``(B, n)``, into ``lo``, ``hi``."""
    op, B, n = net.ops[i], at.size, want.shape[1]
    R = int(want.sum(1).max())
    idx = np.argsort(~want, axis=1, kind="stable")[:, :R]  # (B, R): the wanted entries first
    slack, under = np.zeros((B, 2 * R)), np.zeros((B, 2 * R))
    if isinstance(op, _Affine) and len(op.inputs) == 1:
        # rows +-e_j through the node itself are its +-weight rows, exactly; the node's error term applies
        W, b = op.maps[0].rows(idx), op.bias[idx]  # (B, R, n_k), (B, R)
        start, L, const = op.inputs[0], np.concatenate([W, -W], 1), np.concatenate([b, -b], 1)
        t = np.take_along_axis(bd.term[i][at], idx, 1)
        slack += np.concatenate([t, t], 1)
        under += bd.under[i][at] + 1.0
    else:
        L = np.zeros((B, 2 * R, n))
        rows, cols = np.arange(B)[:, None], np.arange(R)[None, :]
        L[rows, cols, idx], L[rows, R + cols, idx] = 1.0, -1.0
        start, const = i, np.zeros((B, 2 * R))
    a, const = _backward(net, bd, at, start, L, const, slack, under, stop=net.base)
    v, S = _concretize(a, const, slack, under, bd.lo[net.base][at], bd.hi[net.base][at])
    bound = _lower(v - S)  # (B, 2R)
    valid = np.take_along_axis(want, idx, 1)
    sub_lo, sub_hi = lo[at], hi[at]
    old_lo, old_hi = np.take_along_axis(sub_lo, idx, 1), np.take_along_axis(sub_hi, idx, 1)
    np.put_along_axis(sub_lo, idx, np.where(valid, np.fmax(old_lo, bound[:, :R]), old_lo), 1)
    np.put_along_axis(sub_hi, idx, np.where(valid, np.fmin(old_hi, -bound[:, R:]), old_hi), 1)
    lo[at], hi[at] = sub_lo, sub_hi


def _backward(net: _Net, bd: _Bounds, at: np.ndarray | slice, start: int, L: np.ndarray, const: np.ndarray,
              slack: np.ndarray, under: np.ndarray, alpha: np.ndarray | None = None,
              beta: np.ndarray | None = None, nu: np.ndarray | None = None, stop: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """CROWN from coefficients ``L`` ``(W, R, n_start)`` on node ``start`` (row ``w`` over region
    ``at[w]``) back to node ``stop`` (the input by default): returns ``a`` ``(W, R, n_stop)`` and ``const``
    with ``L . v_start + const_in >= a . v_stop + const - (error)``; the error's parts are added to
    ``slack`` and ``under`` in place.
    ``alpha`` ``(W, H)`` (NaN: adaptive) are lower slopes; ``beta`` ``(W, H)`` the signed ``beta_g s_g``;
    ``nu`` ``(W, H)`` replaces every ReLU's relaxation (``_given``)."""
    lam = {start: L}
    for i in range(start, stop, -1):
        L = lam.pop(i, None)
        if L is None:
            continue
        op = net.ops[i]
        with np.errstate(invalid="ignore", over="ignore"):
            absL = np.abs(L)
            slack += np.einsum("wrn,wn->wr", absL, bd.term[i][at])
            # a row with a nonzero coefficient: at most every entry's underflow count
            under += (absL.max(-1) > 0) * bd.under[i][at]
            if isinstance(op, _Affine):
                if op.bias.any():
                    const = const + L @ op.bias
                    slack += U * np.abs(const)
                    under += const != 0
                for k, M in zip(op.inputs, op.maps):
                    _collect(lam, k, M.back(L), bd.mag[k][at], slack, under)
                continue
            off, n = bd.layer[i]
            if nu is not None:
                P, const = _given(bd, i, op, at, L, nu[:, None, off:off + n], const, slack, under)
                _collect(lam, op, P, bd.mag[op][at], slack, under)
                continue
            lower = bd.low[i][at][:, None, :]
            if alpha is not None:
                given = alpha[:, None, off:off + n]
                lower = np.where(bd.unstable[i][at][:, None, :] & ~np.isnan(given), given, lower)
            P = L * lower
            np.multiply(L, bd.slope[i][at][:, None, :], out=P, where=L < 0)  # the chord where L < 0
            const = const + np.einsum("wrn,wn->wr", np.minimum(L, 0.0), bd.icpt[i][at])
            slack += U * np.abs(const)
            under += const != 0
            if beta is not None and beta[:, off:off + n].any():
                P = P - beta[:, None, off:off + n]
                slack += U * np.einsum("wrn,wn->wr", np.abs(P), bd.mag[op][at])
                under += (P != 0).sum(-1) + 1.0
            _collect(lam, op, P, bd.mag[op][at], slack, under)
    a = lam.pop(stop, None)
    return (np.zeros((*const.shape, net.sizes[stop])) if a is None else a), const


def _given(bd: _Bounds, r: int, p: int, at: np.ndarray | slice, L: np.ndarray, nu: np.ndarray, const: np.ndarray,
           slack: np.ndarray, under: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU node ``r`` (input ``p``) in the Lagrangian form: ``L relu(z) >= nu z + h`` on ``[l, u]`` with
    ``h = min(L relu(z) - nu z)`` over ``l``, ``u`` and ``0`` (the function is piecewise linear).  Each
    ``h`` term is two products and a difference (within ``3u`` of ``(|L| + |nu|) |z|max``), their sum
    adds ``gamma_n``; ``nu`` passes on exactly."""
    lo, hi, mag = bd.lo[p][at][:, None, :], bd.hi[p][at][:, None, :], bd.mag[p][at][:, None, :]
    nu = np.broadcast_to(nu, L.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        h = np.minimum(L * np.maximum(lo, 0.0) - nu * lo, L * np.maximum(hi, 0.0) - nu * hi)
        h = np.where((lo < 0) & (hi > 0), np.minimum(h, 0.0), h)
        const = const + h.sum(-1)
        n = L.shape[-1]
        slack += gamma(n + 3) * ((np.abs(L) + np.abs(nu)) * mag).sum(-1) + U * np.abs(const)
        under += 3.0 * n + 1.0
    return nu.copy(), const


def _collect(lam: dict, k: int, P: np.ndarray, mag: np.ndarray, slack: np.ndarray, under: np.ndarray) -> None:
    """Add coefficients ``P`` to node ``k``'s (a fan-out: the sum rounds by ``u |sum|``)."""
    if k in lam:
        P = lam[k] + P
        slack += U * np.einsum("wrn,wn->wr", np.abs(P), mag)
        under += (P != 0).sum(-1) + 1.0
    lam[k] = P


def _error(slack: np.ndarray, under: np.ndarray) -> np.ndarray:
    """The total error bound: ``slack`` inflated for its own rounding plus the underflow allowance."""
    with np.errstate(invalid="ignore", over="ignore"):
        under = under + (slack > 0)  # the product slack * INFLATE may underflow
        return slack * INFLATE + np.where(under > 0, under * UNDER_UNIT + 2.0**-1074, 0.0)


def _concretize(a: np.ndarray, const: np.ndarray, slack: np.ndarray, under: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(v, S)`` with ``min over the box [lo, hi] of a . x + const - (error) >= v - S`` in reals."""
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.minimum(a * lo[:, None, :], a * hi[:, None, :])
        v = m.sum(-1) + const
        e = np.einsum("wrn,wn->wr", np.abs(a), np.maximum(np.abs(lo), np.abs(hi))) + np.abs(const)
        err = gamma(a.shape[-1] + 2) * e
        return v, _error(slack + err, under + 2 * (a != 0).sum(-1) + (e != 0))


# ---------------------------------------------------------------- one case


@dataclass(eq=False)
class _Level:
    """The nodes of one tree level still to check, with the state they inherit."""

    nodes: np.ndarray  # (B,) preorder indices
    lo: np.ndarray  # (B, n_in) the node's box
    hi: np.ndarray
    splits: np.ndarray  # (B, H) int8: +1 active, -1 inactive, 0 free
    pre_lo: np.ndarray  # (B, H) the parent's pre-activation bounds
    pre_hi: np.ndarray
    open: np.ndarray  # (B, P) polytopes not yet ruled out
    fresh: np.ndarray  # (B,) the first ReLU layer whose bounds differ from the parent's (``_sweep``)
    run: np.ndarray  # (B, P) a derived lemma group's best closure bound on the path to the node

    def part(self, s: slice) -> _Level:
        return _Level(*(getattr(self, f)[s] for f in _LEVEL_FIELDS))

    @staticmethod
    def join(parts: list[_Level]) -> _Level:
        return _Level(*(np.concatenate([getattr(p, f) for p in parts]) for f in _LEVEL_FIELDS))


_LEVEL_FIELDS = ("nodes", "lo", "hi", "splits", "pre_lo", "pre_hi", "open", "fresh", "run")


@dataclass(eq=False)
class _Counts:
    nodes: int = 0
    leaves: int = 0
    closures: int = 0


@dataclass(eq=False)
class _CaseCheck:
    """One case's certificate against the network and the case's polytopes."""

    net: _Net
    index: int
    proof: CaseProof
    A: np.ndarray  # (P, R, n_out) the polytopes, padded with zero rows
    b: np.ndarray  # (P, R)
    strict: np.ndarray  # (P, R)
    children: np.ndarray  # (N, 2)
    pos: np.ndarray  # (N,) scratch: position of a node in the chunk being checked, else -1
    counts: _Counts
    derived: np.ndarray | None = None  # (P,) a derived lemma group's bounds: the least over its leaves

    def fail(self, message: str) -> _Invalid:
        return _Invalid(f"case {self.index}: {message}")


def _parse_tree(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """Children ``(N, 2)`` and depth ``(N,)`` of a preorder tree, or what is wrong with it."""
    N = kind.shape[0]
    children, depth = np.full((N, 2), -1, np.int64), np.zeros(N, np.int64)
    pending: list[tuple[int, int]] = []  # (parent, slot) waiting for a child, the next one last
    for i, k in enumerate(kind.tolist()):
        if i:
            if not pending:
                return f"the tree ends before node {i}"
            parent, slot = pending.pop()
            children[parent, slot], depth[i] = i, depth[parent] + 1
        if k:
            pending += [(i, 1), (i, 0)]
    if pending:
        return f"node {pending[-1][0]} misses a child"
    return children, depth


def _validate(net: _Net, case: Case, cp: CaseProof) -> str | None:
    """What is wrong with the tables of a case's certificate, or None."""
    N, n_in, H = cp.kind.shape[0], net.n_in, net.H
    P = len(case.polytopes)
    R = max((p.A.shape[0] for p in case.polytopes), default=0)
    rows = np.array([p.A.shape[0] for p in case.polytopes], dtype=np.int64)
    checks = [
        (cp.box_lower.shape[0] == 0 or cp.box_lower.shape[1] == n_in, f"its boxes are not over {n_in} inputs"),
        (cp.alpha.shape[0] == 0 or cp.alpha.shape[1] == H, f"its slopes are not over {H} neurons"),
        (cp.beta.shape[0] == 0 or cp.beta.shape[1] == H, f"its multipliers are not over {H} neurons"),
        (cp.close_weights.shape[0] == 0 or cp.close_weights.shape[1] == R, f"its weights are not over {R} rows"),
        (cp.contract_weights.shape[0] == 0 or cp.contract_weights.shape[1] == R, f"its cuts are not over {R} rows"),
        (cp.nu.shape[0] == 0 or cp.nu.shape[1] == H, f"its coefficients are not over {H} neurons"),
        (np.isin(cp.kind, (0, 1, 2, 3)).all(), "a node kind is not 0, 1, 2 or 3"),
        (np.all(cp.arg[cp.kind == 0] == -1), "a leaf's arg is not -1"),
        (_within(cp.arg[cp.kind == 1], 0, n_in), "an input split names no input"),
        (_within(cp.arg[cp.kind == 2], 0, H), "a ReLU split names no neuron"),
        (_within(cp.arg[cp.kind == 3], 0, P), "a fork names no polytope"),
        (_within(cp.box, -1, cp.box_lower.shape[0]), "a box index is out of range"),
        (_within(cp.close_node, 0, N) and _within(cp.contract_node, 0, N), "a closure or cut names no node"),
        (_within(cp.close_poly, 0, P) and _within(cp.contract_poly, 0, P), "a closure or cut names no polytope"),
        (_within(cp.close_alpha, -1, cp.alpha.shape[0]), "a closure names no slope row"),
        (_within(cp.close_beta, -1, cp.beta.shape[0]), "a closure names no multiplier row"),
        (np.all((cp.alpha >= 0) & (cp.alpha <= 1)), "a slope is outside [0, 1]"),
        (np.all(np.isfinite(cp.beta) & (cp.beta >= 0)), "a multiplier is negative or not finite"),
        (_within(cp.close_nu, -1, cp.nu.shape[0]), "a closure names no coefficient row"),
        (np.all(np.isfinite(cp.nu)), "a pre-activation coefficient is not finite"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    if np.any(cp.box[cp.close_node[cp.close_on_box]] < 0) or np.any(cp.box[cp.contract_node] < 0):
        return "a closure on the contracted box, or a cut, is at a node without one"
    # a closure's weights may all be 0: a positive bound of 0 then proves its region has no point (an LP
    # leaf whose split signs contradict, closed by a Farkas ray); a cut needs a row to cut with
    for name, weights, poly, zero_ok in (("closure", cp.close_weights, cp.close_poly, True),
                                         ("cut", cp.contract_weights, cp.contract_poly, False)):
        beyond = np.arange(R)[None, :] >= rows[poly][:, None]
        bad = ~np.all(np.isfinite(weights) & (weights >= 0), 1) | np.any(beyond & (weights != 0), 1)
        if not zero_ok:
            bad |= ~np.any(weights > 0, 1)
        if bad.any():
            j = int(np.nonzero(bad)[0][0])
            return f"{name} {j} has weights that are negative, not finite, all zero or past the polytope's rows"
    return None


def _within(x: np.ndarray, lo: int, hi: int) -> bool:
    return bool(np.all((x >= lo) & (x < hi)))


def _check_case(net: _Net, case: Case, cp: CaseProof, index: int | str, counts: _Counts,
                root_lo: np.ndarray | None = None, root_hi: np.ndarray | None = None,
                claimed: np.ndarray | None = None, derived: np.ndarray | None = None) -> None:
    """Raise ``_Invalid`` unless ``cp`` proves that no point of the case's box maps into its polytopes
    (only the ``claimed`` ones, when given).  ``root_lo``, ``root_hi`` ``(H,)``: pre-activation bounds
    proven on the box (lemmas).  ``derived`` ``(P,)``, ``+inf`` on entry: a derived lemma group's tree, whose
    closures rule nothing out: each row gets the least, over the leaves of its subtree with a region, of
    the greatest bound of its closures on the path to the leaf (``-inf`` without one)."""
    problem = _validate(net, case, cp)
    tree = _parse_tree(cp.kind)
    if problem is None and isinstance(tree, str):
        problem = f"the tree is malformed: {tree}"
    if problem is not None:
        raise _Invalid(f"case {index}: {problem}")
    children, depth = tree
    P = len(case.polytopes)
    R = max((p.A.shape[0] for p in case.polytopes), default=0)
    A, b, strict = np.zeros((P, R, net.sizes[net.output])), np.zeros((P, R)), np.zeros((P, R), dtype=bool)
    for j, p in enumerate(case.polytopes):
        k = p.A.shape[0]
        A[j, :k], b[j, :k], strict[j, :k] = p.A, p.b, p.strict
    cc = _CaseCheck(net, index, cp, A, b, strict, children, np.full(len(cp.kind), -1, np.int64), counts, derived)
    counts.nodes += len(cp.kind)
    counts.leaves += int(np.sum(cp.kind == 0))
    close_rows, cut_rows = _by_depth(cp.close_node, depth), _by_depth(cp.contract_node, depth)
    H = net.H
    pre_lo = np.full((1, H), -np.inf) if root_lo is None else root_lo[None, :H].copy()
    pre_hi = np.full((1, H), np.inf) if root_hi is None else root_hi[None, :H].copy()
    opened = np.ones((1, P), dtype=bool) if claimed is None or derived is not None else claimed[None].copy()
    level = _Level(np.zeros(1, np.int64), case.lower[None], case.upper[None], np.zeros((1, H), np.int8),
                   pre_lo, pre_hi, opened, np.zeros(1, np.int64), np.full((1, P), -np.inf))
    chunk = max(1, min(4096, ELEMENTS // (2 * max(net.sizes) * max([n for *_, n in net.layers] + [1]))))
    d = 0
    while level.nodes.size:
        parts = [_check_chunk(cc, level.part(slice(s, s + chunk)), _rows(close_rows, d), _rows(cut_rows, d))
                 for s in range(0, level.nodes.size, chunk)]
        level = _Level.join(parts)
        d += 1


def _cut(net: _Net, k: int) -> _Net:
    """The network whose output is the pre-activation of ReLU layer ``k`` (its ReLU layers: those before)."""
    pre = net.layers[k][1]
    return _Net(net.ops[:pre + 1], net.sizes[:pre + 1], pre, tuple(layer for layer in net.layers if layer[0] < pre))


def _lemma_bounds(net: _Net, case: Case, groups: tuple[LemmaProof, ...], index: int, counts: _Counts
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation bounds ``(H,)`` proven on the case's box by its lemma groups, checked in order."""
    lo, hi = np.full(net.H, -np.inf), np.full(net.H, np.inf)
    for m, g in enumerate(groups):
        where = f"{index} lemma group {m}"
        if g.layer >= len(net.layers):
            raise _Invalid(f"case {where}: names ReLU layer {g.layer} of {len(net.layers)}")
        _, pre, off, n = net.layers[g.layer]
        if not _within(g.neuron, 0, n):
            raise _Invalid(f"case {where}: a row names no neuron of its layer")
        sub = _cut(net, g.layer)
        rows = tuple(Polytope(A=(g.side[p] * np.eye(1, n, int(g.neuron[p]))), b=g.value[p:p + 1],
                              strict=np.zeros(1, dtype=bool)) for p in range(g.neuron.size))
        derived = np.full(g.neuron.size, np.inf) if g.derive else None
        if g.derive and (g.tree.box >= 0).any():
            # a contraction drops points outside the polytope, where a derived bound must hold too
            raise _Invalid(f"case {where}: a derived group contracts a box")
        _check_case(sub, Case(case.lower, case.upper, rows), g.tree, where, counts, lo, hi, g.claimed, derived)
        if g.derive:
            with np.errstate(invalid="ignore", over="ignore"):
                proven = _lower(g.value + derived)  # side z_j >= proven (the sum rounded down)
        else:
            proven = np.where(g.claimed, g.value, -np.inf)  # side z_j > value, exactly as stored
        j = off + g.neuron
        up, down = g.side > 0, g.side < 0
        np.fmax.at(lo, j[up], proven[up])
        np.fmin.at(hi, j[down], -proven[down])
    return lo, hi


def _by_depth(node_of_row: np.ndarray, depth: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by the depth of their node."""
    if not node_of_row.size:
        return []
    d = depth[node_of_row]
    order = np.argsort(d, kind="stable")
    return np.split(order, np.searchsorted(d[order], np.arange(1, int(d.max()) + 1)))


def _rows(groups: list[np.ndarray], d: int) -> np.ndarray:
    return groups[d] if d < len(groups) else np.zeros(0, np.int64)


def _check_chunk(cc: _CaseCheck, st: _Level, close_rows: np.ndarray, cut_rows: np.ndarray) -> _Level:
    """Check a chunk of one level's nodes; returns their children to check."""
    cp, B = cc.proof, st.nodes.size
    cc.pos[st.nodes] = np.arange(B)
    try:
        bd, pre_lo, pre_hi = _sweep(cc.net, st.lo, st.hi, st.splits, st.pre_lo, st.pre_hi, st.fresh)
        open_ = st.open & ~bd.empty[:, None]
        close_rows = close_rows[cc.pos[cp.close_node[close_rows]] >= 0]
        cut_rows = cut_rows[cc.pos[cp.contract_node[cut_rows]] >= 0]
        on_box = cp.close_on_box[close_rows]
        _closures(cc, bd, st, _alive(cc, close_rows[~on_box], cp.close_node, open_), st.lo, st.hi, open_)
        lo, hi = st.lo, st.hi
        contracted = np.nonzero((cp.box[st.nodes] >= 0) & open_.any(1))[0]
        if contracted.size:
            lo, hi = _contract(cc, bd, st, contracted, cut_rows, open_)
        _closures(cc, bd, st, _alive(cc, close_rows[on_box], cp.close_node, open_), lo, hi, open_)
        left = open_.any(1)
        if cc.derived is not None:  # a leaf's rows take their best bound on its path
            leaf = np.nonzero(cp.kind[st.nodes] == 0)[0]
            rows = np.nonzero(open_[leaf])
            np.fmin.at(cc.derived, rows[1], st.run[leaf[rows[0]], rows[1]])
            left &= cp.kind[st.nodes] != 0
        kind = cp.kind[st.nodes]
        stuck = np.nonzero(left & (kind == 0))[0]
        if stuck.size:
            j = int(stuck[0])
            polys = np.nonzero(open_[j])[0].tolist()
            raise cc.fail(f"leaf node {st.nodes[j]} leaves polytope(s) {polys} open")
        go = np.nonzero(left & (kind != 0))[0]
        return _children(cc, _Level(st.nodes[go], lo[go], hi[go], st.splits[go], pre_lo[go], pre_hi[go], open_[go],
                                    st.fresh[go], st.run[go]))
    finally:
        cc.pos[st.nodes] = -1


def _alive(cc: _CaseCheck, rows: np.ndarray, node_of_row: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """The rows whose node still has a polytope open (the others' nodes are settled)."""
    return rows[open_.any(1)[cc.pos[node_of_row[rows]]]]


def _start(cc: _CaseCheck, bd: _Bounds, pos: np.ndarray, poly: np.ndarray, lam: np.ndarray):
    """Output coefficients ``lambda^T A`` ``(W, 1, n_out)``, constant ``-lambda^T b`` and the errors of both."""
    A, b = cc.A[poly], cc.b[poly]  # (W, R, n_out), (W, R)
    mag = bd.mag[cc.net.output][pos]  # (W, n_out)
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.einsum("wr,wro->wo", lam, A)
        const = -(lam * b).sum(1)
        X = np.einsum("wr,wro,wo->w", lam, np.abs(A), mag) + (lam * np.abs(b)).sum(1)
        slack = gamma(max(lam.shape[1], 1)) * X
        nz = (lam != 0).sum(1)
        under = nz * (2 * mag + (mag != 0)).sum(1) + 2 * ((lam != 0) & (b != 0)).sum(1) + (X != 0)
    return c[:, None, :], const[:, None], slack[:, None], under[:, None].astype(np.float64)


def _interval_rows(cc: _CaseCheck, bd: _Bounds, pos: np.ndarray, c: np.ndarray, const: np.ndarray,
                   slack: np.ndarray, under: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(v, S)`` of the rows' interval bound (``_start``'s rows, not modified): folded into the output
    node when it is affine (one step of ``_backward``), then over its inputs' interval bounds."""
    out, W = cc.net.output, c.shape[0]
    op = cc.net.ops[out]
    slack, under = slack[:, 0].copy(), under[:, 0].copy()
    const = const[:, 0].copy()
    parts = [(out, c[:, 0])]
    with np.errstate(invalid="ignore", over="ignore"):
        if isinstance(op, _Affine):
            absc = np.abs(c[:, 0])
            slack += (absc * bd.term[out][pos]).sum(-1)
            under += (absc.max(-1) > 0) * bd.under[out][pos][:, 0]
            if op.bias.any():
                const = const + c[:, 0] @ op.bias
                slack += U * np.abs(const)
                under += const != 0
            parts = [(k, M.back(c[:, 0])) for k, M in zip(op.inputs, op.maps)]
        v, e, nz = const.copy(), np.abs(const), np.zeros(W)
        for k, P in parts:
            m = np.minimum(P * bd.lo[k][pos], P * bd.hi[k][pos])
            v = v + m.sum(-1)
            e = e + np.abs(m).sum(-1)
            nz = nz + 2 * (P != 0).sum(-1)
        n = sum(P.shape[-1] for _, P in parts)
        S = _error(slack + gamma(n + len(parts) + 2) * e, under + nz + (e != 0))
    return v, S


def _row_chunks(cc: _CaseCheck, rows: np.ndarray) -> list[np.ndarray]:
    size = max(1, ELEMENTS // max(cc.net.sizes + (cc.net.H,)))
    return [rows[s:s + size] for s in range(0, rows.size, size)]


def _closures(cc: _CaseCheck, bd: _Bounds, st: _Level, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              open_: np.ndarray) -> None:
    """Check closure rows over the boxes ``lo, hi`` of their nodes; rule their polytopes out."""
    cp, H = cc.proof, cc.net.H
    for r in _row_chunks(cc, rows):
        pos, poly, lam = cc.pos[cp.close_node[r]], cp.close_poly[r], cp.close_weights[r]
        alpha = beta = None
        ca, cb = cp.close_alpha[r], cp.close_beta[r]
        if (ca >= 0).any():
            alpha = np.full((r.size, H), np.nan)
            alpha[ca >= 0] = cp.alpha[ca[ca >= 0]]
        if (cb >= 0).any():
            beta = np.zeros((r.size, H))
            beta[cb >= 0] = cp.beta[cb[cb >= 0]]
            signs = st.splits[pos]
            stray = np.nonzero(((beta != 0) & (signs == 0)).any(1))[0]
            if stray.size:
                j = int(stray[0])
                raise cc.fail(f"closure {r[j]} at node {cp.close_node[r[j]]} puts a multiplier on an unsplit neuron")
            beta = beta * signs
        cn = cp.close_nu[r]
        nu = None
        if (cn >= 0).any():
            nu = np.zeros((r.size, H))
            nu[cn >= 0] = cp.nu[cn[cn >= 0]]
        c, const, slack, under = _start(cc, bd, pos, poly, lam)
        strict = ((lam > 0) & cc.strict[poly]).any(1)
        iv, iS = _interval_rows(cc, bd, pos, c, const, slack, under)
        ok = _positive(iv, iS, strict)
        best = _lower(iv - iS)
        for given in ([False, True] if nu is not None else [False]):
            # rows with coefficients take the Lagrangian form, the others slopes and multipliers
            part = (cn >= 0) == given
            if not part.any():
                continue
            sl, un = slack[part], under[part]  # copies: the backward pass adds its errors to these
            a, k = _backward(cc.net, bd, pos[part], cc.net.output, c[part], const[part], sl, un,
                             None if alpha is None else alpha[part], None if beta is None else beta[part],
                             nu[part] if given else None)
            v, S = _concretize(a, k, sl, un, lo[pos[part]], hi[pos[part]])
            ok[part] |= _positive(v[:, 0], S[:, 0], strict[part])
            best[part] = np.fmax(best[part], _lower(v[:, 0] - S[:, 0]))
        if cc.derived is not None:
            np.fmax.at(st.run, (pos, poly), best)
            continue
        if not ok.all():
            j = int(np.nonzero(~ok)[0][0])
            where = "contracted box of node" if cp.close_on_box[r[j]] else "node"
            raise cc.fail(f"closure {r[j]} does not rule out polytope {poly[j]} at {where} {cp.close_node[r[j]]}: "
                          f"lower bound {float(best[j]):.6g}")
        open_[pos, poly] = False
        cc.counts.closures += r.size


def _positive(v: np.ndarray, S: np.ndarray, strict: np.ndarray) -> np.ndarray:
    """Whether ``v - S > 0`` (``>= 0`` where ``strict``), exactly (NaN and infinities: no)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & np.isfinite(S) & ((v > S) | (strict & (v >= S)))


def _contract(cc: _CaseCheck, bd: _Bounds, st: _Level, nodes: np.ndarray, rows: np.ndarray,
              open_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the contracted boxes of chunk positions ``nodes``: returns every node's box for its children."""
    cp, P = cc.proof, open_.shape[1]
    slot = np.full(st.nodes.size, -1)
    slot[nodes] = np.arange(nodes.size)
    pos = cc.pos[cp.contract_node[rows]]
    rows = rows[(slot[pos] >= 0) & open_[pos, cp.contract_poly[rows]]]
    pos, poly = cc.pos[cp.contract_node[rows]], cp.contract_poly[rows]
    cuts, bounds = [], []
    for r in _row_chunks(cc, rows):
        p = cc.pos[cp.contract_node[r]]
        c, const, slack, under = _start(cc, bd, p, cp.contract_poly[r], cp.contract_weights[r])
        a, const = _backward(cc.net, bd, p, cc.net.output, c, const, slack, under)
        cuts.append(a[:, 0, :])
        bounds.append(_lower(const - _error(slack, under))[:, 0])  # a . x + c <= 0 on the polytope
    a = np.concatenate(cuts) if cuts else np.zeros((0, st.lo.shape[1]))
    c = np.concatenate(bounds) if bounds else np.zeros(0)
    use = np.isfinite(c) & np.isfinite(a).all(1)
    a, rhs0, k, poly = a[use], -c[use], slot[pos[use]], poly[use]
    blo = np.repeat(st.lo[nodes][:, None, :], P, 1)  # (Bc, P, n_in)
    bhi = np.repeat(st.hi[nodes][:, None, :], P, 1)
    gone = np.zeros((nodes.size, P), dtype=bool)
    g = gamma(a.shape[1] + 4)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for _ in range(ROUNDS):
            m = np.minimum(a * blo[k, poly], a * bhi[k, poly])  # (Q, n_in)
            total = m.sum(1)
            slack = g * (np.abs(m).sum(1) + np.abs(rhs0)) * INFLATE + IBP_FLOOR
            fin = np.isfinite(total) & np.isfinite(slack)
            empty = fin & (_lower(total - slack) > rhs0)
            gone[k[empty], poly[empty]] = True
            room = _upper(rhs0[:, None] - (total[:, None] - m) + slack[:, None])  # a_j x_j <= room_j
            q = room / np.where(a == 0, 1.0, a)
            ok = fin[:, None] & np.isfinite(room)
            new_lo, new_hi = blo.copy(), bhi.copy()
            np.fmin.at(new_hi, (k, poly), np.where(ok & (a > 0), _upper(q), np.inf))
            np.fmax.at(new_lo, (k, poly), np.where(ok & (a < 0), _lower(q), -np.inf))
            blo, bhi = new_lo, new_hi
    gone |= (blo > bhi).any(2)
    still = open_[nodes] & ~gone
    hull_lo = np.where(still[..., None], blo, np.inf).min(1)
    hull_hi = np.where(still[..., None], bhi, -np.inf).max(1)
    box = cp.box[st.nodes[nodes]]
    given_lo, given_hi = cp.box_lower[box], cp.box_upper[box]
    inside = np.all(given_lo <= hull_lo, 1) & np.all(hull_hi <= given_hi, 1)
    bad = np.nonzero(still.any(1) & ~inside)[0]
    if bad.size:
        j = int(bad[0])
        raise cc.fail(f"the contracted box of node {st.nodes[nodes[j]]} does not contain the hull "
                      f"[{hull_lo[j].tolist()}, {hull_hi[j].tolist()}] of its open polytopes")
    open_[nodes] = still
    lo, hi = st.lo.copy(), st.hi.copy()
    lo[nodes], hi[nodes] = np.fmax(given_lo, st.lo[nodes]), np.fmin(given_hi, st.hi[nodes])
    return lo, hi


def _children(cc: _CaseCheck, st: _Level) -> _Level:
    """The children of the split nodes ``st`` (their box already the one the children start from)."""
    cp = cc.proof
    kind, arg = cp.kind[st.nodes], cp.arg[st.nodes]
    lo0, hi0, lo1, hi1 = st.lo.copy(), st.hi.copy(), st.lo.copy(), st.hi.copy()
    s0, s1 = st.splits.copy(), st.splits.copy()
    j = np.nonzero(kind == 1)[0]
    d, p = arg[j], cp.point[st.nodes[j]]
    bad = np.nonzero(~((st.lo[j, d] <= p) & (p <= st.hi[j, d])))[0]
    if bad.size:
        i = int(bad[0])
        raise cc.fail(f"node {st.nodes[j[i]]} splits input {d[i]} at {float(p[i])!r}, outside "
                      f"[{float(st.lo[j[i], d[i]])!r}, {float(st.hi[j[i], d[i]])!r}]")
    hi0[j, d], lo1[j, d] = p, p
    j = np.nonzero(kind == 2)[0]
    g = arg[j]
    again = np.nonzero(st.splits[j, g] != 0)[0]
    if again.size:
        raise cc.fail(f"node {st.nodes[j[again[0]]]} splits neuron {g[again[0]]} again")
    s0[j, g], s1[j, g] = -1, 1
    # the layers up to a split neuron's own keep the parent's bounds (same box, same earlier splits); a fork's
    # children are the parent's region: every layer; an input split or a contracted box changes the box: none
    fresh = np.zeros(st.nodes.size, np.int64)
    fresh[j] = np.searchsorted(cc.net.offsets, g, side="right")
    fresh[kind == 3] = len(cc.net.layers)
    fresh[cp.box[st.nodes] >= 0] = 0
    open0, open1 = st.open.copy(), st.open.copy()
    j = np.nonzero(kind == 3)[0]
    mine = np.zeros((j.size, st.open.shape[1]), dtype=bool)
    mine[np.arange(j.size), arg[j]] = True
    open0[j] &= mine  # the first child answers for polytope p only, the second for the others
    open1[j] &= ~mine
    return _Level(np.concatenate([cc.children[st.nodes, 0], cc.children[st.nodes, 1]]),
                  np.concatenate([lo0, lo1]), np.concatenate([hi0, hi1]), np.concatenate([s0, s1]),
                  np.concatenate([st.pre_lo, st.pre_lo]), np.concatenate([st.pre_hi, st.pre_hi]),
                  np.concatenate([open0, open1]), np.concatenate([fresh, fresh]), np.concatenate([st.run, st.run]))


# ---------------------------------------------------------------- the entry point


def check_proof(model_path: str | os.PathLike, spec_path: str | os.PathLike, proof: Proof | str | os.PathLike
                ) -> CheckResult:
    """Check that ``proof`` proves the property ``spec_path`` of the model ``model_path``.

    Returns ``CheckResult(valid=False, reason=...)`` for a certificate that proves nothing; raises
    ``ProofFormatError``, ``UnsupportedCheckError`` or the importer's and reader's errors for bad input.
    """
    start = time.monotonic()
    _check_arithmetic()
    if not isinstance(proof, Proof):
        proof = load_proof(proof)
    model_hash, spec_hash = _sha256(model_path, "model"), _sha256(spec_path, "spec")
    t = time.monotonic()
    net = load_network(model_path)
    load = time.monotonic() - t
    spec = read_spec(spec_path, n_inputs=net.n_in, n_outputs=net.sizes[net.output])
    counts = _Counts()
    try:
        meta = proof.meta
        if meta["model_sha256"] != model_hash:
            raise _Invalid("certificate is for another model (sha256 differs)")
        if meta["spec_sha256"] != spec_hash:
            raise _Invalid("certificate is for another spec (sha256 differs)")
        if meta["n_cases"] != len(spec.cases):
            raise _Invalid(f"certificate has {meta['n_cases']} cases, the spec {len(spec.cases)}")
        if meta["relu_sizes"] != [n for *_, n in net.layers]:
            raise _Invalid("certificate is for another model (its ReLU layer sizes differ)")
        for i, (case, cp) in enumerate(zip(spec.cases, proof.cases)):
            root_lo, root_hi = _lemma_bounds(net, case, proof.lemmas[i], i, counts)
            _check_case(net, case, cp, i, counts, root_lo, root_hi)
    except _Invalid as e:
        return CheckResult(False, str(e), len(spec.cases), counts.nodes, counts.leaves, counts.closures,
                           time.monotonic() - start, load)
    return CheckResult(True, "", len(spec.cases), counts.nodes, counts.leaves, counts.closures,
                       time.monotonic() - start, load)


def _sha256(path: str | os.PathLike, what: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise InputFileError(f"cannot read {what} file {os.fspath(path)}: {e.strerror or e}") from None
