"""Branch-and-bound helpers as Ray tasks (``--ray``) on a local cluster on loopback: the verdicts of a
local run, with work handed to the tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray then binds 127.0.0.1, not the node's address
os.environ.update(LOOPBACK)
ray = pytest.importorskip("ray", reason="Ray is not installed (optional: pip install '.[cluster]')")

from verifier.api import verify  # noqa: E402
from verifier.config import load_config  # noqa: E402
from verifier.result import Status  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACAS = REPO / "models" / "acasxu"
INSTANCES = [("1_9", "prop_2"), ("1_1", "prop_2"), ("3_3", "prop_1")]


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head started here on loopback, stopped at the end."""
    ray.init(address=None, num_cpus=3, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _files(net: str, prop: str) -> tuple[Path, Path]:
    return ACAS / f"ACASXU_run2a_{net}_batch_2000.onnx", ACAS / f"{prop}.vnnlib"


@pytest.mark.parametrize("net,prop", INSTANCES)
def test_ray_helpers_reach_the_local_verdict(ray_address: str, net: str, prop: str) -> None:
    model, spec = _files(net, prop)
    local = verify(model, spec, timeout=60, config=load_config(overrides={"bab": {"workers": 1}}))
    remote = verify(model, spec, timeout=60, config=load_config(overrides={
        "bab": {"workers": 3, "parallel_after": 0.0, "ray": ray_address}}))
    assert remote.status is local.status is Status.UNSAT
    assert remote.stats["bab_workers"] == 3 and remote.stats["bab_handed"] > 0


def test_cli_joins_a_ray_cluster(ray_address: str, tmp_path: Path) -> None:
    model, spec = _files(*INSTANCES[0])
    config = tmp_path / "c.yaml"
    config.write_text("bab:\n  parallel_after: 0.0\n")
    out = subprocess.run([sys.executable, "-m", "verifier.cli", str(model), str(spec), "--timeout", "60",
                          "--workers", "2", "--ray", ray_address, "--config", str(config), "-v"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **LOOPBACK}, cwd=REPO)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "unsat", out.stderr[-2000:]
    assert "bab_workers=2" in out.stderr
