"""Colour-coded mid-slice pictures of any :class:`~OrthoDiffusionLib.simulate.tissues.AnatomySource`.

:func:`render_atlas_previews` (``orthodiffusion simulate atlas-preview --out DIR``) writes, for the SPL and OAI atlas
sources (plain, deformed, deformed + mirrored), one PNG each with the mid-sagittal, mid-coronal and mid-axial tissue slices through
the knee centre along the knee's own axes, with landmarks marked. matplotlib is imported lazily.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .tissues import Tissue

#: Display colour (RGB 0..1) per Tissue id.
TISSUE_COLORS: Dict[int, Tuple[float, float, float]] = {
    Tissue.AIR: (0.0, 0.0, 0.0), Tissue.FEMUR: (0.95, 0.9, 0.75), Tissue.TIBIA: (0.85, 0.8, 0.6),
    Tissue.PATELLA: (1.0, 0.95, 0.5), Tissue.FEMORAL_CARTILAGE: (0.3, 0.5, 1.0),
    Tissue.MEDIAL_TIBIAL_CARTILAGE: (0.2, 0.8, 1.0), Tissue.LATERAL_TIBIAL_CARTILAGE: (0.6, 0.3, 1.0),
    Tissue.PATELLAR_CARTILAGE: (0.1, 0.3, 0.8), Tissue.MEDIAL_MENISCUS: (0.0, 0.7, 0.3),
    Tissue.LATERAL_MENISCUS: (0.6, 0.9, 0.1), Tissue.ACL: (1.0, 0.1, 0.1), Tissue.PCL: (1.0, 0.5, 0.0),
    Tissue.FIBULA: (0.7, 0.6, 0.4), Tissue.MCL: (1.0, 0.0, 1.0), Tissue.LCL: (0.6, 0.0, 0.6),
    Tissue.TENDON: (0.45, 0.45, 0.45), Tissue.FLUID: (0.3, 1.0, 1.0), Tissue.FAT: (0.9, 0.85, 0.2),
    Tissue.MUSCLE: (0.65, 0.25, 0.25), Tissue.SKIN: (1.0, 0.75, 0.7), Tissue.VESSEL: (0.9, 0.0, 0.3),
    Tissue.CAPSULE: (0.3, 0.3, 0.6), Tissue.EDEMA: (0.0, 1.0, 0.5), Tissue.SOFT_TISSUE: (0.5, 0.6, 0.5),
}


def tissue_slices(source, extent_mm: float = 150.0, pixel_mm: float = 0.4) -> Dict[str, np.ndarray]:
    """Mid slices through ``landmarks["knee_center"]`` along the knee axes.

    Returns ``{"sagittal"|"coronal"|"axial"|"sagittal_acl": (H, W) uint8 tissue ids}`` (``sagittal_acl``: the
    sagittal plane through the ACL's middle); sagittal rows run superior->inferior and
    columns posterior->anterior; coronal rows superior->inferior, columns medial->lateral; axial rows
    anterior->posterior, columns medial->lateral.
    """
    lm = source.landmarks
    c, lat, ant, sup = lm["knee_center"], lm["axis_lateral"], lm["axis_anterior"], lm["axis_superior"]
    n = int(round(extent_mm / pixel_mm))
    t = (np.arange(n) - (n - 1) / 2.0) * pixel_mm
    acl_mid = 0.5 * (lm["acl_femoral"] + lm["acl_tibial"])
    acl_c = c + np.dot(acl_mid - c, lat) * lat  # knee centre shifted laterally to the ACL's middle
    planes = {"sagittal": (c, -sup, ant), "coronal": (c, -sup, lat), "axial": (c, -ant, lat),
              "sagittal_acl": (acl_c, -sup, ant)}
    out = {}
    for name, (centre, row_dir, col_dir) in planes.items():
        pts = centre + t[:, None, None] * row_dir + t[None, :, None] * col_dir
        out[name] = source.tissue_at(pts.reshape(-1, 3)).reshape(n, n)
    return out


def render_mid_slices(source, path: Path, title: str = "", extent_mm: float = 150.0) -> Path:
    """Save a PNG with the mid slices of ``source`` (colour-coded tissue) and a legend; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    slices = tissue_slices(source, extent_mm=extent_mm)
    lut = np.zeros((256, 3))
    for k, v in TISSUE_COLORS.items():
        lut[int(k)] = v
    fig, axes = plt.subplots(1, 4, figsize=(24, 6.8))
    half = extent_mm / 2
    labels = {"sagittal": ("posterior -> anterior", "inferior <- superior"),
              "coronal": ("medial -> lateral", "inferior <- superior"),
              "axial": ("medial -> lateral", "posterior <- anterior"),
              "sagittal_acl": ("posterior -> anterior", "inferior <- superior")}
    lm = source.landmarks
    c, axes_lm = lm["knee_center"], (lm["axis_lateral"], lm["axis_anterior"], lm["axis_superior"])
    marks = ["acl_femoral", "acl_tibial", "pcl_femoral", "pcl_tibial", "mcl_femoral", "mcl_tibial", "lcl_femoral",
             "lcl_fibular", "medial_meniscus_center", "lateral_meniscus_center", "patella_center",
             "suprapatellar_recess"]
    for ax, (name, img) in zip(axes, slices.items()):
        ax.imshow(lut[img], extent=(-half, half, -half, half))
        ax.set_title(f"{title} {name}")
        ax.set_xlabel(labels[name][0])
        ax.set_ylabel(labels[name][1])
        for m in marks:
            q = [float(np.dot(lm[m] - c, a)) for a in axes_lm]  # lateral, anterior, superior
            x, y = {"sagittal": (q[1], q[2]), "coronal": (q[0], q[2]), "axial": (q[0], q[1]),
                    "sagittal_acl": (q[1], q[2])}[name]
            ax.plot(x, y, "w+", ms=8)
            ax.annotate(m.replace("_center", "").replace("meniscus", "men"), (x, y), color="white", fontsize=6)
    present = sorted(set(np.unique(np.concatenate([s.ravel() for s in slices.values()])).tolist()))
    handles = [Patch(color=TISSUE_COLORS[v], label=Tissue(v).name.lower()) for v in present if v in TISSUE_COLORS]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 12), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def render_atlas_previews(out: Union[str, Path], seed: int = 1, spl: Optional[Union[str, Path]] = None,
                          oai: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """Render the SPL and OAI atlas sources (plain, deformed, deformed + mirrored) into ``out/<kind>_<tag>.png``.

    ``spl``/``oai``: the label maps (default: the shared data). Returns one entry per atlas: ``kind``,
    ``load_seconds``, ``atlas_side`` and ``pictures`` (the PNG paths)."""
    from .atlas import AtlasAnatomy

    out = Path(out)
    done = []
    for kind, factory, path in (("spl", AtlasAnatomy.from_spl, spl), ("oai", AtlasAnatomy.from_oai, oai)):
        t0 = time.perf_counter()
        plain = factory(path, seed=seed, deformation=0.0, scale_range=(1.0, 1.0), rotation_deg=0.0, anisotropy=0.0)
        plain = factory(path, seed=seed, side=plain.atlas_side, deformation=0.0, scale_range=(1.0, 1.0),
                        rotation_deg=0.0, anisotropy=0.0)
        entry: Dict[str, Any] = {"kind": kind, "load_seconds": time.perf_counter() - t0,
                                 "atlas_side": plain.atlas_side, "pictures": []}
        other = "left" if plain.atlas_side == "right" else "right"
        for tag, src in (("plain", plain), ("deformed", factory(path, seed=seed, side=plain.atlas_side)),
                         ("deformed_mirrored", factory(path, seed=seed, side=other))):
            entry["pictures"].append(render_mid_slices(src, out / f"{kind}_{tag}.png",
                                                       title=f"{kind} {tag} ({src.side})"))
        done.append(entry)
    return done
