"""Simulated exams and cohorts: geometry, DICOM loading and plane classification, determinism, prevalences/splits,
EHR, CLI errors."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.io import read_series
from OrthoDiffusionLib.io.orientation import classify_plane
from OrthoDiffusionLib.simulate import contrast as C
from OrthoDiffusionLib.simulate.cohort import (DEFAULT_PREVALENCES, LABEL_KEYS, MANIFEST_COLUMNS, plan_cohort,
                                               simulate_exam, write_cohort)
from OrthoDiffusionLib.simulate.ehr import INJURY_EVENTS, sample_ehr
from OrthoDiffusionLib.simulate.tissues import Tissue

TINY = dict(matrix=32, n_slices=6)


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def test_exam_geometry_planes_and_labels():
    exam = simulate_exam(4, {"joint_effusion": True}, **TINY)
    assert [s.plane for s in exam.series] == ["sagittal", "coronal", "axial"]
    assert exam.labels["joint_effusion"] and not exam.labels["acl_injury"]
    for s in exam.series:
        assert s.image.GetSize() == (32, 32, 6)
        assert s.image.GetPixelID() == sitk.sitkInt16 and s.labelmap.GetPixelID() == sitk.sitkUInt8
        assert _same_grid(s.image, s.labelmap) and _same_grid(s.image, s.tissue)
        d = np.array(s.image.GetDirection()).reshape(3, 3)
        assert classify_plane(d)[0] == s.plane
        sp = s.image.GetSpacing()
        assert 140 / 32 <= sp[0] <= 170 / 32 and 3.0 <= sp[2] - s.meta["slice_gap"] <= 4.0 + 1e-6
        seg = sitk.GetArrayFromImage(s.labelmap)
        assert seg.max() <= 11 and len(np.unique(seg)) >= 6


def test_pd_contrast_order_cortex_and_vendor_scaling():
    tissues = [Tissue.FLUID, Tissue.FAT, Tissue.FEMORAL_CARTILAGE, Tissue.MUSCLE, Tissue.ACL, Tissue.MEDIAL_MENISCUS,
               Tissue.TENDON, Tissue.FEMUR, Tissue.EDEMA]
    t = np.zeros((2, 40, 40 * len(tissues), 3), dtype=np.uint8)
    for i, tt in enumerate(tissues):
        t[:, :, 40 * i:40 * (i + 1)] = tt
    centers = np.zeros(t.shape[:3] + (3,))
    vals = {}
    for name in ("center_a", "center_b"):
        img, sigma = C.render_intensity(t, centers, 0.5, 3.5, 3.0, C.CENTERS[name], np.random.default_rng(0))
        assert img.dtype == np.int16 and img.max() <= C.CENTERS[name].max_value
        vals[name] = {tt: float(np.median(img[:, 10:30, 40 * i + 10:40 * i + 30])) for i, tt in enumerate(tissues)}
    v = vals["center_a"]
    assert v[Tissue.FLUID] > v[Tissue.FEMORAL_CARTILAGE] > v[Tissue.MUSCLE] > v[Tissue.ACL] > v[Tissue.TENDON]
    assert v[Tissue.FAT] > v[Tissue.FEMORAL_CARTILAGE] and v[Tissue.EDEMA] > v[Tissue.FEMORAL_CARTILAGE]
    assert v[Tissue.MEDIAL_MENISCUS] < 0.15 * v[Tissue.FAT]
    i_f = tissues.index(Tissue.FEMUR)
    img, _ = C.render_intensity(t, centers, 0.5, 3.5, 3.0, C.CENTERS["center_a"], np.random.default_rng(0))
    rim = img[:, 20, 40 * i_f + 1]  # 0.5 mm inside the bone edge: cortex
    assert rim.mean() < 0.3 * v[Tissue.FEMUR]  # dark cortex around fatty marrow
    assert vals["center_b"][Tissue.FAT] != pytest.approx(v[Tissue.FAT], rel=0.1)  # vendor scaling differs


def test_same_seed_same_anatomy_and_field_strength_changes_noise():
    a = simulate_exam(9, {}, planes=("sagittal",), **TINY)
    b = simulate_exam(9, {"acl_injury": True}, planes=("sagittal",), **TINY)
    ta, tb = (sitk.GetArrayFromImage(e.series[0].tissue) for e in (a, b))
    assert (ta != tb).mean() < 0.02  # only the lesion differs
    lo = simulate_exam(9, {}, planes=("sagittal",), field_strength=1.5, center="center_a", **TINY)
    hi = simulate_exam(9, {}, planes=("sagittal",), field_strength=3.0, center="center_a", **TINY)
    assert lo.series[0].meta["noise_sigma"] > 1.5 * hi.series[0].meta["noise_sigma"]


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_files_load_deterministic_and_manifest(tmp_path):
    kw = dict(n_patients=3, seed=21, matrix=32, n_slices=6, multi_series_fraction=1.0)
    m1 = write_cohort(tmp_path / "a", **kw)
    m2 = write_cohort(tmp_path / "b", **kw)
    d1, d2 = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert d1 == d2 and len(d1) > 30  # byte-identical, DICOM + NIfTI + labelmaps + manifest + README
    rows = list(csv.DictReader(open(m1, newline="")))
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    assert len(rows) == 3 * 4  # three planes + one extra series per patient (multi_series_fraction=1)
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
        series = read_series(tmp_path / "a" / r["series_path"])
        assert series.plane == r["plane"]
        assert series.meta.get("series_description", "").startswith("PD ")
        seg = sitk.ReadImage(str(tmp_path / "a" / r["seg_path"]))
        assert _same_grid(series.image, seg, tol=1e-3)
        assert r["center"] and float(r["field_strength"]) in (1.5, 3.0)
        assert all(r[k] in ("0", "1") for k in LABEL_KEYS)
    assert all(len(s) == 1 for s in by_patient.values())  # splits are patient level
    assert "seed" in (tmp_path / "a" / "README.md").read_text() and "21" in (tmp_path / "a" / "README.md").read_text()
    write_cohort(tmp_path / "w", **kw, workers=2)
    assert _tree_digest(tmp_path / "w") == d1  # independent of the number of worker processes
    m3 = write_cohort(tmp_path / "c", **{**kw, "seed": 22})
    assert _tree_digest(tmp_path / "c") != d1 and m3.exists()


def test_prevalences_and_splits_follow_settings():
    prev = {**DEFAULT_PREVALENCES, "acl_injury": 0.3, "patellar_dislocation": 0.1}
    n = 3000
    plan = plan_cohort(n, seed=5, prevalences=prev, splits=(0.6, 0.2, 0.2))
    for k in LABEL_KEYS:
        p = prev[k]
        got = np.mean([lab[k] for lab in plan.labels])
        assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / n), (k, got, p)
    assert plan.splits.count("train") == 1800 and plan.splits.count("val") == 600 and plan.splits.count("test") == 600
    # splits are not ordered by patient index
    assert len(set(plan.splits[:100])) == 3
    again = plan_cohort(n, seed=5, prevalences=prev, splits=(0.6, 0.2, 0.2))
    assert again.labels == plan.labels and again.splits == plan.splits and again.seeds == plan.seeds


def test_ehr_fields_and_correlations():
    rng = np.random.default_rng(0)
    pd = [sample_ehr({"patellar_dislocation": True}, rng, missing_rate=0.0) for _ in range(400)]
    normal = [sample_ehr({}, rng, missing_rate=0.0) for _ in range(400)]
    for rec in pd + normal:
        assert 6 <= rec["age"] <= 87 and rec["sex"] in ("F", "M") and 15 <= rec["weight"] <= 165
        assert rec["patient_type"] in ("athlete", "non-athlete") and rec["injury_event"] in INJURY_EVENTS
    assert np.mean([r["age"] for r in pd]) < np.mean([r["age"] for r in normal]) - 8
    assert np.mean([r["sex"] == "F" for r in pd]) > np.mean([r["sex"] == "F" for r in normal]) + 0.1
    missing = [sample_ehr({}, rng, missing_rate=0.3) for _ in range(500)]
    frac = np.mean([r["age"] is None for r in missing])
    assert 0.22 < frac < 0.38


def test_simulated_ehr_is_understood_by_the_encoder():
    """Every simulated record encodes with no UNK except where a field is missing."""
    from OrthoDiffusionLib.model.ehr import EHREncoder, INJURY_EVENTS as ENCODER_EVENTS

    rng = np.random.default_rng(1)
    recs = [sample_ehr({"acl_injury": bool(i % 2)}, rng, missing_rate=0.0) for i in range(50)]
    enc = EHREncoder().fit(recs)
    batch = enc.encode(recs)
    assert INJURY_EVENTS == ENCODER_EVENTS
    assert int(batch.event.max()) < len(ENCODER_EVENTS)  # index len(INJURY_EVENTS) is UNK
    assert float(batch.fixed[:, 5].sum()) == 0.0 and float(batch.fixed[:, 8].sum()) == 0.0  # sex / type UNK
    assert float(batch.fixed[:, 3:5].sum()) == 50 and float(batch.fixed[:, 6:8].sum()) == 50


def test_cli_exam_and_errors(tmp_path, capsys):
    rc = main(["simulate", "exam", "--out", str(tmp_path / "e"), "--seed", "2", "--matrix", "32",
               "--abnormality", "acl_injury"])
    assert rc == 0
    assert "simulated 3 series in" in capsys.readouterr().out
    for plane in ("sagittal", "coronal", "axial"):
        s = read_series(tmp_path / "e" / "dicom" / f"{plane}_1")
        assert s.plane == plane
        assert (tmp_path / "e" / "labels" / f"{plane}_1_seg.nii.gz").is_file()
    rc = main(["simulate", "exam", "--out", str(tmp_path / "x"), "--abnormality", "broken_leg"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "broken_leg" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert main(["simulate", "cohort", "--out", str(tmp_path / "c"), "--n", "2", "--prevalence", "acl_injury=2"]) == 2


def test_pictures_written(tmp_path):
    pytest.importorskip("matplotlib")
    from OrthoDiffusionLib.simulate.pictures import write_pictures

    paths = write_pictures(tmp_path, seed=3, abnormalities=("joint_effusion",), matrix=32)
    assert [p.name for p in paths] == ["normal.png", "joint_effusion.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10000


@pytest.mark.parametrize("anatomy, folder", [("atlas_spl", "spl_knee_atlas"), ("atlas_oai", "oai_dess_labels")])
def test_atlas_exam_dicom_loads_in_plane_with_labelmap_on_image(anatomy, folder, shared_data, tmp_path, monkeypatch,
                                                                capsys):
    """The atlas-based source goes through the same writer/loader path as the procedural one."""
    monkeypatch.setenv("ORTHODIFFUSION_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "e"
    rc = main(["simulate", "exam", "--out", str(out), "--seed", "3", "--matrix", "32", "--anatomy", anatomy,
               "--atlas-path", str(shared_data / folder), "--abnormality", "joint_effusion"])
    assert rc == 0, capsys.readouterr().err
    for plane in ("sagittal", "coronal", "axial"):
        s = read_series(out / "dicom" / f"{plane}_1")
        assert s.plane == plane
        lab = sitk.ReadImage(str(out / "labels" / f"{plane}_1_seg.nii.gz"))
        assert _same_grid(s.image, lab, tol=1e-2)
        seg = sitk.GetArrayFromImage(lab)
        assert {1, 2} <= set(np.unique(seg).tolist())  # femur and tibia in every plane
