"""Anatomy source from real knee label maps (SPL Knee Atlas, OAI DESS labels) deformed by smooth random fields.

Usage::

    from OrthoDiffusionLib.simulate.atlas import AtlasAnatomy
    knee = AtlasAnatomy.from_spl(seed=3, side="right")      # path defaults to default_atlas_paths()["spl"]
    tissue = knee.tissue_at(points_lps)                     # (N,) uint8 Tissue ids
    knee.landmarks["acl_femoral"]                           # (3,) LPS mm, moves with the deformation

The label maps are read from disk at run time (they are not part of the package): pass a path, or set
``ORTHODIFFUSION_SHARED_DATA`` (or keep ``shared/data`` beside the project) for :func:`default_atlas_paths`.
Each label map is loaded, mapped to :class:`~OrthoDiffusionLib.simulate.tissues.Tissue` ids and completed into a
whole-knee cross-section (:mod:`.atlas_synthesis`) once per process; sources built from it share the volume. The
completed volume is also cached on disk (:func:`atlas_cache_dir`, keyed by the source files' content), so later
processes load it in about a second.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import CorruptFileError, InvalidVolumeError, MissingPathError
from .atlas_landmarks import compute_landmarks
from .atlas_synthesis import complete_oai, complete_spl
from .atlas_tables import OAI_LABELS, oai_lookup_table, read_color_table, spl_lookup_table
from .knee_deformation import KneeTransform
from .label_volume import LabelVolume
from .tissues import LANDMARK_NAMES, Tissue

SPL_FOLDER = "spl_knee_atlas"
SPL_LABELS = "SPLKneeAtlasLabels.nrrd"
SPL_COLORS = "SPLKneeAtlasColors.ctbl"
OAI_FOLDER = "oai_dess_labels"
OAI_LABELS_FILE = "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"

_ALL_STRUCTURES = tuple(range(1, 12))


# ------------------------------------------------------------------------------------------------------------ paths
def shared_data_candidates() -> list:
    """Folders searched for the label maps: ``$ORTHODIFFUSION_SHARED_DATA``, ``../shared/data`` (from the working
    directory), and ``shared/data`` beside a source checkout of the project."""
    out = []
    env = os.environ.get("ORTHODIFFUSION_SHARED_DATA")
    if env:
        out.append(Path(env))
    out.append(Path.cwd().parent / "shared" / "data")
    out.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    return out


def default_atlas_paths() -> Dict[str, Optional[Path]]:
    """``{"spl": label map path or None, "oai": label map path or None}`` found in :func:`shared_data_candidates`."""
    found: Dict[str, Optional[Path]] = {"spl": None, "oai": None}
    for folder in shared_data_candidates():
        spl = folder / SPL_FOLDER / SPL_LABELS
        oai = folder / OAI_FOLDER / OAI_LABELS_FILE
        if found["spl"] is None and spl.is_file():
            found["spl"] = spl
        if found["oai"] is None and oai.is_file():
            found["oai"] = oai
    return found


def _resolve(path: Optional[os.PathLike | str], kind: str, folder: str, filename: str) -> Path:
    if path is None:
        p = default_atlas_paths()[kind]
        if p is None:
            where = ", ".join(str(c / folder / filename) for c in shared_data_candidates())
            raise MissingPathError(f"{kind.upper()} label map not found (looked in: {where}); pass its path or set "
                                   "ORTHODIFFUSION_SHARED_DATA", folder)
        return p
    p = Path(path)
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise MissingPathError(f"{kind.upper()} label map not found", p)
    return p


# ----------------------------------------------------------------------------------------------------------- loading
def _read_label_image(path: Path):
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise CorruptFileError(f"cannot read label map ({str(e).strip().splitlines()[-1] if str(e).strip() else e})",
                               path) from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise CorruptFileError("label map is not a 3D single-component image", path)
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        raise CorruptFileError(f"label map has non-integer voxels ({arr.dtype})", path)
    if arr.min() < 0 or arr.max() > 65535:
        raise CorruptFileError("label map values outside 0..65535", path)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return arr, np.array(img.GetOrigin(), float), np.array(img.GetSpacing(), float), direction


def _check_structures(vol: LabelVolume, path: Path, required) -> None:
    present = np.bincount(vol.labels.reshape(-1), minlength=256)
    missing = [Tissue(t).name.lower() for t in required if present[t] == 0]
    if missing:
        raise InvalidVolumeError(f"label map lacks {', '.join(missing)}", path)


def load_spl_volume(path: Path) -> LabelVolume:
    """SPL atlas label map mapped to Tissue ids and completed (fat, skin, fluid film). Not cached."""
    colors = path.parent / SPL_COLORS
    names = read_color_table(colors)
    arr, origin, spacing, direction = _read_label_image(path)
    lut = spl_lookup_table(names)
    vol = LabelVolume(lut[arr.astype(np.int64)], origin, spacing, direction)
    _check_structures(vol, path, _ALL_STRUCTURES + (Tissue.MCL, Tissue.LCL))
    return complete_spl(vol)


def load_oai_volume(path: Path) -> LabelVolume:
    """OAI DESS label map mapped to Tissue ids with synthesised ligaments and soft tissue. Not cached."""
    arr, origin, spacing, direction = _read_label_image(path)
    if arr.max() > 255:
        raise CorruptFileError(f"OAI label map has values up to {arr.max()} (expected 0..10)", path)
    vol = LabelVolume(oai_lookup_table()[arr.astype(np.int64)], origin, spacing, direction)
    _check_structures(vol, path, tuple(OAI_LABELS.values()))
    try:
        return complete_oai(vol)
    except ValueError as e:
        raise InvalidVolumeError(f"cannot place ligaments/soft tissue on this label map ({e})", path) from e


#: Bump when the mapping/synthesis/landmark code changes: on-disk caches of older versions are ignored.
ATLAS_CACHE_VERSION = 6

_CACHE: Dict[Tuple[str, str, float, int], tuple] = {}
_CACHE_LOCK = threading.Lock()


def atlas_cache_dir() -> Optional[Path]:
    """Folder for completed atlas volumes: ``$ORTHODIFFUSION_CACHE_DIR`` (empty string: no disk cache), else
    ``$XDG_CACHE_HOME/orthodiffusion/atlas`` (``~/.cache/orthodiffusion/atlas``)."""
    env = os.environ.get("ORTHODIFFUSION_CACHE_DIR")
    if env is not None:
        return Path(env) if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orthodiffusion" / "atlas"


def _source_digest(kind: str, path: Path) -> str:
    h = hashlib.sha256(f"{kind}:v{ATLAS_CACHE_VERSION}:".encode())
    files = [path] + ([path.parent / SPL_COLORS] if kind == "spl" else [])
    for f in files:
        h.update(f.read_bytes() if f.is_file() else b"-")
    return h.hexdigest()[:24]


def _load_disk_cache(file: Path):
    """(volume, landmarks, box) from a cache file, or None if absent/unreadable (it is then rebuilt)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            vol = LabelVolume(z["labels"], z["origin"], z["spacing"], z["direction"])
            lm = {n: z["lm_" + n] for n in LANDMARK_NAMES}
            box = (z["box_lo"], z["box_hi"])
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if vol.labels.dtype != np.uint8 or vol.labels.ndim != 3:
        return None
    return vol, lm, box


