"""``verify-bench``: run benchmark campaigns, score them, plot them, measure start-up.

    verify-bench run INSTANCES... [-o results.csv] [--mode fork|spawn] [--workers N] ...
    verify-bench summary RESULTS.csv [--truth ground_truth.csv] [--compare OTHER.csv ...]
    verify-bench plot A.csv [B.csv ...] -o cactus.png
    verify-bench startup [--repeat N]

``verify-bench INSTANCES...`` (no subcommand) means ``run``.  Exit codes: 0 done,
1 a wrong answer was found, 2 bad usage, 3 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import child
from benchmarks.instances import InstanceError, default_cache_dir, load_instances
from benchmarks.progress import Progress
from benchmarks.supervise import Limits

EXIT_WRONG = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERRUPTED = 130

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "summary", "plot", "startup")
BEST_LABEL = "best known"  # the ground truth's best_time_raw column: the fastest tool per instance


class UsageError(Exception):
    """A bad combination of options or an unreadable input: reported in one line."""


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run instances into a results CSV (resumes where it stopped)")
    p.add_argument("instances", nargs="+", type=Path,
                   help="instances CSV(s), benchmark set folder(s), or a folder of sets")
    p.add_argument("-o", "--out", type=Path, default=Path("results.csv"), help="results CSV (appended)")
    p.add_argument("--mode", choices=child.MODES, default="fork",
                   help="fork: children of a pre-imported parent (fast start); spawn: fresh `verify` processes")
    p.add_argument("--workers", type=_positive(int), default=1, help="instances run at once (default 1)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="threads per instance (default: CPU cores // workers)")
    p.add_argument("--timeout-cap", type=_positive(float), default=None, help="cap every instance's timeout")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds past the timeout before the process group is killed (default 5)")
    p.add_argument("--limit", type=_positive(int), default=None, help="only the first N instances")
    p.add_argument("--benchmark", default=None, help="benchmark name to record (default: from the folder)")
    p.add_argument("--truth", default=None,
                   help="ground-truth CSV for the live 'wrong' tally (default: a ground_truth.csv found "
                        "beside or above the instances; 'none' to disable)")
    p.add_argument("--verify-args", default="", help="extra arguments for `verify`, e.g. '--engine milp'")
    p.add_argument("--command", default=None,
                   help="run another tool instead: a command line with {onnx} {vnnlib} {timeout} "
                        "{results} {category} fields; the verdict is read from {results} if used, else stdout")
    p.add_argument("--category", default="", help="{category} for --command (default: benchmark name)")
    p.add_argument("--no-cex-check", action="store_true",
                   help="do not replay sat counterexamples through onnxruntime (cex_check column)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where .gz files are unpacked")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="per-instance stdout/stderr (default: OUT's name + '.logs' beside it)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on the Ray cluster at ADDRESS (host:port, 'auto', or 'local')")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="score a results CSV against ground truth and other tools")
    p.add_argument("results", type=Path)
    p.add_argument("--truth", type=Path, default=None, help="ground-truth CSV")
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="other tools' results CSVs")
    p.add_argument("--best", action="store_true",
                   help=f"also score the ground truth's best time per instance as a tool ({BEST_LABEL!r})")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="seconds an answer may exceed its time limit and still count (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="cactus plot of one or more results CSVs")
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, default=Path("cactus.png"))
    p.add_argument("--truth", type=Path, default=None, help="drop answers the ground truth refutes")
    p.add_argument("--label", action="append", default=None, help="legend label per CSV, in order")
    p.add_argument("--best", action="store_true",
                   help="also plot the ground truth's best time per instance of the first CSV (needs --truth)")
    p.add_argument("--title", default="")


def _add_startup(sub) -> None:
    p = sub.add_parser("startup", help="time from process start to first output line, fork vs spawn")
    p.add_argument("--onnx", type=Path, default=REPO / "models" / "test_nano.onnx")
    p.add_argument("--vnnlib", type=Path, default=REPO / "models" / "test_nano.vnnlib")
    p.add_argument("--repeat", type=_positive(int), default=5)
    p.add_argument("--modes", nargs="+", choices=child.MODES, default=["spawn", "fork"])
    p.add_argument("--threads", type=_positive(int), default=1)
    p.add_argument("-o", "--out", type=Path, default=None, help="also write the measurements as CSV")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verify-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="subcommand", required=True)
    for add in (_add_run, _add_summary, _add_plot, _add_startup):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``verify-bench``; returns the exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] not in COMMANDS and not args_in[0].startswith("-"):
        args_in.insert(0, "run")
    args = build_parser().parse_args(args_in)
    handler = {"run": cmd_run, "summary": cmd_summary, "plot": cmd_plot, "startup": cmd_startup}[args.subcommand]
    try:
        return handler(args)
    except (UsageError, InstanceError, ValueError, OSError) as exc:
        print(f"verify-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("verify-bench: interrupted; run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_run(args: argparse.Namespace) -> int:
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.workers)
    # before numpy/torch load here: forked children inherit thread pools sized by these
    os.environ.update(child.thread_env(threads, {}))
    from benchmarks.campaign import CampaignOptions, run_campaign
    from benchmarks.supervise import supervise
    from benchmarks.truth import find_truth, read_truth

    instances = load_instances(args.instances, args.benchmark)
    if args.limit is not None:
        instances = instances[: args.limit]
    if not instances:
        raise UsageError("no instances to run")
    truth_path = None if args.truth == "none" else Path(args.truth) if args.truth else find_truth(args.instances)
    truth = read_truth(truth_path) if truth_path else None
    out: Path = args.out
    opts = CampaignOptions(
        mode="spawn" if args.ray else args.mode,  # Ray workers always spawn the CLI
        threads=threads,
        timeout_cap=args.timeout_cap,
        verify_args=_with_workers(tuple(shlex.split(args.verify_args)), threads),
        command=args.command,
        category=args.category,
        cache_dir=args.cache_dir or default_cache_dir(),
        log_dir=args.log_dir or out.with_name(out.name + ".logs"),
        stats=not args.ray,  # the CLI's --json file would be written on the worker's disk
        check_cex=not args.no_cex_check,
    )
    limits = Limits(grace=args.grace)
    trust = args.command is None
    note = _note(args, threads, truth_path)
    shown: list[Progress] = []  # the display, once run_campaign has made it (redrawn every second)
    if args.ray:
        from benchmarks import ray_backend

        ray_backend.connect(args.ray)
        execute = ray_backend.ray_executor(limits, threads, trust)
    else:
        if args.mode == "fork" and args.command is None:
            note += f", pre-import {_preimport():.2f}s"
        execute = lambda tasks: supervise(  # noqa: E731
            tasks, args.mode, args.workers, limits, tick=lambda: shown and shown[0].draw(), trust_exit_code=trust
        )

    def progress(n: int) -> Progress:
        shown.append(Progress(n, quiet=args.quiet))
        if not args.quiet:
            print(f"verify-bench: {n} to run, {len(instances) - n} already in {out} ({note})", file=sys.stderr)
        return shown[0]

    report = run_campaign(instances, out, opts, execute, progress, truth)
    for line in report.wrong:
        print(f"verify-bench: WRONG ANSWER: {line}", file=sys.stderr)
    return EXIT_WRONG if report.wrong else 0


def _with_workers(verify_args: tuple[str, ...], threads: int) -> tuple[str, ...]:
    """The CLI's arguments with ``--workers`` set to the instance's share of the cores (its branch and
    bound would otherwise use them all while other instances run), unless they set it."""
    if any(a == "--workers" or a.startswith("--workers=") for a in verify_args):
        return verify_args
    return ("--workers", str(threads), *verify_args)


def _preimport() -> float:
    try:
        return child.preimport()
    except ImportError as exc:
        raise UsageError(f"--mode fork needs the verifier importable here ({exc}); try --mode spawn") from None


def _note(args: argparse.Namespace, threads: int, truth: Path | None) -> str:
    where = f"ray {args.ray}" if args.ray else f"{args.workers} worker(s)"
    what = "command (spawned)" if args.command else "verify (spawned)" if args.ray else f"verify ({args.mode})"
    return f"{what}, {where}, {threads} thread(s) each, truth: {truth or 'none'}"


def cmd_summary(args: argparse.Namespace) -> int:
    from benchmarks import summary as sm
    from benchmarks.truth import best_known_rows, read_truth

    paths = [args.results, *args.compare]
    labels = sm.unique_labels(paths)
    tools = [sm.load_tool(p, label) for p, label in zip(paths, labels)]
    if not tools[0].rows:
        raise UsageError(f"{args.results} has no results")
    if args.best:
        if not args.truth:
            raise UsageError("--best needs --truth")
        tools.append(sm.tool_from_rows(BEST_LABEL, best_known_rows(args.truth)))
    truth = read_truth(args.truth) if args.truth else None
    result = sm.summarize(tools, truth, sm.truth_limits(args.truth), args.tolerance)
    findings = sm.format_findings(result)
    if findings:
        print(findings)
        print()
    known = f"{result.truth_known} of {len(tools[0].rows)} with known answers" if truth else "no ground truth"
    print(f"instances of {args.results} ({known}); time limits as recorded there")
    print(sm.format_table(result.metrics))
    sources = {label: str(p) for label, p in zip(labels, paths)} | {"truth": str(args.truth or "")}
    if args.json:
        sm.write_json(result, args.json, sources)
    if args.csv:
        sm.write_csv(result, args.csv)
    primary_wrong = [f for f in result.findings if f.kind == "wrong" and f.tool == labels[0]]
    return EXIT_WRONG if primary_wrong else 0


def cmd_plot(args: argparse.Namespace) -> int:
    from benchmarks import plot
    from benchmarks.results import read_results
    from benchmarks.summary import unique_labels
    from benchmarks.truth import best_known_rows, match_key, read_truth

    labels = args.label or unique_labels(args.results)
    if len(labels) != len(args.results):
        raise UsageError(f"{len(labels)} --label for {len(args.results)} results files")
    truth = read_truth(args.truth) if args.truth else None
    rows = {label: read_results(p) for label, p in zip(labels, args.results)}
    if args.best:
        if not args.truth:
            raise UsageError("--best needs --truth")
        ours = {match_key(*r.key): r for r in rows[labels[0]]}
        best = [r for r in best_known_rows(args.truth) if match_key(*r.key) in ours]
        rows[BEST_LABEL] = [replace(r, timeout=ours[match_key(*r.key)].timeout or r.timeout) for r in best]
    series = {label: plot.solved_times(r, truth) for label, r in rows.items()}
    total = max(len(r) for r in rows.values())
    limit = max((r.timeout for rs in rows.values() for r in rs), default=0.0) or None
    try:
        out = plot.cactus(series, args.out, args.title, total, limit)
    except plot.PlotError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def cmd_startup(args: argparse.Namespace) -> int:
    from benchmarks import startup

    for path in (args.onnx, args.vnnlib):
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
    figures = [startup.measure(m, args.onnx, args.vnnlib, args.repeat, threads=args.threads) for m in args.modes]
    print(startup.format_figures(figures))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("mode,repeat,first_output,run_time,result,parent_setup\n")
            for f in figures:
                for i, (a, b, r) in enumerate(zip(f.first_output, f.run_time, f.results)):
                    fh.write(f"{f.mode},{i},{a:.4f},{b:.4f},{r},{f.setup:.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
