"""Segmentation training data: manifest rows with a labelmap, patient subsets, and preprocessed (image, labels) pairs.

A case is one manifest row of the requested plane with a non-empty ``seg_path`` (a labelmap with label-table values
on the series' grid, e.g. the ``*_seg.nii.gz`` the simulator writes, or a Slicer ``.seg.nrrd``). Relative paths are
relative to the manifest's folder.

Preprocessing of a case: the image through :func:`OrthoDiffusionLib.inference.preprocess.preprocess_series` (16 central
slices, bilinear resize to size x size, [-1, 1]); the labelmap resampled with nearest-neighbour interpolation onto
the preprocessed grid (``PreprocessedSeries.reference``: the same slices and the same physical in-plane sampling;
slices padded beyond a short series are background). Shapes: image (1, D, H, W) float32, labels (D, H, W) int64,
spacing (3,) mm in the array's (D, H, W) order.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.errors import CorruptFileError, InputError, MissingPathError

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("patient_id", "plane", "series_path", "split", "seg_path")


@dataclass(frozen=True)
class SegCase:
    """One labelled series: absolute ``series_path`` / ``seg_path``; ``row`` is the 1-based manifest data row."""

    patient_id: str
    plane: str
    split: str
    series_path: str
    seg_path: str
    row: int
    tissue_path: str = ""  # optional tissue-id map on the series grid (simulated data): domain randomisation

    @property
    def case_id(self) -> str:
        """Unique name of the case: ``patient_id/series name``."""
        return f"{self.patient_id}/{Path(self.series_path).name}"


def _absolute(manifest: Path, value: str) -> str:
    p = Path(value.strip())
    return os.fspath(p if p.is_absolute() else manifest.parent / p)


def read_seg_cases(manifest: PathLike, plane: str) -> List[SegCase]:
    """Every row of ``plane`` with a ``seg_path``, in manifest order, after checking that its files exist.

    Raises:
        MissingPathError: the manifest, or a series / labelmap it names, does not exist (the first one is named,
            with its manifest row).
        InputError: columns missing, an unknown split, or no labelled row of the plane.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MissingPathError("manifest not found", manifest)
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"manifest lacks column(s) {', '.join(missing)}", manifest)
        rows = list(reader)
    cases = []
    for i, r in enumerate(rows, start=1):
        if r["plane"].strip().lower() != plane or not (r.get("seg_path") or "").strip():
            continue
        split = r["split"].strip().lower()
        if split not in SPLITS:
            raise InputError(f"manifest row {i}: split must be one of {', '.join(SPLITS)}, got {r['split']!r}",
                             manifest)
        tissue = (r.get("tissue_path") or "").strip()
        case = SegCase(patient_id=r["patient_id"].strip(), plane=plane, split=split,
                       series_path=_absolute(manifest, r["series_path"]), seg_path=_absolute(manifest, r["seg_path"]),
                       row=i, tissue_path=_absolute(manifest, tissue) if tissue else "")
        for what, path in (("series", case.series_path), ("labelmap (seg_path)", case.seg_path)):
            if not os.path.exists(path):
                raise MissingPathError(f"{what} of manifest {manifest} row {i} (patient {case.patient_id}, {plane}) "
                                       f"does not exist", path)
        cases.append(case)
    if not cases:
        raise InputError(f"no {plane} rows with a seg_path", manifest)
    return cases


def split_cases(cases: Sequence[SegCase], split: str) -> List[SegCase]:
    return [c for c in cases if c.split == split]


