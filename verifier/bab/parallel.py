"""Helpers for one search: forked processes that run the same search loop on subdomains handed to them.

The process that runs ``search`` (the coordinator) forks ``workers - 1`` helpers once its search has run
``bab.parallel_after`` seconds with more than one subdomain open (or starts them as Ray tasks:
``bab/ray_helpers.py``).  A fork shares the network, the objective and the rule as they are, so nothing
but subdomains and outcomes crosses the pipes.  Protocol, per helper:

* coordinator -> helper: ``("work", batch)``: search these; ``("give",)``: send back about half of your open
  subdomains.  When the search ends the coordinator kills its helpers (they hold nothing to clean up); a
  helper whose pipe closes exits, and on Linux it dies with the coordinator.
* helper -> coordinator: ``("gift", batch | None)`` answers a ``give``; ``("done", status, cex, stats)``
  when its store is empty (``UNSAT``: all it kept is proven), it found a counterexample (already replayed
  by its own validator), or it stopped undecided; ``("error", text)``.

Soundness is the single loop's: a subdomain leaves the coordinator's store only into a helper, and comes
back either in a gift (pushed again) or as part of a helper's ``UNSAT``, which is exactly the proof that
every subdomain that helper still held was ruled out by the same rule's ``bound`` or ``settle``.  The
coordinator answers ``UNSAT`` only when its own store is empty and every helper is idle after ``UNSAT``.

Forking is safe here because the run uses one torch thread (``verifier.runtime``: small networks) and
onnxruntime sessions with one thread: no thread pool is copied half-alive into a child.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

import torch

from verifier.deadline import Deadline
from verifier.result import Counterexample, Status

log = logging.getLogger(__name__)

# a helper's search: (subdomains, its channel, its generator) -> (status, counterexample, its BabStats)
SearchFn = Callable[[Any, "Channel", torch.Generator], tuple[Status, Counterexample | None, Any]]


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_allowed(workers: int) -> bool:
    """Whether this process may fork helpers: more than one worker asked for, fork available, and torch
    on one CPU thread (a forked child gets no copy of a live thread pool)."""
    return workers > 1 and hasattr(os, "fork") and torch.get_num_threads() == 1


@dataclass
class Channel:
    """A helper's end of its pipe, as its search loop sees it between rounds."""

    conn: Connection
    stopped: bool = False

    def serve(self, give: Callable[[], object | None]) -> bool:
        """Answer what the coordinator asked since the last round (``give``: pops the subdomains to send);
        whether the helper must stop."""
        while not self.stopped and self.conn.poll():
            try:
                msg = _recv(self.conn)
            except (EOFError, OSError):
                self.stopped = True
                break
            if msg[0] == "give":
                _put(self.conn, ("gift", give()))
        return self.stopped


@dataclass
class _Helper:
    pid: int
    conn: Connection
    busy: bool = False
    asked: bool = False


