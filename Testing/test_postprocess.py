"""clean_knee_probabilities: a bone's islands go to background, its largest piece and other structures stay."""
from __future__ import annotations

import numpy as np

from OrthoDiffusionLib.segmentation.postprocess import clean_knee_probabilities


def _probabilities(label: np.ndarray, values, confidence: float = 0.7) -> np.ndarray:
    """(C, D, H, W) probabilities whose most probable class is ``label``'s value (the rest spread evenly)."""
    c = len(values)
    probs = np.full((c, *label.shape), (1 - confidence) / (c - 1), np.float32)
    for k, v in enumerate(values):
        if v:
            probs[k][label == v] = confidence
    probs[0][label == 0] = confidence
    return probs


def test_bone_islands_become_background_and_the_rest_stays():
    values = [0, 1, 2, 10, 0]                      # background, femur, tibia, ACL, a context tissue (background)
    label = np.zeros((8, 20, 20), np.uint8)
    label[1:7, 2:10, 2:10] = 1                     # the femur
    label[2:4, 15:18, 15:18] = 1                   # a femur island
    label[1:7, 12:14, 2:10] = 2                    # the tibia: one piece
    label[5, 17, 2], label[5, 17, 6] = 10, 10      # two separate ACL voxels: not a bone, both kept
    probs = _probabilities(label, values)
    out = clean_knee_probabilities(probs, values)
    winner = np.asarray(values)[out.argmax(0)]
    assert (winner[1:7, 2:10, 2:10] == 1).all() and (winner[2:4, 15:18, 15:18] == 0).all()
    assert (winner[label == 2] == 2).all() and (winner[label == 10] == 10).all()
    np.testing.assert_allclose(out.sum(0), probs.sum(0), atol=1e-6)
    assert np.array_equal(out[:, label != 1], probs[:, label != 1])  # nothing else touched
    assert np.array_equal(clean_knee_probabilities(out, values), out)  # one piece stays as it is


def test_cartilage_that_touches_no_bone_goes_to_background():
    values = list(range(12))                       # a full-table head: class v is label value v
    label = np.zeros((8, 24, 24), np.uint8)
    label[1:7, 2:10, 2:20] = 1                     # femur
    label[1:7, 10:12, 2:20] = 4                    # femoral cartilage on it (kept, also where it reaches past it)
    label[1:7, 10:12, 20:23] = 4
    label[1:7, 18:20, 2:20] = 4                    # a femoral cartilage rim in the "muscle": no femur voxel near
    label[1:7, 12:14, 2:20] = 5                    # medial tibial cartilage with no tibia in the volume: left alone
    probs = _probabilities(label, values)
    winner = np.asarray(values)[clean_knee_probabilities(probs, values).argmax(0)]
    assert (winner[1:7, 10:12, 2:23] == 4).all() and (winner[1:7, 18:20, 2:20] == 0).all()
    assert (winner[label == 5] == 5).all() and (winner[label == 1] == 1).all()


