"""The viewer's MRML scene: one view per plane, the exam's series, and the segmentations laid over them.

Four views (:data:`VIEW_TAGS`): one slice view per plane showing that plane's series (sliced in its own acquisition
plane) with that plane's segmentation overlaid, and a 3D view with the structures of one segmentation as surfaces.
Segments are named by the structure keys of the label table (that is how :func:`OrthoDiffusionLib.segmentation.io.
write_seg_nrrd` writes them), so a structure's visibility and opacity are set by key on every plane at once.

Everything here runs on the UI thread (VTK/MRML are not thread-safe); series arrive as SimpleITK images already read
by :mod:`OrthoDiffusionLib.io`, segmentations as ``.seg.nrrd`` files read by Slicer's own segmentation reader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..errors import CorruptFileError
from ..io import PLANES
from ..slicer.mrml import matrix_from_image
from ..segmentation.io import read_labelmap

# Singleton tags of the four views (they become JavaScript identifiers in trame-slicer's UI: letters only).
VIEW_TAGS: Dict[str, str] = {"sagittal": "Sagittal", "coronal": "Coronal", "axial": "Axial", "threed": "ThreeD"}
# What each view's corner label says.
VIEW_TITLES: Dict[str, str] = {"sagittal": "Sagittal", "coronal": "Coronal", "axial": "Axial", "threed": "3D"}
# Slicer's colours for slice views (yellow sagittal, green coronal, red axial).
VIEW_COLORS: Dict[str, str] = {"sagittal": "#EFD64D", "coronal": "#6DAD4A", "axial": "#F34A33"}
# The plane whose segmentation is shown in 3D, in order of preference (sagittal holds all 11 structures).
SURFACE_PLANE_ORDER = ("sagittal", "coronal", "axial")


def viewer_layout():
    """The trame-slicer layout: sagittal | coronal on top, axial | 3D below."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    def slice_view(plane: str):
        return ViewLayoutDefinition.slice_view(plane.capitalize(), label=VIEW_TAGS[plane], color=VIEW_COLORS[plane])

    three_d = ViewLayoutDefinition.threed_view(name=VIEW_TAGS["threed"], label=VIEW_TAGS["threed"])
    return Layout(LayoutDirection.Vertical, [
        Layout(LayoutDirection.Horizontal, [slice_view("sagittal"), slice_view("coronal")]),
        Layout(LayoutDirection.Horizontal, [slice_view("axial"), three_d]),
    ])


