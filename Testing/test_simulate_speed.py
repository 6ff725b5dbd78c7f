"""The simulator's fast paths give what the plain definitions give, and ``bench simulate`` runs (no timing asserts).

* The procedural knee's culled sampling (compacted candidates, chunk boxes) equals evaluating every structure, in
  order, on every point (first structure whose box and shape contain the point wins; fat where none does).
* The bias field of a :class:`GridPositions` equals the one at explicit voxel centres.
* The voxel points from per-axis tables equal origin + direction @ (index * spacing + sub-sample offset).
* Coarse-to-fine sampling equals sampling every sub-sample where it is exact (stripes wider than a coarse cell's
  diagonal) and nearly everywhere on the knee.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import OrthoDiffusionLib
from OrthoDiffusionLib.bench.simulate import bench_simulate
from OrthoDiffusionLib.errors import MissingPathError
from OrthoDiffusionLib.simulate import contrast as C
from OrthoDiffusionLib.simulate.acquisition import (SeriesSpec, _subsample_offsets, _voxel_points, sample_tissue,
                                                    series_geometry)
from OrthoDiffusionLib.simulate.procedural import ProceduralKnee
from OrthoDiffusionLib.simulate.tissues import Tissue


def _tissue_by_definition(knee: ProceduralKnee, points: np.ndarray) -> np.ndarray:
    """Every structure on every point, no culling: the meaning of ``ProceduralKnee.tissue_at``."""
    q = knee.to_canonical(points).T.copy()  # (3, N)
    d_env = knee._envelope(q)
    out = np.where(d_env >= 0, int(Tissue.AIR), int(Tissue.SKIN)).astype(np.uint8)
    free = d_env < -1.8  # inside the skin: still to be decided
    for s in knee._structures:
        inbox = np.all((q.T >= s.lo) & (q.T <= s.hi), axis=1)
        inside = s.inside(q) if s.inside is not None else d_env > -1.8 - knee.fat_mm
        hit = free & inbox & inside
        out[hit] = s.tissue
        free &= ~hit
    out[free] = Tissue.FAT
    return out


@pytest.mark.parametrize("side,seed", [("right", 4), ("left", 11)])
def test_culled_sampling_equals_the_definition(side, seed):
    knee = ProceduralKnee(side, seed=seed)
    c = knee.landmarks["knee_center"]
    # a spatially ordered slab (as an acquisition sends points) and the same points shuffled
    ax = np.arange(-70.0, 70.0, 1.1)
    g = np.stack(np.meshgrid(ax, ax, np.arange(-6.0, 7.0, 3.0), indexing="ij"), axis=-1).reshape(-1, 3)
    ordered = c + g
    want = _tissue_by_definition(knee, ordered)
    np.testing.assert_array_equal(knee.tissue_at(ordered), want)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    np.testing.assert_array_equal(knee.tissue_at(ordered[perm]), want[perm])
    assert len(np.unique(want)) >= 15  # the slab crosses most structures
    assert knee.tissue_at(np.zeros((0, 3))).shape == (0,)
    # a box that cuts its shape cuts the structure (chunks partly inside the box test each point)
    femur = knee._structures[0]
    assert femur.tissue == Tissue.FEMUR
    knee._structures[0] = dataclasses.replace(femur, hi=np.array([10.0, 40.0, 30.0], dtype=np.float32))
    cut = _tissue_by_definition(knee, ordered)
    assert np.count_nonzero((want == Tissue.FEMUR) & (cut != Tissue.FEMUR)) > 500
    np.testing.assert_array_equal(knee.tissue_at(ordered), cut)


def test_grid_positions_bias_field_equals_explicit_points():
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag([0.6, 0.55, 3.85])
    origin = np.array([-150.0, -60.0, -40.0])
    grid = C.GridPositions(origin, axes, (5, 24, 30))
    k, j, i = np.meshgrid(np.arange(5), np.arange(24), np.arange(30), indexing="ij")
    pts = origin + np.stack([i, j, k], axis=-1) @ axes.T
    for args in [(0.12,), (0.012, (8.0, 30.0), 5)]:
        a = C.bias_field(grid, np.random.default_rng(5), *args)
        b = C.bias_field(pts, np.random.default_rng(5), *args)
        assert a.shape == (5, 24, 30) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-5)
        assert a.std() > 0


def test_voxel_points_match_the_geometry():
    knee = ProceduralKnee("left", seed=2)
    spec = SeriesSpec(plane="coronal", matrix=(40, 48), n_slices=6, fov_mm=150.0, oblique_deg=(2.0, -1.0, 3.0),
                      inplane_subsamples=2)
    geo = series_geometry(spec, knee)
    off = _subsample_offsets(spec)
    rng = np.random.default_rng(1)
    n = 500
    k, j, i = rng.integers(0, 6, n), rng.integers(0, 42, n), rng.integers(0, 50, n)  # up to two past the grid
    s = rng.integers(0, len(off), n)
    got = _voxel_points(geo, off, k, j, i, s)
    ijk = np.stack([i * geo.spacing[0], j * geo.spacing[1], k * geo.spacing[2]], axis=1) + off[s]
    want = geo.origin + ijk @ geo.direction.T
    assert got.shape == (n, 3)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_bench_simulate_against_a_copy_of_this_tree(tmp_path: Path, capsys):
    tree = tmp_path / "ref"
    shutil.copytree(Path(OrthoDiffusionLib.__file__).parent, tree / "OrthoDiffusionLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = bench_simulate(exams=2, warmup=0, matrix=24, against=str(tree))
    this, other = result["rows"]
    assert Path(other["package"]) == tree / "OrthoDiffusionLib"
    assert Path(this["package"]) == Path(OrthoDiffusionLib.__file__).parent
    for row in (this, other):
        assert 0 < row["min_cpu_s"] <= row["median_cpu_s"] <= row["max_cpu_s"]
    assert result["ratio_cpu"] == pytest.approx(other["median_cpu_s"] / this["median_cpu_s"])
    with pytest.raises(MissingPathError, match="OrthoDiffusionLib/simulate/cohort.py"):
        bench_simulate(exams=1, against=str(tmp_path / "nothing"))


class _Stripes:
    """Tissue stripes 3.5 mm wide across an oblique direction (convex, wider than a 2x2-pixel cell's diagonal)."""

    def __init__(self, knee: ProceduralKnee):
        self.side, self.landmarks = knee.side, knee.landmarks
        self.n = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])

    def tissue_at(self, points: np.ndarray) -> np.ndarray:
        return (np.floor(np.asarray(points, dtype=np.float64) @ self.n / 3.5) % 4 + 15).astype(np.uint8)


@pytest.mark.parametrize("plane", ["sagittal", "axial"])
def test_coarse_to_fine_equals_full_sampling(plane):
    knee = ProceduralKnee("right", seed=5)
    spec = SeriesSpec(plane=plane, matrix=(37, 41), n_slices=3, fov_mm=40.0, oblique_deg=(3.0, -2.0, 1.0),
                      inplane_subsamples=2)  # ~1 mm pixels, odd sizes, 12 sub-samples per voxel
    geo = series_geometry(spec, knee)
    stripes = _Stripes(knee)
    full = sample_tissue(stripes, spec, geo, coarse_to_fine=False)
    assert full.shape == (3, 37, 41, 12) and len(np.unique(full)) == 4
    np.testing.assert_array_equal(sample_tissue(stripes, spec, geo), full)
    spec = dataclasses.replace(spec, fov_mm=120.0, matrix=(192, 192), inplane_subsamples=1)  # clinical 0.625 mm
    geo = series_geometry(spec, knee)
    full = sample_tissue(knee, spec, geo, coarse_to_fine=False)
    assert np.mean(sample_tissue(knee, spec, geo) != full) < 2e-3
