"""The Slicer module's MRML code (OrthoDiffusionLib.slicer.mrml) on a real MRML scene from the pip package ``slicer-core``:
the real DESS DICOM read by MRML's volume reader, volume node <-> SimpleITK (RAS/LPS), plane assignment, and a
prediction output folder imported as segmentation and table nodes on the volumes' geometry."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from io_helpers import load_dess, reformat
from OrthoDiffusionLib import labels
from OrthoDiffusionLib.slicer import mrml
from OrthoDiffusionLib.slicer.child_process import ChildProcess, sample_exam_arguments, sample_exam_series
from core_only import CORE_ENV, core_only_command
from OrthoDiffusionLib.errors import CorruptFileError, MissingPathError
from OrthoDiffusionLib.io import read_series
from OrthoDiffusionLib.segmentation.io import write_seg_nrrd


@pytest.fixture(scope="module")
def slicer():
    import slicer as slicer_namespace

    if not hasattr(slicer_namespace, "vtkMRMLScene"):
        pytest.fail("`import slicer` is not slicer-core's MRML namespace (the unrelated pip package 'slicer'?)")
    return slicer_namespace


@pytest.fixture()
def scene(slicer):
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def dess(shared_data):
    return load_dess(shared_data)


@pytest.fixture(scope="module")
def coronal_image(dess):
    return sitk.Cast(reformat(dess.image, "coronal", spacing=(1.5, 1.5, 3.0)), sitk.sitkInt16)


def _labelmap(reference: sitk.Image, structures) -> sitk.Image:
    """uint8 labelmap on ``reference``'s grid with one box per structure value (z, y, x boxes, all distinct)."""
    size = reference.GetSize()
    arr = np.zeros(size[::-1], np.uint8)
    nz, ny, nx = arr.shape
    for i, s in enumerate(structures):
        z0 = (i * nz) // (len(structures) + 1)
        arr[z0:z0 + max(1, nz // 16), ny // 4:ny // 4 + ny // 8, (i * nx) // 12:(i * nx) // 12 + nx // 16] = s.value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(reference)
    return out


def _diagnosis_json(anatomy: str = "knee") -> dict:
    rng = np.random.default_rng(3)
    entries = []
    for d in labels.diagnosis_labels(anatomy):
        w = rng.dirichlet([1.0, 1.0, 1.0])
        p = float(rng.uniform())
        entries.append({"key": d.key, "name": d.name, "probability": p, "calibrated_probability": min(1.0, p * 0.9),
                        "uncertainty": 0.05,
                        "plane_weights": {"sagittal": float(w[0]), "coronal": float(w[1]),
                                          "axial": float(1.0 - w[0] - w[1])}})
    measures = [{"plane": "sagittal", "value": s.value, "key": s.key, "name": s.name, "volume_ml": 1.5 * s.value,
                 "mean_thickness_mm": 2.0 if s.kind == "cartilage" else None} for s in labels.knee_structures()]
    return {"format": "orthodiffusion.result", "version": 1, "labels": entries, "measures": measures,
            "warnings": ["axial plane missing"]}


def _assert_same_geometry(seg_node, volume_node, segment_id: str) -> np.ndarray:
    mask, matrix = mrml.segment_labelmap(seg_node, segment_id)
    assert np.allclose(matrix, mrml.ijk_to_ras(volume_node), atol=1e-6)
    assert mask.shape[::-1] == volume_node.GetImageData().GetDimensions()
    return mask


def test_real_dicom_volume_node_matches_library_reader(scene, dess):
    node = mrml.load_volume_file(scene, dess.source, "DESS")
    image = mrml.volume_node_to_image(node)
    assert image.GetSize() == dess.image.GetSize() == (512, 512, 80)
    assert np.allclose(image.GetOrigin(), dess.image.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetSpacing(), dess.image.GetSpacing(), atol=1e-5)
    assert np.allclose(image.GetDirection(), dess.image.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), dess.array)
    # MRML's RAS: the LPS origin has its first two coordinates negated
    ras = mrml.ijk_to_ras(node)[:3, 3]
    assert np.allclose(ras, [-dess.origin[0], -dess.origin[1], dess.origin[2]], atol=1e-3)


def test_volume_node_round_trip_and_linear_transform(scene, slicer, coronal_image, tmp_path):
    node = mrml.image_to_volume_node(coronal_image, scene, "coronal")
    back = mrml.volume_node_to_image(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(coronal_image))
    assert np.allclose(back.GetOrigin(), coronal_image.GetOrigin()) and np.allclose(back.GetDirection(),
                                                                                   coronal_image.GetDirection())
    written = read_series(mrml.write_volume_node(node, tmp_path / "coronal.nii.gz"))
    assert written.plane == "coronal" and np.allclose(written.origin, coronal_image.GetOrigin(), atol=1e-3)

    import vtk

    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)                              # 10 mm to the patient's right (+R = -L)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volume_node_to_image(node)
    assert np.allclose(np.subtract(moved.GetOrigin(), coronal_image.GetOrigin()), [-10.0, 0.0, 0.0], atol=1e-6)


