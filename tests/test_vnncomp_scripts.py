"""The VNN-COMP scripts: argument checks, run_instance.sh on test_sat (counterexample replayed
strictly through onnxruntime), prepare_instance.sh ending only our own leftovers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vnnlib.reader import read_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "vnncomp_scripts"
MODELS = REPO / "models"


def script(name: str, *args: str, tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "VERIFIER_PYTHON": sys.executable, "VERIFIER_PIDFILE": str(tmp / "run.pid")}
    return subprocess.run(["bash", str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def parse_counterexample(text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = re.findall(r"\((X|Y)_(\d+)\s+([^\s()]+)\)", text)
    xs = {int(i): float(v) for k, i, v in pairs if k == "X"}
    ys = {int(i): float(v) for k, i, v in pairs if k == "Y"}
    return np.array([xs[i] for i in range(len(xs))]), np.array([ys[i] for i in range(len(ys))])


def test_scripts_reject_wrong_version_and_arguments(tmp_path: Path) -> None:
    for name, args in (("install_tool.sh", ["v2"]), ("prepare_instance.sh", ["v2", "c", "m", "p"]),
                       ("run_instance.sh", ["v2", "c", "m", "p", "r", "60"]), ("run_instance.sh", ["v1"]),
                       ("run_instance.sh", ["v1", "c", "m", "p", "r", "soon"])):
        run = script(name, *args, tmp=tmp_path)
        assert run.returncode == 1, (name, args)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_run_instance_sat_writes_a_counterexample_that_onnxruntime_confirms(tmp_path: Path) -> None:
    results = tmp_path / "out.txt"
    onnx, vnnlib = MODELS / "test_sat.onnx", MODELS / "test_prop.vnnlib"
    run = script("run_instance.sh", "v1", "test", str(onnx), str(vnnlib), str(results), "60", tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    text = results.read_text()
    assert text.splitlines()[0] == "sat"
    x, y_printed = parse_counterexample(text)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x32 = x.astype(np.float32)  # the written values, cast to the model's dtype (VNN-COMP's rule)
    y = session.run(None, {inp.name: x32.reshape([d if isinstance(d, int) else 1 for d in inp.shape])})[0]
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    spec = read_spec(vnnlib)
    assert spec.is_violated_by(x, y)  # inside a box and in an unsafe polytope, no tolerance
    assert np.allclose(y, y_printed, rtol=0, atol=1e-6)
    assert not (tmp_path / "run.pid").exists()


def _sleeper(marker: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker], start_new_session=True)


def test_prepare_instance_ends_only_our_leftovers_and_rejects_bad_models(tmp_path: Path) -> None:
    stranger = _sleeper("someone-else")
    leftover = _sleeper("verifier.cli")
    try:
        (tmp_path / "run.pid").write_text(str(stranger.pid))
        missing = script("prepare_instance.sh", "v1", "test", str(tmp_path / "none.onnx"),
                         str(MODELS / "test_prop.vnnlib"), tmp=tmp_path)
        assert missing.returncode == 1 and "cannot read" in missing.stderr
        assert stranger.poll() is None  # not ours: left alone

        (tmp_path / "run.pid").write_text(str(leftover.pid))
        bad = script("prepare_instance.sh", "v1", "test", str(MODELS / "test_prop.vnnlib"),
                     str(MODELS / "test_prop.vnnlib"), tmp=tmp_path)
        assert bad.returncode == 1 and "cannot run this instance" in bad.stderr  # not an ONNX model
        deadline = time.monotonic() + 5
        while leftover.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftover.returncode == -9
        assert not (tmp_path / "run.pid").exists()
    finally:
        for p in (stranger, leftover):
            if p.poll() is None:
                p.kill()
            p.wait()
