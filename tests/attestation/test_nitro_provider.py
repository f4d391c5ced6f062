"""The Nitro Security Module provider against a fake ``/dev/nsm`` that answers with real recorded documents from
``shared/data/evidence/aws-nitro``.

Only the device is faked: the request encoder, the response parser, the document parser and the verifier are the real
code. A recorded document carries someone else's ``user_data``, never Veil's binding, so the provider must refuse it;
bundle assembly is checked by making the provider expect the recorded value (monkeypatched binding) and verifying
the bundle it builds.
"""

from __future__ import annotations

import ctypes
import datetime
import fcntl
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from enclave.attestation.bundle import Bundle, report_data
from enclave.attestation.errors import AttestationError
from enclave.attestation.nitro.nsm import LinuxNsm, NitroProvider, NsmDevice, NsmError, NsmUnavailableError
from enclave.attestation.nitro import NitroPolicy, nsm
from enclave.attestation.nitro.abi import parse_document
from enclave.attestation.policy import Policy
from enclave.attestation.provider import EvidenceProvider
from enclave.attestation.verify import verify_bundle

KEY_CONFIG = bytes.fromhex("01002000010001") + bytes(range(32))  # any bytes: the provider only hashes them
NONCE = bytes(range(32, 64))
GPU = b'{"gpus": []}'
DEBUG = "debug-mode-blindai"  # user_data b"hello, world!", nonce null, debug enclave
PCR16 = "prod-pcr16-oyster"  # user_data b"" (present, empty), nonce null, production enclave
TLS = "tls-binding-evervault"  # user_data = 120-byte SPKI, 256-byte nonce


