"""Scoring results against ground truth and other tools: decided, wrong, PAR-2, VNN-COMP score.

All tools are scored on the instances of the primary results CSV, each under
that instance's time limit as the primary run recorded it (its ``timeout``
column, else the ground truth's, else none).  An answer counts when it is
``sat``/``unsat``, within the limit (plus ``tolerance``) and not refuted by the
ground truth; one without known truth counts too but is listed as unconfirmed.
A refuted answer is *wrong*, whatever its time; so is a ``sat`` whose counterexample
the runner's onnxruntime replay rejected (``cex_check`` column starting with ``bad``).
VNN-COMP score: +10 per counted answer, -150 per wrong one.  PAR-2: mean time
per instance with 2x the limit for each one not counted.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.results import ResultRow, read_results
from benchmarks.truth import Truth, contradicts, match_key

SCORE_CORRECT = 10
SCORE_WRONG = -150

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Tool:
    """One results CSV under a label."""

    label: str
    rows: dict[Key, ResultRow]  # by match_key


@dataclass(frozen=True)
class Metrics:
    """Scores of one tool on one benchmark (or ``all``)."""

    tool: str
    benchmark: str
    total: int
    sat: int
    unsat: int
    decided: int
    wrong: int
    unconfirmed: int
    late: int
    timeout: int
    unknown: int
    error: int
    missing: int
    unsolved: int
    time_total: float
    time_median: float
    par2: float
    score: int


@dataclass(frozen=True)
class Finding:
    """An answer that deserves attention: wrong, contradicting another tool, or late."""

    kind: str  # wrong | disagree | late
    tool: str
    key: Key
    text: str


@dataclass(frozen=True)
class Summary:
    metrics: list[Metrics]
    findings: list[Finding]
    truth_known: int  # instances of the primary CSV with a known answer


def load_tool(path: Path, label: str | None = None) -> Tool:
    """A results CSV keyed for matching (later rows for the same instance win)."""
    return tool_from_rows(label or Path(path).stem, read_results(path))


def tool_from_rows(label: str, rows: list[ResultRow]) -> Tool:
    return Tool(label, {match_key(*r.key): r for r in rows})


def unique_labels(paths: list[Path]) -> list[str]:
    """File stems, made unique with their folder names where two are equal."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def _limit(key: Key, primary: Tool, truth_limits: dict[Key, float]) -> float:
    row = primary.rows.get(key)
    if row is not None and row.timeout > 0:
        return row.timeout
    return truth_limits.get(key, math.inf)


def _verdict_class(row: ResultRow | None, known: str | None, limit: float, tolerance: float) -> str:
    """correct | unconfirmed | wrong | late | timeout | unknown | error | missing."""
    if row is None:
        return "missing"
    if row.result not in ("sat", "unsat"):
        return row.result
    if contradicts(row.result, known) or (row.result == "sat" and row.cex_check.startswith("bad")):
        return "wrong"
    if row.run_time > limit + tolerance:
        return "late"
    return "correct" if known is not None else "unconfirmed"


def _metrics(tool: str, bench: str, keys: list[Key], rows: dict[Key, ResultRow], classes: dict[Key, str],
             limits: dict[Key, float]) -> Metrics:
    count = {c: sum(1 for k in keys if classes[k] == c) for c in
             ("correct", "unconfirmed", "wrong", "late", "timeout", "unknown", "error", "missing")}
    decided_keys = [k for k in keys if classes[k] in ("correct", "unconfirmed")]
    decided = len(decided_keys)
    times = [rows[k].run_time for k in decided_keys]
    par2_terms = [rows[k].run_time if k in decided_keys else 2 * limits[k] for k in keys]
    return Metrics(
        tool=tool,
        benchmark=bench,
        total=len(keys),
        sat=sum(1 for k in decided_keys if rows[k].result == "sat"),
        unsat=sum(1 for k in decided_keys if rows[k].result == "unsat"),
        decided=decided,
        wrong=count["wrong"],
        unconfirmed=count["unconfirmed"],
        late=count["late"],
        timeout=count["timeout"],
        unknown=count["unknown"],
        error=count["error"],
        missing=count["missing"],
        unsolved=len(keys) - decided,
        time_total=sum(rows[k].run_time for k in keys if k in rows),
        time_median=statistics.median(times) if times else math.nan,
        par2=sum(par2_terms) / len(keys) if keys else math.nan,
        score=SCORE_CORRECT * decided + SCORE_WRONG * count["wrong"],
    )


def truth_limits(path: Path | None) -> dict[Key, float]:
    """The ``timeout`` column of a ground-truth CSV, by match key (empty when absent)."""
    if path is None:
        return {}
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                out[match_key(row["benchmark"], row["onnx"], row["vnnlib"])] = float(row.get("timeout") or "")
            except (KeyError, ValueError):
                continue
    return out


