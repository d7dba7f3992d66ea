"""Running instances as Ray tasks on an existing cluster (optional: ``pip install .[cluster]``).

Each instance is one Ray task.  The task writes the instance's files (shipped
through the object store, so workers need no shared file system) into a
temporary folder, spawns the ``verify`` CLI (or the command template) there
with the same supervision as a local run -- the time limit is enforced on the
worker, which kills the child's whole process group -- and returns the outcome
with the child's stderr.  Outcomes stream back as tasks finish.

Every node needs this package installed (``pip install .[cluster]``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from benchmarks import child
from benchmarks.supervise import Limits, Outcome, Task, supervise

_MAX_STDERR = 1 << 20


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'relu-verifier[cluster]'") from None
    return ray


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``local`` starts a private one on loopback)."""
    if address == "local":
        # Ray binds a node's public address unless clusters are "disabled" (then: loopback only)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs = dict(log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
    try:
        if address == "local":
            ray.init(address=None, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ...)
        raise RayUnavailable(f"cannot join the Ray cluster at {address!r}: {exc}") from exc


def run_on_worker(
    launch: child.Launch, timeout: float, limits: Limits, trust_exit_code: bool, paths: tuple[str, ...],
    *contents: bytes,
) -> tuple[Outcome, str]:
    """Body of one Ray task: write ``contents`` for the driver's ``paths``, run, return outcome and stderr."""
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        here = {}
        for i, (path, data) in enumerate(zip(paths, contents)):
            target = Path(tmp) / f"{i}_{Path(path).name}"
            target.write_bytes(data)
            here[path] = str(target)
        swap = lambda args: tuple(here.get(a, a) for a in args)  # noqa: E731
        local = dataclasses.replace(
            launch,
            argv=swap(launch.argv),
            command=None if launch.command is None else swap(launch.command),
            stderr_path=Path(tmp) / "stderr",
            results_path=None if launch.results_path is None else Path(tmp) / "results",
        )
        if launch.results_path is not None and launch.command is not None:
            local = dataclasses.replace(
                local, command=tuple(a.replace(str(launch.results_path), str(local.results_path))
                                     for a in local.command)
            )
        (_, outcome), = supervise([Task(None, local, timeout)], "spawn", 1, limits,
                                  trust_exit_code=trust_exit_code)
        err = local.stderr_path.read_bytes()[-_MAX_STDERR:].decode("utf-8", errors="replace")
    return dataclasses.replace(outcome, host=socket.gethostname()), err


def ray_executor(limits: Limits, threads: int, trust_exit_code: bool = True, max_in_flight: int = 0):
    """An executor (for ``campaign.run_campaign``) that runs tasks on the connected Ray cluster.

    ``max_in_flight`` bounds submitted-but-unfinished tasks (0: twice the cluster's CPUs / threads).
    """
    ray = _ray()
    remote = ray.remote(num_cpus=threads, max_retries=0)(run_on_worker)

    def execute(tasks: Iterable[Task]) -> Iterator[tuple[Task, Outcome]]:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        limit = max_in_flight or max(1, 2 * cpus // max(1, threads))
        refs: dict[str, object] = {}  # local path -> object ref of its bytes, shipped once
        flying: dict[object, Task] = {}
        pending = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(flying) < limit:
                    task = next(pending, None)
                    if task is None:
                        exhausted = True
                        break
                    paths = tuple(dict.fromkeys(task.launch.inputs))
                    for path in paths:
                        if path not in refs:
                            refs[path] = ray.put(Path(path).read_bytes())
                    args = (task.launch, task.timeout, limits, trust_exit_code, paths, *(refs[p] for p in paths))
                    flying[remote.remote(*args)] = task
                if not flying:
                    return
                ready, _ = ray.wait(list(flying), num_returns=1, timeout=1.0)
                for ref in ready:
                    task = flying.pop(ref)
                    yield task, _collect(ray, ref, task)
        finally:
            for ref in flying:
                ray.cancel(ref, force=True)

    return execute


def _collect(ray, ref, task: Task) -> Outcome:
    """The outcome of a finished Ray task; its stderr goes to the task's log file."""
    try:
        outcome, err = ray.get(ref)
    except Exception as exc:  # a lost worker or node, or a bug: record it, keep the campaign going
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return Outcome("error", 0.0, -1, -1.0, -1.0, -1.0, "", f"ray task failed: {lines[-1] if lines else exc}", False)
    if task.launch.stderr_path is not None:
        task.launch.stderr_path.write_text(err)
    return outcome
