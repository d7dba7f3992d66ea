"""Complete verification of one spec case by branch and bound.

The portfolio per case: input splitting for low-dimensional inputs (then ReLU
splitting, for ReLUs that no input split makes stable), ReLU splitting otherwise,
restarted from refined intermediate bounds on deep networks.  Every region the
search drops is ruled out by a rigorous bound (``verifier.bounds``) or a leaf's
rigorously recomputed LP certificate (``leaves``); solvers only propose.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from verifier.bab.input_split import input_rule
from verifier.bab.options import BabOptions
from verifier.bab.refine import refined_root
from verifier.bab.relu_split import solve_relu
from verifier.bab.search import BabStats, ValidateFn, search
from verifier.bab.subproblems import SubproblemBatch
from verifier.bounds import AlphaOptions, BoundResult
from verifier.certificate.record import CaseRecorder
from verifier.deadline import Deadline
from verifier.network import Network
from verifier.objective import CaseObjective
from verifier.result import Counterexample, Status

Tensor = torch.Tensor


def choose_branching(net: Network, opts: BabOptions) -> str:
    """``input`` for low-dimensional inputs, else ``relu`` (unless the options say)."""
    if opts.branching != "auto":
        return opts.branching
    return "input" if net.n_inputs <= opts.input.max_dim else "relu"


def solve_case(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
    recorder: CaseRecorder | None = None,
) -> tuple[Status, Counterexample | None]:
    """Decide one case, starting from the bound its incomplete stages reached; ``recorder`` (optional)
    records the proof tree (input splitting only: the other searches leave the case uncertified)."""
    root_batch = SubproblemBatch(
        lower=obj.lower.unsqueeze(0), upper=obj.upper.unsqueeze(0), splits=None, bound=root.lower,
        depth=torch.zeros(1, dtype=torch.int32, device=obj.lower.device), intermediate=root.intermediate,
        ident=None if recorder is None else recorder.root_ident().to(obj.lower.device),
    )
    unstable = int(root.intermediate.unstable_count(1)[0]) if root.intermediate is not None else None
    stats.extra["root_unstable"] = unstable if unstable is not None else -1
    if choose_branching(net, opts) == "input":
        # a portfolio: input splitting first, then ReLU splitting (some low-dimensional instances have
        # ReLUs that no input split makes stable)
        input_deadline = deadline.share(opts.input.share if opts.branching == "auto" else 1.0)
        # on small boxes the rows seldom cross: the combinations other than the midpoints proved nothing
        # more on ACAS Xu but took about half of the bounding time (benchmarks/results/README.md)
        keep = torch.ones_like(obj.strict) if opts.input.all_combinations else obj.midpoint_rows()
        obj_in = obj.select_rows(keep)
        root_in = replace(root_batch, bound=root_batch.bound[:, keep])
        mark = None if recorder is None else recorder.mark()
        rule = input_rule(net, obj_in, validate_fn, opts, alpha_opts, input_deadline, recorder)
        status, cex = search(net, obj_in, root_in, rule, validate_fn, opts, input_deadline, gen, stats)
        if status not in (Status.TIMEOUT, Status.UNKNOWN) or deadline.expired():
            return status, cex
        stats.extra["bab_switched_to_relu"] = 1
        if recorder is not None:
            recorder.discard(mark)
        return solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats, recorder)
    return _relu_portfolio(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats, recorder)


def _relu_portfolio(
    net: Network, obj: CaseObjective, root: BoundResult, validate_fn: ValidateFn, opts: BabOptions,
    alpha_opts: AlphaOptions, deadline: Deadline, gen: torch.Generator, stats: BabStats,
    recorder: CaseRecorder | None,
) -> tuple[Status, Counterexample | None]:
    """ReLU splitting; on networks of several ReLU layers it starts again from a refined root once it
    has used its first share."""
    widest = max((net.nodes[r].size for r in net.relu_indices), default=0)
    if (opts.refine.share > 0 and len(net.relu_indices) >= 2 and widest <= opts.refine.max_width
            and root.intermediate is not None):
        status, cex = solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline.share(opts.refine.after),
                                 gen, stats, recorder)
        if status not in (Status.TIMEOUT, Status.UNKNOWN) or deadline.expired():
            return status, cex
        root = refined_root(net, obj, root, opts, alpha_opts, deadline.share(opts.refine.share), gen, stats,
                            recorder)
        if bool(obj.ruled_out(root.lower).all()):
            return Status.UNSAT, None
    return solve_relu(net, obj, root, validate_fn, opts, alpha_opts, deadline, gen, stats, recorder)