def _save_disk_cache(file: Path, vol: LabelVolume, lm: Dict[str, np.ndarray], box) -> None:
    """Write a cache file atomically; silently skipped where the folder is not writable."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, labels=vol.labels, origin=vol.origin, spacing=vol.spacing,
                                direction=vol.direction, box_lo=box[0], box_hi=box[1],
                                **{"lm_" + n: v for n, v in lm.items()})
        os.replace(tmp, file)
    except OSError:
        try:
            tmp.unlink()
        except (OSError, UnboundLocalError):
            pass


def cached_atlas(kind: str, path: Path) -> Tuple[LabelVolume, Dict[str, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """(completed volume, landmarks in atlas space, (lo, hi) LPS box of the body) for ``kind`` in
    ``{"spl", "oai"}``. Cached in memory per process (key: kind, resolved path, mtime, size) and on disk in
    :func:`atlas_cache_dir` (key: content hash of the source files + :data:`ATLAS_CACHE_VERSION`), so only the first
    use on a machine pays for the synthesis. Treat the returned arrays as read-only."""
    st = path.stat()
    key = (kind, str(path.resolve()), st.st_mtime, st.st_size)
    with _CACHE_LOCK:
        if key not in _CACHE:
            folder = atlas_cache_dir()
            file = folder / f"{kind}-{_source_digest(kind, path)}.npz" if folder is not None else None
            entry = _load_disk_cache(file) if file is not None else None
            if entry is None:
                vol = load_spl_volume(path) if kind == "spl" else load_oai_volume(path)
                entry = (vol, compute_landmarks(vol, str(path)), vol.bounding_box())
                if file is not None:
                    _save_disk_cache(file, *entry)
            entry[0].labels.setflags(write=False)
            _CACHE[key] = entry
        return _CACHE[key]


# ------------------------------------------------------------------------------------------------------------ source
class AtlasAnatomy:
    """:class:`~OrthoDiffusionLib.simulate.tissues.AnatomySource` from a real label map under a random transform.

    Attributes:
        side: ``"right"`` or ``"left"`` (the atlas is mirrored when its own side differs).
        landmarks: every name of ``LANDMARK_NAMES`` (LPS mm), measured on the atlas and mapped forward.
        atlas_side: the side of the knee in the label map (measured: the fibula is lateral).
        volume: the completed atlas :class:`LabelVolume` (shared, read-only).
        transform: the :class:`KneeTransform` (patient <-> atlas).
        name: ``"spl"`` or ``"oai"``.
    """

    def __init__(self, volume: LabelVolume, atlas_landmarks: Dict[str, np.ndarray], *, name: str, seed: int,
                 side: str = "right", deformation: float = 3.0, control_spacing: float = 25.0,
                 scale_range: Tuple[float, float] = (0.92, 1.08), anisotropy: float = 0.04,
                 rotation_deg: float = 4.0, atlas_box: Optional[Tuple[np.ndarray, np.ndarray]] = None):
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        if not (0.5 < scale_range[0] <= scale_range[1] < 2.0):
            raise ValueError(f"scale_range must be within (0.5, 2.0) and ordered, got {scale_range}")
        self.name = name
        self.side = side
        self.seed = int(seed)
        self.volume = volume
        # the atlas's own side: its lateral axis points to patient left (+L) for a left knee
        self.atlas_side = "left" if atlas_landmarks["axis_lateral"][0] > 0 else "right"
        self.atlas_landmarks = atlas_landmarks
        lo, hi = atlas_box if atlas_box is not None else volume.bounding_box()
        self._atlas_box = (lo, hi)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x41544C53]))
        axes = np.stack([atlas_landmarks[n] for n in ("axis_lateral", "axis_anterior", "axis_superior")], axis=1)
        self.transform = KneeTransform.random(
            rng, atlas_landmarks["knee_center"], axes, lo, hi, mirror=(side != self.atlas_side),
            deformation_mm=float(deformation), control_spacing=float(control_spacing),
            scale_range=tuple(scale_range), anisotropy=float(anisotropy), rotation_deg=float(rotation_deg))
        self.landmarks = self._forward_landmarks(atlas_landmarks)

    # ------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_spl(cls, path: Optional[os.PathLike | str] = None, *, seed: int = 0, side: str = "right",
                 deformation: float = 3.0, control_spacing: float = 25.0,
                 scale_range: Tuple[float, float] = (0.92, 1.08), anisotropy: float = 0.04,
                 rotation_deg: float = 4.0) -> "AtlasAnatomy":
        """Knee from the SPL Knee Atlas (``path``: the .nrrd label map or its folder; ``.ctbl`` beside it).

        Args:
            seed: random transform seed (same seed -> same knee).
            side: knee side to produce; the atlas is mirrored if needed.
            deformation: RMS of the smooth random displacement in mm (0 = none).
            control_spacing: mm between displacement control points.
            scale_range: global scale range; ``anisotropy`` adds per-axis variation (product clipped to the range).
            rotation_deg: maximum rotation about the knee centre.
        Raises:
            MissingPathError, CorruptFileError, InvalidVolumeError (messages name the file).
        """
        p = _resolve(path, "spl", SPL_FOLDER, SPL_LABELS)
        vol, lm, box = cached_atlas("spl", p)
        return cls(vol, lm, atlas_box=box, name="spl", seed=seed, side=side, deformation=deformation,
                   control_spacing=control_spacing, scale_range=scale_range, anisotropy=anisotropy,
                   rotation_deg=rotation_deg)

    @classmethod
    def from_oai(cls, path: Optional[os.PathLike | str] = None, *, seed: int = 0, side: str = "right",
                 deformation: float = 3.0, control_spacing: float = 25.0,
                 scale_range: Tuple[float, float] = (0.92, 1.08), anisotropy: float = 0.04,
                 rotation_deg: float = 4.0) -> "AtlasAnatomy":
        """Knee from the OAI DESS label map (bones/cartilage/menisci; ligaments and soft tissue synthesised).

        Arguments as :meth:`from_spl`; ``path`` is the label .nrrd or its folder.
        """
        p = _resolve(path, "oai", OAI_FOLDER, OAI_LABELS_FILE)
        vol, lm, box = cached_atlas("oai", p)
        return cls(vol, lm, atlas_box=box, name="oai", seed=seed, side=side, deformation=deformation,
                   control_spacing=control_spacing, scale_range=scale_range, anisotropy=anisotropy,
                   rotation_deg=rotation_deg)

    # ---------------------------------------------------------------------------------------------- protocol
    def tissue_at(self, points: np.ndarray, chunk: int = 2_000_000) -> np.ndarray:
        """Tissue ids at (N, 3) LPS mm points -> (N,) uint8 (nearest atlas voxel through the inverse transform)."""
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {pts.shape}")
        pts = pts.astype(np.float32, copy=False)
        out = np.empty(len(pts), dtype=np.uint8)
        for s in range(0, len(pts), chunk):
            q = self.transform.backward(pts[s:s + chunk])
            out[s:s + chunk] = self.volume.sample(q)
        return out

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) LPS box containing the whole transformed knee (skin included) with a 2 mm margin."""
        lo, hi = self._atlas_box
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        # Faces sampled too: the displacement is not linear, corners alone could miss a bulge.
        t = np.linspace(0, 1, 9)
        g = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
        face = g[(g == 0).any(1) | (g == 1).any(1)]
        pts = np.concatenate([corners, lo + face * (hi - lo)])
        fwd = self.transform.forward(pts)
        margin = 2.0
        if self.transform.displacement is not None:
            margin += float(np.abs(self.transform.displacement).max()) * 0.5
        return fwd.min(axis=0) - margin, fwd.max(axis=0) + margin

    # ------------------------------------------------------------------------------------------------ helpers
    def mapped_labels(self) -> LabelVolume:
        """The completed atlas label volume (atlas space, untransformed; read-only)."""
        return self.volume

    def _forward_landmarks(self, lm: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t = self.transform
        out: Dict[str, np.ndarray] = {}
        points = [n for n in LANDMARK_NAMES if lm[n].shape == (3,) and not n.startswith("axis_")]
        moved = t.forward(np.stack([lm[n] for n in points]))
        for n, p in zip(points, moved):
            out[n] = p.astype(np.float64)
        jac = t.forward_jacobian(lm["knee_center"])
        sup = _unit(jac @ lm["axis_superior"])
        ant = jac @ lm["axis_anterior"]
        ant = _unit(ant - np.dot(ant, sup) * sup)
        lat = jac @ lm["axis_lateral"]
        lat = _unit(lat - np.dot(lat, sup) * sup - np.dot(lat, ant) * ant)
        out.update(axis_superior=sup, axis_anterior=ant, axis_lateral=lat)
        iso = abs(float(np.linalg.det(jac))) ** (1.0 / 3.0)
        plane = float(np.sqrt(np.linalg.norm(jac @ lm["axis_lateral"]) * np.linalg.norm(jac @ lm["axis_anterior"])))
        for n in LANDMARK_NAMES:
            if n.startswith("ligament_radius_"):
                out[n] = lm[n] * iso
            elif n.endswith("_meniscus_radius"):
                out[n] = lm[n] * plane
        return {n: np.asarray(out[n], dtype=np.float64) for n in LANDMARK_NAMES}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def atlas_anatomy(kind: str, path: Optional[os.PathLike | str] = None, **kwargs) -> AtlasAnatomy:
    """``AtlasAnatomy.from_spl`` (``kind="spl"``) or ``AtlasAnatomy.from_oai`` (``kind="oai"``) with ``kwargs``."""
    if kind == "spl":
        return AtlasAnatomy.from_spl(path, **kwargs)
    if kind == "oai":
        return AtlasAnatomy.from_oai(path, **kwargs)
    raise ValueError(f"unknown atlas {kind!r}; known: spl, oai")
