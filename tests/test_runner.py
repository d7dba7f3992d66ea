"""verify-bench: runs the real CLI on the test set, resumes, kills hung process groups, scores, plots."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cexcheck import check_counterexample
from benchmarks.child import Launch
from benchmarks.instances import InstanceError, benchmark_name, load_instances, materialize
from benchmarks.progress import Progress
from benchmarks.results import ResultRow, ResultsWriter, normalize_verdict, read_results
from benchmarks.summary import format_findings, load_tool, summarize
from benchmarks.supervise import Limits, Task, classify, supervise
from benchmarks.truth import read_truth

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def bench_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``verify-bench`` in a fresh process (fork mode must not fork this test process)."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.runner", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- end to end on the VNN-COMP 2021 test set --------------------------------------------------


def test_test_set_runs_resumes_scores_and_plots(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    first = bench_cli("run", str(bench / "test"), "-o", str(out), "--limit", "2", "--timeout-cap", "5")
    assert first.returncode == 0, first.stderr
    assert [r["onnx"] for r in rows_of(out)] == ["test_nano.onnx", "test_tiny.onnx"]
    done_before = rows_of(out)

    second = bench_cli("run", str(bench / "test"), "-o", str(out), "--timeout-cap", "5")
    assert second.returncode == 0, second.stderr
    assert "3 to run, 2 already in" in second.stderr
    rows = rows_of(out)
    assert rows[:2] == done_before  # what was done is not run again
    assert [(r["onnx"], r["vnnlib"]) for r in rows] == [
        ("test_nano.onnx", "test_nano.vnnlib"), ("test_tiny.onnx", "test_tiny.vnnlib"),
        ("test_small.onnx", "test_small.vnnlib"), ("test_sat.onnx", "test_prop.vnnlib"),
        ("test_unsat.onnx", "test_prop.vnnlib"),
    ]
    by_onnx = {r["onnx"]: r for r in rows}
    assert by_onnx["test_sat.onnx"]["result"] == "sat"
    assert all(r["result"] in ("unsat", "unknown", "timeout") for o, r in by_onnx.items() if o != "test_sat.onnx")
    for r in rows:
        assert r["benchmark"] == "test" and r["mode"] == "fork" and r["exit_code"] == "0"
        assert 0 < float(r["first_output"]) <= float(r["run_time"]) < 5 + 5
    assert [r["cex_check"] for r in rows] == ["", "", "", "ok", ""]  # replayed through onnxruntime
    sat_log = out.with_name("results.csv.logs") / "0003_test_test_sat.onnx_test_prop.vnnlib.out"
    sat_text = sat_log.read_text()
    assert sat_text.startswith("sat\n((X_0 ")
    assert check_counterexample(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", sat_text) == "ok"
    # the same input on the net that is safe everywhere, or moved out of the box, is rejected
    assert check_counterexample(MODELS / "test_unsat.onnx", MODELS / "test_prop.vnnlib", sat_text) == (
        "bad: onnxruntime outputs on X are not in an unsafe region")
    outside = re.sub(r"\(X_0 [^)]+\)", "(X_0 5.0)", sat_text)
    assert check_counterexample(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", outside) == (
        "bad: X lies outside every input box of the spec")
    assert check_counterexample(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", "sat\n") == (
        "bad: no X_i values after sat")

    summary_json = tmp_path / "summary.json"
    summary = bench_cli("summary", str(out), "--truth", str(bench / "ground_truth.csv"),
                        "--json", str(summary_json))
    assert summary.returncode == 0, summary.stdout + summary.stderr
    assert "WRONG" not in summary.stdout
    (metrics,) = json.loads(summary_json.read_text())["metrics"]
    decided = sum(r["result"] in ("sat", "unsat") for r in rows)
    assert metrics["total"] == 5 and metrics["wrong"] == 0 and metrics["sat"] == 1
    assert metrics["decided"] == decided and metrics["score"] == 10 * decided
    assert metrics["unsolved"] == 5 - decided

    png = tmp_path / "cactus.png"
    plot = bench_cli("plot", str(out), "-o", str(png), "--truth", str(bench / "ground_truth.csv"), "--best")
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_counterexample_check_follows_vnncomp_rule(tmp_path: Path) -> None:
    """The written values lie in the box; the model runs on their float32 casts (float32(0.1) is above
    0.1, so a cast check would reject the box's own upper bound); a float32 value above the bound is out."""
    from tests.onnx_builders import mlp, save

    model = save(mlp([1, 1]), tmp_path / "m.onnx")
    spec = tmp_path / "s.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.05))\n"
                    "(assert (<= X_0 0.1))\n(assert (<= Y_0 1000.0))\n")
    assert float(np.float32(0.1)) > 0.1
    answer = "sat\n((X_0 {})\n (Y_0 0.0))\n"
    assert check_counterexample(model, spec, answer.format(0.1)) == "ok"
    assert check_counterexample(model, spec, answer.format(repr(float(np.float32(0.1))))) == (
        "bad: X lies outside every input box of the spec")
    spec.write_text(spec.read_text().replace("(<= Y_0 1000.0)", "(<= Y_0 -1000.0)"))
    assert check_counterexample(model, spec, answer.format(0.1)) == (
        "bad: onnxruntime outputs on X are not in an unsafe region")


