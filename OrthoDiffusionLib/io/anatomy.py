"""Is a series of the anatomy a model was trained on? A metadata check (DICOM tags, descriptions, file names).

A knee model run on a brain or shoulder MR series gives confident nonsense, so the exam loaders
(:func:`~OrthoDiffusionLib.io.load_study`, :meth:`~OrthoDiffusionLib.io.Exam.from_series`) refuse a series whose
metadata clearly names another anatomy than the model's (its bundle's ``anatomy``: knee, ankle or shoulder).

Evidence, from a series' de-identified ``meta`` (:data:`~OrthoDiffusionLib.io.series.META_KEYS`):
BodyPartExamined (0018,0015), the CodeMeaning of AnatomicRegionSequence (0008,2218), StudyDescription,
SeriesDescription and ProtocolName (for NIfTI/NRRD/MetaImage files the series description is the file name, and a
NRRD/MetaImage header may carry BodyPartExamined, StudyDescription and ProtocolName fields, :data:`HEADER_TAGS`).
Each text is split into words (letters and digits apart, accents dropped) and the words are looked up in
:data:`REGION_KEYWORDS`; BodyPartExamined, whose defined terms are often run together (``CSPINE``,
``LOWEREXTREMITY``), is also matched inside words.

Decision (:func:`anatomy_mismatch`), deliberately lenient because real knee data often carries no anatomy at all:

* any text naming a region the model accepts (:data:`ACCEPTED_REGIONS`: for a knee model the knee, the leg / lower
  limb, or an extremity) -> accepted, even if another text names something else (contradictory metadata is not a
  clear statement);
* else any text naming another known region (head/brain, spine, chest, shoulder, ankle, ...) -> refused;
* else (missing, empty or unrecognised metadata) -> accepted.

This cannot catch an unlabelled volume of another anatomy (a NIfTI file named ``scan.nii.gz``): the check reads
metadata only, never the image.

:func:`header_fields` / :func:`meta_from_header_fields` carry the anatomy tags through a NRRD/MetaImage header.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["REGION_KEYWORDS", "ACCEPTED_REGIONS", "ANATOMY_FIELDS", "AnatomyFinding", "anatomy_findings",
           "anatomy_mismatch", "accepted_regions", "check_anatomy", "HEADER_TAGS", "header_fields",
           "meta_from_header_fields"]

#: Body regions and the words (upper case, accents dropped; several words = a phrase) that name them. English first,
#: then common German/French/Spanish/Italian/Portuguese terms and DICOM BodyPartExamined defined terms.
REGION_KEYWORDS: Dict[str, Tuple[str, ...]] = {
    "knee": ("KNEE", "KNEES", "KNIE", "GENOU", "RODILLA", "GINOCCHIO", "JOELHO", "PATELLA", "PATELLOFEMORAL",
             "MENISCUS", "MENISCI", "CRUCIATE", "FIBULAR HEAD"),
    "leg": ("LEG", "LEGS", "LOWER LIMB", "LOWERLIMB", "LOWER EXTREMITY", "LOWEREXTREMITY", "LOWER EXTREMITIES",
            "BEIN", "JAMBE", "PIERNA", "GAMBA", "PERNA"),
    "extremity": ("EXTREMITY", "EXTREMITIES", "EXTREMITAET", "EXTREMITAT", "EXTREMITE", "EXTREMIDAD", "LIMB", "LIMBS"),
    "ankle": ("ANKLE", "ANKLES", "SPRUNGGELENK", "OSG", "CHEVILLE", "TOBILLO", "CAVIGLIA", "TORNOZELO", "TALUS",
              "ACHILLES", "SUBTALAR", "SINUS TARSI"),
    "foot": ("FOOT", "FEET", "FOREFOOT", "MIDFOOT", "HINDFOOT", "TOE", "TOES", "FUSS", "PIED", "PIEDE", "CALCANEUS",
             "METATARSAL"),
    "hip": ("HIP", "HIPS", "HUEFTE", "HUFTE", "HANCHE", "CADERA", "ANCA", "QUADRIL", "ACETABULUM", "FEMORAL HEAD",
            "FEMORAL NECK"),
    "shoulder": ("SHOULDER", "SHOULDERS", "SCHULTER", "EPAULE", "HOMBRO", "SPALLA", "OMBRO", "ROTATOR CUFF",
                 "GLENOHUMERAL", "ACROMIOCLAVICULAR", "HUMERAL HEAD"),
    "arm": ("ARM", "ARMS", "UPPER LIMB", "UPPERLIMB", "UPPER EXTREMITY", "UPPEREXTREMITY", "UPPER EXTREMITIES",
            "HUMERUS", "FOREARM", "BRAS", "BRAZO", "BRACCIO", "BRACO"),
    "elbow": ("ELBOW", "ELBOWS", "ELLENBOGEN", "ELLBOGEN", "COUDE", "CODO", "GOMITO", "COTOVELO"),
    "wrist": ("WRIST", "WRISTS", "HANDGELENK", "POIGNET", "MUNECA", "POLSO", "PUNHO", "CARPUS", "CARPAL", "SCAPHOID"),
    "hand": ("HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "MANO"),
    "head/brain": ("HEAD", "BRAIN", "SKULL", "CRANIUM", "CRANIAL", "CEREBRAL", "NEURO", "ORBIT", "ORBITS", "SELLA",
                   "PITUITARY", "IAC", "TMJ", "SINUS", "SINUSES", "KOPF", "SCHAEDEL", "SCHADEL", "GEHIRN", "CERVEAU",
                   "CRANE", "TETE", "CABEZA", "CEREBRO", "CRANEO", "CERVELLO", "CRANIO", "CABECA"),
    "neck": ("NECK", "HEADNECK", "THYROID", "LARYNX", "PAROTID", "HALS", "CUELLO", "COLLO", "PESCOCO"),
    "spine": ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SPINAL", "LUMBAR", "CERVICAL", "SACRUM", "COCCYX",
              "VERTEBRAL", "WIRBELSAEULE", "WIRBELSAULE", "HWS", "BWS", "LWS", "RACHIS", "COLUMNA", "COLONNA"),
    "chest": ("CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "MEDIASTINUM", "TORACE", "TORAX"),
    "heart": ("HEART", "CARDIAC", "CARDIO", "MYOCARDIAL", "CORONARY", "HERZ", "COEUR", "CORAZON", "CUORE",
              "CORACAO"),
    "breast": ("BREAST", "BREASTS", "MAMMA", "MAMMAE", "MAMMO", "SENO"),
    "abdomen": ("ABDOMEN", "ABDOMINAL", "ABD", "LIVER", "KIDNEY", "KIDNEYS", "RENAL", "PANCREAS", "MRCP",
                "ENTEROGRAPHY", "BAUCH", "LEBER", "ADDOME"),
    "pelvis": ("PELVIS", "PELVIC", "PROSTATE", "UTERUS", "OVARY", "OVARIES", "RECTUM", "BECKEN", "BASSIN", "BACINO"),
}

#: For each model anatomy: the regions whose naming counts as evidence FOR it. A model anatomy that is a region
#: but not listed here accepts only itself; an anatomy that is no region at all cannot be checked (all accepted).
ACCEPTED_REGIONS: Dict[str, Tuple[str, ...]] = {
    "knee": ("knee", "leg", "extremity"),
    "ankle": ("ankle", "leg", "extremity"),
    "shoulder": ("shoulder", "arm", "extremity"),
}

#: Metadata keys searched, in the order evidence is reported, with the name used in messages.
ANATOMY_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("body_part_examined", "BodyPartExamined"),
    ("anatomic_region", "AnatomicRegionSequence"),
    ("study_description", "StudyDescription"),
    ("series_description", "SeriesDescription"),
    ("protocol_name", "ProtocolName"),
)

#: The anatomy tags a NRRD/MetaImage header may carry as ``key:=value`` fields named by their DICOM keyword (the
#: 3D Slicer module writes them for volumes loaded from DICOM), with the tag numbers to look them up.
HEADER_TAGS: Dict[str, Tuple[str, str]] = {
    "body_part_examined": ("BodyPartExamined", "0018,0015"),
    "study_description": ("StudyDescription", "0008,1030"),
    "protocol_name": ("ProtocolName", "0018,1030"),
}

#: Fields whose values are DICOM defined terms that may be run together (``RKNEE``): there, keywords of 4+ letters
#: also match inside words that are not keywords themselves.
_RUN_TOGETHER_FIELDS = ("body_part_examined",)


@dataclass(frozen=True)
class AnatomyFinding:
    """One piece of evidence: ``field`` (tag name, or "file name") holds ``text``, in which ``keyword`` names
    ``region``."""

    field: str
    text: str
    keyword: str
    region: str

    def describe(self) -> str:
        """E.g. ``BodyPartExamined 'BRAIN' names the head/brain``."""
        return f"{self.field} {self.text!r} names the {self.region}"


def _words(text: str) -> List[str]:
    """Upper-case words of ``text`` with accents dropped; letters and digits are separate words (``T1BRAIN`` ->
    ``T``, ``1``, ``BRAIN``)."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").upper()
    return re.findall(r"[A-Z]+|[0-9]+", plain)


