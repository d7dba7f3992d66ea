"""ReLU-splitting branch and bound: row bookkeeping, branching scores, sound child bounds,
exact leaves, and the verdict of whole searches against the MILP engine."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import verifier.bab.relu_split as relu_split_module
from tests.nets import FAMILIES, check_bounds, consistent, dense_net, relu_pre, sample_box
from verifier.bab.branching import babsr_scores, children_state, fast_bound, fsb_choice, split_relus
from verifier.bab.options import BabOptions, ReluSplitOptions
from verifier.bab.relu_split import (
    decide_leaves,
    is_leaf,
    output_magnitude,
    primal_inputs,
    probe_intermediate,
    relu_rule,
    relu_start,
    reuse_groups,
)
from verifier.bab.search import BabStats, still_open
from verifier.bab.solve import solve_case
from verifier.bab.spec_rows import combine_rows, mix_lower, mix_rows, needed_rows, one_polytope_each
from verifier.bounds import AlphaOptions, Domains, alpha_crown, beta_crown, crown, relaxation_state
from verifier.bounds.crown import crown_sweep
from verifier.bounds.types import BoundResult
from verifier.deadline import Deadline
from verifier.exact.milp import milp_verify
from verifier.forward import forward
from verifier.network import MaxPool, Network
from verifier.objective import CaseObjective, case_objective
from verifier.result import Counterexample, Status
from vnnlib.spec import Case, Polytope, Spec


def _spec(net: Network, gen: torch.Generator, rows: tuple[int, ...], width: float = 1.0) -> Spec:
    """A box around a random centre and one unsafe polytope per entry of ``rows`` (that many rows)."""
    n = net.n_inputs
    centre = torch.randn(n, generator=gen, dtype=torch.float64)
    lo, hi = (centre - width / 2).numpy(), (centre + width / 2).numpy()
    polys = tuple(Polytope(torch.randn(k, net.n_outputs, generator=gen, dtype=torch.float64).numpy(),
                           torch.randn(k, generator=gen, dtype=torch.float64).numpy()) for k in rows)
    return Spec((Case(lo, hi, polys),), n, net.n_outputs)


def _objective_with_shift(net: Network, gen: torch.Generator, rows: tuple[int, ...], shift: float
                          ) -> tuple[Spec, CaseObjective]:
    """A spec whose thresholds sit ``shift`` above the smallest sampled margin (so sat for ``shift > 0``)."""
    spec = _spec(net, gen, rows)
    case = spec.cases[0]
    xs = sample_box(gen, torch.as_tensor(case.lower)[None], torch.as_tensor(case.upper)[None], 512)[0]
    with torch.no_grad():
        y = forward(net, xs).numpy()
    m = min((y @ p.A.T - p.b).max(1).min() for p in case.polytopes)
    polys = tuple(Polytope(p.A, p.b + m + shift) for p in case.polytopes)
    spec = Spec((Case(case.lower, case.upper, polys),), spec.n_inputs, spec.n_outputs)
    return spec, case_objective(spec.cases[0], torch.float64)


def _root(net: Network, obj: CaseObjective, alpha: bool = True) -> BoundResult:
    dom = Domains(obj.lower[None], obj.upper[None])
    if alpha:
        return alpha_crown(net, dom, obj.C[None], obj.d[None], AlphaOptions(iterations=5))
    return crown(net, dom, obj.C[None], obj.d[None])


def _forward_check(net: Network, spec: Spec):
    """A stand-in for the onnxruntime replay (the IR forward pass in float64, same strict rule)."""
    def check(x: torch.Tensor) -> Counterexample | None:
        xc = x.detach().double().numpy().reshape(-1)
        case = spec.cases[0]
        if (xc < case.lower).any() or (xc > case.upper).any():
            return None
        y = forward(net, torch.as_tensor(xc)[None]).numpy().reshape(-1)
        return Counterexample(xc, y) if spec.is_violated_by(xc, y) else None

    return check


# --- rows ---------------------------------------------------------------------------------------

def test_combined_rows_never_rule_out_an_unsafe_point() -> None:
    gen = torch.Generator().manual_seed(0)
    net = dense_net(gen, (3, 8, 4))
    spec, obj = _objective_with_shift(net, gen, (3, 1, 2), 0.3)
    # random coefficients: the averages are not exact in float64; with a bound of |y| on the box they are
    # kept, each offset raised to cover its rounding
    assert combine_rows(obj)[0].n_rows == obj.n_rows
    rows, mix = combine_rows(obj, output_magnitude(net, obj))
    assert rows.n_rows == obj.n_rows + 2  # one combination per polytope of several rows
    assert bool((mix >= 0).all()) and bool((mix.sum(1) > 0.5).all()) and bool((mix.sum(1) <= 1).all())
    xs = sample_box(gen, obj.lower[None], obj.upper[None], 4000)[0]
    with torch.no_grad():
        y = forward(net, xs)
    # a point in a polytope has every row, and so every combination, <= 0; the violation is unchanged
    assert torch.allclose(rows.violation(y), obj.violation(y))
    vals = y @ rows.C.T - rows.d  # (N, S')
    for p in range(obj.groups.shape[0]):
        inside = (vals[:, obj.groups[p].nonzero().flatten()] <= 0).all(1)
        assert (vals[inside][:, rows.groups[p]] <= 1e-12).all()


def test_mix_rows_ignores_infinite_rows_of_weight_zero() -> None:
    mix = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    t = torch.tensor([[torch.inf, -2.0]])
    assert torch.equal(mix_rows(t, mix), torch.tensor([[torch.inf, torch.inf, -2.0]]))
    t = torch.tensor([[1.0, -3.0]])
    assert torch.allclose(mix_rows(t, mix), torch.tensor([[1.0, -1.0, -3.0]]))


def test_needed_rows_and_one_polytope_each() -> None:
    obj = CaseObjective(torch.zeros(1), torch.ones(1), torch.eye(4), torch.zeros(4),
                        torch.tensor([[True, True, False, False], [False, False, True, False],
                                      [False, False, False, True]]), torch.zeros(4, dtype=torch.bool))
    bound = torch.tensor([[-1.0, 2.0, -1.0, -3.0],  # polytope 0 ruled out by row 1
                          [-1.0, -2.0, 0.5, 4.0]])  # only polytope 0 open
    rows = needed_rows(obj, bound)
    assert rows.idx.shape == (2, 2)
    assert set(rows.idx[0][rows.valid[0]].tolist()) == {2, 3}
    assert set(rows.idx[1][rows.valid[1]].tolist()) == {0, 1}
    part = rows.gather(bound)
    assert torch.equal(rows.scatter(bound, part), bound)
    assert torch.equal(rows.scatter(torch.zeros_like(bound), part + 10).ne(0).sum(1), rows.valid.sum(1))
    copies = one_polytope_each(obj, bound[0], torch.tensor([2, 1]))
    assert torch.equal(obj.polytope_margins(copies).isfinite(), torch.tensor([[False, False, True],
                                                                              [False, True, False]]))


def test_relu_start_copies_the_root_per_open_polytope() -> None:
    gen = torch.Generator().manual_seed(3)
    net = dense_net(gen, (3, 10, 10, 4))
    _, obj = _objective_with_shift(net, gen, (1, 1, 2, 1), -0.2)
    root = _root(net, obj)
    rows, start = relu_start(net, obj, root, per_polytope=True)
    margins = rows.polytope_margins(start.bound)  # (copies, P)
    open_ = (rows.polytope_margins(mix_lower(root.lower, combine_rows(obj, output_magnitude(net, obj))[1])) <= 0).sum()
    assert start.batch == int(open_)
    assert ((margins <= 0).sum(1) == 1).all()  # each copy answers for one polytope
    assert start.slopes is not None and start.slopes.final[0].shape[1] == rows.n_rows
    assert start.slopes.intermediate == ()
    rows2, single = relu_start(net, obj, root, per_polytope=False)
    assert single.batch == 1 and rows2.n_rows == rows.n_rows


def test_reuse_groups() -> None:
    layer = torch.tensor([0, 2, 2, 1, 2, 0, 1])
    todo = torch.tensor([True, True, True, True, True, False, True])
    groups = reuse_groups(layer, todo, min_size=2)
    assert [r for _, r in groups] == [3, 2, 1]
    assert torch.equal(sum(g.long() for g, _ in groups), todo.long())
    # small groups join the next shallower one, whose reuse is valid for them too
    groups = reuse_groups(layer, todo, min_size=4)
    assert [(int(g.sum()), r) for g, r in groups] == [(5, 2), (1, 1)]


# --- branching and bounds -----------------------------------------------------------------------

def _split_batch(family: str, seed: int, depth: int = 3, one_sided: float = 0.0, stats: BabStats | None = None,
                 intermediate: str = "recompute"):
    """A ReLU-split batch a few splits deep (BaBSR choices), its objective and the rule."""
    gen = torch.Generator().manual_seed(seed)
    net = FAMILIES[family](gen)
    spec, obj = _objective_with_shift(net, gen, (1, 2), 0.05)  # sat: some subdomains stay open
    rows, start = relu_start(net, obj, _root(net, obj), per_polytope=False)
    opts = BabOptions(relu=ReluSplitOptions(one_sided=one_sided, intermediate=intermediate))
    rule = relu_rule(net, rows, _forward_check(net, spec), opts, AlphaOptions(), Deadline(), stats or BabStats())
    batch = start
    for _ in range(depth):
        open_ = batch.select(~rows.ruled_out(batch.bound) & ~is_leaf(batch))
        if open_.batch == 0:
            break
        batch = rule.bound(rule.branch(open_))
    return net, rows, batch, gen


@pytest.mark.parametrize("one_sided", [0.0, 2.0])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_children_bounds_contain_samples(family: str, one_sided: float) -> None:
    """Bounds after branching (FSB's one-pass bound) and beta-CROWN contain every sampled forward
    pass that satisfies the child's splits, intermediate bounds included (recomputed on both sides, or
    on one side of the lopsided neurons)."""
    net, rows, batch, gen = _split_batch(family, seed=10 + sorted(FAMILIES).index(family), one_sided=one_sided)
    assert batch.depth.max() >= 1
    xs = sample_box(gen, batch.lower, batch.upper, 300)
    finite = batch.bound.isfinite().all(1)
    res = BoundResult(batch.bound, None, batch.intermediate)
    checks = check_bounds(net, batch.splits, res, rows.C[None].expand(batch.batch, -1, -1),
                          rows.d[None].expand(batch.batch, -1), xs, 1e-9)
    assert checks > 0
    # a +inf row is only allowed where no sample satisfies the splits (an empty child)
    pre, _ = relu_pre(net, xs.reshape(-1, xs.shape[-1]))
    ok = consistent(pre, tuple(s.repeat_interleave(xs.shape[1], 0) for s in batch.splits))
    assert not ok.reshape(batch.batch, -1)[~finite].any()
    fast = fast_bound(net, rows, batch)
    check_bounds(net, batch.splits, BoundResult(fast, None, batch.intermediate),
                 rows.C[None].expand(batch.batch, -1, -1), rows.d[None].expand(batch.batch, -1), xs, 1e-9)


@pytest.mark.parametrize("family", ["dense", "residual", "conv"])
def test_the_intermediate_bounds_probe_runs_once_and_its_bounds_contain_samples(
    family: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``intermediate: auto``: the first round with enough children split before the last ReLU layer
    bounds a sample of them both ways and keeps one; every bound after it contains the samples."""
    monkeypatch.setattr(relu_split_module, "_PROBE", 2)
    stats = BabStats()
    net, rows, batch, gen = _split_batch(family, seed=40, depth=4, stats=stats, intermediate="auto")
    assert stats.extra.get("bab_intermediate") in ("recompute", "fixed")
    xs = sample_box(gen, batch.lower, batch.upper, 300)
    assert check_bounds(net, batch.splits, BoundResult(batch.bound, None, batch.intermediate),
                        rows.C[None].expand(batch.batch, -1, -1), rows.d[None].expand(batch.batch, -1), xs,
                        1e-9) > 0


