"""Where the MILP engine pays off: unstable ReLUs after alpha-CROWN against MILP and branch-and-bound time.

    python -m benchmarks.experiments.engine_threshold --milp benchmarks/results/milp_acasxu_full.csv \
        --bab benchmarks/results/acasxu_full_spawn.csv [--csv OUT] [--benchmark acasxu]

For every instance of the MILP table (``benchmarks.experiments.milp_acasxu``) it runs the
incomplete stages of the default pipeline (IBP, CROWN, alpha-CROWN) and counts
the ReLUs left unstable at the root, the number ``--engine auto`` compares with
``bab.milp_max_unstable``; then it joins the MILP engine's time and the
branch-and-bound run's time (a ``verify-bench`` table) and prints, per bucket of
unstable counts, how often and how fast each engine decided.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from benchmarks.paths import benchmarks_root

BUCKETS = (-2, -1, 0, 20, 40, 60, 80, 100, 120, 150, 200, 400)


def root_unstable(model: Path, spec: Path) -> int:
    """ReLUs unstable after the incomplete stages on the first undecided case (-1: all proven by them)."""
    import torch

    torch.set_num_threads(1)
    from verifier.api import load_problem
    from verifier.config import Config
    from verifier.deadline import Deadline
    from verifier.incomplete import incomplete_stages
    from verifier.objective import case_objective, with_row_combinations

    config = Config()
    problem = load_problem(model, spec, config)
    for case in problem.spec.cases:
        obj = with_row_combinations(case_objective(case, problem.net.dtype), config.row_combinations)
        proven, root = incomplete_stages(problem.net, obj, config, Deadline.after(60.0), {})
        if not proven:
            return int(root.intermediate.unstable_count(1)[0])
    return -1


def _seconds(rows: list[dict], key: str) -> str:
    times = [float(r[key]) for r in rows if r is not None]
    return f"{statistics.median(times):7.2f}" if times else "      -"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=benchmarks_root())
    p.add_argument("--benchmark", default="acasxu")
    p.add_argument("--milp", type=Path, required=True, help="table of benchmarks.experiments.milp_acasxu")
    p.add_argument("--bab", type=Path, required=True, help="verify-bench table of a branch-and-bound run")
    p.add_argument("--csv", type=Path, default=None, help="write the joined per-instance table here")
    args = p.parse_args(argv)
    with open(args.milp) as f:
        milp = list(csv.DictReader(f))
    with open(args.bab) as f:
        bab = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(f)}
    joined = []
    for r in milp:
        b = bab.get((r["onnx"], r["vnnlib"]))
        folder = args.folder / args.benchmark
        n = root_unstable(folder / r["onnx"], folder / r["vnnlib"])
        joined.append({"onnx": r["onnx"], "vnnlib": r["vnnlib"], "unstable_alpha": n,
                       "milp_binaries": r["binaries"], "milp_result": r["result"], "milp_s": r["seconds"],
                       "bab_result": b["result"] if b else "", "bab_s": b["run_time"] if b else ""})
        print(",".join(str(v) for v in joined[-1].values()), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(joined[0]))
            w.writeheader()
            w.writerows(joined)
    print("\n unstable (alpha) | instances | milp decided, median s | bab decided, median s")
    for lo, hi in zip(BUCKETS, BUCKETS[1:]):
        rows = [j for j in joined if lo < j["unstable_alpha"] <= hi]
        if not rows:
            continue
        m = [j for j in rows if j["milp_result"] in ("sat", "unsat")]
        b = [j for j in rows if j["bab_result"] in ("sat", "unsat")]
        label = "proven by alpha" if hi == -1 else f"({lo:3d}, {hi:3d}]"
        print(f"{label:>15s} | {len(rows):3d} | {len(m):3d} {_seconds(m, 'milp_s')} | "
              f"{len(b):3d} {_seconds(b, 'bab_s')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
