"""Adam (Kingma and Ba 2015) for the few tensors of slopes and multipliers.

A small in-place implementation: ``torch.optim.Adam`` costs about a second of
imports on first use, which a verifier that answers easy instances in
milliseconds cannot afford.
"""

from __future__ import annotations

import torch

from verifier.bounds.types import Tensor


class Adam:
    """Adam over groups of leaf tensors, each group with its own step size, decayed per step."""

    def __init__(self, groups: list[tuple[list[Tensor], float]], decay: float = 1.0,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.groups = [(list(params), lr) for params, lr in groups]
        self.decay, self.beta1, self.beta2, self.eps = decay, beta1, beta2, eps
        self.m = [[torch.zeros_like(p) for p in params] for params, _ in self.groups]
        self.v = [[torch.zeros_like(p) for p in params] for params, _ in self.groups]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        """One update from the ``.grad`` of every tensor (tensors without a gradient are skipped)."""
        self.t += 1
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        scale = self.decay ** (self.t - 1)
        for (params, lr), ms, vs in zip(self.groups, self.m, self.v, strict=True):
            for p, m, v in zip(params, ms, vs, strict=True):
                if p.grad is None:
                    continue
                m.mul_(self.beta1).add_(p.grad, alpha=1 - self.beta1)
                v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr * scale / c1)

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None