def test_the_probe_keeps_the_way_with_the_larger_gain_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst margins' rise per second decides, and the sample keeps the chosen way's bounds."""
    net, rows, batch, _ = _split_batch("dense", seed=10, depth=2)
    sample = replace(batch, bound=torch.full_like(batch.bound, -1.0))
    clock = [0.0]
    monkeypatch.setattr(relu_split_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def way(lift: float, seconds: float):
        def run(b):
            clock[0] += seconds
            return replace(b, bound=b.bound + lift)
        return run

    for rec_seconds, expect in ((4.0, "fixed"), (1.5, "recompute")):
        stats = BabStats()
        ways = {"recompute": way(0.2, rec_seconds), "fixed": way(0.1, 1.0)}
        choice, out = probe_intermediate(rows, sample, ways, stats)
        assert choice == expect == stats.extra["bab_intermediate"]
        lift = 0.2 if expect == "recompute" else 0.1
        assert torch.allclose(out.bound, sample.bound + lift)


@pytest.mark.parametrize("family", ["dense", "residual", "conv"])
def test_babsr_scores_mark_exactly_the_splittable_neurons(family: str) -> None:
    net, rows, batch, _ = _split_batch(family, seed=20, depth=2)
    batch = batch.select(~rows.ruled_out(batch.bound))
    if batch.batch == 0:
        pytest.skip("proven before any open subdomain was left")
    scores = babsr_scores(net, rows, batch)
    splits = torch.cat(batch.splits, 1)
    lo, hi = torch.cat(batch.intermediate.lower, 1), torch.cat(batch.intermediate.upper, 1)
    splittable = (lo < 0) & (hi > 0) & (splits == 0)
    assert torch.equal(scores > -torch.inf, splittable)
    assert (scores[splittable] >= 0).all()
    x = primal_inputs(net, rows, batch)
    assert ((x >= batch.lower) & (x <= batch.upper)).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_children_on_their_parents_relaxations_bound_as_a_fresh_sweep(family: str) -> None:
    """The children's state patched from their parents' (``children_state``) gives the bound that a fresh
    ``relaxation_state`` of the children gives (up to the parents' larger rounding terms), never above it
    by more than that, and sound at sampled points; FSB picks the same neurons with either."""
    net, rows, batch, gen = _split_batch(family, seed=40 + sorted(FAMILIES).index(family), depth=2)
    batch = batch.select(~rows.ruled_out(batch.bound))
    if batch.batch == 0:
        pytest.skip("proven before any open subdomain was left")
    state = relaxation_state(net, batch.domains, batch.intermediate)
    scores = babsr_scores(net, rows, batch, state)
    top = scores.topk(min(3, scores.shape[1]), dim=1)
    keep = top.values.T.reshape(-1) > -torch.inf  # splittable candidates only
    parent = torch.arange(batch.batch).repeat(top.indices.shape[1])[keep]
    flat = top.indices.T.reshape(-1)[keep]
    if flat.numel() == 0:
        pytest.skip("no splittable neuron")
    children = split_relus(batch.select(parent), flat)
    patched = fast_bound(net, rows, children, children_state(net, state, parent, flat))
    fresh = fast_bound(net, rows, children)
    both = patched.isfinite() & fresh.isfinite()
    assert torch.equal(patched.isfinite(), fresh.isfinite())
    assert (patched[both] <= fresh[both] + 1e-12 * (1 + fresh[both].abs())).all()
    assert torch.allclose(patched[both], fresh[both], rtol=1e-9, atol=1e-9)
    xs = sample_box(gen, children.lower, children.upper, 300)
    check_bounds(net, children.splits, BoundResult(patched, None, children.intermediate),
                 rows.C[None].expand(children.batch, -1, -1), rows.d[None].expand(children.batch, -1), xs, 1e-9)
    chosen = fsb_choice(net, rows, batch, scores, 3, state)
    again = fsb_choice(net, rows, batch, scores, 3)
    assert torch.equal(chosen[0], again[0])
    assert torch.allclose(chosen[1], again[1], rtol=1e-9, atol=1e-9)
    # the bounds FSB hands on (computed on the open rows only) are the chosen children's own
    torch.testing.assert_close(again[1], fast_bound(net, rows, split_relus(batch, again[0])), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_subdomains_on_the_roots_interval_bounds_bound_as_their_own(family: str) -> None:
    """Interval bounds of the root box (``reference``) standing in for each subdomain's own give its
    relaxation state: bounds no higher than with the subdomain's own interval arithmetic (up to its
    rounding), close to them, and sound at sampled points; beta-CROWN with it as well."""
    net, rows, batch, gen = _split_batch(family, seed=60 + sorted(FAMILIES).index(family), depth=2)
    root = relu_start(net, rows, _root(net, rows, alpha=False), per_polytope=False)[1]
    reference = relaxation_state(net, Domains(rows.lower[None], rows.upper[None]), root.intermediate).nodes
    assert reference.empty.shape == (1,)
    C, d = rows.C[None].expand(batch.batch, -1, -1), rows.d[None].expand(batch.batch, -1)
    own = fast_bound(net, rows, batch)
    with_ref = fast_bound(net, rows, batch, relaxation_state(net, batch.domains, batch.intermediate, reference))
    both = own.isfinite() & with_ref.isfinite()
    assert torch.equal(own.isfinite(), with_ref.isfinite())
    assert (with_ref[both] <= own[both] + 1e-12 * (1 + own[both].abs())).all()
    if not any(isinstance(n.op, MaxPool) for n in net.nodes):  # a MaxPool's input bounds are the root's
        assert torch.allclose(with_ref[both], own[both], rtol=1e-9, atol=1e-9)
    xs = sample_box(gen, batch.lower, batch.upper, 300)
    check_bounds(net, batch.splits, BoundResult(with_ref, None, batch.intermediate), C, d, xs, 1e-9)
    res = beta_crown(net, batch.domains, C, d, AlphaOptions(iterations=3), known=batch.intermediate,
                     reuse_known=len(net.relu_indices), reference=reference)
    check_bounds(net, batch.splits, res, C, d, xs, 1e-9)
    # where layers are recomputed, their interval bounds come from the domain's own (the reference is unused)
    again = [beta_crown(net, batch.domains, C, d, AlphaOptions(iterations=3), known=batch.intermediate,
                        reuse_known=1, reference=r) for r in (reference, None)]
    assert torch.equal(again[0].lower, again[1].lower)


def test_split_relus_children_are_consistent_with_parents() -> None:
    net, rows, batch, _ = _split_batch("dense", seed=5, depth=1)
    parent = batch.select(torch.tensor([0]))
    flat = babsr_scores(net, rows, parent).argmax(1)
    children = split_relus(parent, flat)
    new = [torch.cat(c.splits, 1) - torch.cat(parent.splits, 1) for c in (children.select([0]),
                                                                            children.select([1]))]
    assert new[0].abs().sum() == 1 and new[1].abs().sum() == 1 and (new[0] + new[1]).abs().sum() == 0


# --- leaves -------------------------------------------------------------------------------------

def _leaf(net: Network, obj: CaseObjective, x0: torch.Tensor):
    """A leaf: every ReLU fixed to its sign at ``x0``, with sound (CROWN) bounds under those splits."""
    pre, _ = relu_pre(net, x0[None])
    splits = tuple(torch.where(p >= 0, 1, -1).to(torch.int8) for p in pre)
    dom = Domains(obj.lower[None], obj.upper[None], splits)
    res = crown(net, dom, obj.C[None], obj.d[None])
    rows, start = relu_start(net, obj, res, per_polytope=False)
    return rows, start.__class__(**{**vars(start), "splits": splits, "intermediate": res.intermediate})


@pytest.mark.parametrize("seed", range(6))
def test_leaf_verdicts_agree_with_sampling(seed: int) -> None:
    """A leaf found infeasible has no sampled unsafe point with its activation pattern; a leaf
    found feasible gives a validated counterexample with that pattern's region."""
    gen = torch.Generator().manual_seed(100 + seed)
    net = dense_net(gen, (2, 5, 5, 2))
    spec, obj = _objective_with_shift(net, gen, (1, 2), 0.2 if seed % 2 else -0.05)
    xs = sample_box(gen, obj.lower[None], obj.upper[None], 3000)[0]
    rows, leaf = _leaf(net, obj, xs[0])
    assert bool(is_leaf(leaf).all())
    cex, undecided = decide_leaves(net, rows, leaf, _forward_check(net, spec), Deadline.after(30))
    pre, y = relu_pre(net, xs)
    same = consistent(pre, tuple(s.expand(xs.shape[0], -1) for s in leaf.splits))
    unsafe = torch.tensor([spec.is_violated_by(x.numpy(), v.numpy()) for x, v in zip(xs, y, strict=True)])
    if cex is None:
        assert undecided or not (same & unsafe).any()
    else:
        assert spec.is_violated_by(cex.x, cex.y)


