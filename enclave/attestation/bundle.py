"""The evidence bundle served at ``/.well-known/veil-attestation`` and the binding of keys into REPORT_DATA.

Imports nothing else from ``enclave``, so clients (``proxy``) use the same code to verify what gateways produce::

    REPORT_DATA = SHA-512("veil/report/v1\\0" || SHA-256(K) || SHA-256(gpu_evidence) || client_nonce_or_zero32)

where ``K`` is the exact ``application/ohttp-keys`` body the gateway serves. Bundle format version 1 (JSON)::

    {"version": 1, "platform": "simulated" | "sev-snp" | "tdx", "key_config": b64(K),
     "report": b64(platform evidence), "gpu_evidence": b64(...) | "", "nonce": hex | "",
     "certs": {...}, "issued_at": unix seconds}

Nothing in the JSON is trusted by a verifier except bytes it hashes or verifies itself.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

BUNDLE_VERSION: Final = 1
REPORT_LABEL: Final = b"veil/report/v1\x00"
GPU_NONCE_LABEL: Final = b"veil/gpu/v1"
MEDIA_TYPE_BUNDLE: Final = "application/vnd.veil.attestation+json"


class BundleError(Exception):
    """A bundle that cannot be parsed."""


def report_data(key_config: bytes, gpu_evidence: bytes = b"", nonce: bytes = b"") -> bytes:
    """The 64 bytes a TEE report must carry to bind ``key_config`` (and GPU evidence, and a client nonce)."""
    if len(nonce) not in (0, 32):
        raise ValueError("client nonce must be 32 bytes")
    return hashlib.sha512(
        REPORT_LABEL
        + hashlib.sha256(key_config).digest()
        + hashlib.sha256(gpu_evidence).digest()
        + (nonce or bytes(32))
    ).digest()


def azure_tpm_nonce(binding: bytes) -> bytes:
    """What an Azure vTPM quote (and the HCL user data) carries: SHA-256 of the 64-byte binding, because vTPMs take
    at most 48 bytes of nonce."""
    return hashlib.sha256(binding).digest()


def gpu_nonce(key_config: bytes, boot_nonce: bytes = b"") -> bytes:
    """The nonce GPU evidence is collected with, derived from the key configuration."""
    return hashlib.sha256(GPU_NONCE_LABEL + hashlib.sha256(key_config).digest() + boot_nonce).digest()


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle; bytes fields are the exact decoded bytes."""

    platform: str
    key_config: bytes
    report: bytes
    gpu_evidence: bytes = b""
    nonce: bytes = b""
    certs: dict[str, str] = field(default_factory=dict)
    issued_at: float = 0.0
    version: int = BUNDLE_VERSION

    def to_json(self) -> bytes:
        """Serialize (base64 for bytes)."""
        return orjson.dumps(
            {
                "version": self.version,
                "platform": self.platform,
                "key_config": base64.b64encode(self.key_config).decode(),
                "report": base64.b64encode(self.report).decode(),
                "gpu_evidence": base64.b64encode(self.gpu_evidence).decode(),
                "nonce": self.nonce.hex(),
                "certs": self.certs,
                "issued_at": self.issued_at,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Bundle:
        """Parse strictly; unknown versions are refused."""
        try:
            obj: Any = orjson.loads(data)
            if not isinstance(obj, dict) or obj.get("version") != BUNDLE_VERSION:
                raise BundleError(f"unsupported bundle version {obj.get('version') if isinstance(obj, dict) else None}")
            return cls(
                platform=str(obj["platform"]),
                key_config=base64.b64decode(obj["key_config"], validate=True),
                report=base64.b64decode(obj["report"], validate=True),
                gpu_evidence=base64.b64decode(obj.get("gpu_evidence", ""), validate=True),
                nonce=bytes.fromhex(obj.get("nonce", "")),
                certs={str(k): str(v) for k, v in (obj.get("certs") or {}).items()},
                issued_at=float(obj.get("issued_at", 0.0)),
            )
        except BundleError:
            raise
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise BundleError(f"malformed evidence bundle: {type(exc).__name__}: {exc}") from None