def test_assign_planes_from_scene(scene, dess, coronal_image):
    sag = mrml.load_volume_file(scene, dess.source, "DESS")
    cor = mrml.image_to_volume_node(coronal_image, scene, "coronal reformat")
    coarse = mrml.image_to_volume_node(sitk.Shrink(coronal_image, [2, 2, 2]), scene, "coarse coronal")
    label = mrml.image_to_volume_node(sitk.Cast(coronal_image > 100, sitk.sitkUInt8), scene, "mask")
    scene.RemoveNode(label)
    labelmap = scene.AddNode(__import__("slicer").vtkMRMLLabelMapVolumeNode())
    labelmap.SetAndObserveImageData(cor.GetImageData())
    assigned = mrml.assign_planes(mrml.scene_volume_nodes(scene))
    assert list(assigned) == ["sagittal", "coronal"]                    # no axial series; label map ignored
    assert assigned["sagittal"] is sag and assigned["coronal"] is cor     # more slices beat the coarse copy
    assert mrml.volume_plane(coarse).plane == "coronal"


def _result_folder(tmp_path, dess, coronal_image):
    out = tmp_path / "result"
    out.mkdir()
    sag_lab = _labelmap(dess.image, labels.knee_structures("sagittal"))
    cor_lab = _labelmap(coronal_image, labels.knee_structures("coronal"))
    write_seg_nrrd(sag_lab, out / "segmentation_sagittal.seg.nrrd", plane="sagittal")
    write_seg_nrrd(cor_lab, out / "segmentation_coronal.seg.nrrd", plane="coronal")
    (out / "diagnosis.json").write_text(json.dumps(_diagnosis_json()), encoding="utf-8")
    (out / "report.html").write_text("<html></html>", encoding="utf-8")
    return out, sag_lab, cor_lab


def test_import_result_folder(scene, slicer, dess, coronal_image, tmp_path):
    folder, sag_lab, cor_lab = _result_folder(tmp_path, dess, coronal_image)
    volumes = {"sagittal": mrml.load_volume_file(scene, dess.source, "DESS"),
               "coronal": mrml.image_to_volume_node(coronal_image, scene, "coronal")}
    imported = mrml.import_result_folder(scene, folder, volumes)

    assert set(imported.segmentations) == {"sagittal", "coronal"}
    for plane, want_n, lab in (("sagittal", 11, sag_lab), ("coronal", 9, cor_lab)):
        node = imported.segmentations[plane]
        segmentation = node.GetSegmentation()
        structures = labels.knee_structures(plane)
        assert segmentation.GetNumberOfSegments() == want_n == len(structures)
        assert list(segmentation.GetSegmentIDs()) == [s.key for s in structures]
        arr = sitk.GetArrayFromImage(lab)
        for s in structures:
            segment = segmentation.GetSegment(s.key)
            assert segment.GetName() == s.name
            assert np.allclose(segment.GetColor(), np.asarray(s.color) / 255.0, atol=1e-6)
            mask = _assert_same_geometry(node, volumes[plane], s.key)
            assert mask.any() and np.array_equal(mask, arr == s.value)
        assert segmentation.ContainsRepresentation("Closed surface")      # shown in 3D
        assert node.GetDisplayNode() is not None
    assert "Patella" not in [imported.segmentations["coronal"].GetSegmentation().GetNthSegment(i).GetName()
                             for i in range(9)]

    table = imported.diagnosis_table
    assert table.GetNumberOfRows() == 8
    assert mrml.table_column(table, "Abnormality") == [d.name for d in labels.diagnosis_labels("knee")]
    weights = np.array([mrml.table_column(table, c) for c in ("Sagittal weight", "Coronal weight", "Axial weight")])
    assert np.allclose(weights.sum(axis=0), 1.0, atol=1e-9)
    want_p = [e["probability"] for e in imported.result["labels"]]
    assert np.allclose(mrml.table_column(table, "Probability"), want_p)
    measures = imported.measures_table
    assert measures.GetNumberOfRows() == 11
    thickness = mrml.table_column(measures, "mean_thickness_mm")
    assert np.isnan(thickness[0]) and thickness[3] == pytest.approx(2.0)
    assert mrml.table_column(measures, "name")[0] == "Femur"
    assert imported.report == folder / "report.html"

    only_coronal = mrml.import_result_folder(scene, folder, volumes, prefix="again", diagnosis=False,
                                             show_3d=False, planes=["coronal"])
    assert list(only_coronal.segmentations) == ["coronal"]
    assert only_coronal.diagnosis_table is None and only_coronal.measures_table is None


