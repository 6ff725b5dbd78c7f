"""The model registry: shipped models (``Resources/models.json``) plus the user's imported ones.

Registry JSON (both files)::

    {"models": [{"name", "file", "sha256", "size_bytes", "anatomy", "description", "default": bool,
                 "cpu_seconds": float | null, "gpu_seconds": float | null, "rebuild_command": "..."}]}

``file`` is relative to the folder of the registry's ``models/`` directory (``Resources/models/`` for the shipped
registry, ``$ORTHODIFFUSION_HOME/models/`` for the user's) or absolute. The user registry lives in
``$ORTHODIFFUSION_HOME`` (default ``~/.local/share/orthodiffusion``); ``orthodiffusion models import FILE`` verifies
a bundle, copies it there and registers it (:mod:`OrthoDiffusionLib.cli.models`). A user entry with the name of a
shipped one takes precedence.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..atomic import atomic_path
from .format import BUNDLE_SUFFIX, bundle_anatomy, load_bundle
from ..model.checkpoints import file_sha256
from ..errors import BundleError, CorruptFileError, InputError, MissingPathError

__all__ = ["RegisteredModel", "orthodiffusion_home", "shipped_registry_path", "user_registry_path", "list_models",
           "default_model", "resolve_model", "model_anatomy", "import_model"]

PathLike = Union[str, os.PathLike]


@dataclass
class RegisteredModel:
    """One registry entry with ``file`` resolved to an absolute path and ``origin`` = "shipped" | "user"."""

    name: str
    file: Path
    sha256: str
    size_bytes: Optional[int] = None
    anatomy: str = "knee"
    description: str = ""
    default: bool = False
    cpu_seconds: Optional[float] = None
    gpu_seconds: Optional[float] = None
    rebuild_command: str = ""
    origin: str = "shipped"

    @property
    def present(self) -> bool:
        return self.file.is_file()

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["file"] = str(self.file)
        d["present"] = self.present
        return d


def orthodiffusion_home() -> Path:
    """``$ORTHODIFFUSION_HOME`` or ``~/.local/share/orthodiffusion``."""
    env = os.environ.get("ORTHODIFFUSION_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "orthodiffusion"


def shipped_registry_path() -> Path:
    from ..labels import resource_path

    return Path(str(resource_path("models.json")))


def user_registry_path() -> Path:
    return orthodiffusion_home() / "models.json"


def _read_registry(path: Path, origin: str) -> List[RegisteredModel]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["models"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptFileError(f"not a model registry ({e})", path) from None
    base = path.parent / "models"
    out = []
    for e in entries:
        try:
            f = Path(e["file"])
            out.append(RegisteredModel(
                name=str(e["name"]), file=f if f.is_absolute() else base / f, sha256=str(e["sha256"]),
                size_bytes=e.get("size_bytes"), anatomy=e.get("anatomy", "knee"),
                description=e.get("description", ""), default=bool(e.get("default", False)),
                cpu_seconds=e.get("cpu_seconds"), gpu_seconds=e.get("gpu_seconds"),
                rebuild_command=e.get("rebuild_command", ""), origin=origin))
        except (KeyError, TypeError) as err:
            raise CorruptFileError(f"registry entry {e!r} lacks {err}", path) from None
    return out


def list_models() -> List[RegisteredModel]:
    """Shipped then user models; a user entry replaces a shipped one of the same name."""
    merged: Dict[str, RegisteredModel] = {}
    for m in _read_registry(shipped_registry_path(), "shipped") + _read_registry(user_registry_path(), "user"):
        merged[m.name] = m
    return list(merged.values())


def default_model() -> RegisteredModel:
    """The registry's default model (a user default wins over the shipped one); its file must be present.

    Raises BundleError when no model is marked default or its file is absent."""
    models = list_models()
    defaults = [m for m in models if m.default]
    if not defaults:
        raise BundleError("no default model is registered (register one with `orthodiffusion models import FILE "
                          "--default` or pass --model BUNDLE)", shipped_registry_path())
    chosen = sorted(defaults, key=lambda m: m.origin != "user")[0]
    if not chosen.present:
        raise MissingPathError(f"the default model {chosen.name!r} is registered but its file is absent (rebuild "
                               f"it with: {chosen.rebuild_command or 'see the README'})", chosen.file)
    return chosen


def resolve_model(model: Optional[PathLike]) -> Path:
    """A bundle path from ``model``: None -> the default model, an existing file -> itself, else a registered name.

    A registered model's file must match its registered sha256 (BundleError otherwise)."""
    if model is None:
        entry = default_model()
    else:
        path = Path(model)
        if path.is_file():
            return path
        entry = next((m for m in list_models() if m.name == str(model)), None)
        if entry is None:
            raise MissingPathError("no such model file, and no registered model has this name", path)
        if not entry.present:
            raise MissingPathError(f"registered model {entry.name!r} has no file", entry.file)
    if file_sha256(entry.file) != entry.sha256:
        raise BundleError(f"file does not match the sha256 registered for model {entry.name!r}", entry.file)
    return entry.file


def model_anatomy(model: Optional[PathLike]) -> str:
    """The anatomy of a model (None = the default model, a bundle file, or a registered name) without loading it:
    the registry entry's, or the bundle header's for a file."""
    if model is not None and Path(model).is_file():
        return bundle_anatomy(model)
    if model is None:
        return default_model().anatomy
    entry = next((m for m in list_models() if m.name == str(model)), None)
    if entry is None:
        raise MissingPathError("no such model file, and no registered model has this name", model)
    return entry.anatomy


def _write_registry(path: Path, models: List[RegisteredModel]) -> None:
    entries = []
    for m in models:
        d = m.as_dict()
        d.pop("origin")
        d.pop("present")
        try:
            d["file"] = str(m.file.relative_to(path.parent / "models"))
        except ValueError:
            d["file"] = str(m.file)
        entries.append(d)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps({"models": entries}, indent=2) + "\n", encoding="utf-8")


def import_model(file: PathLike, name: Optional[str] = None, make_default: bool = False) -> RegisteredModel:
    """Verify a bundle (:func:`load_bundle`), copy it into ``$ORTHODIFFUSION_HOME/models/NAME.odbundle`` and register
    it in the user registry (replacing an entry of the same name). Returns the new entry."""
    src = Path(file)
    bundle = load_bundle(src)
    name = name or bundle.name
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InputError(f"invalid model name {name!r}", src)
    dest = orthodiffusion_home() / "models" / f"{name}{BUNDLE_SUFFIX}"
    if src.resolve() != dest.resolve():
        with atomic_path(dest, suffix=BUNDLE_SUFFIX) as tmp:
            shutil.copyfile(src, tmp)
    if file_sha256(dest) != bundle.sha256:
        raise BundleError("the copy differs from the verified file", dest)
    entry = RegisteredModel(name=name, file=dest, sha256=bundle.sha256, size_bytes=dest.stat().st_size,
                            anatomy=str(bundle.meta.get("anatomy", "knee")),
                            description=str(bundle.meta.get("description", "")), default=make_default,
                            origin="user")
    users = [m for m in _read_registry(user_registry_path(), "user") if m.name != name]
    if make_default:
        for m in users:
            m.default = False
    _write_registry(user_registry_path(), users + [entry])
    return entry
