"""Fixtures for the attestation tests: the real evidence samples in the shared data folder (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def evidence_dir() -> Path:
    """``$VEIL_SHARED_DATA/evidence`` (default ``<repo>/../shared/data/evidence``); missing is an error, not a skip."""
    path = Path(os.environ.get("VEIL_SHARED_DATA", str(REPO.parent / "shared" / "data"))) / "evidence"
    assert path.is_dir(), f"evidence folder {path} is missing (set VEIL_SHARED_DATA)"
    return path
