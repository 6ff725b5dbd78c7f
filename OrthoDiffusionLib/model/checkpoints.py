"""Backbone weights on disk: the authors' ``model.pt`` files (read safely) and our safetensors backbone files.

Authors' files (``train_diffusion_pose_{0,1,2}/model.pt``): a dict saved by ``torch.save`` holding ``step``, ``model``,
``ema`` and ``opt``; the denoiser weights are the ``ema`` entries prefixed ``denoise_fn.`` or ``denoise_fn.module.``
(other entries there are the diffusion schedule's buffers). They are read with ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain containers; anything else (a pickle that would call arbitrary code, e.g. through a
``__reduce__`` payload) is refused -> :class:`~OrthoDiffusionLib.errors.UnsafeFileError`; nothing from it runs.
Pose numbering of the published files, inferred from the authors' CSV column order (not stated by them):
0 = axial, 1 = sagittal, 2 = coronal.

Our backbone files (``backbone_{plane}.safetensors``): the denoiser state dict (float32) with metadata ``format``,
``format_version``, ``plane``, ``config`` (JSON constructor arguments of :class:`DiffusionUNet`), ``tensors_sha256``
(a digest of names, dtypes, shapes and bytes, checked on load) and free-form provenance.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from .backbone import DiffusionUNet
from ..atomic import atomic_path  # noqa: F401  (re-exported: public API)
from ..errors import (BundleError, CorruptFileError, InputError, MissingPathError, UnsafeFileError,
                      WeightsMismatchError)
from ..labels import SHARED_PLANE
from ..progress import ProgressFn

__all__ = [
    "AUTHORS_POSE_TO_PLANE",
    "BACKBONE_FORMAT",
    "BACKBONE_FORMAT_VERSION",
    "StateDictDiff",
    "atomic_path",
    "BACKBONES_MANIFEST",
    "check_state_dict",
    "compare_state_dict",
    "file_sha256",
    "import_weights",
    "load_authors_checkpoint",
    "load_authors_denoiser",
    "load_backbone",
    "load_backbone_state",
    "save_backbone",
    "strip_denoiser_prefix",
    "tensors_sha256",
]

PathLike = Union[str, os.PathLike]
AUTHORS_POSE_TO_PLANE = {0: "axial", 1: "sagittal", 2: "coronal"}  # inferred, see module docstring
AUTHORS_PREPROCESSING = {"slices": 16, "size": 256}  # the input the published backbones were trained on
DENOISER_PREFIXES = ("denoise_fn.module.", "denoise_fn.")
BACKBONE_FORMAT = "orthodiffusion-backbone"
BACKBONE_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------------ utilities
def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over sorted (name, dtype, shape, raw bytes) of a state dict; independent of the file container."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{str(t.dtype)}|{tuple(state[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- state-dict checks
@dataclass
class StateDictDiff:
    """How a state dict differs from what a network expects."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # key, want, got

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def report(self, limit: int = 20) -> str:
        """Multi-line human-readable report (at most ``limit`` keys per section)."""
        def fmt_shape(s: Tuple[int, ...]) -> str:
            return "x".join(map(str, s)) or "scalar"

        lines: List[str] = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"{len(items)} {title} key(s):")
                lines += [f"  {k}" for k in items[:limit]] + ([f"  ... {len(items) - limit} more"] if len(items) > limit else [])
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} shape mismatch(es) (network vs file):")
            lines += [f"  {k}: {fmt_shape(w)} vs {fmt_shape(g)}" for k, w, g in self.mismatched[:limit]]
            if len(self.mismatched) > limit:
                lines.append(f"  ... {len(self.mismatched) - limit} more")
        return "\n".join(lines) if lines else "state dict fits"

    def summary(self, limit: int = 3) -> str:
        """One line: counts and the first few keys of each kind."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) (e.g. {', '.join(self.missing[:limit])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) (e.g. {', '.join(self.unexpected[:limit])})")
        if self.mismatched:
            shown = ", ".join(
                f"{k} {'x'.join(map(str, w))} vs {'x'.join(map(str, g))}" for k, w, g in self.mismatched[:limit]
            )
            parts.append(f"{len(self.mismatched)} shape mismatch(es) (network vs file: {shown})")
        return "; ".join(parts) if parts else "state dict fits"


def compare_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> StateDictDiff:
    """Compare key sets and shapes of two state dicts (``expected`` is the network's)."""
    diff = StateDictDiff(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
    )
    for k, v in expected.items():
        if k in found and tuple(found[k].shape) != tuple(v.shape):
            diff.mismatched.append((k, tuple(v.shape), tuple(found[k].shape)))
    return diff


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Optional[PathLike]) -> None:
    """Raise :class:`WeightsMismatchError` (one-line summary; ``.report`` holds the full listing) unless ``state``
    has exactly the keys and shapes of ``model.state_dict()``."""
    diff = compare_state_dict(model.state_dict(), state)
    if not diff.ok:
        err = WeightsMismatchError(f"weights do not fit the network: {diff.summary()}", path)
        err.report = diff.report()  # type: ignore[attr-defined]
        err.diff = diff  # type: ignore[attr-defined]
        raise err