def summarize(tools: list[Tool], truth: Truth | None, limits_from_truth: dict[Key, float] | None = None,
              tolerance: float = 0.0) -> Summary:
    """Score ``tools`` (the first is the primary run) on the primary's instances."""
    primary = tools[0]
    keys = list(primary.rows)
    known = {k: (truth.get(*k) if truth else None) for k in keys}
    limits = {k: _limit(k, primary, limits_from_truth or {}) for k in keys}
    benches = sorted({k[0] for k in keys})
    metrics, findings = [], []
    answers = {t.label: {k: t.rows[k].result for k in keys if k in t.rows} for t in tools}
    for tool in tools:
        classes = {k: _verdict_class(tool.rows.get(k), known[k], limits[k], tolerance) for k in keys}
        for bench in [*benches, "all"] if len(benches) > 1 else benches:
            sub = [k for k in keys if bench in ("all", k[0])]
            metrics.append(_metrics(tool.label, bench, sub, tool.rows, classes, limits))
        found = _findings(tool, keys, classes, known, answers, limits)
        findings += [f for f in found if f.kind != "late" or tool is primary]  # others ran under their own limits
    order = {"wrong": 0, "disagree": 1, "late": 2}
    findings.sort(key=lambda f: (order[f.kind], f.tool != primary.label))
    return Summary(metrics, findings, sum(v is not None for v in known.values()))


def _findings(tool: Tool, keys: list[Key], classes: dict[Key, str], known: dict[Key, str | None],
              answers: dict[str, dict[Key, str]], limits: dict[Key, float]) -> list[Finding]:
    out = []
    for k in keys:
        row = tool.rows.get(k)
        if classes[k] == "wrong":
            refuted = contradicts(row.result, known[k])
            why = f"ground truth is {known[k]}" if refuted else f"counterexample {row.cex_check}"
            out.append(Finding("wrong", tool.label, k, f"answered {row.result}, {why}"))
        elif classes[k] == "late":
            out.append(Finding("late", tool.label, k,
                               f"answered {row.result} after {row.run_time:.1f}s, limit {limits[k]:g}s"))
        if row is None or row.result not in ("sat", "unsat") or known[k] is not None:
            continue
        others = [f"{label} says {a[k]}" for label, a in answers.items()
                  if label != tool.label and a.get(k) in ("sat", "unsat") and a[k] != row.result]
        if others:
            out.append(Finding("disagree", tool.label, k, f"answered {row.result}; " + ", ".join(others)))
    return out


_COLUMNS = (
    ("tool", "{}"), ("benchmark", "{}"), ("total", "{}"), ("sat", "{}"), ("unsat", "{}"),
    ("decided", "{}"), ("wrong", "{}"), ("unconfirmed", "{}"), ("timeout", "{}"), ("unknown", "{}"),
    ("error", "{}"), ("late", "{}"), ("missing", "{}"), ("unsolved", "{}"), ("time_total", "{:.1f}"),
    ("time_median", "{:.2f}"), ("par2", "{:.1f}"), ("score", "{}"),
)


def format_findings(summary: Summary) -> str:
    """Wrong answers first and loudly, then disagreements between tools, then late answers."""
    lines = []
    wrong = [f for f in summary.findings if f.kind == "wrong"]
    if wrong:
        bar = "!" * 72
        lines += [bar, f"!!! {len(wrong)} WRONG ANSWER(S): contradicting the ground truth", bar]
    for f in summary.findings:
        tag = {"wrong": "WRONG", "disagree": "DISAGREE", "late": "late"}[f.kind]
        lines.append(f"{tag:>8}  {f.tool}: {f.key[0]} {f.key[1]} {f.key[2]}: {f.text}")
    return "\n".join(lines)


def format_table(metrics: list[Metrics]) -> str:
    """A plain-text table, one line per tool and benchmark."""
    head = [name for name, _ in _COLUMNS]
    body = [[fmt.format(getattr(m, name)) for name, fmt in _COLUMNS] for m in metrics]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def write_json(summary: Summary, path: Path, sources: dict[str, str]) -> None:
    data = {
        "sources": sources,
        "truth_known": summary.truth_known,
        "metrics": [_jsonable(asdict(m)) for m in summary.metrics],
        "findings": [{"kind": f.kind, "tool": f.tool, "instance": list(f.key), "text": f.text}
                     for f in summary.findings],
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_csv(summary: Summary, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[name for name, _ in _COLUMNS])
        writer.writeheader()
        for m in summary.metrics:
            writer.writerow({name: fmt.format(getattr(m, name)) for name, fmt in _COLUMNS})


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
