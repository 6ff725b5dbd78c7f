"""Label tables of the real knee label maps used by :mod:`OrthoDiffusionLib.simulate.atlas`.

* SPL Knee Atlas (Brigham and Women's Surgical Planning Laboratory, Apache-2.0): 49 labels named in
  ``SPLKneeAtlasColors.ctbl``. The 13 OrthoDiffusion structures have fixed numbers (:data:`SPL_STRUCTURES`); every
  other label is mapped by its name (:func:`tissue_for_spl_name`).
* OAI DESS label map (``gattia/pymskt``, MIT): 10 labels, bones, cartilage and menisci only (:data:`OAI_LABELS`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..errors import CorruptFileError, MissingPathError
from .tissues import Tissue

#: SPL atlas label number -> Tissue, for the structures whose number is fixed by the atlas.
SPL_STRUCTURES: Dict[int, Tissue] = {
    95: Tissue.FEMUR,
    96: Tissue.TIBIA,
    97: Tissue.FIBULA,
    98: Tissue.PATELLA,
    83: Tissue.FEMORAL_CARTILAGE,
    85: Tissue.MEDIAL_TIBIAL_CARTILAGE,
    84: Tissue.LATERAL_TIBIAL_CARTILAGE,
    86: Tissue.PATELLAR_CARTILAGE,
    82: Tissue.MEDIAL_MENISCUS,
    81: Tissue.LATERAL_MENISCUS,
    31: Tissue.ACL,
    32: Tissue.PCL,
    33: Tissue.LCL,  # fibular collateral ligament
    34: Tissue.MCL,  # tibial collateral ligament
}

#: Name fragments of the other SPL labels -> Tissue, tried in this order (first match wins).
SPL_NAME_RULES = (
    ("fat", Tissue.FAT),
    ("muscle", Tissue.MUSCLE),
    ("ligament", Tissue.TENDON),  # patellar ligament = patellar tendon
    ("tendon", Tissue.TENDON),
    ("tract", Tissue.TENDON),  # iliotibial tract: dense fibrous band, dark like tendon
    ("artery", Tissue.VESSEL),
    ("vein", Tissue.VESSEL),
    ("nerve", Tissue.SOFT_TISSUE),
    ("meniscus", Tissue.SOFT_TISSUE),  # never reached for 81/82 (fixed numbers); kept so no name is unmapped
    ("cartilage", Tissue.SOFT_TISSUE),
)

#: OAI DESS label value -> Tissue.
OAI_LABELS: Dict[int, Tissue] = {
    1: Tissue.FEMORAL_CARTILAGE,
    2: Tissue.MEDIAL_TIBIAL_CARTILAGE,
    3: Tissue.LATERAL_TIBIAL_CARTILAGE,
    4: Tissue.PATELLAR_CARTILAGE,
    5: Tissue.FEMUR,
    6: Tissue.TIBIA,
    7: Tissue.PATELLA,
    8: Tissue.FIBULA,
    9: Tissue.LATERAL_MENISCUS,
    10: Tissue.MEDIAL_MENISCUS,
}


def read_color_table(path: Path) -> Dict[int, str]:
    """``{label value: name}`` from a Slicer colour table (``.ctbl``: ``value name r g b a`` per line, ``#`` comments).

    Raises:
        MissingPathError: the file does not exist.
        CorruptFileError: a line cannot be parsed or the table is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError("colour table not found", path)
    names: Dict[int, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"cannot read colour table ({e})", path) from e
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[0].lstrip("-").isdigit():
            raise CorruptFileError(f"line {n} is not 'value name r g b a'", path)
        names[int(parts[0])] = parts[1]
    if not names:
        raise CorruptFileError("colour table names no labels", path)
    return names


def tissue_for_spl_name(name: str) -> Tissue:
    """Closest :class:`Tissue` for an SPL atlas label name (e.g. ``"popliteal_artery"`` -> VESSEL)."""
    low = name.lower()
    for fragment, tissue in SPL_NAME_RULES:
        if fragment in low:
            return tissue
    return Tissue.SOFT_TISSUE


def spl_lookup_table(names: Dict[int, str], max_value: int = 65535) -> np.ndarray:
    """Lookup table ``lut[atlas value] -> Tissue id`` (uint8, length ``max_value + 1``) for the SPL atlas.

    Fixed structure numbers win; other named labels map by name; labels absent from the table (the atlas has a few
    unnamed voxels) map to SOFT_TISSUE; 0 stays AIR (it is refined later into fat/skin/air by the body model).
    """
    lut = np.full(max_value + 1, int(Tissue.SOFT_TISSUE), dtype=np.uint8)
    lut[0] = int(Tissue.AIR)
    for value, name in names.items():
        if 0 < value <= max_value:
            lut[value] = int(tissue_for_spl_name(name))
    for value, tissue in SPL_STRUCTURES.items():
        lut[value] = int(tissue)
    return lut


def oai_lookup_table(max_value: int = 255) -> np.ndarray:
    """Lookup table ``lut[oai value] -> Tissue id`` (uint8); unknown values map to AIR (filled by synthesis)."""
    lut = np.zeros(max_value + 1, dtype=np.uint8)
    for value, tissue in OAI_LABELS.items():
        lut[value] = int(tissue)
    return lut
