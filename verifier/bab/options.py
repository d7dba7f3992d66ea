"""Branch-and-bound options: the search loop and portfolio, and one part per rule.

Config keys: ``bab.<loop key>``, ``bab.input.<key>``, ``bab.relu.<key>``, ``bab.refine.<key>``.  The
measurements behind the defaults are in ``benchmarks/results/README.md``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from verifier.options import AttackOptions

if TYPE_CHECKING:
    from verifier.bounds import ForwardMode


def check_choices(options: object) -> None:
    """Raise ``ValueError`` naming the field whose value is not one its ``Literal`` type allows."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal and getattr(options, f.name) not in typing.get_args(hint):
            allowed = ", ".join(map(str, typing.get_args(hint)))
            raise ValueError(f"{f.name} must be one of {allowed}, not {getattr(options, f.name)!r}")


@dataclass(frozen=True)
class InputSplitOptions:
    """Input splitting (``bab/input_split.py``)."""

    max_dim: int = 16  # branching auto picks input splitting up to this many inputs
    share: float = 0.95  # with branching auto: its share of the time before ReLU splitting takes over
    batch_size: int = 2048  # parents popped per round
    bound: Literal["crown", "alpha"] = "crown"  # alpha: CROWN, then alpha-CROWN on the children left open
    # bound both halves for every dimension and keep the best split, scoring with full CROWN ("full"), with
    # CROWN on the spec rows only ("final"), or not at all: the parent's linear bound's coefficient times
    # the width ("linear", one backward pass of the spec rows per parent) or the gradient at the centre
    # times the width ("none"); auto: "full", but "linear" where the intermediate bounds are CROWN's
    # filtered by forward bounds (forward "filter"), whose every candidate would cost seconds of backward
    # passes (cifar_biasfield idx 4 / 14 at 60 s: worst margin -2.34 / -0.80 at depth 4 with "linear",
    # -3.97 / -0.91 with "none"; "final" splits as "linear" does there, at more cost), and "final" where
    # only the narrow layers are (``narrow_share``: on tllverifybench N=64, 1.2-1.5x faster than "none",
    # and than "full" by the estimates it saves)
    strong_branching: Literal["auto", "full", "final", "none", "linear"] = "auto"
    contract: bool = True  # shrink each box by its rows' linear bounds (bab/contract.py)
    bound_chunk: int = 512  # children bounded per CROWN call
    all_combinations: bool = False  # bound every row combination, not only the midpoints
    # open boxes with at most this many unstable ReLUs are searched by ReLU splitting on their own (0: never) ...
    exact_unstable: int = 12
    exact_share: float = 0.1  # ... while those searches have taken at most this share of the time
    exact_per_round: int = 16  # ... at most this many per round
    warm_start: bool = False  # alpha: start a child's slope optimization from its parent's slopes
    # alpha-CROWN on the whole box before the search (with bound "crown" the search bounds every child by
    # CROWN, so the root's optimized bound serves only the root: on ACAS Xu a few rounds of splitting
    # cost less than its slope optimization)
    root_alpha: bool = False
    # intermediate bounds by forward linear bounds (bounds/forward_linear.py) instead of CROWN's backward
    # passes ("on"), or CROWN's with backward passes only for what forward bounds leave unstable
    # ("filter"); auto: on networks of at most forward_max_inputs inputs and at least forward_min_relus
    # ReLUs, "on" up to forward_on_max_inputs inputs, else "filter" (forward bounds are affine in every
    # input and lose more with each: on cifar_biasfield's 16 inputs and 7 conv layers the root margin was
    # -48646 with them, -5.05 with CROWN's; on tllverifybench's 2 inputs they decide more)
    forward: Literal["auto", "on", "off", "filter"] = "auto"
    forward_max_inputs: int = 16
    forward_min_relus: int = 1000
    forward_on_max_inputs: int = 4
    # with forward bounds alone ("on"), the ReLU layers of at most this share of the widest one's neurons
    # still get backward passes for the neurons forward bounds leave unstable ("filter" on those layers
    # only): a network that narrows with depth (a two-level lattice: 8192 neurons down to 4) gets CROWN's
    # bounds where its rows are few and the forward bounds loosest; 0: none
    narrow_share: float = 1 / 32

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_dim < 0 or self.batch_size < 1 or self.bound_chunk < 1:
            raise ValueError("max_dim must be at least 0, batch_size and bound_chunk at least 1")

    def branching_score(self, forward: ForwardMode, filter_width: int | None = None
                        ) -> Literal["full", "final", "none", "linear"]:
        """How input splitting scores its candidate splits where its intermediate bounds come from
        ``forward`` (with backward passes up to ``filter_width``, see ``forward_choice``)."""
        if self.strong_branching != "auto":
            return self.strong_branching
        if forward == "filter":
            return "linear" if filter_width is None else "final"
        return "full"

    def forward_mode(self, n_inputs: int, relus: int) -> ForwardMode:
        """Where input splitting on a network of ``n_inputs`` inputs and ``relus`` ReLU neurons takes
        its intermediate bounds from (``crown``'s ``forward``)."""
        if self.forward != "auto":
            return self.forward
        if n_inputs > self.forward_max_inputs or relus < self.forward_min_relus:
            return "off"
        return "on" if n_inputs <= self.forward_on_max_inputs else "filter"

    def forward_choice(self, n_inputs: int, widths: list[int]) -> tuple[ForwardMode, int | None]:
        """``forward_mode`` for a network of ``n_inputs`` inputs and ReLU layers of ``widths`` neurons,
        and the width up to which a layer gets backward passes under "filter" (None: every layer): "on"
        becomes "filter" on its narrow layers where some are (``narrow_share``)."""
        mode = self.forward_mode(n_inputs, sum(widths))
        cap = int(self.narrow_share * max(widths, default=0))
        if mode == "on" and widths and min(widths) <= cap:
            return "filter", cap
        return mode, None


