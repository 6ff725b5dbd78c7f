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


def _segment_coords(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """For (N,3) points: (t in [0,1] unclipped position along a->b, radial distance from the line, length)."""
    ab = b - a
    L = float(np.linalg.norm(ab))
    u = ab / L
    rel = points - a
    s = rel @ u
    radial = np.linalg.norm(rel - s[:, None] * u, axis=1)
    return s / L, radial, L


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
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
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
        s, rad, L = _segment_coords(p, self.a, self.b)
        near = (s > -0.1) & (s < 1.1) & (rad < 3.0 * self.r + 3.0)
        if not near.any():
            return t
        idx = np.nonzero(near)[0]
        si, ri, ti = s[idx], rad[idx], t[idx].copy()
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
        rel = p - self.c
        a = rel @ self.ant
        x = rel @ self.lat
        cand = (t == self.tissue) & (a < -0.3 * self.R) & (np.abs(x) < self.extent)
        if not cand.any():
            return t
        d = (p[cand] - self.p0) @ self.normal
        t = t.copy()
        ci = np.nonzero(cand)[0]
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
        axis = _unit(self.b - self.a)
        e1 = _unit(np.cross(axis, lm["axis_anterior"]))
        e2 = np.cross(axis, e1)
        self.dirs = np.stack([e1, -e1, e2, -e2, _unit(e1 + e2), -_unit(e1 + e2), _unit(e1 - e2), -_unit(e1 - e2)])

    def _touches(self, p: np.ndarray, dists: Iterable[float]) -> np.ndarray:
        """(N,) bool: the ligament lies at one of ``dists`` mm from the point in one of 8 perpendicular directions."""
        hit = np.zeros(len(p), dtype=bool)
        for dist in dists:
            for d in self.dirs:
                todo = ~hit
                if todo.any():
                    hit[todo] |= self.source.tissue_at(p[todo] + dist * d) == self.tissue
        return hit

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        s, rad, L = _segment_coords(p, self.a, self.b)
        near = (s > -0.05) & (s < 1.05) & (rad < 4.0 * self.r + 12.0) & (np.isin(t, SOFT) | (t == self.tissue))
        if not near.any():
            return t
        idx = np.nonzero(near)[0]
        ti = t[idx].copy()
        soft = ti != self.tissue
        thick = soft & self._touches(p[idx], (self.thick,))
        ti[thick] = self.tissue
        soft2 = soft & ~thick
        halo = soft2 & self._touches(p[idx], (0.5 * self.halo, self.halo))
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
        rel = p - self.c
        cand = (np.abs(rel @ self.sup) < 40) & (np.abs(rel @ self.ant) < 30) & (np.abs(rel @ self.lat) < 55)
        if not cand.any():
            return t
        idx = np.nonzero(cand)[0]
        ti = t[idx].copy()
        # inverse transform: q = c + R^T (p - c - shift)
        q = self.c + (p[idx] - self.c - self.shift) @ self.R
        src = self.source.tissue_at(q)
        moved_in = np.isin(src, self.MOVED) & (np.isin(ti, SOFT) | np.isin(ti, self.MOVED) | (ti == Tissue.TENDON)
                                               | (ti == Tissue.SKIN))
        vacated = np.isin(ti, self.MOVED) & ~np.isin(src, self.MOVED)
        ti[vacated] = Tissue.FLUID
        ti[moved_in] = src[moved_in]
        r = rel[idx]
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

    def _edit(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        t = t.copy()
        rel = (p - self.c) @ self.axes.T
        inside = np.sum((rel / self.radii) ** 2, axis=1) < 1.0
        t[inside & np.isin(t, SOFT)] = Tissue.FLUID
        relk = (p - self.knee) @ self.axes.T
        joint = (np.sum((relk / np.array([48.0, 36.0, 30.0])) ** 2, axis=1) < 1.0) & (np.abs(relk[:, 2]) < 9.0)
        cand = np.nonzero(joint & np.isin(t, (Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.CAPSULE)))[0]
        if len(cand):
            hit = np.zeros(len(cand), dtype=bool)
            for d in (self.axes[2], -self.axes[2], self.axes[1], -self.axes[1], self.axes[0], -self.axes[0]):
                hit |= np.isin(self.source.tissue_at(p[cand] + 2.5 * d), self.NEAR)
            t[cand[hit]] = Tissue.FLUID
        return t


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
