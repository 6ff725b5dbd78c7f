"""``orthodiffusion evaluate`` on synthetic prediction files."""
import csv
import json

import numpy as np
import pytest

from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.labels import diagnosis_labels
from OrthoDiffusionLib.training.evaluation import metrics as M

KEYS = [d.key for d in diagnosis_labels("ankle")]


def write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture()
def cohort(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 4)) < 0.4).astype(int)
    split = np.where(np.arange(n) < 20, "val", "test")
    manifest = []
    for i in range(n):
        for plane in ("sagittal", "coronal", "axial"):
            manifest.append([f"p{i}", plane, f"s/{i}_{plane}.nii.gz", split[i], *y[i], "A" if i % 2 else "B",
                             "1.5" if i % 3 else "3.0"])
    write(tmp_path / "manifest.csv", ["patient_id", "plane", "series_path", "split", *KEYS, "center",
                                      "field_strength"], manifest)
    good = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)
    bad = rng.random(y.shape)
    # two combination rows for patient p30 (averaged)
    rows = [[f"p{i}", *good[i]] for i in range(n)] + [["p30", *good[30]]]
    write(tmp_path / "pred.csv", ["patient_id", *KEYS], rows)
    write(tmp_path / "val.csv", ["patient_id", *KEYS], [[f"p{i}", *good[i]] for i in range(20)])
    write(tmp_path / "unet3d.csv", ["patient_id", *KEYS], [[f"p{i}", *bad[i]] for i in range(n)])
    return tmp_path, y, good, bad


