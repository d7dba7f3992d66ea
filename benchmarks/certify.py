"""One instance with a proof certificate, then the independent checker: for ``verify-bench --command``.

    verify-bench run DIR --command 'python3 -m benchmarks.certify {onnx} {vnnlib} {timeout} {results} OUT.jsonl'

runs ``verify --proof`` and, on ``unsat``, ``verify-check`` on the certificate, each in a fresh process;
the verdict goes to ``{results}`` as ``verify`` wrote it, and one JSON line per instance to ``OUT.jsonl``
(verify's and the checker's wall times, the certificate's size and tree, the checker's verdict).
``python3 -m benchmarks.certify --summary OUT.jsonl`` prints the totals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(onnx: str, vnnlib: str, timeout: str, results: str, record: str) -> int:
    with tempfile.TemporaryDirectory(prefix="certify-") as tmp:
        proof = Path(tmp) / "proof.npz"
        t = time.monotonic()
        solved = subprocess.run(["verify", onnx, vnnlib, "--timeout", timeout, "--out", results, "--proof", str(proof)],
                                capture_output=True, text=True)
        verify_time = time.monotonic() - t
        verdict = solved.stdout.split("\n", 1)[0].strip()
        entry = {"onnx": Path(onnx).name, "vnnlib": Path(vnnlib).name, "result": verdict,
                 "verify_time": round(verify_time, 3), "proof_bytes": None, "check": None, "check_time": None,
                 "message": solved.stderr.strip().splitlines()[-1] if solved.stderr.strip() else ""}
        if verdict == "unsat" and proof.is_file():
            entry["proof_bytes"] = proof.stat().st_size
            t = time.monotonic()
            checked = subprocess.run(["verify-check", onnx, vnnlib, str(proof)], capture_output=True, text=True)
            entry["check_time"] = round(time.monotonic() - t, 3)
            entry["check"] = (checked.stdout or checked.stderr).strip()
    with open(record, "a") as f:
        f.write(json.dumps(entry) + "\n")
    sys.stdout.write(solved.stdout)
    return solved.returncode


def summary(record: str) -> str:
    """Totals of a record file: unsat answers, certificates, valid ones, times and sizes."""
    rows = [json.loads(line) for line in Path(record).read_text().splitlines() if line.strip()]
    unsat = [r for r in rows if r["result"] == "unsat"]
    with_proof = [r for r in unsat if r["proof_bytes"] is not None]
    valid = [r for r in with_proof if (r["check"] or "").startswith("valid")]
    solve = sum(r["verify_time"] for r in unsat)
    check = sum(r["check_time"] or 0.0 for r in with_proof)
    sizes = sorted(r["proof_bytes"] for r in with_proof)
    lines = [f"{len(rows)} instances, {len(unsat)} unsat, {len(with_proof)} with a certificate, {len(valid)} valid",
             f"unsat solving {solve:.1f} s, checking {check:.1f} s ({100 * check / max(solve, 1e-9):.0f} %)"]
    if sizes:
        lines.append(f"certificate bytes: median {sizes[len(sizes) // 2]}, max {sizes[-1]}, total {sum(sizes)}")
    for r in unsat:
        if r not in valid:
            lines.append(f"  {r['onnx']} {r['vnnlib']}: {r['check'] or r['message']}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summary"]:
        print(summary(sys.argv[2]))
        sys.exit(0)
    sys.exit(run(*sys.argv[1:6]))
