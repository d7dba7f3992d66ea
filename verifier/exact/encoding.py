"""Solver-neutral mixed-integer encoding of a network on an input box.

The problem is ``row_lower <= A v <= row_upper``, ``col_lower <= v <= col_upper``
with some columns integral; it is held as ``scipy.sparse`` data so that HiGHS,
the LP relaxation and the tests all read the same thing.

Columns are: the scaled input ``z`` (``x = center + radius * z``, ``z`` in
``[-1, 1]``, which keeps the LP well scaled), one column per ReLU output that is
not stably zero, one binary per unstable ReLU, and for MaxPool one column per
output with one binary per candidate input.  Affine nodes introduce no columns:
their values are ``Affine`` expressions over the columns built so far.

A ReLU ``y = max(x, 0)`` with sound pre-activation bounds ``l < 0 < u`` is the
big-M encoding of Tjeng et al. (ICLR 2019, eq. 6)::

    y >= x,  y <= x - l (1 - a),  y <= u a,  y >= 0,  a in {0, 1}

and, relaxed, the triangle ``y >= 0, y >= x, y <= u (x - l) / (u - l)`` (the
projection of the big-M LP relaxation).  Stable ReLUs are equalities or zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from verifier.exact.linear_ops import INDEX_OPS, LINEAR_OPS, index_map, linear_map, maxpool_windows
from verifier.network import Add, Input, MaxPool, Network, Relu

# float64 rounding of a sparse dot product, relative to the sum of |terms|
_F64_SLACK = 1e-10


@dataclass(frozen=True)
class EncodingOptions:
    """How bounds are widened and whether ReLUs are relaxed."""

    relax: bool = False  # triangle relaxation instead of binaries (an LP)
    margin_abs: float = 1e-6  # given pre-activation bounds are widened by abs + rel * |bound|
    margin_rel: float = 1e-6
    inactive_rows: bool = False  # a row ``pre <= 0`` for every stably inactive ReLU (else only for split ones)


@dataclass(frozen=True, eq=False)
class Affine:
    """``M @ v + c`` over the first ``M.shape[1]`` problem columns."""

    M: sp.csr_matrix  # (n, n_cols)
    c: np.ndarray  # (n,)


@dataclass(frozen=True, eq=False)
class ReluBounds:
    """Pre-activation bounds of every Relu node, in ``net.relu_indices`` order (flat float64)."""

    lower: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]

    def unstable(self) -> int:
        return int(sum(np.count_nonzero((lo < 0) & (hi > 0)) for lo, hi in zip(self.lower, self.upper)))


@dataclass(frozen=True, eq=False)
class MipProblem:
    """``min cost @ v + offset`` s.t. ``row_lower <= A v <= row_upper``, column bounds, integrality."""

    A: sp.csr_matrix  # (m, n)
    row_lower: np.ndarray  # (m,)
    row_upper: np.ndarray  # (m,)
    col_lower: np.ndarray  # (n,)
    col_upper: np.ndarray  # (n,)
    integrality: np.ndarray  # (n,) bool
    cost: np.ndarray = field(default=None)  # (n,)
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.cost is None:
            object.__setattr__(self, "cost", np.zeros(self.A.shape[1]))

    @property
    def n_cols(self) -> int:
        return self.A.shape[1]

    @property
    def n_binary(self) -> int:
        return int(np.count_nonzero(self.integrality))


@dataclass(frozen=True, eq=False)
class NetworkEncoding:
    """The network's constraints on one box, and how to read inputs and outputs back."""

    problem: MipProblem  # zero cost
    output: Affine  # (n_out,)
    input_cols: np.ndarray  # (n_in,)
    lower: np.ndarray  # (n_in,) the box; x = center + radius * z
    upper: np.ndarray  # (n_in,)
    bounds: ReluBounds  # the bounds the encoding used (after widening and splits)
    empty: bool = False  # the splits contradict the bounds: the region has no input
    # per Relu layer: the rows ``y_j - pre_j = c_j`` of its active neurons and the rows ``pre_j <= 0`` of
    # its neurons split inactive, each as (row indices, neuron indices): their duals are the
    # coefficients of the pre-activations in the LP's Lagrangian
    relu_rows: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...] = ()

    def input_of(self, values: np.ndarray) -> np.ndarray:
        """The input ``x`` of a solution vector, clipped to the box."""
        z = np.clip(np.asarray(values, dtype=np.float64)[self.input_cols], -1.0, 1.0)
        center, radius = (self.upper + self.lower) / 2.0, (self.upper - self.lower) / 2.0
        return np.clip(center + radius * z, self.lower, self.upper)


