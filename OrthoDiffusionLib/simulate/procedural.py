"""Built-in procedural knee: analytic signed-distance anatomy sampled at arbitrary physical points.

The knee is built in a canonical frame (millimetres; x towards the lateral side of the knee, y anterior, z superior;
origin at the centre of the tibiofemoral joint space) from signed-distance primitives (:mod:`.sdf`), then placed in
patient LPS coordinates: mirrored medial/lateral for right vs left knees, scaled, rotated by a few degrees and
translated. Nothing is voxelised: :meth:`ProceduralKnee.tissue_at` evaluates the primitives on whatever points an
acquisition asks for, with chunk-level bounding-box culling (points that arrive spatially ordered, as the
acquisition sends them, are fast; any order is correct).

Canonical sizes (before scaling): femoral condyles 78 mm across (medial and lateral condyle 30 mm each, notch 18 mm),
condylar sagittal radius ~21 mm, tibial plateau 76 x 48 mm, patella 42 x 20 x 38 mm, cartilage 2.3-3.2 mm, menisci
5-7 mm high with 9-13 mm rims, ACL ~38 mm long and 9 mm thick, PCL thicker and arched, MCL a flat 12 mm band ending
~6 cm below the joint line, LCL a cord to the fibular head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import sdf
from .tissues import LANDMARK_NAMES, Tissue

F32 = np.float32
_CHUNK = 2048


@dataclass(frozen=True)
class _Structure:
    tissue: int
    lo: np.ndarray  # (3,) canonical bbox
    hi: np.ndarray
    inside: Optional[Callable[[np.ndarray], np.ndarray]]  # (3,n) canonical -> (n,) bool; None = subcutaneous fat


class _Candidates:
    """The points still without a tissue, compacted, with per-chunk bounding boxes for culling.

    ``idx`` (M,) indices into the caller's points (spatial order kept), ``q`` (3, M) their canonical coordinates,
    ``live`` (M,) whether each is still unassigned. Consecutive runs of ``_CHUNK`` points form chunks whose boxes
    (``lo``/``hi``, (n_chunks, 3)) are tested against a structure's box: chunks outside are skipped, chunks inside
    need no per-point box test. Assigned points are dropped (recompaction) once fewer than half are live, so later
    structures scan only what is left.
    """

    def __init__(self, idx: np.ndarray, q: np.ndarray):
        self._set(idx, q)

    def _set(self, idx: np.ndarray, q: np.ndarray) -> None:
        self.idx, self.q = idx, q
        m = len(idx)
        self.live = np.ones(m, dtype=bool)
        self.n_live = m
        n_chunks = (m + _CHUNK - 1) // _CHUNK
        pad = n_chunks * _CHUNK - m
        qp = np.concatenate([q, np.repeat(q[:, -1:], pad, axis=1)], axis=1) if pad and m else q
        qc = qp.reshape(3, n_chunks, _CHUNK)
        self.lo, self.hi = qc.min(axis=2).T, qc.max(axis=2).T

    def take(self, lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(positions into the candidate arrays, (3, k) coordinates) of the live points inside the box [lo, hi]."""
        if self.n_live < len(self.idx) // 2:
            keep = np.flatnonzero(self.live)
            self._set(self.idx[keep], self.q[:, keep])
        overlap = np.all((self.hi >= lo) & (self.lo <= hi), axis=1)
        inner = overlap & np.all((self.lo >= lo) & (self.hi <= hi), axis=1)
        whole = self._live_in(np.flatnonzero(inner))  # chunks inside the box: no per-point test
        edge = self._live_in(np.flatnonzero(overlap & ~inner))
        x, y, z = self.q[:, edge]
        edge = edge[(x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])]
        pos = np.concatenate([whole, edge])
        return pos, self.q[:, pos]

    def _live_in(self, chunks: np.ndarray) -> np.ndarray:
        """Positions of the live candidates in the given chunks (ascending chunk numbers)."""
        pos = (chunks[:, None] * _CHUNK + np.arange(_CHUNK)).ravel()
        if len(chunks) and chunks[-1] == len(self.lo) - 1:  # the last chunk is padded
            pos = pos[pos < len(self.idx)]
        return pos[self.live[pos]]

    def assign(self, pos: np.ndarray) -> np.ndarray:
        """Mark candidate positions ``pos`` as assigned; returns their indices into the caller's points."""
        self.live[pos] = False
        self.n_live -= len(pos)
        return self.idx[pos]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


