"""Exact (complete) backends: MILP on HiGHS (its answers are hints), SMT on z3 (exact), and the LP
relaxation.

Entry points: ``decide_region`` (one region, by the certified LP, the MILP or z3: every exact
decision goes through it), ``milp_verify`` (a whole spec), ``milp_check`` (one polytope on one box;
the SMT engine's search over a whole spec is ``bab.exact_split.smt_verify``), ``count_unstable`` (for
the auto engine choice), ``lp_bounds``/``lp_tighten`` (bounds).  Submodules load on first use, so that
importing the package does not import the solvers.
"""

from importlib import import_module

_EXPORTS = {
    "ExactOutcome": "verifier.exact.outcome",
    "Region": "verifier.exact.region",
    "decide_region": "verifier.exact.region",
    "MilpOptions": "verifier.exact.milp",
    "milp_verify": "verifier.exact.milp",
    "milp_check": "verifier.exact.milp",
    "count_unstable": "verifier.exact.milp",
    "case_bounds": "verifier.exact.box_bounds",
    "SmtOptions": "verifier.exact.options",
    "relaxation_candidate": "verifier.exact.region",
    "lp_bounds": "verifier.exact.lp_relaxation",
    "lp_tighten": "verifier.exact.lp_relaxation",
    "ReluBounds": "verifier.exact.encoding",
    "encode_network": "verifier.exact.encoding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verifier.exact' has no attribute {name!r}")