def test_2022_layout_with_gz_files_runs_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "vnncomp2022_benchmarks"
    bench_dir = root / "benchmarks" / "mini"
    for sub, name in (("onnx", "test_sat.onnx"), ("vnnlib", "test_prop.vnnlib")):
        (bench_dir / sub).mkdir(parents=True)
        (bench_dir / sub / f"{name}.gz").write_bytes(gzip.compress((MODELS / name).read_bytes()))
    (bench_dir / "instances.csv").write_text("onnx/test_sat.onnx,vnnlib/test_prop.vnnlib,30\n")
    out = tmp_path / "r.csv"
    run = bench_cli("run", str(root), "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--mode", "spawn")
    assert run.returncode == 0, run.stderr
    (row,) = rows_of(out)
    assert (row["benchmark"], row["onnx"], row["result"], row["mode"]) == ("mini", "onnx/test_sat.onnx", "sat", "spawn")
    assert float(row["prepare_time"]) > 0  # unpacked on the fly


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "x_instances.csv"
    bad.write_text("a.onnx,b.vnnlib,soon\n")
    run = bench_cli("run", str(bad), "-o", str(tmp_path / "r.csv"))
    assert run.returncode == 3
    assert run.stderr.strip().splitlines() == [f"verify-bench: error: {bad}:1: timeout 'soon' is not a number"]
    missing = bench_cli("summary", str(tmp_path / "nope.csv"))
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1


def test_foreign_command_killed_with_its_group(tmp_path: Path) -> None:
    """A tool that ignores SIGTERM and leaves a grandchild: both die at timeout + grace."""
    csv_path = tmp_path / "hang_instances.csv"
    csv_path.write_text(f"{MODELS / 'test_nano.onnx'},{MODELS / 'test_nano.vnnlib'},60\n")
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    command = f"{sys.executable} -c \"{script}\" {{onnx}} {{timeout}}"
    start = time.monotonic()
    run = bench_cli("run", str(csv_path), "-o", str(tmp_path / "r.csv"), "--command", command,
                    "--timeout-cap", "1", "--grace", "0.5")
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - start < 20
    (row,) = rows_of(tmp_path / "r.csv")
    assert row["result"] == "timeout" and row["mode"] == "command" and row["exit_code"] == "-9"
    assert 1.5 <= float(row["run_time"]) < 5
    assert _gone(int(pid_file.read_text()))


