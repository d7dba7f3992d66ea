"""The ``verify`` command: parse arguments, run the API, print the verdict.

Heavy modules (torch, onnx) are imported only after the arguments are parsed,
so ``verify --help`` and usage errors are instant.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import sys
import threading
import time
from pathlib import Path

from verifier.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, VerifierError

log = logging.getLogger("verifier")

_WATCHDOG_GRACE = 0.5  # seconds past the timeout before the CLI answers 'timeout' by force
# glibc's mallopt parameters, and the block size below which freed memory is kept for reuse
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 512 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify",
        description="Verify a ReLU network (ONNX) against a VNN-LIB property. First line of output: "
        "sat | unsat | timeout | unknown | error.",
        epilog="Exit status: 0 any verdict, 2 usage, 3 bad input (missing/malformed file, shape mismatch, "
        "bad config), 4 unsupported model, 5 internal error.",
    )
    p.add_argument("model", help="ONNX model file (.onnx or .onnx.gz)")
    p.add_argument("spec", help="VNN-LIB property file (.vnnlib or .vnnlib.gz)")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds")
    p.add_argument("--out", help="also write the result (VNN-COMP format) to this file")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=int, default=None, help="random seed of the attack")
    p.add_argument("--workers", type=int, default=None,
                   help="processes searching together (default: the cores available, on small networks)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the search's helpers as tasks of this Ray cluster (pip install '.[cluster]')")
    p.add_argument("--config", help="YAML configuration file (see README)")
    p.add_argument("--engine", choices=("auto", "bab", "milp", "smt"), default=None)
    p.add_argument("--stop-after", choices=("attack", "ibp", "crown", "alpha", "complete"), default=None,
                   help="incomplete mode: stop after this stage and answer unknown if undecided")
    p.add_argument("--json", help="write the result with its statistics as JSON to this file")
    p.add_argument("--proof", metavar="FILE", help="on unsat, write a proof certificate (.npz) that "
                   "verify-check validates")
    p.add_argument("--certify", action="store_true", help="answer unsat only when the independent checker "
                   "accepts the certificate (else unknown)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="progress and statistics on stderr")
    g.add_argument("-q", "--quiet", action="store_true", help="only the result")
    return p


def format_result(status: str, x=None, y=None, spec=None) -> str:
    """VNN-COMP result text: the verdict line, then on sat the counterexample in the format of the
    spec's VNN-LIB version (``((X_0 v) ... (Y_0 v))`` for 1.0, see ``vnnlib.writer.write_assignment``)."""
    lines = [status]
    if x is not None and y is not None:
        from vnnlib.writer import write_assignment

        lines.append(write_assignment(spec, x, y))
    return "\n".join(lines) + "\n"


class _Reporter:
    """Writes the one result exactly once (normal path or watchdog)."""

    def __init__(self, out: str | None) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.done = False

    def emit(self, text: str) -> bool:
        with self.lock:
            if self.done:
                return False
            self.done = True
            sys.stdout.write(text)
            sys.stdout.flush()
            if self.out:
                try:
                    Path(self.out).write_text(text)
                except OSError as exc:
                    print(f"verify: error: cannot write {self.out}: {exc.strerror or exc}", file=sys.stderr)
            return True


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {}
    for key in ("device", "seed", "engine"):
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    if args.stop_after is not None:
        o["stop_after"] = args.stop_after
    if args.workers is not None:
        o.setdefault("bab", {})["workers"] = args.workers
    if args.ray is not None:
        o.setdefault("bab", {})["ray"] = args.ray
    if args.proof:
        o["proof"] = True
    if args.certify:
        o["certify"] = True
    return o