# --------------------------------------------------------------------------------------------- authors' files
def load_authors_checkpoint(path: PathLike) -> Dict[str, object]:
    """Read an authors' ``model.pt`` safely (``torch.load(weights_only=True)``, CPU tensors).

    Raises:
        MissingPathError: no such file.
        UnsafeFileError: the file needs objects beyond tensors and plain containers (nothing was executed).
        CorruptFileError: not a torch checkpoint, truncated, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError("checkpoint file not found", path)
    foreign = _foreign_file_kind(path)
    if foreign is not None:
        raise CorruptFileError(foreign, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path) and not _pickle_builds_objects(path):
            raise CorruptFileError("not a checkpoint written by torch.save (a plain pickle or another format), "
                                   "not one of the authors' model.pt checkpoints", path) from None
        detail = _refusal_detail(str(e))
        raise UnsafeFileError(
            f"refused to load: it holds objects that would need arbitrary code to rebuild ({detail}); "
            "only tensors and plain containers are accepted, nothing from the file was run",
            path,
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a file that is not a checkpoint
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CorruptFileError(f"not a readable PyTorch checkpoint ({type(e).__name__}: {first})", path) from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"expected a dict with step/model/ema/opt, found {type(obj).__name__}", path)
    return obj


def _pickle_builds_objects(path: Path) -> bool:
    """Whether a (non-zip) pickle file names classes or calls anything (read with ``pickletools``: nothing runs).
    True also when it cannot be parsed, so such a file keeps the cautious "refused" message."""
    import pickletools

    building = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2",
                "EXT4"}
    try:
        with open(path, "rb") as f:
            return any(op.name in building for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a parsable pickle
        return True


def _foreign_file_kind(path: Path) -> Optional[str]:
    """Why a file evidently is not an authors' checkpoint (a safetensors file, a text file), else None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if len(head) >= 8:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt", device="cpu") as sf:
                    meta = dict(sf.metadata() or {})
            except Exception:  # noqa: BLE001 - not a readable safetensors file after all
                return None
            if meta.get("format") == BACKBONE_FORMAT:
                return (f"already an OrthoDiffusion backbone file (plane {meta.get('plane')!r}), not an authors' "
                        "model.pt: use it directly (e.g. --backbone), no import needed")
            return "a safetensors file, not one of the authors' model.pt checkpoints"
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
            return "a text file, not one of the authors' model.pt checkpoints"
        except UnicodeDecodeError:
            return None
    return None


def _refusal_detail(message: str) -> str:
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported GLOBAL", "Unsupported operand", "Unsupported global")):
            return line.rstrip(".")
    return "unsupported pickle content"


