"""Knee abnormalities as wrappers around any :class:`~.tissues.AnatomySource`.

Each lesion uses only the wrapped source's ``landmarks`` and ``tissue_at`` (so it works on the procedural knee and
on deformed real label maps alike), and relabels tissue at the requested points; the segmentation ground truth
follows automatically (e.g. the gap of a torn ACL is fluid, not ACL). Lesions chain: ``apply_abnormalities`` wraps
the source once per active label, in a fixed order.

Label keys are those of ``labels.diagnosis_labels("knee")``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from .tissues import AnatomySource, Tissue

#: Tissues a lesion may overwrite (never bone, cartilage or menisci unless the lesion is of that structure).
SOFT = np.array([Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.FLUID, Tissue.CAPSULE, Tissue.MUSCLE, Tissue.EDEMA],
                dtype=np.uint8)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _box(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N,) bool: points inside the axis-aligned box [lo, hi] (cheap pre-filter before exact tests)."""
    m = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0])
    for i in (1, 2):
        m &= (points[:, i] >= lo[i]) & (points[:, i] <= hi[i])
    return m


def _segment_box(a: np.ndarray, b: np.ndarray, margin: float) -> Tuple[np.ndarray, np.ndarray]:
    return np.minimum(a, b) - margin, np.maximum(a, b) + margin


