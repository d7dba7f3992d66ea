"""Running children under a time limit: up to N at once, each killed as a whole process group.

A child past ``timeout + grace`` gets SIGTERM on its process group, and SIGKILL
``term_grace`` seconds later; a finished child's group is SIGKILLed too, so no
grandchild outlives its instance.  Exits are seen through ``pidfd`` (Linux) and
stdout through a pipe, so nothing is polled in a busy loop.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from benchmarks import child
from benchmarks.results import VERDICTS, normalize_verdict

_MAX_STDOUT = 64 << 20  # bytes kept per child; a counterexample is far smaller
_POLL = 0.05  # seconds between exit checks where pidfd is unavailable


@dataclass(frozen=True)
class Task:
    """One child to run: ``tag`` is the caller's, handed back with the outcome."""

    tag: object
    launch: child.Launch
    timeout: float


@dataclass(frozen=True)
class Limits:
    """How long past its timeout a child may run before SIGTERM, and before SIGKILL after that."""

    grace: float = 5.0
    term_grace: float = 1.0


@dataclass(frozen=True)
class Outcome:
    """What one child did."""

    result: str  # one of results.VERDICTS
    run_time: float  # seconds from start to exit
    exit_code: int  # negative: killed by that signal
    first_output: float  # seconds from start to the first stdout byte; -1 when none
    cpu_time: float  # user + system seconds of the child
    max_rss_mb: float
    stdout: str
    message: str
    killed: bool
    host: str = ""  # where it ran, when not here
    answer: str = ""  # the text the verdict was read from (stdout, or the command's results file)


@dataclass
class _Slot:
    task: Task
    proc: child.Running
    kill_at: float
    stdout: bytearray = field(default_factory=bytearray)
    first: float = -1.0
    signals_sent: int = 0
    stdout_open: bool = True


def supervise(
    tasks: Iterable[Task],
    mode: str,
    workers: int = 1,
    limits: Limits = Limits(),
    tick: Callable[[], None] | None = None,
    trust_exit_code: bool = True,
) -> Iterator[tuple[Task, Outcome]]:
    """Run ``tasks`` with at most ``workers`` alive at once, yielding each outcome as it finishes.

    ``tick`` is called about once a second while waiting.  Closing the generator
    (or an exception in the caller) kills every child still running.
    """
    pending = iter(tasks)
    slots: dict[int, _Slot] = {}
    sel = selectors.DefaultSelector()
    exhausted = False
    try:
        while True:
            while not exhausted and len(slots) < workers:
                task = next(pending, None)
                if task is None:
                    exhausted = True
                    break
                slot = _launch(task, mode, limits, sel)
                slots[slot.proc.pid] = slot
            if not slots:
                return
            for slot in _wait(sel, slots, limits, tick):
                del slots[slot.proc.pid]
                yield slot.task, _finish(slot, sel, limits, trust_exit_code)
    finally:
        for slot in slots.values():
            _killpg(slot.proc.pid, signal.SIGKILL)
            _reap(slot, sel)
        sel.close()


def _launch(task: Task, mode: str, limits: Limits, sel: selectors.BaseSelector) -> _Slot:
    proc = child.start(task.launch, mode)
    os.set_blocking(proc.stdout_fd, False)
    slot = _Slot(task, proc, proc.started + task.timeout + limits.grace)
    sel.register(proc.stdout_fd, selectors.EVENT_READ, (slot, "out"))
    if proc.pidfd >= 0:
        sel.register(proc.pidfd, selectors.EVENT_READ, (slot, "exit"))
    return slot


