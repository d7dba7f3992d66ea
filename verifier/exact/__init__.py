"""Exact (complete) backends: MILP on HiGHS (its answers are hints), SMT on z3 (exact), and the LP
relaxation.

Entry points: ``milp_verify``/``smt_verify`` (a whole spec), ``milp_check`` (one
branch-and-bound leaf), ``count_unstable`` (for the auto engine choice),
``lp_bounds``/``lp_tighten`` (bounds).  Submodules load on first use, so that
importing the package does not import the solvers.
"""

from importlib import import_module

_EXPORTS = {
    "ExactOutcome": "verifier.exact.outcome",
    "MilpOptions": "verifier.exact.milp",
    "milp_verify": "verifier.exact.milp",
    "milp_check": "verifier.exact.milp",
    "count_unstable": "verifier.exact.milp",
    "case_bounds": "verifier.exact.milp",
    "SmtOptions": "verifier.exact.smt",
    "smt_verify": "verifier.exact.smt",
    "smt_check": "verifier.exact.smt",
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
