"""verify-bench --ray: instances as Ray tasks on a local cluster on loopback, limits enforced on the worker."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray then binds 127.0.0.1, not the node's address
os.environ.update(LOOPBACK)  # read by Ray at import time, in this process and in the runner's
ray = pytest.importorskip("ray", reason="Ray is not installed (optional: pip install '.[cluster]')")

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head started here on loopback, stopped at the end."""
    ray.init(address=None, num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        yield address
    finally:
        ray.shutdown()


def test_ray_runs_the_cli_on_a_loopback_cluster(ray_address: str, tmp_path: Path) -> None:
    instances = tmp_path / "mix_instances.csv"
    instances.write_text(
        f"{MODELS / 'test_sat.onnx'},{MODELS / 'test_prop.vnnlib'},30\n"
        f"{MODELS / 'test_nano.onnx'},{MODELS / 'test_nano.vnnlib'},30\n"
        f"{MODELS / 'test_unsat.onnx'},{MODELS / 'test_prop.vnnlib'},30\n"
    )
    env = {**os.environ, **LOOPBACK}
    verdicts = {}
    for how in (["--ray", ray_address], []):  # on the cluster, then with the local runner
        out = tmp_path / f"r{len(verdicts)}.csv"
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.runner", "run", str(instances), "-o", str(out), *how,
             "--threads", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=240, env=env,
        )
        assert run.returncode == 0, run.stderr
        rows = list(csv.DictReader(open(out)))
        verdicts[bool(how)] = [(r["onnx"], r["result"]) for r in rows]
        if how:
            assert all(r["host"] and r["mode"] == "spawn" for r in rows)
            log = out.with_name(out.name + ".logs") / "0000_mix_test_sat.onnx_test_prop.vnnlib.out"
            assert log.read_text().startswith("sat\n")
    assert sorted(verdicts[True]) == sorted(verdicts[False])
    assert sorted(v for _, v in verdicts[True]) == ["sat", "unsat", "unsat"]


def test_ray_task_kills_a_hung_process_group_on_the_worker(ray_address: str, tmp_path: Path) -> None:
    from benchmarks.child import Launch
    from benchmarks.ray_backend import connect, ray_executor
    from benchmarks.supervise import Limits, Task

    connect(ray_address)  # already joined in this process: a no-op
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('sat', flush=True); " \
           "time.sleep(60)"
    hang = Launch((), 1, tmp_path / "err", (sys.executable, "-c", code))
    execute = ray_executor(Limits(grace=0.3, term_grace=0.5), threads=1)
    ((task, outcome),) = list(execute([Task("tag", hang, 1.0)]))
    assert task.tag == "tag" and outcome.killed and outcome.exit_code == -9
    assert outcome.result == "sat"  # it answered, then hung: kept, with a note; the summary counts it late
    assert 1.8 <= outcome.run_time < 5 and outcome.first_output < 1.0
    assert (tmp_path / "err").exists() and outcome.host