def _wait(
    sel: selectors.BaseSelector, slots: dict[int, _Slot], limits: Limits, tick: Callable[[], None] | None
) -> list[_Slot]:
    """Block until at least one child has exited (escalating kills on the way); return those."""
    polling = any(s.proc.pidfd < 0 for s in slots.values())
    last_tick = time.monotonic()
    while True:
        now = time.monotonic()
        for slot in slots.values():
            _escalate(slot, now, limits)
        wait = min(s.kill_at for s in slots.values()) - now
        wait = max(0.0, min(wait, 1.0, _POLL if polling else 1.0))
        done = []
        for key, _ in sel.select(wait):
            slot, kind = key.data
            if kind == "out":
                _read(slot, sel)
            else:
                done.append(slot)
        if polling:
            done += [s for s in slots.values() if s.proc.pidfd < 0 and _exited(s.proc.pid)]
        if done:
            return list({id(s): s for s in done}.values())
        if tick is not None and time.monotonic() - last_tick >= 1.0:
            tick()
            last_tick = time.monotonic()


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _escalate(slot: _Slot, now: float, limits: Limits) -> None:
    if now < slot.kill_at or slot.signals_sent >= 2:
        return
    _killpg(slot.proc.pid, signal.SIGTERM if slot.signals_sent == 0 else signal.SIGKILL)
    slot.signals_sent += 1
    slot.kill_at = now + (limits.term_grace if slot.signals_sent == 1 else 3600.0)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read(slot: _Slot, sel: selectors.BaseSelector) -> None:
    """Read what is available on the child's stdout; unregister it at end of file."""
    while slot.stdout_open:
        try:
            data = os.read(slot.proc.stdout_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EINTR:
                data = b""
            else:
                continue
        if not data:
            sel.unregister(slot.proc.stdout_fd)
            os.close(slot.proc.stdout_fd)
            slot.stdout_open = False
            return
        if slot.first < 0:
            slot.first = time.monotonic() - slot.proc.started
        if len(slot.stdout) < _MAX_STDOUT:
            slot.stdout += data


def _reap(slot: _Slot, sel: selectors.BaseSelector) -> tuple[int, float, float, float]:
    """Wait for the child; returns (exit code, seconds since start, cpu seconds, max rss MiB)."""
    _, status, usage = os.wait4(slot.proc.pid, 0)
    end = time.monotonic()
    if slot.proc.popen is not None:
        slot.proc.popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    _killpg(slot.proc.pid, signal.SIGKILL)  # grandchildren left in the group die with the instance
    _read(slot, sel)
    if slot.stdout_open:
        sel.unregister(slot.proc.stdout_fd)
        os.close(slot.proc.stdout_fd)
        slot.stdout_open = False
    if slot.proc.pidfd >= 0:
        sel.unregister(slot.proc.pidfd)
        os.close(slot.proc.pidfd)
    cpu = usage.ru_utime + usage.ru_stime
    return os.waitstatus_to_exitcode(status), end - slot.proc.started, cpu, usage.ru_maxrss / 1024.0


def _finish(slot: _Slot, sel: selectors.BaseSelector, limits: Limits, trust_exit_code: bool) -> Outcome:
    code, elapsed, cpu, rss = _reap(slot, sel)
    out = slot.stdout.decode("utf-8", errors="replace")
    text = out
    if slot.task.launch.results_path is not None:
        try:
            text = slot.task.launch.results_path.read_text(errors="replace")
        except OSError:
            text = ""
    killed = slot.signals_sent > 0
    result, message = classify(first_word(text), code, killed, trust_exit_code)
    if result == "error" and not message:
        message = f"{last_line(slot.task.launch.stderr_path) or 'no verdict printed'} (exit code {code})"
    return Outcome(result, elapsed, code, slot.first, cpu, rss, out, message, killed, answer=text)


def first_word(text: str) -> str:
    """The first word of the first non-empty line of ``text`` ('' if none)."""
    for line in text.splitlines():
        if line.strip():
            return line.split()[0]
    return ""


def classify(word: str, exit_code: int, killed: bool, trust_exit_code: bool) -> tuple[str, str]:
    """The recorded verdict and a note, from the first output word and how the child ended.

    A child killed at its limit without a verdict timed out.  With
    ``trust_exit_code`` (our CLI exits 0 after any verdict) a nonzero exit turns
    a verdict into ``error``, so a crash after printing is never scored.
    """
    verdict = normalize_verdict(word) if word else ""
    known = word.strip().lower() in VERDICTS or verdict != "error"
    if killed:
        if known and verdict in ("sat", "unsat"):
            return verdict, "answered, but had to be killed past its time limit"
        return "timeout", "killed at the time limit"
    if (trust_exit_code and exit_code != 0) or not word:
        return "error", ""  # the caller adds the child's last stderr line
    return (verdict, "") if known else ("error", f"unrecognised verdict {word!r}")


def last_line(path: os.PathLike | None, limit: int = 8192) -> str:
    """The last non-empty line of a (log) file, or ''."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
