"""Policies for Azure confidential VMs (``[azure]``) and Microsoft Azure Attestation tokens (``[maa]``).

TOML::

    [azure]                                   # Azure CVM: HCL report + vTPM quote
    # Each entry is one acceptable set of PCR values (SHA-256 bank, 64 hex chars); all PCRs of an entry must match
    # and must be covered by the quote. An empty list accepts nothing.
    pcrs = [{ 0 = "<64 hex>", 4 = "<64 hex>", 7 = "<64 hex>", 11 = "<64 hex>" }]

    [maa]                                     # MAA JWTs
    issuers = ["https://sharedeus.eus.attest.azure.net"]   # exact `iss` values; empty accepts nothing
    measurements = ["<64 or 96 hex>"]         # SGX MRENCLAVE / SNP launch measurement / TDX MRTD
    allow_debug = false
    allow_rsa1024 = false                     # some MAA signing keys are RSA-1024; refused unless true
    # The signing keys you trust: at least one of these two is required. Keys that arrive with the evidence (the
    # bundle's JWKS) are never trusted; they are used only to find a key whose thumbprint is pinned here.
    key_thumbprints = ["<RFC 7638 SHA-256 JWK thumbprint, base64url>"]
    jwks_file = "maa-certs.json"              # the instance's /certs JWKS, fetched by you; relative to this file

With both, a signing key must be pinned (``jwks_file`` then only supplies key material). A policy that accepts MAA
tokens (``maa`` in ``platforms``, or ``[maa] issuers``) without either is refused when it is loaded.

``any_measurement`` is not a TOML key (as for ``[sev-snp]`` / ``[tdx]``): it comes only from
``veil attest verify --any-measurement`` and the verification document says so. The SNP / TDX hardware policy of an
Azure CVM (launch measurement of the paravisor, TCB, debug, VMPL) is the ``[sev-snp]`` / ``[tdx]`` table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import EvidenceFormatError

AZURE_KEYS: Final = frozenset({"pcrs"})
MAA_KEYS: Final = frozenset({"issuers", "measurements", "allow_debug", "allow_rsa1024", "key_thumbprints",
                             "jwks_file"})
MAX_PCR: Final = 23
_THUMBPRINT: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class AzurePolicy:
    #: Allow list of PCR sets: index -> 32-byte SHA-256 PCR value. One entry must match entirely.
    pcrs: tuple[dict[int, bytes], ...] = ()
    #: CLI only (``--any-measurement``): accept any PCR values; the document says the workload is not pinned.
    any_measurement: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AzurePolicy:
        """From the ``[azure]`` TOML table; unknown keys and malformed values are :class:`EvidenceFormatError`."""
        _reject_unknown("azure", d, AZURE_KEYS)
        raw = d.get("pcrs", [])
        if not isinstance(raw, list):
            raise EvidenceFormatError("[azure] pcrs must be a list of tables {index = hex}")
        entries = []
        for n, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or not entry:
                raise EvidenceFormatError(f"[azure] pcrs[{n}] must be a non-empty table {{index = hex}}")
            parsed: dict[int, bytes] = {}
            for key, value in entry.items():
                index = _pcr_index(key, f"[azure] pcrs[{n}]")
                parsed[index] = _hex(value, (32,), f"[azure] pcrs[{n}].{key}")
            entries.append(parsed)
        return cls(pcrs=tuple(entries))


@dataclass(frozen=True)
class MaaPolicy:
    #: Exact ``iss`` values accepted (the MAA instance URLs); empty accepts nothing.
    issuers: tuple[str, ...] = ()
    #: SGX MRENCLAVE (32 bytes), SNP launch measurement or TDX MRTD (48 bytes).
    measurements: tuple[bytes, ...] = ()
    any_measurement: bool = False
    allow_debug: bool = False
    #: Accept RSA-1024 MAA signing keys (some shared instances use them); the document says so.
    allow_rsa1024: bool = False
    #: RFC 7638 SHA-256 JWK thumbprints (base64url) of the accepted signing keys. When set, every signing key must
    #: be one of them, wherever its material came from (the policy's JWKS, or the JWKS that came with the evidence).
    key_thumbprints: tuple[str, ...] = ()
    #: The JWKs of ``jwks_file`` (``{"keys": [...]}`` of the MAA instances you trust): trusted as the user supplied
    #: them. Never filled from evidence: a bundle's JWKS is as unsigned as the token it would vouch for.
    jwks: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    #: Where ``jwks`` came from (for the verification document).
    jwks_source: str = ""

    @property
    def has_keys(self) -> bool:
        """Whether the policy names any signing key (a pin or a JWKS of its own); without one no token can pass."""
        return bool(self.key_thumbprints or self.jwks)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: Path | None = None) -> MaaPolicy:
        """From the ``[maa]`` TOML table; unknown keys and malformed values are :class:`EvidenceFormatError`.

        ``base``: the folder a relative ``jwks_file`` is read from (the policy file's own folder; default: the
        current directory)."""
        _reject_unknown("maa", d, MAA_KEYS)
        issuers = _str_list(d.get("issuers", []), "[maa] issuers")
        for iss in issuers:
            if not iss.startswith("https://"):
                raise EvidenceFormatError(f"[maa] issuer {iss!r} is not an https URL")
        measurements = d.get("measurements", [])
        if not isinstance(measurements, list):
            raise EvidenceFormatError("[maa] measurements must be a list of hex strings")
        thumbprints = _str_list(d.get("key_thumbprints", []), "[maa] key_thumbprints")
        for t in thumbprints:
            if not _THUMBPRINT.match(t):
                raise EvidenceFormatError(f"[maa] key thumbprint {t!r} is not 43 base64url characters (SHA-256)")
        jwks: tuple[Mapping[str, Any], ...] = ()
        source = ""
        if "jwks_file" in d:
            name = d["jwks_file"]
            if not isinstance(name, str) or not name:
                raise EvidenceFormatError("[maa] jwks_file must be a path (text)")
            path = (base or Path.cwd()) / Path(name).expanduser()
            jwks, source = load_jwks_file(path), str(path)
        return cls(
            issuers=tuple(issuers),
            measurements=tuple(_hex(m, (32, 48), f"[maa] measurements[{n}]") for n, m in enumerate(measurements)),
            allow_debug=_bool(d.get("allow_debug", False), "[maa] allow_debug"),
            allow_rsa1024=_bool(d.get("allow_rsa1024", False), "[maa] allow_rsa1024"),
            key_thumbprints=tuple(thumbprints),
            jwks=jwks,
            jwks_source=source,
        )


def load_jwks_file(path: str | Path) -> tuple[Mapping[str, Any], ...]:
    """The keys of a JWKS file (``{"keys": [{...}, ...]}``, an MAA instance's ``/certs``) the user chose to trust.

    Raises:
        EvidenceFormatError: unreadable, not JSON, or not a JWKS with at least one key object.
    """
    try:
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise EvidenceFormatError(f"[maa] jwks_file {path}: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) for k in keys):
        raise EvidenceFormatError(f"[maa] jwks_file {path}: not a JWKS (an object with a non-empty 'keys' list)")
    return tuple(keys)


def _reject_unknown(table: str, d: Mapping[str, Any], known: frozenset[str]) -> None:
    if not isinstance(d, Mapping):
        raise EvidenceFormatError(f"[{table}] must be a table")
    if extra := sorted(set(d) - known):
        raise EvidenceFormatError(f"unknown keys in [{table}]: {extra} (known: {sorted(known)})")


def _pcr_index(key: Any, where: str) -> int:
    text = str(key)
    if not text.isdigit() or not 0 <= int(text) <= MAX_PCR:
        raise EvidenceFormatError(f"{where}: PCR index {key!r} is not 0..{MAX_PCR}")
    return int(text)


def _hex(value: Any, sizes: tuple[int, ...], where: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise EvidenceFormatError(f"{where}: not hex") from None
    else:
        raise EvidenceFormatError(f"{where}: expected a hex string, not {type(value).__name__}")
    if len(raw) not in sizes:
        raise EvidenceFormatError(f"{where}: {len(raw)} bytes, expected {' or '.join(map(str, sizes))}")
    return raw


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise EvidenceFormatError(f"{where} must be a list of non-empty strings")
    return list(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise EvidenceFormatError(f"{where} must be true or false, not {value!r}")
    return value
