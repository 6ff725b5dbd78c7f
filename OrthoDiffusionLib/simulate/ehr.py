"""Simulated electronic health record fields per patient, correlated with the diagnosis labels.

Fields (the manifest's EHR columns): ``age`` (years, int), ``sex`` (``"F"``/``"M"``), ``height`` (cm), ``weight``
(kg), ``patient_type`` (``"athlete"``/``"non-athlete"``), ``injury_event`` (one of :data:`INJURY_EVENTS`). Missing
values are ``None`` (an empty manifest cell), each field independently with probability ``missing_rate``.

Correlations (documented, deliberately simple): ACL/PCL/meniscus/collateral injuries make athletes and sports or
traffic events more likely; patellar dislocation makes younger, female patients and sports events more likely;
meniscus tears without ligament injury shift age upwards and favour ``spontaneous``; normal knees favour
``spontaneous``/``daily_life_accident``. Marginals follow the paper's Supplementary Table 3 (mean age ~33, female ~35 %,
weight ~85 kg).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..model.ehr import INJURY_EVENTS as _ENCODER_EVENTS

#: The 8 injury-event classes: the paper's classes, shared with the EHR encoder (one list, defined there).
#: Order: overuse, traffic_accident, duty_accident, daily_life_accident, sports_accident, spontaneous,
#: performance_accident, other.
INJURY_EVENTS: Tuple[str, ...] = _ENCODER_EVENTS
EHR_FIELDS: Tuple[str, ...] = ("age", "sex", "height", "weight", "patient_type", "injury_event")


def sample_ehr(labels: Mapping[str, bool], rng: np.random.Generator, missing_rate: float = 0.05) -> Dict[str, object]:
    """EHR dict for one patient with diagnosis ``labels`` ({key: bool})."""
    lig = any(labels.get(k, False) for k in ("acl_injury", "pcl_injury", "mcl_injury", "lcl_injury"))
    menisc = labels.get("medial_meniscus_tear", False) or labels.get("lateral_meniscus_tear", False)
    pd = labels.get("patellar_dislocation", False)
    p_female = 0.55 if pd else 0.33
    sex = "F" if rng.random() < p_female else "M"
    if pd:
        age = rng.normal(21, 6)
    elif lig:
        age = rng.normal(29, 9)
    elif menisc:
        age = rng.normal(42, 13)
    else:
        age = rng.normal(35, 14)
    age = int(np.clip(round(age), 6, 87))
    if sex == "M":
        height = rng.normal(174, 7)
    else:
        height = rng.normal(162, 6)
    if age < 16:
        height -= (16 - age) * 5.5
    height = float(np.clip(height, 110, 205))
    bmi = np.clip(rng.normal(27.5 if age > 40 else 25.5, 3.8), 15, 45)
    weight = float(np.clip(bmi * (height / 100) ** 2, 15, 165))
    p_ath = 0.55 if (lig or pd) else (0.3 if menisc else 0.18)
    patient_type = "athlete" if rng.random() < p_ath else "non-athlete"
    # weights in INJURY_EVENTS order (overuse, traffic, duty, daily life, sports, spontaneous, performance, other)
    w = np.array([0.14, 0.06, 0.05, 0.20, 0.16, 0.30, 0.03, 0.06])  # normal knee
    if lig:
        w = np.array([0.03, 0.12, 0.06, 0.12, 0.55, 0.04, 0.05, 0.03])
    elif pd:
        w = np.array([0.03, 0.04, 0.04, 0.14, 0.55, 0.05, 0.12, 0.03])
    elif menisc:
        w = np.array([0.14, 0.04, 0.05, 0.16, 0.24, 0.30, 0.03, 0.04])
    if patient_type == "athlete":
        w = w * np.array([1.5, 0.6, 0.6, 0.8, 1.8, 0.6, 1.5, 0.8])
    event = INJURY_EVENTS[int(rng.choice(len(INJURY_EVENTS), p=w / w.sum()))]
    rec: Dict[str, Optional[object]] = {"age": age, "sex": sex, "height": round(height, 1),
                                        "weight": round(weight, 1), "patient_type": patient_type,
                                        "injury_event": event}
    for k in EHR_FIELDS:
        if rng.random() < missing_rate:
            rec[k] = None
    return rec
