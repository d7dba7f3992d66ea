"""Independent replay of a reported counterexample through onnxruntime, with no tolerance.

A ``sat`` answer is only as good as its counterexample.  VNN-COMP's rule, with
zero tolerance: the input values as written must lie in an input box of the
spec, the model runs on them cast to its input dtype, and the onnxruntime
outputs must lie in one of that box's unsafe polytopes (strict rows strictly).
So a written bound that the model's dtype cannot represent is a valid input,
although its cast lies just outside the box.  This re-checks what any tool
printed, after the fact, in the runner.
Sessions use one thread and no torch, so a forking parent can run it safely.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_ENTRY = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")
_HEADER = re.compile(r"^\s*\S+\s+\S+\s*\[[\d,\s]*\]\s*$")  # VNN-LIB 2.0: NAME TYPE [d0,d1]
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def parse_assignment(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` (float64) from VNN-COMP output ``sat ((X_0 v) ... (Y_0 v) ...)``, or from the
    VNN-LIB 2.0 assignment (after ``sat``: a line ``NAME TYPE [shape]`` and its values, one per line,
    for the input, then the same for the output)."""
    if not _ENTRY.search(text):
        return _parse_v2(text)
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, number in _ENTRY.findall(text):
        values[kind][int(index)] = float(number)
    out = []
    for kind in ("X", "Y"):
        got = values[kind]
        missing = sorted(set(range(len(got))) - set(got))
        if missing:
            raise ValueError(f"{kind}_{missing[0]} missing from the counterexample")
        out.append(np.array([got[i] for i in range(len(got))], dtype=np.float64))
    if out[0].size == 0:
        raise ValueError("no X_i values after sat")
    return out[0], out[1]


def _parse_v2(text: str) -> tuple[np.ndarray, np.ndarray]:
    blocks: list[list[float]] = []
    for line in text.splitlines():
        if _HEADER.match(line):
            blocks.append([])
        elif line.strip() and blocks:
            blocks[-1].append(float(line))
    if len(blocks) < 2 or not blocks[0]:
        raise ValueError("no X_i values after sat")
    return np.array(blocks[0], dtype=np.float64), np.array(blocks[1], dtype=np.float64)


def check_counterexample(onnx_path: Path, vnnlib_path: Path, text: str) -> str:
    """``'ok'`` if the counterexample in ``text`` is valid, else ``'bad: <why>'``.

    ``'unchecked: <why>'`` when the replay itself is impossible (model or spec unreadable here).
    """
    try:
        return _check(onnx_path, vnnlib_path, text)
    except Exception as exc:  # onnxruntime and the reader raise many types; none is a verdict
        return f"unchecked: {type(exc).__name__}: {exc}"


def _check(onnx_path: Path, vnnlib_path: Path, text: str) -> str:
    import onnxruntime as ort

    from vnnlib.reader import read_spec

    try:
        x, _ = parse_assignment(text)
    except ValueError as exc:
        return f"bad: {exc}"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = _ORT_TYPES.get(inp.type, np.float32)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    if x.size != int(np.prod(shape)):
        return f"bad: {x.size} X values for a model input of {int(np.prod(shape))}"
    y = np.asarray(session.run(None, {inp.name: x.astype(dtype).reshape(shape)})[0], dtype=np.float64).reshape(-1)
    spec = read_spec(vnnlib_path)
    if not any(np.all(x >= c.lower) and np.all(x <= c.upper) for c in spec.cases):  # as written
        return "bad: X lies outside every input box of the spec"
    if not spec.is_violated_by(x, y):
        return "bad: onnxruntime outputs on X are not in an unsafe region"
    return "ok"