@dataclass(frozen=True)
class ReluSplitOptions:
    """ReLU splitting (``bab/relu_split.py``)."""

    batch_size: int = 256  # parents popped per round
    branching: Literal["babsr", "fsb"] = "fsb"  # babsr: intercept score; fsb: best of the top candidates
    fsb_candidates: int = 4  # fsb: candidates per parent bounded before choosing
    beta_iterations: int = 20  # beta-CROWN iterations per batch of children
    beta_intermediate: bool = False  # also optimize the intermediate layers' slopes
    per_polytope: bool = True  # one search per polytope left open by the root bound
    # children's intermediate bounds: "recompute" the layers after the split by CROWN (intersected with the
    # parent's), keep the parent's ("fixed": only the split neuron's bounds change), or "auto": the way whose
    # worst margins rise more per second on a first sample bounded both ways (``probe_intermediate``)
    intermediate: Literal["recompute", "fixed", "auto"] = "auto"
    # recomputed intermediate bounds: a neuron whose parent's bounds [l, u] have one side more than this
    # many times the other's gets a backward pass for its smaller side only (0: both sides; see
    # ``crown_sweep``'s ``one_sided``).  At the root 40-70 % of the unstable neurons are that lopsided
    # (oval21, sri_resnet_a, mnistfc); sri_resnet_a 9101's rounds of 100 children took 18.7 instead of 24.6 s
    # with the same worst margins; oval21's and sri_resnet_a's quick instances and 6 mnistfc ones unchanged
    one_sided: float = 4.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.fsb_candidates < 1 or self.beta_iterations < 0 or self.batch_size < 1:
            raise ValueError("fsb_candidates and batch_size must be at least 1 and beta_iterations at least 0")
        if not (self.one_sided == 0 or self.one_sided >= 1):
            raise ValueError(f"one_sided must be 0 (off) or at least 1, not {self.one_sided}")


@dataclass(frozen=True)
class RefineOptions:
    """The refinement of intermediate bounds (``bab/refine.py``) on networks of two or more ReLU layers:
    after ``after`` of the time, ReLU splitting starts again from a root whose unstable neurons were proven
    stable where possible, which may take ``share`` of the time left, at most ``neuron_budget`` subdomains
    bounded per neuron (four times as many in each later pass)."""

    after: float = 0.1
    share: float = 0.6  # 0 turns the refinement off
    neuron_budget: int = 64
    # only on networks whose ReLU layers have at most this many neurons each (measured on mnistfc's
    # 256-wide layers, not on convolutional layers of thousands)
    max_width: int = 1024

    def __post_init__(self) -> None:
        if not (0 <= self.after <= 1 and 0 <= self.share <= 1):
            raise ValueError("refine after and share must be fractions of the time in [0, 1]")


@dataclass(frozen=True)
class BabOptions:
    """The search loop and the per-case portfolio, with one part per rule."""

    branching: Literal["auto", "input", "relu"] = "auto"
    attack_every: int = 10  # rounds between PGD attacks on the worst subdomains
    attack_domains: int = 16  # worst subdomains attacked each time
    attack: AttackOptions = field(default_factory=lambda: AttackOptions(
        samples=64, restarts=8, steps=20, rounds=1, candidates=4))  # per attacked subdomain
    max_domains: int = 5_000_000  # open subdomains before giving up (memory)
    # the open subdomains may hold this fraction of the machine's physical memory; past half of it the
    # search pops deepest first (depth-first keeps the store from growing), past all of it it answers
    # unknown instead of being killed (popping copies the store, so the peak is about twice this)
    max_memory: float = 0.25
    progress_every: float = 2.0  # seconds between progress lines (-v)
    # processes searching one case together (bab/parallel.py; 0: the cores available), where torch runs on
    # one thread (small networks) and on the CPU; the helpers start once a search has run this long (0: from
    # its first round with two open subdomains)
    workers: int = 0
    parallel_after: float = 0.0
    ray: str = ""  # a Ray cluster's address: the helpers run as its tasks (workers 0: one per CPU of it)
    input: InputSplitOptions = field(default_factory=InputSplitOptions)
    relu: ReluSplitOptions = field(default_factory=ReluSplitOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 < self.max_memory <= 1:
            raise ValueError(f"max_memory must be a fraction of the memory in (0, 1], not {self.max_memory}")
        if self.attack_every < 1:
            raise ValueError("attack_every must be at least 1")
        if self.workers < 0 or self.parallel_after < 0:
            raise ValueError("workers and parallel_after must be at least 0")
