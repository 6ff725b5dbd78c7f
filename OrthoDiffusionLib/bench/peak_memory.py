"""Peak memory of a piece of work: resident set size of this process (Linux ``/proc``) and CUDA allocations.

``with PeakMemory(device) as pm: work()`` then ``pm.rss_mib`` (peak RSS during the block, MiB; the kernel's high-water
mark ``VmHWM`` is reset on entry by writing ``5`` to ``/proc/self/clear_refs``, so earlier peaks do not count) and
``pm.cuda_mib`` (``torch.cuda.max_memory_allocated`` after a reset; ``None`` on CPU). Where the reset is not possible
or does not take effect (not Linux, no permission, a kernel that accepts the write but keeps the mark: checked by
reading the mark back) ``rss_mib`` is the process-lifetime peak and ``rss_is_lifetime`` says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

__all__ = ["PeakMemory", "current_peak_rss_mib", "current_rss_mib", "reset_peak_rss"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


#: After a reset the peak (VmHWM) may exceed the current RSS by at most this much (MiB; pages touched meanwhile).
_RESET_SLACK_MIB = 2.0


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0); True when it took effect: the write is accepted AND the
    peak then reads no more than the current RSS (some kernels accept the write without resetting the mark)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_mib("VmHWM"), _status_mib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + _RESET_SLACK_MIB


def _status_mib(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    """Resident set size of this process now, MiB (NaN off Linux)."""
    value = _status_mib("VmRSS")
    return float("nan") if value is None else value


def current_peak_rss_mib() -> float:
    """Peak RSS in MiB since the last reset (``VmHWM``), or the lifetime peak from ``getrusage`` off Linux."""
    value = _status_mib("VmHWM")
    if value is not None:
        return value
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


class PeakMemory:
    """Context manager measuring the peak RSS and (on CUDA) the peak allocated GPU memory of its block."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.rss_mib: float = float("nan")
        self.cuda_mib: Optional[float] = None
        self.rss_is_lifetime = False

    def __enter__(self) -> "PeakMemory":
        self.rss_is_lifetime = not reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.rss_mib = current_peak_rss_mib()