def _segment_coords(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """For (N,3) points: (t in [0,1] unclipped position along a->b, radial distance from the line, length)."""
    ab = b - a
    L = float(np.linalg.norm(ab))
    u = ab / L
    rel = points - a
    s = rel @ u
    radial = np.linalg.norm(rel - s[:, None] * u, axis=1)
    return s / L, radial, L


class _LocalGrid:
    """The wrapped source sampled once on a regular axis-aligned grid (LPS, ``step`` mm) around a lesion, so
    neighbourhood questions (is the ligament within 3 mm?) become array dilations instead of repeated sampling."""

    def __init__(self, source: AnatomySource, lo: np.ndarray, hi: np.ndarray, step: float = 1.0):
        self.lo = np.asarray(lo, dtype=np.float64)
        self.step = float(step)
        self.shape = tuple(int(v) for v in np.ceil((np.asarray(hi) - self.lo) / step).astype(int) + 1)
        axes = [self.lo[i] + step * np.arange(self.shape[i]) for i in range(3)]
        g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        self.tissue = source.tissue_at(g).reshape(self.shape)

    @staticmethod
    def dilate(mask: np.ndarray, mm: float, step: float) -> np.ndarray:
        """Dilation by about ``mm`` (alternating 6- and 18-neighbour steps approximate a ball)."""
        out = mask.copy()
        for it in range(int(round(mm / step))):
            m = out.copy()
            for ax in range(3):
                for sh in (1, -1):
                    m |= np.roll(out, sh, axis=ax)
            if it % 2 == 1:
                for a, b in ((0, 1), (0, 2), (1, 2)):
                    for sa in (1, -1):
                        for sb in (1, -1):
                            m |= np.roll(np.roll(out, sa, axis=a), sb, axis=b)
            out = m
        return out

    def lookup(self, mask: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(N,) values of a grid array at the nearest grid cell (False/0 outside the grid)."""
        idx = np.rint((points - self.lo) / self.step).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        out = np.zeros(len(points), dtype=mask.dtype)
        i = idx[inside]
        out[inside] = mask[i[:, 0], i[:, 1], i[:, 2]]
        return out


class Lesion:
    """Base wrapper: passes landmarks/side/bounds through; subclasses implement ``_edit``."""

    key = ""

    def __init__(self, source: AnatomySource, rng: np.random.Generator):
        self.source = source
        self.side = source.side
        self.landmarks: Dict[str, np.ndarray] = dict(source.landmarks)
        self.rng = rng

    def bounds(self):
        return self.source.bounds()

    def tissue_at(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points).reshape(-1, 3)
        return self._edit(pts, self.source.tissue_at(pts))

    def _edit(self, points: np.ndarray, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class CruciateTear(Lesion):
    """Complete mid-substance tear of the ACL or PCL.

    Along the ligament axis (femoral -> tibial attachment) a gap of 7-11 mm centred at 35-60 % of the length is
    filled with fluid (inside the ligament radius + 1 mm) and surrounded by oedema (out to 2.5x the radius, soft
    tissue only); the distal stump is wavy (the ligament is sampled at points displaced by a sinusoid perpendicular
    to the axis, so its fibres lose their straight course) and slightly retracted.
    """

    def __init__(self, source: AnatomySource, rng: np.random.Generator, which: str = "acl"):
        super().__init__(source, rng)
        self.which = which
        self.key = f"{which}_injury"
        self.tissue = Tissue.ACL if which == "acl" else Tissue.PCL
        lm = self.landmarks
        self.a, self.b = lm[f"{which}_femoral"], lm[f"{which}_tibial"]
        self.r = float(lm[f"ligament_radius_{which}"][0])
        self.t0 = rng.uniform(0.35, 0.6)
        self.L = float(np.linalg.norm(self.b - self.a))
        self.gap = rng.uniform(7.0, 11.0) / self.L
        axis = _unit(self.b - self.a)
        perp = np.cross(axis, lm["axis_lateral"])
        self.perp = _unit(perp if np.linalg.norm(perp) > 1e-3 else np.cross(axis, lm["axis_anterior"]))
        self.amp = rng.uniform(1.5, 2.5)
        self.wavelength = rng.uniform(7.0, 10.0)

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        box = np.nonzero(_box(p, *_segment_box(self.a, self.b, 3.0 * self.r + 4.0)))[0]
        if len(box) == 0:
            return t
        s, rad, L = _segment_coords(p[box].astype(np.float64), self.a, self.b)
        near = (s > -0.1) & (s < 1.1) & (rad < 3.0 * self.r + 3.0)
        if not near.any():
            return t
        idx = box[near]
        si, ri, ti = s[near], rad[near], t[idx].copy()
        lo, hi = self.t0 - self.gap / 2, self.t0 + self.gap / 2
        in_gap = (si >= lo) & (si <= hi)
        distal = si > hi
        # wavy distal stump: sample the ligament at displaced points
        if distal.any():
            d_idx = np.nonzero(distal & (ri < self.r + self.amp + 1.0))[0]
            phase = (si[d_idx] - hi) * L / self.wavelength * 2 * np.pi
            shift = (self.amp * np.sin(phase))[:, None] * self.perp + 1.5 * _unit(self.b - self.a)
            moved = self.source.tissue_at(p[idx[d_idx]] - shift)
            was = ti[d_idx] == self.tissue
            now = moved == self.tissue
            soft = np.isin(ti[d_idx], SOFT)
            ti[d_idx[was & ~now]] = Tissue.FLUID
            ti[d_idx[now & (soft | was)]] = self.tissue
        lig = ti == self.tissue
        ti[in_gap & (lig | (np.isin(ti, SOFT) & (ri < self.r + 1.0)))] = Tissue.FLUID
        halo = (si > lo - 0.1) & (si < hi + 0.1) & (ri < 2.5 * self.r + 2.0) & np.isin(ti, SOFT) & (ti != Tissue.FLUID)
        ti[halo] = Tissue.EDEMA
        t = t.copy()
        t[idx] = ti
        return t


class MeniscusTear(Lesion):
    """Horizontal-oblique tear of the posterior horn: a 1.2-1.8 mm fluid cleft through the meniscus, inclined 20-40
    degrees to the tibial plateau, reaching the inferior articular surface."""

    def __init__(self, source: AnatomySource, rng: np.random.Generator, which: str = "medial"):
        super().__init__(source, rng)
        self.key = f"{which}_meniscus_tear"
        self.tissue = Tissue.MEDIAL_MENISCUS if which == "medial" else Tissue.LATERAL_MENISCUS
        lm = self.landmarks
        self.c = lm[f"{which}_meniscus_center"]
        self.R = float(lm[f"{which}_meniscus_radius"][0])
        self.ant, self.sup, self.lat = lm["axis_anterior"], lm["axis_superior"], lm["axis_lateral"]
        ang = np.deg2rad(rng.uniform(20, 40))
        # plane through the posterior horn, rising towards the periphery (posterior)
        self.normal = _unit(np.cos(ang) * self.sup + np.sin(ang) * self.ant)
        self.p0 = self.c - self.ant * (0.75 * self.R) + self.sup * rng.uniform(-1.0, 0.0)
        self.half = rng.uniform(0.6, 0.9)
        self.extent = rng.uniform(0.45, 0.7) * self.R  # half-length along the horn (lateral direction)

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        box = np.nonzero(t == self.tissue)[0]
        rel = p[box] - self.c
        a = rel @ self.ant
        x = rel @ self.lat
        cand = (a < -0.3 * self.R) & (np.abs(x) < self.extent)
        if not cand.any():
            return t
        ci = box[cand]
        d = (p[ci] - self.p0) @ self.normal
        t = t.copy()
        t[ci[np.abs(d) < self.half]] = Tissue.FLUID
        return t


class CollateralInjury(Lesion):
    """MCL or LCL sprain/partial tear: the ligament thickens (dilated by ~2 mm into surrounding soft tissue), its
    substance shows intermediate signal (oedema), and fluid/oedema surrounds it (within ~6 mm)."""

    def __init__(self, source: AnatomySource, rng: np.random.Generator, which: str = "mcl"):
        super().__init__(source, rng)
        self.key = f"{which}_injury"
        self.tissue = Tissue.MCL if which == "mcl" else Tissue.LCL
        lm = self.landmarks
        self.a = lm[f"{which}_femoral"]
        self.b = lm[f"{which}_tibial" if which == "mcl" else "lcl_fibular"]
        self.r = float(lm[f"ligament_radius_{which}"][0])
        self.thick = rng.uniform(1.5, 2.5)
        self.halo = rng.uniform(4.0, 6.5)
        self.t0 = rng.uniform(0.3, 0.6)
        self._grid: Optional[_LocalGrid] = None

    def _masks(self):
        if self._grid is None:
            margin = self.halo + self.thick + 12.0
            lo = np.minimum(self.a, self.b) - margin
            hi = np.maximum(self.a, self.b) + margin
            g = _LocalGrid(self.source, lo, hi, 1.0)
            lig = g.tissue == self.tissue
            self._grid = g
            self._thick = _LocalGrid.dilate(lig, self.thick, g.step)
            self._halo = _LocalGrid.dilate(self._thick, self.halo, g.step)
        return self._grid, self._thick, self._halo

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        box = np.nonzero(_box(p, *_segment_box(self.a, self.b, 4.0 * self.r + 15.0)))[0]
        if len(box) == 0:
            return t
        s_all, rad, L = _segment_coords(p[box].astype(np.float64), self.a, self.b)
        near = ((s_all > -0.1) & (s_all < 1.1) & (rad < 4.0 * self.r + 14.0)
                & (np.isin(t[box], SOFT) | (t[box] == self.tissue)))
        if not near.any():
            return t
        g, thick_m, halo_m = self._masks()
        idx = box[near]
        s = np.zeros(len(p))
        s[idx] = s_all[near]
        ti = t[idx].copy()
        soft = ti != self.tissue
        thick = soft & g.lookup(thick_m, p[idx])
        ti[thick] = self.tissue
        halo = soft & ~thick & g.lookup(halo_m, p[idx])
        ti[halo] = np.where(np.abs(s[idx][halo] - self.t0) < 0.2, Tissue.FLUID, Tissue.EDEMA)
        # intrasubstance oedema at the injured segment (about a fifth of the length)
        core = (ti == self.tissue) & (np.abs(s[idx] - self.t0) < 0.1)
        ti[core] = Tissue.EDEMA
        t = t.copy()
        t[idx] = ti
        return t


class PatellarDislocation(Lesion):
    """Lateral patellar dislocation (transient, imaged after): the patella and its cartilage are shifted 10-18 mm
    laterally and tilted 12-25 degrees (sampled at inversely transformed points); the vacated trochlear space fills
    with fluid; the medial retinaculum region shows oedema."""

    MOVED = (Tissue.PATELLA, Tissue.PATELLAR_CARTILAGE)

    def __init__(self, source: AnatomySource, rng: np.random.Generator):
        super().__init__(source, rng)
        self.key = "patellar_dislocation"
        lm = self.landmarks
        self.c = lm["patella_center"]
        self.lat, self.ant, self.sup = lm["axis_lateral"], lm["axis_anterior"], lm["axis_superior"]
        self.shift = rng.uniform(10.0, 18.0) * self.lat
        ang = np.deg2rad(rng.uniform(12.0, 25.0))
        # tilt: the lateral facet rotates posteriorly, i.e. rotation about the superior axis
        k = self.sup
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        sgn = 1.0 if np.dot(np.cross(self.lat, self.ant), k) > 0 else -1.0
        R = np.eye(3) + np.sin(sgn * ang) * K + (1 - np.cos(ang)) * K @ K
        self.R = R
        self.landmarks["patella_center"] = self.c + self.shift

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        box = np.nonzero(_box(p, self.c - 60.0, self.c + 60.0))[0]
        rel = p[box] - self.c
        cand = (np.abs(rel @ self.sup) < 40) & (np.abs(rel @ self.ant) < 30) & (np.abs(rel @ self.lat) < 55)
        if not cand.any():
            return t
        idx = box[cand]
        ti = t[idx].copy()
        # inverse transform: q = c + R^T (p - c - shift)
        q = self.c + (p[idx] - self.c - self.shift) @ self.R
        src = self.source.tissue_at(q)
        moved_in = np.isin(src, self.MOVED) & (np.isin(ti, SOFT) | np.isin(ti, self.MOVED) | (ti == Tissue.TENDON)
                                               | (ti == Tissue.SKIN))
        vacated = np.isin(ti, self.MOVED) & ~np.isin(src, self.MOVED)
        ti[vacated] = Tissue.FLUID
        ti[moved_in] = src[moved_in]
        r = p[idx] - self.c
        med = ((r @ self.lat + 30.0) / 14.0) ** 2 + ((r @ self.ant + 2.0) / 9.0) ** 2 + (r @ self.sup / 16.0) ** 2 < 1.0
        ti[med & np.isin(ti, SOFT)] = Tissue.EDEMA
        t = t.copy()
        t[idx] = ti
        return t


class JointEffusion(Lesion):
    """Joint effusion: fluid distends the suprapatellar recess (an ellipsoid 40-56 mm wide, 14-22 mm deep, 40-60 mm
    high posterior to the quadriceps tendon, replacing fat, muscle and soft tissue there) and widens the fluid film
    next to the tibiofemoral cartilage and menisci (soft tissue within 2.5 mm of them, within 9 mm of the joint line)."""

    NEAR = (Tissue.FEMORAL_CARTILAGE, Tissue.MEDIAL_TIBIAL_CARTILAGE, Tissue.LATERAL_TIBIAL_CARTILAGE,
            Tissue.PATELLAR_CARTILAGE, Tissue.MEDIAL_MENISCUS, Tissue.LATERAL_MENISCUS)

    def __init__(self, source: AnatomySource, rng: np.random.Generator):
        super().__init__(source, rng)
        self.key = "joint_effusion"
        lm = self.landmarks
        self.c = lm["suprapatellar_recess"] + rng.uniform(0, 4) * lm["axis_superior"]
        self.axes = np.stack([lm["axis_lateral"], lm["axis_anterior"], lm["axis_superior"]])
        self.radii = np.array([rng.uniform(20, 28), rng.uniform(7, 11), rng.uniform(20, 30)])
        self.knee = lm["knee_center"]
        self._grid: Optional[_LocalGrid] = None

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        t = t.copy()
        r = float(self.radii.max())
        box = np.nonzero(_box(p, self.c - r, self.c + r))[0]
        if len(box):
            rel = (p[box] - self.c) @ self.axes.T
            inside = box[np.sum((rel / self.radii) ** 2, axis=1) < 1.0]
            t[inside[np.isin(t[inside], SOFT)]] = Tissue.FLUID
        half = np.abs(self.axes.T) @ np.array([48.0, 36.0, 9.0])
        box = np.nonzero(_box(p, self.knee - half, self.knee + half))[0]
        if len(box):
            relk = (p[box] - self.knee) @ self.axes.T
            joint = (np.sum((relk / np.array([48.0, 36.0, 30.0])) ** 2, axis=1) < 1.0) & (np.abs(relk[:, 2]) < 9.0)
            cand = box[joint & np.isin(t[box], (Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.CAPSULE))]
            if len(cand):
                g, near = self._near()
                t[cand[g.lookup(near, p[cand])]] = Tissue.FLUID
        return t

    def _near(self):
        if self._grid is None:
            half = np.abs(self.axes.T) @ np.array([50.0, 38.0, 11.0])  # AABB of the oriented joint slab
            g = _LocalGrid(self.source, self.knee - half, self.knee + half, 1.0)
            self._grid = g
            self._near_mask = _LocalGrid.dilate(np.isin(g.tissue, self.NEAR), 2.5, g.step)
        return self._grid, self._near_mask


#: Order in which lesions are applied (dislocation before effusion so the vacated space and recess are consistent).
LESION_ORDER: Tuple[str, ...] = ("acl_injury", "pcl_injury", "medial_meniscus_tear", "lateral_meniscus_tear",
                                 "mcl_injury", "lcl_injury", "patellar_dislocation", "joint_effusion")


def apply_abnormalities(source: AnatomySource, abnormalities: Mapping[str, bool],
                        rng: np.random.Generator) -> AnatomySource:
    """Wrap ``source`` with every lesion whose key is True in ``abnormalities`` (unknown keys raise KeyError)."""
    for k in abnormalities:
        if k not in LESION_ORDER:
            raise KeyError(f"unknown knee abnormality {k!r}; known: {', '.join(LESION_ORDER)}")
    makers = {
        "acl_injury": lambda s: CruciateTear(s, rng, "acl"),
        "pcl_injury": lambda s: CruciateTear(s, rng, "pcl"),
        "medial_meniscus_tear": lambda s: MeniscusTear(s, rng, "medial"),
        "lateral_meniscus_tear": lambda s: MeniscusTear(s, rng, "lateral"),
        "mcl_injury": lambda s: CollateralInjury(s, rng, "mcl"),
        "lcl_injury": lambda s: CollateralInjury(s, rng, "lcl"),
        "patellar_dislocation": lambda s: PatellarDislocation(s, rng),
        "joint_effusion": lambda s: JointEffusion(s, rng),
    }
    out = source
    for k in LESION_ORDER:
        if abnormalities.get(k, False):
            out = makers[k](out)
    return out
