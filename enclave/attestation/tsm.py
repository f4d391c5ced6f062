"""Gateway-side evidence collection through Linux configfs-tsm (``/sys/kernel/config/tsm/report``, kernel >= 6.7).

Runs inside the CVM; imports nothing from ``enclave`` outside ``attestation``. One report request, as the kernel ABI
(Documentation/ABI/testing/configfs-tsm-report) and google/go-configfs-tsm use it::

    mkdir  $root/$entry                 # one private instance; rmdir when done
    cat    $entry/generation            # g0
    write  $entry/inblob   (64 bytes)   # -> REPORT_DATA / REPORTDATA; generation becomes g0 + 1
    [write $entry/privlevel]            # SNP VMPL, only if configured; generation + 1
    cat    $entry/provider              # "sev_guest" | "tdx_guest"
    cat    $entry/generation            # must be what our own writes made it ...
    cat    $entry/outblob               # SNP ATTESTATION_REPORT (1184 B) | TDX quote
    cat    $entry/auxblob               # SNP only: the host's certificate table (may be empty)
    cat    $entry/generation            # ... and still be: otherwise another writer raced us, so start over

The legacy ``/dev/sev-guest`` (SNP_GET_EXT_REPORT) and ``/dev/tdx_guest`` ioctls are only detected, to say why
collection is impossible; they are not implemented.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import struct
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

from .bundle import Bundle, ConfigValue, report_data
from .errors import AttestationError, EvidenceFormatError, ProviderError
from .snp.abi import parse_report

DEFAULT_ROOT: Final = Path("/sys/kernel/config/tsm/report")
#: configfs ``provider`` value -> Veil platform name.
PROVIDERS: Final[Mapping[str, str]] = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
LEGACY_DEVICES: Final = ("sev-guest", "tdx_guest")

#: SNP extended-report certificate table GUIDs (GHCB spec, as in go-sev-guest abi.go and virtee/sev). The ASK GUID
#: also carries the ASVK when the host provisions a VLEK chain (go-sev-guest: "Used for the ASVK as well").
GUID_VCEK: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_CERT_ENTRY: Final = struct.Struct("<16sII")  # GUID (RFC 4122 byte order, as uuid.UUID.bytes), offset, length


class TsmError(AttestationError):
    """configfs-tsm produced no usable evidence (races on every attempt, unknown provider, bad output)."""


class TsmUnavailableError(TsmError):
    """No configfs-tsm report interface on this machine."""


class ConfigfsOps(Protocol):
    """The four filesystem operations the collector makes; the kernel's configfs is the real implementation."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path) -> bytes: ...

    def write(self, path: Path, data: bytes) -> None: ...


