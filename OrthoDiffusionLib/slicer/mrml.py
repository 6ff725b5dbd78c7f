"""MRML-facing code of the 3D Slicer module: volume nodes <-> SimpleITK images, plane assignment of loaded volumes,
and prediction results -> segmentation and table nodes.

Works with the MRML classes of the ``slicer`` namespace, both inside the Slicer application and with the pip package
``slicer-core`` (which exposes ``slicer.vtkMRMLScene``, ``slicer.vtkMRMLScalarVolumeNode``,
``slicer.vtkMRMLSegmentationNode`` ... without Qt), so everything here is tested outside Slicer. ``slicer`` and
``vtk`` are imported inside the functions: ``import OrthoDiffusionLib.slicer.mrml`` works without them.

Coordinates: MRML is RAS (+x Right, +y Anterior, +z Superior), SimpleITK/the library LPS. A node's IJK->RAS matrix
``M`` (4x4) maps voxel index (i, j, k) to RAS; the LPS image has ``direction = F @ M[:3,:3] / spacing`` and
``origin = F @ M[:3, 3]`` with ``F = diag(-1, -1, 1)``. VTK image arrays are (k, j, i) = (z, y, x) in memory, the
same order as ``sitk.GetArrayFromImage``. A volume under a linear transform is converted in world coordinates
(the transform is applied to the geometry); a non-linear parent transform is refused.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.errors import (CorruptFileError, InputError, MissingPathError, NotVolumeError,
                                      ObliqueSeriesError)
from OrthoDiffusionLib.io.orientation import choose_slice_axis, classify_plane
from OrthoDiffusionLib.io.series import PLANES
from OrthoDiffusionLib.inference.result_folder import (DIAGNOSIS_FILE, FUSED, REPORT_FILE, read_diagnosis_json,
                                                      segmentation_file, segmentation_file_name)

PathLike = Union[str, os.PathLike]
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"
DIAGNOSIS_COLUMNS = ("Abnormality", "Probability", "Calibrated probability", "Uncertainty", "Sagittal weight",
                     "Coronal weight", "Axial weight")
GEOMETRY_TOLERANCE_MM = 1e-3


# ----------------------------------------------------------------------------------------------- geometry
def _vtk_matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_vtk_matrix(a: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def ijk_to_ras(volume_node) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of ``volume_node`` in world coordinates (parent linear transforms applied)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    out = _vtk_matrix_to_numpy(m)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(f"volume {volume_node.GetName()!r} is under a non-linear transform; harden it first")
        world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(world)
        out = _vtk_matrix_to_numpy(world) @ out
    return out


def geometry_from_matrix(ijk_to_ras_matrix: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...],
                                                                 Tuple[float, ...]]:
    """(origin, spacing, direction) in LPS (SimpleITK convention) of a 4x4 IJK->RAS matrix."""
    lin = np.asarray(ijk_to_ras_matrix, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise NotVolumeError("the volume has a zero spacing (degenerate IJK to RAS matrix)")
    direction = LPS_FROM_RAS @ (lin / spacing)
    origin = LPS_FROM_RAS @ np.asarray(ijk_to_ras_matrix, dtype=np.float64)[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.flatten().tolist())


def matrix_from_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a SimpleITK (LPS) image's geometry."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_FROM_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return m


def _scalar_array(image_data, what: str) -> np.ndarray:
    """(z, y, x) array of a single-component vtkImageData (a copy)."""
    from vtk.util import numpy_support

    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise NotVolumeError(f"{what} has no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise NotVolumeError(f"{what} has {image_data.GetNumberOfScalarComponents()} components per voxel; "
                             f"a scalar volume is needed")
    i, j, k = image_data.GetDimensions()
    if min(i, j, k) < 2:
        raise NotVolumeError(f"{what} is not a 3-D volume (size {i}x{j}x{k})")
    flat = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return np.array(flat, copy=True).reshape(k, j, i)


def volume_node_to_image(volume_node) -> sitk.Image:
    """A SimpleITK image (LPS geometry, the node's voxel type) of a scalar volume node.

    Raises:
        NotVolumeError: no image data, several components per voxel, or fewer than 2 voxels along an axis.
        InputError: the node is under a non-linear transform.
    """
    what = f"volume {volume_node.GetName()!r}"
    arr = _scalar_array(volume_node.GetImageData(), what)
    image = sitk.GetImageFromArray(arr)
    origin, spacing, direction = geometry_from_matrix(ijk_to_ras(volume_node))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _vtk_image_from_array(arr: np.ndarray, image_data=None):
    """vtkImageData (or the given subclass instance) holding a copy of ``arr`` (z, y, x); origin 0, spacing 1."""
    import vtk
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(arr)
    out = vtk.vtkImageData() if image_data is None else image_data
    out.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    out.SetOrigin(0.0, 0.0, 0.0)
    out.SetSpacing(1.0, 1.0, 1.0)
    scalars = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    out.GetPointData().SetScalars(scalars)
    return out


def image_to_volume_node(image: sitk.Image, scene, name: str, volume_node=None):
    """Put a scalar SimpleITK image into a (new, or the given) ``vtkMRMLScalarVolumeNode`` of ``scene``."""
    import slicer

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NotVolumeError(f"image for {name!r} must be a scalar 3-D image")
    if volume_node is None:
        volume_node = slicer.vtkMRMLScalarVolumeNode()
        volume_node.SetName(name)
        scene.AddNode(volume_node)
    volume_node.SetAndObserveImageData(_vtk_image_from_array(sitk.GetArrayFromImage(image)))
    volume_node.SetIJKToRASMatrix(_numpy_to_vtk_matrix(matrix_from_image(image)))
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def load_volume_file(scene, path: PathLike, name: Optional[str] = None):
    """Read a volume file (NIfTI, NRRD, MetaImage) or a DICOM series (a folder, or one of its files) with MRML's
    volume archetype storage node into a new scalar volume node of ``scene``.

    Raises:
        MissingPathError: ``path`` does not exist.
        CorruptFileError: the reader fails or yields no image.
    """
    import slicer

    p = Path(path)
    if not p.exists():
        raise MissingPathError("volume file or DICOM folder does not exist", p)
    single = True
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        from OrthoDiffusionLib.io.dicom_read import is_dicom_file

        dicom = [f for f in files if is_dicom_file(str(f))]
        if not dicom:
            raise CorruptFileError("folder holds no DICOM file", p)
        p, single = dicom[0], False
    volume_node = slicer.vtkMRMLScalarVolumeNode()
    volume_node.SetName(name or Path(path).name.split(".")[0])
    scene.AddNode(volume_node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(p))
    storage.SetSingleFile(single)
    volume_node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(volume_node) or volume_node.GetImageData() is None:
        scene.RemoveNode(volume_node)
        scene.RemoveNode(storage)
        raise CorruptFileError("MRML volume reader could not read it", path)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def write_volume_node(volume_node, path: PathLike, dicom_fields: Optional[Mapping[str, str]] = None) -> Path:
    """Write a scalar volume node (LPS geometry kept) as NIfTI/NRRD/MHA, atomically; returns the path.

    ``dicom_fields``: the DICOM anatomy tags of the node's series (``{"BodyPartExamined": ...}``, see
    :data:`OrthoDiffusionLib.io.anatomy.HEADER_TAGS`), written as NRRD/MetaImage header fields so the exam loader's
    anatomy check sees them (NIfTI has no place for them)."""
    from ..io.anatomy import header_fields

    image = volume_node_to_image(volume_node)
    for key, value in header_fields(dicom_fields or {}).items():
        image.SetMetaData(key, value)
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


# ----------------------------------------------------------------------------------------- planes
@dataclass(frozen=True)
class VolumePlane:
    """Plane of one volume node: ``plane``, ``obliquity_deg``, slice count and in-plane pixel area (mm^2)."""
    node: Any
    plane: str
    obliquity_deg: float
    n_slices: int
    pixel_area_mm2: float


def volume_plane(volume_node, tolerance_deg: float = 30.0) -> VolumePlane:
    """The plane of a scalar volume node: slice axis by :func:`choose_slice_axis` (largest spacing), plane by
    :func:`classify_plane` of its slice normal. Raises ObliqueSeriesError / NotVolumeError."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise NotVolumeError(f"volume {volume_node.GetName()!r} has no image data")
    size = image_data.GetDimensions()
    _, spacing, direction = geometry_from_matrix(ijk_to_ras(volume_node))
    axis = choose_slice_axis(size, spacing)
    plane, angle = classify_plane(direction, slice_axis=axis, tolerance_deg=tolerance_deg,
                                  path=volume_node.GetName())
    inplane = [spacing[a] for a in range(3) if a != axis]
    return VolumePlane(volume_node, plane, angle, int(size[axis]), float(inplane[0] * inplane[1]))


