"""AtlasAnatomy: real knee label maps (SPL atlas, OAI DESS labels) as deformable anatomy sources."""
from __future__ import annotations

import time

import numpy as np
import pytest

from OrthoDiffusionLib.errors import CorruptFileError, InvalidVolumeError, MissingPathError
from OrthoDiffusionLib.simulate import atlas as atlas_mod
from OrthoDiffusionLib.simulate.atlas import AtlasAnatomy, default_atlas_paths
from OrthoDiffusionLib.simulate.atlas_tables import (SPL_STRUCTURES, read_color_table, spl_lookup_table,
                                                     tissue_for_spl_name)
from OrthoDiffusionLib.simulate.tissues import LANDMARK_NAMES, AnatomySource, Tissue

IDENTITY = dict(deformation=0.0, scale_range=(1.0, 1.0), rotation_deg=0.0, anisotropy=0.0)
STRUCTURES = [Tissue(v) for v in range(1, 12)]


@pytest.fixture(scope="module", autouse=True)
def fresh_atlas_cache(tmp_path_factory):
    """Build the atlases from the label maps in this session (no stale on-disk cache from another code version)."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("atlas_cache")
    mp.setenv("ORTHODIFFUSION_CACHE_DIR", str(folder))
    mp.setattr(atlas_mod, "_CACHE", {})
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def paths(shared_data):
    return {"spl": shared_data / "spl_knee_atlas" / "SPLKneeAtlasLabels.nrrd",
            "oai": shared_data / "oai_dess_labels" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"}


def make(kind, paths, **kw):
    factory = AtlasAnatomy.from_spl if kind == "spl" else AtlasAnatomy.from_oai
    return factory(paths[kind], **kw)


def box_grid(center, half, step):
    t = np.arange(-half, half + 1e-9, step)
    g = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    return g + center


def counts(src, step=1.5, half=72.0):
    """Voxel counts of each tissue on a step-mm grid around the knee centre (mm^3 = count * step^3)."""
    lab = src.tissue_at(box_grid(src.landmarks["knee_center"], half, step))
    return np.bincount(lab, minlength=32)


def centroid(src, tissue, step=1.5, half=60.0):
    pts = box_grid(src.landmarks["knee_center"], half, step)
    lab = src.tissue_at(pts)
    return pts[lab == tissue].mean(axis=0)


def test_side_of_each_atlas_from_fibula(paths):
    spl = make("spl", paths, seed=0, **IDENTITY)
    oai = make("oai", paths, seed=0, **IDENTITY)
    assert spl.atlas_side == "left" and oai.atlas_side == "right"
    for src in (spl, oai):
        vol = src.volume
        fib = vol.points_of([Tissue.FIBULA]).mean(axis=0)
        tib = vol.points_of([Tissue.TIBIA]).mean(axis=0)
        # LPS: +x is patient left; the fibula is lateral
        assert (fib[0] > tib[0]) == (src.atlas_side == "left")


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_protocol_landmarks_and_axes(kind, paths):
    src = make(kind, paths, seed=3, side="right")
    assert isinstance(src, AnatomySource)
    assert src.side == "right"
    assert set(LANDMARK_NAMES) <= set(src.landmarks)
    for name in LANDMARK_NAMES:
        v = src.landmarks[name]
        scalar = name.endswith("_radius") or name.startswith("ligament_radius_")
        assert v.shape == ((1,) if scalar else (3,)), name
        assert np.all(np.isfinite(v)), name
    axes = np.stack([src.landmarks[n] for n in ("axis_lateral", "axis_anterior", "axis_superior")])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-6)
    # LPS: a right knee's lateral side is patient right (-x), anterior is -y, superior is +z
    assert src.landmarks["axis_lateral"][0] < -0.9
    assert src.landmarks["axis_anterior"][1] < -0.9
    assert src.landmarks["axis_superior"][2] > 0.9
    for name in ("ligament_radius_acl", "ligament_radius_pcl", "ligament_radius_mcl", "ligament_radius_lcl"):
        assert 1.5 < src.landmarks[name][0] < 8.0, name
    for name in ("medial_meniscus_radius", "lateral_meniscus_radius"):
        assert 12.0 < src.landmarks[name][0] < 35.0, name
    lo, hi = src.bounds()
    for name in LANDMARK_NAMES:
        if src.landmarks[name].shape == (3,) and not name.startswith("axis_"):
            assert np.all(src.landmarks[name] > lo) and np.all(src.landmarks[name] < hi), name
    # nothing but air just outside the bounds (all six faces)
    g = np.linspace(0.0, 1.0, 40)
    uv = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (lo[axis] - 1.0, hi[axis] + 1.0):
            face = np.empty((len(uv), 3))
            face[:, axis] = value
            face[:, others] = lo[others] + uv * (hi[others] - lo[others])
            assert np.all(src.tissue_at(face) == Tissue.AIR)


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_identity_transform_samples_the_atlas_exactly(kind, paths):
    probe = make(kind, paths, seed=0, **IDENTITY)
    src = make(kind, paths, seed=0, side=probe.atlas_side, **IDENTITY)
    vol = src.volume
    rng = np.random.default_rng(0)
    flat = rng.integers(0, vol.labels.size, 300_000)
    # include every voxel of one full slice through the knee as well
    k = int(np.rint(vol.index_of_lps(src.landmarks["knee_center"][None])[0, 2]))
    flat = np.concatenate([flat, np.arange(k * vol.labels[0].size, (k + 1) * vol.labels[0].size)])
    ijk = vol.unravel(flat)
    got = src.tissue_at(vol.lps_of_index(ijk))
    np.testing.assert_array_equal(got, vol.labels.reshape(-1)[flat])
    assert set(np.unique(got)) >= set(int(s) for s in STRUCTURES)


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_all_structures_present_and_whole_cross_section(kind, paths):
    src = make(kind, paths, seed=5, side="left")
    c = counts(src)
    for s in STRUCTURES:
        assert c[s] > 150, (s.name, c[s])  # >= 0.5 cm^3 of each structure
    for t in (Tissue.FIBULA, Tissue.MCL, Tissue.LCL, Tissue.TENDON, Tissue.FAT, Tissue.MUSCLE, Tissue.SKIN,
              Tissue.VESSEL):
        assert c[t] > 50, (t.name, c[t])
    # axial slice through the knee centre: bone is surrounded by soft tissue, then skin, then air
    lm = src.landmarks
    t = np.arange(-90, 90.1, 0.5)
    ray = lm["knee_center"] + t[:, None] * lm["axis_anterior"]
    lab = src.tissue_at(ray)
    inside = np.flatnonzero(lab != Tissue.AIR)
    assert lab[inside[0]] == Tissue.SKIN and lab[inside[-1]] == Tissue.SKIN
    assert np.all(lab[inside[0]:inside[-1] + 1] != Tissue.AIR)  # no holes of air inside the body


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_landmarks_lie_on_their_structures(kind, paths):
    src = make(kind, paths, seed=11, side="right")
    lm = src.landmarks
    ball = box_grid(np.zeros(3), 5.0, 1.0)
    ball = ball[np.linalg.norm(ball, axis=1) <= 5.0]

    def near(name, tissue, radius=5.0):
        pts = lm[name] + ball * (radius / 5.0)
        return np.count_nonzero(src.tissue_at(pts) == tissue)

    for name, lig, bone in (("acl_femoral", Tissue.ACL, Tissue.FEMUR), ("acl_tibial", Tissue.ACL, Tissue.TIBIA),
                            ("pcl_femoral", Tissue.PCL, Tissue.FEMUR), ("pcl_tibial", Tissue.PCL, Tissue.TIBIA),
                            ("mcl_femoral", Tissue.MCL, Tissue.FEMUR), ("mcl_tibial", Tissue.MCL, Tissue.TIBIA),
                            ("lcl_femoral", Tissue.LCL, Tissue.FEMUR), ("lcl_fibular", Tissue.LCL, Tissue.FIBULA)):
        assert near(name, lig) > 10, name
        assert near(name, bone, radius=9.0) > 0, f"{name} not at {bone.name}"
    # femoral ends are superior to tibial ends; ACL tibial end anterior to its femoral end, PCL the other way
    sup, ant = lm["axis_superior"], lm["axis_anterior"]
    for a, b in (("acl_femoral", "acl_tibial"), ("pcl_femoral", "pcl_tibial"), ("mcl_femoral", "mcl_tibial"),
                 ("lcl_femoral", "lcl_fibular")):
        assert np.dot(lm[a] - lm[b], sup) > 10.0, (a, b)
    assert np.dot(lm["acl_tibial"] - lm["acl_femoral"], ant) > 5.0
    assert np.dot(lm["pcl_tibial"] - lm["pcl_femoral"], ant) < -5.0
    assert near("patella_center", Tissue.PATELLA) > 100
    assert np.dot(lm["suprapatellar_recess"] - lm["patella_center"], sup) > 10.0
    assert np.dot(lm["suprapatellar_recess"] - lm["knee_center"], ant) > 0.0
    assert src.tissue_at(lm["suprapatellar_recess"][None])[0] not in (Tissue.AIR, Tissue.FEMUR, Tissue.PATELLA)
    lat = lm["axis_lateral"]
    assert np.dot(lm["medial_meniscus_center"] - lm["knee_center"], lat) < -10.0
    assert np.dot(lm["lateral_meniscus_center"] - lm["knee_center"], lat) > 10.0
    for side, tissue in (("medial", Tissue.MEDIAL_MENISCUS), ("lateral", Tissue.LATERAL_MENISCUS)):
        c = centroid(src, tissue, step=1.0, half=40.0)
        assert np.linalg.norm(c - lm[f"{side}_meniscus_center"]) < 12.0


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_mirroring_swaps_lateral_keeps_medial_structures_medial(kind, paths):
    right = make(kind, paths, seed=2, side="right")
    left = make(kind, paths, seed=2, side="left")
    assert np.sign(right.landmarks["axis_lateral"][0]) == -np.sign(left.landmarks["axis_lateral"][0])
    for src in (right, left):
        kc, lat = src.landmarks["knee_center"], src.landmarks["axis_lateral"]
        fib = centroid(src, Tissue.FIBULA)
        mm = centroid(src, Tissue.MEDIAL_MENISCUS)
        lmen = centroid(src, Tissue.LATERAL_MENISCUS)
        mcl = centroid(src, Tissue.MCL)
        assert np.dot(fib - kc, lat) > 15.0
        assert np.dot(lmen - kc, lat) > 10.0
        assert np.dot(mm - kc, lat) < -10.0
        assert np.dot(mcl - kc, lat) < -20.0
        # LPS: the fibula of a right knee is on patient right (-x) of the tibia, of a left knee on patient left
        assert (fib[0] - kc[0] < 0) == (src.side == "right")


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_deformation_smooth_fold_free_and_deterministic(kind, paths):
    src = make(kind, paths, seed=7, side="right", deformation=4.0)
    t = src.transform
    assert t.displacement is not None
    lo, hi = src.bounds()
    rng = np.random.default_rng(1)
    g = np.linspace(0.0, 1.0, 16)
    grid = lo + np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * (hi - lo)
    det = t.backward_jacobian_det(grid)
    sign = np.sign(np.linalg.det(t.linear))
    assert np.all(det * sign > 0.3)  # no folding, no extreme compression
    # neighbouring points map to neighbouring atlas points
    pts = lo + rng.random((4000, 3)) * (hi - lo)
    step = rng.normal(size=(4000, 3))
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    moved = np.linalg.norm(t.backward(pts + step) - t.backward(pts), axis=1)
    assert moved.max() < 1.6 and moved.min() > 0.6
    # forward inverts backward
    atlas_pts = t.backward(pts)
    np.testing.assert_allclose(t.forward(atlas_pts), pts, atol=1e-3)
    # the field actually deforms (not just affine): displacement varies across the knee
    u = t.displacement_at(pts)
    assert u.std(axis=0).mean() > 0.5
    # deterministic per seed, different across seeds
    again = make(kind, paths, seed=7, side="right", deformation=4.0)
    other = make(kind, paths, seed=8, side="right", deformation=4.0)
    np.testing.assert_array_equal(src.tissue_at(pts), again.tissue_at(pts))
    for name in LANDMARK_NAMES:
        np.testing.assert_array_equal(src.landmarks[name], again.landmarks[name])
    assert not np.allclose(src.landmarks["acl_femoral"], other.landmarks["acl_femoral"])
    assert np.count_nonzero(src.tissue_at(pts) != other.tissue_at(pts)) > 0


@pytest.mark.parametrize("kind", ["spl", "oai"])
def test_structure_volumes_change_plausibly(kind, paths):
    probe = make(kind, paths, seed=0, **IDENTITY)
    ref = counts(make(kind, paths, seed=0, side=probe.atlas_side, **IDENTITY), step=1.25)
    for seed in (1, 2):
        c = counts(make(kind, paths, seed=seed, side="right"), step=1.25)
        ratios = {s.name: c[s] / ref[s] for s in STRUCTURES}
        assert all(0.65 < r < 1.35 for r in ratios.values()), ratios
        assert any(abs(r - 1.0) > 0.01 for r in ratios.values())  # the transform does change the knee


def test_tissue_at_on_a_million_points(paths):
    src = make("spl", paths, seed=4, side="right")
    lo, hi = src.bounds()
    pts = lo + np.random.default_rng(0).random((1_000_000, 3)) * (hi - lo)
    t0 = time.perf_counter()
    lab = src.tissue_at(pts)
    dt = time.perf_counter() - t0
    print(f"\ntissue_at: 1e6 points in {dt:.2f} s")
    assert lab.shape == (1_000_000,) and lab.dtype == np.uint8
    assert lab.max() <= max(int(t) for t in Tissue)
    np.testing.assert_array_equal(lab[:1000], src.tissue_at(pts[:1000]))  # chunking does not matter


# ----------------------------------------------------------------------------------------------- tables & errors
def test_spl_color_table_mapping(paths):
    names = read_color_table(paths["spl"].parent / "SPLKneeAtlasColors.ctbl")
    assert len(names) == 48  # the label map also holds a few voxels of an unnamed label 3
    lut = spl_lookup_table(names)
    for value, tissue in SPL_STRUCTURES.items():
        assert lut[value] == tissue
    assert lut[names_key(names, "popliteal_artery")] == Tissue.VESSEL
    assert lut[names_key(names, "vastus_medialis_muscle")] == Tissue.MUSCLE
    assert lut[names_key(names, "infrapatellar_fat_body")] == Tissue.FAT
    assert lut[names_key(names, "patellar_ligament")] == Tissue.TENDON
    assert lut[names_key(names, "fibula")] == Tissue.FIBULA
    assert tissue_for_spl_name("tibialis_nerve") == Tissue.SOFT_TISSUE
    assert lut[0] == Tissue.AIR and lut[3] == Tissue.SOFT_TISSUE  # unnamed atlas label


def names_key(names, name):
    return next(k for k, v in names.items() if v == name)


def test_default_paths_and_missing_data(paths, monkeypatch, tmp_path):
    monkeypatch.setenv("ORTHODIFFUSION_SHARED_DATA", str(paths["spl"].parents[1]))
    found = default_atlas_paths()
    assert found["spl"] == paths["spl"] and found["oai"] == paths["oai"]
    monkeypatch.setattr(atlas_mod, "shared_data_candidates", lambda: [tmp_path])
    assert default_atlas_paths() == {"spl": None, "oai": None}
    with pytest.raises(MissingPathError, match="ORTHODIFFUSION_SHARED_DATA"):
        AtlasAnatomy.from_spl(seed=0)
    with pytest.raises(MissingPathError, match="nope.nrrd"):
        AtlasAnatomy.from_oai(tmp_path / "nope.nrrd")
    with pytest.raises(MissingPathError, match="nope.nrrd"):
        atlas_mod.atlas_anatomy("spl", tmp_path / "nope.nrrd")
    with pytest.raises(ValueError, match="unknown atlas"):
        atlas_mod.atlas_anatomy("procedural")


def test_corrupt_and_incomplete_label_maps(tmp_path):
    import SimpleITK as sitk

    bad = tmp_path / "spl" / "SPLKneeAtlasLabels.nrrd"
    bad.parent.mkdir()
    bad.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: gzip\n\nnot gzip")
    (bad.parent / "SPLKneeAtlasColors.ctbl").write_text("95 femur 1 1 1 255\n")
    with pytest.raises(CorruptFileError) as e:
        AtlasAnatomy.from_spl(bad.parent)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    (bad.parent / "SPLKneeAtlasColors.ctbl").unlink()
    with pytest.raises(MissingPathError, match="SPLKneeAtlasColors.ctbl"):
        AtlasAnatomy.from_spl(bad)
    empty = tmp_path / "empty.nrrd"
    img = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.uint8))
    img.SetSpacing((0.5, 0.5, 0.7))
    sitk.WriteImage(img, str(empty))
    with pytest.raises(InvalidVolumeError, match="lacks .*femur") as e:
        AtlasAnatomy.from_oai(empty)
    assert str(empty) in str(e.value)


def test_bone_holes_are_filled_only_inside_bones():
    from OrthoDiffusionLib.simulate.atlas_synthesis import fill_bone_holes
    from OrthoDiffusionLib.simulate.label_volume import LabelVolume

    lab = np.zeros((16, 32, 32), np.uint8)
    lab[2:14, 4:28, 4:28] = Tissue.FEMUR
    lab[6:10, 10:20, 10:20] = Tissue.AIR  # enclosed marrow gap
    lab[6:10, 0:8, 14:18] = Tissue.AIR  # notch open to the outside: must stay
    lab[0:2, 10:12, 10:12] = Tissue.MUSCLE
    vol = LabelVolume(lab.copy(), np.zeros(3), np.ones(3), np.eye(3))
    n = fill_bone_holes(vol)
    assert n == 4 * 10 * 10
    assert np.all(vol.labels[6:10, 10:20, 10:20] == Tissue.FEMUR)
    assert np.all(vol.labels[6:10, 0:8, 14:18] == Tissue.AIR)
    assert np.all(vol.labels[0:2, 10:12, 10:12] == Tissue.MUSCLE)


def test_disk_cache_round_trip_and_corrupt_cache_is_rebuilt(paths, fresh_atlas_cache, monkeypatch):
    built = make("oai", paths, seed=9, side="left")  # built (or loaded) in this session
    files = sorted(fresh_atlas_cache.glob("oai-*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(atlas_mod, "_CACHE", {})
    t0 = time.perf_counter()
    loaded = make("oai", paths, seed=9, side="left")
    print(f"\nOAI atlas from disk cache in {time.perf_counter() - t0:.2f} s")
    np.testing.assert_array_equal(loaded.volume.labels, built.volume.labels)
    for name in LANDMARK_NAMES:
        np.testing.assert_array_equal(loaded.landmarks[name], built.landmarks[name])
    files[0].write_bytes(b"not a zip")  # a damaged cache file is ignored and rewritten
    monkeypatch.setattr(atlas_mod, "_CACHE", {})
    rebuilt = make("oai", paths, seed=9, side="left")
    np.testing.assert_array_equal(rebuilt.volume.labels, built.volume.labels)
    assert files[0].stat().st_size > 1000


def test_extend_slices_repeats_the_outermost_complete_slices():
    from OrthoDiffusionLib.simulate.atlas_synthesis import extend_slices
    from OrthoDiffusionLib.simulate.label_volume import LabelVolume

    lab = np.zeros((10, 8, 8), np.uint8)
    lab[1:9, 2:6, 2:6] = Tissue.FEMUR  # slices 0 and 9 are (nearly) empty, like the SPL slab's ends
    lab[1, 2:6, 2:6] = Tissue.TIBIA
    vol = LabelVolume(lab, np.array([0.0, 0.0, 5.0]), np.array([1.0, 1.0, 2.0]), np.eye(3))
    ext = extend_slices(vol, extend_mm=4.0)
    assert ext.labels.shape == (14, 8, 8)
    np.testing.assert_allclose(ext.origin, [0.0, 0.0, 1.0])
    # original slices keep their physical position
    np.testing.assert_array_equal(ext.labels[3:11], lab[1:9])
    assert np.all(ext.labels[:3, 2:6, 2:6] == Tissue.TIBIA) and np.all(ext.labels[11:, 2:6, 2:6] == Tissue.FEMUR)
