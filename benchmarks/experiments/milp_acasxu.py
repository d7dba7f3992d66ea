"""ACAS Xu properties with the MILP engine alone: a per-instance table and a summary.

    python -m benchmarks.experiments.milp_acasxu [--props 1,2,3,4] [--cap 120] [--limit N] [--jobs J]
                                                 [--nets 1_1,1_9] [--engine milp|smt] [--csv FILE] [--folder DIR]

Instances come from ``acasxu/acasxu_instances.csv`` under the VNN-COMP 2021 folder
($VERIFIER_BENCHMARKS, else ../shared/benchmarks/vnncomp2021); each runs in a worker
process with the csv timeout capped at ``--cap`` seconds.  A ``sat`` counts only after
its counterexample replays through onnxruntime (else it is reported ``unknown``).  The
summary compares with ``ground_truth.csv``: decided, wrong (a contradiction: the top
priority bug), and the median time of the decided instances.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.paths import REPO, benchmarks_root


@dataclass(frozen=True)
class Row:
    """One instance's outcome."""

    onnx: str
    vnnlib: str
    result: str
    seconds: float
    truth: str
    binaries: int
    problems: int
    note: str = ""


def instances(folder: Path, props: set[str], nets: set[str] | None) -> list[tuple[str, str, float]]:
    """``(onnx, vnnlib, timeout)`` rows of the acasxu instance list, filtered."""
    rows = []
    with open(folder / "acasxu" / "acasxu_instances.csv") as f:
        for onnx, vnnlib, timeout in csv.reader(f):
            prop = Path(vnnlib).stem.split("_")[-1]
            net = "_".join(Path(onnx).stem.split("_")[2:4])
            if prop in props and (nets is None or net in nets):
                rows.append((onnx, vnnlib, float(timeout)))
    return rows


def ground_truth(folder: Path) -> dict[tuple[str, str], str]:
    with open(folder / "ground_truth.csv") as f:
        return {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(f) if r["benchmark"] == "acasxu"}


def run_one(folder: str, onnx: str, vnnlib: str, seconds: float, engine: str, truth: str) -> Row:
    """Load, verify, and replay a sat witness (runs in a worker process)."""
    import torch

    torch.set_num_threads(1)
    from verifier.bab.exact_split import smt_verify
    from verifier.deadline import Deadline
    from verifier.exact.milp import milp_verify
    from verifier.onnx_import import load_onnx
    from verifier.validate import validate_counterexample
    from vnnlib import read_spec

    start = time.monotonic()
    deadline = Deadline.after(seconds)
    model = Path(folder) / "acasxu" / onnx
    net = load_onnx(model)
    spec = read_spec(Path(folder) / "acasxu" / vnnlib)
    out = (milp_verify if engine == "milp" else smt_verify)(net, spec, deadline)
    verdict, note = out.verdict, out.message
    if verdict == "sat" and validate_counterexample(model, spec, out.x) is None:
        verdict, note = "unknown", "witness failed onnxruntime validation"
    return Row(onnx, vnnlib, verdict, round(time.monotonic() - start, 3), truth, out.binaries, out.problems, note)


def read_rows(path: Path) -> list[Row]:
    """Rows of an earlier (possibly interrupted) run; none when the file is missing."""
    if not path.is_file():
        return []
    with open(path) as f:
        return [Row(r["onnx"], r["vnnlib"], r["result"], float(r["seconds"]), r["truth"], int(r["binaries"]),
                    int(r["problems"]), r.get("note", "")) for r in csv.DictReader(f)]


def summarize(rows: list[Row]) -> dict[str, float]:
    decided = [r for r in rows if r.result in ("sat", "unsat")]
    wrong = [r for r in decided if r.truth in ("sat", "unsat") and r.result != r.truth]
    return {
        "instances": len(rows),
        "decided": len(decided),
        "wrong": len(wrong),
        "timeout": sum(r.result == "timeout" for r in rows),
        "median_s_decided": round(statistics.median([r.seconds for r in decided]), 3) if decided else float("nan"),
        "total_s": round(sum(r.seconds for r in rows), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=benchmarks_root())
    p.add_argument("--props", default="1,2,3,4", help="comma-separated property numbers")
    p.add_argument("--nets", default=None, help="comma-separated nets such as 1_1,1_9 (default: all 45)")
    p.add_argument("--cap", type=float, default=120.0, help="cap on the per-instance timeout (s)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N instances")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--engine", choices=("milp", "smt"), default="milp")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "milp_acasxu.csv")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --csv and run the rest")
    args = p.parse_args(argv)
    if not (args.folder / "acasxu" / "acasxu_instances.csv").is_file():
        print(f"error: no acasxu/acasxu_instances.csv under {args.folder}", file=sys.stderr)
        return 2
    nets = None if args.nets is None else set(args.nets.split(","))
    order = args.props.split(",")
    todo = sorted(instances(args.folder, set(order), nets), key=lambda t: order.index(Path(t[1]).stem.split("_")[-1]))
    todo = todo[: args.limit]
    truth = ground_truth(args.folder)
    rows = read_rows(args.csv) if args.resume else []
    done = {(r.onnx, r.vnnlib) for r in rows}
    todo = [t for t in todo if (t[0], t[1]) not in done]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    fields = list(Row.__dataclass_fields__)
    with open(args.csv, "a" if rows else "w", newline="") as f, \
            ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        writer = csv.DictWriter(f, fieldnames=fields)
        if not rows:
            writer.writeheader()
        futures = [pool.submit(run_one, str(args.folder), o, v, min(t, args.cap), args.engine, truth.get((o, v), ""))
                   for o, v, t in todo]
        for fut in futures:
            row = fut.result()
            rows.append(row)
            writer.writerow(asdict(row))
            f.flush()  # an interrupted run keeps what it finished (see --resume)
            flag = "  WRONG" if row.truth in ("sat", "unsat") and row.result in ("sat", "unsat") \
                and row.result != row.truth else ""
            print(f"{row.onnx:36s} {row.vnnlib:14s} {row.result:8s} {row.seconds:8.2f}s "
                  f"truth={row.truth:6s} binaries={row.binaries}{flag}", flush=True)
    summary = summarize(rows)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"table written to {args.csv}")
    return 1 if summary["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