@dataclass
class Helpers:
    """The coordinator's side: started helpers and what they owe."""

    search: SearchFn
    workers: int
    deadline: Deadline
    seed: int
    ray: str = ""  # a Ray cluster's address: helpers run as its tasks (``workers`` 0: one per CPU of it)
    helpers: list[_Helper] = field(default_factory=list)
    started: bool = False
    tasks: list = field(default_factory=list)  # the Ray tasks' references
    undecided: bool = False
    handed: int = 0  # subdomains handed out
    returned: int = 0  # subdomains given back
    stats: list = field(default_factory=list)  # the helpers' BabStats, one per finished piece of work

    @property
    def busy(self) -> bool:
        return any(h.busy for h in self.helpers)

    def start(self) -> None:
        """Start the helpers (once): forked, or as Ray tasks when ``ray`` names a cluster."""
        if self.started:
            return
        self.started = True
        if self.ray:
            from verifier.bab.ray_helpers import start_ray_helpers

            conns, self.tasks = start_ray_helpers(self.ray, self.search, self.workers, self.seed, self.deadline)
            self.helpers = [_Helper(-1, c) for c in conns]
            self.workers = len(self.helpers) + 1
        else:
            self._fork()
        log.info("branch and bound: %d helpers", len(self.helpers))

    def _fork(self) -> None:
        parent = os.getpid()
        for k in range(1, self.workers):
            mine, theirs = Pipe()
            pid = os.fork()
            if pid == 0:  # the helper: never returns
                mine.close()
                for h in self.helpers:
                    h.conn.close()
                _helper_main(theirs, self.search, self.seed + k, parent)
            theirs.close()
            self.helpers.append(_Helper(pid, mine))

    def exchange(self, pop: Callable[[int], object], size: int, push: Callable[[object], None], block: bool
                 ) -> Counterexample | None:
        """Read what the helpers sent (gifts are ``push``ed), hand half of the coordinator's ``size`` open
        subdomains (``pop(n)``) to an idle helper, and, when ``block``, wait for at least one message
        (asking the busy helpers for work first).  A counterexample a helper found, or None."""
        if block:
            for h in self.helpers:
                if h.busy and not h.asked:
                    _send(h, ("give",))
                    h.asked = True
        timeout = 0.0
        if block:  # until a message or the deadline (None: no deadline)
            timeout = None if math.isinf(self.deadline.at) else self.deadline.remaining()
        ready = wait([h.conn for h in self.helpers if h.busy], timeout=timeout) if self.busy else []
        cex = None
        for h in list(self.helpers):
            if h.conn in ready:
                cex = self._read(h, push) or cex
        if cex is not None:
            return cex
        for h in self.helpers:
            if not h.busy and size >= 2:
                n = size // 2
                _send(h, ("work", pop(n)))
                h.busy, h.asked, size = True, False, size - n
                self.handed += n
        return None

    def _read(self, h: _Helper, push: Callable[[object], None]) -> Counterexample | None:
        while h.conn.poll():
            try:
                msg = _recv(h.conn)
            except (EOFError, OSError):  # killed (e.g. out of memory): what it held stays undecided
                log.warning("branch and bound helper %d died; its subdomains stay undecided", h.pid)
                self.undecided = True
                self.helpers.remove(h)
                if h.pid > 0:
                    _reap(h.pid)
                return None
            if msg[0] == "gift":
                h.asked = False
                if msg[1] is not None:
                    self.returned += msg[1].batch
                    push(msg[1])
            elif msg[0] == "done":
                _, status, cex, stats = msg
                h.busy = h.asked = False
                self.stats.append(stats)
                if status is Status.SAT:
                    return cex
                self.undecided |= status is not Status.UNSAT
            else:
                raise RuntimeError(f"branch and bound helper {h.pid} failed: {msg[1]}")
        return None

    def close(self) -> None:
        """End every helper now (they hold nothing that needs cleaning up) and reap it."""
        for h in self.helpers:
            h.conn.close()
            if h.pid > 0:
                _reap(h.pid)
        if self.tasks:
            from verifier.bab.ray_helpers import cancel

            cancel(self.tasks)
        self.helpers, self.tasks = [], []


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _put(conn: Connection, msg: tuple) -> None:
    # plain pickle: tensors travel by value (Connection.send would use torch's reductions for
    # multiprocessing, which share storage through file descriptors and a server thread a fork breaks)
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> tuple:
    return pickle.loads(conn.recv_bytes())


def _send(h: _Helper, msg: tuple) -> None:
    try:
        _put(h.conn, msg)
    except (BrokenPipeError, OSError):
        pass  # the helper is gone: reading its pipe says so


def _helper_main(conn: Connection, search: SearchFn, seed: int, parent: int) -> None:
    """A forked helper's life: ``helper_loop``, then exit without cleanup."""
    code = 1
    try:
        _die_with_parent(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = helper_loop(conn, search, seed)
    finally:
        os._exit(code)


def helper_loop(conn: Connection, search: SearchFn, seed: int) -> int:
    """Search what is handed over ``conn`` until it closes; 0, or 1 after a failure (sent as ``error``)."""
    try:
        gen = torch.Generator().manual_seed(seed)
        channel = Channel(conn)
        while not channel.stopped:
            try:
                msg = _recv(conn)
            except (EOFError, OSError):
                break
            if msg[0] != "work":
                continue  # a "give" that crossed a "done": nothing is left to give
            status, cex, stats = search(msg[1], channel, gen)
            if not channel.stopped:
                _put(conn, ("done", status, cex, stats))
    except Exception as e:  # any failure goes to the coordinator, which raises it
        try:
            _put(conn, ("error", f"{type(e).__name__}: {e}"))
        except Exception:
            pass
        return 1
    return 0


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the coordinator ``parent`` exits (e.g. answering ``timeout`` on
    its own)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the coordinator is already gone
        os._exit(0)