def _gone(pid: int, wait: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# --- pieces ------------------------------------------------------------------------------------


def test_supervise_runs_in_parallel_and_reads_first_output(tmp_path: Path) -> None:
    def task(i: int, code: str) -> Task:
        return Task(i, Launch((), 1, tmp_path / f"{i}.err", (sys.executable, "-c", code)), 10.0)

    tasks = [
        task(0, "import time; time.sleep(0.6); print('unsat')"),
        task(1, "import time; print('sat', flush=True); time.sleep(0.6)"),
        task(2, "import sys; print('boom', file=sys.stderr); sys.exit(3)"),
    ]
    start = time.monotonic()
    got = {t.tag: o for t, o in supervise(tasks, "spawn", workers=3)}
    assert time.monotonic() - start < 3.0
    assert (got[0].result, got[1].result, got[2].result) == ("unsat", "sat", "error")
    assert got[1].first_output < got[1].run_time - 0.4  # printed first, exited later
    assert got[2].exit_code == 3 and got[2].message == "boom (exit code 3)"
    assert all(o.cpu_time >= 0 and o.max_rss_mb > 0 for o in got.values())


def test_supervise_kills_child_past_timeout_plus_grace() -> None:
    hang = Launch((), 1, None, (sys.executable, "-c", "import time; time.sleep(30)"))
    ((_, outcome),) = supervise([Task(0, hang, 0.3)], "spawn", limits=Limits(grace=0.2))
    assert outcome.result == "timeout" and outcome.killed and outcome.exit_code == -15
    assert 0.5 <= outcome.run_time < 3


@pytest.mark.parametrize(
    ("word", "code", "killed", "trust", "expected"),
    [
        ("unsat", 0, False, True, "unsat"),
        ("sat", 5, False, True, "error"),  # a crash after printing is never scored
        ("sat", 5, False, False, "sat"),  # a foreign tool's exit code is not ours to judge
        ("", 0, False, True, "error"),
        ("holds", 0, False, True, "unsat"),
        ("", -9, True, True, "timeout"),
        ("unknown", -9, True, True, "timeout"),
        ("unsat", -9, True, True, "unsat"),
        ("maybe", 0, False, True, "error"),
    ],
)
def test_classify(word: str, code: int, killed: bool, trust: bool, expected: str) -> None:
    assert classify(word, code, killed, trust)[0] == expected


def test_instances_layouts_and_gz_cache(tmp_path: Path) -> None:
    assert benchmark_name(Path("x/acasxu/acasxu_instances.csv")) == "acasxu"
    assert benchmark_name(tmp_path / "mnist" / "instances.csv") == "mnist"
    (tmp_path / "a" / "onnx").mkdir(parents=True)
    (tmp_path / "a" / "instances.csv").write_text("onnx/m.onnx,p.vnnlib,7.5\n# comment\n")
    (tmp_path / "a" / "onnx" / "m.onnx.gz").write_bytes(gzip.compress(b"model bytes"))
    (inst,) = load_instances([tmp_path])  # a folder of sets
    assert (inst.benchmark, inst.onnx, inst.timeout) == ("a", "onnx/m.onnx", 7.5)
    plain, spent = materialize(inst.onnx_path, tmp_path / "cache")
    assert plain.read_bytes() == b"model bytes" and plain.name == "m.onnx" and spent > 0
    assert materialize(inst.onnx_path, tmp_path / "cache") == (plain, 0.0)
    with pytest.raises(InstanceError, match="not found"):
        materialize(inst.vnnlib_path, tmp_path / "cache")
    with pytest.raises(InstanceError, match="no instances.csv"):
        load_instances([tmp_path / "a" / "onnx"])


def test_results_csv_appends_and_reads_foreign_csvs(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with ResultsWriter(path) as w:
        w.write(ResultRow("b", "n.onnx", "p.vnnlib", 0.0, "unsat", 1.5, timeout=10, message="a, b\nc"))
    with ResultsWriter(path) as w:
        w.write(ResultRow("b", "n.onnx", "q.vnnlib", 0.0, "sat", 2.0))
    rows = read_results(path)
    assert [r.result for r in rows] == ["unsat", "sat"] and rows[0].message == "a, b c"
    foreign = tmp_path / "other.csv"
    foreign.write_text("acasxu,./benchmarks/acasxu/n.onnx,./benchmarks/acasxu/p.vnnlib,.01,holds,3.2\n"
                       "acasxu,./benchmarks/acasxu/n.onnx,./benchmarks/acasxu/q.vnnlib,.01,violated,1\n")
    assert [(r.result, r.run_time) for r in read_results(foreign)] == [("unsat", 3.2), ("sat", 1.0)]
    assert normalize_verdict("run_instance_timeout") == "timeout" and normalize_verdict("???") == "error"
    (tmp_path / "alien.csv").write_text("benchmark,onnx\n")
    with pytest.raises(ValueError, match="not a results CSV"):
        ResultsWriter(tmp_path / "alien.csv")
    older = tmp_path / "older.csv"  # an earlier version's columns: upgraded in place, rows kept
    older.write_text("benchmark,onnx,vnnlib,prepare_time,result,run_time,host\nb,n,p,0,unsat,1.5,h1\n")
    with ResultsWriter(older) as w:
        w.write(ResultRow("b", "n", "q", 0.0, "sat", 2.0, host="h2"))
    assert [(r.vnnlib, r.result, r.host) for r in read_results(older)] == [("p", "unsat", "h1"), ("q", "sat", "h2")]


def _csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_summary_scores_wrong_first_par2_and_compare(tmp_path: Path) -> None:
    head = "benchmark,onnx,vnnlib,prepare_time,result,run_time,timeout"
    ours = _csv(tmp_path / "ours.csv", head, [
        "s,n.onnx,p1.vnnlib,0,unsat,2,10",  # correct
        "s,n.onnx,p2.vnnlib,0,unsat,1,10",  # wrong: truth is sat
        "s,n.onnx,p3.vnnlib,0,timeout,10.5,10",
        "s,n.onnx,p4.vnnlib,0,sat,4,10",  # unconfirmed, and the other tool disagrees
        "s,n.onnx,p5.vnnlib,0,unsat,12,10",  # late
    ])
    other = _csv(tmp_path / "other.csv", "benchmark,onnx,vnnlib,prepare_time,result,run_time", [
        "s,x/n.onnx,x/p1.vnnlib,0,holds,5", "s,x/n.onnx,x/p4.vnnlib,0,holds,1",
    ])
    truth = _csv(tmp_path / "gt.csv", "benchmark,onnx,vnnlib,result,best_time_raw,best_raw_tool,timeout", [
        "s,n.onnx,p1.vnnlib,unsat,1.5,X,10", "s,n.onnx,p2.vnnlib,sat,30,Y,10", "s,n.onnx,p3.vnnlib,unknown,,,10",
    ])
    result = summarize([load_tool(ours), load_tool(other)], read_truth(truth))
    m_ours, m_other = result.metrics
    assert (m_ours.total, m_ours.decided, m_ours.wrong, m_ours.unconfirmed, m_ours.late) == (5, 2, 1, 1, 1)
    assert m_ours.score == 2 * 10 - 150
    assert m_ours.par2 == pytest.approx((2 + 20 + 20 + 4 + 20) / 5)
    assert m_ours.time_median == pytest.approx(3.0) and m_ours.time_total == pytest.approx(29.5)
    assert (m_other.decided, m_other.missing, m_other.score) == (2, 3, 20)
    text = format_findings(result)
    assert text.startswith("!" * 72) and "1 WRONG ANSWER" in text
    kinds = [f.kind for f in result.findings]
    assert kinds == ["wrong", "disagree", "disagree", "late"]
    rejected = _csv(tmp_path / "rejected.csv", head + ",cex_check", ["s,n.onnx,p4.vnnlib,0,sat,4,10,bad: why"])
    (bad,) = summarize([load_tool(rejected)], read_truth(truth)).findings
    assert (bad.kind, bad.text) == ("wrong", "answered sat, counterexample bad: why")
    cli = bench_cli("summary", str(ours), "--truth", str(truth), "--compare", str(other), "--best",
                    "--csv", str(tmp_path / "s.csv"))
    assert cli.returncode == 1  # a wrong answer fails the summary
    assert cli.stdout.index("WRONG") < cli.stdout.index("score")
    table = rows_of(tmp_path / "s.csv")
    assert [r["tool"] for r in table] == ["ours", "other", "best known"]
    assert (table[2]["decided"], table[2]["late"], table[2]["missing"]) == ("1", "1", "3")  # p2 took 30 s > 10


def test_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    shown = Progress(2, stream=stream)
    shown.add("s a b", "unsat", 1.234)
    shown.add("s a c", "sat", 0.5, wrong=True)
    shown.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] s a b: unsat 1.23s"
    assert lines[1].endswith("<-- WRONG")
    assert lines[2].endswith("sat 1 unsat 1 timeout 0 unknown 0 error 0 wrong 1")
    quiet = io.StringIO()
    Progress(1, stream=quiet, quiet=True).add("x", "sat", 1.0)
    assert quiet.getvalue() == ""
    live = io.StringIO()
    bar = Progress(4, stream=live, live=True)
    bar.add("x", "sat", 1.0)
    assert "] 1/4 0s ETA 0s | sat 1" in live.getvalue() and live.getvalue().startswith("\r")


def test_plot_without_matplotlib_is_a_clear_error(tmp_path: Path) -> None:
    results = _csv(tmp_path / "r.csv", "benchmark,onnx,vnnlib,prepare_time,result,run_time", ["s,a,b,0,sat,1"])
    code = (
        "import sys; sys.modules['matplotlib'] = None; from benchmarks.runner import main; "
        f"sys.exit(main(['plot', {str(results)!r}, '-o', {str(tmp_path / 'x.png')!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert run.returncode == 3
    assert run.stderr.strip() == "verify-bench: error: plotting needs matplotlib: pip install 'relu-verifier[plots]'"


def test_the_replay_reads_vnnlib2_counterexamples(tmp_path):
    """A 2.0 spec's counterexample is written in the 2.0 assignment format; the runner's replay reads it."""
    from verifier.api import verify
    from verifier.cli import format_result

    spec = MODELS / "test_prop_v2.vnnlib"
    result = verify(MODELS / "test_sat.onnx", spec, timeout=30)
    cex = result.counterexample
    text = format_result(str(result.status), cex.x, cex.y, result.spec)
    assert text.startswith("sat\n") and "(X_0" not in text
    assert check_counterexample(MODELS / "test_sat.onnx", spec, text) == "ok"
    assert check_counterexample(MODELS / "test_unsat.onnx", spec, text) == (
        "bad: onnxruntime outputs on X are not in an unsafe region")
    assert check_counterexample(MODELS / "test_sat.onnx", spec, text.split("\n")[0] + "\n") == (
        "bad: no X_i values after sat")


def test_each_verify_child_gets_its_share_of_the_cores_as_workers() -> None:
    from benchmarks.runner import _with_workers

    assert _with_workers(("--certify",), 1) == ("--workers", "1", "--certify")
    assert _with_workers(("--workers", "3"), 1) == ("--workers", "3")
    assert _with_workers(("--workers=3",), 2) == ("--workers=3",)
