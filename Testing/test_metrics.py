"""Metrics cross-checked against scikit-learn and hand computation."""
import csv

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from OrthoDiffusionLib.training.evaluation import metrics as M


def fixed_arrays():
    rng = np.random.default_rng(42)
    y = (rng.random((60, 4)) < 0.35).astype(int)
    y[0, :] = 1
    y[1, :] = 0
    p = np.clip(0.3 * y + rng.random((60, 4)) * 0.7, 0, 1)
    p = np.round(p, 1)  # many ties
    return y, p


def test_auroc_ap_match_sklearn_with_ties():
    y, p = fixed_arrays()
    for k in range(y.shape[1]):
        assert M.roc_auc(y[:, k], p[:, k]) == pytest.approx(roc_auc_score(y[:, k], p[:, k]), abs=1e-12)
        assert M.average_precision(y[:, k], p[:, k]) == pytest.approx(average_precision_score(y[:, k], p[:, k]),
                                                                       abs=1e-12)
    np.testing.assert_allclose(M.per_label_auroc(y, p), roc_auc_score(y, p, average=None), atol=1e-12)
    np.testing.assert_allclose(M.per_label_ap(y, p), average_precision_score(y, p, average=None), atol=1e-12)
    assert M.macro_auroc(y, p) == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)


def test_small_hand_examples():
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr, thr = M.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    sk_fpr, sk_tpr, _ = sk_roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.isnan(M.roc_auc([1, 1, 1], [0.2, 0.3, 0.4]))
    assert np.isnan(M.average_precision([0, 0], [0.2, 0.3]))
    # macro ignores undefined labels
    y = np.array([[0, 1], [1, 1], [0, 1]])
    p = np.array([[0.1, 0.5], [0.9, 0.5], [0.2, 0.5]])
    assert M.macro_auroc(y, p) == 1.0


def test_cp_cr_cf1_op_or_of1_hand_computed():
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.6, 0.4], [0.2, 0.7, 0.8], [0.4, 0.1, 0.55], [0.7, 0.3, 0.5]])
    # at 0.5 (>=): label0 pred [1,0,0,1] -> tp1 fp1 fn1; label1 [1,1,0,0] -> tp1 fp1 fn0;
    # label2 [0,1,1,1] -> tp2 fp1 fn1
    r = M.multilabel_prf(y, p, 0.5)
    cp = (1 / 2 + 1 / 2 + 2 / 3) / 3
    cr = (1 / 2 + 1 / 1 + 2 / 3) / 3
    assert r["CP"] == pytest.approx(cp) and r["CR"] == pytest.approx(cr)
    assert r["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert r["OP"] == pytest.approx(4 / 7) and r["OR"] == pytest.approx(4 / 6)
    assert r["OF1"] == pytest.approx(2 * (4 / 7) * (4 / 6) / (4 / 7 + 4 / 6))
    # per-label thresholds; label 1 never predicted -> precision 0 (zero-division convention)
    r2 = M.multilabel_prf(y, p, [0.8, 0.95, 0.5])
    assert r2["CP"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert r2["OP"] == pytest.approx(3 / 4) and r2["OR"] == pytest.approx(3 / 6)
    c = M.multilabel_counts(y, p, 0.5)
    assert c["tp"].tolist() == [1, 1, 2] and c["tn"].tolist() == [1, 2, 0]


def test_choose_thresholds():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.65, 0.9])
    t = M.choose_thresholds(y, p, "youden")
    # >= 0.35: tpr 1, fpr 1/4 -> J = 0.75 (best)
    assert t[0] == pytest.approx(0.35)
    t_f1 = M.choose_thresholds(y, p, "f1")
    # 0.35 gives tp4 fp1 -> F1 = 8/9, the best
    assert t_f1[0] == pytest.approx(0.35)
    yy = np.c_[y, np.ones_like(y)]
    assert M.choose_thresholds(yy, np.c_[p, p])[1] == 0.5
    with pytest.raises(ValueError):
        M.choose_thresholds(y, p, "accuracy")


def test_bootstrap_patient_level_and_seeded():
    y, p = fixed_arrays()
    pids = np.repeat(np.arange(30), 2)
    a = M.bootstrap_ci(M.macro_auroc, y, p, pids, n_boot=200, seed=1)
    b = M.bootstrap_ci(M.macro_auroc, y, p, pids, n_boot=200, seed=1)
    assert a == b
    assert a["lower"] < a["value"] < a["upper"]
    per = M.bootstrap_ci(M.per_label_auroc, y, p, pids, n_boot=100, seed=0)
    assert per["lower"].shape == (4,) and np.all(per["lower"] <= per["upper"])
    # patient-level: a metric that counts distinct patients' rows sees pairs only
    sizes = M.bootstrap_ci(lambda yy, pp: float(len(yy) % 2), y, p, pids, n_boot=50, seed=0)
    assert sizes["upper"] == 0.0