def test_rejected_leaf_candidate_leaves_the_case_undecided() -> None:
    """A sat leaf whose candidate the replay rejects must never turn into unsat."""
    gen = torch.Generator().manual_seed(7)
    net = dense_net(gen, (2, 4, 2))
    spec, obj = _objective_with_shift(net, gen, (1,), 0.5)
    xs = sample_box(gen, obj.lower[None], obj.upper[None], 500)[0]
    with torch.no_grad():
        x0 = xs[obj.violation(forward(net, xs)).argmin()]
    rows, leaf = _leaf(net, obj, x0)
    cex, undecided = decide_leaves(net, rows, leaf, lambda x: None, Deadline.after(30))
    assert cex is None and bool(undecided.all())


def test_search_with_a_replay_that_rejects_everything_is_never_unsat() -> None:
    gen = torch.Generator().manual_seed(8)
    net = dense_net(gen, (3, 6, 6, 2))
    spec, obj = _objective_with_shift(net, gen, (1, 2), 0.3)
    status, cex = solve_case(net, obj, _root(net, obj, alpha=False), lambda x: None,
                             BabOptions(branching="relu"), AlphaOptions(), Deadline.after(20),
                             torch.Generator().manual_seed(0), BabStats())
    assert status in (Status.UNKNOWN, Status.TIMEOUT) and cex is None


