"""The process-wide state of one run, set on entry and restored on exit: ``with runtime(config, net) as rt``.

torch's CPU thread count and the TF32 flags are global to the process; a run sets them once here (and
nowhere else) and puts back what it found, so that two ``verify()`` calls in one process do not
interfere.  The run's random numbers come from ``rt.generator``, seeded from the config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from verifier.bab.parallel import available_cores
from verifier.config import Config
from verifier.network import Conv, Dense, Network

_SMALL_NET = 1_000_000  # weights below which one CPU thread is fastest (measured on ACAS Xu) ...
# ... unless one forward pass takes this many multiply-adds: each bound of a conv net on large feature maps
# (cifar_biasfield: 11M) is then a few big operations, which torch's threads share well
_SMALL_WORK = 4_000_000


@dataclass(frozen=True, eq=False)
class Runtime:
    """What a run may use: its thread count and its seeded generator (on the network's device)."""

    threads: int
    generator: torch.Generator


@contextlib.contextmanager
def runtime(config: Config, net: Network) -> Iterator[Runtime]:
    """torch's CPU threads for ``net`` (``threads``), TF32 off (too imprecise for verification: bounds assume
    IEEE float32 matmuls), a generator seeded with ``config.seed``; the previous threads and flags come back
    on exit, also on an exception."""
    threads = choose_threads(net, config)
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield Runtime(threads, torch.Generator(device=net.device).manual_seed(config.seed))
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]


def choose_threads(net: Network, config: Config) -> int:
    """CPU threads for torch: the configured number, or 1 for small networks, else the run's cores
    (``bab.workers``, or all the machine's)."""
    if config.threads > 0:
        return config.threads
    weights = sum(t.numel() for node in net.nodes for t in vars(node.op).values() if isinstance(t, torch.Tensor))
    if weights < _SMALL_NET and forward_macs(net) < _SMALL_WORK:
        return 1
    return max(1, config.bab.workers or available_cores())


def forward_macs(net: Network) -> int:
    """Multiply-adds of one forward pass of one input through the dense and convolutional layers."""
    total = 0
    for node in net.nodes:
        if isinstance(node.op, Dense):
            total += node.op.weight.numel()
        elif isinstance(node.op, Conv):
            total += node.size * node.op.weight[0].numel()
    return total
