"""configfs-tsm collector against a fake kernel: a real directory tree in tmp_path whose attribute files behave as the
kernel's do (generation counter, read-only attributes, outblob computed from inblob by the "hardware").

Only the kernel and the TEE are faked; the collector, the report parser and the verifiers are the real code.
"""

from __future__ import annotations

import datetime
import errno
import shutil
import ssl
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.attestation.bundle import Bundle, report_data
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.snp.policy import SnpPolicy
from enclave.attestation.provider import EvidenceProvider
from enclave.attestation.snp import parse_report
from enclave.attestation.snp.verify import verify_snp, verify_snp_certs
from enclave.attestation.tsm import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    ConfigfsTsmProvider,
    LinuxConfigfs,
    TsmError,
    TsmUnavailableError,
    parse_cert_table,
)

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

KEY_CONFIG = bytes.fromhex("01002000010001") + bytes(range(32))  # any bytes: the collector only hashes them
NONCE = bytes(range(32))
NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


def cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """The GHCB extended-report certificate table: entries, a zero entry, then the certificates."""
    header = (len(entries) + 1) * 24
    table, data = b"", b""
    for guid, blob in entries:
        table += struct.pack("<16sII", guid.bytes, header + len(data), len(blob))
        data += blob
    return table + bytes(24) + data


class FakeTsmKernel:
    """configfs-tsm semantics over a plain directory: mkdir populates an entry, every write bumps ``generation``,
    ``outblob``/``auxblob`` come from the fake hardware, ``rmdir`` drops the entry.

    ``interfere`` makes another writer bump the generation of the next N entries while we read ``outblob``.
    """

    def __init__(self, root: Path, provider: str, hardware: Callable[[bytes], bytes], auxblob: bytes = b"",
                 interfere: int = 0) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.provider = provider
        self.hardware = hardware
        self.auxblob = auxblob
        self.interfere = interfere
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.writes: list[tuple[str, bytes]] = []
        self.reads: list[str] = []

    def _gen(self, entry: Path) -> int:
        return int((entry / "generation").read_text())

    def _bump(self, entry: Path) -> None:
        (entry / "generation").write_text(f"{self._gen(entry) + 1}\n")

    def mkdir(self, path: Path) -> None:
        assert path.parent == self.root
        path.mkdir()  # FileExistsError like the kernel
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "privlevel_floor").write_text("0\n")
        for name in ("inblob", "outblob", "privlevel") + (("auxblob",) if self.provider == "sev_guest" else ()):
            (path / name).write_bytes(b"")
        self.created.append(path)

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)
        self.removed.append(path)

    def write(self, path: Path, data: bytes) -> None:
        name = path.name
        self.writes.append((name, data))
        if name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, "inblob too large")
        elif name == "privlevel":
            if int(data) > 3:
                raise OSError(errno.EINVAL, "privlevel out of range")
        else:
            raise PermissionError(errno.EACCES, f"{name} is read-only")
        path.write_bytes(data)
        self._bump(path.parent)

    def read(self, path: Path) -> bytes:
        name, entry = path.name, path.parent
        self.reads.append(name)
        if name == "outblob":
            inblob = (entry / "inblob").read_bytes().ljust(64, b"\0")
            path.write_bytes(self.hardware(inblob))
            if self.interfere:
                self.interfere -= 1
                self._bump(entry)  # someone else wrote our entry's inblob meanwhile
        elif name == "auxblob":
            path.write_bytes(self.auxblob)
        return path.read_bytes()


@pytest.fixture(scope="session")
def virtee(evidence_dir: Path) -> dict[str, bytes]:
    d = evidence_dir / "sev-snp" / "milan-vcek-v2-virtee"
    ask, ark = x509.load_pem_x509_certificates((d / "ask_ark.pem").read_bytes())
    return {"report": (d / "report.bin").read_bytes(), "vcek": (d / "vcek.der").read_bytes(),
            "ask": ask.public_bytes(Encoding.DER), "ark": ark.public_bytes(Encoding.DER)}


@pytest.fixture(scope="session")
def aws(evidence_dir: Path) -> dict[str, bytes]:
    d = evidence_dir / "sev-snp" / "milan-vlek-v3-aws-trustee"
    asvk, ark = x509.load_pem_x509_certificates((d / "asvk_ark.pem").read_bytes())
    return {"vlek": (d / "vlek.der").read_bytes(), "asvk": asvk.public_bytes(Encoding.DER),
            "ark": ark.public_bytes(Encoding.DER)}


def snp_hardware(template: bytes) -> Callable[[bytes], bytes]:
    """A fake PSP: the template report with REPORT_DATA replaced (so its signature no longer verifies)."""
    return lambda inblob: template[:0x50] + inblob + template[0x90:]


