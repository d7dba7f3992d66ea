"""Checks and normalization of the arguments shared by every bounding function."""

from __future__ import annotations

import functools
import logging

import torch

from verifier.bounds.types import Domains, IntermediateBounds, Tensor
from verifier.network import Network

log = logging.getLogger(__name__)


def check_no_tf32(device: torch.device) -> None:
    """Raise ``ValueError`` when a bound would run on CUDA with TF32 matmuls on: they are too imprecise for
    verification (the rounding terms assume IEEE arithmetic).  A run turns TF32 off once and restores it
    after (``verifier.runtime``); a caller outside a run does the same (``with runtime(config, net):``)."""
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32):
        raise ValueError("TF32 is on: bounds on CUDA need it off (run them inside verifier.runtime.runtime)")


def check_domains(net: Network, domains: Domains) -> None:
    """Raise ``ValueError`` (one line) when ``domains`` does not fit ``net``."""
    lo, hi = domains.lower, domains.upper
    if lo.dim() != 2 or lo.shape != hi.shape or lo.shape[1] != net.n_inputs:
        raise ValueError(
            f"domains need lower/upper of shape (B, {net.n_inputs}), got {tuple(lo.shape)} "
            f"and {tuple(hi.shape)}"
        )
    if lo.dtype != net.dtype or lo.device != net.device:
        raise ValueError(
            f"domains are {lo.dtype} on {lo.device} but the network is {net.dtype} on {net.device}; "
            "use net.to(...)"
        )
    if bool((~(lo <= hi)).any()):  # also catches NaN
        raise ValueError("domains have an input with lower > upper (or NaN)")
    if domains.splits is not None:
        relus = net.relu_indices
        if len(domains.splits) != len(relus):
            raise ValueError(f"splits has {len(domains.splits)} layers, the network {len(relus)} relus")
        for k, (s, r) in enumerate(zip(domains.splits, relus, strict=True)):
            if s.shape != (lo.shape[0], net.nodes[r].size):
                raise ValueError(f"splits[{k}] has shape {tuple(s.shape)}, expected "
                                 f"({lo.shape[0]}, {net.nodes[r].size})")


def check_known(net: Network, known: IntermediateBounds | None, batch: int, reuse: int = 0) -> None:
    """Raise ``ValueError`` when ``known`` does not fit ``net`` and the batch."""
    if reuse and known is None:
        raise ValueError("reuse_known needs known bounds")
    if known is None:
        return
    relus = net.relu_indices
    if len(known.lower) != len(relus) or len(known.upper) != len(relus):
        raise ValueError(f"known bounds have {len(known.lower)} layers, the network {len(relus)} relus")
    for k, r in enumerate(relus):
        for t in (known.lower[k], known.upper[k]):
            if t.dim() != 2 or t.shape[0] not in (1, batch) or t.shape[1] != net.nodes[r].size:
                raise ValueError(f"known bounds of relu layer {k} have shape {tuple(t.shape)}")


def spec_rows(net: Network, batch: int, C: Tensor | None, d: Tensor | None) -> tuple[Tensor, Tensor]:
    """``C`` as ``(B, S, n_out)`` and ``d`` as ``(B, S)``; ``None`` means the identity and zero."""
    dtype, device = net.dtype, net.device
    if C is None:
        C = torch.eye(net.n_outputs, dtype=dtype, device=device)
    C = C.to(dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    if C.dim() != 3 or C.shape[0] not in (1, batch) or C.shape[2] != net.n_outputs:
        raise ValueError(f"C must be (B or 1, S, {net.n_outputs}), got {tuple(C.shape)}")
    S = C.shape[1]
    if d is None:
        d = torch.zeros(1, S, dtype=dtype, device=device)
    d = d.to(dtype=dtype, device=device)
    if d.dim() == 1:
        d = d.unsqueeze(0)
    if d.dim() != 2 or d.shape[0] not in (1, batch) or d.shape[1] != S:
        raise ValueError(f"d must be (B or 1, {S}), got {tuple(d.shape)}")
    return C.expand(batch, -1, -1), d.expand(batch, -1)


@functools.lru_cache(maxsize=4)
def float32_copy(net: Network) -> Network:
    """A float32 copy of ``net`` for estimates (the last few networks are kept)."""
    return net.to(dtype=torch.float32)
