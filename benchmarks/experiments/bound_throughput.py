"""Throughput of the bounding engine: alpha-CROWN on batches of ACAS Xu sub-boxes, CROWN
on mnist 256x6 and on an oval21 conv net.

Usage: ``python -m benchmarks.experiments.bound_throughput [--csv out.csv] [--threads 1] [--repeats 3]``.
The ACAS Xu model ships in ``models/acasxu``; mnistfc and oval21 come from the VNN-COMP
2021 folder (``VERIFIER_BENCHMARKS``) and are skipped when it is absent.  Times are the
median of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.paths import REPO, benchmarks_root
from verifier.bounds import AlphaOptions, Domains, alpha_crown, crown
from verifier.objective import case_objective
from verifier.onnx_import import load_onnx
from vnnlib.reader import read_spec


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    name: str
    batch: int
    ms_per_call: float
    domains_per_s: float
    mean_lower: float
    note: str


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def grid_boxes(lower: torch.Tensor, upper: torch.Tensor, per_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The box split into ``per_axis`` equal parts along every axis: ``(per_axis ** n, n)``."""
    n = lower.shape[0]
    steps = torch.arange(per_axis + 1, dtype=lower.dtype) / per_axis
    cuts = lower[:, None] + steps[None] * (upper - lower)[:, None]  # (n, per_axis + 1)
    idx = torch.cartesian_prod(*[torch.arange(per_axis)] * n).reshape(-1, n)  # (K, n)
    axes = torch.arange(n)
    return cuts[axes, idx], cuts[axes, idx + 1]


def acas_rows(repeats: int, options: AlphaOptions) -> list[Row]:
    net = load_onnx(REPO / "models/acasxu/ACASXU_run2a_1_1_batch_2000.onnx")
    case = read_spec(REPO / "models/acasxu/prop_1.vnnlib").cases[0]
    obj = case_objective(case, net.dtype)
    lo, hi = grid_boxes(obj.lower, obj.upper, 4)  # 1024 sub-boxes
    rows = []
    for batch in (1, 64, 1024):
        dom = Domains(lo[:batch].contiguous(), hi[:batch].contiguous())
        C, d = obj.C[None], obj.d[None]
        res = alpha_crown(net, dom, C, d, options)
        t = timed(lambda dom=dom, C=C, d=d: alpha_crown(net, dom, C, d, options), repeats)
        rows.append(Row("alpha-CROWN acasxu 1_1 prop_1", batch, 1e3 * t, batch / t, float(res.lower.mean()),
                        f"{options.iterations} it, intermediate {'on' if options.optimize_intermediate else 'off'}"))
    return rows


def crown_row(name: str, onnx: Path, vnnlib: Path, repeats: int) -> Row:
    net = load_onnx(onnx)
    case = read_spec(vnnlib, net.n_inputs, net.n_outputs).cases[0]
    obj = case_objective(case, net.dtype)
    dom = Domains(obj.lower[None], obj.upper[None])
    C, d = obj.C[None], obj.d[None]
    res = crown(net, dom, C, d)
    t = timed(lambda: crown(net, dom, C, d), repeats)
    relus = sum(net.nodes[r].size for r in net.relu_indices)
    return Row(name, 1, 1e3 * t, 1 / t, float(res.lower.mean()), f"{relus} relus, {C.shape[1]} rows")


def first_instance(folder: Path, csv_name: str) -> tuple[Path, Path]:
    with open(folder / csv_name) as f:
        onnx, vnnlib, _ = next(csv.reader(f))
    return folder / onnx.strip(), folder / vnnlib.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20, help="alpha-CROWN iterations")
    parser.add_argument("--fixed-intermediate", action="store_true",
                        help="alpha-CROWN optimizes the final slopes only (branch-and-bound mode)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = AlphaOptions(iterations=args.iterations, early_stop=False,
                           optimize_intermediate=not args.fixed_intermediate)
    rows = acas_rows(args.repeats, options)
    mnist = benchmarks_root() / "mnistfc"
    if (mnist / "mnist-net_256x6.onnx").is_file():
        rows.append(crown_row("CROWN mnist 256x6 prop_0_0.03", mnist / "mnist-net_256x6.onnx",
                              mnist / "prop_0_0.03.vnnlib", args.repeats))
    oval = benchmarks_root() / "oval21"
    if (oval / "oval21_instances.csv").is_file():
        onnx, vnnlib = first_instance(oval, "oval21_instances.csv")
        rows.append(crown_row(f"CROWN oval21 {onnx.stem}", onnx, vnnlib, args.repeats))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    print(f"{'benchmark':<34} {'batch':>6} {'ms/call':>10} {'domains/s':>10} {'mean lower':>11}  note")
    for r in rows:
        print(f"{r.name:<34} {r.batch:>6} {r.ms_per_call:>10.1f} {r.domains_per_s:>10.1f} "
              f"{r.mean_lower:>11.4f}  {r.note}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "batch", "ms_per_call", "domains_per_s", "mean_lower", "note"])
            for r in rows:
                w.writerow([r.name, r.batch, f"{r.ms_per_call:.3f}", f"{r.domains_per_s:.3f}", f"{r.mean_lower:.6f}",
                            r.note])
    return 0


if __name__ == "__main__":
    sys.exit(main())
