"""Proof certificates for ``unsat`` answers and their independent checker.

``format`` (numpy only) defines the file; ``check`` replays a certificate in rigorous float64 arithmetic
without any of the engine's bounding code.  Importing the package loads neither torch nor the engine
(the checker imports torch only to read the model).
"""

from __future__ import annotations

from verifier.certificate.check import CheckResult, UnsupportedCheckError, check_proof
from verifier.certificate.format import (
    CaseProof,
    LemmaProof,
    Proof,
    ProofFormatError,
    empty_case_proof,
    load_proof,
    proof_meta,
    save_proof,
)

__all__ = [
    "CaseProof", "CheckResult", "LemmaProof", "Proof", "ProofFormatError", "UnsupportedCheckError", "check_proof",
    "empty_case_proof", "load_proof", "proof_meta", "save_proof",
]