def strip_denoiser_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keep the denoiser's entries of a GaussianDiffusion state dict, without ``denoise_fn.[module.]``.

    A state dict without any such prefix is returned as is (already a bare denoiser)."""
    if not any(k.startswith(DENOISER_PREFIXES) for k in state):
        return dict(state)
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for prefix in DENOISER_PREFIXES:
            if k.startswith(prefix):
                out[k[len(prefix):]] = v
                break
    return out


def load_authors_denoiser(
    path: PathLike, model: Optional[DiffusionUNet] = None, source: str = "ema"
) -> Tuple[DiffusionUNet, Dict[str, object]]:
    """Load the denoiser of an authors' checkpoint into ``model`` (default: a new paper-sized :class:`DiffusionUNet`).

    Args:
        path: the ``model.pt`` file.
        model: network to fill (strict key/shape check).
        source: which entry holds the weights: ``"ema"`` (published weights) or ``"model"``.

    Returns:
        (model in eval mode, info) with info = {"step": int | None, "source": str, "file_sha256": str}.

    Raises:
        UnsafeFileError, CorruptFileError, MissingPathError (see :func:`load_authors_checkpoint`),
        WeightsMismatchError with a readable ``.report``.
    """
    ckpt = load_authors_checkpoint(path)
    if source not in ckpt or not isinstance(ckpt[source], Mapping):
        names = [str(k) for k in ckpt]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        raise CorruptFileError(f"no {source!r} weights in the checkpoint (entries: {shown or 'none'}); expected the "
                               "authors' model.pt with step/model/ema/opt", path)
    raw = ckpt[source]
    if not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CorruptFileError(f"the {source!r} entry is not a state dict of tensors", path)
    state = strip_denoiser_prefix(raw)  # type: ignore[arg-type]
    model = model if model is not None else DiffusionUNet()
    check_state_dict(model, state, path)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    step = ckpt.get("step")
    info = {
        "step": int(step) if isinstance(step, (int, torch.Tensor)) else None,
        "source": source,
        "file_sha256": file_sha256(path),
    }
    return model.eval(), info


# ---------------------------------------------------------------------------------------- our safetensors files
def save_backbone(
    model: DiffusionUNet,
    path: PathLike,
    plane: str,
    provenance: Optional[Mapping[str, object]] = None,
    half: bool = False,
    preprocessing: Optional[Mapping[str, float]] = None,
) -> str:
    """Write ``model``'s weights (float32, or float16 with ``half``) as a safetensors backbone file, atomically.
    Returns the file's sha256.

    Metadata: format, format_version, plane, config (JSON), tensors_sha256, provenance (JSON) and, when given,
    preprocessing (JSON ``{"slices", "size"[, "slice_mm", "inplane_mm"]}``: the input it was trained on, read by the
    trainers as their default)."""
    from safetensors.torch import save_file

    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": BACKBONE_FORMAT,
        "format_version": str(BACKBONE_FORMAT_VERSION),
        "plane": str(plane),
        "config": json.dumps(model.config(), sort_keys=True),
        "tensors_sha256": tensors_sha256(state),
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
    }
    if preprocessing is not None:
        metadata["preprocessing"] = json.dumps({k: int(v) if k in ("slices", "size") else float(v)
                                                for k, v in preprocessing.items()}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return file_sha256(path)


def load_backbone_state(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    """Read a backbone safetensors file: (state dict on CPU, metadata with ``config``/``provenance`` decoded).

    Raises MissingPathError, CorruptFileError (not safetensors), BundleError (not a backbone file, unknown format
    version, or tensors that fail the integrity check)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingPathError("backbone file not found", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for a malformed header
        raise CorruptFileError(f"not a readable safetensors file ({str(e).splitlines()[0][:200]})", path) from None
    if meta.get("format") != BACKBONE_FORMAT:
        raise BundleError(f"not an OrthoDiffusion backbone file (format {meta.get('format')!r})", path)
    if meta.get("format_version") != str(BACKBONE_FORMAT_VERSION):
        raise BundleError(f"unsupported backbone format version {meta.get('format_version')!r}", path)
    if tensors_sha256(state) != meta.get("tensors_sha256"):
        raise BundleError("integrity check failed: the tensors do not match their recorded sha256", path)
    decoded: Dict[str, object] = dict(meta)
    try:
        decoded["config"] = json.loads(meta["config"])
        decoded["provenance"] = json.loads(meta.get("provenance", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise BundleError(f"malformed backbone metadata ({e})", path) from None
    return state, decoded


def load_backbone(
    path: PathLike, device: Union[str, torch.device] = "cpu", plane: Optional[str] = None
) -> Tuple[DiffusionUNet, Dict[str, object]]:
    """Build the :class:`DiffusionUNet` recorded in a backbone file and load its weights (strict), in eval mode.

    Args:
        plane: if given, the file must be for this plane or a ``shared`` backbone (else BundleError).
    Returns:
        (model on ``device``, metadata).
    """
    state, meta = load_backbone_state(path)
    if plane is not None and meta.get("plane") not in (plane, SHARED_PLANE):
        raise BundleError(f"backbone is for plane {meta.get('plane')!r}, expected {plane!r}", path)
    try:
        model = DiffusionUNet(**meta["config"])  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise BundleError(f"backbone config cannot build a network ({e})", path) from None
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


#: The manifest :func:`import_weights` writes beside the backbone files.
BACKBONES_MANIFEST = "backbones.json"


def import_weights(files: Mapping[str, PathLike], out_dir: PathLike, source: str = "ema",
                   progress: Optional[ProgressFn] = None) -> Dict:
    """Convert the authors' ``{plane: model.pt}`` into ``out_dir/backbone_{plane}.safetensors``; returns the manifest
    written to ``out_dir/backbones.json`` (file names, sha256, source file and its sha256, training step).

    Every file is read safely and checked against the network BEFORE anything is written, so a bad file leaves
    ``out_dir`` untouched. ``progress("reading" | "writing", fraction)`` after each file."""
    if not files:
        raise InputError("give at least one of --axial, --sagittal, --coronal")
    out_dir = Path(out_dir)
    loaded = {}
    for i, (plane, path) in enumerate(files.items()):
        path = Path(path)
        loaded[plane] = (path, *load_authors_denoiser(path, source=source))
        if progress is not None:
            progress("reading", (i + 1) / len(files))
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Dict] = {"format": "orthodiffusion-backbones", "format_version": 1, "planes": {}}
    for i, (plane, (path, model, info)) in enumerate(loaded.items()):
        name = f"backbone_{plane}.safetensors"
        provenance = {"source_file": path.name, "source_sha256": info["file_sha256"], "source_entry": source,
                      "step": info["step"]}
        sha = save_backbone(model, out_dir / name, plane, provenance=provenance, preprocessing=AUTHORS_PREPROCESSING)
        manifest["planes"][plane] = {"file": name, "sha256": sha, **provenance}
        if progress is not None:
            progress("writing", (i + 1) / len(loaded))
    with atomic_path(out_dir / BACKBONES_MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

