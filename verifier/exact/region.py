"""One way to decide a region exactly: ``decide_region(net, region, polytopes, engine, deadline)``.

A region is an input box with ReLU split states and pre-activation bounds known to hold on it
(``Region``); the question is whether some input of it drives the network into one of the unsafe
polytopes ``A y <= b``.  Every exact decision goes through here, by one of three engines:

* ``"lp"`` (the leaves of ReLU splitting): every ReLU's sign is fixed on the region, so the network
  is affine there and one LP per polytope minimizes its margin.  HiGHS's optimum is a candidate; its
  duals rule a polytope out only once ``verifier.bounds.lagrangian`` has recomputed them into a
  rigorous bound (``exact.certified_lp``).  ``UNSAT`` is a proof.
* ``"milp"``: HiGHS's MIP per polytope (``exact.milp``).  ``UNSAT`` is HiGHS's word, a hint.
* ``"smt"``: z3 over exact rationals (``exact.smt``).  ``UNSAT`` is a proof for a network whose
  constants are exact (one with inexact constants gets ``UNKNOWN`` instead).

A ``SAT`` carries a candidate input that passed ``accept`` (the caller's strict replay) or, without
one, our own forward pass; the caller still replays it before reporting ``sat``.  The polytopes are
decided in order, the first ``SAT`` returns, and the verdicts are combined by ``result.combine``
(the ``"lp"`` engine also returns at the first undecided polytope: the region stays open anyway).
Engines load on first use, so importing this module imports no solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from verifier.deadline import Deadline
from verifier.exact.encoding import ReluBounds, as_relu_bounds, as_splits
from verifier.exact.options import MilpOptions, SmtOptions
from verifier.exact.outcome import ExactOutcome
from verifier.exact.witness import Accept
from verifier.network import Network
from vnnlib.spec import Polytope

Engine = Literal["lp", "milp", "smt"]


@dataclass(frozen=True, eq=False)
class Region:
    """An input box, optional ReLU split states and optional pre-activation bounds, all flat float64/int8.

    ``splits[k]`` and ``bounds.lower[k]``/``bounds.upper[k]`` belong to ReLU layer ``k`` (node
    ``net.relu_indices[k]``); a split is 0 free, +1 active (pre-activation >= 0), -1 inactive (<= 0).
    The bounds must hold on the box under the splits (they are used as given).
    """

    lower: np.ndarray  # (n_in,)
    upper: np.ndarray  # (n_in,)
    splits: tuple[np.ndarray, ...] | None = None  # per relu layer: (n_k,) int8
    bounds: ReluBounds | None = None

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if lower.shape != upper.shape or bool(np.any(~(lower <= upper))):
            raise ValueError("a region needs lower <= upper of one shape (and no NaN)")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        if self.splits is not None:
            object.__setattr__(self, "splits", tuple(np.asarray(s, dtype=np.int8).reshape(-1) for s in self.splits))

    @staticmethod
    def of(net: Network, lower, upper, splits=None, bounds=None, index: int = 0) -> Region:
        """Row ``index`` of batched tensors or arrays: a box ``(B, n_in)``, split states per ReLU layer
        ``(B, n_k)``, and bounds as ``ReluBounds``, an ``IntermediateBounds``-like object with
        ``.lower``/``.upper`` or ``(lower, upper)`` pairs (float64 holds a float32 tensor exactly)."""
        split_list = as_splits(splits, net, index)
        n = net.n_inputs
        return Region(_row(lower, n, index), _row(upper, n, index), None if split_list is None else tuple(split_list),
                      as_relu_bounds(bounds, net, index))


def _row(t, n: int, index: int) -> np.ndarray:
    a = t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)
    return a.reshape(-1) if a.size == n else a.reshape(-1, n)[index]


def decide_region(
    net: Network,
    region: Region,
    polytopes: Sequence[Polytope],
    engine: Engine,
    deadline: Deadline,
    options: MilpOptions | SmtOptions | None = None,
    accept: Accept | None = None,
) -> ExactOutcome:
    """Whether some input of ``region`` has ``net``'s output in one of ``polytopes`` (see the module doc).

    ``options`` are the engine's own (``MilpOptions`` for ``"milp"``, ``SmtOptions`` for ``"smt"``,
    none for ``"lp"``); ``accept`` is the caller's test of a candidate (``"smt"`` takes none: its
    candidates pass our forward pass).
    """
    if engine not in get_args(Engine):
        raise ValueError(f"engine must be one of {get_args(Engine)}, not {engine!r}")
    if region.lower.size != net.n_inputs:
        raise ValueError(f"the region has {region.lower.size} inputs, the network {net.n_inputs}")
    _check_options(engine, options)
    if engine == "lp":
        from verifier.exact.certified_lp import decide_lp

        return decide_lp(net, region, polytopes, deadline, accept)
    if engine == "milp":
        from verifier.exact.milp import decide_milp

        return decide_milp(net, region, polytopes, deadline, options or MilpOptions(), accept)
    if accept is not None:
        raise ValueError("the smt engine takes no accept: its candidates pass our forward pass")
    from verifier.exact.smt import decide_smt

    return decide_smt(net, region, polytopes, deadline, options or SmtOptions())


def _check_options(engine: Engine, options) -> None:
    wanted = {"lp": type(None), "milp": MilpOptions, "smt": SmtOptions}[engine]
    if options is not None and not isinstance(options, wanted):
        raise TypeError(f"the {engine} engine takes {wanted.__name__}, not {type(options).__name__}")


def relaxation_candidate(net: Network, region: Region, polytopes: Sequence[Polytope]) -> np.ndarray | None:
    """A hint: the optimum of the LP relaxation (HiGHS) of each polytope's margin on ``region`` (which
    needs ``bounds``), returned when our forward pass confirms it as a counterexample."""
    if region.bounds is None or not polytopes:
        return None
    from verifier.exact.encoding import EncodingOptions, encode_network, margin_problem
    from verifier.exact.highs import LpSession
    from verifier.exact.witness import confirmed
    from vnnlib.spec import Case

    box = Case(region.lower, region.upper, ())
    enc = encode_network(net, region.lower, region.upper, region.bounds, options=EncodingOptions(relax=True))
    if enc.empty:
        return None
    for poly in polytopes:
        problem = margin_problem(enc, poly.A, poly.b)
        session = LpSession(problem)
        session.minimize(problem.cost, problem.offset)
        values = session.values()
        x = None if values is None else confirmed(net, enc.input_of(values), box, poly)
        if x is not None:
            return x
    return None