def test_evaluate_end_to_end(cohort, capsys):
    d, y, good, bad = cohort
    rc = main(["evaluate", "--predictions", str(d / "pred.csv"), "--manifest", str(d / "manifest.csv"),
               "--out", str(d / "out"), "--anatomy", "ankle", "--val-predictions", str(d / "val.csv"),
               "--baseline", str(d / "unet3d.csv"), "--bootstrap", "50", "--permutations", "100"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "40 patients, macro AUROC" in printed and "vs unet3d" in printed
    summary = json.loads((d / "out" / "summary.json").read_text())
    test = slice(20, 60)
    assert summary["macro_auroc"] == pytest.approx(M.macro_auroc(y[test], good[test]))
    assert summary["comparisons"][0]["p_value"] < 0.05
    t = M.choose_thresholds(y[:20], good[:20])
    assert list(summary["thresholds"].values()) == pytest.approx(list(t))
    expected_cf1 = M.multilabel_prf(y[test], good[test], t)["CF1"]
    assert summary["multilabel"]["youden (val)"]["CF1"] == pytest.approx(expected_cf1)
    for f in ("per_label.csv", "per_label.md", "multilabel.md", "subgroups.csv", "comparison.md", "roc.png"):
        assert (d / "out" / f).is_file(), f
    with open(d / "out" / "subgroups.csv") as f:
        sub = list(csv.DictReader(f))
    assert {(r["subgroup"], r["value"]) for r in sub} == {("center", "A"), ("center", "B"),
                                                          ("field_strength", "1.5"), ("field_strength", "3.0")}


def test_baselines_from_run_folders_are_named_by_their_folder(cohort, capsys):
    """Two run folders' ``predictions_test.csv`` as baselines: each comparison row names its folder."""
    d, y, good, bad = cohort
    for run, probs in (("resnet18-10", bad), ("unet3d-10", 0.5 * good + 0.5 * bad)):
        (d / run).mkdir()
        write(d / run / "predictions_test.csv", ["patient_id", *KEYS], [[f"p{i}", *probs[i]] for i in range(60)])
    rc = main(["evaluate", "--predictions", str(d / "pred.csv"), "--manifest", str(d / "manifest.csv"),
               "--out", str(d / "out"), "--anatomy", "ankle",
               "--baseline", str(d / "resnet18-10" / "predictions_test.csv"),
               "--baseline", str(d / "unet3d-10" / "predictions_test.csv"), "--bootstrap", "20", "--permutations", "50",
               "--no-figures"])
    assert rc == 0 and "vs resnet18-10/predictions_test" in capsys.readouterr().out
    with open(d / "out" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = slice(20, 60)
    assert [r["baseline"] for r in rows] == ["resnet18-10/predictions_test", "unet3d-10/predictions_test"]
    assert float(rows[0]["macro_auroc_baseline"]) == pytest.approx(M.macro_auroc(y[test], bad[test]), abs=1e-6)


def test_replicate_runs_are_tested_across_runs(cohort, capsys):
    """Three runs of a recipe against three of a baseline: per-run AUROC and p, run-level t-test and sign flip."""
    d, y, good, bad = cohort
    rng = np.random.default_rng(1)
    files = {"model": [], "base": []}
    for i in range(3):
        for arm, probs in (("model", good), ("base", 0.3 * good + 0.7 * bad)):
            path = d / f"{arm}-s{i}" / "predictions_test.csv"
            path.parent.mkdir()
            noisy = np.clip(probs + 0.05 * rng.standard_normal(probs.shape), 0, 1)
            write(path, ["patient_id", *KEYS], [[f"p{j}", *noisy[j]] for j in range(60)])
            files[arm].append(str(path))
    common = ["evaluate", "--manifest", str(d / "manifest.csv"), "--anatomy", "ankle", "--bootstrap", "20",
              "--permutations", "200", "--no-figures"]
    assert main(common + ["--predictions", *files["model"], "--baseline", *files["base"], "--out", str(d / "r")]) == 0
    out = capsys.readouterr().out
    with open(d / "r" / "replicates.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    test = slice(20, 60)
    first = [M.macro_auroc(y[test], np.loadtxt(f, delimiter=",", skiprows=1, usecols=range(1, 5))[test])
             for f in files["model"]]
    assert [float(row[f"first_run{i}"]) for i in (1, 2, 3)] == pytest.approx(first, abs=1e-6)
    assert row["first_better"] == "3" and float(row["p_sign_flip"]) == pytest.approx(0.25)
    assert float(row["p_t_test"]) < 0.05 and all(float(row[f"p_run{i}"]) < 0.05 for i in (1, 2, 3))
    assert "over 3 runs vs base-s0/predictions_test" in out and "better in 3 of 3" in out
    # the tables describe the first run
    assert json.loads((d / "r" / "summary.json").read_text())["macro_auroc"] == pytest.approx(first[0], abs=1e-6)
    assert main(common + ["--predictions", *files["model"], "--baseline", *files["base"][:2],
                          "--out", str(d / "bad")]) == 2
    assert "2 baseline predictions files where the evaluated model has 3 replicate runs" in capsys.readouterr().err
    assert not (d / "bad").exists()


def test_evaluate_errors_name_the_file(cohort, capsys):
    d, *_ = cohort
    base = ["evaluate", "--manifest", str(d / "manifest.csv"), "--out", str(d / "o"), "--anatomy", "ankle",
            "--no-figures", "--bootstrap", "5"]
    assert main(base + ["--predictions", str(d / "missing.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err
    write(d / "short.csv", ["patient_id", *KEYS], [["p20", 0.1, 0.2, 0.3, 0.4]])
    assert main(base + ["--predictions", str(d / "short.csv")]) == 2
    err = capsys.readouterr().err
    assert "short.csv: no prediction for 39 patient(s)" in err and err.count("\n") == 1
    write(d / "range.csv", ["patient_id", *KEYS], [["p20", 1.5, 0.2, 0.3, 0.4]])
    assert main(base + ["--predictions", str(d / "range.csv")]) == 2
    assert "range.csv: line 2: atfl_injury=1.5 is not a probability" in capsys.readouterr().err
    write(d / "cols.csv", ["patient_id", "acl_injury"], [["p20", 0.5]])
    assert main(base + ["--predictions", str(d / "cols.csv")]) == 2
    assert "cols.csv: missing column(s): atfl_injury" in capsys.readouterr().err
    # a bad baseline file is caught before anything is written
    assert main(base + ["--predictions", str(d / "pred.csv"), "--baseline", str(d / "range.csv")]) == 2
    assert "range.csv: line 2" in capsys.readouterr().err
    assert not (d / "o").exists()
