"""Guess an MR series' contrast weighting and fat suppression from its metadata (DICOM tags and description).

These are heuristics for choosing a series per plane (the model was trained on PD-weighted, non-fat-suppressed
series); each guess comes with the reason it was made so the choice can be reported.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

# Words in SeriesDescription/ProtocolName that mean fat suppression (matched as whole tokens).
_FAT_SAT_PATTERNS = (
    r"FS", r"FAT[ _\-]?SAT", r"FATSUP", r"FAT[ _\-]?SUP\w*", r"F/S", r"SPAIR", r"SPIR", r"STIR", r"TIRM", r"FSAT",
    r"CHESS", r"WE", r"WATS", r"WATER[ _\-]?EXC\w*", r"DIXON[ _\-]?W", r"IDEAL[ _\-]?W",
)
_FAT_SAT_RE = re.compile(r"(?<![A-Z0-9])(" + "|".join(_FAT_SAT_PATTERNS) + r")(?![A-Z])")
_NO_FAT_SAT_RE = re.compile(r"(?<![A-Z0-9])(NON[ _\-]?FS|NO[ _\-]?FS|NOFS|NON[ _\-]?FAT[ _\-]?SAT)(?![A-Z])")
_PD_RE = re.compile(r"(?<![A-Z0-9])(PD|PDW|PDWI|PD[ _\-]?FS\w*|PROTON[ _\-]?DENSITY|INTERMEDIATE)(?![A-Z0-9])|(?<![A-Z0-9])PD(?=FS|_|W)")
_T1_RE = re.compile(r"(?<![A-Z0-9])T1(W|WI)?(?![0-9A-Z])|(?<![A-Z0-9])T1(?=_|FS)")
_T2_RE = re.compile(r"(?<![A-Z0-9])T2(W|WI)?(?![0-9A-Z*])|(?<![A-Z0-9])T2(?=_|FS)")


def _as_list(value: Union[None, str, Sequence[str]]) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\") if v.strip()]
    return [str(v).strip().upper() for v in value]


def _text(meta: Mapping[str, Any]) -> str:
    return " ".join(str(meta.get(k) or "") for k in ("series_description", "protocol_name", "sequence_name")).upper()


def fat_sat_guess(meta: Mapping[str, Any]) -> Tuple[bool, str]:
    """(fat suppressed?, reason) from description keywords, ScanOptions, and STIR-like inversion times."""
    text = _text(meta)
    if _NO_FAT_SAT_RE.search(text):
        return False, "description says no fat suppression"
    m = _FAT_SAT_RE.search(text)
    if m:
        return True, f"description contains '{m.group(1)}'"
    options = _as_list(meta.get("scan_options"))
    for opt in options:
        if opt in ("FS", "SFS", "FSS", "FSA", "FSAT", "FSP") or opt.startswith("FS_") or "FAT" in opt:
            return True, f"ScanOptions contains '{opt}'"
    if "IR" in _as_list(meta.get("scanning_sequence")):
        ti = meta.get("inversion_time")
        if ti is not None and 80.0 <= float(ti) <= 260.0:
            return True, f"inversion recovery with TI {float(ti):g} ms (STIR)"
    return False, "no fat-suppression keyword or tag"


def weighting_guess(meta: Mapping[str, Any]) -> Tuple[str, str]:
    """(weighting, reason): "PD", "T1", "T2" or "unknown", from description keywords, then TE/TR.

    TE/TR rule (spin echo / fast spin echo, or unknown sequence): TR >= 1500 ms and TE <= 60 ms -> PD;
    TR >= 1500 ms and TE >= 70 ms -> T2; TR <= 1000 ms and TE <= 30 ms -> T1. Gradient-echo sequences are not
    classified by TE/TR (their contrast depends on the flip angle).
    """
    text = _text(meta)
    m = _PD_RE.search(text)
    if m:
        return "PD", f"description contains '{m.group(0)}'"
    m = _T2_RE.search(text)
    if m:
        return "T2", f"description contains '{m.group(0)}'"
    m = _T1_RE.search(text)
    if m:
        return "T1", f"description contains '{m.group(0)}'"
    te, tr = meta.get("echo_time"), meta.get("repetition_time")
    sequences = _as_list(meta.get("scanning_sequence"))
    if "GR" in sequences and "SE" not in sequences:
        return "unknown", "gradient echo (not classified by TE/TR)"
    if te is None or tr is None:
        return "unknown", "no TE/TR and no weighting keyword"
    te, tr = float(te), float(tr)
    if tr < 100:
        return "unknown", f"TR {tr:g} ms is gradient-echo territory (not classified by TE/TR)"
    if tr >= 1500 and te <= 60:
        return "PD", f"TE {te:g} ms / TR {tr:g} ms (long TR, short TE)"
    if tr >= 1500 and te >= 70:
        return "T2", f"TE {te:g} ms / TR {tr:g} ms (long TR, long TE)"
    if tr <= 1000 and te <= 30:
        return "T1", f"TE {te:g} ms / TR {tr:g} ms (short TR, short TE)"
    return "unknown", f"TE {te:g} ms / TR {tr:g} ms fits no rule"


def annotate(meta: dict) -> dict:
    """Fill ``meta["weighting"]`` and ``meta["fat_sat"]`` with the guesses; returns ``meta``."""
    meta["weighting"] = weighting_guess(meta)[0]
    meta["fat_sat"] = fat_sat_guess(meta)[0]
    return meta


def preference(meta: Mapping[str, Any]) -> Tuple[int, str]:
    """Rank (lower is better) and reason of a series for the model: PD non-fat-sat first.

    0 PD without fat suppression, 1 PD with fat suppression, 2 unknown weighting without fat suppression,
    3 T1/T2 without fat suppression, 4 any other fat-suppressed series.
    """
    weighting, w_reason = weighting_guess(meta)
    fat, f_reason = fat_sat_guess(meta)
    if weighting == "PD":
        rank = 1 if fat else 0
    elif fat:
        rank = 4
    else:
        rank = 2 if weighting == "unknown" else 3
    label = f"{weighting if weighting != 'unknown' else 'weighting unknown'}{' fat-suppressed' if fat else ', no fat suppression'}"
    return rank, f"{label} ({w_reason}; {f_reason})"


def number(value: Any) -> Optional[float]:
    """A float from a DICOM value (DS/IS/multi-valued -> first), or None."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None
