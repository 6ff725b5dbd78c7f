"""Shared pytest fixtures.

Real data lives in ``../shared/data`` beside the project root (never copied into the project). Tests that need it take
the ``shared_data`` fixture, which skips with a clear reason outside CI when the folder is absent and fails in CI
(``CI=true``), where it must be present.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("ORTHODIFFUSION_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "dess_sagittal_dicom").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("../shared/data is missing in CI (set ORTHODIFFUSION_SHARED_DATA or place shared/ beside the repo)")
        pytest.skip("../shared/data not available")
    return d


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    """Keep torch from oversubscribing the small CI machine."""
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:  # pragma: no cover
        pass
    yield