def assign_planes(volume_nodes: Iterable, tolerance_deg: float = 30.0) -> Dict[str, Any]:
    """Pick one scalar volume node per plane: ``{plane: node}`` (planes without a candidate are absent).

    Label maps, multi-component and too-oblique volumes are skipped. Among the candidates of a plane the one with
    the most slices wins, then the finer in-plane pixel, then the less oblique one, then the first given.
    """
    best: Dict[str, Tuple[tuple, Any]] = {}
    for order, node in enumerate(volume_nodes):
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode") or not node.IsA("vtkMRMLScalarVolumeNode"):
            continue
        image_data = node.GetImageData()
        if image_data is None or image_data.GetNumberOfScalarComponents() != 1:
            continue
        try:
            vp = volume_plane(node, tolerance_deg)
        except (ObliqueSeriesError, NotVolumeError, InputError):
            continue
        key = (-vp.n_slices, round(vp.pixel_area_mm2, 6), round(vp.obliquity_deg, 1), order)
        if vp.plane not in best or key < best[vp.plane][0]:
            best[vp.plane] = (key, node)
    return {plane: best[plane][1] for plane in PLANES if plane in best}


def scene_volume_nodes(scene) -> List[Any]:
    """All scalar volume nodes of ``scene`` (label maps excluded), in scene order."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    out = []
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            out.append(node)
    return out


# ----------------------------------------------------------------------------------------- segmentations
def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = GEOMETRY_TOLERANCE_MM) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def labelmap_on_volume(labelmap: sitk.Image, volume_node) -> sitk.Image:
    """``labelmap`` on the voxel grid of ``volume_node``: unchanged when the grids agree (within 1 um), else
    resampled (nearest neighbour, background outside)."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise NotVolumeError(f"volume {volume_node.GetName()!r} has no image data")
    reference = sitk.Image(list(image_data.GetDimensions()), sitk.sitkUInt8)
    origin, spacing, direction = geometry_from_matrix(ijk_to_ras(volume_node))
    reference.SetOrigin(origin)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction)
    if _same_grid(labelmap, reference):
        out = sitk.Cast(labelmap, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    return sitk.Resample(labelmap, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def segmentation_node_from_labelmap(scene, labelmap: sitk.Image, plane: Optional[str], name: str,
                                    reference_volume_node=None, segmentation_node=None, show_3d: bool = True):
    """A ``vtkMRMLSegmentationNode`` with one named, coloured segment per structure of ``plane``'s label table
    (11 on sagittal, 9 on coronal; all 11 for ``plane=None``), in label-table order, sharing one binary labelmap.

    Segment IDs are the structure keys, names/colours/label values come from the label table, and each segment is
    tagged ``OrthoDiffusion.Structure`` / ``OrthoDiffusion.Kind``. With ``reference_volume_node`` the labelmap is
    put on that volume's grid (:func:`labelmap_on_volume`) and the node's reference geometry is the volume's.
    ``show_3d`` also builds the closed-surface representation (for the 3D view).
    """
    import slicer

    structures = labels.knee_structures(plane)
    if reference_volume_node is not None:
        labelmap = labelmap_on_volume(labelmap, reference_volume_node)
    arr = sitk.GetArrayFromImage(labelmap)
    allowed = {0, *(s.value for s in structures)}
    extra = sorted(set(np.unique(arr).tolist()) - allowed)
    if extra:
        raise ValueError(f"labelmap holds values {extra} that are not structures of the "
                         f"{plane or 'knee'} label table")
    oriented = _vtk_image_from_array(arr.astype(np.uint8), slicer.vtkOrientedImageData())
    oriented.SetImageToWorldMatrix(_numpy_to_vtk_matrix(matrix_from_image(labelmap)))
    if show_3d:
        _ensure_closed_surface_rule()  # before the node exists: a segmentation copies the rules when created
    if segmentation_node is None:
        segmentation_node = slicer.vtkMRMLSegmentationNode()
        segmentation_node.SetName(name)
        scene.AddNode(segmentation_node)
    segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    segmentation.RemoveAllSegments()
    for s in structures:
        segment = slicer.vtkSegment()
        segment.SetName(s.name)
        segment.SetColor(*(c / 255.0 for c in s.color))
        segment.SetLabelValue(s.value)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTag("OrthoDiffusion.Structure", s.key)
        segment.SetTag("OrthoDiffusion.Kind", s.kind)
        segment.AddRepresentation(BINARY_LABELMAP, oriented)
        segmentation.AddSegment(segment, s.key)
    if show_3d and not segmentation_node.CreateClosedSurfaceRepresentation():
        raise RuntimeError(f"could not build the 3D surfaces of {name!r}")
    return segmentation_node


def _ensure_closed_surface_rule() -> None:
    """Register labelmap -> closed surface conversion where nothing did (``slicer-core`` outside the app)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not any(r.GetTargetRepresentationName() == "Closed surface" for r in factory.GetConverterRules()):
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())


def segment_labelmap(segmentation_node, segment_id: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(mask (z, y, x) bool, IJK->RAS 4x4 of the mask's first voxel)`` of one segment's binary labelmap."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"no segment {segment_id!r} in {segmentation_node.GetName()!r}")
    oriented = segment.GetRepresentation(BINARY_LABELMAP)
    import vtk

    m = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(m)
    arr = _scalar_array(oriented, f"segment {segment_id!r}")
    offset = np.eye(4)
    offset[:3, 3] = oriented.GetExtent()[0::2]                 # the array starts at the extent's lower corner
    return arr == segment.GetLabelValue(), _vtk_matrix_to_numpy(m) @ offset


# ----------------------------------------------------------------------------------------- tables
def _new_table(scene, name: str):
    import slicer

    table = slicer.vtkMRMLTableNode()
    table.SetName(name)
    scene.AddNode(table)
    return table


def _add_column(table, name: str, values: Sequence[Any], numeric: bool) -> None:
    import vtk

    col = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
    col.SetName(name)
    for v in values:
        if numeric:
            col.InsertNextValue(float("nan") if v is None else float(v))
        else:
            col.InsertNextValue("" if v is None else str(v))
    table.AddColumn(col)


def _number(entry: Mapping[str, Any], key: str, where: str, default: Optional[float] = None) -> float:
    v = entry.get(key, default)
    if v is None:
        raise KeyError(f"{where}: missing {key!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where}: {key} is not a finite number")
    return v


def diagnosis_rows(result: Mapping[str, Any]) -> List[List[Any]]:
    """Rows of the diagnosis table (:data:`DIAGNOSIS_COLUMNS`) from a ``diagnosis.json`` dictionary.

    ``calibrated_probability`` and ``uncertainty`` default to the probability and 0 when absent. Raises KeyError /
    ValueError on a missing label list, a probability outside 0..1 or plane weights that do not sum to 1.
    """
    entries = result.get("labels")
    if not isinstance(entries, list) or not entries:
        raise KeyError("no 'labels' list")
    rows = []
    for n, e in enumerate(entries):
        where = f"label {n} ({e.get('key') or e.get('name')})"
        p = _number(e, "probability", where)
        calibrated = _number(e, "calibrated_probability", where, default=p)
        if not (0.0 <= p <= 1.0 and 0.0 <= calibrated <= 1.0):
            raise ValueError(f"{where}: probability outside 0..1")
        weights = e.get("plane_weights")
        if not isinstance(weights, Mapping):
            raise KeyError(f"{where}: missing 'plane_weights'")
        w = [float(weights.get(plane, 0.0) or 0.0) for plane in PLANES]
        if abs(sum(w) - 1.0) > 1e-3 or min(w) < 0:
            raise ValueError(f"{where}: plane weights {w} do not sum to 1")
        rows.append([e.get("name") or e.get("key"), p, calibrated, _number(e, "uncertainty", where, default=0.0),
                     *w])
    return rows


def diagnosis_table_node(scene, result: Mapping[str, Any], name: str = "OrthoDiffusion diagnosis"):
    """A ``vtkMRMLTableNode``: one row per label with probability, calibrated probability, uncertainty and the
    sagittal/coronal/axial weights (columns :data:`DIAGNOSIS_COLUMNS`)."""
    rows = diagnosis_rows(result)
    table = _new_table(scene, name)
    for c, column in enumerate(DIAGNOSIS_COLUMNS):
        _add_column(table, column, [r[c] for r in rows], numeric=c > 0)
    return table


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def measures_table_node(scene, rows: Sequence[Mapping[str, Any]], name: str = "OrthoDiffusion structure volumes"):
    """A ``vtkMRMLTableNode`` of the structure measures (``diagnosis.json`` ``measures``: one dict per structure,
    e.g. ``plane, key, name, volume_ml, mean_thickness_mm``); columns in first-seen key order, numeric where every
    value is a number or null (null -> NaN)."""
    columns: List[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    table = _new_table(scene, name)
    for c in columns:
        values = [r.get(c) for r in rows]
        _add_column(table, c, values, numeric=all(_is_number(v) for v in values))
    return table


def table_column(table_node, name: str) -> List[Any]:
    """Values of one column of a table node (floats for numeric columns, str otherwise)."""
    table = table_node.GetTable()
    col = table.GetColumnByName(name)
    if col is None:
        raise KeyError(f"table {table_node.GetName()!r} has no column {name!r}")
    if col.IsA("vtkStringArray"):
        return [col.GetValue(i) for i in range(col.GetNumberOfValues())]
    return [col.GetValue(i) for i in range(col.GetNumberOfTuples())]


# ----------------------------------------------------------------------------------------- result folders
@dataclass
class ImportedResult:
    """The nodes made from one prediction output folder."""
    folder: Path
    result: Dict[str, Any]
    segmentations: Dict[str, Any] = field(default_factory=dict)
    diagnosis_table: Any = None
    measures_table: Any = None
    report: Optional[Path] = None

    def nodes(self) -> List[Any]:
        return [n for n in (*self.segmentations.values(), self.diagnosis_table, self.measures_table) if n is not None]


def remove_node(scene, node) -> None:
    """Remove ``node`` and its display and storage nodes from ``scene``."""
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            for i in reversed(range(getattr(node, count)())):
                child = getattr(node, getter)(i)
                if child is not None:
                    scene.RemoveNode(child)
    scene.RemoveNode(node)


def import_result_folder(scene, folder: PathLike, volumes: Mapping[str, Any], prefix: str = "OrthoDiffusion",
                         diagnosis: bool = True, show_3d: bool = True,
                         planes: Sequence[str] = PLANES, fused: bool = True) -> ImportedResult:
    """Import the outputs of ``orthodiffusion predict`` (:func:`OrthoDiffusionLib.inference.predictor.write_outputs`) from
    ``folder`` into ``scene``.

    Args:
        volumes: ``{plane: volume node}`` the prediction ran on; each ``segmentation_<plane>.seg.nrrd`` present
            becomes a segmentation node on that plane's volume geometry (named ``<prefix> <plane>``).
        diagnosis: also make the diagnosis table (when ``diagnosis.json`` has labels) and the structure table.
        planes: import the segmentations of these planes only.
        fused: also import ``segmentation_fused.seg.nrrd`` when ``diagnosis.json`` records one (``predict
            --fuse-segmentations``): ``segmentations["fused"]``, all 11 structures, on the volume of the plane whose
            grid it lies on (named ``<prefix> fused segmentation``).

    Raises:
        MissingPathError / CorruptFileError naming the offending file; no node is left in the scene on error.
    """
    from OrthoDiffusionLib.segmentation.io import read_labelmap

    folder = Path(folder)
    result = read_diagnosis_json(folder)
    if diagnosis and result.get("labels"):
        try:
            diagnosis_rows(result)                             # validate before any node is made
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptFileError(str(e).strip("'\""), folder / DIAGNOSIS_FILE) from None
    out = ImportedResult(folder=folder, result=result)
    try:
        for plane in (p for p in PLANES if p in planes):
            path = segmentation_file(folder, plane)
            if not path.exists():
                continue
            try:
                labelmap = read_labelmap(path)
                out.segmentations[plane] = segmentation_node_from_labelmap(
                    scene, labelmap, plane, f"{prefix} {plane} segmentation",
                    reference_volume_node=volumes.get(plane), show_3d=show_3d)
            except ValueError as e:
                raise CorruptFileError(str(e), path) from None
        entry = result.get("fused_segmentation") or {}
        if fused and entry:
            path = folder / str(entry.get("file") or segmentation_file_name(FUSED))
            if not path.is_file():
                raise MissingPathError("diagnosis.json records a fused segmentation but its file is missing", path)
            grid_plane = (entry.get("planes") or [None])[0]
            try:
                out.segmentations["fused"] = segmentation_node_from_labelmap(
                    scene, read_labelmap(path), None, f"{prefix} fused segmentation",
                    reference_volume_node=volumes.get(grid_plane), show_3d=show_3d)
            except ValueError as e:
                raise CorruptFileError(str(e), path) from None
        if diagnosis and result.get("labels"):
            out.diagnosis_table = diagnosis_table_node(scene, result, f"{prefix} diagnosis")
        if diagnosis and result.get("measures"):
            out.measures_table = measures_table_node(scene, result["measures"], f"{prefix} structure volumes")
    except BaseException:
        for node in out.nodes():
            remove_node(scene, node)
        raise
    report = folder / REPORT_FILE
    out.report = report if report.is_file() else None
    return out
