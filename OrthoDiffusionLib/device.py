"""Where the networks run and at which precision: the one device resolver and the one autocast helper.

Every entry point (``Predictor``, the trainers, the benchmarks) takes a device name and a precision name and turns
them into torch objects here, so ``auto``, ``cuda:N`` and ``bf16`` mean the same everywhere. torch is imported inside
the functions: importing this module stays cheap.
"""
from __future__ import annotations

from typing import Any, Union

from .errors import InputError

#: Device names every command accepts.
DEVICE_HELP = "auto (CUDA when available) | cpu | cuda | cuda:N"

#: Numeric precisions: ``fp32`` (the reference numbers) or ``bf16`` (bfloat16 autocast of the networks).
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: Any = "auto"):
    """A ``torch.device`` from ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or a
    ``torch.device``. Raises :class:`InputError` for an unknown name or a CUDA device on a machine without one."""
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} asked for, but no CUDA device is available")
    return dev


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else :class:`InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def precision_autocast(device: Union[str, Any], precision: str):
    """The autocast context of ``precision`` on ``device`` (a ``torch.device`` or its type name): bfloat16 autocast
    for ``bf16``, a disabled (no-op) autocast for ``fp32``."""
    import torch

    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")
