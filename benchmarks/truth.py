"""Ground truth: known sat/unsat answers, matched to results by benchmark and file base names.

Format (``ground_truth.csv``): ``benchmark,onnx,vnnlib,result,best_time_raw,
best_raw_tool,timeout``.  Only ``sat`` and ``unsat`` (2021 words ``violated``
and ``holds`` too) count as known; ``unknown`` and ``conflict`` rows are ignored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from benchmarks.results import ResultRow, normalize_verdict


def base_name(path: str) -> str:
    """``prop_1.vnnlib`` for ``vnnlib/prop_1.vnnlib.gz``."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".gz") else name


def match_key(benchmark: str, onnx: str, vnnlib: str) -> tuple[str, str, str]:
    """The key that results, ground truth and other tools' CSVs are matched on."""
    return (benchmark, base_name(onnx), base_name(vnnlib))


def contradicts(answer: str, truth: str | None) -> bool:
    """Whether ``answer`` is a verdict that the known ``truth`` refutes."""
    return truth is not None and answer in ("sat", "unsat") and answer != truth


@dataclass(frozen=True)
class Truth:
    """Known answers; lookups fall back to file names alone when the benchmark name differs."""

    by_key: dict[tuple[str, str, str], str]
    by_files: dict[tuple[str, str], str | None]  # None: the files occur in two benchmarks, ambiguous

    def get(self, benchmark: str, onnx: str, vnnlib: str) -> str | None:
        """``'sat'``, ``'unsat'`` or None (not known)."""
        key = match_key(benchmark, onnx, vnnlib)
        if key in self.by_key:
            return self.by_key[key]
        return self.by_files.get(key[1:])

    def __len__(self) -> int:
        return len(self.by_key)


def read_truth(path: Path) -> Truth:
    """Read a ground-truth CSV (header required)."""
    by_key: dict[tuple[str, str, str], str] = {}
    by_files: dict[tuple[str, str], str | None] = {}
    seen_in: dict[tuple[str, str], str] = {}  # file names -> the benchmark they were first seen in
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"benchmark", "onnx", "vnnlib", "result"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a ground-truth CSV, missing columns {sorted(missing)}")
        for row in reader:
            verdict = normalize_verdict(row["result"] or "")
            if verdict not in ("sat", "unsat"):
                continue
            key = match_key(row["benchmark"].strip(), row["onnx"].strip(), row["vnnlib"].strip())
            by_key[key] = verdict
            files = key[1:]
            first = seen_in.setdefault(files, key[0])
            by_files[files] = verdict if first == key[0] and by_files.get(files, verdict) == verdict else None
    return Truth(by_key, by_files)


def find_truth(instance_paths: list[Path]) -> Path | None:
    """A ``ground_truth.csv`` beside, or one or two folders above, the given instance lists."""
    for p in instance_paths:
        start = Path(p).resolve()
        folder = start if start.is_dir() else start.parent
        for candidate in (folder, folder.parent, folder.parent.parent):
            if (candidate / "ground_truth.csv").is_file():
                return candidate / "ground_truth.csv"
    return None


def best_known_rows(path: Path) -> list[ResultRow]:
    """The ground truth's best time per known instance, as results of a virtual best tool."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            verdict = normalize_verdict(row.get("result") or "")
            try:
                seconds = float(row.get("best_time_raw") or "")
                limit = float(row.get("timeout") or 0)
            except ValueError:
                continue
            if verdict in ("sat", "unsat"):
                rows.append(ResultRow(row["benchmark"], row["onnx"], row["vnnlib"], 0.0, verdict, seconds, limit))
    return rows