# --- whole searches -----------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    dict(branching="fsb"), dict(branching="babsr"), dict(per_polytope=False),
    dict(batch_size=2, beta_iterations=2), dict(one_sided=2.0), dict(one_sided=0.0),
    dict(intermediate="auto", batch_size=64), dict(intermediate="fixed"),
])
@pytest.mark.parametrize("seed", [0, 1, 3, 6])
def test_search_verdict_matches_milp(seed: int, options: dict) -> None:
    gen = torch.Generator().manual_seed(300 + seed)
    family = ("dense", "dense", "residual", "conv")[seed % 4]
    net = FAMILIES[family](gen) if family != "dense" else dense_net(gen, (3, 8, 8, 3))
    spec, obj = _objective_with_shift(net, gen, (2, 1), 0.15 if seed % 2 else -0.15)
    truth = milp_verify(net, spec, Deadline.after(60)).verdict
    assert truth in (Status.SAT, Status.UNSAT)
    stats = BabStats()
    status, cex = solve_case(net, obj, _root(net, obj, alpha=seed % 3 == 0), _forward_check(net, spec),
                             BabOptions(branching="relu", relu=ReluSplitOptions(**options)), AlphaOptions(),
                             Deadline.after(30), torch.Generator().manual_seed(seed), stats)
    assert status is truth, stats
    if status is Status.SAT:
        assert spec.is_violated_by(cex.x, cex.y)


