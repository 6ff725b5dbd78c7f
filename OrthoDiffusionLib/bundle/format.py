"""Model bundles: ONE integrity-checked safetensors file (``NAME.odbundle``) holding everything a prediction needs.

File layout (safetensors, never pickle):

* tensors named ``<component>::<state-dict key>``; components are ``backbone.<id>`` (one per distinct backbone:
  planes that share identical weights share one entry), ``diagnosis_head``, ``ehr`` and ``segmentation.<plane>``.
  Backbones may be stored encoder + middle block only (the decoder is never used at inference); any component may be
  stored as float16 (``half``; export does so for backbones and segmentation heads); loading casts back to float32.
  A tissue-pooled diagnosis (:mod:`OrthoDiffusionLib.model.tissue_diagnosis`) has no backbone of its own: it reads
  the segmentation networks of its planes, and ``diagnosis_head`` holds its per-label models.
* header metadata: ``format`` (:data:`BUNDLE_FORMAT`), ``format_version``, ``bundle`` (the bundle JSON, below) and
  ``bundle_sha256`` (sha256 of that JSON text).

Bundle JSON (``ModelBundle.meta``)::

    {"format", "version", "name", "description", "created", "software",
     "anatomy", "labels": [{"key", "name"}], "structures": [label-table rows used by the segmentation heads],
     "synthetic_data_only": true | false | null,
     "backbones": {id: {"config": DiffusionUNet kwargs, "stored": "encoder" | "full", "dtype", "planes": [...]}},
     "diagnosis": null | {"preprocessing": {"slices", "size"},
                          "planes": {plane: {"backbone": id, "timestep", "block", "pooling"}},
                          "head": DiagnosisHead.config(), "calibration": {"temperature": [...]},
                          "ehr": null | {"config": EHRFusionClassifier kwargs, "statistics": {...}},
                          "metrics", "provenance"}
                   | {"kind": "tissue-pooled", "preprocessing": {"slices", "size", "slice_mm", "inplane_mm"},
                      "planes": {plane: {"segmentation": plane, "backbone": id, "timestep", "features": F}},
                      "head": TissueDiagnosisHead.config(), "calibration": {"method": "platt"}, "ehr": null,
                      "metrics", "provenance"},
     "segmentation": {plane: {"backbone": id, "timestep", "block", "preprocessing", "head": build_seg_head kwargs,
                              "num_classes", "class_values": [label value of each output class],
                              "context_tissues": [names of the context tissue classes, background in labelmaps],
                              "structures": [keys], "metrics", "provenance"}},
     "components": {component: {"tensors_sha256", "dtype", "tensors": n}}}

:func:`load_bundle` checks the format and version, the metadata digest and the sha256 of every component's tensors
(:func:`OrthoDiffusionLib.model.checkpoints.tensors_sha256`), and refuses anything else -- a pickle renamed ``.odbundle``, a
file with one changed byte -- with one :class:`~OrthoDiffusionLib.errors.BundleError` naming the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from ..atomic import atomic_path
from ..model.checkpoints import file_sha256, tensors_sha256
from ..errors import BundleError, MissingPathError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BUNDLE_SUFFIX",
    "ENCODER_PREFIXES",
    "ModelBundle",
    "bundle_anatomy",
    "encoder_state",
    "load_bundle",
    "save_bundle",
]

PathLike = Union[str, os.PathLike]
BUNDLE_FORMAT = "orthodiffusion.bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".odbundle"
#: State-dict prefixes of the parts of a DiffusionUNet that ``encode`` uses (time embedding, encoder, middle block).
ENCODER_PREFIXES = ("time_embed.", "input_blocks.", "middle_block.")
_SEP = "::"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # protocol-2+ pickle, torch.save zip archive


def encoder_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The entries of a DiffusionUNet state dict that ``encode`` needs (no decoder, no output layer)."""
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN metrics of a class absent from a split, ...) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_text(meta: Mapping[str, Any]) -> str:
    return json.dumps(_finite(meta), sort_keys=True, separators=(",", ":"), allow_nan=False)


