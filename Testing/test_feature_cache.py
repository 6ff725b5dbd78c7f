"""Feature cache: keys, round trip, integrity checks, reproducible noise."""
import pytest
import torch

from OrthoDiffusionLib.errors import CorruptFileError
from OrthoDiffusionLib.training.diagnosis.feature_cache import FeatureCache, feature_cache_key, series_noise

SHA = "ab" * 32


def test_key_depends_on_every_field():
    base = (SHA, "sagittal", 50, "mid_0", 0, "p1/s1")
    keys = {feature_cache_key(*base)}
    for i, other in enumerate(["cd" * 32, "axial", 100, "mid_2", 1, "p1/s2"]):
        changed = list(base)
        changed[i] = other
        keys.add(feature_cache_key(*changed))
    assert len(keys) == 7 and all(len(k) == 64 for k in keys)


def test_round_trip_and_compute_once(tmp_path):
    cache = FeatureCache(tmp_path, SHA)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(24.0).reshape(1, 2, 1, 3, 4)

    a = cache.get_or_compute("p1/s1", "sagittal", 50, "mid_0", 0, compute)
    b = cache.get_or_compute("p1/s1", "sagittal", 50, "mid_0", 0, compute)
    assert len(calls) == 1
    torch.testing.assert_close(a, b)
    assert cache.get("p1/s1", "sagittal", 100, "mid_0", 0) is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_and_mismatched_entries_raise(tmp_path):
    cache = FeatureCache(tmp_path, SHA)
    path = cache.put("s", "axial", 10, "mid_1", 0, torch.ones(2, 2))
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match=path.name):
        cache.get("s", "axial", 10, "mid_1", 0)
    # a file holding another entry's metadata under this entry's name
    other = cache.put("t", "axial", 10, "mid_1", 0, torch.ones(2, 2))
    other.replace(path)
    with pytest.raises(CorruptFileError, match="metadata mismatch"):
        cache.get("s", "axial", 10, "mid_1", 0)


def test_series_noise_reproducible():
    a = series_noise((2, 3), 0, "p1")
    torch.testing.assert_close(a, series_noise((2, 3), 0, "p1"))
    assert not torch.allclose(a, series_noise((2, 3), 1, "p1"))
    assert not torch.allclose(a, series_noise((2, 3), 0, "p2"))