def make(tmp_path: Path, virtee: dict[str, bytes], **kw: object) -> tuple[FakeTsmKernel, ConfigfsTsmProvider]:
    default_table = cert_table([(GUID_VCEK, virtee["vcek"]), (GUID_ASK, virtee["ask"]), (GUID_ARK, virtee["ark"])])
    kernel = FakeTsmKernel(
        tmp_path / "tsm" / "report", str(kw.pop("provider", "sev_guest")),
        kw.pop("hardware", snp_hardware(virtee["report"])),  # type: ignore[arg-type]
        auxblob=kw.pop("auxblob", default_table),  # type: ignore[arg-type]
        interfere=kw.pop("interfere", 0),  # type: ignore[arg-type]
    )
    return kernel, ConfigfsTsmProvider(kernel.root, ops=kernel, **kw)  # type: ignore[arg-type]


def test_snp_collect_binds_the_key_and_ships_the_certificates(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    kernel, provider = make(tmp_path, virtee)
    as_protocol: EvidenceProvider = provider  # mypy checks that it is an EvidenceProvider
    assert as_protocol.platform == "sev-snp"
    bundle = provider.collect(KEY_CONFIG, NONCE)
    assert isinstance(bundle, Bundle)
    assert bundle.platform == "sev-snp" and bundle.key_config == KEY_CONFIG and bundle.nonce == NONCE
    expected = report_data(KEY_CONFIG, b"", NONCE)
    assert ("inblob", expected) in kernel.writes
    assert parse_report(bundle.report).report_data == expected
    assert set(bundle.certs) == {"vcek", "ask", "ark"}
    assert bundle.certs["vcek"] == ssl.DER_cert_to_PEM_cert(virtee["vcek"])
    assert bundle.certs["ark"] == ssl.DER_cert_to_PEM_cert(virtee["ark"])
    # Every entry made (the platform probe, then the collection) is gone again.
    assert kernel.created == kernel.removed and not any(kernel.root.iterdir())
    # The bundle survives its own wire format.
    assert Bundle.from_json(bundle.to_json()) == bundle


def test_collected_bundle_goes_through_the_real_verifier(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    _, provider = make(tmp_path, virtee)
    bundle = provider.collect(KEY_CONFIG)
    assert verify_snp_certs(bundle.certs, now=NOW).ok  # the auxblob chain is the real AMD chain
    pol = SnpPolicy(measurements=(parse_report(bundle.report).measurement,))
    v = verify_snp(bundle.report, bundle.certs, pol, now=NOW,
                   expected_report_data=report_data(bundle.key_config, bundle.gpu_evidence, bundle.nonce))
    # The binding holds; the fake hardware cannot sign, and the verifier notices.
    assert {c.name for c in v.checks if c.ok is not True} == {"report signature"}


def test_vlek_table_yields_vlek_and_asvk(tmp_path: Path, virtee: dict[str, bytes], aws: dict[str, bytes]) -> None:
    table = cert_table([(GUID_VLEK, aws["vlek"]), (GUID_ASK, aws["asvk"]), (GUID_ARK, aws["ark"])])
    _, provider = make(tmp_path, virtee, auxblob=table)
    bundle = provider.collect(KEY_CONFIG)
    assert set(bundle.certs) == {"vlek", "asvk", "ark"}
    assert verify_snp_certs(bundle.certs, now=NOW).ok


def test_empty_auxblob_gives_no_certs(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    _, provider = make(tmp_path, virtee, auxblob=bytes(4096))  # the host provisioned nothing
    assert provider.collect(KEY_CONFIG).certs == {}


def test_tdx_collect(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    quote = lambda inblob: b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(560) + inblob + bytes(100)
    kernel, provider = make(tmp_path, virtee, provider="tdx_guest", hardware=quote)
    assert provider.platform == "tdx"
    bundle = provider.collect(KEY_CONFIG, NONCE)
    assert bundle.platform == "tdx" and bundle.certs == {}
    assert bundle.report[568:632] == report_data(KEY_CONFIG, b"", NONCE)
    assert "auxblob" not in kernel.reads
    assert not any(kernel.root.iterdir())


def test_generation_mismatch_is_retried(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    kernel, provider = make(tmp_path, virtee, interfere=1)
    bundle = provider.collect(KEY_CONFIG, NONCE)
    assert parse_report(bundle.report).report_data == report_data(KEY_CONFIG, b"", NONCE)
    assert kernel.reads.count("outblob") == 2  # the raced attempt, then a clean one
    assert len(kernel.created) == 3 and kernel.created == kernel.removed  # probe + two attempts, all removed
    assert not any(kernel.root.iterdir())


def test_generation_mismatch_every_time_gives_up(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    kernel, provider = make(tmp_path, virtee, interfere=99, max_attempts=3)
    with pytest.raises(TsmError, match="during every one of 3 attempts"):
        provider.collect(KEY_CONFIG)
    assert kernel.reads.count("outblob") == 3
    assert kernel.created == kernel.removed and not any(kernel.root.iterdir())


def test_privlevel_is_written_and_counted(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    kernel, provider = make(tmp_path, virtee, privlevel=1)
    provider.collect(KEY_CONFIG)
    assert ("privlevel", b"1\n") in kernel.writes
    _, refused = make(tmp_path / "b", virtee, privlevel=7)
    with pytest.raises(OSError, match="privlevel out of range"):
        refused.collect(KEY_CONFIG)


def test_output_without_our_report_data_is_refused(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    replay = virtee["report"]
    kernel, provider = make(tmp_path, virtee, hardware=lambda _inblob: replay)
    with pytest.raises(TsmError, match="REPORT_DATA is not what was written"):
        provider.collect(KEY_CONFIG)
    assert kernel.created == kernel.removed


def test_malformed_report_is_refused(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    _, provider = make(tmp_path, virtee, hardware=lambda inblob: b"\x02" + bytes(100))
    with pytest.raises(EvidenceFormatError, match="101 bytes"):
        provider.collect(KEY_CONFIG)


def test_bad_nonce_is_refused_before_touching_the_kernel(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    kernel, provider = make(tmp_path, virtee)
    with pytest.raises(ValueError, match="32 bytes"):
        provider.collect(KEY_CONFIG, b"short")
    assert len(kernel.created) == 1  # only the platform probe


def test_absent_configfs_tsm(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    with pytest.raises(TsmUnavailableError, match="does not look like an SEV-SNP or TDX guest"):
        ConfigfsTsmProvider(tmp_path / "no-tsm", dev_dir=dev)
    (dev / "sev-guest").touch()
    with pytest.raises(TsmUnavailableError, match=r"sev-guest, but the legacy ioctl interface is not supported"):
        ConfigfsTsmProvider(tmp_path / "no-tsm", dev_dir=dev)


def test_unknown_provider(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    with pytest.raises(TsmError, match="'arm_cca_guest' is not supported"):
        make(tmp_path, virtee, provider="arm_cca_guest")


def test_cert_table_parsing(virtee: dict[str, bytes]) -> None:
    crl_guid = uuid.UUID("11111111-2222-3333-4444-555555555555")
    table = cert_table([(GUID_VCEK, virtee["vcek"]), (crl_guid, b"x" * 10)]) + bytes(100)  # page padding
    parsed = parse_cert_table(table)
    assert parsed == {GUID_VCEK: virtee["vcek"], crl_guid: b"x" * 10}
    assert parse_cert_table(b"") == {} and parse_cert_table(bytes(4096)) == {}
    # GUIDs sit in RFC 4122 byte order (go-sev-guest copies them into uuid.UUID, virtee uses Uuid::from_bytes).
    assert table[:4] == bytes.fromhex("63da758d")
    with pytest.raises(EvidenceFormatError, match="no zero terminator"):
        parse_cert_table(struct.pack("<16sII", GUID_VCEK.bytes, 24, 4) + b"abcd")
    with pytest.raises(EvidenceFormatError, match="outside the data area"):
        parse_cert_table(struct.pack("<16sII", GUID_VCEK.bytes, 0, 4) + bytes(24) + b"abcd")
    with pytest.raises(EvidenceFormatError, match="outside the data area"):
        parse_cert_table(struct.pack("<16sII", GUID_VCEK.bytes, 48, 5) + bytes(24) + b"abcd")
    dup = struct.pack("<16sII16sII", GUID_VCEK.bytes, 72, 1, GUID_VCEK.bytes, 73, 1) + bytes(24) + b"ab"
    with pytest.raises(EvidenceFormatError, match="twice"):
        parse_cert_table(dup)


def test_non_certificate_in_table_is_refused(tmp_path: Path, virtee: dict[str, bytes]) -> None:
    _, provider = make(tmp_path, virtee, auxblob=cert_table([(GUID_VCEK, b"not a certificate")]))
    with pytest.raises(EvidenceFormatError, match="VCEK entry of the certificate table is not a DER certificate"):
        provider.collect(KEY_CONFIG)


def test_linux_ops_on_a_plain_directory(tmp_path: Path) -> None:
    ops = LinuxConfigfs()
    entry = tmp_path / "entry"
    ops.mkdir(entry)
    ops.write(entry / "inblob", b"\x01" * 64)
    assert ops.read(entry / "inblob") == b"\x01" * 64
    (entry / "inblob").unlink()  # configfs drops attributes itself; a plain directory needs help
    ops.rmdir(entry)
    assert not entry.exists()
