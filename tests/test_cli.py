"""The ``verify`` command end to end, in a subprocess: verdicts, result files, bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNSUPPORTED
from verifier.validate import validate_counterexample
from vnnlib import read_spec

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def run_verify(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def parse_counterexample(text: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = {}, {}
    for token in text.replace("(", " ").replace(")", " ").split("\n")[1:]:
        parts = token.split()
        for name, value in zip(parts[::2], parts[1::2]):
            (xs if name.startswith("X_") else ys)[int(name[2:])] = float(value)
    return np.array([xs[i] for i in range(len(xs))]), np.array([ys[i] for i in range(len(ys))])


def test_sat_instance_writes_a_counterexample_that_replays(tmp_path):
    out = tmp_path / "result.txt"
    proc = run_verify(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", "--timeout", 60, "--out", out)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.splitlines()[0] == "sat"
    assert out.read_text() == proc.stdout
    x, y = parse_counterexample(out.read_text())
    spec = read_spec(MODELS / "test_prop.vnnlib")
    cex = validate_counterexample(MODELS / "test_sat.onnx", spec, x)
    assert cex is not None
    np.testing.assert_allclose(cex.y, y, rtol=1e-6, atol=1e-6)


def test_json_record(tmp_path):
    out = tmp_path / "r.json"
    proc = run_verify(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", "--json", out, "-q")
    import json

    rec = json.loads(out.read_text())
    assert proc.stdout.splitlines()[0] == rec["result"] == "sat" and len(rec["counterexample"]["x"]) == 5


def test_timeout_is_honoured_within_a_second():
    start = time.monotonic()
    proc = run_verify(MODELS / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx", MODELS / "acasxu" / "prop_1.vnnlib",
                      "--timeout", "0.5")
    elapsed = time.monotonic() - start
    assert proc.returncode == EXIT_OK
    assert proc.stdout.splitlines()[0] in ("timeout", "unsat")
    assert elapsed < 0.5 + 1.0 + 0.5  # + interpreter start-up


def test_json_record_on_timeout(tmp_path):
    # the watchdog may answer before the pipeline does; either way the record is written
    out = tmp_path / "r.json"
    proc = run_verify(MODELS / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx", MODELS / "acasxu" / "prop_1.vnnlib",
                      "--timeout", "0.3", "--json", out)
    import json

    rec = json.loads(out.read_text())
    assert proc.stdout.splitlines()[0] == rec["result"] and rec["result"] in ("timeout", "unsat")
    assert rec["counterexample"] is None


def test_json_record_of_a_watchdog_timeout_keeps_the_statistics_so_far(tmp_path):
    """A run that overstays its deadline is answered by the watchdog; its JSON record holds the statistics
    the stages had reported by then (here a stand-in pipeline that reports one and hangs)."""
    out = tmp_path / "r.json"
    script = (
        "import sys, time\n"
        "import verifier.api\n"
        "def hang(model, spec, timeout=None, config=None, stats=None):\n"
        "    stats['load_time'] = 0.25\n"
        "    time.sleep(30)\n"
        "verifier.api.verify = hang\n"
        "from verifier.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(MODELS / "test_sat.onnx"),
                           str(MODELS / "test_prop.vnnlib"), "--timeout", "0.5", "--json", str(out)],
                          capture_output=True, text=True, timeout=60)
    import json

    assert proc.stdout.splitlines()[0] == "timeout"
    rec = json.loads(out.read_text())
    assert rec["result"] == "timeout" and rec["stats"] == {"load_time": 0.25}


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _sigmoid_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((5, 5), dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Sigmoid", ["h"], ["y"], name="squash")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


MALFORMED = "(declare-const X_0 Real)\n(assert (<= X_0"
BAD_INPUTS = {
    "missing model": (lambda d: (d / "nope.onnx", MODELS / "test_prop.vnnlib"), EXIT_BAD_INPUT, "not found"),
    "missing spec": (lambda d: (MODELS / "test_sat.onnx", d / "nope.vnnlib"), EXIT_BAD_INPUT, "not found"),
    "text named onnx": (lambda d: (_write(d / "m.onnx", "hello, not a model\n"), MODELS / "test_prop.vnnlib"),
                        EXIT_BAD_INPUT, "onnx"),
    "truncated onnx": (lambda d: (_write(d / "t.onnx", (MODELS / "test_sat.onnx").read_bytes()[:700]),
                                  MODELS / "test_prop.vnnlib"), EXIT_BAD_INPUT, "onnx"),
    "empty spec": (lambda d: (MODELS / "test_sat.onnx", _write(d / "e.vnnlib", "")), EXIT_BAD_INPUT, "spec"),
    "malformed spec": (lambda d: (MODELS / "test_sat.onnx", _write(d / "m.vnnlib", MALFORMED)), EXIT_BAD_INPUT,
                       "spec"),
    "wrong variable count": (lambda d: (MODELS / "test_sat.onnx", MODELS / "test_nano.vnnlib"), EXIT_BAD_INPUT,
                             "input"),
    "unsupported operator": (lambda d: (_sigmoid_model(d / "s.onnx"), MODELS / "test_prop.vnnlib"),
                             EXIT_UNSUPPORTED, "Sigmoid"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_its_exit_code(tmp_path, name):
    make, code, fragment = BAD_INPUTS[name]
    model, spec = make(tmp_path)
    out = tmp_path / "res.txt"
    proc = run_verify(model, spec, "--out", out)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stdout == "error\n" and out.read_text() == "error\n"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("verify: error:"), proc.stderr
    assert fragment.lower() in lines[0].lower()


def test_bad_config_and_usage(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "atack: {}\n")
    proc = run_verify(MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib", "--config", cfg)
    assert proc.returncode == EXIT_BAD_INPUT and "unknown key" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_verify(MODELS / "test_sat.onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


VERDICTS = {"sat", "unsat", "timeout", "unknown", "error"}


@pytest.fixture(scope="module")
def needle_trap(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A needle (sat only near one point of a 4-D box) as ONNX and VNN-LIB files."""
    from tests.test_soundness_regressions import needle
    from verifier.onnx_export import save_onnx
    from vnnlib.spec import Case, Polytope, Spec
    from vnnlib.writer import write_spec

    folder = tmp_path_factory.mktemp("needle")
    net, c = needle(0)
    save_onnx(net, folder / "needle.onnx")
    spec = Spec((Case(np.zeros(c.size), np.ones(c.size), (Polytope(np.array([[-1.0]]), np.array([-0.9])),)),),
                c.size, 1)
    (folder / "needle.vnnlib").write_text(write_spec(spec))
    return folder / "needle.onnx", folder / "needle.vnnlib"


