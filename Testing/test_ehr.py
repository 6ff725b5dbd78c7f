"""EHR encoding (exact vectors, UNK handling, synonyms) and MRI-EHR late fusion."""
import math

import pytest
import torch

from OrthoDiffusionLib.model.ehr import (EHR_FEATURES, INJURY_EVENTS, EHREncoder, EHRFusionClassifier, EHRHead,
                                   EHRLateFusion, normalise_injury_event, normalise_patient_type, normalise_sex)

TRAIN = [
    {"age": 20, "height": 170, "weight": 60, "sex": "male", "patient_type": "athlete", "injury_event": "overuse"},
    {"age": 40, "height": 180, "weight": 80, "sex": "female", "patient_type": "non-athlete"},
    {"age": None, "height": "", "weight": float("nan"), "sex": None},
]


def test_fit_statistics_ignore_missing():
    enc = EHREncoder().fit(TRAIN)
    stats = enc.statistics()
    assert stats["age"] == {"mean": 30.0, "std": 10.0}
    assert stats["height"] == {"mean": 175.0, "std": 5.0}
    assert stats["weight"] == {"mean": 70.0, "std": 10.0}


def test_exact_vector_with_missing_values():
    enc = EHREncoder().fit(TRAIN)
    batch = enc.encode([
        {},  # everything missing
        {"age": 50, "height": "NA", "weight": 65.0, "sex": "F", "patient_type": "Non-Athlete",
         "injury_event": "Traffic Accident"},
        {"age": "35", "sex": "unknown", "patient_type": "weekend warrior", "injury_event": "alien abduction"},
    ])
    expected = torch.tensor([
        [0.0, 0.0, 0.0, 0, 0, 1, 0, 0, 1],
        [2.0, 0.0, -0.5, 0, 1, 0, 0, 1, 0],
        [0.5, 0.0, 0.0, 0, 0, 1, 0, 0, 1],
    ])
    torch.testing.assert_close(batch.fixed, expected)
    assert batch.event.tolist() == [8, INJURY_EVENTS.index("traffic_accident"), 8]
    full = enc(batch)
    assert full.shape == (3, 17) == (3, EHR_FEATURES)
    torch.testing.assert_close(full[:, :9], expected)
    torch.testing.assert_close(full[0, 9:], enc.event_embedding.weight[8])  # UNK token embedding


def test_unfitted_encoder_is_identity_scaling_and_bad_number_raises():
    enc = EHREncoder()
    assert enc.encode([{"age": 3.0}]).fixed[0, 0].item() == 3.0
    with pytest.raises(ValueError, match="record 1: height='tall'"):
        enc.encode([{}, {"height": "tall"}])


def test_single_value_or_constant_column_gets_unit_std():
    enc = EHREncoder().fit([{"age": 30}, {"age": 30}, {}])
    assert enc.statistics()["age"] == {"mean": 30.0, "std": 1.0}
    assert enc.statistics()["height"] == {"mean": 0.0, "std": 1.0}


def test_normalisers():
    assert len(INJURY_EVENTS) == 8 and len(set(INJURY_EVENTS)) == 8
    assert normalise_injury_event("SPORTS") == "sports_accident"
    assert normalise_injury_event("sports-twisting") == "sports_accident"
    assert normalise_injury_event("Military or police duty accident") == "duty_accident"
    assert normalise_injury_event("Fall") == "daily_life_accident"
    for name in INJURY_EVENTS:
        assert normalise_injury_event(name.upper()) == name
    assert normalise_injury_event(None) == "UNK" and normalise_injury_event(math.nan) == "UNK"
    assert normalise_sex(" Male ") == "male" and normalise_sex("W") == "UNK"
    assert normalise_patient_type(True) == "athlete" and normalise_patient_type("non athlete") == "non-athlete"


def test_statistics_roundtrip_in_state_dict():
    enc = EHREncoder().fit(TRAIN)
    other = EHREncoder()
    other.load_state_dict(enc.state_dict())
    assert other.statistics() == enc.statistics()
    third = EHREncoder()
    third.load_statistics(enc.statistics())
    torch.testing.assert_close(third.encode(TRAIN).fixed, enc.encode(TRAIN).fixed)


def test_head_and_late_fusion():
    head = EHRHead(8)
    layers = [type(m).__name__ for m in head.net]
    assert layers == ["Linear", "ReLU", "LayerNorm", "Dropout", "Linear"]
    assert head.net[0].in_features == 17 and head.net[0].out_features == 64 and head.net[3].p == 0.2
    fusion = EHRLateFusion(8)
    torch.testing.assert_close(fusion.gamma, torch.full((8,), 0.5))
    zm, ze = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(fusion(zm, ze), 0.5 * zm + 0.5 * ze)
    with torch.no_grad():
        fusion.w[0] = 20.0
    assert torch.allclose(fusion(zm, ze)[:, 0], zm[:, 0], atol=1e-6)


def test_full_classifier_gradients():
    model = EHRFusionClassifier(num_labels=4, mri_features=12)
    model.encoder.fit(TRAIN)
    batch = model.encoder.encode(TRAIN)
    logits = model(torch.randn(3, 12), batch)
    assert logits.shape == (3, 4) and model.ehr_only(batch).shape == (3, 4)
    logits.sum().backward()
    assert model.fusion.w.grad is not None
    assert model.encoder.event_embedding.weight.grad[INJURY_EVENTS.index("overuse")].abs().sum() > 0
