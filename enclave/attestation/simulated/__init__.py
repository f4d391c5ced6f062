"""Simulated evidence for development: a format no real verifier parses, signed by a throwaway key.

Report layout (all fixed sizes; deliberately unlike SNP's 1184 or TDX's quote)::

    magic "VEIL-SIMULATED-V1" (17) || report_data (64) || measurement (48) || issued_at (8, big-endian ms)
    || ed25519 public key (32) || signature (64) over everything before it

A verifier accepts it only when told ``allow_simulated=True``; even then the result says ``simulated``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..bundle import Bundle, ConfigValue, report_data

PLATFORM: Final = "simulated"
MAGIC: Final = b"VEIL-SIMULATED-V1"
_BODY_LEN: Final = len(MAGIC) + 64 + 48 + 8 + 32
REPORT_LEN: Final = _BODY_LEN + 64
#: What simulated evidence "measures": a fixed label, so no one mistakes it for a real launch digest.
MEASUREMENT: Final = hashlib.sha384(b"veil simulated TEE: not a measurement").digest()


class SimulatedEvidenceError(Exception):
    """Simulated evidence refused or malformed."""


class SimulatedProvider:
    """Produces bundles from a per-process throwaway key."""

    platform = PLATFORM

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self._pub = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        """A bundle whose report binds ``key_config`` (and GPU evidence, and a nonce) exactly as a real one would."""
        now = time.time()
        rd = report_data(key_config, gpu_evidence, nonce, config)
        body = MAGIC + rd + MEASUREMENT + int(now * 1000).to_bytes(8, "big") + self._pub
        return Bundle(platform=PLATFORM, key_config=key_config, report=body + self._key.sign(body), nonce=nonce,
                      gpu_evidence=gpu_evidence, issued_at=now, config=dict(config or {}))


@dataclass(frozen=True)
class SimulatedVerdict:
    """What a check of simulated evidence established."""

    measurement: bytes
    issued_at: float
    simulated: bool = True


def verify_simulated(bundle: Bundle, *, allow_simulated: bool) -> SimulatedVerdict:
    """Check a simulated bundle's signature and key binding; refused unless ``allow_simulated``."""
    if not allow_simulated:
        raise SimulatedEvidenceError(
            "the gateway presents SIMULATED attestation (no TEE); refusing it. "
            "Start the client with --insecure-allow-simulated for development only."
        )
    if bundle.platform != PLATFORM:
        raise SimulatedEvidenceError(f"platform {bundle.platform!r} is not simulated")
    r = bundle.report
    if len(r) != REPORT_LEN or not r.startswith(MAGIC):
        raise SimulatedEvidenceError("simulated report has the wrong size or magic")
    body, sig = r[:_BODY_LEN], r[_BODY_LEN:]
    pub = body[-32:]
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, body)
    except InvalidSignature:
        raise SimulatedEvidenceError("simulated report signature is invalid") from None
    rd = body[len(MAGIC) : len(MAGIC) + 64]
    expected = report_data(bundle.key_config, bundle.gpu_evidence, bundle.nonce, bundle.config)
    if not hmac.compare_digest(rd, expected):
        raise SimulatedEvidenceError("report data does not bind this key configuration")
    measurement = body[len(MAGIC) + 64 : len(MAGIC) + 112]
    issued = int.from_bytes(body[len(MAGIC) + 112 : len(MAGIC) + 120], "big") / 1000
    return SimulatedVerdict(measurement=measurement, issued_at=issued)