def _keyword_table() -> List[Tuple[Tuple[str, ...], str, str]]:
    """(keyword words, keyword, region), longest phrases first."""
    rows = [(tuple(k.split()), k, region) for region, keys in REGION_KEYWORDS.items() for k in keys]
    return sorted(rows, key=lambda r: -len(r[0]))


_TABLE = _keyword_table()
_SINGLE_WORDS = frozenset(k for words, k, _ in _TABLE if len(words) == 1)


def _find_in(text: str, run_together: bool) -> List[Tuple[str, str]]:
    """(keyword, region) pairs named in ``text`` (each region once, in order of first appearance in the table)."""
    words = _words(text)
    unknown = [w for w in words if w not in _SINGLE_WORDS]  # run-together candidates
    found: Dict[str, str] = {}
    for phrase, keyword, region in _TABLE:
        n = len(phrase)
        hit = any(tuple(words[i:i + n]) == phrase for i in range(len(words) - n + 1))
        if not hit and run_together and n == 1 and len(keyword) >= 4:
            hit = any(keyword in w for w in unknown)
        if hit and region not in found:
            found[region] = keyword
    return [(k, r) for r, k in found.items()]


def anatomy_findings(meta: Mapping[str, Any]) -> List[AnatomyFinding]:
    """Every region named by the anatomy fields of a series' ``meta`` (see the module docstring)."""
    out: List[AnatomyFinding] = []
    for key, name in ANATOMY_FIELDS:
        value = meta.get(key)
        if value is None or str(value).strip() == "":
            continue
        text = str(value).strip()
        if key == "series_description" and meta.get("format") not in (None, "DICOM"):
            name = "file name"
        out += [AnatomyFinding(name, text, kw, region) for kw, region in _find_in(text, key in _RUN_TOGETHER_FIELDS)]
    return out


