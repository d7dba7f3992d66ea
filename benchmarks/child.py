"""Starting one instance's process: forked from a pre-imported parent, or spawned fresh.

Every child runs in a new session (so a new process group the supervisor can
kill as a whole), with stdin closed, stdout on a pipe the supervisor reads and
stderr in a log file.

* ``fork``: the parent has imported ``verifier``, ``torch`` and ``onnxruntime``
  once; ``os.fork`` then gives each instance a ready interpreter and the child
  calls ``verifier.cli.main`` directly.  The parent must not have run any torch
  or onnxruntime work before forking (OpenMP thread pools do not survive fork).
* ``spawn``: ``subprocess`` starts the ``verify`` console script (or any command
  template) as a fresh process, as a competition harness would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("fork", "spawn")

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Launch:
    """What to start for one instance."""

    argv: tuple[str, ...]  # the verify CLI's arguments (without a program name)
    threads: int
    stderr_path: Path | None  # None: discard
    command: tuple[str, ...] | None = None  # a foreign command line, run instead of the CLI (spawned)
    results_path: Path | None = None  # where that command writes its verdict, if it does
    inputs: tuple[str, ...] = ()  # the files it reads (model, spec, config), for runs on other machines


@dataclass
class Running:
    """A started child: its pid (= its process group), pipes and start time."""

    pid: int
    stdout_fd: int
    pidfd: int  # -1 where os.pidfd_open is unavailable
    started: float  # time.monotonic() just before the fork/spawn
    popen: subprocess.Popen | None = None


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the OpenMP/MKL/BLAS thread counts set to ``threads``."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in _THREAD_VARS})
    return env


def verify_command() -> list[str]:
    """How to start the ``verify`` CLI as a fresh process from this interpreter's environment."""
    beside = Path(sys.executable).with_name("verify")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("verify")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from verifier.cli import main; sys.exit(main())"]


def verify_args(onnx: Path, vnnlib: Path, timeout: float, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The CLI arguments for one instance (without the program name)."""
    return (str(onnx), str(vnnlib), "--timeout", f"{timeout:g}", *extra)


def command_from_template(template: str, fields: dict[str, str]) -> tuple[str, ...]:
    """A foreign tool's command line: ``template`` split like a shell would, ``{name}`` fields filled."""
    try:
        return tuple(part.format(**fields) for part in shlex.split(template))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad --command template {template!r}: {exc}; fields: {sorted(fields)}") from None


def preimport() -> float:
    """Import the verifier and its heavy dependencies in this (parent) process; returns seconds."""
    start = time.perf_counter()
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import verifier.cli  # noqa: F401

    return time.perf_counter() - start


def start(launch: Launch, mode: str) -> Running:
    """Start ``launch`` in a new session; ``fork`` needs ``preimport()`` to have run.

    A foreign ``command`` is always spawned; the CLI is forked or spawned by ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if launch.command is not None:
        return _start_spawn(launch, launch.command)
    if mode == "fork":
        return _start_fork(launch)
    return _start_spawn(launch, (*verify_command(), *launch.argv))


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _start_spawn(launch: Launch, argv: tuple[str, ...]) -> Running:
    err = open(launch.stderr_path, "wb") if launch.stderr_path else subprocess.DEVNULL
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=err,
            start_new_session=True,
            env=thread_env(launch.threads),
            close_fds=True,
        )
    finally:
        os.close(write_fd)
        if launch.stderr_path:
            err.close()
    return Running(popen.pid, read_fd, _pidfd(popen.pid), started, popen)


def _start_fork(launch: Launch) -> Running:
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child never returns from here
        os.close(read_fd)
        _child(launch, write_fd)
    os.close(write_fd)
    return Running(pid, read_fd, _pidfd(pid), started)


def _child(launch: Launch, stdout_fd: int) -> None:
    """Body of a forked child: new session, redirected fds, thread limits, then the CLI."""
    code = 5
    try:
        import logging
        import signal

        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        err = os.open(launch.stderr_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(err, 2)
        for fd in {null, err, stdout_fd}:
            os.close(fd)
        os.environ.update(thread_env(launch.threads, {}))
        import torch

        torch.set_num_threads(launch.threads)
        logging.root.handlers.clear()  # let the CLI configure logging as in a fresh process
        from verifier.cli import main

        sys.argv = ["verify", *launch.argv]
        rc = main(list(launch.argv))
        code = 0 if rc is None else rc
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash of the CLI is recorded as 'error' by the parent
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 5)
