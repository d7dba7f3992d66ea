"""Two versions of a command on the same instances, alternating, one process at a time.

For before/after comparisons in one session: each instance runs under command A and under command B
back to back (the order flips from one instance to the next, so slow drift of the machine's load does
not favour either), each a fresh process under ``benchmarks.supervise``'s time limit.  The CSV has one
row per instance and command; the summary gives decided, wrong, total and median per command and the
ratios B/A.

    python3 -m benchmarks.paired LIST_CSV FOLDER --a 'CMD' --b 'CMD' -o OUT.csv [--timeout-cap 60]

``LIST_CSV`` names the instances (columns ``onnx``, ``vnnlib``, and optionally ``truth``); their files and
timeouts come from the instances CSV in ``FOLDER``.  Commands are templates with ``{onnx}``, ``{vnnlib}``,
``{timeout}`` (as for ``verify-bench run --command``).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from benchmarks import child
from benchmarks.instances import find_instance_csvs, read_instances
from benchmarks.supervise import Limits, Task, supervise
from benchmarks.truth import contradicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.paired", description=__doc__.splitlines()[0])
    p.add_argument("list", type=Path, help="CSV with onnx, vnnlib (and truth) columns")
    p.add_argument("folder", type=Path, help="benchmark folder holding the instances CSV and files")
    p.add_argument("--a", required=True, help="command template A (the baseline)")
    p.add_argument("--b", required=True, help="command template B")
    p.add_argument("--timeout-cap", type=float, default=60.0)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)

    known = {(i.onnx, i.vnnlib): i for c in find_instance_csvs(args.folder) for i in read_instances(c)}
    with args.list.open(newline="") as fh:
        wanted = [(r["onnx"], r["vnnlib"], r.get("truth", "")) for r in csv.DictReader(fh)]
    missing = [w[:2] for w in wanted if w[:2] not in known]
    if missing:
        print(f"not in {args.folder}'s instances: {missing[:3]}", file=sys.stderr)
        return 2
    tasks = []
    for n, (onnx, vnnlib, truth) in enumerate(wanted):
        inst = known[(onnx, vnnlib)]
        timeout = min(inst.timeout, args.timeout_cap)
        fields = {"onnx": str(_existing(inst.onnx_path)), "vnnlib": str(_existing(inst.vnnlib_path)),
                  "timeout": f"{timeout:g}"}
        order = ("a", "b") if n % 2 == 0 else ("b", "a")
        for side in order:
            command = child.command_from_template(getattr(args, side), fields)
            launch = child.Launch(argv=(), threads=1, stderr_path=None, command=command)
            tasks.append(Task(tag=(onnx, vnnlib, truth, side), launch=launch, timeout=timeout))
    rows = []
    for task, out in supervise(tasks, "spawn", workers=1, limits=Limits(grace=args.grace), trust_exit_code=False):
        onnx, vnnlib, truth, side = task.tag
        rows.append({"onnx": onnx, "vnnlib": vnnlib, "truth": truth, "command": side,
                     "result": out.result, "run_time": f"{out.run_time:.3f}"})
        print(f"{side} {onnx} {vnnlib} {out.result} {out.run_time:.2f}", file=sys.stderr, flush=True)
    with args.out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(summary(rows))
    return 0


def _existing(path: Path) -> Path:
    """``path``, or its gzipped twin where only that exists (instance lists name the unpacked files)."""
    packed = path.with_name(path.name + ".gz")
    return packed if not path.exists() and packed.exists() else path


def summary(rows: list[dict]) -> str:
    """Decided, wrong, total and median seconds per command, and B's figures over A's."""
    lines, figures = [], {}
    for side in ("a", "b"):
        mine = [r for r in rows if r["command"] == side]
        times = [float(r["run_time"]) for r in mine]
        decided = sum(r["result"] in ("sat", "unsat") for r in mine)
        wrong = sum(contradicts(r["result"], r["truth"] or None) for r in mine)
        figures[side] = (sum(times), statistics.median(times))
        lines.append(f"{side}: {len(mine)} runs, {decided} decided, {wrong} wrong, "
                     f"total {figures[side][0]:.1f} s, median {figures[side][1]:.2f} s")
    (ta, ma), (tb, mb) = figures["a"], figures["b"]
    lines.append(f"b/a: total {tb / ta:.3f}, median {mb / ma:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
