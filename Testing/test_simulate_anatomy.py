"""Procedural knee: landmarks, sizes, side mirroring, all structures present; lesions change the tissue labels."""
from __future__ import annotations

import numpy as np
import pytest

from OrthoDiffusionLib.simulate.lesions import LESION_ORDER, apply_abnormalities
from OrthoDiffusionLib.simulate.procedural import ProceduralKnee
from OrthoDiffusionLib.simulate.tissues import LANDMARK_NAMES, AnatomySource, Tissue


def _grid(knee: ProceduralKnee, center, half, step) -> np.ndarray:
    """(N,3) LPS points of a box in the knee's own axes around a canonical point."""
    ax = np.arange(-half, half + 1e-6, step)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3) + np.asarray(center)
    return knee.to_patient(g)


def test_protocol_and_landmarks():
    k = ProceduralKnee("right", seed=3)
    assert isinstance(k, AnatomySource)
    assert set(k.landmarks) == set(LANDMARK_NAMES)
    for name in ("axis_lateral", "axis_anterior", "axis_superior"):
        assert np.linalg.norm(k.landmarks[name]) == pytest.approx(1.0)
    # right knee: lateral points to patient right (-x in LPS), anterior to -y
    assert k.landmarks["axis_lateral"][0] < -0.95 and k.landmarks["axis_anterior"][1] < -0.95
    left = ProceduralKnee("left", seed=3)
    assert left.landmarks["axis_lateral"][0] > 0.95
    lo, hi = k.bounds()
    for name in LANDMARK_NAMES:
        v = k.landmarks[name]
        if v.shape == (3,) and not name.startswith("axis"):
            assert np.all(v > lo) and np.all(v < hi), name
    # ACL runs from posterior-superior-lateral (femur) to anterior-inferior (tibia)
    d = k.landmarks["acl_tibial"] - k.landmarks["acl_femoral"]
    assert d @ k.landmarks["axis_anterior"] > 15 and d @ k.landmarks["axis_superior"] < -10
    assert 30 < np.linalg.norm(d) < 45


def test_left_is_mirror_of_right():
    r = ProceduralKnee("right", center=(-90, 0, 0))
    l_ = ProceduralKnee("left", center=(90, 0, 0))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, size=(20000, 3)) + np.array([-90, 0, 0])
    mirrored = pts * np.array([-1, 1, 1])
    np.testing.assert_array_equal(r.tissue_at(pts), l_.tissue_at(mirrored))


def test_sizes_and_all_structures_present():
    k = ProceduralKnee("right")
    # condylar width: femur extent along the lateral axis 8 mm above the joint line, through the condyles
    x = np.arange(-60, 60, 0.25)
    line = k.to_patient(np.stack([x, np.full_like(x, -8.0), np.full_like(x, 8.0)], axis=1))
    femur = x[k.tissue_at(line) == Tissue.FEMUR]
    width = femur.max() - femur.min()
    assert 72 <= width <= 88, width
    pts = _grid(k, (0, 0, 5), 60, 1.0)
    t = k.tissue_at(pts)
    present = set(np.unique(t).tolist())
    for tissue in range(1, 22):  # every tissue but oedema (lesions only) and the generic soft tissue (unused)
        assert tissue in present, Tissue(tissue).name
    assert Tissue.EDEMA not in present


# canonical centres (knee frame) and box half-size of where each lesion acts
_REGION = {
    "acl_injury": ((4, -4, 7), 16), "pcl_injury": ((-5, -12, 3), 18),
    "medial_meniscus_tear": ((-20, -15, 1), 14), "lateral_meniscus_tear": ((20, -12, 1), 14),
    "mcl_injury": ((-36, 0, -10), 32), "lcl_injury": ((40, -12, 2), 26),
    "patellar_dislocation": ((10, 36, 36), 32), "joint_effusion": ((0, 26, 54), 28),
}


@pytest.mark.parametrize("key", LESION_ORDER)
def test_lesion_changes_tissue_where_expected(key):
    k = ProceduralKnee("left", seed=11)
    c, half = _REGION[key]
    pts = _grid(k, c, half, 1.0)
    before = k.tissue_at(pts)
    src = apply_abnormalities(k, {key: True}, np.random.default_rng(5))
    after = src.tissue_at(pts)
    n = lambda arr, t: int(np.sum(arr == t))  # noqa: E731
    if key in ("acl_injury", "pcl_injury"):
        lig = Tissue.ACL if key == "acl_injury" else Tissue.PCL
        assert n(after, lig) < 0.8 * n(before, lig)
        assert n(after, Tissue.FLUID) > n(before, Tissue.FLUID) + 50
        assert n(after, Tissue.EDEMA) > 50
    elif key.endswith("meniscus_tear"):
        m = Tissue.MEDIAL_MENISCUS if key.startswith("medial") else Tissue.LATERAL_MENISCUS
        cleft = (before == m) & (after == Tissue.FLUID)
        assert cleft.sum() > 20
        assert np.all(after[before != m] == before[before != m])  # only the meniscus changes
    elif key in ("mcl_injury", "lcl_injury"):
        lig = Tissue.MCL if key == "mcl_injury" else Tissue.LCL
        assert n(after, lig) > n(before, lig) * 0.9
        assert n(after, Tissue.EDEMA) + n(after, Tissue.FLUID) > n(before, Tissue.EDEMA) + n(before, Tissue.FLUID) + 200
        assert n(after, Tissue.FEMUR) == n(before, Tissue.FEMUR)
    elif key == "patellar_dislocation":
        lat = k.landmarks["axis_lateral"]
        c_before = pts[before == Tissue.PATELLA].mean(axis=0)
        c_after = pts[after == Tissue.PATELLA].mean(axis=0)
        assert (c_after - c_before) @ lat > 8.0
        assert n(after, Tissue.EDEMA) > 100
        assert abs(n(after, Tissue.PATELLA) - n(before, Tissue.PATELLA)) < 0.1 * n(before, Tissue.PATELLA)
    elif key == "joint_effusion":
        assert n(after, Tissue.FLUID) > n(before, Tissue.FLUID) + 5000  # > 5 ml in the recess
        assert n(after, Tissue.FEMUR) == n(before, Tissue.FEMUR)
        assert n(after, Tissue.TENDON) == n(before, Tissue.TENDON)


def test_lesions_are_generic_wrappers():
    """Lesions only use landmarks + tissue_at: they wrap any AnatomySource (here a minimal one)."""
    base = ProceduralKnee("right", seed=2)

    class Minimal:
        side = base.side
        landmarks = base.landmarks

        def tissue_at(self, points):
            return base.tissue_at(points)

        def bounds(self):
            return base.bounds()

    src = apply_abnormalities(Minimal(), {k: True for k in LESION_ORDER}, np.random.default_rng(0))
    assert isinstance(src, AnatomySource)
    pts = _grid(base, (0, 0, 10), 40, 2.0)
    assert src.tissue_at(pts).dtype == np.uint8
    with pytest.raises(KeyError):
        apply_abnormalities(base, {"torn_everything": True}, np.random.default_rng(0))
