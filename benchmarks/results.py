"""The results CSV: one row per finished instance, appended and flushed as runs finish.

The first six columns are VNN-COMP's (``benchmark,onnx,vnnlib,prepare_time,
result,run_time``); ours follow.  Other tools' CSVs (with or without a header,
2021 verdict words ``holds``/``violated`` included) are read by the same code.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TextIO

VERDICTS = ("sat", "unsat", "timeout", "unknown", "error")

_ALIASES = {
    "sat": "sat",
    "violated": "sat",
    "unsat": "unsat",
    "holds": "unsat",
    "timeout": "timeout",
    "timed_out": "timeout",
    "run_instance_timeout": "timeout",
    "unknown": "unknown",
}


def normalize_verdict(text: str) -> str:
    """One of ``VERDICTS`` for a verdict word as tools write it (anything unrecognised is error)."""
    return _ALIASES.get(text.strip().lower(), "error")


@dataclass(frozen=True)
class ResultRow:
    """One finished instance."""

    benchmark: str
    onnx: str
    vnnlib: str
    prepare_time: float
    result: str
    run_time: float
    timeout: float = 0.0  # the limit it ran under (after --timeout-cap); 0 when unknown
    exit_code: int = 0
    first_output: float = -1.0  # seconds from process start to its first byte on stdout; -1 when none
    cpu_time: float = -1.0  # user + system seconds of the whole child; -1 when unknown
    max_rss_mb: float = -1.0
    mode: str = ""
    threads: int = 0
    host: str = ""
    message: str = ""
    stats: str = ""  # the CLI's statistics as compact JSON (from ``verify --json``), when kept
    cex_check: str = ""  # for sat: ok | bad: why | unchecked: why (onnxruntime replay in the runner)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.benchmark, self.onnx, self.vnnlib)


COLUMNS = tuple(f.name for f in fields(ResultRow))
_TYPES = {f.name: f.type for f in fields(ResultRow)}
_CAST = {"float": float, "int": int, "str": str}


def _row_from(values: dict[str, str]) -> ResultRow:
    kwargs = {}
    for name, text in values.items():
        if name not in _TYPES or text is None:
            continue
        cast = _CAST[_TYPES[name]]
        try:
            kwargs[name] = cast(text) if text != "" or cast is str else None
        except ValueError:
            kwargs[name] = None
        if kwargs[name] is None:
            del kwargs[name]
    kwargs["result"] = normalize_verdict(values.get("result", ""))
    for required in ("prepare_time", "run_time"):
        kwargs.setdefault(required, 0.0)
    return ResultRow(**kwargs)


def read_results(path: Path) -> list[ResultRow]:
    """Rows of a results CSV (ours or another tool's; the header is optional)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    if header[:1] == ["benchmark"]:
        names, body = header, rows[1:]
    else:
        names, body = list(COLUMNS[:6]), rows
    out = []
    for line, row in enumerate(body, 2 if names is header else 1):
        if len(row) < 6:
            raise ValueError(f"{path}:{line}: expected at least 6 columns, got {len(row)}")
        out.append(_row_from(dict(zip(names, (c.strip() for c in row)))))
    return out


class ResultsWriter:
    """Appends rows to a results CSV, writing the header once and flushing every row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            _check_header(self.path)
        self._fh: TextIO = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._fh, fieldnames=COLUMNS)
        if fresh:
            self._csv.writeheader()
            self._flush()

    def write(self, row: ResultRow) -> None:
        self._csv.writerow({k: _fmt(v) for k, v in asdict(row).items()})
        self._flush()

    def _flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_header(path: Path) -> None:
    """Accept our header; rewrite an older version's (a subset of our columns) to the current one."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    if header == COLUMNS:
        return
    if not header or header[:6] != COLUMNS[:6] or not set(header) <= set(COLUMNS):
        raise ValueError(
            f"{path} exists but is not a results CSV of this tool (header {','.join(header)!r}); "
            "pick another --out or delete it"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(dict(zip(header, r)) for r in rows[1:])
    os.replace(tmp, path)


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
    if isinstance(value, str):
        return " ".join(value.split())[:2000]  # one line, bounded
    return value