class ProceduralKnee:
    """A right or left knee made of analytic shapes (implements :class:`~.tissues.AnatomySource`).

    Args:
        side: ``"right"`` or ``"left"``.
        seed: seed for the size/shape/pose variation (ignored when ``rng`` is given); ``None`` = canonical knee.
        rng: a numpy Generator to draw the variation from.
        scale_range: range of the overall scale factor (uniform).
        max_rotation_deg: maximum rotation about each axis (degrees).
        center: LPS position of the joint centre; default about 90 mm off the midline on the knee's side.
    """

    def __init__(self, side: str = "right", seed: Optional[int] = None, rng: Optional[np.random.Generator] = None,
                 scale_range: Tuple[float, float] = (0.9, 1.1), max_rotation_deg: float = 4.0,
                 center: Optional[Sequence[float]] = None):
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        self.side = side
        if rng is None and seed is not None:
            rng = np.random.default_rng(seed)
        if rng is None:  # canonical knee
            g, per_axis, rot = 1.0, np.ones(3), np.zeros(3)
            self.fat_mm, self.patella_dz, self.habitus = 8.0, 0.0, 1.0
        else:
            g = rng.uniform(*scale_range)
            per_axis = rng.uniform(0.97, 1.03, size=3)
            rot = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
            self.fat_mm = float(rng.uniform(4.0, 14.0))
            self.patella_dz = float(rng.uniform(-4.0, 6.0))
            self.habitus = float(rng.uniform(0.95, 1.12))
        self.scale = (g * per_axis).astype(np.float64)
        self.rotation = _rotation(*rot)
        sx = -1.0 if side == "right" else 1.0  # LPS +x is patient left; the right knee's lateral side is -x
        self.mirror = np.diag([sx, -1.0, 1.0])  # canonical (lat, ant, sup) -> LPS (L, P, S)
        if center is None:
            center = (90.0 * (-1 if side == "right" else 1), 0.0, 0.0)
        self.center = np.asarray(center, dtype=np.float64)
        # canonical -> LPS linear part
        self._A = self.rotation @ self.mirror @ np.diag(self.scale)
        self._A_inv = np.linalg.inv(self._A)
        self._build()
        self.landmarks = self._make_landmarks()

    # ---- frame ---------------------------------------------------------------------------------------------------
    def to_patient(self, q: np.ndarray) -> np.ndarray:
        """(N,3) canonical mm -> (N,3) LPS mm."""
        return np.asarray(q, dtype=np.float64) @ self._A.T + self.center

    def to_canonical(self, points: np.ndarray) -> np.ndarray:
        """(N,3) LPS mm -> (N,3) canonical mm (float32)."""
        return self._canonical_rows(points).T

    def _canonical_rows(self, points: np.ndarray) -> np.ndarray:
        """(N,3) LPS mm -> (3,N) canonical mm (float32, one contiguous row per coordinate, as :mod:`.sdf` wants)."""
        p = np.asarray(points)
        d = [(p[:, c] - self.center[c]).astype(F32) for c in range(3)]
        A = self._A_inv.astype(F32)
        q = np.empty((3, len(p)), dtype=F32)
        for r in range(3):
            q[r] = A[r, 0] * d[0]
            q[r] += A[r, 1] * d[1]
            q[r] += A[r, 2] * d[2]
        return q

    # ---- anatomy -------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        pz = self.patella_dz
        self.pat_c = (2.0, 37.0, 36.0 + pz)
        self.pat_r = (21.0, 10.0, 19.0)
        self.acl = ((10.5, -17.0, 17.0), (-1.0, 9.0, -2.5))
        self.pcl = ((-10.0, -1.0, 15.0), (-5.0, -15.0, 11.0), (-2.0, -22.0, 1.0), (-1.0, -24.0, -9.0))
        self.mcl = ((-42.0, -4.0, 28.0), (-42.5, -2.0, 4.0), (-40.5, -1.0, -12.0), (-30.0, 1.0, -40.0),
                    (-23.0, 2.0, -60.0))
        self.lcl = ((41.0, -6.0, 24.0), (43.5, -10.0, 4.0), (43.0, -16.0, -10.0), (42.0, -21.0, -21.0))
        self.mm = dict(c=(-20.0, -3.0), a=(17.0, 22.0), w=(9.0, 13.0), open_dir=1.0, open_half=np.deg2rad(50))
        self.lm = dict(c=(20.0, -3.0), a=(15.0, 17.0), w=(10.0, 10.0), open_dir=-1.0, open_half=np.deg2rad(35))
        self.recess_c = (0.0, 27.0, 54.0 + pz)
        self.env_z = np.array([-220, -90, -40, 0, 40, 100, 220], dtype=F32)
        h = self.habitus
        self.env_a = np.array([46, 56, 58, 60, 62, 66, 74], dtype=F32) * F32(h)
        self.env_b = np.array([48, 58, 56, 56, 56, 64, 72], dtype=F32) * F32(h)
        self.env_cy = np.array([-10, -18, -12, -4, 0, -2, -4], dtype=F32)

        B = lambda lo, hi: (np.asarray(lo, F32), np.asarray(hi, F32))  # noqa: E731
        structs: List[_Structure] = []

        def add(t: int, box, fn) -> None:
            structs.append(_Structure(int(t), box[0], box[1], fn))

        T = Tissue
        add(T.FEMUR, B((-48, -32, -1), (48, 40, 270)), lambda q: self.femur(q) < 0)
        add(T.TIBIA, B((-44, -30, -310), (44, 42, 8)), lambda q: self.tibia(q) < 0)
        add(T.PATELLA, B((-22, 24, 14 + pz), (26, 50, 58 + pz)), lambda q: self.patella(q) < 0)
        add(T.FIBULA, B((20, -34, -310), (48, -8, -8)), lambda q: self.fibula(q) < 0)
        add(T.FEMORAL_CARTILAGE, B((-40, -32, -1), (40, 30, 52)), self._femoral_cartilage)
        add(T.PATELLAR_CARTILAGE, B((-20, 20, 14 + pz), (24, 36, 58 + pz)), self._patellar_cartilage)
        add(T.MEDIAL_TIBIAL_CARTILAGE, B((-36, -24, -3), (-4, 20, 0)),
            lambda q: self._tibial_cartilage(q, (-20.0, -2.0), (15.0, 21.0)))
        add(T.LATERAL_TIBIAL_CARTILAGE, B((6, -22, -3), (34, 16, 0)),
            lambda q: self._tibial_cartilage(q, (20.0, -3.0), (13.5, 18.0)))
        add(T.MEDIAL_MENISCUS, B((-38, -26, -3), (-2, 20, 7.5)), lambda q: self._meniscus(q, self.mm))
        add(T.LATERAL_MENISCUS, B((4, -21, -3), (36, 15, 7.5)), lambda q: self._meniscus(q, self.lm))
        add(T.ACL, B((-7, -23, -8), (16, 15, 23)), lambda q: sdf.capsule(q, *self.acl, 4.6) < 0)
        add(T.PCL, B((-16, -31, -15), (5, 5, 21)), lambda q: sdf.polyline(q, self.pcl, 5.2) < 0)
        add(T.MCL, B((-46, -12, -64), (-19, 8, 32)), lambda q: sdf.polyline(q, self.mcl, 1.7, (1, 3.6, 1)) < 0)
        add(T.LCL, B((37, -25, -25), (47, 0, 28)), lambda q: sdf.polyline(q, self.lcl, 2.6) < 0)
        add(T.TENDON, B((-22, 20, -36), (26, 50, 130)), self._tendons)
        add(T.VESSEL, B((-10, -52, -230), (12, -32, 230)), self._vessels)
        add(T.FLUID, B((-48, -36, -26), (48, 36, 80 + pz)), self._fluid)
        add(T.FAT, B((-30, 8, -14), (30, 40, 70 + pz)), self._fat_pads)
        add(T.CAPSULE, B((-50, -40, -26), (50, 40, 80 + pz)), self._capsule)
        add(T.FAT, B((-90, -90, -230), (90, 90, 230)), None)  # subcutaneous fat (from the skin distance)
        for box, fn in self._muscles():
            add(T.MUSCLE, B(*box), fn)
        self._structures = structs

    # bones
    def femur(self, q: np.ndarray) -> np.ndarray:
        d = sdf.capsule(q, (0, 3, 40), (0, 3, 270), 14.5)
        d = sdf.smin(d, sdf.round_box(q, (0, 0, 44), (33, 20, 19), 12), 14)
        cond = np.minimum(sdf.round_cylinder_x(q, (-24, -6, 24), 21.3, 15, 9),
                          sdf.round_cylinder_x(q, (24, -4.5, 24.5), 21.8, 15, 9))
        d = sdf.smin(d, cond, 4)
        d = sdf.smin(d, sdf.round_box(q, (0, 9, 30), (29, 15, 21), 14), 8)
        d = sdf.smin(d, np.minimum(sdf.sphere(q, (-39, -4, 26), 7), sdf.sphere(q, (39, -6, 24), 6.5)), 4)
        groove = sdf.capsule(q, (1, 37.5, -10), (2, 35, 70), 18)
        return sdf.smax(d, -groove, 3)

    def tibia(self, q: np.ndarray) -> np.ndarray:
        d = sdf.round_box(q, (0, -1, -11), (38, 24, 8.3), 7)
        d = sdf.smin(d, sdf.round_cone_z(q, (0, -1, -22), 28, -80, 14, y_scale=0.8), 10)
        d = sdf.smin(d, sdf.capsule(q, (0, -1, -80), (0, 0, -310), 13.5), 6)
        spines = np.minimum(sdf.ellipsoid(q, (-5, -2, -2.7), (3.5, 7, 6)), sdf.ellipsoid(q, (5, -4, -2.7), (3.5, 6, 5)))
        d = sdf.smin(d, spines, 2)
        return sdf.smin(d, sdf.sphere(q, (0, 23, -32), 8.5), 8)

    def patella(self, q: np.ndarray) -> np.ndarray:
        return sdf.ellipsoid(q, self.pat_c, self.pat_r)

    def fibula(self, q: np.ndarray) -> np.ndarray:
        return np.minimum(sdf.capsule(q, (36, -22, -20), (35, -21, -32), 9.5),
                          sdf.capsule(q, (35, -21, -32), (30, -18, -310), 6.5))

    # cartilage
    def _femoral_cartilage(self, q: np.ndarray) -> np.ndarray:
        x, y, z = q[0], q[1], q[2]
        region = (np.abs(x) < 36.0) & ((np.abs(x) > 9.8) | (y > -4)) & np.where(y < -4, z < 42, z < 46)
        d = self.femur(q)
        return region & (d >= 0) & (d < 2.0)

    def _patellar_cartilage(self, q: np.ndarray) -> np.ndarray:
        c = self.pat_c
        x, y, z = q[0] - c[0], q[1] - c[1], q[2] - c[2]
        region = (y < -3.0) & ((x / 18.0) ** 2 + (z / 15.5) ** 2 < 1.0)
        d = self.patella(q)
        return region & (d >= 0) & (d < 3.2)

    @staticmethod
    def _tibial_cartilage(q: np.ndarray, c: Tuple[float, float], a: Tuple[float, float]) -> np.ndarray:
        x, y, z = q[0], q[1], q[2]
        return (z >= -3.0) & (z < -0.4) & (((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 < 1.0)

    @staticmethod
    def _meniscus(q: np.ndarray, m: Dict) -> np.ndarray:
        x, y, z = q[0] - m["c"][0], q[1] - m["c"][1], q[2]
        ax, ay = m["a"]
        s = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)  # 1 at the outer rim
        posteriority = np.clip(-y / ay, 0.0, 1.0)
        w = m["w"][0] + (m["w"][1] - m["w"][0]) * posteriority
        s_in = 1.0 - w / (0.5 * (ax + ay))
        u = (s - s_in) / (1.0 - s_in)  # 0 inner free edge .. 1 periphery
        top = -0.4 + 6.8 * np.clip(u, 0, 1) ** 0.8
        ang = np.arctan2(y / ay, m["open_dir"] * x / ax)  # angle from the opening direction
        closed = np.abs(ang) > m["open_half"]
        return closed & (u >= 0) & (u <= 1.0) & (z >= -2.8) & (z < top)

    # soft tissue
    def _tendons(self, q: np.ndarray) -> np.ndarray:
        pz = self.patella_dz
        pt = sdf.capsule(q, (2, 40, 21 + pz), (1, 30.5, -30), 2.6, (5, 1, 1))
        qt = sdf.capsule(q, (2, 41, 50 + pz), (2, 35, 130), 3.4, (5, 1, 1))
        return (pt < 0) | (qt < 0)

    def _vessels(self, q: np.ndarray) -> np.ndarray:
        art = sdf.polyline(q, ((0, -36, 230), (0, -40, 30), (1, -41, -80), (0, -38, -230)), 3.2)
        vein = sdf.polyline(q, ((5, -41, 230), (5, -45, 30), (5, -45, -80), (4, -42, -230)), 4.2)
        return (art < 0) | (vein < 0)

    def _cavity(self, q: np.ndarray) -> np.ndarray:
        main = sdf.ellipsoid(q, (0, 0, 8), (44, 30, 25))
        recess = sdf.ellipsoid(q, self.recess_c, (26, 6, 24))
        return sdf.smin(main, recess, 6)

    def _fluid(self, q: np.ndarray) -> np.ndarray:
        """Synovial fluid: inside the cavity and near a bone surface, or in the recess sliver. The tests run on
        the points still undecided (the cavity first), so each costly bone distance is evaluated only where it
        can change the answer."""
        out = self._cavity(q) < 0
        idx = np.flatnonzero(out)
        for test in (lambda p: self.femur(p) < 3.3, lambda p: self.tibia(p) < 3.0,
                     lambda p: self.patella(p) < 3.9, lambda p: sdf.ellipsoid(p, self.recess_c, (22, 1.2, 20)) < 0):
            if len(idx) == 0:
                break
            idx = idx[~test(q[:, idx])]
        out[idx] = False
        return out

    def _fat_pads(self, q: np.ndarray) -> np.ndarray:
        hoffa = sdf.ellipsoid(q, (1, 21, 4), (24, 11, 15)) < 0
        prefemoral = sdf.ellipsoid(q, (0, 27, 48 + self.patella_dz), (24, 8, 24)) < 0
        return hoffa | prefemoral

    def _capsule(self, q: np.ndarray) -> np.ndarray:
        d = self._cavity(q)
        pc = self.pat_c
        retinacula = np.minimum(
            sdf.capsule(q, (pc[0] - 19, pc[1] - 1, pc[2]), (-40, -2, 26), 1.4, (1, 1, 5)),
            sdf.capsule(q, (pc[0] + 19, pc[1] - 1, pc[2]), (40, -4, 24), 1.4, (1, 1, 5)))
        return ((d >= 0) & (d < 0.9)) | (retinacula < 0)

    def _muscles(self):
        """(bbox, inside-function) of each muscle group (quadriceps, vastus medialis, hamstrings, gastrocnemius
        heads, calf)."""
        cap = lambda a, b, r: (lambda q: sdf.capsule(q, a, b, r) < 0)  # noqa: E731
        return [
            (((-75, -70, 55), (75, 75, 230)), lambda q: sdf.round_cone_z(q, (0, 4, 58), 36, 230, 60) < 0),
            (((-52, -6, 28), (-20, 30, 134)), cap((-35, 12, 120), (-38, 10, 44), 14)),
            (((-40, -50, -2), (-12, -22, 152)), cap((-26, -36, 140), (-29, -34, 12), 12)),
            (((15, -49, -2), (45, -23, 152)), cap((28, -36, 140), (31, -34, 10), 11)),
            (((-40, -76, -140), (4, -22, 56)), cap((-19, -42, 36), (-14, -56, -120), 18)),
            (((-2, -72, -138), (38, -22, 52)), cap((19, -40, 32), (14, -54, -120), 16)),
            (((-75, -80, -230), (75, 60, -40)), lambda q: sdf.round_cone_z(q, (0, -12, -48), 34, -230, 50) < 0),
        ]

    def _envelope(self, q: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the skin surface: (3, N) canonical points -> (N,) float32."""
        z = q[2]
        a = np.interp(z, self.env_z, self.env_a).astype(F32)
        b = np.interp(z, self.env_z, self.env_b).astype(F32)
        cy = np.interp(z, self.env_z, self.env_cy).astype(F32)
        u, v = q[0] / a, (q[1] - cy) / b
        return (np.sqrt(u * u + v * v) - F32(1.0)) * np.minimum(a, b)

    # ---- sampling ------------------------------------------------------------------------------------------------
    def tissue_at(self, points: np.ndarray) -> np.ndarray:
        """(N,3) LPS mm -> (N,) uint8 Tissue ids."""
        pts = np.asarray(points).reshape(-1, 3)
        n = len(pts)
        out = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return out
        q = self._canonical_rows(pts)
        d_env = self._envelope(q)
        body = d_env < 0
        out[d_env >= -1.8] = Tissue.SKIN
        out[~body] = Tissue.AIR
        # candidate points: inside the skin; per-chunk bounding boxes cull structures
        deep = np.flatnonzero(body & (out == 0))
        cand = _Candidates(deep, q[:, deep])
        for s in self._structures:
            pos, qi = cand.take(s.lo, s.hi)
            if len(pos) == 0:
                continue
            m = s.inside(qi) if s.inside is not None else d_env[cand.idx[pos]] > -1.8 - self.fat_mm
            out[cand.assign(pos[m])] = s.tissue
        out[cand.idx[cand.live]] = Tissue.FAT
        return out

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        a, b = float(self.env_a.max()), float(self.env_b.max())
        corners = np.array([[sx * a, cy + sy * b, sz * 160.0] for sx in (-1, 1) for sy in (-1, 1)
                            for sz in (-1, 1) for cy in (float(self.env_cy.min()), float(self.env_cy.max()))])
        p = self.to_patient(corners)
        return p.min(axis=0), p.max(axis=0)

    def _make_landmarks(self) -> Dict[str, np.ndarray]:
        P = lambda v: self.to_patient(np.asarray([v], dtype=np.float64))[0]  # noqa: E731
        axes = self.rotation @ self.mirror
        lm = {
            "knee_center": P((0, 0, 0)),
            "acl_femoral": P(self.acl[0]), "acl_tibial": P(self.acl[1]),
            "pcl_femoral": P(self.pcl[0]), "pcl_tibial": P(self.pcl[-1]),
            "mcl_femoral": P(self.mcl[0]), "mcl_tibial": P(self.mcl[-1]),
            "lcl_femoral": P(self.lcl[0]), "lcl_fibular": P(self.lcl[-1]),
            "medial_meniscus_center": P((*self.mm["c"], 2.0)),
            "lateral_meniscus_center": P((*self.lm["c"], 2.0)),
            "patella_center": P(self.pat_c),
            "suprapatellar_recess": P(self.recess_c),
            "axis_lateral": axes[:, 0].copy(), "axis_anterior": axes[:, 1].copy(), "axis_superior": axes[:, 2].copy(),
        }
        g = float(np.mean(self.scale))
        lm["medial_meniscus_radius"] = np.array([0.5 * sum(self.mm["a"]) * g])
        lm["lateral_meniscus_radius"] = np.array([0.5 * sum(self.lm["a"]) * g])
        for k, r in (("acl", 4.6), ("pcl", 5.2), ("mcl", 3.0), ("lcl", 2.6)):
            lm[f"ligament_radius_{k}"] = np.array([r * g])
        assert set(lm) == set(LANDMARK_NAMES)
        return lm