class FakeNsm:
    """A ``/dev/nsm`` that records each request (decoded) and answers with fixed bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.raw: list[bytes] = []
        self.requests: list[Any] = []

    def request(self, message: bytes) -> bytes:
        self.raw.append(message)
        self.requests.append(cbor2.loads(message))
        return self.answer


def attestation_answer(document: bytes) -> bytes:
    return cbor2.dumps({"Attestation": {"document": document}})


@pytest.fixture(scope="module")
def docs(evidence_dir: Path) -> dict[str, bytes]:
    return {d.name: (d / "attestation_doc.cbor").read_bytes() for d in (evidence_dir / "aws-nitro").iterdir()
            if (d / "attestation_doc.cbor").is_file()}


def at_doc_time(document: bytes) -> datetime.datetime:
    return parse_document(document).timestamp


# --- the request --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonce", [b"", NONCE], ids=["no-nonce", "client-nonce"])
def test_request_is_exactly_one_attestation_with_the_key_binding(docs: dict[str, bytes], nonce: bytes) -> None:
    device = FakeNsm(attestation_answer(docs[PCR16]))
    with pytest.raises(NsmError):  # the recorded document is not bound to our key (below)
        NitroProvider(device).collect(KEY_CONFIG, nonce=nonce, gpu_evidence=GPU)
    binding = report_data(KEY_CONFIG, GPU, nonce)
    assert len(binding) == 64
    assert device.requests == [{"Attestation": {"user_data": binding, "nonce": nonce or None, "public_key": None}}]
    # Byte-exact: a one-key map whose value is a three-key map in nsm-api's field order, nulls encoded as f6.
    assert device.raw == [
        b"\xa1\x6bAttestation\xa3"
        + b"\x69user_data\x58\x40" + binding
        + (b"\x65nonce\x58\x20" + nonce if nonce else b"\x65nonce\xf6")
        + b"\x6apublic_key\xf6"
    ]


# --- what the device answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [DEBUG, PCR16, TLS, "prod-pubkey-oyster", "prod-nonce-evervault"])
def test_a_document_bound_to_something_else_is_refused(docs: dict[str, bytes], sample: str) -> None:
    with pytest.raises(NsmError, match="user_data") as info:
        NitroProvider(FakeNsm(attestation_answer(docs[sample]))).collect(KEY_CONFIG)
    assert "key binding" in str(info.value)
    assert isinstance(info.value, AttestationError)


@pytest.mark.parametrize("code", ["InvalidArgument", "InputTooLarge", "InternalError", "SomethingNew"])
def test_an_error_answer_names_its_code(code: str) -> None:
    with pytest.raises(NsmError, match=f"error {code}:"):
        NitroProvider(FakeNsm(cbor2.dumps({"Error": code}))).collect(KEY_CONFIG)


@pytest.mark.parametrize(
    "answer, words",
    [
        (b"", "not valid CBOR"),
        (b"\xff\x00garbage", "not valid CBOR"),
        (b"\xa1\x6bAttestation\xa1\x68document\x59\x10\x00", "not valid CBOR"),  # truncated (as a cut-off buffer)
        (cbor2.dumps({"Attestation": {"document": b"x"}}) + b"\x00", "after its CBOR item"),
        (cbor2.dumps("Attestation"), "expected a map with one key"),
        (cbor2.dumps({"Attestation": {"document": b"x"}, "Error": "InternalError"}), "expected a map with one key"),
        (cbor2.dumps({"DescribePCR": {"lock": False, "data": b""}}), "'DescribePCR' to an Attestation request"),
        (cbor2.dumps({"Attestation": {"document": b"x", "extra": 1}}), 'expected {"document": bytes}'),
        (cbor2.dumps({"Attestation": {"document": "text"}}), "expected a non-empty byte string"),
        (cbor2.dumps({"Attestation": {"document": b""}}), "expected a non-empty byte string"),
        (cbor2.dumps({"Attestation": {"document": cbor2.dumps([1, 2])}}), "does not parse"),
    ],
)
def test_malformed_answers_are_refused_clearly(answer: bytes, words: str) -> None:
    with pytest.raises(NsmError, match=words.replace("{", r"\{").replace("(", r"\(")):
        NitroProvider(FakeNsm(answer)).collect(KEY_CONFIG)


def test_a_document_without_the_nonce_asked_for_is_refused(docs: dict[str, bytes],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nsm, "report_data", lambda *a: b"hello, world!")  # DEBUG's user_data: only the nonce differs
    with pytest.raises(NsmError, match="nonce null, not the client nonce"):
        NitroProvider(FakeNsm(attestation_answer(docs[DEBUG]))).collect(KEY_CONFIG, nonce=NONCE)


def test_driver_errors_become_nsm_errors() -> None:
    class Refusing:
        def request(self, message: bytes) -> bytes:
            raise OSError(90, "Message too long")  # EMSGSIZE

    with pytest.raises(NsmError, match="Message too long.*4 KiB"):
        NitroProvider(Refusing()).collect(KEY_CONFIG)


# --- the bundle ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample, policy", [
    (PCR16, NitroPolicy(any_measurement=True)),
    (DEBUG, NitroPolicy(any_measurement=True, allow_debug=True)),
])
def test_assembled_bundle_verifies_except_for_the_binding(docs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
                                                          sample: str, policy: NitroPolicy) -> None:
    document = docs[sample]
    recorded = parse_document(document).user_data
    assert recorded is not None
    # The provider asks for (and checks) this binding; the client still recomputes the real one from the bundle.
    monkeypatch.setattr(nsm, "report_data", lambda *a: recorded)
    provider: EvidenceProvider = NitroProvider(FakeNsm(attestation_answer(document)))
    bundle = provider.collect(KEY_CONFIG, gpu_evidence=b"")
    assert provider.platform == "aws-nitro"
    assert (bundle.platform, bundle.key_config, bundle.report, bundle.nonce, bundle.gpu_evidence, bundle.certs) == (
        "aws-nitro", KEY_CONFIG, document, b"", b"", {})
    assert bundle.issued_at > 0
    bundle = Bundle.from_json(bundle.to_json())  # as a client receives it

    client = Policy(platforms=("aws-nitro",), nitro=policy)
    now = at_doc_time(document)
    audit = verify_bundle(bundle, KEY_CONFIG, client, now=now, check_binding=False)
    assert audit.ok, audit.document()
    names = [c.name for c in audit.checks]
    for step in ("root pinned", "certificate chain", "certificate validity", "COSE signature", "key binding"):
        assert step in names

    strict = verify_bundle(bundle, KEY_CONFIG, client, now=now)
    assert [c.name for c in strict.failures] == ["key binding"], strict.document()
    assert report_data(KEY_CONFIG).hex() in strict.failures[0].expected


# --- the Linux device ---------------------------------------------------------------------------------------------


def test_ioctl_number_and_struct_layout_match_the_kernel_header() -> None:
    # include/uapi/linux/nsm.h: NSM_MAGIC 0x0A, NSM_IOCTL_RAW _IOWR(NSM_MAGIC, 0x0, struct nsm_raw), sizes 0x1000 and
    # 0x3000; _IOWR = (3 << 30) | (size << 16) | (type << 8) | nr.
    assert nsm.NSM_IOCTL_REQUEST == 0xC0200A00
    assert (nsm.NSM_REQUEST_MAX_SIZE, nsm.NSM_RESPONSE_MAX_SIZE) == (0x1000, 0x3000)
    raw, iov = nsm._NsmRaw, nsm._NsmIovec
    assert ctypes.sizeof(raw) == 32 and ctypes.sizeof(iov) == 16
    assert (iov.addr.offset, iov.len.offset) == (0, 8)
    assert (raw.request.offset, raw.response.offset) == (0, 16)

    class Iovec(ctypes.Structure):  # struct iovec, as the out-of-tree driver's struct nsm_message has it
        _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

    class NsmMessage(ctypes.Structure):
        _fields_ = [("request", Iovec), ("response", Iovec)]

    if ctypes.sizeof(ctypes.c_void_p) == 8:  # on 64-bit (every Nitro enclave) the two layouts are the same 32 bytes
        assert ctypes.sizeof(NsmMessage) == 32 and NsmMessage.response.offset == 16


def test_linux_nsm_passes_buffers_by_address_and_reads_back_the_length(
    tmp_path: Path, docs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ioctl emulated as drivers/misc/nsm.c does it: read request.len bytes at request.addr, write the answer at
    response.addr (cut to response.len) and store its length in response.len."""
    answer = attestation_answer(docs[PCR16])
    seen: list[bytes] = []

    def kernel(fd: int, request: int, arg: Any, mutate: bool) -> int:
        assert request == nsm.NSM_IOCTL_REQUEST and mutate
        assert isinstance(arg, nsm._NsmRaw) and arg.response.len == nsm.NSM_RESPONSE_MAX_SIZE
        seen.append(ctypes.string_at(arg.request.addr, arg.request.len))
        n = min(len(answer), arg.response.len)
        ctypes.memmove(arg.response.addr, answer, n)
        arg.response.len = n
        return 0

    monkeypatch.setattr(fcntl, "ioctl", kernel)
    monkeypatch.setattr(nsm, "report_data", lambda *a: b"")  # PCR16's (empty) user_data
    path = tmp_path / "nsm"
    path.write_bytes(b"")
    bundle = NitroProvider(path=str(path)).collect(KEY_CONFIG)
    assert bundle.report == docs[PCR16]
    assert seen == [nsm.attestation_request(b"", None, None)]
    with LinuxNsm(str(path)) as device, pytest.raises(OSError, match="over 4096"):
        device.request(bytes(nsm.NSM_REQUEST_MAX_SIZE + 1))