def save_bundle(path: PathLike, meta: Mapping[str, Any], components: Mapping[str, Mapping[str, torch.Tensor]],
                half: Iterable[str] = ()) -> str:
    """Write a bundle atomically and return the file's sha256.

    Args:
        path: the ``.odbundle`` file.
        meta: the bundle JSON without ``components`` (added here) -- see the module docstring.
        components: ``{component: state dict}``.
        half: components stored as float16 (floating tensors only).
    """
    from safetensors.torch import save_file

    half = set(half)
    tensors: Dict[str, torch.Tensor] = {}
    listing: Dict[str, Dict[str, Any]] = {}
    for name, state in components.items():
        if _SEP in name:
            raise ValueError(f"component name {name!r} may not contain {_SEP!r}")
        dtype = torch.float16 if name in half else torch.float32
        stored = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
                  for k, v in state.items()}
        listing[name] = {"tensors_sha256": tensors_sha256(stored), "dtype": str(dtype).replace("torch.", ""),
                         "tensors": len(stored)}
        tensors.update({f"{name}{_SEP}{k}": v for k, v in stored.items()})
    full = dict(meta)
    full.update({"format": BUNDLE_FORMAT, "version": BUNDLE_FORMAT_VERSION, "components": listing})
    text = _json_text(full)
    header = {"format": BUNDLE_FORMAT, "format_version": str(BUNDLE_FORMAT_VERSION), "bundle": text,
              "bundle_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    with atomic_path(path, suffix=BUNDLE_SUFFIX) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return file_sha256(path)


@dataclass
class ModelBundle:
    """A verified bundle in memory: ``meta`` (the bundle JSON), ``states`` (``{component: float32 state dict}``),
    ``path`` and ``sha256`` (of the file)."""

    path: Path
    meta: Dict[str, Any]
    states: Dict[str, Dict[str, torch.Tensor]]
    sha256: str
    size_bytes: int = 0
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------------------------------------- descriptions
    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.stem)

    @property
    def labels(self) -> List[Dict[str, str]]:
        return list(self.meta.get("labels") or [])

    @property
    def diagnosis(self) -> Optional[Dict[str, Any]]:
        return self.meta.get("diagnosis")

    @property
    def segmentation(self) -> Dict[str, Dict[str, Any]]:
        return dict(self.meta.get("segmentation") or {})

    def summary(self) -> Dict[str, Any]:
        """Name, format version, file sha256/size, anatomy, description, synthetic flag (for results and listings)."""
        return {"name": self.name, "version": self.meta.get("version"), "file": str(self.path),
                "sha256": self.sha256, "size_bytes": self.size_bytes, "anatomy": self.meta.get("anatomy"),
                "description": self.meta.get("description", ""),
                "synthetic_data_only": self.meta.get("synthetic_data_only"),
                "diagnosis_planes": sorted((self.diagnosis or {}).get("planes", {})),
                "segmentation_planes": sorted(self.segmentation)}

    # ------------------------------------------------------------------------------------------------- networks
    def backbone(self, key: str):
        """The :class:`~OrthoDiffusionLib.model.backbone.DiffusionUNet` ``key`` (eval mode, CPU, float32). A backbone stored
        encoder-only has its decoder removed (``encode`` works, ``forward`` does not)."""
        from torch import nn

        from ..model.backbone import DiffusionUNet

        info = self._require(self.meta.get("backbones", {}), key, "backbone")
        model = DiffusionUNet(**info["config"])
        state = self.states[f"backbone.{key}"]
        if info.get("stored") == "encoder":
            model.output_blocks = nn.ModuleList()
            model.out = nn.Identity()
        self._load(model, state, f"backbone.{key}")
        return model.eval()

    def diagnosis_head(self):
        """The :class:`~OrthoDiffusionLib.model.heads.DiagnosisHead`, or for a tissue-pooled diagnosis the
        :class:`~OrthoDiffusionLib.model.tissue_diagnosis.TissueDiagnosisHead` (eval mode, CPU)."""
        from ..model.heads import DiagnosisHead
        from ..model.tissue_diagnosis import TISSUE_POOLED, TissueDiagnosisHead

        diag = self.diagnosis
        if not diag:
            raise BundleError("the model has no diagnosis head", self.path)
        kind = diag.get("kind", "pooled-taps")
        if kind not in ("pooled-taps", TISSUE_POOLED):
            raise BundleError(f"unknown diagnosis kind {kind!r} (this OrthoDiffusion reads pooled-taps and "
                              f"{TISSUE_POOLED}); a newer OrthoDiffusion may read it", self.path)
        head = (TissueDiagnosisHead if kind == TISSUE_POOLED else DiagnosisHead)(**diag["head"])
        self._load(head, self.states["diagnosis_head"], "diagnosis_head")
        return head.eval()

    def ehr_model(self):
        """The :class:`~OrthoDiffusionLib.model.ehr.EHRFusionClassifier` or ``None`` when the model has no EHR branch."""
        from ..model.ehr import EHRFusionClassifier

        ehr = (self.diagnosis or {}).get("ehr")
        if not ehr:
            return None
        model = EHRFusionClassifier(**ehr["config"])
        self._load(model, self.states["ehr"], "ehr")
        return model.eval()

    def segmentation_head(self, plane: str):
        """The segmentation head of ``plane`` (eval mode, CPU)."""
        from ..model.seg_head import build_seg_head

        info = self._require(self.segmentation, plane, "segmentation head for plane")
        kwargs = dict(info["head"])
        kwargs["num_classes"] = int(info["num_classes"])
        head = build_seg_head(**kwargs)
        self._load(head, self.states[f"segmentation.{plane}"], f"segmentation.{plane}")
        return head.eval()

    def _require(self, table: Mapping[str, Any], key: str, what: str) -> Any:
        if key not in table:
            raise BundleError(f"no {what} {key!r} in the model (has: {', '.join(sorted(table)) or 'none'})",
                              self.path)
        return table[key]

    def _load(self, module: torch.nn.Module, state: Mapping[str, torch.Tensor], component: str) -> None:
        from ..model.checkpoints import compare_state_dict

        diff = compare_state_dict(module.state_dict(), state)
        if not diff.ok:
            raise BundleError(f"component {component} does not fit its network: {diff.summary()}", self.path)
        module.load_state_dict(dict(state), strict=True)


