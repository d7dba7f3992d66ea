"""HiGHS, behind two calls: one MIP solve and an LP solved for many cost vectors.

This is the only module that imports ``highspy``.  Models are passed in one
call from CSR arrays; solver output is switched off, and the banner HiGHS's
native code prints on standard output when the first ``Highs`` object is made
goes to standard error when logging is verbose, else nowhere (standard output's
first line is the verdict); tolerances stay at their defaults (tightening them has made HiGHS
call feasible models infeasible).
"""

from __future__ import annotations

import ctypes
import enum
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass

import highspy
import numpy as np

from verifier.exact.encoding import MipProblem

_MIN_TIME = 0.01  # HiGHS treats a zero time limit as none; never pass one


class MipStatus(enum.Enum):
    """HiGHS's own word on a solve (not a verdict: the caller decides what it means)."""

    INFEASIBLE = "infeasible"
    FEASIBLE = "feasible"  # an incumbent is known
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"


@dataclass(frozen=True, eq=False)
class MipSolve:
    """One solve; ``status`` given by name is read as a ``MipStatus``."""

    status: MipStatus
    values: np.ndarray | None  # (n,) the incumbent, when there is one
    objective: float  # the incumbent's objective (inf without one)
    dual_bound: float  # a lower bound on the optimum (-inf when none is known)
    time: float
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MipStatus(self.status))


def solve_mip(
    problem: MipProblem, time_limit: float, threads: int = 1, stop_below: float | None = None
) -> MipSolve:
    """Minimise ``problem``; with ``stop_below`` stop as soon as the incumbent is below it
    or the dual bound is above it (the sign of ``optimum - stop_below`` is then known)."""
    h = _new_highs(threads, time_limit)
    _pass(h, problem)
    if stop_below is not None:
        h.cbMipInterrupt.subscribe(_stopper(stop_below))
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kUnboundedOrInfeasible:
        # presolve could not tell the two apart; every column is bounded, so solve without it
        h.setOptionValue("presolve", "off")
        h.run()
        status = h.getModelStatus()
    return _result(h, status, bool(np.any(problem.integrality)))


class LpSession:
    """One LP (integrality dropped) minimised for many cost vectors with warm starts.

    ``minimize`` returns a lower bound recomputed from the row duals by weak duality (Neumaier and
    Shcherbina, Math. Program. 2004), and infeasibility is accepted only with a checked Farkas
    certificate.  It bounds the LP as encoded in float64, not the network in real arithmetic: a
    hint, like everything this module returns.  A proof takes the duals (``duals``) into our own
    rigorous backward pass (``bab.leaves``).
    """

    def __init__(self, problem: MipProblem, threads: int = 1) -> None:
        self.problem = problem
        self._h = _new_highs(threads, None)
        self._h.setOptionValue("presolve", "off")  # keeps the basis between solves
        _pass(self._h, problem, integral=False)
        self._cols = np.arange(problem.n_cols, dtype=np.int32)
        self._AT = problem.A.T.tocsr()

    def minimize(self, cost: np.ndarray, offset: float = 0.0, time_limit: float | None = None) -> float:
        """A lower bound on ``min cost @ v + offset`` over the LP as encoded (``inf`` if infeasible)."""
        h = self._h
        h.setOptionValue("time_limit", max(_MIN_TIME, time_limit) if time_limit is not None else math.inf)
        h.changeColsCost(self._cols.size, self._cols, np.asarray(cost, dtype=np.float64))
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return math.inf if self._farkas() else -math.inf
        sol = h.getSolution()
        if not sol.dual_valid:
            return -math.inf
        return self._dual_bound(np.asarray(cost, dtype=np.float64), np.asarray(sol.row_dual)) + offset

    def values(self) -> np.ndarray | None:
        """The primal point of the last solve, when it has one."""
        sol = self._h.getSolution()
        return np.asarray(sol.col_value, dtype=np.float64) if sol.value_valid else None

    def duals(self) -> np.ndarray | None:
        """The row duals of the last solve (reduced costs are ``cost - A^T duals``), when it has them."""
        sol = self._h.getSolution()
        return np.asarray(sol.row_dual, dtype=np.float64) if sol.dual_valid else None

    def farkas_ray(self) -> np.ndarray | None:
        """After a solve that found the LP infeasible: the row multipliers of its dual ray, oriented as
        row duals so that their dual bound is positive (a Farkas certificate of the LP as encoded,
        still a hint), else None."""
        if self._h.getModelStatus() != highspy.HighsModelStatus.kInfeasible:
            return None
        _, has_ray, ray = self._h.getDualRay()
        if not has_ray:
            return None
        ray = np.asarray(ray, dtype=np.float64)
        zero = np.zeros(self.problem.n_cols)
        for y in (ray, -ray):
            if self._dual_bound(zero, y) > 0:
                return y
        return None

    def _dual_bound(self, cost: np.ndarray, y: np.ndarray) -> float:
        """``min_v (cost - A^T y) v`` over the column box plus the row-bound terms of ``y``."""
        p = self.problem
        y = np.where((y > 0) & ~np.isfinite(p.row_lower), 0.0, y)
        y = np.where((y < 0) & ~np.isfinite(p.row_upper), 0.0, y)
        reduced = cost - self._AT @ y
        with np.errstate(invalid="ignore"):
            col = np.where(reduced > 0, reduced * p.col_lower, reduced * p.col_upper)
            col = np.where(reduced == 0, 0.0, col)
            rows = np.where(y > 0, y * p.row_lower, y * p.row_upper)
            rows = np.where(y == 0, 0.0, rows)
        total = float(np.sum(col) + np.sum(rows))
        # float64 rounding of the sums above
        scale = float(np.sum(np.abs(col[np.isfinite(col)])) + np.sum(np.abs(rows[np.isfinite(rows)])))
        return total - 1e-12 * scale * max(1, len(col) + len(rows)) ** 0.5 - 1e-12

    def _farkas(self) -> bool:
        status, has_ray, ray = self._h.getDualRay()
        if not has_ray:
            return False
        zero = np.zeros(self.problem.n_cols)
        ray = np.asarray(ray, dtype=np.float64)
        return self._dual_bound(zero, ray) > 0 or self._dual_bound(zero, -ray) > 0