def test_a_search_publishes_its_statistics_after_every_round() -> None:
    """``BabStats.live`` (the command's statistics, which its watchdog writes when it stops a run from
    outside) holds the search's counters after every round, not only at the end."""
    gen = torch.Generator().manual_seed(302)
    net = dense_net(gen, (3, 16, 16, 3))
    spec, obj = _objective_with_shift(net, gen, (2, 1), -0.15)  # unsat in about 12 rounds of 2 parents
    live: dict = {"load_time": 0.1}
    seen: list[int] = []
    stats = BabStats(live=live)
    real = stats.publish

    def publish() -> None:
        real()
        seen.append(live["bab_rounds"])

    stats.publish = publish
    solve_case(net, obj, _root(net, obj), _forward_check(net, spec),
               BabOptions(branching="relu", workers=1, relu=ReluSplitOptions(batch_size=2)), AlphaOptions(),
               Deadline.after(30), torch.Generator().manual_seed(0), stats)
    assert stats.rounds >= 2 and seen == list(range(1, len(seen) + 1)) and seen[-1] == stats.rounds
    assert live["load_time"] == 0.1 and live["bab_bounded"] == stats.bounded


def test_network_without_relus_is_a_leaf_at_the_root() -> None:
    gen = torch.Generator().manual_seed(9)
    net = dense_net(gen, (3, 2))
    for shift, want in ((0.2, Status.SAT), (-0.2, Status.UNSAT)):
        spec, obj = _objective_with_shift(net, gen, (2,), shift)
        stats = BabStats()
        status, _ = solve_case(net, obj, _root(net, obj, alpha=False), _forward_check(net, spec),
                               BabOptions(branching="relu"), AlphaOptions(), Deadline.after(20),
                               torch.Generator().manual_seed(0), stats)
        assert status is want


