"""A campaign: run a list of instances into a results CSV that is resumed where it stopped.

Instances already in the CSV are skipped; every finished one is appended and
flushed at once, with its stdout (verdict and counterexample) and stderr kept
in a log folder.  Where the children run (local pool or Ray) is a parameter.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks import child
from benchmarks.cexcheck import check_counterexample
from benchmarks.instances import Instance, InstanceError, materialize
from benchmarks.progress import Progress
from benchmarks.results import ResultRow, ResultsWriter, read_results
from benchmarks.supervise import Outcome, Task
from benchmarks.truth import Truth, base_name, contradicts

Executor = Callable[[Iterable[Task]], Iterator[tuple[Task, Outcome]]]


@dataclass(frozen=True)
class CampaignOptions:
    """How each instance is launched (the executor decides where)."""

    mode: str = "fork"  # fork | spawn for the verify CLI; a command template is always spawned
    threads: int = 1
    timeout_cap: float | None = None
    verify_args: tuple[str, ...] = ()
    command: str | None = None  # a foreign tool's command line with {onnx} {vnnlib} ... fields
    category: str = ""  # {category} for command templates; default: the benchmark name
    cache_dir: Path = Path(".cache")
    log_dir: Path | None = None
    stats: bool = True  # ask the CLI for its statistics (``--json`` into the log folder)
    check_cex: bool = True  # replay every sat answer's counterexample through onnxruntime


@dataclass(frozen=True)
class Job:
    """An instance ready to run (files unpacked); the ``tag`` of its supervise ``Task``."""

    index: int
    instance: Instance
    prepare_time: float
    stem: str
    onnx_file: Path | None = None  # unpacked
    vnnlib_file: Path | None = None


@dataclass
class CampaignReport:
    """What a campaign did."""

    total: int = 0
    skipped: int = 0
    ran: int = 0
    wrong: list[str] = field(default_factory=list)


def log_stem(index: int, inst: Instance) -> str:
    """A file-name-safe, unique stem for an instance's log files."""
    raw = f"{index:04d}_{inst.benchmark}_{base_name(inst.onnx)}_{base_name(inst.vnnlib)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:180]


def display_name(inst: Instance) -> str:
    return f"{inst.benchmark} {base_name(inst.onnx)} {base_name(inst.vnnlib)}"


def effective_timeout(inst: Instance, cap: float | None) -> float:
    return inst.timeout if cap is None else min(inst.timeout, cap)


def make_task(job: Job, opts: CampaignOptions, onnx: Path, vnnlib: Path) -> Task:
    """The supervise task for one prepared instance."""
    timeout = effective_timeout(job.instance, opts.timeout_cap)
    logs = opts.log_dir
    stderr = logs / f"{job.stem}.err" if logs else None
    if opts.command is None:
        extra = opts.verify_args
        if logs and opts.stats:
            (logs / f"{job.stem}.json").unlink(missing_ok=True)  # never read a stale one
            extra = (*extra, "--json", str(logs / f"{job.stem}.json"))
        args = child.verify_args(onnx, vnnlib, timeout, extra)
        return Task(job, child.Launch(args, opts.threads, stderr, inputs=_inputs(onnx, vnnlib, opts)), timeout)
    results = (logs or opts.cache_dir) / f"{job.stem}.result"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    fields = {
        "onnx": str(onnx),
        "vnnlib": str(vnnlib),
        "timeout": f"{timeout:g}",
        "results": str(results),
        "category": opts.category or job.instance.benchmark,
    }
    command = child.command_from_template(opts.command, fields)
    results_path = results if "{results}" in opts.command else None
    launch = child.Launch((), opts.threads, stderr, command, results_path, _inputs(onnx, vnnlib, opts))
    return Task(job, launch, timeout)


def _inputs(onnx: Path, vnnlib: Path, opts: CampaignOptions) -> tuple[str, ...]:
    """The files a run reads: model, spec, and any file named in the extra CLI arguments (a config)."""
    extra = [a for a in opts.verify_args if not a.startswith("-") and Path(a).is_file()]
    return (str(onnx), str(vnnlib), *extra)


