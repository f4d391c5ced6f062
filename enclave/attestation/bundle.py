"""The evidence bundle served at ``/.well-known/veil-attestation`` and the binding of keys into REPORT_DATA.

Imports nothing else from ``enclave``, so clients (``proxy``) use the same code to verify what gateways produce::

    REPORT_DATA = SHA-512("veil/report/v2\\0" || SHA-256(K) || SHA-256(gpu_evidence) || SHA-256(C)
                          || client_nonce_or_zero32)

where ``K`` is the exact ``application/ohttp-keys`` body the gateway serves and ``C`` the canonical JSON of the
gateway's security-relevant configuration (:func:`canonical_config`: keys sorted, no whitespace, UTF-8, values only
strings, integers, booleans or null; RFC 8785 for these types, so a browser recomputes it with ``JSON.stringify``).
Bundle format version 2 (JSON)::

    {"version": 2, "platform": "simulated" | "sev-snp" | "tdx" | ..., "key_config": b64(K),
     "config": {"key_origin": "generated", ...},
     "report": b64(platform evidence), "gpu_evidence": b64(...) | "", "nonce": hex | "",
     "certs": {...}, "issued_at": unix seconds}

Version 1 bundles (no ``config``, label ``veil/report/v1``) are refused: they bind no configuration, so nothing
a client reads about the gateway's settings would be covered by the evidence.

Nothing in the JSON is trusted by a verifier except bytes it hashes or verifies itself: the verifier hashes the
canonical form of the ``config`` object it parsed, so every value it shows or checks is a value the report binds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Union

import orjson

BUNDLE_VERSION: Final = 2
REPORT_LABEL: Final = b"veil/report/v2\x00"
GPU_NONCE_LABEL: Final = b"veil/gpu/v1"
MEDIA_TYPE_BUNDLE: Final = "application/vnd.veil.attestation+json"


#: A value of the bound configuration. No floats: their text differs between JSON encoders (Python, JavaScript).
ConfigValue = Union[str, int, bool, None]

#: The configuration names a gateway binds, and the types their values may have (``veil gateway`` fills them from
#: its options: :meth:`enclave.gateway.GatewayConfig.attested`). A policy's ``[config] require`` may name only these.
CONFIG_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "engine": (str,),                      # echo | upstream | vllm
    "model": (str, type(None)),            # the served model name (null: whatever a loopback upstream serves)
    "model_manifest_sha256": (str, type(None)),  # SHA-256 of an encrypted model's veil-model.json, else null
    "model_key_origin": (str, type(None)),  # file | broker | null (no encrypted model)
    "key_origin": (str,),                  # generated (inside the TEE) | broker | file (operator-supplied)
    "pad_to": (int,),                      # response padding multiple in bytes (0: off)
    "replay_window_ms": (int,),            # accepted Date skew and replay memory, milliseconds
    "require_date": (bool,),               # requests without an inner Date are refused
    "api_keys_required": (bool,),          # whether API keys are required (never the keys)
    "cache_salt": (str,),                  # tenant | request | off
    "coalesce_ms": (int,),                 # stream events joined per sealed chunk within this window (0: off)
    # How the engine runs, as the host set it: vLLM's Python, model directory, dtype and extra arguments, or the
    # upstream URL (null for echo). The host chooses these; binding them lets a policy pin what the image runs.
    "engine_launch": (str, type(None)),
    # What the gateway itself checked of its GPUs before collecting their evidence: "nvml" (NVML, inside the TEE:
    # CC feature on, production environment, dev-tools mode off, at every collection), "command" (an operator's
    # command printed the evidence; the gateway checked nothing itself), null (no GPU evidence). The SPDM report
    # does not carry CC mode or dev tools; this is the TEE's own word for them.
    "gpu_cc_checked": (str, type(None)),
    # How many GPUs NVML saw at start (null unless gpu_cc_checked is "nvml"): every one of them is in the evidence,
    # so a client sees a GPU left out of the evidence (the verifier compares it with the reports).
    "gpu_count": (int, type(None)),
    # What the gateway itself checked of its NVSwitches (protected PCIe): "nscq" (through NVIDIA's NSCQ, inside the
    # TEE, at start and at every collection: every switch LS10, TNVL on and locked), null (no switch evidence). Like
    # CC mode for GPUs, the LS10 report does not carry TNVL mode: this is the TEE's own word for it.
    "switch_tnvl_checked": (str, type(None)),
    # How many NVSwitches NSCQ saw at start (null unless switch_tnvl_checked is "nscq"): the verifier compares it with
    # the switch reports, so a switch left out of the evidence is seen without a client-side switch_count.
    "switch_count": (int, type(None)),
    # With key_origin "broker": which broker the OHTTP keys came from and under which policy its own evidence was
    # accepted (SHA-256 of the --key-broker-policy file). Both are set by the host: bound, so a client policy can pin
    # the broker policy and a host cannot point the gateway at a broker of its own choosing unseen.
    "key_broker": (str, type(None)),
    "key_broker_policy_sha256": (str, type(None)),
}
_MAX_JSON_INT: Final = 2**53 - 1
#: ASCII names only: sorting them is the same in every language (JCS sorts by UTF-16 units, Python by code points)
_CONFIG_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


class BundleError(Exception):
    """A bundle that cannot be parsed."""


def canonical_config(config: Mapping[str, ConfigValue] | None) -> bytes:
    """The exact bytes REPORT_DATA binds for ``config``: JSON, keys sorted, no whitespace, UTF-8.

    Raises:
        ValueError: a name that is not lower-case ASCII (``[a-z][a-z0-9_]*``), or a value that is not a string,
            integer (|n| < 2^53), boolean or null.
    """
    items = dict(config or {})
    for key, value in items.items():
        if not isinstance(key, str) or not _CONFIG_NAME.fullmatch(key):
            raise ValueError(f"configuration name {key!r} is not lower-case ASCII letters, digits and _")
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if not isinstance(value, int) or abs(value) > _MAX_JSON_INT:
            raise ValueError(f"configuration value {key}={value!r} is not a string, integer, boolean or null")
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def report_data(key_config: bytes, gpu_evidence: bytes = b"", nonce: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> bytes:
    """The 64 bytes a TEE report must carry to bind ``key_config`` (and GPU evidence, the gateway's configuration
    and a client nonce)."""
    if len(nonce) not in (0, 32):
        raise ValueError("client nonce must be 32 bytes")
    return hashlib.sha512(
        REPORT_LABEL
        + hashlib.sha256(key_config).digest()
        + hashlib.sha256(gpu_evidence).digest()
        + hashlib.sha256(canonical_config(config)).digest()
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
    #: the gateway's security-relevant configuration, bound by REPORT_DATA (see :data:`CONFIG_FIELDS`)
    config: dict[str, ConfigValue] = field(default_factory=dict)
    version: int = BUNDLE_VERSION

    def to_json(self) -> bytes:
        """Serialize (base64 for bytes)."""
        return orjson.dumps(
            {
                "version": self.version,
                "platform": self.platform,
                "key_config": base64.b64encode(self.key_config).decode(),
                "config": self.config,
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
            version = obj.get("version") if isinstance(obj, dict) else None
            if version == 1:
                raise BundleError("bundle version 1 binds no gateway configuration; this client needs version "
                                  f"{BUNDLE_VERSION} (upgrade the gateway)")
            if version != BUNDLE_VERSION:
                raise BundleError(f"unsupported bundle version {version}")
            config = obj.get("config")
            if not isinstance(config, dict):
                raise BundleError("malformed evidence bundle: 'config' must be a JSON object")
            canonical_config(config)  # refuses floats and nested values: they would not hash alike everywhere
            certs = obj.get("certs") or {}
            if not isinstance(certs, dict):  # unsigned attachments from the relay: a list here is malformed, not a crash
                raise BundleError("malformed evidence bundle: 'certs' must be a JSON object")
            return cls(
                platform=str(obj["platform"]),
                key_config=base64.b64decode(obj["key_config"], validate=True),
                report=base64.b64decode(obj["report"], validate=True),
                gpu_evidence=base64.b64decode(obj.get("gpu_evidence", ""), validate=True),
                nonce=bytes.fromhex(obj.get("nonce", "")),
                certs={str(k): str(v) for k, v in certs.items()},
                issued_at=float(obj.get("issued_at", 0.0)),
                config=config,
            )
        except BundleError:
            raise
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise BundleError(f"malformed evidence bundle: {type(exc).__name__}: {exc}") from None
