"""Random tiny networks built directly in the IR, for property tests of every analysis.

``Builder`` appends nodes and infers their shapes by running the node once on
zeros; the ``*_net`` functions build the families used across the test suite.
Every function takes a ``torch.Generator`` so that tests are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch

from verifier.bounds import Domains, crown
from verifier.forward import apply_node, forward_all
from verifier.network import (
    Add,
    AvgPool,
    Concat,
    Conv,
    Dense,
    Gather,
    Input,
    MaxPool,
    Network,
    Node,
    Op,
    Pad,
    Relu,
    Reshape,
    Scale,
    Transpose,
)

Tensor = torch.Tensor


class Builder:
    """Appends nodes to a network under construction (float64 weights until ``build``)."""

    def __init__(self, input_shape: tuple[int, ...], gen: torch.Generator) -> None:
        self.nodes: list[Node] = [Node(Input(), (), tuple(input_shape), "x")]
        self.gen = gen

    @property
    def last(self) -> int:
        return len(self.nodes) - 1

    def shape(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].shape

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def add_op(self, op: Op, inputs: tuple[int, ...], shape: tuple[int, ...] | None = None) -> int:
        """Append ``op`` reading ``inputs``; its shape is inferred unless given."""
        if shape is None:
            args = [torch.zeros(1, *self.shape(j), dtype=torch.float64) for j in inputs]
            shape = tuple(apply_node(Node(op, inputs, ()), args).shape[1:])
        self.nodes.append(Node(op, tuple(inputs), tuple(shape), f"n{len(self.nodes)}"))
        return self.last

    def dense(self, m: int, src: int | None = None, bias_scale: float = 0.3) -> int:
        src = self.last if src is None else src
        n = prod(self.shape(src))
        if len(self.shape(src)) != 1:
            src = self.add_op(Reshape(), (src,), (n,))
        w = self._randn(m, n) / n**0.5
        return self.add_op(Dense(w, bias_scale * self._randn(m)), (src,))

    def conv(
        self, c_out: int, k: int = 3, stride: int = 1, padding: tuple[int, int, int, int] = (1, 1, 1, 1),
        dilation: int = 1, groups: int = 1, src: int | None = None,
    ) -> int:
        src = self.last if src is None else src
        c_in = self.shape(src)[0]
        w = self._randn(c_out, c_in // groups, k, k) / (k * (c_in // groups) ** 0.5)
        op = Conv(w, 0.3 * self._randn(c_out), (stride, stride), padding, (dilation, dilation), groups)
        return self.add_op(op, (src,))

    def relu(self, src: int | None = None) -> int:
        return self.add_op(Relu(), (self.last if src is None else src,))

    def build(self, out: int | None = None, dtype: torch.dtype = torch.float64) -> Network:
        return Network(tuple(self.nodes), self.last if out is None else out).to(dtype=dtype).as_defined()


def dense_net(gen: torch.Generator, sizes: tuple[int, ...] = (3, 8, 8, 2),
              dtype: torch.dtype = torch.float64) -> Network:
    """A fully connected ReLU network with layer widths ``sizes``."""
    b = Builder((sizes[0],), gen)
    for i, m in enumerate(sizes[1:]):
        b.dense(m)
        if i < len(sizes) - 2:
            b.relu()
    return b.build(dtype=dtype)


def conv_net(gen: torch.Generator, dtype: torch.dtype = torch.float64) -> Network:
    """Two convolutions (one strided, asymmetric padding), flatten, two dense layers."""
    b = Builder((2, 5, 5), gen)
    b.conv(3, k=3, stride=1, padding=(1, 1, 1, 1))
    b.relu()
    b.conv(4, k=3, stride=2, padding=(0, 1, 1, 0))
    b.relu()
    b.dense(6)
    b.relu()
    b.dense(3)
    return b.build(dtype=dtype)


def conv_chain_net(gen: torch.Generator, dtype: torch.dtype = torch.float64) -> Network:
    """Five convolutions on a 12x12 map (strides 1 and 2, asymmetric padding, dilation, groups) whose
    receptive fields stay smaller than the maps for a few layers back, then a dense layer."""
    b = Builder((2, 12, 12), gen)
    b.conv(4, k=3, stride=1, padding=(1, 1, 1, 1))
    b.relu()
    b.conv(6, k=3, stride=2, padding=(0, 1, 1, 0))
    b.relu()
    b.conv(6, k=3, stride=1, padding=(2, 2, 2, 2), dilation=2)
    b.relu()
    b.conv(8, k=3, stride=2, padding=(1, 1, 1, 1), groups=2)
    b.relu()
    b.conv(8, k=2, stride=1, padding=(0, 0, 0, 0))
    b.relu()
    b.dense(3)
    return b.build(dtype=dtype)


def residual_net(gen: torch.Generator, dtype: torch.dtype = torch.float64) -> Network:
    """Dense layers with two residual Adds (one skipping over a ReLU block)."""
    b = Builder((3,), gen)
    h = b.dense(6)
    r1 = b.relu()
    b.dense(6)
    b.relu()
    b.dense(6)
    b.add_op(Add(), (b.last, r1))
    b.relu()
    b.dense(6)
    b.add_op(Add(), (b.last, h))
    b.relu()
    b.dense(2)
    return b.build(dtype=dtype)


def pool_net(gen: torch.Generator, kind: str = "avg", dtype: torch.dtype = torch.float64) -> Network:
    """Convolution, ReLU, then average or max pooling, then dense layers."""
    b = Builder((2, 6, 6), gen)
    b.conv(3, k=3, padding=(1, 1, 1, 1))
    b.relu()
    if kind == "avg":
        b.add_op(AvgPool((2, 2), (2, 2)), (b.last,))
    else:
        b.add_op(MaxPool((2, 2), (2, 2)), (b.last,))
    b.conv(2, k=2, padding=(0, 0, 0, 0))
    b.relu()
    b.dense(5)
    b.relu()
    b.dense(2)
    return b.build(dtype=dtype)


def all_ops_net(gen: torch.Generator, dtype: torch.dtype = torch.float64) -> Network:
    """One network that uses every node type of the IR (with padding, groups, dilation)."""
    b = Builder((2, 4, 4), gen)
    x = b.last
    s = b.add_op(Scale(b._randn(2, 1, 1), b._randn(2, 1, 1) * 0.1), (x,))
    c1 = b.conv(4, k=3, padding=(1, 1, 1, 1), src=s)
    r1 = b.relu()
    c2 = b.conv(4, k=3, padding=(2, 2, 2, 2), dilation=2, groups=2, src=r1)
    a = b.add_op(Add(), (c2, c1))
    r2 = b.relu(a)
    mp = b.add_op(MaxPool((3, 3), (2, 2), (1, 1, 1, 1)), (r2,))  # (4, 2, 2)
    ap = b.add_op(AvgPool((3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=False), (r2,))  # (4, 2, 2)
    cat = b.add_op(Concat(0), (mp, ap))  # (8, 2, 2)
    t = b.add_op(Transpose((1, 2, 0)), (cat,))  # (2, 2, 8)
    p = b.add_op(Pad((0, 1, 0, 0, 0, 1), 0.5), (t,))  # (2, 3, 9)
    b.dense(7, src=b.add_op(Gather(gather_index(54)), (p,), (6, 9)))  # flattened by a Reshape
    r3 = b.relu()
    d2 = b.dense(7, src=r3)
    r4 = b.relu(d2)
    sc = b.add_op(Scale(b._randn(7), b._randn(7) * 0.1), (r4,))
    b.dense(3, src=sc)
    return b.build(dtype=dtype)


def gather_index(n: int) -> Tensor:
    """A selection from ``n`` entries to ``n``: reversed, entry 0 read four times, one entry 0 (index -1)."""
    index = torch.arange(n - 1, -1, -1)
    index[-4:-1] = 0
    index[5] = -1
    return index


FAMILIES: dict[str, Callable[..., Network]] = {
    "dense": dense_net,
    "conv": conv_net,
    "residual": residual_net,
    "avgpool": lambda gen, dtype=torch.float64: pool_net(gen, "avg", dtype),
    "maxpool": lambda gen, dtype=torch.float64: pool_net(gen, "max", dtype),
    "all_ops": all_ops_net,
}


def random_box(gen: torch.Generator, n: int, batch: int, dtype: torch.dtype = torch.float64,
               width: float = 1.0) -> tuple[Tensor, Tensor]:
    """``batch`` random input boxes ``(B, n)`` of random centre and width up to ``width``."""
    centre = torch.randn(batch, n, generator=gen, dtype=dtype)
    half = width * torch.rand(batch, n, generator=gen, dtype=dtype) / 2
    return centre - half, centre + half


def conv_chain_samples_checked(dtype: torch.dtype, seed: int = 7) -> int:
    """CROWN on ``conv_chain_net`` in ``dtype`` (three boxes, two random rows each, both bounds): assert that
    300 sampled points per box lie inside; the number of scalar checks."""
    gen = torch.Generator().manual_seed(seed)
    net = conv_chain_net(gen).to(dtype=dtype)
    lo, hi = random_box(gen, net.n_inputs, 3, width=0.3)
    lo, hi = lo.to(dtype), hi.to(dtype)
    C = torch.randn(3, 2, net.n_outputs, generator=gen, dtype=torch.float64).to(dtype)
    d = torch.randn(3, 2, generator=gen, dtype=torch.float64).to(dtype)
    res = crown(net, Domains(lo, hi), C, d, need_upper=True)
    xs = sample_box(gen, lo.double(), hi.double(), 300)
    return check_bounds(net, None, res, C, d, xs, 1e-9 if dtype == torch.float64 else 1e-5)


def seeded_boxes(family: Callable[..., Network], seeds, batch: int = 3, width: float = 0.5):
    """Per seed: its generator, ``family``'s network from it and ``batch`` random boxes of that network."""
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        net = family(gen)
        lo, hi = random_box(gen, net.n_inputs, batch, width=width)
        yield gen, net, lo, hi


