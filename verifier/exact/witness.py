"""Candidate inputs from a solver: snapped into the box and checked with our forward pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from verifier.forward import forward
from verifier.network import Network
from verifier.validate import snap_into_box
from vnnlib.spec import Case, Polytope

Accept = Callable[[np.ndarray], bool]  # a caller's own test of a candidate (e.g. the strict onnxruntime replay)


def confirmed(net: Network, x: np.ndarray, case: Case, poly: Polytope, accept: Accept | None = None
              ) -> np.ndarray | None:
    """``x`` clipped into the box (float64), if ``f(x)`` lies in ``poly`` (and ``accept`` takes it); else None.

    This is a filter only: the caller still replays the candidate through onnxruntime.
    """
    snapped = snap_into_box(x, case)
    if snapped is None:
        return None
    with torch.no_grad():
        y = forward(net, torch.as_tensor(snapped, dtype=net.dtype, device=net.device)[None])
    y = y.reshape(-1).double().cpu().numpy()
    if not poly.contains(y) or (accept is not None and not accept(snapped.astype(np.float64))):
        return None
    return snapped.astype(np.float64)