def nested_patient_subset(patient_ids: Sequence[str], n: Optional[int], seed: int = 0) -> List[str]:
    """The first ``n`` patients of one seeded permutation of the sorted unique ids (all for ``n=None``).

    Subsets of growing ``n`` with the same seed are nested (label-efficiency runs)."""
    unique = sorted(set(patient_ids))
    if n is None:
        return unique
    if n < 1 or n > len(unique):
        raise InputError(f"--train-patients must be in 1..{len(unique)} (training patients), got {n}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 6007])).permutation(len(unique))
    return sorted(unique[i] for i in order[:n])


def training_cases(cases: Sequence[SegCase], train_patients: Optional[int], seed: int = 0) -> List[SegCase]:
    """Train-split cases of the nested subset of ``train_patients`` patients (all when None)."""
    train = split_cases(cases, "train")
    if not train:
        raise InputError("the manifest has no labelled training rows for this plane")
    keep = set(nested_patient_subset([c.patient_id for c in train], train_patients, seed))
    return [c for c in train if c.patient_id in keep]


def load_case(case: SegCase, slices: int, size: int, num_classes: int = 12, grid: Optional[Mapping[str, float]] = None
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and preprocess one case -> image (D, H, W) float32 in [-1, 1], labels (D, H, W) uint8,
    spacing (3,) float64 mm in (D, H, W) order.

    Raises the io errors for an unreadable series / labelmap, and CorruptFileError for labels outside the table.
    """
    import SimpleITK as sitk

    from OrthoDiffusionLib.io import read_series
    from OrthoDiffusionLib.inference.preprocess import preprocess_series
    from OrthoDiffusionLib.segmentation.io import read_labelmap

    pp = preprocess_series(read_series(case.series_path), slices=slices, size=size, **dict(grid or {}))
    labelmap = read_labelmap(case.seg_path)
    values = np.unique(sitk.GetArrayViewFromImage(labelmap))
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise CorruptFileError(f"label values {values.tolist()[:12]} outside 0..{num_classes - 1}", case.seg_path)
    on_grid = sitk.Resample(sitk.Cast(labelmap, sitk.sitkUInt8), pp.reference, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(on_grid)
    if not labels.any():
        raise InputError(f"the labelmap does not overlap the {slices} central slices of its series "
                         f"{case.series_path}", case.seg_path)
    spacing = np.asarray(pp.reference.GetSpacing(), dtype=np.float64)[::-1].copy()
    return pp.volume, labels, spacing


def load_tissue(case: SegCase, slices: int, size: int, grid: Optional[Mapping[str, float]] = None) -> np.ndarray:
    """The tissue map of a case on the same preprocessed grid as :func:`load_case`'s image: (D, H, W) uint8."""
    return tissue_on_grid(case.series_path, case.tissue_path, slices, size, grid)


def tissue_on_grid(series_path: PathLike, tissue_path: PathLike, slices: int, size: int,
                   grid: Optional[Mapping[str, float]] = None) -> np.ndarray:
    """A simulated series' tissue-id map (on the series' voxel grid) resampled, nearest neighbour, onto the series'
    preprocessed model input grid: (D, H, W) uint8, voxel for voxel with ``preprocess_series(...).volume``."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.io import read_series
    from OrthoDiffusionLib.inference.preprocess import preprocess_series

    pp = preprocess_series(read_series(series_path), slices=slices, size=size, **dict(grid or {}))
    tissue = sitk.ReadImage(os.fspath(tissue_path))
    on_grid = sitk.Resample(sitk.Cast(tissue, sitk.sitkUInt8), pp.reference, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on_grid)


class SegVolumes(torch.utils.data.Dataset):
    """Preprocessed cases: ``dataset[i]`` -> (image (1, D, H, W) float32, labels (D, H, W) int64).

    Each case is read once; its arrays are cached as ``.npz`` in ``cache_dir`` (keyed by the absolute paths, slices
    and size) or, without a cache folder, in memory. ``spacing(i)`` gives the (D, H, W) voxel size in mm. With
    ``context_tissues`` the labels are the case's tissue map (0-23: the structures keep their values 1-11, the other
    tissues follow; see :mod:`.losses`).
    """

    def __init__(self, cases: Sequence[SegCase], slices: int, size: int, cache_dir: Optional[PathLike] = None,
                 num_classes: int = 12, grid: Optional[Mapping[str, float]] = None, randomize: float = 0.0,
                 context_tissues: bool = False):
        self.cases = list(cases)
        self.slices, self.size, self.num_classes = int(slices), int(size), int(num_classes)
        self.grid = dict(grid or {})  # slice_mm / inplane_mm of the model grid ({}: resize only)
        # probability that a case with a tissue map is shown with a domain-randomised contrast instead of its image
        self.randomize = float(randomize)
        self.context_tissues = bool(context_tissues)
        self._tissue_memory: Dict[int, np.ndarray] = {}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def _cache_file(self, i: int) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        c = self.cases[i]
        key = f"{os.path.abspath(c.series_path)}|{os.path.abspath(c.seg_path)}|{self.slices}|{self.size}"
        if self.grid:
            key += "|" + "|".join(f"{k}={v}" for k, v in sorted(self.grid.items()))
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

    def arrays(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (D, H, W) float32, labels (D, H, W) uint8, spacing (3,)) of case i."""
        if i in self._memory:
            return self._memory[i]
        cache = self._cache_file(i)
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                out = (z["image"], z["labels"], z["spacing"])
        else:
            out = load_case(self.cases[i], self.slices, self.size, self.num_classes, self.grid)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cache, suffix=".npz") as tmp:
                    np.savez(tmp, image=out[0], labels=out[1], spacing=out[2])
        if cache is None:
            self._memory[i] = out
        return out

    def spacing(self, i: int) -> np.ndarray:
        return self.arrays(i)[2]

    def tissue(self, i: int) -> Optional[np.ndarray]:
        """The tissue map of case i on its preprocessed grid (D, H, W) uint8, or None without one (cached)."""
        case = self.cases[i]
        if not case.tissue_path:
            return None
        cache = self._cache_file(i)
        file = cache.with_name(cache.stem + "_tissue.npy") if cache is not None else None
        if file is not None and file.is_file():
            return np.load(file, allow_pickle=False)
        if i in self._tissue_memory:
            return self._tissue_memory[i]
        tissue = load_tissue(case, self.slices, self.size, self.grid)
        if file is not None:
            with atomic_path(file, suffix=".npy") as tmp:
                np.save(tmp, tissue, allow_pickle=False)
        else:
            self._tissue_memory[i] = tissue
        return tissue

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, labels, _ = self.arrays(i)
        if self.context_tissues:
            labels = self.tissue(i)
        if self.randomize > 0 and self.cases[i].tissue_path and float(torch.rand(())) < self.randomize:
            from OrthoDiffusionLib.simulate.randomize import randomize_contrast

            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
            drawn = randomize_contrast(self.tissue(i), rng)
            lo, hi = float(drawn.min()), float(drawn.max())
            image = ((drawn - lo) / max(hi - lo, 1e-6) * 2.0 - 1.0).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0), torch.from_numpy(labels.astype(np.int64))
