"""Parse time of every VNN-LIB spec under a folder, as a table (and optionally CSV).

    python -m benchmarks.experiments.parse_specs [FOLDER] [--csv FILE] [--repeat N]

FOLDER defaults to $VERIFIER_BENCHMARKS, else ../shared/benchmarks/vnncomp2021
relative to the repository.  Each file is read once into memory and parsed
``--repeat`` times; the table shows the fastest parse (file reading and gzip
excluded), the number of cases and polytopes, and ends with the max and total.
A spec that fails to parse is listed with its error and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.paths import benchmarks_root
from vnnlib import SpecError, parse_spec


@dataclass(frozen=True)
class Timing:
    """One spec's parse: counts and the fastest of the repeats (ms); ``error`` if it failed."""

    file: str
    kbytes: float
    cases: int
    polytopes: int
    ms: float
    error: str = ""


def spec_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".vnnlib", ".vnnlib.gz")))


def time_one(path: Path, folder: Path, repeat: int) -> Timing:
    """Parse ``path`` ``repeat`` times from memory and keep the fastest."""
    data = path.read_bytes()
    text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8")
    name = str(path.relative_to(folder))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            spec = parse_spec(text, source=name)
        except SpecError as err:
            return Timing(name, len(data) / 1024, 0, 0, time.perf_counter() - start, str(err))
        best = min(best, time.perf_counter() - start)
    polys = sum(len(c.polytopes) for c in spec.cases)
    return Timing(name, len(data) / 1024, len(spec.cases), polys, best * 1e3)


def format_table(rows: list[Timing]) -> str:
    width = max([len(r.file) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'KB':>7}  {'cases':>5}  {'polytopes':>9}  {'ms':>8}"]
    for r in rows:
        tail = f"  ERROR {r.error}" if r.error else ""
        lines.append(f"{r.file:<{width}}  {r.kbytes:7.1f}  {r.cases:5d}  {r.polytopes:9d}  {r.ms:8.2f}{tail}")
    if rows:
        worst = max(rows, key=lambda r: r.ms)
        lines.append(f"max   {worst.ms:8.2f} ms  ({worst.file})")
        lines.append(f"total {sum(r.ms for r in rows):8.2f} ms  ({len(rows)} files)")
    return "\n".join(lines)


def write_csv(rows: list[Timing], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "kbytes", "cases", "polytopes", "ms", "error"])
        for r in rows:
            out.writerow([r.file, f"{r.kbytes:.1f}", r.cases, r.polytopes, f"{r.ms:.3f}", r.error])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=None, help="folder searched for *.vnnlib[.gz]")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV to this file")
    parser.add_argument("--repeat", type=int, default=3, help="parses per file; the fastest counts (default 3)")
    args = parser.parse_args(argv)
    folder = args.folder or benchmarks_root()
    if not folder.is_dir():
        print(f"parse_specs: no such folder: {folder}", file=sys.stderr)
        return 2
    files = spec_files(folder)
    if not files:
        print(f"parse_specs: no .vnnlib files under {folder}", file=sys.stderr)
        return 2
    rows = [time_one(p, folder, max(1, args.repeat)) for p in files]
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
