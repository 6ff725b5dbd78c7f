"""Completing real knee label maps into whole-knee cross-sections.

* SPL atlas: its labels cover bones, cartilage, menisci, ligaments, muscles, tendons, vessels and nerves, but not the
  fat between them, the subcutaneous fat or the skin. :func:`complete_spl` closes the labelled region into a body
  outline (per axial slice), wraps it in subcutaneous fat and skin, fills unlabelled space inside with fat and puts a
  thin synovial fluid film on the cartilage surfaces.
* OAI DESS label map: bones, cartilage and menisci only. :func:`complete_oai` synthesises, from the bone and
  cartilage geometry, ACL and PCL (oblique bands between their notch-wall and intercondylar-area attachments), MCL
  and LCL, patellar and quadriceps tendons, Hoffa's and popliteal fat, gastrocnemius heads, thigh and calf muscle,
  popliteal vessels, a joint capsule, a fluid film, subcutaneous fat and skin.

Soft tissue is computed on a ~1 mm grid (a strided subsample of the label grid); bands (ligaments, tendons) are drawn
analytically at full resolution. Original labels are never overwritten. Shell thicknesses (``skin_mm``, ``fat_mm``)
are distances from the outermost body voxel centre, so the drawn skin is about one coarse voxel thicker (~2 mm).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .atlas_landmarks import KneeFrame, knee_frame
from .label_volume import LabelVolume
from .tissues import Tissue

#: Labels that are structures measured in the source label map (never overwritten by synthesis).
_STRUCTURES = (Tissue.FEMUR, Tissue.TIBIA, Tissue.PATELLA, Tissue.FIBULA, Tissue.FEMORAL_CARTILAGE,
               Tissue.MEDIAL_TIBIAL_CARTILAGE, Tissue.LATERAL_TIBIAL_CARTILAGE, Tissue.PATELLAR_CARTILAGE,
               Tissue.MEDIAL_MENISCUS, Tissue.LATERAL_MENISCUS)
_CARTILAGE = (Tissue.FEMORAL_CARTILAGE, Tissue.MEDIAL_TIBIAL_CARTILAGE, Tissue.LATERAL_TIBIAL_CARTILAGE,
              Tissue.PATELLAR_CARTILAGE, Tissue.MEDIAL_MENISCUS, Tissue.LATERAL_MENISCUS)
_BONES = (Tissue.FEMUR, Tissue.TIBIA, Tissue.PATELLA, Tissue.FIBULA)


# ----------------------------------------------------------------------------------------------------------- grids
def pad_volume(vol: LabelVolume, pad_mm: Tuple[float, float, float]) -> LabelVolume:
    """Copy of ``vol`` with ``pad_mm`` (along i, j, k) of AIR added on both sides of each index axis."""
    pad = [int(np.ceil(p / s)) for p, s in zip(pad_mm, vol.spacing)]  # i, j, k
    labels = np.pad(vol.labels, [(pad[2], pad[2]), (pad[1], pad[1]), (pad[0], pad[0])])
    origin = vol.origin - vol.index_to_lps @ np.array(pad, dtype=np.float64)
    return LabelVolume(labels, origin, vol.spacing.copy(), vol.direction.copy())


class CoarseGrid:
    """A strided subsample of a label grid (~1 mm voxels) used to compute soft tissue cheaply.

    Coarse voxel ``c`` (per axis) sits exactly on fine voxel ``c * factor + offset``.
    """

    def __init__(self, fine: LabelVolume, target_mm: float = 1.0):
        self.fine = fine
        self.factor = np.maximum(1, np.round(target_mm / fine.spacing)).astype(np.int64)  # i, j, k
        self.offset = self.factor // 2
        fi, fj, fk = self.factor
        oi, oj, ok = self.offset
        self.labels = np.ascontiguousarray(fine.labels[ok::fk, oj::fj, oi::fi])
        self.volume = LabelVolume(self.labels, fine.origin + fine.index_to_lps @ self.offset.astype(np.float64),
                                  fine.spacing * self.factor, fine.direction.copy())

    def knee_coordinates(self, frame: KneeFrame) -> np.ndarray:
        """(K, J, I, 3) float32 (lateral, anterior, superior) mm of every coarse voxel centre."""
        v = self.volume
        k, j, i = (np.arange(n, dtype=np.float64) for n in v.labels.shape)
        m = np.stack([frame.lateral, frame.anterior, frame.superior], axis=1)  # LPS -> knee
        a = v.index_to_lps.T @ m  # rows: knee-coordinate increment per unit i, j, k
        base = (v.origin - frame.center) @ m
        out = (base[None, None, None, :] + k[:, None, None, None] * a[2] + j[None, :, None, None] * a[1]
               + i[None, None, :, None] * a[0])
        return out.astype(np.float32)

    def distance(self, mask: np.ndarray) -> np.ndarray:
        """Signed Euclidean distance (mm, float32) to the boundary of a coarse ``mask``: > 0 outside, < 0 inside."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.SetSpacing(tuple(float(s) for s in self.volume.spacing))
        if not mask.any():
            return np.full(mask.shape, 1e6, dtype=np.float32)
        d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        return sitk.GetArrayFromImage(d).astype(np.float32)

    def upsample_into(self, coarse_labels: np.ndarray) -> None:
        """Write ``coarse_labels`` (coarse shape) into the AIR voxels of the fine grid (nearest coarse voxel)."""
        fine = self.fine.labels
        idx = []
        for axis_np, axis_ijk in ((0, 2), (1, 1), (2, 0)):
            n = fine.shape[axis_np]
            c = np.rint((np.arange(n) - self.offset[axis_ijk]) / self.factor[axis_ijk]).astype(np.int64)
            idx.append(np.clip(c, 0, coarse_labels.shape[axis_np] - 1))
        for z in range(fine.shape[0]):  # slice by slice keeps the temporary small
            row = coarse_labels[idx[0][z]][np.ix_(idx[1], idx[2])]
            sl = fine[z]
            air = sl == Tissue.AIR
            sl[air] = row[air]


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill 2D holes in each (J, I) slice of a (K, J, I) bool mask."""
    import SimpleITK as sitk

    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        img = sitk.GetImageFromArray(mask[z].astype(np.uint8))
        out[z] = sitk.GetArrayFromImage(sitk.BinaryFillhole(img)) > 0
    return out


def fill_bone_holes(vol: LabelVolume) -> int:
    """Fill enclosed unlabelled cavities inside each bone (segmentation gaps in the marrow), in place.

    3D hole filling per bone within its bounding box, then per 2D slice of the label map (catches gaps that open
    onto the edge of the field of view). Only AIR voxels are changed. Returns the number of voxels filled.
    """
    import SimpleITK as sitk

    filled_total = 0
    for bone in _BONES:
        mask = vol.labels == bone
        if not mask.any():
            continue
        box = tuple(slice(int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0]),
                          int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) + 1)
                    for ax in range(3))
        sub = mask[box]
        filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(sub.astype(np.uint8)))) > 0
        for n in range(filled.shape[0]):  # 2D holes in each slice of the label map
            plane = filled[n]
            if plane.any():
                filled[n] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(plane.astype(np.uint8)))) > 0
        region = vol.labels[box]
        new = filled & (region == Tissue.AIR)
        region[new] = bone
        filled_total += int(new.sum())
    return filled_total


# ---------------------------------------------------------------------------------------------------- bands (fine)
def paint_band(vol: LabelVolume, writable: np.ndarray, p0: np.ndarray, p1: np.ndarray, tissue: int,
               half_width: float, half_thickness: float, width_hint: np.ndarray) -> int:
    """Draw a straight band (flat cylinder, rounded ends) from ``p0`` to ``p1`` (LPS mm) at full resolution.

    The cross-section is an ellipse with semi-axes ``half_width`` (along ``width_hint`` made orthogonal to the band)
    and ``half_thickness``. Only voxels where ``writable`` (same shape as ``vol.labels``) is True are written.
    Returns the number of voxels written.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    axis = axis / max(length, 1e-9)
    w = np.asarray(width_hint, float) - np.dot(width_hint, axis) * axis
    w = w / max(float(np.linalg.norm(w)), 1e-9)
    th = np.cross(axis, w)
    r = max(half_width, half_thickness)
    corners = np.array([p + s for p in (p0, p1) for s in (np.full(3, -r), np.full(3, r))])
    box = vol.index_of_lps(np.array([[x, y, z] for x in corners[:, 0] for y in corners[:, 1] for z in corners[:, 2]]))
    lo = np.maximum(np.floor(box.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(box.max(axis=0)).astype(int) + 1, vol.size_ijk)
    if np.any(hi <= lo):
        return 0
    ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    pts = vol.lps_of_index(ijk)
    rel = pts - p0
    t = np.clip(rel @ axis, 0.0, length)
    off = rel - t[:, None] * axis[None, :]
    inside = (off @ w / half_width) ** 2 + (off @ th / half_thickness) ** 2 <= 1.0
    ijk = ijk[inside]
    ok = writable[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    ijk = ijk[ok]
    vol.labels[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = tissue
    return int(len(ijk))


# -------------------------------------------------------------------------------------------------------------- SPL
def extend_slices(vol: LabelVolume, extend_mm: float, complete_fraction: float = 0.8) -> LabelVolume:
    """Copy of ``vol`` whose end slices (numpy axis 0) are replaced and continued by the outermost complete slices.

    The SPL atlas is an axial slab of only 116 mm whose first/last slices are sparsely labelled. Slices with fewer
    labelled voxels than ``complete_fraction`` x the median are dropped at both ends; the outermost complete slices
    are then repeated out to ``extend_mm`` beyond the original slab. This continues the femoral and tibial shafts,
    fibula, muscles and vessels as straight cylinders, so fields of view taller than the slab do not end in air.
    """
    area = np.count_nonzero(vol.labels.reshape(vol.labels.shape[0], -1), axis=1)
    complete = np.flatnonzero(area >= complete_fraction * np.median(area[area > 0]))
    first, last = int(complete[0]), int(complete[-1])
    n = int(round(extend_mm / vol.spacing[2]))
    before, after = n + first, n + (vol.labels.shape[0] - 1 - last)
    labels = np.pad(vol.labels[first:last + 1], [(before, after), (0, 0), (0, 0)], mode="edge")
    origin = vol.origin + vol.index_to_lps @ np.array([0.0, 0.0, float(first - before)])
    return LabelVolume(labels, origin, vol.spacing.copy(), vol.direction.copy())


def complete_spl(vol: LabelVolume, fat_mm: float = 5.0, skin_mm: float = 1.0, fluid_mm: float = 1.0,
                 closing_mm: float = 12.0, extend_mm: float = 20.0) -> LabelVolume:
    """Fill the unlabelled space of the mapped SPL atlas (in place on a padded copy, which is returned).

    The axial slab is first extended by ``extend_mm`` above and below (:func:`extend_slices`). Body core = the
    labelled region closed by ``closing_mm`` with 2D holes filled per axial slice; around it ``fat_mm`` of
    subcutaneous fat and ``skin_mm`` of skin; inside, unlabelled voxels within ``fluid_mm`` of cartilage or meniscus
    are synovial fluid and the rest is fat.
    """
    fill_bone_holes(vol)
    vol = extend_slices(vol, extend_mm)
    vol = pad_volume(vol, (fat_mm + skin_mm + 3.0, fat_mm + skin_mm + 3.0, 0.0))
    grid = CoarseGrid(vol)
    labelled = grid.labels != Tissue.AIR
    d = grid.distance(labelled)
    dilated = d <= closing_mm
    core = grid.distance(~dilated) >= closing_mm  # distance from outside the dilation, measured inside it
    core |= labelled
    core = _fill_holes_per_slice(core)
    d_core = grid.distance(core)
    d_cart = grid.distance(np.isin(grid.labels, np.asarray(_CARTILAGE, dtype=np.uint8)))
    out = np.zeros(grid.labels.shape, dtype=np.uint8)
    out[(d_core > 0) & (d_core <= fat_mm)] = Tissue.FAT
    out[(d_core > fat_mm) & (d_core <= fat_mm + skin_mm)] = Tissue.SKIN
    out[core] = Tissue.FAT
    out[core & (d_cart <= fluid_mm) & (d_cart > -0.5)] = Tissue.FLUID
    grid.upsample_into(out)
    return vol


# -------------------------------------------------------------------------------------------------------------- OAI
def _profile(h: np.ndarray, values: np.ndarray, bins: np.ndarray, q: float, smooth: int = 5) -> np.ndarray:
    """Quantile ``q`` of ``values`` per height bin, gaps interpolated, moving-average smoothed. Returns (len(bins)-1,)."""
    which = np.digitize(h, bins) - 1
    out = np.full(len(bins) - 1, np.nan)
    for b in np.unique(which):
        if 0 <= b < len(out):
            sel = values[which == b]
            if len(sel) >= 5:
                out[b] = np.quantile(sel, q)
    good = ~np.isnan(out)
    centers = 0.5 * (bins[1:] + bins[:-1])
    out = np.interp(centers, centers[good], out[good])
    kernel = np.ones(smooth) / smooth
    padded = np.pad(out, smooth // 2, mode="edge")
    return np.convolve(padded, kernel, mode="valid")[: len(out)]


def _nearest(points: np.ndarray, q: np.ndarray, sel: np.ndarray, key: np.ndarray, largest: bool) -> np.ndarray:
    """Knee coords of the selected point with the largest/smallest ``key`` (robust: mean of the extreme 1%)."""
    qs, ks = q[sel], key[sel]
    if len(qs) == 0:
        raise ValueError("no voxels in the search region")
    cut = np.quantile(ks, 0.99 if largest else 0.01)
    pick = ks >= cut if largest else ks <= cut
    return qs[pick].mean(axis=0)


def _notch_walls(post: np.ndarray, medial_meniscus: float, lateral_meniscus: float) -> Tuple[float, float]:
    """(medial, lateral) positions (knee lateral coordinate) of the intercondylar notch walls: the low-count run of
    posterior femur voxels closest to the middle between the menisci (+-9 mm around that middle without one)."""
    lo_l, hi_l = sorted((medial_meniscus, lateral_meniscus))
    edges = np.arange(lo_l, hi_l + 1.0, 1.0)
    counts, _ = np.histogram(post[:, 0], bins=edges)
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    low = smooth < 0.3 * smooth.max()
    centers = 0.5 * (edges[1:] + edges[:-1])
    mid = 0.5 * (lo_l + hi_l)
    if not low.any():
        return mid - 9.0, mid + 9.0
    runs, start = [], None
    for n, flag in enumerate(low):
        if flag and start is None:
            start = n
        if (not flag or n == len(low) - 1) and start is not None:
            end = n if flag else n - 1
            runs.append((centers[start], centers[end]))
            start = None
    return min(runs, key=lambda r: abs(0.5 * (r[0] + r[1]) - mid))


def _cruciate_attachments(fq: np.ndarray, tq: np.ndarray, tibia_top: float, mm: np.ndarray,
                          lm: np.ndarray) -> dict:
    """ACL and PCL anchors (and ``notch_center``) from the femur (``fq``) and tibia (``tq``) knee coordinates and
    the meniscus centres ``mm`` / ``lm``."""
    out = {}
    plate = tq[tq[:, 2] > np.quantile(tq[:, 2], 0.9)]  # tibial plateau: AP extent near the joint
    a_min_t, a_max_t = np.quantile(plate[:, 1], [0.01, 0.99])
    # Intercondylar notch: femur voxels 6..24 mm above the plateau, posterior half of the condyles.
    slab = fq[(fq[:, 2] > tibia_top + 6) & (fq[:, 2] < tibia_top + 24)]
    a_min_f, a_max_f = np.quantile(slab[:, 1], [0.01, 0.99])
    post = slab[slab[:, 1] < 0.5 * (a_min_f + a_max_f)]
    wall_med, wall_lat = _notch_walls(post, mm[0], lm[0])
    notch = 0.5 * (wall_med + wall_lat)
    out["notch_center"] = notch
    depth_f = a_max_f - a_min_f

    def wall(a0: float, h0: float, lateral: bool) -> float:
        sel = (np.abs(fq[:, 1] - a0) < 2.5) & (np.abs(fq[:, 2] - h0) < 2.5)
        sel &= (fq[:, 0] > notch) if lateral else (fq[:, 0] < notch)
        if sel.sum() < 5:
            return wall_lat if lateral else wall_med
        if lateral:  # the wall must lie between the notch centre and the condyle (notch closed -> measured wall)
            return float(np.clip(fq[sel, 0].min(), notch + 2.0, wall_lat + 3.0))
        return float(np.clip(fq[sel, 0].max(), wall_med - 3.0, notch - 2.0))

    def tibia_surface(l0: float, a0: float) -> float:
        sel = (np.abs(tq[:, 0] - l0) < 2.0) & (np.abs(tq[:, 1] - a0) < 2.0)
        return float(tq[sel, 2].max()) if sel.sum() >= 3 else tibia_top

    # ACL: posterior part of the lateral condyle's inner wall -> anterior intercondylar area.
    a0, h0 = a_min_f + 0.15 * depth_f, tibia_top + 16.0
    out["acl_femoral"] = np.array([wall(a0, h0, True) - 1.0, a0, h0])
    l_t, a_t = notch - 1.5, a_min_t + 0.62 * (a_max_t - a_min_t)
    out["acl_tibial"] = np.array([l_t, a_t, tibia_surface(l_t, a_t) + 1.0])
    # PCL: anterior part of the medial condyle's inner wall -> posterior intercondylar area (below the plateau).
    a0, h0 = a_min_f + 0.42 * depth_f, tibia_top + 14.0
    out["pcl_femoral"] = np.array([wall(a0, h0, False) + 1.0, a0, h0])
    h_p = tibia_top - 9.0
    sel = (np.abs(tq[:, 0] - notch) < 3.0) & (np.abs(tq[:, 2] - h_p) < 2.0)
    a_back = float(np.quantile(tq[sel, 1], 0.02)) if sel.sum() >= 5 else a_min_t
    out["pcl_tibial"] = np.array([notch, a_back - 1.0, h_p])
    return out


def _collateral_attachments(fq: np.ndarray, tq: np.ndarray, bq: np.ndarray, jq: np.ndarray,
                            tibia_top: float) -> dict:
    """MCL and LCL anchors: epicondyles -> joint line / tibia and fibular head, lying on the bone surface (femur
    ``fq``, tibia ``tq``, fibula ``bq``, all structures ``jq`` in knee coordinates)."""
    out = {}
    med_sign = -1.0  # knee coordinates: +lateral
    sel = (fq[:, 2] > tibia_top + 18) & (fq[:, 2] < tibia_top + 40)
    epi_m = _nearest(fq, fq, sel, fq[:, 0], largest=False)
    out["mcl_femoral"] = epi_m + np.array([med_sign * 1.5, 0.0, 0.0])
    sel = (np.abs(jq[:, 2] - tibia_top) < 3.0) & (np.abs(jq[:, 1] - epi_m[1]) < 5.0)
    jm = _nearest(jq, jq, sel, jq[:, 0], largest=False)
    out["mcl_joint"] = np.array([jm[0] - 1.5, epi_m[1], tibia_top])
    h_low = max(tibia_top - 55.0, float(np.quantile(tq[:, 2], 0.02)) + 4.0)
    sel = (np.abs(tq[:, 2] - h_low) < 3.0) & (np.abs(tq[:, 1] - (epi_m[1] + 4.0)) < 6.0)
    tm = _nearest(tq, tq, sel, tq[:, 0], largest=False)
    out["mcl_tibial"] = np.array([tm[0] - 1.5, tm[1], h_low])
    sel = (fq[:, 2] > tibia_top + 15) & (fq[:, 2] < tibia_top + 35)
    epi_l = _nearest(fq, fq, sel, fq[:, 0], largest=True)
    out["lcl_femoral"] = epi_l + np.array([1.5, 0.0, 0.0])
    fib_top = float(np.quantile(bq[:, 2], 0.995))
    sel = bq[:, 2] > fib_top - 8.0
    head = _nearest(bq, bq, sel, bq[:, 0], largest=True)
    out["lcl_fibular"] = np.array([head[0] + 1.0, head[1], min(head[2], fib_top - 4.0)])
    return out


def _tendon_attachments(fq: np.ndarray, tq: np.ndarray, pq: np.ndarray, tibia_top: float) -> dict:
    """Patellar tendon (lower pole of the patella -> tibial tuberosity) and quadriceps tendon (upper pole upwards)
    anchors, and the patella's top and front (femur ``fq``, tibia ``tq``, patella ``pq`` in knee coordinates)."""
    out = {}
    p_low, p_top = np.quantile(pq[:, 2], [0.01, 0.99])
    low = pq[pq[:, 2] < p_low + 4.0]
    out["patellar_tendon_top"] = np.array([low[:, 0].mean(), np.quantile(low[:, 1], 0.8) - 1.0, low[:, 2].mean()])
    h_tt = tibia_top - 26.0
    sel = np.abs(tq[:, 2] - h_tt) < 3.0
    tt = _nearest(tq, tq, sel, tq[:, 1], largest=True)
    out["patellar_tendon_bottom"] = np.array([tt[0], tt[1] - 1.0, h_tt])
    top = pq[pq[:, 2] > p_top - 5.0]
    out["quadriceps_tendon_bottom"] = np.array([top[:, 0].mean(), np.quantile(top[:, 1], 0.7), top[:, 2].mean()])
    # Quadriceps tendon top: 45 mm above the upper pole, converging to ~12 mm in front of the femoral shaft.
    h_q = float(top[:, 2].mean()) + 45.0
    sel = (np.abs(fq[:, 2] - h_q) < 3.0) & (np.abs(fq[:, 0] - top[:, 0].mean()) < 15.0)
    a_q = float(np.quantile(fq[sel, 1], 0.98)) + 12.0 if sel.sum() >= 5 else out["quadriceps_tendon_bottom"][1] - 8.0
    out["quadriceps_tendon_top"] = np.array([top[:, 0].mean(), a_q, h_q])
    out["patella_top"] = float(p_top)
    out["patella_front"] = float(np.quantile(pq[:, 1], 0.99))
    return out


def oai_attachments(vol: LabelVolume, frame: KneeFrame) -> dict:
    """Ligament and tendon anchor points (knee coordinates, mm) measured from the OAI bones.

    Returns ``{name: (3,) (lateral, anterior, superior)}`` for acl_femoral, acl_tibial, pcl_femoral, pcl_tibial,
    mcl_femoral, mcl_joint, mcl_tibial, lcl_femoral, lcl_fibular, patellar_tendon_top, patellar_tendon_bottom,
    quadriceps_tendon_bottom; plus scalars notch_center (lateral), tibia_top.
    """
    fq = frame.coordinates(vol.points_of([Tissue.FEMUR], 400_000))
    tq = frame.coordinates(vol.points_of([Tissue.TIBIA], 400_000))
    pq = frame.coordinates(vol.points_of([Tissue.PATELLA], 100_000))
    bq = frame.coordinates(vol.points_of([Tissue.FIBULA], 100_000))
    jq = frame.coordinates(vol.points_of(_STRUCTURES, 400_000))
    mm = frame.coordinates(vol.points_of([Tissue.MEDIAL_MENISCUS], 50_000)).mean(axis=0)
    lm = frame.coordinates(vol.points_of([Tissue.LATERAL_MENISCUS], 50_000)).mean(axis=0)
    tibia_top = float(np.quantile(tq[:, 2], 0.995))  # top of the tibial plateau
    cruciates = _cruciate_attachments(fq, tq, tibia_top, mm, lm)
    out = {"notch_center": cruciates.pop("notch_center"), "tibia_top": tibia_top, **cruciates}
    out.update(_collateral_attachments(fq, tq, bq, jq, tibia_top))
    out.update(_tendon_attachments(fq, tq, pq, tibia_top))
    out["medial_condyle"] = float(mm[0])
    out["lateral_condyle"] = float(lm[0])
    return out


class _BodyOutline:
    """Per-height (2 mm bins of the superior coordinate) bone extents and the margins of the body around them, from
    which the body's elliptical cross-section is drawn (knee coordinates, mm)."""

    def __init__(self, grid: "CoarseGrid", frame: KneeFrame, h: np.ndarray, att: dict, fat_mm: float,
                 skin_mm: float):
        bq = frame.coordinates(grid.volume.points_of(_BONES, 400_000))
        self.bins = bins = np.arange(np.floor(h.min()) - 2.0, np.ceil(h.max()) + 4.0, 2.0)
        self.lat_min = _profile(bq[:, 2], bq[:, 0], bins, 0.005)
        self.lat_max = _profile(bq[:, 2], bq[:, 0], bins, 0.995)
        self.ant_min = _profile(bq[:, 2], bq[:, 1], bins, 0.005)
        self.ant_max = _profile(bq[:, 2], bq[:, 1], bins, 0.995, smooth=9)
        fq = frame.coordinates(grid.volume.points_of([Tissue.FEMUR, Tissue.TIBIA], 400_000))
        self.shaft_front = _profile(fq[:, 2], fq[:, 1], bins, 0.99, smooth=5)
        self.h_range = np.quantile(bq[:, 2], [0.0005, 0.9995])
        hb = np.array([-80.0, -35.0, -14.0, 0.0, 14.0, 35.0, 80.0]) + att["tibia_top"]
        self.m_lat = np.interp(bins[:-1], hb, [24, 22, 14, 12, 13, 28, 38])
        m_ant = np.interp(bins[:-1], hb, [5, 5, 20, 22, 8, 9, 30])
        m_ant = np.where(bins[:-1] > att["patella_top"] + 5.0, np.maximum(m_ant, 26.0), m_ant)
        self.m_post = np.interp(bins[:-1], hb, [55, 55, 42, 35, 35, 45, 50])
        front = self.ant_max + m_ant
        # the tendons lie in front of the bones: keep subcutaneous fat and skin (+1 mm) in front of them
        hc = 0.5 * (bins[1:] + bins[:-1])
        for lo_name, hi_name, half in (("patellar_tendon_bottom", "patellar_tendon_top", 2.6),
                                       ("quadriceps_tendon_bottom", "quadriceps_tendon_top", 3.2)):
            p_lo, p_hi = att[lo_name], att[hi_name]
            inside = (hc >= p_lo[2]) & (hc <= p_hi[2])
            tendon_front = np.interp(hc, [p_lo[2], p_hi[2]], [p_lo[1], p_hi[1]]) + half + fat_mm + skin_mm + 1.0
            front = np.where(inside, np.maximum(front, tendon_front), front)
        self.front = np.convolve(np.pad(front, 4, mode="edge"), np.ones(9) / 9, mode="valid")

    def bin_of(self, h: np.ndarray) -> np.ndarray:
        """The height bin of every voxel (clipped to the profiles)."""
        return np.clip(np.digitize(h, self.bins) - 1, 0, len(self.bins) - 2)

    def centres(self, which: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(lateral, anterior) centre of the bones at each voxel's height bin ``which``."""
        return 0.5 * (self.lat_min + self.lat_max)[which], 0.5 * (self.ant_min + self.ant_max)[which]

    def body(self, q: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Voxels inside the elliptical body cross-section (bone margins laterally, the front profile in front and
        the posterior margin behind); ``q`` are the voxels' knee coordinates."""
        l, a = q[..., 0], q[..., 1]
        cl, ac = self.centres(which)
        rl = (0.5 * (self.lat_max - self.lat_min) + self.m_lat)[which]
        ra = np.where(a > ac, self.front[which] - ac, ac - (self.ant_min - self.m_post)[which])
        rho = ((l - cl) / rl) ** 2 + ((a - ac) / np.maximum(ra, 1.0)) ** 2
        return rho <= 1.0


def _oai_interior(q: np.ndarray, which: np.ndarray, outline: _BodyOutline, att: dict,
                  d_bone: np.ndarray) -> np.ndarray:
    """The tissue of every coarse voxel inside the body: thigh and calf muscle, gastrocnemius heads, popliteal,
    notch and prefemoral fat, the popliteal vessels and a joint capsule (fat elsewhere)."""
    l, a, h = q[..., 0], q[..., 1], q[..., 2]
    cl, ac = outline.centres(which)
    ant_min, shaft_front = outline.ant_min, outline.shaft_front
    tt = att["tibia_top"]
    rel_h = h - tt
    thigh = rel_h > 22.0
    calf = rel_h < -18.0
    joint = ~thigh & ~calf
    back = a < ant_min[which] - 1.0
    mc, lc = att["medial_condyle"], att["lateral_condyle"]
    gastro = back & (rel_h < 22.0) & ((np.abs(l - mc) < 13.0) | (np.abs(l - lc) < 11.0)) & (d_bone > 2.5)
    tibia_centre_l = 0.5 * (mc + lc)
    subcut_tibia = calf & (a > ac) & ((l - tibia_centre_l) * np.sign(mc - lc) > 0) & (d_bone < 8.0)
    interior = np.where(thigh | calf, Tissue.MUSCLE, Tissue.FAT).astype(np.uint8)
    interior[joint & gastro] = Tissue.MUSCLE
    interior[subcut_tibia] = Tissue.FAT
    # Popliteal fossa: fat between the hamstrings/gastrocnemius heads, behind the femur, up to ~6 cm above the joint.
    fossa_half = np.interp(rel_h, [-20.0, 0.0, 25.0, 60.0], [6.0, 10.0, 14.0, 8.0])
    fossa = back & (np.abs(l - att["notch_center"]) < fossa_half) & (rel_h > -20.0) & (rel_h < 60.0)
    interior[fossa & ~(joint & gastro & (np.abs(l - att["notch_center"]) > 9.0))] = Tissue.FAT
    # Intercondylar notch (between the condyles, behind the trochlea): fat around the cruciates.
    notch_fat = (np.abs(l - att["notch_center"]) < 12.0) & (rel_h > -4.0) & (rel_h < 32.0) & (a < ac) & ~back
    interior[notch_fat] = Tissue.FAT
    prefemoral = thigh & (a > shaft_front[which]) & (rel_h < att["patella_top"] - tt + 30.0) & (np.abs(l - cl) < 25)
    interior[prefemoral] = Tissue.FAT
    # Popliteal artery and vein behind the joint, following the posterior bone profile.
    vessel_a = (ant_min[which] - 11.0)
    vessel_l = att["notch_center"]
    interior[((l - vessel_l) ** 2 + (a - vessel_a) ** 2) <= 3.0 ** 2] = Tissue.VESSEL
    lat_sign = 1.0 if lc > mc else -1.0
    interior[((l - vessel_l - 2.0 * lat_sign) ** 2 + (a - vessel_a + 7.0) ** 2) <= 3.8 ** 2] = Tissue.VESSEL
    # Joint capsule: a thin layer around the tibiofemoral joint behind the condyles' front.
    cap = (d_bone > 3.5) & (d_bone <= 4.7) & (np.abs(rel_h) < 18.0) & (a < shaft_front[which] - 4.0)
    interior[cap & ~(interior == Tissue.VESSEL)] = Tissue.CAPSULE
    return interior


def complete_oai(vol: LabelVolume, skin_mm: float = 1.0, fat_mm: float = 5.0) -> LabelVolume:
    """Synthesise ligaments, tendons and soft tissue around the OAI bones/cartilage/menisci (padded copy returned)."""
    fill_bone_holes(vol)
    frame = knee_frame(vol)
    att = oai_attachments(vol, frame)  # measured before padding (same LPS geometry, fewer voxels to scan)
    # Room for the soft tissue the DESS field of view cuts off (posterior calf/popliteal fossa, medial/lateral).
    vol = pad_volume(vol, tuple(_pad_for(vol, frame)))
    grid = CoarseGrid(vol)
    q = grid.knee_coordinates(frame)
    h = q[..., 2]
    lab = grid.labels
    bone = np.isin(lab, np.asarray(_STRUCTURES, dtype=np.uint8))
    outline = _BodyOutline(grid, frame, h, att, fat_mm, skin_mm)
    which = outline.bin_of(h)
    h_lo, h_hi = outline.h_range
    body = outline.body(q, which) | (grid.distance(bone) <= 3.0)
    d_in = -grid.distance(body)  # > 0 inside the body: depth below the skin surface
    body &= (h >= h_lo - 1.0) & (h <= h_hi + 1.0)  # the leg is cut where the source's bones end (no skin cap)
    d_bone = np.maximum(grid.distance(bone), 0.5)
    d_cart = grid.distance(np.isin(lab, np.asarray(_CARTILAGE, dtype=np.uint8)))
    out = np.zeros(lab.shape, dtype=np.uint8)
    interior = _oai_interior(q, which, outline, att, d_bone)
    out[body] = interior[body]
    out[body & (d_in <= fat_mm + skin_mm)] = Tissue.FAT
    out[body & (d_in <= skin_mm)] = Tissue.SKIN
    out[body & (d_cart <= 1.0) & (d_cart > -0.5) & (d_in > fat_mm + skin_mm)] = Tissue.FLUID
    original_air = vol.labels == Tissue.AIR
    grid.upsample_into(out)
    # bands go where the source had no structure and inside the skin
    writable = original_air & (vol.labels != Tissue.AIR) & (vol.labels != Tissue.SKIN)
    _paint_oai_bands(vol, writable, frame, att)
    return vol


def _pad_for(vol: LabelVolume, frame: KneeFrame, margin_mm: float = 50.0) -> np.ndarray:
    """Padding (mm along i, j, k) so the synthetic body (<= ~50 mm beyond the bones) fits in the grid.

    The index axis closest to the knee's long axis is not padded: the body ends where the source's bones end.
    """
    lo, hi = vol.bounding_box()
    grid_pts = vol.corners()
    g_lo, g_hi = grid_pts.min(axis=0), grid_pts.max(axis=0)
    need_lps = np.maximum(np.maximum(g_lo - (lo - margin_mm), (hi + margin_mm) - g_hi), 0.0)  # per LPS axis
    need = np.abs(vol.direction.T) @ need_lps  # onto index axes (direction columns are unit vectors)
    long_axis = int(np.argmax(np.abs(vol.direction.T @ frame.superior)))
    need[long_axis] = 0.0
    return np.minimum(need, margin_mm)


def _paint_oai_bands(vol: LabelVolume, writable: np.ndarray, frame: KneeFrame, att: dict) -> None:
    """Draw ligaments and tendons (full resolution) into ``vol`` where the source map had no structure."""
    P = lambda name: frame.to_lps(att[name][None, :])[0]  # noqa: E731
    lat, ant = frame.lateral, frame.anterior
    # Patellar and quadriceps tendons (flat, wide), then the four ligaments (they win where they overlap).
    paint_band(vol, writable, P("patellar_tendon_top"), P("patellar_tendon_bottom"), Tissue.TENDON, 12.0, 2.6, lat)
    q0 = P("quadriceps_tendon_bottom")
    q1 = frame.to_lps(att["quadriceps_tendon_top"][None, :])[0]
    paint_band(vol, writable, q0, q1, Tissue.TENDON, 13.0, 3.2, lat)
    paint_band(vol, writable, P("acl_femoral"), P("acl_tibial"), Tissue.ACL, 5.0, 3.8, lat)
    paint_band(vol, writable, P("pcl_femoral"), P("pcl_tibial"), Tissue.PCL, 5.5, 4.5, lat)
    paint_band(vol, writable, P("mcl_femoral"), P("mcl_joint"), Tissue.MCL, 5.5, 1.3, ant)
    paint_band(vol, writable, P("mcl_joint"), P("mcl_tibial"), Tissue.MCL, 5.5, 1.3, ant)
    paint_band(vol, writable, P("lcl_femoral"), P("lcl_fibular"), Tissue.LCL, 2.6, 2.6, ant)
