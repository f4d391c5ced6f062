"""Fixtures for the ohttp tests: a derandomized ML-KEM-768 so X-Wing encapsulation can reproduce fixed vectors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kyber_py.ml_kem import ML_KEM_768

from ohttp import _xwing


def _encaps_derand(ek: bytes, m: bytes) -> tuple[bytes, bytes]:
    # kyber-py (pure Python, not constant time: test vectors only) FIPS 203 ML-KEM.Encaps_internal -> (K, c).
    ss, ct = ML_KEM_768._encaps_internal(ek, m)
    return bytes(ss), bytes(ct)


@pytest.fixture
def xwing_derand(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let X-Wing encapsulate with a fixed 64-byte eseed for the duration of one test."""
    monkeypatch.setattr(_xwing, "derandomized_mlkem_encaps", _encaps_derand)
    yield
