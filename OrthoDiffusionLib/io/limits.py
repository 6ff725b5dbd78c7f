"""Size limits checked from headers before any voxel is read or decompressed.

A few hundred bytes of gzip can inflate to many GiB, and a DICOM header can claim any number of rows, columns and
frames; both would exhaust memory long before a useful error. A volume is refused when it would need more than
:func:`max_volume_bytes` as float32 (the readers' working type) or as stored, whichever is larger.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from ..errors import InputError

#: Default limit: 2 GiB (float32), e.g. 1024 x 1024 x 512 voxels; a knee series is usually < 0.2 GiB.
DEFAULT_MAX_VOLUME_GIB = 2.0
ENV_MAX_VOLUME_GIB = "ORTHODIFFUSION_MAX_VOLUME_GIB"


def max_volume_bytes() -> int:
    """The limit in bytes: ``$ORTHODIFFUSION_MAX_VOLUME_GIB`` when set to a positive number, else the default."""
    text = os.environ.get(ENV_MAX_VOLUME_GIB, "")
    try:
        gib = float(text) if text else DEFAULT_MAX_VOLUME_GIB
    except ValueError:
        gib = DEFAULT_MAX_VOLUME_GIB
    return int((gib if gib > 0 else DEFAULT_MAX_VOLUME_GIB) * 2**30)


def check_volume_size(dims: Sequence[int], bytes_per_voxel: int, path: Union[str, os.PathLike],
                      what: Optional[str] = None) -> None:
    """Raise :class:`InputError` naming ``path`` when a volume of ``dims`` voxels would exceed the limit.

    Args:
        dims: voxels per axis (any order), from the header.
        bytes_per_voxel: bytes per voxel as stored (float32 working copies are counted as 4).
        path: the file or folder named in the message.
        what: how the header was read, for the message (e.g. "NIfTI header").
    """
    n = 1
    for d in dims:
        n *= max(0, int(d))
    need = n * max(4, int(bytes_per_voxel))
    limit = max_volume_bytes()
    if need > limit:
        shape = " x ".join(str(int(d)) for d in dims)
        raise InputError(f"{what or 'the header'} describes a volume of {shape} voxels ({need / 2**30:.1f} GiB in "
                         f"memory), more than the {limit / 2**30:.1f} GiB limit (set {ENV_MAX_VOLUME_GIB} to raise "
                         "it); not read", path)


__all__ = ["DEFAULT_MAX_VOLUME_GIB", "ENV_MAX_VOLUME_GIB", "max_volume_bytes", "check_volume_size"]