def test_bab_options_reject_unknown_relu_branching() -> None:
    with pytest.raises(ValueError, match="branching must be one of babsr, fsb"):
        BabOptions(relu=ReluSplitOptions(branching="random"))
    assert np.isfinite(BabOptions().relu.beta_iterations)
    for bad in (0.5, -1.0):  # below 1 a neuron could lose both of its rows
        with pytest.raises(ValueError, match="one_sided must be 0"):
            ReluSplitOptions(one_sided=bad)
        if bad > 0:
            net = FAMILIES["dense"](torch.Generator().manual_seed(0))
            zeros = torch.zeros(1, net.n_inputs, dtype=torch.float64)
            box = Domains(zeros, zeros + 1)
            with pytest.raises(ValueError, match="one_sided must be 0"):
                crown_sweep(net, box, one_sided=bad)


def test_a_nan_bound_leaves_its_subdomain_open():
    # a NaN bound must never count as a proof (NaN > 0 and NaN <= 0 are both false)
    obj = case_objective(Case(np.zeros(1), np.ones(1), (Polytope(np.array([[1.0, 0.0]]), np.array([0.0])),
                                                       Polytope(np.array([[0.0, 1.0]]), np.array([0.0])))),
                         torch.float64)
    bound = torch.tensor([[1.0, 2.0], [float("nan"), 2.0], [1.0, -0.5], [float("inf"), 3.0]], dtype=torch.float64)
    assert still_open(obj, bound).tolist() == [False, True, True, False]
