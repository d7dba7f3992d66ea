"""Parallel branch and bound (``verifier/bab/parallel.py``): helper processes searching one case with the
coordinator reach the exact verdicts, and the hand-over protocol loses no subdomain."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_bab_completeness import bab_verdict, problems
from verifier.bab.parallel import Channel, Helpers, parallel_allowed
from verifier.deadline import Deadline
from verifier.onnx_export import save_onnx
from verifier.result import Status

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="helpers are forked processes")


@pytest.mark.parametrize("branching", ["input", "relu"])
def test_parallel_search_matches_exact(branching: str, tmp_path: Path) -> None:
    """Two processes from the first round on: the exact verdict on every problem, with work handed over."""
    wrong, handed = [], 0
    for p in problems(40):
        save_onnx(p.net, tmp_path / f"{p.seed}.onnx")
        got, stats = bab_verdict(p, branching, tmp_path / f"{p.seed}.onnx", workers=2, parallel_after=0.0)
        handed += stats.extra.get("bab_handed", 0)
        if got != p.expected:
            wrong.append(f"seed {p.seed}: expected {p.expected}, got {got}")
    assert not wrong, "; ".join(wrong)
    assert handed > 0


def test_one_worker_or_several_threads_fork_nothing() -> None:
    assert not parallel_allowed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not parallel_allowed(2)
    finally:
        torch.set_num_threads(threads)
    assert parallel_allowed(2)


@dataclass
class _Items:
    """A stand-in for a batch of subdomains: integers, one searched every few milliseconds."""

    items: list[int]

    @property
    def batch(self) -> int:
        return len(self.items)


def _fake_search(batch: _Items, channel: Channel, gen: torch.Generator):
    """Search integers one by one, first to last; 13 is a counterexample, the rest are proven."""
    todo = list(batch.items)
    while todo:
        item = todo.pop(0)
        if item == 13:
            return Status.SAT, ("cex", item), {"searched": item}
        time.sleep(0.002)

        def give():
            if len(todo) < 2:
                return None
            keep = len(todo) - len(todo) // 2
            half, todo[:] = todo[keep:], todo[:keep]
            return _Items(half)

        if channel.serve(give):
            return Status.UNKNOWN, None, {}
    return Status.UNSAT, None, {}


def _coordinate(items: list[int], workers: int) -> tuple[object, Helpers, list[int]]:
    """The coordinator's side of ``search``: its own items one by one, trading with the helpers."""
    helpers = Helpers(_fake_search, workers, Deadline.after(20.0), seed=0)
    mine, seen = list(items), []
    try:
        helpers.start()
        while mine or helpers.busy:
            cex = helpers.exchange(lambda n: _Items([mine.pop() for _ in range(n)]), len(mine),
                                   lambda b: mine.extend(b.items), block=not mine)
            if cex is not None:
                return cex, helpers, seen
            if mine:
                item = mine.pop()
                seen.append(item)
                if item == 13:
                    return ("cex", item), helpers, seen
                time.sleep(0.0005)  # faster than a helper: the coordinator runs dry and asks for work back
    finally:
        helpers.close()
    return None, helpers, seen


@pytest.mark.parametrize("workers", [2, 3])
def test_every_subdomain_is_searched_or_given_back(workers: int) -> None:
    cex, helpers, seen = _coordinate([i for i in range(400) if i != 13], workers)
    assert cex is None and not helpers.undecided
    assert helpers.handed > 0 and helpers.returned > 0  # the coordinator ran dry and was given work back
    # every item handed out and not given back was proven by a helper: the counts add up
    assert len(seen) + helpers.handed - helpers.returned == 399


def test_a_helpers_counterexample_ends_the_search() -> None:
    # the first half handed out is popped from the end: 13 is the helper's first item
    cex, helpers, seen = _coordinate([*range(14, 400), 13], 2)
    assert cex == ("cex", 13) and 13 not in seen


def test_verify_with_two_workers_on_a_shipped_acas_instance() -> None:
    """The whole pipeline with a helper from the first round: the verdict of one worker, and the helper
    did part of the search."""
    from verifier.api import verify
    from verifier.config import load_config

    folder = Path(__file__).resolve().parents[1] / "models" / "acasxu"
    model, spec = folder / "ACASXU_run2a_1_9_batch_2000.onnx", folder / "prop_2.vnnlib"
    one = verify(model, spec, timeout=60, config=load_config(overrides={"bab": {"workers": 1}}))
    two = verify(model, spec, timeout=60, config=load_config(overrides={"bab": {"workers": 2,
                                                                                "parallel_after": 0.0}}))
    assert one.status is two.status is Status.UNSAT
    assert "bab_workers" not in one.stats and two.stats["bab_workers"] == 2 and two.stats["bab_handed"] > 0


def _dying_search(batch: _Items, channel: Channel, gen: torch.Generator):
    os._exit(3)  # as if killed (out of memory) in the middle of its work


def test_a_helper_that_dies_leaves_the_search_undecided() -> None:
    helpers = Helpers(_dying_search, 2, Deadline.after(20.0), seed=0)
    mine = list(range(10))
    try:
        helpers.start()
        while mine or helpers.busy:
            helpers.exchange(lambda n: _Items([mine.pop() for _ in range(n)]), len(mine),
                             lambda b: mine.extend(b.items), block=not mine)
            if mine:
                mine.pop()
    finally:
        helpers.close()
    assert helpers.handed == 5 and helpers.undecided and not helpers.helpers


def test_rules_that_account_for_their_subdomains_get_no_helpers() -> None:
    """A rule with ``admit``/``drain`` (the refinement's budgets) or a recorder keeps every subdomain in one process,
    whatever its ``parallel`` flag says: a helper's subdomains would escape its accounting (the
    refinement once reported bounds that sampled points violate)."""
    from dataclasses import replace

    from verifier.bab.options import BabOptions
    from verifier.bab.search import Rule, _helpers
    from verifier.network import Dense, Input, Network, Node

    net = Network(nodes=(Node(op=Input(), inputs=(), shape=(2,), name="x"),
                         Node(op=Dense(weight=torch.eye(2), bias=torch.zeros(2)), inputs=(0,), shape=(2,), name="y")),
                  output=1)
    shared = Rule(branch=lambda b: b, bound=lambda b: b, batch_size=1, settle=lambda b: (b, None, False),
                  parallel=True)

    def helpers(rule: Rule):
        return _helpers(net, None, rule, lambda x: None, BabOptions(workers=2), Deadline.after(10.0),
                        torch.Generator(), None)

    assert helpers(shared) is not None
    assert helpers(replace(shared, admit=lambda b: b)) is None
    assert helpers(replace(shared, drain=lambda b: None)) is None
    assert helpers(replace(shared, recorder=object())) is None  # a proof tree is recorded in one process