def accepted_regions(anatomy: str) -> Optional[Tuple[str, ...]]:
    """Regions that count as evidence for a model of ``anatomy``; None when ``anatomy`` is no known region (then
    nothing can be refused)."""
    key = str(anatomy).strip().lower()
    if key in ACCEPTED_REGIONS:
        return ACCEPTED_REGIONS[key]
    return (key,) if key in REGION_KEYWORDS else None


def anatomy_mismatch(meta: Mapping[str, Any], anatomy: str) -> Optional[AnatomyFinding]:
    """The evidence that a series is NOT of ``anatomy``, or None when it is accepted (rule in the module docstring).

    Args:
        meta: a series' metadata (:class:`~OrthoDiffusionLib.io.Series` ``meta``).
        anatomy: the model's anatomy (``knee``, ``ankle``, ``shoulder``, or another region name).
    """
    accepted = accepted_regions(anatomy)
    if accepted is None:
        return None
    findings = anatomy_findings(meta)
    if any(f.region in accepted for f in findings):
        return None
    return findings[0] if findings else None


def check_anatomy(meta: Mapping[str, Any], anatomy: Optional[str], where: str, label: str,
                  allow_mismatch: bool = False) -> Optional[str]:
    """Refuse a series whose metadata names another anatomy than ``anatomy`` (the model's).

    Args:
        meta: the series' metadata. anatomy: the model's anatomy; None = no check.
        where: the series' file or folder (named first in the error). label: the series in words.
        allow_mismatch: the user's override: a mismatch is returned as a note instead of raised.

    Returns:
        None when the series is accepted; the override note when it is not but ``allow_mismatch``.

    Raises:
        AnatomyMismatchError: the series is refused (one line naming ``where``, the tag and the anatomy it names).
    """
    from ..errors import AnatomyMismatchError

    finding = None if anatomy is None else anatomy_mismatch(meta, anatomy)
    if finding is None:
        return None
    if allow_mismatch:
        return f"anatomy check overridden: {label}: {finding.describe()}, the model is for the {anatomy}"
    raise AnatomyMismatchError(f"{label}: {finding.describe()}, not the {anatomy} the model expects (to run it "
                               "anyway: --allow-anatomy-mismatch)", where)


def header_fields(values: Mapping[str, Any]) -> Dict[str, str]:
    """``{DICOM keyword: text}`` of the non-empty :data:`HEADER_TAGS` in ``values`` (keyed by meta key or keyword),
    to be written into a volume header."""
    out = {}
    for key, (keyword, _) in HEADER_TAGS.items():
        value = values.get(key, values.get(keyword))
        if value is not None and str(value).strip():
            out[keyword] = " ".join(str(value).split())
    return out


def meta_from_header_fields(header: Mapping[str, str]) -> Dict[str, str]:
    """Series ``meta`` entries from a volume header's :data:`HEADER_TAGS` fields (absent ones left out)."""
    return {key: str(header[keyword]).strip() for key, (keyword, _) in HEADER_TAGS.items()
            if str(header.get(keyword, "")).strip()}