@pytest.mark.parametrize("args", [
    (), ("--engine", "milp"), ("--engine", "smt"), ("--engine", "bab"), ("--stop-after", "alpha"),
    ("--engine", "milp", "-v"),
])
def test_the_verdict_is_the_first_line_of_standard_output(needle_trap: tuple[Path, Path], args: tuple) -> None:
    """No solver banner or other third-party output before the verdict, on every engine and stage
    (HiGHS writes its banner from native code when its first solver object is made)."""
    proc = run_verify(*needle_trap, "--timeout", 20, *args)
    lines = proc.stdout.splitlines()
    assert lines and lines[0] in VERDICTS, proc.stdout[:300]
    if lines[0] == "sat":  # only the counterexample follows
        assert all(line.startswith(("(", " (")) for line in lines[1:]), proc.stdout[:300]
        x, y = parse_counterexample(proc.stdout)
        assert x.size == 4 and y.size == 1
    else:
        assert len(lines) == 1, proc.stdout[:300]
    if "-v" not in args:
        assert "HiGHS" not in proc.stderr  # chatter only when asked for


def test_the_verdict_is_the_first_line_on_acas_xu() -> None:
    proc = run_verify(MODELS / "acasxu" / "ACASXU_run2a_1_9_batch_2000.onnx", MODELS / "acasxu" / "prop_3.vnnlib",
                      "--timeout", 60)
    assert proc.stdout.splitlines()[0] == "sat"


def test_gzipped_models_are_read_as_they_are_distributed(tmp_path: Path) -> None:
    """VNN-COMP ships ``.onnx.gz``: verify reads and replays it as it is (the sat instance's counterexample
    is confirmed by onnxruntime on the unpacked bytes)."""
    import gzip

    packed = tmp_path / "test_sat.onnx.gz"
    packed.write_bytes(gzip.compress((MODELS / "test_sat.onnx").read_bytes()))
    spec_gz = tmp_path / "test_prop.vnnlib.gz"
    spec_gz.write_bytes(gzip.compress((MODELS / "test_prop.vnnlib").read_bytes()))
    proc = run_verify(packed, spec_gz, "--timeout", 60)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.splitlines()[0] == "sat"
    x, _ = parse_counterexample(proc.stdout)
    assert validate_counterexample(packed, read_spec(MODELS / "test_prop.vnnlib"), x) is not None
    broken = tmp_path / "broken.onnx.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not gzip at all")
    proc = run_verify(broken, MODELS / "test_prop.vnnlib")
    assert proc.returncode == EXIT_BAD_INPUT and proc.stdout.splitlines()[0] == "error"
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_main_in_process_leaves_the_garbage_collector_on(capsys: pytest.CaptureFixture) -> None:
    """The start-up imports run with the cyclic collector off; a caller gets it back on, verdict unchanged."""
    import gc

    from verifier.cli import main

    models = Path(__file__).resolve().parents[1] / "models"
    assert main([str(models / "test_unsat.onnx"), str(models / "test_prop.vnnlib"), "--timeout", "60"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[0] == "unsat" and gc.isenabled()


def test_allocator_tuning_is_skipped_where_there_is_no_mallopt(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's mallopt is called where it exists (both settings) and skipped where it does not."""
    import ctypes

    import verifier.cli as cli

    calls = []

    class _Libc:
        def mallopt(self, *args):
            calls.append(args)
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: _Libc())
    cli._reuse_freed_memory()
    assert calls == [(cli._M_MMAP_THRESHOLD, cli._KEEP_BELOW), (cli._M_TRIM_THRESHOLD, cli._KEEP_BELOW)]

    def _missing(name):
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", _missing)
    cli._reuse_freed_memory()  # no error