# hook(relu position k, relaxed problem so far, pre-activation, lower, upper) -> tighter (lower, upper)
TightenHook = Callable[[int, MipProblem, Affine, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def encode_network(
    net: Network,
    lower: np.ndarray,
    upper: np.ndarray,
    pre_bounds: ReluBounds | None = None,
    splits: Sequence[np.ndarray] | None = None,
    options: EncodingOptions = EncodingOptions(),
    hook: TightenHook | None = None,
) -> NetworkEncoding:
    """Encode ``net`` on the box ``[lower, upper]``.

    ``pre_bounds`` (sound, e.g. from CROWN) are intersected with the interval
    bounds of the encoding itself; ``splits[k]`` (+1 active, -1 inactive, 0 free)
    restricts Relu ``k``; ``hook`` may tighten each Relu layer's bounds given the
    problem built so far (used by LP tightening).
    """
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    builder = _Builder()
    center, radius = (upper + lower) / 2.0, (upper - lower) / 2.0
    z = builder.add_cols(np.where(radius > 0, -1.0, 0.0), np.where(radius > 0, 1.0, 0.0))
    values: list[Affine | None] = []
    relu_lo: list[np.ndarray] = []
    relu_hi: list[np.ndarray] = []
    relu_rows = []
    empty = False
    for node in net.nodes:
        op = node.op
        args = [values[j] for j in node.inputs]
        if isinstance(op, Input):
            values.append(Affine(sp.csr_matrix((radius, (np.arange(z.size), z)), shape=(z.size, z.size)), center))
        elif isinstance(op, (Relu, MaxPool)) and empty:
            # an earlier layer's bounds crossed (the region has no input; the consumers read ``empty``
            # first): nothing after it is encoded, its columns' crossed bounds would reach every later
            # interval as inf - inf
            if isinstance(op, Relu):
                relu_lo.append(np.full(node.size, np.inf))
                relu_hi.append(np.full(node.size, -np.inf))
                relu_rows.append((np.zeros(0, dtype=np.int64),) * 4)
            values.append(Affine(sp.csr_matrix((node.size, builder.n_cols)), np.zeros(node.size)))
        elif isinstance(op, Relu):
            k = len(relu_lo)
            lo, hi = _relu_bounds(builder, args[0], pre_bounds, k, options)
            if hook is not None:
                lo, hi = hook(k, builder.problem(), args[0], lo, hi)
            lo, hi, split_rows = _apply_splits(lo, hi, None if splits is None else splits[k])
            if options.inactive_rows:
                split_rows = split_rows | (hi <= 0)
            empty = bool(np.any(lo > hi))
            relu_lo.append(lo)
            relu_hi.append(hi)
            first = builder.n_rows
            values.append(_encode_relu(builder, args[0], lo, hi, split_rows, options.relax))
            neg, act = np.flatnonzero(split_rows), np.flatnonzero(lo >= 0)
            relu_rows.append((first + neg.size + np.arange(act.size), act, first + np.arange(neg.size), neg))
        elif isinstance(op, MaxPool):
            windows = maxpool_windows(op, net.nodes[node.inputs[0]].shape, node.shape)
            values.append(_encode_maxpool(builder, args[0], windows, options.relax))
        elif isinstance(op, Add):
            values.append(_add(args[0], args[1]))
        elif isinstance(op, LINEAR_OPS):
            matrix, offset = linear_map(node, net.nodes[node.inputs[0]].shape)
            values.append(Affine((matrix @ args[0].M).tocsr(), matrix @ args[0].c + offset))
        elif isinstance(op, INDEX_OPS):
            idx, fill = index_map(node, [net.nodes[j].shape for j in node.inputs])
            values.append(_gather(_stack(args), idx, fill))
        else:
            raise TypeError(f"encode_network: unhandled node type {type(op).__name__}")
    return NetworkEncoding(
        problem=builder.problem(),
        output=values[net.output],
        input_cols=z,
        lower=lower,
        upper=upper,
        bounds=ReluBounds(tuple(relu_lo), tuple(relu_hi)),
        empty=empty,
        relu_rows=tuple(relu_rows),
    )


def polytope_problem(enc: NetworkEncoding, A: np.ndarray, b: np.ndarray) -> MipProblem:
    """Feasibility problem: the network's constraints and ``A f(x) <= b``."""
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    rows = _widen(sp.csr_matrix(A) @ enc.output.M, enc.problem.n_cols)
    upper = np.asarray(b, dtype=np.float64).reshape(-1) - A @ enc.output.c
    return _append_rows(enc.problem, rows, np.full(upper.shape, -np.inf), upper)


def margin_problem(enc: NetworkEncoding, A: np.ndarray, b: np.ndarray) -> MipProblem:
    """``min s`` with ``s >= A_j f(x) - b_j`` for every row: ``s* > 0`` rules the polytope out.

    The margin ``s`` is the last column.
    """
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    p = enc.problem
    rows = _widen(sp.csr_matrix(A) @ enc.output.M, p.n_cols + 1)  # (k, n + 1)
    rows = (rows - sp.csr_matrix((np.ones(len(b)), (np.arange(len(b)), np.full(len(b), p.n_cols))),
                                 shape=rows.shape)).tocsr()
    lo_y, hi_y = interval(Affine(sp.csr_matrix(A) @ enc.output.M, A @ enc.output.c), p.col_lower, p.col_upper)
    widened = MipProblem(
        A=_widen(p.A, p.n_cols + 1),
        row_lower=p.row_lower,
        row_upper=p.row_upper,
        col_lower=np.append(p.col_lower, np.max(lo_y - b)),
        col_upper=np.append(p.col_upper, np.max(hi_y - b)),
        integrality=np.append(p.integrality, False),
        cost=np.append(np.zeros(p.n_cols), 1.0),
    )
    return _append_rows(widened, rows, np.full(len(b), -np.inf), b - A @ enc.output.c)


def linear_objective(enc: NetworkEncoding, c: np.ndarray, d: float = 0.0) -> tuple[np.ndarray, float]:
    """Cost vector and offset of ``c @ f(x) - d`` over the encoding's columns."""
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    cost = np.zeros(enc.problem.n_cols)
    row = enc.output.M.T @ c
    cost[: row.shape[0]] = row
    return cost, float(c @ enc.output.c - d)


def interval(expr: Affine, col_lower: np.ndarray, col_upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval of an affine expression over the column box (float64 rounding covered)."""
    n = expr.M.shape[1]
    lo_c, hi_c = col_lower[:n], col_upper[:n]
    pos, neg = expr.M.maximum(0), expr.M.minimum(0)
    lo = pos @ lo_c + neg @ hi_c + expr.c
    hi = pos @ hi_c + neg @ lo_c + expr.c
    slack = _F64_SLACK * (abs(expr.M) @ np.maximum(np.abs(lo_c), np.abs(hi_c)) + np.abs(expr.c))
    return lo - slack, hi + slack


def as_relu_bounds(bounds, net: Network, index: int = 0) -> ReluBounds | None:
    """Normalise pre-activation bounds given as ``ReluBounds``, an object with ``.lower``/``.upper``
    lists (e.g. a BoundResult's ``intermediate``, rows ``(B, n_k)``: row ``index`` is taken), or a
    sequence of ``(lower, upper)`` pairs."""
    if bounds is None or isinstance(bounds, ReluBounds):
        return bounds
    if hasattr(bounds, "lower") and hasattr(bounds, "upper"):
        pairs = list(zip(bounds.lower, bounds.upper))
    else:
        pairs = list(bounds)
    if len(pairs) != len(net.relu_indices):
        raise ValueError(f"bounds for {len(pairs)} Relu layers, the network has {len(net.relu_indices)}")
    lo, hi = [], []
    for k, (a, b) in enumerate(pairs):
        n = net.nodes[net.relu_indices[k]].size
        lo.append(_row(a, n, index))
        hi.append(_row(b, n, index))
    return ReluBounds(tuple(lo), tuple(hi))


def as_splits(splits, net: Network, index: int = 0) -> list[np.ndarray] | None:
    """Split states per Relu layer as flat int8 arrays (row ``index`` of batched ``(B, n_k)`` ones)."""
    if splits is None:
        return None
    return [_row(s, net.nodes[net.relu_indices[k]].size, index).astype(np.int8) for k, s in enumerate(splits)]


def _row(t, n: int, index: int) -> np.ndarray:
    a = t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
    return (a.reshape(-1, n)[index] if a.size != n else a.reshape(-1)).astype(np.float64)


class _Builder:
    """Columns and row blocks appended while walking the network (private, mutable)."""

    def __init__(self) -> None:
        self.col_lo: list[np.ndarray] = []
        self.col_hi: list[np.ndarray] = []
        self.col_int: list[np.ndarray] = []
        self.n_cols = 0
        self.blocks: list[sp.csr_matrix] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []

    def add_cols(self, lo, hi, integer: bool = False) -> np.ndarray:
        lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), lo.shape).copy()
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.col_int.append(np.full(lo.shape, integer))
        cols = np.arange(self.n_cols, self.n_cols + lo.size)
        self.n_cols += lo.size
        return cols

    @property
    def n_rows(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def add_rows(self, rows: sp.csr_matrix, lo, hi) -> None:
        m = rows.shape[0]
        if m == 0:
            return
        self.blocks.append(rows.tocsr())
        self.row_lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (m,)).copy())
        self.row_hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (m,)).copy())

    def col_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.col_lo), np.concatenate(self.col_hi)

    def problem(self) -> MipProblem:
        n = self.n_cols
        blocks = [_widen(b, n) for b in self.blocks]
        A = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n))
        empty = np.zeros(0)
        lo, hi = self.col_bounds()
        return MipProblem(
            A=A,
            row_lower=np.concatenate(self.row_lo) if self.row_lo else empty,
            row_upper=np.concatenate(self.row_hi) if self.row_hi else empty,
            col_lower=lo,
            col_upper=hi,
            integrality=np.concatenate(self.col_int),
        )


def _widen(M: sp.spmatrix, n_cols: int) -> sp.csr_matrix:
    """The same matrix with ``n_cols`` columns (new columns empty)."""
    M = M.tocsr()
    if M.shape[1] == n_cols:
        return M
    return sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], n_cols))


def _append_rows(p: MipProblem, rows: sp.csr_matrix, lo: np.ndarray, hi: np.ndarray) -> MipProblem:
    return MipProblem(
        A=sp.vstack([p.A, _widen(rows, p.n_cols)], format="csr"),
        row_lower=np.concatenate([p.row_lower, lo]),
        row_upper=np.concatenate([p.row_upper, hi]),
        col_lower=p.col_lower,
        col_upper=p.col_upper,
        integrality=p.integrality,
        cost=p.cost,
        offset=p.offset,
    )


def _unit(cols: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Rows ``e_{cols[i]}``."""
    return sp.csr_matrix((np.ones(cols.size), (np.arange(cols.size), cols)), shape=(cols.size, n_cols))


def _add(a: Affine, b: Affine) -> Affine:
    n = max(a.M.shape[1], b.M.shape[1])
    return Affine((_widen(a.M, n) + _widen(b.M, n)).tocsr(), a.c + b.c)


def _stack(args: list[Affine]) -> Affine:
    if len(args) == 1:
        return args[0]
    n = max(a.M.shape[1] for a in args)
    return Affine(sp.vstack([_widen(a.M, n) for a in args], format="csr"), np.concatenate([a.c for a in args]))


def _gather(expr: Affine, idx: np.ndarray, fill: float) -> Affine:
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    M = sp.diags(valid.astype(np.float64)) @ expr.M[safe]
    M.eliminate_zeros()
    return Affine(M.tocsr(), np.where(valid, expr.c[safe], fill))


def _relu_bounds(builder: _Builder, pre: Affine, given: ReluBounds | None, k: int, options: EncodingOptions):
    """Interval bounds of the pre-activation, intersected with the widened given bounds."""
    lo, hi = interval(pre, *builder.col_bounds())
    if given is not None:
        g_lo, g_hi = given.lower[k], given.upper[k]
        lo = np.maximum(lo, _widened(g_lo, -1.0, options))
        hi = np.minimum(hi, _widened(g_hi, 1.0, options))
    return lo, hi


def _widened(bound: np.ndarray, direction: float, options: EncodingOptions) -> np.ndarray:
    """``bound`` moved by the options' margins in ``direction``; infinite bounds (an empty domain's
    ``+inf`` lower bound among them) stay as they are instead of becoming NaN."""
    finite = np.isfinite(bound)
    safe = np.where(finite, bound, 0.0)
    return np.where(finite, safe + direction * (options.margin_abs + options.margin_rel * np.abs(safe)), bound)


def _apply_splits(lo, hi, split):
    """Bounds after the split decisions, and the neurons that need an explicit ``x <= 0`` row."""
    if split is None:
        return lo, hi, np.zeros(lo.shape, dtype=bool)
    split = np.asarray(split).reshape(-1)
    need_row = (split < 0) & (hi > 0)  # an active split is enforced by the column bound y >= 0
    lo = np.where(split > 0, np.maximum(lo, 0.0), lo)
    hi = np.where(split < 0, np.minimum(hi, 0.0), hi)
    return lo, hi, need_row


def _encode_relu(builder: _Builder, pre: Affine, lo, hi, split_rows, relax: bool) -> Affine:
    """Columns and rows for ``y = relu(pre)``; returns ``y`` as an expression."""
    n = lo.size
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    out_cols = np.full(n, -1)
    if split_rows.any():
        rows = np.flatnonzero(split_rows)
        builder.add_rows(pre.M[rows], -np.inf, -pre.c[rows])  # pre <= 0
    ia = np.flatnonzero(active)
    out_cols[ia] = builder.add_cols(lo[ia], np.maximum(hi[ia], lo[ia]))
    iu = np.flatnonzero(unstable)
    out_cols[iu] = builder.add_cols(np.zeros(iu.size), hi[iu])
    n_cols = builder.n_cols
    # active: y - pre = c
    builder.add_rows(_widen(_unit(out_cols[ia], n_cols) - _widen(pre.M[ia], n_cols), n_cols), pre.c[ia], pre.c[ia])
    if iu.size:
        l, u, c = lo[iu], hi[iu], pre.c[iu]
        y = _unit(out_cols[iu], n_cols + (0 if relax else iu.size))
        x = _widen(pre.M[iu], y.shape[1])
        builder_rows_lo = (y - x).tocsr()
        if relax:
            s = u / (u - l)
            builder.add_rows(builder_rows_lo, c, np.inf)  # y >= x
            builder.add_rows((y - sp.diags(s) @ x).tocsr(), -np.inf, s * (c - l))  # triangle upper face
        else:
            a = builder.add_cols(np.zeros(iu.size), np.ones(iu.size), integer=True)
            ua = _unit(a, builder.n_cols)
            builder.add_rows(builder_rows_lo, c, np.inf)  # y >= x
            builder.add_rows((y - x - sp.diags(l) @ ua).tocsr(), -np.inf, c - l)  # y <= x - l (1 - a)
            builder.add_rows((y - sp.diags(u) @ ua).tocsr(), -np.inf, 0.0)  # y <= u a
    live = out_cols >= 0
    M = sp.csr_matrix((np.ones(int(live.sum())), (np.flatnonzero(live), out_cols[live])), shape=(n, builder.n_cols))
    return Affine(M, np.zeros(n))


def _encode_maxpool(builder: _Builder, pre: Affine, windows: np.ndarray, relax: bool) -> Affine:
    """``m = max`` over each window, with one binary per input that can be the maximum."""
    lo_in, hi_in = interval(pre, *builder.col_bounds())
    valid = windows >= 0  # (n_out, k)
    safe = np.where(valid, windows, 0)
    L = np.where(valid, lo_in[safe], -np.inf)
    U = np.where(valid, hi_in[safe], -np.inf)
    best_lo = L.max(axis=1)
    cand = valid & (U >= best_lo[:, None])  # the others are always below some input
    single = cand.sum(axis=1) == 1
    n_out = windows.shape[0]
    # a window whose maximum is known: pass that input's expression through
    pick = np.argmax(np.where(cand, L, -np.inf), axis=1)
    passed = _gather(pre, np.where(single, safe[np.arange(n_out), pick], -1), 0.0)
    multi = np.flatnonzero(~single)
    if multi.size == 0:
        return passed
    top = np.where(cand[multi], U[multi], -np.inf).max(axis=1)  # (n_multi,)
    m = builder.add_cols(best_lo[multi], top)
    o, j = np.nonzero(cand[multi])  # candidate (window, slot) pairs
    src = safe[multi][o, j]
    d = builder.add_cols(np.zeros(o.size), np.ones(o.size), integer=not relax)
    n_cols = builder.n_cols
    x = _widen(pre.M[src], n_cols)
    m_rows = _unit(m[o], n_cols)
    big = top[o] - L[multi][o, j]
    builder.add_rows((m_rows - x).tocsr(), pre.c[src], np.inf)  # m >= x_j
    builder.add_rows((m_rows - x + sp.diags(big) @ _unit(d, n_cols)).tocsr(), -np.inf, pre.c[src] + big)
    one = sp.csr_matrix((np.ones(o.size), (o, d)), shape=(multi.size, n_cols))
    builder.add_rows(one, 1.0, 1.0)  # exactly one input is the maximum
    pooled = sp.csr_matrix((np.ones(multi.size), (multi, m)), shape=(n_out, n_cols))
    return Affine((_widen(passed.M, n_cols) + pooled).tocsr(), passed.c)
