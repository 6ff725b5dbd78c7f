"""Multi-scan enumeration/aggregation, patient folds, timestep-block search."""
import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from OrthoDiffusionLib.training.diagnosis.multiscan import (aggregate_by_patient, enumerate_combinations,
                                                  nested_patient_subsets, patient_folds)
from OrthoDiffusionLib.training.diagnosis.search import (BLOCKS, TIMESTEPS, candidate_grid, timestep_block_search,
                                               top_candidates, write_search_outputs)


def manifest():
    rows = []
    def add(pid, plane, n):
        for i in range(n):
            rows.append({"patient_id": pid, "plane": plane, "series_path": f"{pid}/{plane}{i}.nrrd", "center": "A"})
    add("p1", "sagittal", 1); add("p1", "coronal", 1); add("p1", "axial", 1)
    add("p2", "Sagittal", 2); add("p2", "coronal", 1); add("p2", "AXIAL", 3)
    add("p3", "sagittal", 1); add("p3", "axial", 1)  # no coronal
    add("p4", "sagittal", 4); add("p4", "coronal", 4); add("p4", "axial", 4)
    return rows


def test_enumeration_counts_and_weights():
    cs = enumerate_combinations(manifest())
    per = defaultdict(list)
    for c in cs.combinations:
        per[c.patient_id].append(c)
    assert {k: len(v) for k, v in per.items()} == {"p1": 1, "p2": 6, "p4": 64}
    for pid, combos in per.items():
        assert sum(c.weight for c in combos) == pytest.approx(1.0)
        assert len({tuple(sorted(c.paths().items())) for c in combos}) == len(combos)  # all distinct
    assert cs.skipped == {"p3": ("coronal",)}
    assert per["p2"][0].paths() == {"sagittal": "p2/Sagittal0.nrrd", "coronal": "p2/coronal0.nrrd",
                                    "axial": "p2/AXIAL0.nrrd"}
    assert per["p2"][0].series["sagittal"]["center"] == "A"
    assert len(cs) == 71 and cs.weights().sum() == pytest.approx(3.0)


def test_enumeration_without_all_planes_and_bad_rows():
    cs = enumerate_combinations(manifest(), require_all_planes=False)
    p3 = [c for c in cs.combinations if c.patient_id == "p3"]
    assert len(p3) == 1 and set(p3[0].series) == {"sagittal", "axial"} and p3[0].weight == 1.0
    with pytest.raises(ValueError, match="row 0 has no series_path"):
        enumerate_combinations([{"patient_id": "x", "plane": "axial"}])


def test_aggregate_by_patient():
    ids = ["b", "a", "b", "b"]
    probs = np.array([[0.1, 1.0], [0.5, 0.5], [0.3, 0.0], [0.5, 0.5]])
    uniq, agg = aggregate_by_patient(ids, probs)
    assert uniq == ["b", "a"]
    np.testing.assert_allclose(agg, [[0.3, 0.5], [0.5, 0.5]])


def test_patient_folds_disjoint_and_complete():
    ids = [f"p{i // 3}" for i in range(30)]  # 10 patients x 3 rows
    folds = patient_folds(ids, 5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(30))
    for train, held_out in folds:
        assert not ({ids[i] for i in train} & {ids[i] for i in held_out})
        assert len(held_out) == 6
    assert [h.tolist() for _, h in patient_folds(ids, 5, seed=0)] == [h.tolist() for _, h in folds]
    with pytest.raises(ValueError):
        patient_folds(ids, 11)


def test_nested_patient_subsets():
    ids = [f"p{i // 2}" for i in range(200)]  # 100 patients, 2 rows each
    subsets = nested_patient_subsets(ids, [50, 10, 100], seed=3)
    assert list(subsets) == [10, 50, 100]
    assert set(subsets[10]) < set(subsets[50]) < set(subsets[100]) == set(ids)
    assert len(set(subsets[50])) == 50
    assert nested_patient_subsets(ids, [10], seed=3)[10] == subsets[10]
    assert nested_patient_subsets(ids, [10], seed=4)[10] != subsets[10]
    with pytest.raises(ValueError, match="101"):
        nested_patient_subsets(ids, [101])


def synthetic():
    """Per-plane scores with a known ranking; the combination scorer rewards a specific non-obvious combination."""
    rng = np.random.default_rng(0)
    planes = ("sagittal", "coronal", "axial")
    table = {p: {c: float(rng.uniform(0.6, 0.8)) for c in candidate_grid()} for p in planes}
    top = {"sagittal": [(150, "mid_0"), (10, "mid_1"), (30, "mid_2"), (500, "mid_0")],
           "coronal": [(50, "mid_2"), (100, "mid_2"), (200, "mid_1"), (300, "mid_0")],
           "axial": [(200, "mid_0"), (50, "mid_0"), (10, "mid_2"), (30, "mid_1")]}
    for p in planes:
        for r, c in enumerate(top[p]):
            table[p][c] = 0.95 - 0.01 * r
    target = {"sagittal": (30, "mid_2"), "coronal": (50, "mid_2"), "axial": (10, "mid_2")}  # not all rank-1

    calls = []

    def score_combination(config):
        calls.append(config)
        return sum(config[p] == target[p] for p in planes) + 0.001 * sum(table[p][config[p]] for p in planes)

    return table, top, target, score_combination, calls


def test_search_picks_known_best(tmp_path):
    table, top, target, scorer, calls = synthetic()
    assert top_candidates(table) == top
    res = timestep_block_search(table, scorer)
    assert len(calls) == 64 and res.best == target
    assert res.combinations[0][1] >= res.combinations[-1][1]
    paths = write_search_outputs(res, tmp_path / "search")
    chosen = json.loads(paths["chosen.json"].read_text())
    assert chosen["planes"] == {p: {"timestep": t, "block": b} for p, (t, b) in target.items()}
    with open(paths["per_plane.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(TIMESTEPS) * len(BLOCKS)
    assert sum(1 for r in rows if r["top_rank"]) == 12
    with open(paths["combinations.csv"]) as f:
        combos = list(csv.DictReader(f))
    assert len(combos) == 64 and combos[0]["sagittal_timestep"] == "30" and combos[0]["axial_block"] == "mid_2"
    md = paths["per_plane.md"].read_text()
    assert "## sagittal" in md and "0.9500*" in md and md.count("| 500 |") == 3
    assert paths["per_plane.png"].read_bytes()[:4] == b"\x89PNG"


def test_top_candidates_ties_go_to_smaller_timestep_then_block():
    scores = {"sagittal": {(300, "mid_1"): 0.9, (50, "mid_2"): 0.9, (50, "mid_0"): 0.9, (10, "mid_0"): 0.5,
                           (500, "mid_2"): 0.95}}
    assert top_candidates(scores, 4)["sagittal"] == [(500, "mid_2"), (50, "mid_0"), (50, "mid_2"), (300, "mid_1")]
    with pytest.raises(ValueError, match="fewer than top-6"):
        top_candidates(scores, 6)


def test_search_with_callback_and_nan_is_worst():
    def plane_score(plane, t, b):
        if t == 10:
            return float("nan")
        return {"mid_0": 0.1, "mid_1": 0.2, "mid_2": 0.3}[b] + t / 1000

    res = timestep_block_search(plane_score, lambda cfg: sum(t for t, _ in cfg.values()))
    assert res.top["axial"] == [(500, "mid_2"), (500, "mid_1"), (300, "mid_2"), (500, "mid_0")]
    assert all(c[0] != 10 for cands in res.top.values() for c in cands)
    assert res.best == {p: (500, "mid_2") for p in ("sagittal", "coronal", "axial")}