def test_import_fused_segmentation(scene, slicer, dess, coronal_image, tmp_path):
    """``predict --fuse-segmentations`` output: one node with all 11 structures on the sagittal volume's grid."""
    folder, sag_lab, _ = _result_folder(tmp_path, dess, coronal_image)
    fused = _labelmap(dess.image, labels.knee_structures())
    write_seg_nrrd(fused, folder / "segmentation_fused.seg.nrrd", structures=labels.knee_structures())
    data = json.loads((folder / "diagnosis.json").read_text())
    data["fused_segmentation"] = {"file": "segmentation_fused.seg.nrrd", "planes": ["sagittal", "coronal"]}
    (folder / "diagnosis.json").write_text(json.dumps(data), encoding="utf-8")
    volumes = {"sagittal": mrml.load_volume_file(scene, dess.source, "DESS"),
               "coronal": mrml.image_to_volume_node(coronal_image, scene, "coronal")}
    imported = mrml.import_result_folder(scene, folder, volumes, show_3d=False)
    assert list(imported.segmentations) == ["sagittal", "coronal", "fused"]
    node = imported.segmentations["fused"]
    assert node.GetName() == "OrthoDiffusion fused segmentation"
    assert list(node.GetSegmentation().GetSegmentIDs()) == [s.key for s in labels.knee_structures()]
    arr = sitk.GetArrayFromImage(fused)
    for s in labels.knee_structures():
        mask = _assert_same_geometry(node, volumes["sagittal"], s.key)
        assert np.array_equal(mask, arr == s.value)
    assert list(mrml.import_result_folder(scene, folder, volumes, prefix="b", show_3d=False,
                                          fused=False).segmentations) == ["sagittal", "coronal"]
    # recorded but missing: one error naming the file, and no node left behind
    (folder / "segmentation_fused.seg.nrrd").unlink()
    before = scene.GetNumberOfNodes()
    with pytest.raises(MissingPathError, match="segmentation_fused.seg.nrrd"):
        mrml.import_result_folder(scene, folder, volumes, prefix="c", show_3d=False)
    assert scene.GetNumberOfNodes() == before


def test_segmentation_matches_slicers_own_seg_nrrd_reader(scene, slicer, dess, tmp_path):
    """Independent check of the RAS/LPS handling: MRML's segmentation storage node reads the same .seg.nrrd."""
    volume = mrml.load_volume_file(scene, dess.source, "DESS")
    lab = _labelmap(dess.image, labels.knee_structures("sagittal"))
    path = write_seg_nrrd(lab, tmp_path / "segmentation_sagittal.seg.nrrd", plane="sagittal")
    ours = mrml.segmentation_node_from_labelmap(scene, lab, "sagittal", "ours", reference_volume_node=volume,
                                                show_3d=False)
    theirs = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(theirs)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(theirs)
    assert theirs.GetSegmentation().GetNumberOfSegments() == 11
    for s in labels.knee_structures("sagittal"):
        their_mask, their_matrix = mrml.segment_labelmap(theirs, s.key)
        our_mask, our_matrix = mrml.segment_labelmap(ours, s.key)
        assert theirs.GetSegmentation().GetSegment(s.key).GetName() == s.name
        # Slicer may crop its labelmap to the file's extent: compare the RAS centres of the segment voxels
        def centre(mask, matrix):
            zyx = np.argwhere(mask).mean(axis=0)
            return (matrix @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]
        assert np.allclose(centre(their_mask, their_matrix), centre(our_mask, our_matrix), atol=1e-4)
        assert their_mask.sum() == our_mask.sum()