def test_permutation_test():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 3)) < 0.4).astype(int)
    good = np.clip(y * 0.6 + rng.random(y.shape) * 0.5, 0, 1)
    bad = rng.random(y.shape)
    r = M.paired_permutation_test(y, good, bad, n_perm=300, seed=0)
    assert r["difference"] > 0.2 and r["p_value"] < 0.01
    same = M.paired_permutation_test(y, good, good.copy(), n_perm=100, seed=0)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    # near-identical models: large p
    noisy = np.clip(good + rng.normal(0, 0.01, good.shape), 0, 1)
    assert M.paired_permutation_test(y, good, noisy, n_perm=200, seed=0)["p_value"] > 0.2


def test_replicate_test_counts_every_sign_pattern_and_matches_scipy():
    """Run-level test of two recipes: exact sign flip over 2^N patterns, paired t-test as scipy computes it."""
    from scipy import stats

    first, other = [0.53, 0.55, 0.50, 0.57], [0.46, 0.47, 0.44, 0.45]
    r = M.replicate_test(first, other)
    # every difference positive: only the identity and the all-flipped pattern are as extreme
    assert r["p_sign_flip"] == pytest.approx(2 / 16) and r["first_better"] == 4 and r["n"] == 4
    assert r["p_t_test"] == pytest.approx(stats.ttest_rel(first, other).pvalue)
    assert r["difference"] == pytest.approx(np.mean(np.subtract(first, other)))
    assert r["sd_difference"] == pytest.approx(np.std(np.subtract(first, other), ddof=1))
    mixed = M.replicate_test([0.5, 0.6, 0.4], [0.6, 0.5, 0.4])  # +0.1, -0.1, 0: no direction
    assert mixed["p_sign_flip"] == 1.0 and mixed["first_better"] == 1 and mixed["difference"] == pytest.approx(0)
    one = M.replicate_test([0.7], [0.6])
    assert np.isnan(one["p_t_test"]) and np.isnan(one["sd_difference"]) and one["p_sign_flip"] == 1.0
    with pytest.raises(ValueError, match="equal-length"):
        M.replicate_test([0.5, 0.6], [0.5])



def test_rows_subgroups_and_writers(tmp_path):
    y, p = fixed_arrays()
    names = ["a", "b", "c", "d"]
    rows = M.per_label_rows(y, p, names, n_boot=50)
    assert [r["label"] for r in rows] == names + ["macro"]
    assert rows[-1]["auroc"] == pytest.approx(M.macro_auroc(y, p))
    thr = M.choose_thresholds(y, p)
    ml = M.multilabel_rows(y, p, {"0.5": 0.5, "youden (val)": thr})
    assert ml[1]["threshold"] == "youden (val)" and set(ml[0]) == {"threshold", "CP", "CR", "CF1", "OP", "OR", "OF1"}
    centers = np.array(["A", "B"] * 30)
    tesla = np.array([1.5] * 40 + [3.0] * 20)
    sub = M.subgroup_rows(y, p, {"center": centers, "field_strength": tesla}, names)
    assert [(r["subgroup"], r["value"], r["n"]) for r in sub] == [("center", "A", 30), ("center", "B", 30),
                                                                  ("field_strength", 1.5, 40),
                                                                  ("field_strength", 3.0, 20)]
    assert sub[0]["auroc_a"] == pytest.approx(M.roc_auc(y[::2, 0], p[::2, 0]))
    M.write_csv(sub, tmp_path / "sub" / "t.csv")
    with open(tmp_path / "sub" / "t.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 4 and float(back[3]["macro_auroc"]) == pytest.approx(sub[3]["macro_auroc"])
    M.write_markdown(rows, tmp_path / "t.md", title="AUROC")
    text = (tmp_path / "t.md").read_text()
    assert text.startswith("## AUROC\n\n| label | n_pos")
    assert "| macro |" in text and text.count("\n") == 2 + 2 + 5
    assert "–" in M.markdown_table([{"x": float("nan")}])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        M.per_label_auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 and 1"):
        M.per_label_auroc(np.array([[2.0]]), np.array([[0.1]]))


def test_metrics_module_needs_only_numpy():
    import subprocess
    import sys

    code = ("import sys; import OrthoDiffusionLib.training.evaluation.metrics as m; "
            "bad = [n for n in ('torch', 'sklearn', 'scipy', 'pandas') if n in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