def test_missing_device_is_a_clear_unavailability_error(tmp_path: Path) -> None:
    path = tmp_path / "nsm"
    with pytest.raises(NsmUnavailableError, match=f"{path} does not exist: this is not an AWS Nitro enclave"):
        NitroProvider(path=str(path))


def test_a_file_that_is_not_the_nsm_fails_at_the_ioctl(tmp_path: Path) -> None:
    # The real ioctl path (ctypes buffers, fcntl) against a regular file: the kernel answers ENOTTY.
    path = tmp_path / "not-nsm"
    path.write_bytes(b"")
    device = LinuxNsm(str(path))
    try:
        with pytest.raises(NsmError, match="Nitro Security Module"):
            NitroProvider(device).collect(KEY_CONFIG)
    finally:
        device.close()
    with pytest.raises(OSError):
        device.request(b"\xa0")


@pytest.mark.skipif(not os.path.exists(nsm.DEFAULT_PATH), reason="no /dev/nsm: not inside an AWS Nitro enclave")
def test_real_nsm_binds_our_key() -> None:  # pragma: no cover - only inside an enclave
    bundle = NitroProvider().collect(KEY_CONFIG, nonce=NONCE)
    doc = parse_document(bundle.report)
    assert doc.user_data == report_data(KEY_CONFIG, b"", NONCE) and doc.nonce == NONCE


def test_documents_are_collected_again_before_their_leaf_certificate_lapses(docs: dict[str, bytes]) -> None:
    from enclave.attestation.gateway_evidence import GatewayEvidence

    device: NsmDevice = FakeNsm(b"")  # the fake satisfies the device protocol (checked by mypy here)
    provider = NitroProvider(device)
    # The NSM reuses its leaf: the bundle expires with the leaf, whatever time is left of it (the gateway collects
    # again halfway there; GatewayState). This recorded document was issued 1 h 20 min before its leaf expired.
    doc = docs["prod-pubkey-oyster"]
    bundle = Bundle(platform="aws-nitro", key_config=KEY_CONFIG, report=doc,
                    issued_at=at_doc_time(doc).timestamp())
    expires = provider.evidence_expiry(bundle)
    assert expires == datetime.datetime(2024, 12, 13, 8, 57, 45, tzinfo=datetime.UTC).timestamp()
    assert 79 * 60 < expires - bundle.issued_at < 81 * 60
    assert GatewayEvidence(provider).evidence_expiry(bundle) == expires
