"""The ``verify-check MODEL SPEC PROOF`` command: one line, ``valid: ...`` (exit 0) or ``invalid: <reason>``
(exit 1); bad input prints ``error: <message>`` on stderr (exit 2)."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_VALID, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    p = argparse.ArgumentParser(prog="verify-check", description="Check a proof certificate of an unsat answer.",
                                epilog="Exit status: 0 valid, 1 invalid, 2 bad input.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("spec", help="VNN-LIB property file")
    p.add_argument("proof", help="certificate (.npz) written by verify")
    args = p.parse_args(argv)
    try:
        from verifier.certificate.check import check_proof
        from verifier.certificate.format import ProofFormatError
        from verifier.errors import VerifierError
        from vnnlib.spec import SpecError

        try:
            result = check_proof(args.model, args.spec, args.proof)
        except (ProofFormatError, VerifierError, SpecError, OSError) as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_ERROR
    except Exception as exc:  # a bug of ours: never a traceback, never 'valid'
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if result.valid:
        print(f"valid: {result.cases} cases, {result.nodes} nodes, {result.leaves} leaves checked in "
              f"{result.seconds:.2f} s (model read in {result.load_seconds:.2f} s)")
        return EXIT_VALID
    print(f"invalid: {result.reason}")
    return EXIT_INVALID


def run() -> None:
    """Console-script entry: ``main``, then exit without the slow interpreter teardown."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
