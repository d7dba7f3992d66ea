"""The Python API: ``verify(model, spec) -> Result``, one readable pipeline.

Stages: load and check shapes, attack (sat), incomplete bounds IBP -> CROWN ->
alpha-CROWN (unsat), then a complete engine (branch-and-bound, MILP or SMT).
A ``sat`` is only ever produced by ``verifier.validate``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from verifier.attack import attack_case
from verifier.config import Config
from verifier.deadline import Deadline
from verifier.errors import ShapeMismatchError
from verifier.network import Network
from verifier.objective import CaseObjective, case_objective, spec_fits, with_row_combinations
from verifier.result import Counterexample, Result, Status, combine
from verifier.runtime import runtime
from verifier.validate import Replayer, validate
from vnnlib.spec import Spec

if TYPE_CHECKING:
    from verifier.bounds import BoundResult
    from verifier.certificate.record import ProofLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Problem:
    """A loaded model and spec, ready for the engines."""

    net: Network  # on the configured device and dtype
    spec: Spec
    replayer: Replayer
    model_path: Path


def verify(
    model: str | os.PathLike | Network, spec: str | os.PathLike | Spec, timeout: float | None = None,
    config: Config | None = None, onnx_path: str | os.PathLike | None = None,
    stats: dict | None = None,
) -> Result:
    """Decide whether some input of ``spec`` drives ``model`` into the unsafe region.

    ``model`` is an ONNX path or a loaded ``Network``; a counterexample is replayed
    through onnxruntime on the ONNX file (``onnx_path``, or the model path, or an
    export of the ``Network`` into a temporary directory that lasts as long as the run).
    The run sets torch's threads and TF32 flags (``verifier.runtime``) and restores them.
    ``stats``: a dict the run fills with its statistics as each stage ends (the result's ``stats``), for a
    caller that stops waiting before the run returns (the CLI's watchdog).
    """
    start = time.monotonic()
    deadline = Deadline.after(timeout)
    config = config or Config()
    if config.proof or config.certify:
        # the checker recomputes every intermediate bound by CROWN: bounds optimized beyond it (alpha-CROWN's
        # intermediate slopes, intersected over its iterations) could not be replayed
        # nor bounds from forward linear bounds
        config = replace(config, alpha=replace(config.alpha, optimize_intermediate=False),
                         bab=replace(config.bab, input=replace(config.bab.input, forward="off")))
    with contextlib.ExitStack() as run:
        if isinstance(model, Network) and onnx_path is None:
            onnx_path = _export(model, Path(run.enter_context(tempfile.TemporaryDirectory(prefix="verifier-"))))
        problem = load_problem(model, spec, config, onnx_path)
        stats = {} if stats is None else stats
        stats["load_time"] = round(time.monotonic() - start, 4)
        proofs = _proof_log(problem, config)
        with runtime(config, problem.net) as rt:
            status, cex = run_pipeline(problem, config, deadline, stats, rt.generator, proofs)
        proof, message = None, ""
        if status is Status.UNSAT and proofs is not None:
            spec_path = None if isinstance(spec, Spec) else Path(spec)
            status, proof, message = _certificate(problem, spec_path, proofs, config, stats)
    if status is Status.UNKNOWN and deadline.expired():
        status = Status.TIMEOUT
    return Result(status=status, counterexample=cex, time=time.monotonic() - start, stats=stats, message=message,
                  proof=proof, spec=problem.spec)


def _proof_log(problem: Problem, config: Config) -> ProofLog | None:
    """The recorders of the proof certificate, when the configuration asks for one."""
    if not (config.proof or config.certify):
        return None
    from verifier.certificate.record import ProofLog

    net = problem.net
    return ProofLog(problem.spec, [net.nodes[r].size for r in net.relu_indices])


def _certificate(problem: Problem, spec_path: Path | None, proofs: ProofLog, config: Config, stats: dict
                 ) -> tuple[Status, object, str]:
    """The certificate of an UNSAT answer, and the answer: UNKNOWN under ``certify`` unless the
    independent checker accepts the certificate."""
    import hashlib

    from verifier.certificate import Proof, check_proof, proof_meta

    t = time.monotonic()
    arrays, why = proofs.build()
    proof = None
    if arrays is not None:
        spec_hash = "" if spec_path is None else hashlib.sha256(spec_path.read_bytes()).hexdigest()
        model_hash = hashlib.sha256(problem.model_path.read_bytes()).hexdigest()
        proof = Proof.from_arrays(proof_meta(model_hash, spec_hash, len(arrays), proofs.relu_sizes), arrays)
        stats["proof_bytes"] = sum(a.nbytes for case in arrays for a in case.values())  # uncompressed
    stats["proof_time"] = round(time.monotonic() - t, 4)
    if proof is None:
        log.warning("no proof certificate: %s", why)
        return (Status.UNKNOWN if config.certify else Status.UNSAT), None, f"no certificate: {why}"
    if not config.certify:
        return Status.UNSAT, proof, ""
    if spec_path is None:
        return Status.UNKNOWN, proof, "certify: the checker needs the spec file"
    t = time.monotonic()
    checked = check_proof(problem.model_path, spec_path, proof)
    stats["check_time"] = round(time.monotonic() - t, 4)
    stats["proof_nodes"] = checked.nodes
    if not checked.valid:
        log.warning("the checker rejected the certificate: %s", checked.reason)
        return Status.UNKNOWN, proof, f"certificate rejected: {checked.reason}"
    return Status.UNSAT, proof, ""


def load_problem(
    model: str | os.PathLike | Network, spec: str | os.PathLike | Spec, config: Config,
    onnx_path: str | os.PathLike | None = None,
) -> Problem:
    """Load model and spec, check that their sizes agree, move the net to the device (no process-wide
    state is touched: ``verify`` runs the pipeline inside ``verifier.runtime``).  A ``Network`` needs the
    ``onnx_path`` its counterexamples replay on (``verify`` exports one)."""
    if isinstance(model, Network):
        if onnx_path is None:
            raise ValueError("a Network needs onnx_path, the ONNX file its counterexamples replay on")
        net = model
        path = Path(onnx_path)
    else:
        from verifier.onnx_import import load_onnx

        path = Path(model)
        net = load_onnx(path, torch.float64)  # cast to the working dtype below (a cast that rounds is tracked)
    if not isinstance(spec, Spec):
        from vnnlib.reader import read_spec

        spec = read_spec(spec, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    if spec.n_inputs != net.n_inputs or spec.n_outputs != net.n_outputs:
        raise ShapeMismatchError(
            f"spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs, "
            f"the model has {net.n_inputs} inputs and {net.n_outputs} outputs"
        )
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    if not all(spec_fits(case, dtype) for case in spec.cases):
        log.info("the spec's output coefficients need float64: bounding in float64")
        dtype = torch.float64
    return Problem(net=net.to(config.device, dtype), spec=spec, replayer=Replayer(path), model_path=path)


def _export(net: Network, folder: Path) -> Path:
    from verifier.onnx_export import save_onnx  # exported once so onnxruntime can replay

    path = folder / "model.onnx"
    save_onnx(net, path)
    return path


def run_pipeline(
    problem: Problem, config: Config, deadline: Deadline, stats: dict, gen: torch.Generator | None = None,
    proofs: ProofLog | None = None,
) -> tuple[Status, Counterexample | None]:
    """Attack, then incomplete bounds, then the complete engine; first decision wins (``gen``: the
    run's generator, by default one seeded with ``config.seed``; ``proofs``: records the proof)."""
    net, spec = problem.net, problem.spec
    objectives = [case_objective(c, net.dtype, net.device) for c in spec.cases]
    if config.row_combinations > 0:
        objectives = [with_row_combinations(o, config.row_combinations) for o in objectives]
    if gen is None:
        gen = torch.Generator(device=net.device).manual_seed(config.seed)

    if config.engine in ("milp", "smt"):
        status, cex = _exact_engine(problem, config, deadline, stats)
        if status is not Status.UNSAT or (config.engine == "smt" and proofs is None):
            return status, cex  # z3's unsat is exact
        # HiGHS's infeasibility is a hint, not a proof: the bounds and the search must prove it. z3's unsat is
        # exact but leaves nothing to check: under --proof the search proves it again and records the certificate
        log.info("%s: unsat; proving it by branch and bound", config.engine)
        stats[f"{config.engine}_certify"] = 1
        status, cex = _prove(problem, objectives, config, deadline, stats, gen, proofs)
        if status is Status.SAT:
            log.warning("%s: called a spec with a counterexample unsat", config.engine)
        elif config.engine == "smt" and status is not Status.UNSAT:
            proofs.uncertified("the search did not prove z3's unsat in time")
            return Status.UNSAT, None
        return status, cex
    screened = _screen(problem, objectives, config, deadline, stats, proofs)
    open_cases = [i for i in range(len(objectives)) if screened is None or i not in screened[0]]
    if config.attack.enabled:
        t = time.monotonic()
        cex = _attack_all(problem, objectives, open_cases, config, deadline, gen)
        stats["attack_time"] = round(time.monotonic() - t, 4)
        if cex is not None:
            return Status.SAT, cex
    if config.stop_after == "attack" or deadline.expired():
        return Status.UNKNOWN, None
    return _prove(problem, objectives, config, deadline, stats, gen, proofs,
                  None if screened is None else (open_cases, screened[1]))


def _screen(
    problem: Problem, objectives: list[CaseObjective], config: Config, deadline: Deadline, stats: dict,
    proofs: ProofLog | None,
) -> tuple[dict, dict] | None:
    """For a spec of several cases, IBP and CROWN on all of them in batches before anything else
    (``incomplete.screen_cases``): a case they prove needs no attack and no per-case stage."""
    if len(objectives) < 2 or config.stop_after == "attack":
        return None
    from verifier.incomplete import screen_cases

    proven, left = screen_cases(problem.net, objectives, config, deadline, stats, keep_proven=proofs is not None)
    if proofs is not None:
        for index, root in proven.items():
            proofs.root_bounds(index, objectives[index], root)
    return proven, left


def _prove(
    problem: Problem, objectives: list[CaseObjective], config: Config, deadline: Deadline, stats: dict,
    gen: torch.Generator, proofs: ProofLog | None = None,
    screened: tuple[list[int], dict[int, BoundResult]] | None = None,
) -> tuple[Status, Counterexample | None]:
    """Incomplete bounds on every case (``screened``: only on the listed cases, starting from their
    batched IBP and CROWN bounds where given), then branch and bound on those left open."""
    from verifier.incomplete import incomplete_stages

    roots = {}
    todo = range(len(objectives)) if screened is None else screened[0]
    for index in todo:
        obj = objectives[index]
        proven, root = incomplete_stages(problem.net, obj, config, deadline, stats,
                                         None if screened is None else screened[1].get(index))
        if proofs is not None:
            proofs.root_bounds(index, obj, root)
        if not proven:
            roots[index] = root
    if not roots:
        return Status.UNSAT, None
    if config.stop_after != "complete" or deadline.expired():
        return Status.UNKNOWN, None
    return _complete(problem, objectives, roots, config, deadline, stats, gen, proofs)


def _exact_engine(problem: Problem, config: Config, deadline: Deadline, stats: dict
                  ) -> tuple[Status, Counterexample | None]:
    """The whole spec by the MILP (HiGHS) or SMT (z3) engine; a witness is validated like any other.
    The MILP's ``unsat`` is only HiGHS's word (``run_pipeline`` certifies it); z3's is exact."""
    if config.engine == "milp":
        from verifier.exact.milp import milp_verify

        outcome = milp_verify(problem.net, problem.spec, deadline, config.milp,
                              accept=lambda x: validate(problem.replayer, problem.spec, x) is not None)
    else:
        from verifier.bab.exact_split import smt_verify

        outcome = smt_verify(problem.net, problem.spec, deadline, config.smt)
    stats.update({f"{config.engine}_time": round(outcome.time, 4), f"{config.engine}_problems": outcome.problems,
                  f"{config.engine}_binaries": outcome.binaries})
    if outcome.verdict is Status.SAT:
        cex = validate(problem.replayer, problem.spec, np.asarray(outcome.x, dtype=np.float64))
        if cex is not None:
            return Status.SAT, cex
        log.warning("%s witness failed the onnxruntime replay: answering unknown", config.engine)
        stats["unconfirmed_witness"] = 1
        return Status.UNKNOWN, None
    return outcome.verdict, None


def _validator(problem: Problem, case_index: int):
    """Strict replay of a candidate (a flat tensor) against case ``case_index`` of the spec."""

    def check(x: torch.Tensor) -> Counterexample | None:
        return validate(problem.replayer, problem.spec, x.detach().cpu().double().numpy(), case_index)

    return check


def _attack_all(
    problem: Problem, objectives: list[CaseObjective], cases: list[int], config: Config, deadline: Deadline,
    gen: torch.Generator,
) -> Counterexample | None:
    attack_deadline = Deadline(min(deadline.at, time.monotonic() + config.attack.time_limit))
    for index in cases:
        cex = attack_case(problem.net, objectives[index], _validator(problem, index), config.attack,
                          attack_deadline, gen)
        if cex is not None or attack_deadline.expired():
            return cex
    return None


def _complete(
    problem: Problem, objectives: list[CaseObjective], roots: dict, config: Config, deadline: Deadline,
    stats: dict, gen: torch.Generator, proofs: ProofLog | None = None,
) -> tuple[Status, Counterexample | None]:
    """Branch and bound on every open case; the first counterexample decides, all must be proven."""
    from verifier.bab.search import BabStats
    from verifier.bab.solve import solve_case

    bab_stats = BabStats(live=stats)
    verdicts: list[Status] = []
    for index, root in roots.items():
        status, cex = solve_case(problem.net, objectives[index], root, _validator(problem, index), config.bab,
                                 config.alpha, deadline, gen, bab_stats,
                                 None if proofs is None else proofs.cases[index])
        if status is Status.SAT:
            stats.update(bab_stats.as_dict())
            return status, cex
        # an undecided case is a timeout exactly when the run's deadline has passed
        verdicts.append(status if status is Status.UNSAT else
                        Status.TIMEOUT if deadline.expired() else Status.UNKNOWN)
        if status is not Status.UNSAT:
            break
    stats.update(bab_stats.as_dict())
    return combine(verdicts), None