def _refuse(path: Path, problem: str) -> BundleError:
    return BundleError(f"not a valid OrthoDiffusion model bundle: {problem}; refused", path)


def _read_safetensors(path: Path, tensors: bool) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    """(header metadata, tensors by stored name -- empty unless ``tensors``) of a file in the bundle format.

    Raises MissingPathError (no such file), BundleError (not safetensors, a pickle, another format)."""
    from safetensors import safe_open

    if not path.is_file():
        raise MissingPathError("model bundle file not found", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # safetensors raises its own error types for a malformed header / truncated data
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic.startswith(_PICKLE_MAGIC):
            raise _refuse(path, "it is a Python pickle / PyTorch checkpoint (pickles can run arbitrary code when "
                                "loaded; nothing from it was run)") from None
        raise _refuse(path, f"unreadable safetensors data ({str(e).splitlines()[0][:160]})") from None
    if header.get("format") != BUNDLE_FORMAT:
        raise _refuse(path, f"format {header.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    return header, raw


def load_bundle(path: PathLike) -> ModelBundle:
    """Read and verify a bundle (format, version, metadata digest, every component's tensor digest).

    Raises:
        MissingPathError: no such file.
        BundleError: anything else that is wrong with the file (one line naming it).
    """
    path = Path(path)
    header, raw = _read_safetensors(path, tensors=True)
    if header.get("format_version") != str(BUNDLE_FORMAT_VERSION):
        raise BundleError(f"unsupported bundle format version {header.get('format_version')!r} (this OrthoDiffusion "
                          f"reads version {BUNDLE_FORMAT_VERSION})", path)
    text = header.get("bundle", "")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != header.get("bundle_sha256"):
        raise BundleError("integrity check failed: the metadata does not match its recorded sha256", path)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise _refuse(path, f"malformed metadata ({e})") from None
    listing = meta.get("components")
    if not isinstance(listing, dict):
        raise _refuse(path, "the metadata lists no components")
    states: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in listing}
    for key, value in raw.items():
        comp, sep, sub = key.partition(_SEP)
        if not sep or comp not in states:
            raise BundleError(f"integrity check failed: tensor {key!r} belongs to no listed component", path)
        states[comp][sub] = value
    for comp, info in listing.items():
        if tensors_sha256(states[comp]) != info.get("tensors_sha256"):
            raise BundleError(f"integrity check failed: the tensors of {comp} do not match their recorded sha256",
                              path)
    _check_references(path, meta, listing)
    states = {c: {k: (v.float() if v.is_floating_point() else v) for k, v in s.items()} for c, s in states.items()}
    return ModelBundle(path=path, meta=meta, states=states, sha256=file_sha256(path),
                       size_bytes=path.stat().st_size)


def bundle_anatomy(path: PathLike) -> str:
    """The ``anatomy`` of a bundle's metadata, read from the file's header only (no tensors, no integrity check; for
    choosing what input to accept before the model is loaded). ``knee`` when the bundle does not say.

    Raises:
        MissingPathError: no such file. BundleError: no readable bundle header.
    """
    path = Path(path)
    header, _ = _read_safetensors(path, tensors=False)
    try:
        meta = json.loads(header.get("bundle", ""))
    except json.JSONDecodeError as e:
        raise _refuse(path, f"malformed metadata ({e})") from None
    if not isinstance(meta, dict):
        raise _refuse(path, "malformed metadata (not a JSON object)")
    return str(meta.get("anatomy") or "knee")


def _check_references(path: Path, meta: Mapping[str, Any], listing: Mapping[str, Any]) -> None:
    """Every backbone/head the metadata refers to has its component, and no component is unaccounted for."""
    needed = {f"backbone.{b}" for b in meta.get("backbones", {})}
    diag = meta.get("diagnosis")
    if diag:
        needed.add("diagnosis_head")
        if diag.get("ehr"):
            needed.add("ehr")
        refs = [(f"diagnosis plane {p}", v.get("backbone")) for p, v in diag.get("planes", {}).items()]
        unread = [p for p, v in diag.get("planes", {}).items()
                  if "segmentation" in v and v["segmentation"] not in (meta.get("segmentation") or {})]
        if unread:  # a tissue-pooled diagnosis reads these planes' segmentation networks
            raise _refuse(path, f"the diagnosis reads the segmentation of {', '.join(unread)}, which the bundle lacks")
    else:
        refs = []
    for plane, seg in (meta.get("segmentation") or {}).items():
        needed.add(f"segmentation.{plane}")
        refs.append((f"segmentation plane {plane}", seg.get("backbone")))
    for what, ref in refs:
        if ref not in meta.get("backbones", {}):
            raise _refuse(path, f"{what} refers to backbone {ref!r}, which the bundle lacks")
    if set(listing) != needed:
        missing, extra = sorted(needed - set(listing)), sorted(set(listing) - needed)
        raise _refuse(path, f"components do not match the metadata (missing: {missing}, unexpected: {extra})")
    if not diag and not meta.get("segmentation"):
        raise _refuse(path, "it holds neither a diagnosis nor a segmentation model")


def now_iso() -> str:
    """UTC time stamp (seconds) for ``created`` fields."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