class LinuxConfigfs:
    """Plain syscalls: configfs creates an entry's attribute files on mkdir and drops them on rmdir."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        # One write(2) then close: configfs commits binary attributes (inblob) on release.
        with open(path, "wb", buffering=0) as f:
            written = f.write(data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")


def legacy_devices(dev_dir: Path = Path("/dev")) -> list[str]:
    """Which legacy guest devices exist (for the error message only)."""
    return [str(dev_dir / name) for name in LEGACY_DEVICES if (dev_dir / name).exists()]


def parse_cert_table(data: bytes) -> dict[uuid.UUID, bytes]:
    """The SNP extended-report certificate table: ``(guid[16], offset u32, length u32)`` entries ended by an all-zero
    entry, then the certificates; offsets count from the start of ``data``.

    Raises:
        EvidenceFormatError: no terminator, an entry pointing into the header or past the end, or a duplicate GUID.
    """
    if not any(data):
        return {}  # the host provisioned no certificates
    entries: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + _CERT_ENTRY.size > len(data):
            raise EvidenceFormatError(f"certificate table has no zero terminator within {len(data)} bytes")
        guid_bytes, offset, length = _CERT_ENTRY.unpack_from(data, pos)
        pos += _CERT_ENTRY.size
        if not any(guid_bytes) and offset == 0 and length == 0:
            break
        entries.append((uuid.UUID(bytes=guid_bytes), offset, length))
    table: dict[uuid.UUID, bytes] = {}
    for i, (guid, offset, length) in enumerate(entries):
        if offset < pos or length == 0 or offset + length > len(data):
            raise EvidenceFormatError(
                f"certificate table entry {i} ({guid}) spans [{offset}, {offset + length}) outside the data "
                f"area [{pos}, {len(data)})"
            )
        if guid in table:
            raise EvidenceFormatError(f"certificate table lists {guid} twice")
        table[guid] = data[offset : offset + length]
    return table


def _der_certificate(blob: bytes, what: str) -> bytes:
    """The blob if it is one DER SEQUENCE of exactly its length (hosts may pad entries; we refuse to guess)."""
    if len(blob) >= 4 and blob[0] == 0x30 and blob[1] == 0x82:
        total = 4 + int.from_bytes(blob[2:4], "big")
        if total == len(blob):
            return blob
        if total < len(blob) and not any(blob[total:]):
            return blob[:total]  # zero padding after the certificate, as some hosts page-align entries
    raise EvidenceFormatError(f"{what} entry of the certificate table is not a DER certificate")


def certs_from_table(table: Mapping[uuid.UUID, bytes]) -> dict[str, str]:
    """Bundle ``certs`` (role -> PEM) from a parsed certificate table; GUIDs we do not use (CRLs, extras) are left
    out."""
    vlek_chain = GUID_VLEK in table and GUID_VCEK not in table
    roles = {GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_ASK: "asvk" if vlek_chain else "ask", GUID_ARK: "ark"}
    return {
        role: ssl.DER_cert_to_PEM_cert(_der_certificate(table[guid], role.upper()))
        for guid, role in roles.items()
        if guid in table
    }


class ConfigfsTsmProvider:
    """An :class:`~enclave.attestation.provider.EvidenceProvider` over configfs-tsm (SEV-SNP or TDX)."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        ops: ConfigfsOps | None = None,
        privlevel: int | None = None,
        max_attempts: int = 3,
        dev_dir: Path = Path("/dev"),
    ) -> None:
        """Detect configfs-tsm under ``root`` and learn the platform from a probe entry's ``provider``.

        Raises:
            TsmUnavailableError: ``root`` does not exist (with what legacy devices exist instead).
            TsmError: the provider is neither ``sev_guest`` nor ``tdx_guest``.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.root = root
        self._ops: ConfigfsOps = ops or LinuxConfigfs()
        self._privlevel = privlevel
        self._max_attempts = max_attempts
        if not root.is_dir():
            legacy = legacy_devices(dev_dir)
            hint = (
                f"; found {', '.join(legacy)}, but the legacy ioctl interface is not supported: use a kernel >= 6.7 "
                "with CONFIG_TSM_REPORTS and configfs mounted at /sys/kernel/config"
                if legacy
                else f"; no {dev_dir / 'sev-guest'} or {dev_dir / 'tdx_guest'} either: this does not look like an "
                "SEV-SNP or TDX guest"
            )
            raise TsmUnavailableError(f"configfs-tsm report interface {root} is not available{hint}")
        entry = self._new_entry()
        try:
            provider = self._ops.read(entry / "provider").decode("ascii", "replace").strip()
        except BaseException:
            with contextlib.suppress(OSError):
                self._ops.rmdir(entry)
            raise
        self._ops.rmdir(entry)
        if provider not in PROVIDERS:
            raise TsmError(f"configfs-tsm provider {provider!r} is not supported (known: {sorted(PROVIDERS)})")
        self.provider = provider
        self.platform: str = PROVIDERS[provider]

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        """Evidence whose REPORT_DATA is :func:`report_data` of ``key_config`` and ``nonce``.

        Retries with a fresh entry when the generation counter shows another writer touched ours.

        Raises:
            TsmError: every attempt raced, or the kernel returned output that does not carry our REPORT_DATA.
            EvidenceFormatError: the SNP report or certificate table is malformed.
            OSError: the kernel refused a request (e.g. privlevel below privlevel_floor).
        """
        inblob = report_data(key_config, gpu_evidence, nonce, config)
        seen: list[str] = []
        for _ in range(self._max_attempts):
            entry = self._new_entry()
            try:
                result = self._collect_once(entry, inblob)
            except BaseException:
                with contextlib.suppress(OSError):  # keep the original error, not a failed cleanup
                    self._ops.rmdir(entry)
                raise
            self._ops.rmdir(entry)
            if isinstance(result, str):
                seen.append(result)
                continue
            outblob, auxblob = result
            certs = self._check_output(outblob, auxblob, inblob)
            return Bundle(platform=self.platform, key_config=key_config, report=outblob, nonce=nonce, certs=certs,
                          gpu_evidence=gpu_evidence, issued_at=time.time(), config=dict(config or {}))
        raise TsmError(f"configfs-tsm generation changed during every one of {self._max_attempts} attempts: "
                       + "; ".join(seen))

    def _new_entry(self) -> Path:
        for _ in range(8):
            entry = self.root / f"veil-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                self._ops.mkdir(entry)
            except FileExistsError:
                continue
            return entry
        raise TsmError(f"could not create a configfs-tsm entry under {self.root}")

    def _generation(self, entry: Path) -> int:
        text = self._ops.read(entry / "generation").decode("ascii", "replace").strip()
        try:
            return int(text, 10)
        except ValueError:
            raise TsmError(f"configfs-tsm generation is not a number: {text!r}") from None

    def _collect_once(self, entry: Path, inblob: bytes) -> tuple[bytes, bytes] | str:
        """(outblob, auxblob), or why this attempt must be discarded."""
        expected = self._generation(entry)
        self._ops.write(entry / "inblob", inblob)
        expected += 1
        if self._privlevel is not None and self.platform == "sev-snp":
            self._ops.write(entry / "privlevel", f"{self._privlevel}\n".encode())
            expected += 1
        provider = self._ops.read(entry / "provider").decode("ascii", "replace").strip()
        if provider != self.provider:
            raise TsmError(f"configfs-tsm provider changed from {self.provider!r} to {provider!r}")
        before = self._generation(entry)
        if before != expected:
            return f"generation {before} before reading, expected {expected}"
        outblob = self._ops.read(entry / "outblob")
        auxblob = b""
        if self.platform == "sev-snp":
            try:
                auxblob = self._ops.read(entry / "auxblob")
            except FileNotFoundError:
                auxblob = b""  # a provider without certificate support
        after = self._generation(entry)
        if after != expected:
            return f"generation {after} after reading, expected {expected}"
        return outblob, auxblob

    def _check_output(self, outblob: bytes, auxblob: bytes, inblob: bytes) -> dict[str, str]:
        """Refuse output that does not carry our REPORT_DATA; SNP certificates as PEM by role."""
        if self.platform != "sev-snp":
            # The TDX quote is checked by the TDX verifier; its certificates travel inside the quote.
            if not outblob:
                raise TsmError("configfs-tsm returned an empty TDX quote")
            return {}
        report = parse_report(outblob)
        if report.report_data != inblob:
            raise TsmError("the SNP report's REPORT_DATA is not what was written to inblob")
        return certs_from_table(parse_cert_table(auxblob))


def tsm_provider(kind: str | None) -> ConfigfsTsmProvider:
    """The configfs-tsm provider for ``--attestation kind`` ("sev-snp", "tdx"; None: whichever this guest is).

    Raises:
        ProviderError: no configfs-tsm here, or the guest is not a ``kind`` guest.
    """
    try:
        tsm = ConfigfsTsmProvider()
    except TsmError as exc:
        raise ProviderError(f"--attestation {kind or 'auto'}: {exc}. For development without a TEE use "
                            "--attestation simulated.") from None
    if kind is not None and tsm.platform != kind:
        raise ProviderError(f"--attestation {kind}, but this machine is a {tsm.platform} guest")
    return tsm