def test_bones_are_one_piece_on_the_series_grid_too():
    """keep_largest_bone_pieces on a labelmap (e.g. after resampling onto a finer series): a bone's detached piece
    goes to background, geometry and every other label stay; an image with nothing to remove is returned as is."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.segmentation.postprocess import keep_largest_bone_pieces

    label = np.zeros((10, 30, 30), np.uint8)
    label[2:8, 2:14, 2:14] = 2                     # the tibia
    label[2:4, 20:24, 20:24] = 2                   # a detached tibia piece
    label[1:3, 20:24, 2:6] = 3                     # the patella: one piece
    label[5, 25, 25] = 6                           # a lone tibial cartilage voxel: not a bone, kept
    img = sitk.GetImageFromArray(label)
    img.SetSpacing((0.3, 0.3, 1.5))
    img.SetOrigin((4.0, -2.0, 7.0))
    out = keep_largest_bone_pieces(img)
    arr = sitk.GetArrayFromImage(out)
    assert (arr[2:4, 20:24, 20:24] == 0).all() and (arr[2:8, 2:14, 2:14] == 2).all()
    assert np.array_equal(arr[label != 2], label[label != 2])
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    assert keep_largest_bone_pieces(out) is out


def test_a_bone_part_joined_by_a_sub_millimetre_bridge_is_dropped():
    """On a 0.3 mm grid a femur part joined to the rest only by a bridge one voxel thick is one piece on the fine grid
    but not at the 1 mm scale where bone topology is judged: keep_largest_bone_pieces drops that part (the bridge's
    start stays with the bone it touches), and the anatomical check then finds the femur in one piece. A neck 2 mm
    thick is bone and stays."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.segmentation.plausibility import knee_plausibility
    from OrthoDiffusionLib.segmentation.postprocess import keep_largest_bone_pieces

    def femur(neck: int) -> sitk.Image:
        label = np.zeros((40, 40, 50), np.uint8)
        label[0:30, 0:30, 0:30] = 1                # the femur (z, y, x)
        label[0:20, 0:20, 35:47] = 1               # a part beside it (15 % of the bone)
        if neck == 1:
            label[3, 3, 30:35] = 1                 # joined by a line one voxel thick, between the 1 mm samples
        else:
            label[0:neck, 0:neck, 30:35] = 1       # joined by a neck neck x neck voxels
        img = sitk.GetImageFromArray(label)
        img.SetSpacing((0.3, 0.3, 0.3))
        return img

    thin = femur(neck=1)
    assert not _one_piece(knee_plausibility(thin, segmented=["femur"]))
    out = sitk.GetArrayFromImage(keep_largest_bone_pieces(thin))
    assert (out[0:20, 0:20, 35:47] == 0).all() and (out[0:30, 0:30, 0:30] == 1).all() and out[3, 3, 30] == 1
    assert _one_piece(knee_plausibility(keep_largest_bone_pieces(thin), segmented=["femur"]))
    thick = femur(neck=7)
    assert keep_largest_bone_pieces(thick) is thick


def _one_piece(checks) -> bool:
    return next(c for c in checks if c.name == "one piece").passed


def _knee_with_compartments(lateral_label_on_both_sides: bool = True):
    """(label, values): cruciates in the middle columns (W 10-11), tibial cartilage and a meniscus on both sides
    (W 2-7 and 14-19), all called lateral when ``lateral_label_on_both_sides``."""
    label = np.zeros((6, 12, 22), np.uint8)
    label[1:5, 2:6, 10:12] = 10                    # ACL
    label[1:5, 6:9, 10:12] = 11                    # PCL
    cart = 6 if lateral_label_on_both_sides else 5
    label[1:5, 9:11, 2:8] = cart                   # tibial cartilage, low W side
    label[1:5, 9:11, 14:20] = 6                    # tibial cartilage, high W side
    label[1:5, 7:9, 2:8] = 9                       # lateral meniscus label on the low W side
    label[1:5, 7:9, 14:20] = 9                     # and on the high W side
    return label, list(range(12))


def _side_markers(shape, w: slice) -> dict:
    fibula = np.zeros(shape, bool)
    fibula[1:5, 10:12, w] = True
    return {"fibula": fibula}


def test_tibial_cartilage_and_menisci_take_the_name_of_their_side_of_the_notch():
    """The fibula's side is lateral: what lies across the cruciates from it is medial, for either knee."""
    from OrthoDiffusionLib.segmentation.postprocess import assign_compartment_sides

    label, values = _knee_with_compartments()
    probs = _probabilities(label, values)
    lr = np.broadcast_to(np.arange(22, dtype=np.float32), label.shape)
    for fibula_cols, lateral_cols, medial_cols in ((slice(18, 21), slice(14, 20), slice(2, 8)),
                                                   (slice(0, 3), slice(2, 8), slice(14, 20))):
        out = assign_compartment_sides(probs, values, lr, _side_markers(label.shape, fibula_cols))
        winner = out.argmax(0)
        assert (winner[1:5, 9:11, lateral_cols] == 6).all() and (winner[1:5, 9:11, medial_cols] == 5).all()
        assert (winner[1:5, 7:9, lateral_cols] == 9).all() and (winner[1:5, 7:9, medial_cols] == 8).all()
        np.testing.assert_allclose(out.sum(0), probs.sum(0), atol=1e-6)
        assert np.array_equal(winner[label == 10], label[label == 10])  # cruciates untouched