log = logging.getLogger(__name__)
_FIRST = threading.Lock()
_made = False


def _highs() -> highspy.Highs:
    """A ``Highs`` object; the first one is made with file descriptor 1 pointed at standard error (verbose
    logging) or the null device, where its banner goes (native code writes it, so redirecting
    ``sys.stdout`` would not catch it)."""
    global _made
    with _FIRST:
        if _made:
            return highspy.Highs()
        sys.stdout.flush()
        saved = os.dup(1)
        sink = os.dup(2) if log.isEnabledFor(logging.INFO) else os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(sink, 1)
            h = highspy.Highs()
            ctypes.CDLL(None).fflush(None)  # the banner may sit in the C library's buffer
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(sink)
        _made = True
        return h


def _new_highs(threads: int, time_limit: float | None) -> highspy.Highs:
    h = _highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", 0)
    if time_limit is not None:
        h.setOptionValue("time_limit", max(_MIN_TIME, float(time_limit)))
    return h


def _pass(h: highspy.Highs, p: MipProblem, integral: bool = True) -> None:
    A = p.A.tocsr()
    integrality = (p.integrality if integral else np.zeros(p.n_cols, dtype=bool)).astype(np.uint8)
    status = h.passModel(
        p.n_cols, A.shape[0], A.nnz, 2, 1, float(p.offset),  # 2: row-wise, 1: minimise
        np.asarray(p.cost, dtype=np.float64),
        np.asarray(p.col_lower, dtype=np.float64), np.asarray(p.col_upper, dtype=np.float64),
        np.asarray(p.row_lower, dtype=np.float64), np.asarray(p.row_upper, dtype=np.float64),
        A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64),
        integrality,
    )
    if status == highspy.HighsStatus.kError:
        raise ValueError("HiGHS rejected the model (inconsistent bounds or dimensions)")


def _stopper(threshold: float):
    def stop(event) -> None:
        out = event.data_out
        if out.mip_primal_bound < threshold or out.mip_dual_bound > threshold:
            event.interrupt()

    return stop


def _result(h: highspy.Highs, status, is_mip: bool) -> MipSolve:
    S = highspy.HighsModelStatus
    info = h.getInfo()
    sol = h.getSolution()
    has_value = bool(sol.value_valid) and info.primal_solution_status == 2  # 2: feasible
    values = np.asarray(sol.col_value, dtype=np.float64) if has_value else None
    objective = float(info.objective_function_value) if has_value else math.inf
    if is_mip:
        dual = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else -math.inf
    else:  # an LP: mip_dual_bound is not set; at optimality the optimum is the bound
        dual = objective if status == S.kOptimal and has_value else -math.inf
    message = h.modelStatusToString(status)
    if status == S.kInfeasible:
        kind = MipStatus.INFEASIBLE
    elif values is not None and status in (S.kOptimal, S.kInterrupt, S.kTimeLimit, S.kSolutionLimit,
                                           S.kObjectiveBound, S.kObjectiveTarget):
        kind = MipStatus.FEASIBLE
    elif status == S.kTimeLimit:
        kind = MipStatus.TIMEOUT
    else:
        kind = MipStatus.UNKNOWN
    return MipSolve(kind, values, objective, dual, float(h.getRunTime()), message)