def test_labelmap_on_another_grid_is_resampled_onto_the_volume(scene, dess, coronal_image):
    volume = mrml.image_to_volume_node(coronal_image, scene, "coronal")
    fine = sitk.Image([s * 2 for s in coronal_image.GetSize()], sitk.sitkUInt8)
    fine.SetSpacing([s / 2 for s in coronal_image.GetSpacing()])
    fine.SetDirection(coronal_image.GetDirection())
    fine.SetOrigin(coronal_image.GetOrigin())                 # fine voxel 2m has the centre of coarse voxel m
    arr = sitk.GetArrayFromImage(fine)
    arr[20:40, 60:100, 60:100] = 1
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(fine)
    node = mrml.segmentation_node_from_labelmap(scene, lab, "coronal", "resampled", reference_volume_node=volume,
                                                show_3d=False)
    mask = _assert_same_geometry(node, volume, "femur")
    assert mask[10:20, 30:50, 30:50].all() and mask.sum() == 10 * 20 * 20


def test_simulated_sample_loads_as_three_assigned_volumes(scene, tmp_path):
    """The module's "Load sample" path: `orthodiffusion simulate exam` in a child process with only the core
    packages importable (as in Slicer), series from exam.json, read by MRML, assigned to their planes."""
    proc = ChildProcess(core_only_command(*sample_exam_arguments(tmp_path / "sample", seed=1, matrix=48)),
                        env=CORE_ENV).start()
    assert proc.wait(timeout=300) == 0, proc.output()
    series = sample_exam_series(tmp_path / "sample")
    assert list(series) == ["sagittal", "coronal", "axial"]
    nodes = {plane: mrml.load_volume_file(scene, path, f"Sample {plane}") for plane, path in series.items()}
    assert mrml.assign_planes(mrml.scene_volume_nodes(scene)) == nodes
    with pytest.raises(CorruptFileError, match="exam.json"):
        sample_exam_series(tmp_path)


def test_bad_result_folder_leaves_no_nodes(scene, dess, coronal_image, tmp_path):
    folder, _, _ = _result_folder(tmp_path, dess, coronal_image)
    volumes = {"sagittal": mrml.load_volume_file(scene, dess.source, "DESS")}
    bad = _diagnosis_json()
    bad["labels"][2]["plane_weights"] = {"sagittal": 0.9, "coronal": 0.9, "axial": 0.0}
    (folder / "diagnosis.json").write_text(json.dumps(bad), encoding="utf-8")
    before = scene.GetNumberOfNodes()
    with pytest.raises(CorruptFileError, match=r"diagnosis\.json.*medial_meniscus_tear.*sum to 1"):
        mrml.import_result_folder(scene, folder, volumes, show_3d=False)
    assert scene.GetNumberOfNodes() == before
    (folder / "diagnosis.json").write_text(json.dumps(_diagnosis_json()), encoding="utf-8")
    (folder / "segmentation_coronal.seg.nrrd").write_bytes(b"NRRD0004\ntruncated")   # sagittal imports first
    with pytest.raises(CorruptFileError, match="segmentation_coronal"):
        mrml.import_result_folder(scene, folder, volumes, show_3d=False)
    assert scene.GetNumberOfNodes() == before
    (folder / "diagnosis.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptFileError, match="diagnosis.json"):
        mrml.import_result_folder(scene, folder, volumes)
    with pytest.raises(MissingPathError):
        mrml.import_result_folder(scene, tmp_path / "nowhere", volumes)
    with pytest.raises(MissingPathError):
        mrml.load_volume_file(scene, tmp_path / "missing.nii.gz")


def test_exported_volume_carries_the_dicom_anatomy_tags_to_the_check(scene, coronal_image, tmp_path):
    """The module writes a DICOM-loaded volume's BodyPartExamined into the NRRD it hands to ``predict``."""
    from OrthoDiffusionLib.errors import AnatomyMismatchError
    from OrthoDiffusionLib.io import Exam

    node = mrml.image_to_volume_node(coronal_image, scene, "coronal")
    path = mrml.write_volume_node(node, tmp_path / "coronal.nrrd",
                                  dicom_fields={"BodyPartExamined": "SHOULDER", "StudyDescription": "MR Schulter"})
    assert read_series(path).meta["body_part_examined"] == "SHOULDER"
    with pytest.raises(AnatomyMismatchError, match="BodyPartExamined 'SHOULDER'"):
        Exam.from_series(coronal=path)
    plain = read_series(mrml.write_volume_node(node, tmp_path / "plain.nrrd"))
    assert plain.meta.get("body_part_examined") is None
