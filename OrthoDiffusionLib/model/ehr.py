"""Structured EHR encoding and MRI-EHR late fusion (paper Appendix C.3).

Record format (one ``dict`` per patient; every key optional, missing/``None``/NaN/empty/"unknown" -> missing):

=================  ==========================================================================================
``age``            years (number or numeric string)
``height``         cm
``weight``         kg
``sex``            ``male``/``m``/``man`` or ``female``/``f``/``woman`` (case-insensitive); else UNK
``patient_type``   ``athlete`` or ``non-athlete`` (synonyms below; booleans: True = athlete); else UNK
``injury_event``   one of :data:`INJURY_EVENTS` or a synonym in :data:`INJURY_EVENT_SYNONYMS`; else UNK
=================  ==========================================================================================

Encoding (17-d): ``[z(age), z(height), z(weight)]`` (z-scored with the stored training means/stds; missing -> 0
after scaling) ``|| one-hot(sex: male, female, UNK) || one-hot(patient type: athlete, non-athlete, UNK) ||``
``embedding(injury event: 8 classes + UNK, learned, 8-d)``. The first 9 entries are fixed
(:meth:`EHREncoder.encode` returns them with the event index); the embedding is applied in ``forward``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "NUMERIC_FIELDS",
    "SEX_CATEGORIES",
    "PATIENT_TYPE_CATEGORIES",
    "INJURY_EVENTS",
    "INJURY_EVENT_SYNONYMS",
    "UNK",
    "EHR_FEATURES",
    "EHRBatch",
    "EHREncoder",
    "EHRHead",
    "EHRLateFusion",
    "EHRFusionClassifier",
    "normalise_sex",
    "normalise_patient_type",
    "normalise_injury_event",
]

UNK = "UNK"
NUMERIC_FIELDS: Tuple[str, str, str] = ("age", "height", "weight")
SEX_CATEGORIES: Tuple[str, str, str] = ("male", "female", UNK)
PATIENT_TYPE_CATEGORIES: Tuple[str, str, str] = ("athlete", "non-athlete", UNK)

#: The eight mutually exclusive injury-inducing event classes of the paper (Appendix C.3), in index order; index 8
#: is UNK. ``overuse``: overuse injury; ``traffic_accident``; ``duty_accident``: military or police duty accident;
#: ``daily_life_accident``: daily-life or production (work) accident; ``sports_accident``: sports-related accident;
#: ``spontaneous``: no identifiable trigger; ``performance_accident``: actor or rehearsal accident; ``other``.
INJURY_EVENTS: Tuple[str, ...] = (
    "overuse",
    "traffic_accident",
    "duty_accident",
    "daily_life_accident",
    "sports_accident",
    "spontaneous",
    "performance_accident",
    "other",
)

#: Accepted alternative spellings (compared after lower-casing and mapping spaces/hyphens/slashes to ``_``).
INJURY_EVENT_SYNONYMS: Dict[str, str] = {
    # overuse
    "overuse_injury": "overuse", "chronic_overuse": "overuse", "repetitive_strain": "overuse", "overload": "overuse",
    # traffic
    "traffic": "traffic_accident", "road_traffic_accident": "traffic_accident", "car_accident": "traffic_accident",
    "motor_vehicle_accident": "traffic_accident", "mva": "traffic_accident", "rta": "traffic_accident",
    # military / police duty
    "military_accident": "duty_accident", "police_accident": "duty_accident", "military": "duty_accident",
    "military_or_police_duty_accident": "duty_accident", "military_police_duty": "duty_accident",
    "duty": "duty_accident", "military_training": "duty_accident",
    # daily life / production
    "daily_life": "daily_life_accident", "daily_life_or_production_accident": "daily_life_accident",
    "production_accident": "daily_life_accident", "work_accident": "daily_life_accident",
    "occupational_accident": "daily_life_accident", "fall": "daily_life_accident",
    "daily_life_production": "daily_life_accident", "domestic_accident": "daily_life_accident",
    # sports
    "sports": "sports_accident", "sport": "sports_accident", "sports_related": "sports_accident",
    "sports_related_accident": "sports_accident", "sports_injury": "sports_accident",
    "sports_twisting": "sports_accident", "sports_contact": "sports_accident", "jump_landing": "sports_accident",
    # spontaneous
    "no_trigger": "spontaneous", "no_identifiable_trigger": "spontaneous",
    "atraumatic": "spontaneous", "insidious": "spontaneous",
    # performance
    "actor_accident": "performance_accident", "rehearsal_accident": "performance_accident",
    "actor_or_rehearsal_accident": "performance_accident", "actor_rehearsal": "performance_accident",
    "performance": "performance_accident", "stage_accident": "performance_accident",
    # other
    "others": "other", "direct_blow": "other",
}

EHR_FEATURES = 3 + 3 + 3 + 8
_MISSING_STRINGS = {"", "na", "n/a", "nan", "none", "null", "unknown", "unk", "?", "-"}
_SEX_SYNONYMS = {"male": "male", "m": "male", "man": "male", "boy": "male",
                 "female": "female", "f": "female", "woman": "female", "girl": "female"}
_PTYPE_SYNONYMS = {"athlete": "athlete", "athletic": "athlete", "sportsman": "athlete",
                   "professional_athlete": "athlete",
                   "non_athlete": "non-athlete", "nonathlete": "non-athlete", "not_athlete": "non-athlete",
                   "general": "non-athlete", "civilian": "non-athlete", "non_sport": "non-athlete"}


def _key(value: Any) -> str:
    text = str(value).strip().lower()
    for ch in (" ", "-", "/"):
        text = text.replace(ch, "_")
    while "__" in text:
        text = text.replace("__", "_")
    return text


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_STRINGS


def normalise_sex(value: Any) -> str:
    """``male``, ``female`` or ``UNK``."""
    return UNK if _is_missing(value) else _SEX_SYNONYMS.get(_key(value), UNK)


def normalise_patient_type(value: Any) -> str:
    """``athlete``, ``non-athlete`` or ``UNK`` (a bool means "is an athlete")."""
    if isinstance(value, bool):
        return "athlete" if value else "non-athlete"
    return UNK if _is_missing(value) else _PTYPE_SYNONYMS.get(_key(value), UNK)


def normalise_injury_event(value: Any) -> str:
    """One of :data:`INJURY_EVENTS` or ``UNK`` (case-insensitive, synonyms accepted)."""
    if _is_missing(value):
        return UNK
    k = _key(value)
    if k in INJURY_EVENTS:
        return k
    return INJURY_EVENT_SYNONYMS.get(k, UNK)


def _number(record: Mapping[str, Any], field: str, index: int) -> float:
    value = record.get(field)
    if _is_missing(value) or isinstance(value, bool):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"EHR record {index}: {field}={value!r} is not a number") from None
    return out if math.isfinite(out) else math.nan


@dataclass
class EHRBatch:
    """Encoded records: ``fixed`` ``(B, 9)`` float (3 z-scores, sex one-hot, patient-type one-hot) and ``event``
    ``(B,)`` long (0..7 = :data:`INJURY_EVENTS`, 8 = UNK)."""

    fixed: torch.Tensor
    event: torch.Tensor

    def to(self, device: torch.device | str) -> "EHRBatch":
        return EHRBatch(self.fixed.to(device), self.event.to(device))


class EHREncoder(nn.Module):
    """Records -> 17-d EHR representation.

    The z-score statistics are buffers (``means``, ``stds``, ``(3,)``; saved in the state dict) set by :meth:`fit`
    from the training table (missing values ignored; a std of 0 or undefined becomes 1). Before ``fit`` the means
    are 0 and stds 1. The injury-event embedding ``(9, 8)`` is learned.
    """

    def __init__(self, event_dim: int = 8):
        super().__init__()
        self.register_buffer("means", torch.zeros(3))
        self.register_buffer("stds", torch.ones(3))
        self.event_embedding = nn.Embedding(len(INJURY_EVENTS) + 1, event_dim)
        self.out_features = 9 + event_dim

    def fit(self, records: Sequence[Mapping[str, Any]]) -> "EHREncoder":
        """Set the z-score statistics from ``records`` (population std over the non-missing values)."""
        values = torch.tensor([[_number(r, f, i) for f in NUMERIC_FIELDS] for i, r in enumerate(records)],
                              dtype=torch.float64).reshape(-1, 3)
        means, stds = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        for j in range(3):
            col = values[:, j][~torch.isnan(values[:, j])]
            if col.numel() > 0:
                means[j] = col.mean()
                sd = col.std(unbiased=False) if col.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
                stds[j] = sd if sd > 0 else 1.0
        self.means.copy_(means.to(self.means.dtype))
        self.stds.copy_(stds.to(self.stds.dtype))
        return self

    def statistics(self) -> Dict[str, Dict[str, float]]:
        """``{field: {"mean": m, "std": s}}`` (JSON-friendly)."""
        return {f: {"mean": float(self.means[j]), "std": float(self.stds[j])} for j, f in enumerate(NUMERIC_FIELDS)}

    def load_statistics(self, stats: Mapping[str, Mapping[str, float]]) -> None:
        """Inverse of :meth:`statistics`."""
        for j, f in enumerate(NUMERIC_FIELDS):
            self.means[j] = float(stats[f]["mean"])
            self.stds[j] = float(stats[f]["std"])

    def encode(self, records: Sequence[Mapping[str, Any]]) -> EHRBatch:
        """Fixed part and event index of each record (see :class:`EHRBatch`). Raises ``ValueError`` naming the record
        index and field for a numeric field that is present but not a number."""
        fixed = torch.zeros(len(records), 9)
        events = torch.full((len(records),), len(INJURY_EVENTS), dtype=torch.long)
        means, stds = self.means.detach().cpu(), self.stds.detach().cpu()
        for i, r in enumerate(records):
            for j, f in enumerate(NUMERIC_FIELDS):
                v = _number(r, f, i)
                fixed[i, j] = 0.0 if math.isnan(v) else (v - float(means[j])) / float(stds[j])
            fixed[i, 3 + SEX_CATEGORIES.index(normalise_sex(r.get("sex")))] = 1.0
            fixed[i, 6 + PATIENT_TYPE_CATEGORIES.index(normalise_patient_type(r.get("patient_type")))] = 1.0
            ev = normalise_injury_event(r.get("injury_event"))
            if ev != UNK:
                events[i] = INJURY_EVENTS.index(ev)
        return EHRBatch(fixed.to(self.means.device), events.to(self.means.device))

    def forward(self, batch: EHRBatch) -> torch.Tensor:
        """``(B, 17)`` = ``[fixed (9) || event embedding (8)]``."""
        return torch.cat([batch.fixed.to(self.means.dtype), self.event_embedding(batch.event)], dim=1)


class EHRHead(nn.Module):
    """``Linear(17, 64) - ReLU - LayerNorm(64) - Dropout(0.2) - Linear(64, K)``: ``(B, 17) -> (B, K)``."""

    def __init__(self, num_labels: int, in_features: int = EHR_FEATURES, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.LayerNorm(hidden), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EHRLateFusion(nn.Module):
    """``z = gamma * z_MRI + (1 - gamma) * z_EHR`` with ``gamma = sigmoid(w)`` per label, ``w`` initialised to 0
    (gamma = 0.5). Logits ``(B, K)`` in, ``(B, K)`` out."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(num_labels))

    @property
    def gamma(self) -> torch.Tensor:
        """``(K,)`` MRI share per label."""
        return torch.sigmoid(self.w)

    def forward(self, z_mri: torch.Tensor, z_ehr: torch.Tensor) -> torch.Tensor:
        g = self.gamma
        return g * z_mri + (1 - g) * z_ehr


class EHRFusionClassifier(nn.Module):
    """The full MRI-EHR model: ``Linear(mri_features, K)`` on the fused MRI representation (1536-d after simple
    concat), :class:`EHREncoder` + :class:`EHRHead` on the records, :class:`EHRLateFusion`.

    ``forward(mri_features (B, M), ehr: EHRBatch) -> logits (B, K)``.
    """

    def __init__(self, num_labels: int, mri_features: int = 1536, encoder: EHREncoder | None = None):
        super().__init__()
        self.mri_head = nn.Linear(mri_features, num_labels)
        self.encoder = EHREncoder() if encoder is None else encoder
        self.ehr_head = EHRHead(num_labels, in_features=self.encoder.out_features)
        self.fusion = EHRLateFusion(num_labels)

    def forward(self, mri_features: torch.Tensor, ehr: EHRBatch) -> torch.Tensor:
        return self.fusion(self.mri_head(mri_features), self.ehr_head(self.encoder(ehr)))

    def ehr_only(self, ehr: EHRBatch) -> torch.Tensor:
        """EHR-branch logits ``(B, K)`` (the paper's EHR-only baseline uses the same architecture)."""
        return self.ehr_head(self.encoder(ehr))
