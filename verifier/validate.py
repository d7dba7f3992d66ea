"""Strict counterexample validation: replay through onnxruntime on the original model.

VNN-COMP's rule, with zero tolerance everywhere: the values *as written* in the
counterexample must lie in the input box of a spec case, the model is run on
them cast to its input dtype, and the onnxruntime outputs must lie in one of
that case's unsafe polytopes (strict rows strictly).  The written values are
float64 (printed at full precision), so a box bound that the model's dtype
cannot represent (a fixed input at such a value) still admits counterexamples.
This is the only place that creates counterexamples.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import numpy as np

from verifier.files import is_gzipped, read_model_bytes
from verifier.result import Counterexample
from vnnlib.spec import Case, Spec

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class Replayer:
    """An onnxruntime session on the original ONNX file (plain or gzipped), run one sample at a time.

    The session is opened on first use: a run that proves the property never needs it.
    """

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)

    def __getstate__(self) -> dict:
        # a copy (e.g. for a branch-and-bound helper on another machine) carries the file, not the session
        return {"model_path": self.model_path, "data": self.model_path.read_bytes()}

    def __setstate__(self, state: dict) -> None:
        path = Path(state["model_path"])
        if not (path.is_file() and path.read_bytes() == state["data"]):
            path = Path(tempfile.mkdtemp(prefix="verify-model-")) / path.name
            path.write_bytes(state["data"])
        self.model_path = path

    @functools.cached_property
    def session(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # a plain file by its path (onnxruntime then finds external data beside it), a gzipped one unpacked
        source = read_model_bytes(self.model_path) if is_gzipped(self.model_path) else str(self.model_path)
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])

    @functools.cached_property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @functools.cached_property
    def dtype(self) -> type:
        return _ORT_TYPES.get(self.session.get_inputs()[0].type, np.float32)

    @functools.cached_property
    def shape(self) -> list[int]:
        return [d if isinstance(d, int) and d > 0 else 1 for d in self.session.get_inputs()[0].shape]

    @functools.cached_property
    def available(self) -> bool:
        """Whether onnxruntime can open the model (if not, no candidate can be confirmed); warns once."""
        try:
            _ = self.session
        except Exception as e:  # onnxruntime's own exception types; any failure means no replay
            log.warning("onnxruntime cannot open %s (%s): no counterexample can be confirmed", self.model_path, e)
            return False
        return True

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flat outputs of the model on flat input ``x`` (already in the model dtype)."""
        feed = {self.input_name: np.asarray(x, dtype=self.dtype).reshape(self.shape)}
        return np.asarray(self.session.run(None, feed)[0]).reshape(-1)


def snap_into_box(x: np.ndarray, case: Case, ulps: int = 4) -> np.ndarray | None:
    """``x`` as float64, clipped into the case's box if it lies outside by at most ``ulps`` float32 units
    in the last place (the rounding of a candidate computed in float32); else None."""
    xc = np.asarray(x, dtype=np.float64).reshape(-1)
    if xc.shape != case.lower.shape or not np.all(np.isfinite(xc)):
        return None
    inside = np.clip(xc, case.lower, case.upper)
    if np.any(np.abs(inside - xc) > ulps * np.spacing(np.abs(xc).astype(np.float32)).astype(np.float64)):
        return None
    return inside


def validate(replayer: Replayer, spec: Spec, x: np.ndarray, case_index: int | None = None) -> Counterexample | None:
    """A strictly validated counterexample from candidate ``x``, or None.

    The candidate is snapped into the box of each case tried (``case_index``, or every case); the
    snapped float64 values, each cast to the model's input dtype where the cast stays in the box, are the
    counterexample as written, and the model runs on them cast to its input dtype.
    """
    cases = range(len(spec.cases)) if case_index is None else [case_index]
    if not replayer.available:
        return None
    for c in cases:
        case = spec.cases[c]
        xc = snap_into_box(x, case)
        if xc is None:
            continue
        # write the values the model runs on where they lie in the box too: then a checker that casts
        # the written values to the model's dtype before checking the box (VNN-COMP 2026's, for
        # VNN-LIB 2.0) sees the same point
        cast = xc.astype(replayer.dtype).astype(np.float64)
        xc = np.where((case.lower <= cast) & (cast <= case.upper), cast, xc)
        y = replayer.run(xc.astype(replayer.dtype))
        if spec.is_violated_by(xc, y.astype(np.float64)):
            return Counterexample(x=xc, y=y)
    return None


def validate_counterexample(model_path: str | Path, spec: Spec, x: np.ndarray) -> Counterexample | None:
    """One-shot form of ``validate`` for scripts and tests."""
    return validate(Replayer(model_path), spec, x)
