"""This process's memory: the machine's physical memory and the peak resident size (Linux's /proc)."""

from __future__ import annotations

import os


def reset_peak_memory() -> None:
    """Restart the kernel's count of this process's peak resident memory (Linux; elsewhere nothing)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory() -> float | None:
    """Bytes of this process's peak resident memory since ``reset_peak_memory`` (None where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def physical_memory() -> float:
    """Bytes of physical memory of this machine (8 GiB where the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 8.0 * 2**30
