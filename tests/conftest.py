"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import shared_data as _shared_data
from tests.helpers import vectors_dir as _vectors_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$VEIL_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return _shared_data()


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The protocol vector folder; a missing folder is an error, never a skip."""
    path = _vectors_dir()
    assert path.is_dir(), f"vector folder {path} is missing (set VEIL_SHARED_DATA)"
    return path