def sample_box(gen: torch.Generator, lower: Tensor, upper: Tensor, count: int) -> Tensor:
    """``count`` points per box ``(B, count, n)``: half uniform, half Beta(0.5, 0.5)
    (crowding the faces), plus every vertex when ``n <= 6``."""
    B, n = lower.shape
    half = count // 2
    u = torch.rand(B, half, n, generator=gen, dtype=lower.dtype)
    # Beta(1/2, 1/2) is the arcsine law: sin^2(pi U / 2) for U uniform on [0, 1]
    v = torch.sin(torch.pi / 2 * torch.rand(B, count - half, n, generator=gen, dtype=lower.dtype)) ** 2
    t = torch.cat([u, v], 1)  # (B, count, n)
    if n <= 6:
        corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=lower.dtype)] * n).reshape(-1, n)
        t = torch.cat([t, corners.expand(B, -1, -1)], 1)
    return lower[:, None] + t * (upper - lower)[:, None]


def random_splits(gen: torch.Generator, net: Network, lower: Tensor, upper: Tensor,
                  count: int = 3, flip_last: bool = True) -> tuple[Tensor, ...]:
    """Split states ``(B, n_k)`` int8 per ReLU layer: ``count`` random neurons per domain are
    fixed to their sign at a random point of the box (so the domain is not empty); in the
    last domain one of them is flipped (which may make it empty)."""
    x0 = lower + torch.rand(lower.shape, generator=gen, dtype=lower.dtype) * (upper - lower)
    pre, _ = relu_pre(net, x0)
    allpre = torch.cat(pre, 1)  # (B, N)
    sign = torch.where(allpre >= 0, 1, -1)
    pick = torch.rand(allpre.shape, generator=gen).argsort(1)[:, :count]  # (B, count)
    states = torch.zeros_like(sign).scatter(1, pick, sign.gather(1, pick))
    if flip_last:
        states[-1, pick[-1, 0]] *= -1
    return tuple(t.to(torch.int8) for t in states.split([p.shape[1] for p in pre], 1))