def run_campaign(
    instances: list[Instance],
    out_csv: Path,
    opts: CampaignOptions,
    execute: Executor,
    progress: Callable[[int], Progress] | None = None,
    truth: Truth | None = None,
) -> CampaignReport:
    """Run every instance not yet in ``out_csv`` through ``execute``, appending rows as they finish.

    ``progress`` makes the display for the number of instances left to run.
    """
    done = {r.key for r in read_results(out_csv)} if Path(out_csv).is_file() else set()
    todo = []
    for i, inst in enumerate(instances):
        if inst.key not in done:
            done.add(inst.key)  # a row listed twice runs once
            todo.append((i, inst))
    report = CampaignReport(total=len(instances), skipped=len(instances) - len(todo))
    shown = (progress or (lambda n: Progress(n, quiet=True)))(len(todo))
    if opts.log_dir:
        opts.log_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    with ResultsWriter(out_csv) as writer:

        def record(job: Job, row: ResultRow, seconds: float) -> None:
            writer.write(row)
            known = truth.get(*row.key) if truth else None
            wrong = contradicts(row.result, known) or row.cex_check.startswith("bad")
            if wrong:
                why = row.cex_check if row.cex_check.startswith("bad") else f"ground truth {known}"
                report.wrong.append(f"{display_name(job.instance)}: answered {row.result}, {why}")
            report.ran += 1
            note = row.message if row.result == "error" else row.cex_check if wrong else ""
            shown.add(display_name(job.instance), row.result, seconds, wrong, note)

        def tasks() -> Iterator[Task]:
            for index, inst in todo:
                stem = log_stem(index, inst)
                try:
                    onnx, t1 = materialize(inst.onnx_path, opts.cache_dir)
                    vnnlib, t2 = materialize(inst.vnnlib_path, opts.cache_dir)
                except InstanceError as exc:
                    job = Job(index, inst, 0.0, stem)
                    record(job, _error_row(inst, opts, str(exc), host), 0.0)
                    continue
                yield make_task(Job(index, inst, t1 + t2, stem, onnx, vnnlib), opts, onnx, vnnlib)

        try:
            with closing(execute(tasks())) as finished:  # closing it kills what still runs
                for task, outcome in finished:
                    record(task.tag, _finished_row(task, outcome, opts, host), outcome.run_time)
        finally:
            shown.close()
    return report


def _finished_row(task: Task, outcome: Outcome, opts: CampaignOptions, host: str) -> ResultRow:
    """The results row of a finished instance; keeps its output and replays a counterexample."""
    job: Job = task.tag
    if opts.log_dir:
        (opts.log_dir / f"{job.stem}.out").write_text(outcome.stdout)
    stats, note = _cli_stats(opts, job)
    row = replace(_row(job, task, outcome, opts, host), stats=stats)
    row = replace(row, message=row.message or note)
    if row.result == "sat" and opts.check_cex:
        row = replace(row, cex_check=check_counterexample(job.onnx_file, job.vnnlib_file, outcome.answer))
    return row


def _cli_stats(opts: CampaignOptions, job: Job) -> tuple[str, str]:
    """The CLI's statistics (compact JSON) and message from its ``--json`` file, if it wrote one."""
    if not (opts.log_dir and opts.stats and opts.command is None):
        return "", ""
    path = opts.log_dir / f"{job.stem}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "", ""
    stats = record.get("stats") or {}
    text = json.dumps(stats, separators=(",", ":"), sort_keys=True) if isinstance(stats, dict) else ""
    return text, str(record.get("message") or "")


def _row(job: Job, task: Task, out: Outcome, opts: CampaignOptions, host: str) -> ResultRow:
    inst = job.instance
    return ResultRow(
        benchmark=inst.benchmark,
        onnx=inst.onnx,
        vnnlib=inst.vnnlib,
        prepare_time=job.prepare_time,
        result=out.result,
        run_time=out.run_time,
        timeout=task.timeout,
        exit_code=out.exit_code,
        first_output=out.first_output,
        cpu_time=out.cpu_time,
        max_rss_mb=out.max_rss_mb,
        mode="command" if opts.command else opts.mode,
        threads=opts.threads,
        host=out.host or host,
        message=out.message,
    )


def _error_row(inst: Instance, opts: CampaignOptions, message: str, host: str) -> ResultRow:
    return ResultRow(
        inst.benchmark,
        inst.onnx,
        inst.vnnlib,
        0.0,
        "error",
        0.0,
        timeout=effective_timeout(inst, opts.timeout_cap),
        exit_code=-1,
        mode="command" if opts.command else opts.mode,
        threads=opts.threads,
        host=host,
        message=message,
    )