def volume_node_from_image(scene, image: sitk.Image, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node holding ``image`` (3-D scalar) on its own geometry; returns the node.

    The voxels are copied: ``sitk.GetArrayFromImage`` gives (D, H, W), which flattened in C order is VTK's x-fastest
    point order for dimensions (W, H, D).
    """
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: a 3-D scalar image is needed, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    data = vtkImageData()
    data.SetDimensions(*image.GetSize())
    scalars = numpy_to_vtk(arr.reshape(-1), deep=True)
    scalars.SetName("ImageScalars")
    data.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass(node_class, name)
    matrix = vtkMatrix4x4()
    m = matrix_from_image(image)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(m[r, c]))
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(data)
    node.CreateDefaultDisplayNodes()
    return node


class ExamScene:
    """Series and segmentations of one exam in the MRML scene of a trame-slicer ``SlicerApp``.

    Args:
        slicer_app: the ``trame_slicer.core.SlicerApp`` whose views were created from :func:`viewer_layout`.
    """

    def __init__(self, slicer_app):
        self._app = slicer_app
        self.volumes: Dict[str, object] = {}
        self.segmentations: Dict[str, object] = {}
        self.surface_plane: Optional[str] = None

    @property
    def scene(self):
        return self._app.scene

    def view(self, key: str):
        """The trame-slicer view of ``key`` (a plane or "threed")."""
        return self._app.view_manager.get_view(VIEW_TAGS[key])

    # ---- content -------------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove every series and segmentation of the current exam."""
        for plane in PLANES:
            v = self.view(plane)
            if v is not None:
                v.set_background_volume_id(None)
        for node in list(self.volumes.values()) + list(self.segmentations.values()):
            self.scene.RemoveNode(node)
        self.volumes.clear()
        self.segmentations.clear()
        self.surface_plane = None
        self.render()

    def clear_segmentations(self) -> None:
        for node in self.segmentations.values():
            self.scene.RemoveNode(node)
        self.segmentations.clear()
        self.surface_plane = None
        self.render()

    def show_series(self, plane: str, image: sitk.Image, name: Optional[str] = None) -> None:
        """Show ``image`` (the plane's series, any orientation) in the plane's slice view, sliced in its own plane."""
        if plane in self.volumes:
            self.scene.RemoveNode(self.volumes.pop(plane))
        node = volume_node_from_image(self.scene, sitk.Cast(image, sitk.sitkFloat32), name or f"{plane} series")
        display = node.GetDisplayNode()
        lo, hi = np.percentile(sitk.GetArrayViewFromImage(image), [0.5, 99.5])
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(float(lo), float(hi if hi > lo else lo + 1.0))
        self.volumes[plane] = node
        view = self.view(plane)
        view.set_background_volume_id(node.GetID())
        slice_node = self.scene.GetNodeByID(view.get_view_node_id())
        slice_node.RotateToVolumePlane(node)
        view.fit_view_to_content()
        view.schedule_render()

    def show_segmentation(self, plane: str, path: Union[str, os.PathLike]) -> None:
        """Load a ``.seg.nrrd`` (the plane's segmentation, on that plane's series geometry) and overlay it in the
        plane's slice view; the first plane in :data:`SURFACE_PLANE_ORDER` with a segmentation is shown in 3D."""
        path = Path(path)
        # Slicer's reader aborts the process on a malformed NRRD: the library's reader checks the file first
        # (MissingPathError / CorruptFileError / NotVolumeError naming the file).
        read_labelmap(path)
        if plane in self.segmentations:
            self.scene.RemoveNode(self.segmentations.pop(plane))
        node = self._app.segmentation_editor.load_segmentation_from_file(str(path))
        if node is None or node.GetSegmentation().GetNumberOfSegments() == 0:
            if node is not None:
                self.scene.RemoveNode(node)
            raise CorruptFileError("3D Slicer's segmentation reader found no segment in this file", path)
        node.SetName(f"{plane} segmentation")
        self.segmentations[plane] = node
        display = node.GetDisplayNode()
        display.SetOpacity2DFill(0.45)
        display.SetOpacity2DOutline(1.0)
        self._update_surface_plane()
        self.render()

    def _update_surface_plane(self) -> None:
        chosen = next((p for p in SURFACE_PLANE_ORDER if p in self.segmentations), None)
        threed = self.view("threed").get_view_node_id()
        for plane, node in self.segmentations.items():
            display = node.GetDisplayNode()
            display.RemoveAllViewNodeIDs()
            display.AddViewNodeID(self.view(plane).get_view_node_id())
            if plane == chosen:
                node.CreateClosedSurfaceRepresentation()
                display.AddViewNodeID(threed)
                display.SetVisibility3D(True)
            else:
                display.SetVisibility3D(False)
        if chosen is not None and chosen != self.surface_plane:
            self.surface_plane = chosen
            self.view("threed").reset_view()
        self.surface_plane = chosen

    # ---- per-structure display -----------------------------------------------------------------------------------
    def structures_present(self) -> list:
        """Structure keys (segment IDs) present in any loaded segmentation."""
        keys = []
        for node in self.segmentations.values():
            seg = node.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                sid = seg.GetNthSegmentID(i)
                if sid not in keys:
                    keys.append(sid)
        return keys

    def set_structure_visible(self, key: str, visible: bool) -> None:
        for node in self._nodes_with(key):
            node.GetDisplayNode().SetSegmentVisibility(key, bool(visible))
        self.render()

    def set_structure_opacity(self, key: str, opacity: float) -> None:
        opacity = float(min(1.0, max(0.0, opacity)))
        for node in self._nodes_with(key):
            node.GetDisplayNode().SetSegmentOpacity(key, opacity)
        self.render()

    def set_segmentations_visible(self, visible: bool) -> None:
        for node in self.segmentations.values():
            node.GetDisplayNode().SetVisibility(bool(visible))
        self.render()

    def structure_display(self, key: str) -> Optional[tuple]:
        """(visible, opacity) of a structure as the display nodes hold it, or None if no segmentation has it."""
        for node in self._nodes_with(key):
            d = node.GetDisplayNode()
            return bool(d.GetSegmentVisibility(key)), float(d.GetSegmentOpacity2DFill(key))
        return None

    def _nodes_with(self, key: str) -> Iterable:
        return [n for n in self.segmentations.values() if n.GetSegmentation().GetSegment(key) is not None]

    def render(self) -> None:
        for key in VIEW_TAGS:
            v = self.view(key)
            if v is not None:
                v.schedule_render()
