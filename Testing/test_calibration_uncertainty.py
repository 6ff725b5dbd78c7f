"""Temperature scaling, ECE, reliability data; noise-draw uncertainty."""
import numpy as np
import pytest
import torch

from OrthoDiffusionLib.model.calibration import (TemperatureScaler, binary_nll, expected_calibration_error,
                                           fit_temperatures, reliability_diagram)
from OrthoDiffusionLib.model.uncertainty import aggregate_noise_draws, predict_with_noise_draws


def miscalibrated(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, 3))
    labels = (rng.random((n, 3)) < 1 / (1 + np.exp(-true_logits))).astype(float)
    scale = np.array([4.0, 1.0, 0.3])  # over-confident, calibrated, under-confident
    return true_logits * scale, labels, scale


def test_temperature_scaling_recovers_scale_and_reduces_nll():
    logits, labels, scale = miscalibrated()
    temps = fit_temperatures(logits, labels)
    np.testing.assert_allclose(temps, scale, rtol=0.15)
    before, after = binary_nll(logits, labels), binary_nll(logits, labels, temps)
    assert after[0] < before[0] - 0.05 and after[2] < before[2] - 0.01
    assert after[1] <= before[1] + 1e-9
    scaler = TemperatureScaler(3).fit(logits, labels)
    probs = scaler.probabilities(torch.tensor(logits, dtype=torch.float32)).numpy()
    raw = 1 / (1 + np.exp(-logits))
    assert expected_calibration_error(probs, labels) < expected_calibration_error(raw, labels)
    again = TemperatureScaler.from_dict(scaler.to_dict())
    torch.testing.assert_close(again.temperature, scaler.temperature)
    with pytest.raises(ValueError):
        TemperatureScaler.from_dict({"temperature": [1.0, -2.0]})


def test_single_class_label_keeps_unit_temperature():
    logits = np.array([[1.0, 2.0], [-1.0, 3.0], [0.5, 1.0]])
    labels = np.array([[1, 1], [0, 1], [1, 1]], dtype=float)
    assert fit_temperatures(logits, labels)[1] == 1.0


def test_ece_and_reliability_hand_computed():
    probs = np.array([0.05, 0.15, 0.95, 0.85, 0.9])
    labels = np.array([0, 1, 1, 1, 0])
    d = reliability_diagram(probs, labels, n_bins=2)
    assert d["count"].tolist() == [2, 3]
    np.testing.assert_allclose(d["confidence"], [0.1, 0.9])
    np.testing.assert_allclose(d["frequency"], [0.5, 2 / 3])
    ece = expected_calibration_error(probs, labels, n_bins=2)
    assert ece == pytest.approx(2 / 5 * 0.4 + 3 / 5 * abs(2 / 3 - 0.9))
    assert np.isnan(reliability_diagram(probs, labels, n_bins=10)["confidence"][4])
    per = expected_calibration_error(np.c_[probs, probs], np.c_[labels, labels], n_bins=2, per_label=True)
    np.testing.assert_allclose(per, [ece, ece])


def test_aggregate_noise_draws():
    draws = np.array([[[0.2, 0.9]], [[0.4, 0.9]], [[0.6, 0.9]]])  # (S=3, B=1, K=2)
    s = aggregate_noise_draws(draws)
    np.testing.assert_allclose(s.mean, [[0.4, 0.9]])
    np.testing.assert_allclose(s.std, [[0.2, 0.0]])
    assert s.num_draws == 3
    np.testing.assert_allclose(aggregate_noise_draws(draws[:1]).std, [[0.0, 0.0]])
    with pytest.raises(ValueError):
        aggregate_noise_draws(np.zeros(3))


def test_predict_with_noise_draws_seeded():
    seen = []

    def predict(g):
        noise = torch.rand(2, 3, generator=g)
        return noise

    a = predict_with_noise_draws(predict, 4, seed=7, progress=lambda stage, f: seen.append((stage, f)))
    b = predict_with_noise_draws(predict, 4, seed=7)
    np.testing.assert_array_equal(a.draws, b.draws)
    assert a.draws.shape == (4, 2, 3) and seen[-1] == ("noise draws", 1.0)
    assert (a.std > 0).all()