def test_without_side_markers_the_networks_own_majority_names_the_sides():
    from OrthoDiffusionLib.segmentation.postprocess import assign_compartment_sides

    label, values = _knee_with_compartments(lateral_label_on_both_sides=False)
    label[1:3, 9:11, 2:8] = 6                      # part of the medial cartilage called lateral
    probs = _probabilities(label, values)
    lr = np.broadcast_to(np.arange(22, dtype=np.float32), label.shape)
    winner = assign_compartment_sides(probs, values, lr, {}).argmax(0)
    assert (winner[1:5, 9:11, 2:8] == 5).all() and (winner[1:5, 9:11, 14:20] == 6).all()
    assert (winner[1:5, 7:9, 2:8] == 8).all() and (winner[1:5, 7:9, 14:20] == 9).all()


def test_compartment_sides_are_left_alone_without_cruciates():
    from OrthoDiffusionLib.segmentation.postprocess import assign_compartment_sides

    label, values = _knee_with_compartments()
    label[np.isin(label, (10, 11))] = 0
    probs = _probabilities(label, values)
    lr = np.broadcast_to(np.arange(22, dtype=np.float32), label.shape)
    assert np.array_equal(assign_compartment_sides(probs, values, lr, _side_markers(label.shape, slice(18, 21))),
                          probs)


def test_cruciate_labels_far_from_the_notch_go_to_background():
    """A PCL label 45 mm beside the notch (soft tissue beyond the condyles) goes to background; the cruciates in
    the notch, 20 mm or less from its centre, and every other label stay."""
    from OrthoDiffusionLib.segmentation.postprocess import keep_cruciates_in_notch

    label, values = _knee_with_compartments()
    label[1:3, 2:4, 0:1] = 11                      # a PCL label far out (left-right 0 mm; notch at 10.5 mm x 4 = 42)
    probs = _probabilities(label, values)
    lr = np.broadcast_to(np.arange(22, dtype=np.float32) * 4.0, label.shape)  # 4 mm columns
    winner = keep_cruciates_in_notch(probs, values, lr).argmax(0)
    assert (winner[1:3, 2:4, 0:1] == 0).all()
    assert np.array_equal(winner[label != 11], label[label != 11]) and (winner[1:5, 6:9, 10:12] == 11).all()
    label[1:3, 2:4, 0:1] = 0
    label[1:3, 2:4, 7:8] = 11                      # 14.5 mm from the centre: inside the notch band, kept
    probs = _probabilities(label, values)
    assert (keep_cruciates_in_notch(probs, values, lr).argmax(0)[1:3, 2:4, 7:8] == 11).all()


def test_left_right_coordinates_follow_the_image_geometry():
    """left_right_mm gives each voxel's LPS x, whatever the slice orientation (here a sagittal grid: slices along x)."""
    import SimpleITK as sitk

    from OrthoDiffusionLib.segmentation.postprocess import left_right_mm

    img = sitk.Image([5, 4, 3], sitk.sitkUInt8)
    img.SetSpacing((0.5, 0.7, 4.0))
    img.SetOrigin((-30.0, 12.0, 7.0))
    img.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))  # columns: array W -> y, H -> -z, D (slices) -> -x
    lr = left_right_mm(img)
    assert lr.shape == (3, 4, 5)
    for k, j, i in ((0, 0, 0), (2, 3, 4), (1, 2, 3)):
        assert lr[k, j, i] == np.float32(img.TransformIndexToPhysicalPoint((i, j, k))[0])
