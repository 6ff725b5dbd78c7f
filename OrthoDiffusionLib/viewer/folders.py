"""Server-side folder browsing for the viewer's folder picker (the browser cannot see the server's disk)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Union

from ..errors import MissingPathError
from ..inference.result_folder import is_result_folder


def list_folder(folder: Union[str, os.PathLike], show_hidden: bool = False) -> List[Dict[str, object]]:
    """Sub-folders of ``folder``, sorted by name, as ``{"name", "path", "kind"}`` rows.

    ``kind`` is ``"result"`` for a folder holding ``diagnosis.json`` and ``"folder"`` otherwise (whether a folder holds
    MRI is only known after reading it; opening one that holds none gives the loader's error). Unreadable entries are
    skipped.

    Raises:
        MissingPathError: ``folder`` is not an existing folder.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingPathError("no such folder", folder)
    rows = []
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        raise MissingPathError("the folder cannot be read (permission denied)", folder) from None
    for entry in entries:
        if not show_hidden and entry.name.startswith("."):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        path = Path(entry.path)
        rows.append({"name": entry.name, "path": str(path), "kind": "result" if is_result_folder(path) else "folder"})
    rows.sort(key=lambda r: str(r["name"]).lower())
    return rows