def relu_pre(net: Network, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Pre-activations of each ReLU layer ``(N, n_k)`` and the outputs ``(N, n_out)``."""
    values = forward_all(net, x)
    return [values[net.nodes[r].inputs[0]].flatten(1) for r in net.relu_indices], values[net.output].flatten(1)


def consistent(pre: list[Tensor], splits: tuple[Tensor, ...] | None) -> Tensor:
    """Which points ``(N,)`` satisfy the split states ``(N, n_k)`` of their domain."""
    ok = torch.ones(pre[0].shape[0] if pre else 0, dtype=torch.bool)
    if splits is None:
        return ok
    for p, s in zip(pre, splits, strict=True):
        ok &= ((s <= 0) | (p >= 0)).all(1) & ((s >= 0) | (p <= 0)).all(1)
    return ok


def _assert_within(name: str, v: Tensor, lo: Tensor, hi: Tensor | None, ok: Tensor, rtol: float) -> int:
    """Assert ``lo <= v <= hi`` (relative tolerance ``rtol``) where ``ok``; return the count."""
    tol = rtol * (1 + v.abs())
    bad = ok[..., None] & (v < lo - tol)
    if hi is not None:
        bad |= ok[..., None] & (v > hi + tol)
    if bad.any():
        b, j, i = (int(t[0]) for t in torch.nonzero(bad, as_tuple=True))
        raise AssertionError(
            f"{name}: domain {b} point {j} index {i}: value {float(v[b, j, i])} outside "
            f"[{float(lo[b, 0, i])}, {float(hi[b, 0, i]) if hi is not None else 'inf'}]"
        )
    return int(ok.sum()) * v.shape[-1]


CHECKS = [0]  # scalar checks made by check_bounds in this process (reported by the suite's users)


def check_bounds(net: Network, splits: tuple[Tensor, ...] | None, result, C: Tensor, d: Tensor,
                 xs: Tensor, rtol: float) -> int:
    """Assert that every sampled point ``xs`` ``(B, N, n_in)`` consistent with the splits has
    its pre-activations and ``C f(x) - d`` inside ``result``'s bounds (computed in float64).
    Returns the number of scalar checks made."""
    net64 = net.to(dtype=torch.float64)
    B, N, n = xs.shape
    pre, out = relu_pre(net64, xs.reshape(B * N, n).double())
    rep = None if splits is None else tuple(s.repeat_interleave(N, 0) for s in splits)
    ok = consistent(pre, rep).reshape(B, N)
    checks = 0
    for k, p in enumerate(pre):
        lo, hi = result.intermediate.lower[k].double()[:, None], result.intermediate.upper[k].double()[:, None]
        checks += _assert_within(f"relu layer {k}", p.reshape(B, N, -1), lo, hi, ok, rtol)
    y = torch.einsum("bso,bno->bns", C.double().expand(B, -1, -1), out.reshape(B, N, -1))
    y = y - d.double().expand(B, -1)[:, None]  # (B, N, S)
    up = None if result.upper is None else result.upper.double()[:, None]
    checks += _assert_within("C f(x) - d", y, result.lower.double()[:, None], up, ok, rtol)
    CHECKS[0] += checks
    return checks


def make_case(family: str, dtype: torch.dtype, with_splits: bool, seed: int, batch: int = 4,
              points: int = 400, spec_rows: int = 3):
    """A random network of ``family``, ``batch`` boxes (with random splits), a random spec
    ``C`` ``(B, S, n_out)`` and ``d`` ``(B, S)``, and sample points ``(B, N, n_in)`` in float64.

    Returns ``(net, lower, upper, splits, C, d, xs)``; the boxes are exactly representable
    in ``dtype`` and the points lie inside them."""
    gen = torch.Generator().manual_seed(seed)
    net = FAMILIES[family](gen).to(dtype=dtype)
    lo, hi = random_box(gen, net.n_inputs, batch, torch.float64, width=1.0)
    lo, hi = lo.to(dtype), hi.to(dtype)
    splits = random_splits(gen, net.to(dtype=torch.float64), lo.double(), hi.double()) if with_splits else None
    C = torch.randn(batch, spec_rows, net.n_outputs, generator=gen, dtype=torch.float64).to(dtype)
    d = torch.randn(batch, spec_rows, generator=gen, dtype=torch.float64).to(dtype)
    xs = sample_box(gen, lo.double(), hi.double(), points)
    return net, lo, hi, splits, C, d, xs


def _chain(net: Network) -> list[Node]:
    ops = [n for n in net.nodes[1:]]
    for i, n in enumerate(ops):
        if not isinstance(n.op, (Dense, Relu)) or n.inputs != (i,):
            raise ValueError("LP reference handles Dense/Relu chains only")
    return ops


def dense_lp_bound(net: Network, lower: list[Tensor], upper: list[Tensor], x_lo: Tensor, x_hi: Tensor,
                   c: Tensor, d: float, pattern: dict[tuple[int, int], bool] | None = None) -> float:
    """Minimum of ``c . f(x) - d`` over the triangle LP relaxation of a Dense/ReLU chain with
    pre-activation bounds ``lower[k], upper[k]`` ``(n_k,)``; ``pattern`` fixes neurons
    (layer, index) to active (True) or inactive (False).  ``inf`` when infeasible.
    Solved with scipy's HiGHS (float64)."""
    import numpy as np
    from scipy.optimize import linprog

    nodes = _chain(net)
    pattern = pattern or {}
    bounds = [(float(a), float(b)) for a, b in zip(x_lo, x_hi, strict=True)]
    prev = list(range(len(bounds)))
    eq, ub = [], []  # rows as (dict var -> coef, rhs)
    k = 0
    for n in nodes:
        if isinstance(n.op, Dense):
            W, b = n.op.weight.double().numpy(), n.op.bias.double().numpy()
            cur = list(range(len(bounds), len(bounds) + W.shape[0]))
            bounds += [(-np.inf, np.inf)] * W.shape[0]
            for r, v in enumerate(cur):
                eq.append(({v: 1.0, **{p: -W[r, j] for j, p in enumerate(prev)}}, b[r]))
        else:
            lo, hi = lower[k].double().numpy(), upper[k].double().numpy()
            cur = list(range(len(bounds), len(bounds) + len(prev)))
            for j, (z, h) in enumerate(zip(prev, cur, strict=True)):
                l_, u_ = float(lo[j]), float(hi[j])
                fixed = pattern.get((k, j))
                if fixed is True:
                    l_ = max(l_, 0.0)
                elif fixed is False:
                    u_ = min(u_, 0.0)
                if l_ > u_:
                    return float("inf")
                bounds[z] = (l_, u_)
                if u_ <= 0:
                    bounds.append((0.0, 0.0))
                elif l_ >= 0:
                    bounds.append((0.0, np.inf))
                    eq.append(({h: 1.0, z: -1.0}, 0.0))
                else:
                    bounds.append((0.0, np.inf))
                    s = u_ / (u_ - l_)
                    ub.append(({z: 1.0, h: -1.0}, 0.0))  # h >= z
                    ub.append(({h: 1.0, z: -s}, -s * l_))  # h <= s (z - l)
            k += 1
        prev = cur
    nv = len(bounds)

    def mat(rows):
        A = np.zeros((len(rows), nv))
        for r, (coefs, _) in enumerate(rows):
            for v, a in coefs.items():
                A[r, v] += a
        return (A, np.array([rhs for _, rhs in rows])) if rows else (None, None)

    obj = np.zeros(nv)
    obj[prev] = c.double().numpy()
    A_eq, b_eq = mat(eq)
    A_ub, b_ub = mat(ub)
    res = linprog(obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status == 2:
        return float("inf")
    assert res.status == 0, res.message
    return float(res.fun) - d


def dense_exact_bound(net: Network, lower: list[Tensor], upper: list[Tensor], x_lo: Tensor,
                      x_hi: Tensor, c: Tensor, d: float) -> float:
    """Exact minimum of ``c . f(x) - d``: one LP per activation pattern of the unstable neurons."""
    import itertools

    unstable = [(k, j) for k in range(len(lower)) for j in range(lower[k].shape[0])
                if lower[k][j] < 0 < upper[k][j]]
    if len(unstable) > 12:
        raise ValueError(f"{len(unstable)} unstable neurons: too many patterns")
    best = float("inf")
    for signs in itertools.product([True, False], repeat=len(unstable)):
        best = min(best, dense_lp_bound(net, lower, upper, x_lo, x_hi, c, d, dict(zip(unstable, signs, strict=True))))
    return best