def _start_watchdog(reporter: _Reporter, args: argparse.Namespace, start: float, stats: dict) -> None:
    """Answer ``timeout`` (with the statistics the run has reported so far) when the run overstays."""
    timeout = args.timeout
    if timeout is None:
        return

    def fire() -> None:
        if reporter.emit(format_result("timeout")):
            log.warning("deadline passed: answered timeout")
            if args.json:
                from verifier.result import Result, Status

                timed_out = Result(Status.TIMEOUT, time=time.monotonic() - start, stats=dict(stats),
                                   message="deadline passed")
                _write_json(args.json, _record(timed_out, args))
            os._exit(EXIT_OK)

    timer = threading.Timer(max(0.0, timeout) + _WATCHDOG_GRACE, fire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    start = time.monotonic()
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="verify: %(message)s", stream=sys.stderr, force=True)
    reporter = _Reporter(args.out)
    live: dict = {}  # the run's statistics so far (``verify``'s ``stats``)
    _start_watchdog(reporter, args, start, live)
    try:
        from vnnlib.spec import SpecError

        try:
            _reuse_freed_memory()
            verify, load_config = _import_pipeline()

            for path, what in ((args.model, "model"), (args.spec, "spec")):
                if not Path(path).is_file():
                    raise _bad_input(f"{what} file not found: {path}")
            config = load_config(args.config, _overrides(args))
            remaining = None if args.timeout is None else args.timeout - (time.monotonic() - start)
            result = verify(args.model, args.spec, timeout=remaining, config=config, stats=live)
        except SpecError as exc:
            raise _bad_input(f"spec: {exc}") from None
    except VerifierError as exc:
        reporter.emit(format_result("error"))
        print(f"verify: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        reporter.emit(format_result("unknown"))
        return 130
    except Exception as exc:  # a bug of ours: report 'error', never a verdict
        reporter.emit(format_result("error"))
        log.debug("internal error", exc_info=True)
        print(f"verify: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    cex = result.counterexample
    if args.proof and result.proof is not None:
        _write_proof(args.proof, result.proof)
    if result.message and (args.proof or args.certify):
        log.warning("%s", result.message)
    reporter.emit(format_result(str(result.status), None if cex is None else cex.x, None if cex is None else cex.y,
                                result.spec))
    if args.verbose:
        stats = " ".join(f"{k}={v}" for k, v in result.stats.items())
        print(f"verify: {result.status} in {result.time:.2f}s {stats}", file=sys.stderr)
    if args.json:
        _write_json(args.json, _record(result, args))
    return EXIT_OK


def _import_pipeline():
    """``verify`` and ``load_config``.  The import creates torch's hundreds of thousands of long-lived
    objects: the cyclic garbage collector does not scan them while they load, and later collections skip
    them (frozen; they live as long as the process)."""
    gc.disable()
    try:
        from verifier.api import verify
        from verifier.config import load_config
    finally:
        gc.freeze()
        gc.enable()
    return verify, load_config


def _reuse_freed_memory() -> None:
    """Keep freed blocks below ``_KEEP_BELOW`` for reuse (glibc only; elsewhere nothing changes).  By
    default glibc serves every block above 32 MB from fresh pages and gives them back on free, so each
    big temporary tensor of a bound is faulted in anew: on wide networks the kernel's share of a run fell
    from about a quarter to a twentieth (peak memory about 1.4x).  The ``verify`` process only: an API
    caller's process keeps its allocator as it is."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
    mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW)


def _write_proof(path: str, proof) -> None:
    from verifier.certificate import save_proof

    try:
        save_proof(path, proof)
    except OSError as exc:
        print(f"verify: error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)


def _bad_input(message: str) -> VerifierError:
    err = VerifierError(message)
    err.exit_code = EXIT_BAD_INPUT
    return err


def _record(result, args: argparse.Namespace) -> dict:
    cex = result.counterexample
    return {
        "model": args.model, "spec": args.spec, "result": str(result.status), "time": result.time,
        "stats": result.stats, "message": result.message,
        "counterexample": None if cex is None else {"x": cex.x.tolist(), "y": cex.y.tolist()},
    }


def _write_json(path: str, record: dict) -> None:
    import json

    try:
        Path(path).write_text(json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        print(f"verify: error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)


def run() -> None:
    """Console-script entry: ``main``, then exit at once without the slow interpreter teardown
    (torch and onnxruntime take up to a second to unload; every output is flushed first)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
