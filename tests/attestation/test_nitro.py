"""AWS Nitro Enclaves attestation documents against the real samples in ``shared/data/evidence/aws-nitro``, at the times
their SOURCE.md files give (each document's own timestamp).

Expected values (timestamps, PCRs, nonce and key prefixes) are copied from the SOURCE.md files, and the TLS binding
is recomputed from the TLS certificate, so the tests do not compare a document only with itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.nitro import NitroPolicy
from enclave.attestation.nitro.abi import parse_document
from enclave.attestation.nitro.verify import verify_nitro
from enclave.attestation.nitro import policy as nitro_policy
from enclave.attestation.nitro import verify as nitro_verify
from enclave.attestation.result import Check, Verdict

DEBUG = "debug-mode-blindai"
NONCE = "prod-nonce-evervault"
TLS = "tls-binding-evervault"
PUBKEY = "prod-pubkey-oyster"
PCR16 = "prod-pcr16-oyster"
MOCK = "mock-chain-oyster"
REAL = (DEBUG, NONCE, TLS, PUBKEY, PCR16)

# Document timestamps (ms) from the SOURCE.md files.
TIMESTAMPS = {
    DEBUG: 1679495307405,  # 2023-03-22T14:28:27.405Z
    NONCE: 1665651482136,  # 2022-10-13T08:58:02.136Z
    TLS: 1674047239280,  # 2023-01-18T13:07:19.280Z
    PUBKEY: 1734075478960,  # 2024-12-13T07:37:58.960Z
    PCR16: 1745922759691,  # 2025-04-29T10:32:39.691Z
    MOCK: 1734080745008,  # 2024-12-13T09:05:45.008Z
}
MODULE_IDS = {
    DEBUG: "i-0592d6788f2a6df5f-enc018709b898cd0326",
    NONCE: "i-020b6af9246d90e92-enc0183d09086c24190",
    TLS: "i-0ec0e572c8263d8ff-enc0185c4fd382eeb25",
    PUBKEY: "i-0f1cd77d37fd8bcc9-enc018e7aa61e2040ff",
    PCR16: "i-07859a25773d39fcc-enc01968119042c6454",
    MOCK: "i-0d69bec447a037a2a-enc01939aab191aadd2",
}
PUBKEY_PCRS = {
    0: bytes.fromhex(
        "189038eccf28a3a098949e402f3b3d86a876f4915c5b02d546abb5d8c507ceb1755b8192d8cfca66e8f226160ca4c7a6"
    ),
    1: bytes.fromhex(
        "5d3938eb05288e20a981038b1861062ff4174884968a39aee5982b312894e60561883576cc7381d1a7d05b809936bd16"
    ),
    2: bytes.fromhex(
        "6c3ef363c488a9a86faa63a44653fd806e645d4540b40540876f3b811fc1bceecf036a4703f07587c501ee45bb56a1aa"
    ),
}
PCR16_PCR0 = bytes.fromhex(
    "2984ab215649c40ffe8f8b80cfadee47f1b06760f7d9257981f64b2758c347fafa6c733591b25e75ae7e9d1cb86ad5df"
)
AWS_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"  # roots/SOURCE.md

#: Platform tests: the workload is not what they test.
ANY = NitroPolicy(any_measurement=True)
ANY_DEBUG = NitroPolicy(any_measurement=True, allow_debug=True)


def at_ms(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)


def check(verdict: Verdict, name: str) -> Check:
    found = [c for c in verdict.checks if c.name == name]
    assert len(found) == 1, f"expected one {name!r} check in:\n{verdict.document()}"
    return found[0]


def failed(verdict: Verdict) -> list[str]:
    return [c.name for c in verdict.failures]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def rebuild(raw: bytes, mutate: Callable[[dict[str, Any]], None]) -> bytes:
    """Re-encode the document after changing its payload (the signature no longer covers it)."""
    protected, unprotected, payload, signature = cbor2.loads(raw)
    doc = cbor2.loads(payload)
    mutate(doc)
    return cbor2.dumps([protected, unprotected, cbor2.dumps(doc), signature])


def verify(raw: bytes, policy: NitroPolicy = ANY, *, now: datetime.datetime | None = None,
           user_data: bytes | None = None, nonce: bytes | None = None) -> Verdict:
    return verify_nitro(raw, policy, now=now, expected_user_data=user_data, expected_nonce=nonce)


@pytest.fixture(scope="session")
def nitro_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "aws-nitro"


@pytest.fixture(scope="session")
def load(nitro_dir: Path) -> Callable[[str], bytes]:
    def load(sample: str) -> bytes:
        return (nitro_dir / sample / "attestation_doc.cbor").read_bytes()

    return load


# --- the pinned root ------------------------------------------------------------------------------------------------


def test_pinned_root_is_the_shared_aws_root(evidence_dir: Path, load: Callable[[str], bytes]) -> None:
    pem = (evidence_dir / "roots" / "aws_nitro_enclaves_root_g1.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == nitro_verify.AWS_NITRO_ROOT_G1_SHA256 == AWS_ROOT_G1_SHA256
    for sample in REAL:
        assert parse_document(load(sample)).cabundle[0] == der
    assert parse_document(load(MOCK)).cabundle[0] != der


def test_wrong_pin_fails_closed(monkeypatch: pytest.MonkeyPatch, load: Callable[[str], bytes]) -> None:
    monkeypatch.setattr(nitro_verify, "AWS_NITRO_ROOT_G1_SHA256", hashlib.sha256(b"another root").hexdigest())
    v = verify(load(PCR16))
    assert failed(v) == ["root pinned", "certificate chain"]
    assert not v.ok


# --- every sample, with its documented result -----------------------------------------------------------------------

# (sample, policy, verdict ok, failed checks)
SAMPLES = [
    (DEBUG, ANY, False, ["debug mode"]),
    (DEBUG, ANY_DEBUG, True, []),
    (NONCE, ANY, True, []),
    (TLS, ANY, True, []),
    (PUBKEY, ANY, True, []),
    (PCR16, ANY, True, []),
    (MOCK, ANY, False, ["root pinned", "certificate chain"]),
]


@pytest.mark.parametrize("explicit_now", [False, True], ids=["doc-time", "explicit-now"])
@pytest.mark.parametrize(("sample", "policy", "ok", "failures"), SAMPLES)
def test_sample(load: Callable[[str], bytes], sample: str, policy: NitroPolicy, ok: bool, failures: list[str],
                explicit_now: bool) -> None:
    now = at_ms(TIMESTAMPS[sample]) if explicit_now else None
    v = verify(load(sample), policy, now=now)
    assert v.ok is ok, v.document()
    assert failed(v) == failures, v.document()
    # the signature verifies on every sample, the self-made chain included: only the pin rejects MOCK
    assert check(v, "COSE signature").ok is True
    assert check(v, "parse").ok is True
    assert check(v, "key binding").detail == "binding skipped (--no-binding)"
    assert v.claims["timestamp"] == TIMESTAMPS[sample]
    assert v.claims["module_id"] == MODULE_IDS[sample]
    assert v.claims["digest"] == "SHA384"
    doc = parse_document(load(sample))
    assert v.measurement == doc.pcr0
    assert v.claims["pcrs"] == {str(i): p.hex() for i, p in doc.pcrs.items()}
    assert ("freshness not established" in check(v, "certificate validity").detail) is not explicit_now
    json.dumps(v.to_json())


def test_debug_sample_signature_and_chain_pass_debug_policy_fails(load: Callable[[str], bytes]) -> None:
    raw = load(DEBUG)
    doc = parse_document(raw)
    assert doc.debug and doc.pcr0 == bytes(48) and doc.pcrs[1] == bytes(48) and doc.pcrs[2] == bytes(48)
    assert doc.pcrs[4].hex().startswith("77bbaf80") and doc.pcrs[4].hex().endswith("15a759")
    assert (doc.public_key, doc.user_data, doc.nonce) == (b"my super secret key", b"hello, world!", None)
    strict = verify(raw, NitroPolicy(pcrs=({0: bytes(48)},)), user_data=b"hello, world!")
    for name in ("root pinned", "certificate chain", "certificate validity", "COSE signature", "key binding"):
        assert check(strict, name).ok is True, strict.document()
    assert failed(strict) == ["debug mode"]
    assert "all zero" in check(strict, "debug mode").found
    lenient = verify(raw, NitroPolicy(pcrs=({0: bytes(48)},), allow_debug=True), user_data=b"hello, world!")
    assert lenient.ok, lenient.document()
    assert "debug enclave accepted by policy" in check(lenient, "debug mode").detail
    # upstream also asserts failure four hours later
    late = verify(raw, ANY_DEBUG, now=at_ms(TIMESTAMPS[DEBUG]) + datetime.timedelta(hours=4))
    assert failed(late) == ["certificate validity"]


def test_production_samples_are_not_debug(load: Callable[[str], bytes]) -> None:
    for sample in (NONCE, TLS, PUBKEY, PCR16):
        assert not parse_document(load(sample)).debug
        assert check(verify(load(sample)), "debug mode").ok is True


def test_mock_chain_is_signed_by_its_own_root_but_not_pinned(load: Callable[[str], bytes]) -> None:
    v = verify(load(MOCK), ANY_DEBUG)
    root = check(v, "root pinned")
    assert root.ok is False and "(root)" in root.found
    assert "not anchored" in check(v, "certificate chain").detail
    assert check(v, "COSE signature").ok is True
    assert not v.ok


# --- key binding and nonce ------------------------------------------------------------------------------------------


def test_tls_binding_user_data_is_the_tls_certificate_spki(nitro_dir: Path, load: Callable[[str], bytes]) -> None:
    raw = load(TLS)
    cert = x509.load_der_x509_certificate((nitro_dir / TLS / "tls_cert.der").read_bytes())
    # the document travels in the TLS certificate: hex of the whole COSE_Sign1 as the first label of a SAN
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert [bytes.fromhex(n.split(".", 1)[0]) for n in names if len(n) > 1000] == [raw]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert len(spki) == 120
    v = verify(raw, user_data=spki)
    assert check(v, "key binding").ok is True
    assert v.ok, v.document()
    assert v.report_data == spki
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    for wrong in (other, flip(spki, 119), spki[:-1], spki + b"\x00", b""):
        bad = verify(raw, user_data=wrong)
        assert failed(bad) == ["key binding"], bad.document()
    # the key is in user_data, not public_key
    assert failed(verify(raw, NitroPolicy(any_measurement=True, binding_field="public_key"), user_data=spki)) == [
        "key binding"]


def test_public_key_binding(load: Callable[[str], bytes]) -> None:
    raw = load(PUBKEY)
    doc = parse_document(raw)
    key = doc.public_key
    assert key is not None and len(key) == 64
    assert key.hex().startswith("e646f8b0") and key.hex().endswith("9262f4bb")  # SOURCE.md
    assert doc.user_data is None and doc.nonce is None
    policy = NitroPolicy(pcrs=(PUBKEY_PCRS,), binding_field="public_key")
    v = verify(raw, policy, user_data=key)
    assert v.ok, v.document()
    assert check(v, "measurement").detail == "matches entry 0 (PCR0, PCR1, PCR2)"
    assert v.report_data == key
    assert failed(verify(raw, policy, user_data=flip(key, 0))) == ["key binding"]
    # with the default binding field the (null) user_data is compared: FAIL
    default = verify(raw, dataclasses.replace(policy, binding_field="user_data"), user_data=key)
    assert failed(default) == ["key binding"]
    assert "user_data null" in check(default, "key binding").found


def test_pcr16_sample_has_17_pcrs_and_empty_user_data(load: Callable[[str], bytes]) -> None:
    raw = load(PCR16)
    doc = parse_document(raw)
    assert sorted(doc.pcrs) == list(range(17))
    assert doc.pcr0 == PCR16_PCR0
    assert doc.pcrs[16].hex().startswith("30e84b2d") and doc.pcrs[16].hex().endswith("b458cb9e")
    assert doc.user_data == b"" and doc.nonce is None
    key = doc.public_key
    assert key is not None and len(key) == 32 and key.hex().startswith("2af77183") and key.hex().endswith("ada084")
    # an empty user_data binds the empty string, and nothing else
    assert verify(raw, user_data=b"").ok
    assert failed(verify(raw, user_data=b"\x00")) == ["key binding"]
    assert verify(raw, NitroPolicy(any_measurement=True, binding_field="public_key"), user_data=key).ok
    # PCR16 can be pinned alongside PCR0
    assert verify(raw, NitroPolicy(pcrs=({0: PCR16_PCR0, 16: doc.pcrs[16]},))).ok
    v = verify(raw, NitroPolicy(pcrs=({0: PCR16_PCR0, 16: bytes(48)},)))
    assert failed(v) == ["measurement"] and "PCR16" in check(v, "measurement").detail


def test_nonce(load: Callable[[str], bytes]) -> None:
    raw = load(NONCE)
    doc = parse_document(raw)
    nonce = doc.nonce
    assert nonce is not None and len(nonce) == 256 and nonce.hex().startswith("cb3dc2eb76c0c134")
    assert doc.public_key is None and doc.user_data is None
    v = verify(raw, nonce=nonce)
    assert v.ok and check(v, "nonce").ok is True
    for wrong in (flip(nonce, 255), nonce[:32], bytes(256)):
        assert failed(verify(raw, nonce=wrong)) == ["nonce"]
    # a nonce was asked for but the document has none
    assert failed(verify(load(PUBKEY), nonce=nonce)) == ["nonce"]
    # a binding value asked of a document whose user_data is null never passes
    assert failed(verify(raw, user_data=b"anything")) == ["key binding"]


# --- measurement allow list -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entries", "ok", "detail"), [
    ((PUBKEY_PCRS,), True, "matches entry 0 (PCR0, PCR1, PCR2)"),
    (({0: PUBKEY_PCRS[0]},), True, "matches entry 0 (PCR0)"),
    (({0: PCR16_PCR0}, PUBKEY_PCRS), True, "matches entry 1"),
    ((), False, ""),
    (({**PUBKEY_PCRS, 2: flip(PUBKEY_PCRS[2], 47)},), False, "entry 0: PCR2 differ"),
    (({0: PUBKEY_PCRS[1]},), False, "entry 0: PCR0 differ"),
    (({1: PUBKEY_PCRS[1], 2: PUBKEY_PCRS[2]},), False, "no PCR0"),
    (({0: PUBKEY_PCRS[0], 16: bytes(48)},), False, "PCR16 absent"),  # this document has PCR0..15 only
    (({0: PUBKEY_PCRS[0].hex()},), False, "PCR0 differ"),  # not bytes: never matches
])
def test_measurement_allow_list(load: Callable[[str], bytes], entries: tuple[dict[int, Any], ...], ok: bool,
                                detail: str) -> None:
    v = verify(load(PUBKEY), NitroPolicy(pcrs=entries))
    m = check(v, "measurement")
    assert m.ok is ok, v.document()
    assert detail in m.detail
    assert v.ok is ok


def test_empty_allow_list_fails_closed(load: Callable[[str], bytes]) -> None:
    for sample in REAL:
        v = verify(load(sample), NitroPolicy(allow_debug=True))
        assert failed(v) == ["measurement"]
        assert "nothing is accepted" in check(v, "measurement").expected


# --- time -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", REAL)
def test_expired_and_not_yet_valid_leaf_fail(load: Callable[[str], bytes], sample: str) -> None:
    raw = load(sample)
    leaf, _ = parse_document(raw).certificates()
    hour = datetime.timedelta(hours=1)
    assert verify(raw, ANY_DEBUG, now=leaf.not_valid_after_utc).ok
    expired = verify(raw, ANY_DEBUG, now=leaf.not_valid_after_utc + hour)
    assert failed(expired) == ["certificate validity"], expired.document()
    early = verify(raw, ANY_DEBUG, now=leaf.not_valid_before_utc - datetime.timedelta(seconds=1))
    assert failed(early) == ["certificate validity"]
    assert not verify(raw, ANY_DEBUG, now=datetime.datetime(2049, 10, 29, tzinfo=datetime.UTC)).ok


def test_naive_time_is_refused(load: Callable[[str], bytes]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(load(PCR16), now=datetime.datetime(2025, 4, 29, 10, 32))


def test_unknown_binding_field_is_refused(load: Callable[[str], bytes]) -> None:
    with pytest.raises(ValueError, match="binding_field"):
        verify(load(PCR16), NitroPolicy(any_measurement=True, binding_field="nonce"))


# --- tampering ------------------------------------------------------------------------------------------------------


def _payload_offset(raw: bytes) -> int:
    doc = parse_document(raw)
    offset = raw.find(doc.payload)
    assert offset > 0 and raw.count(doc.payload) == 1
    return offset


@pytest.mark.parametrize("sample", REAL)
@pytest.mark.parametrize("field", ["module_id", "timestamp", "pcr0", "pcr4", "last pcr", "bound value"])
def test_bit_flip_in_a_payload_field_fails_the_signature(load: Callable[[str], bytes], sample: str,
                                                         field: str) -> None:
    raw = load(sample)
    doc = parse_document(raw)
    bound = doc.user_data or doc.public_key or doc.nonce
    assert bound
    value = {
        "module_id": doc.module_id.encode(),
        "timestamp": doc.timestamp_ms.to_bytes(8, "big"),  # uint64 in CBOR: 1b + 8 bytes big-endian
        "pcr0": doc.pcr0,
        "pcr4": doc.pcrs[4],
        "last pcr": doc.pcrs[max(doc.pcrs)],
        "bound value": bound,
    }[field]
    start = raw.find(value, _payload_offset(raw))
    assert start > 0
    tampered = flip(raw, start + len(value) - 1)
    v = verify(tampered, ANY_DEBUG)
    assert check(v, "COSE signature").ok is False, v.document()
    assert not v.ok


def test_bit_flips_across_the_payload_never_pass(load: Callable[[str], bytes]) -> None:
    """Every sampled flip either makes the document malformed or fails the signature; nothing else escapes."""
    raw = load(PCR16)
    start = _payload_offset(raw)
    end = start + len(parse_document(raw).payload)
    malformed = signature_failed = 0
    for offset in range(start - 4, end, 17):
        try:
            v = verify(flip(raw, offset, 0x10), ANY_DEBUG)
        except EvidenceFormatError:
            malformed += 1
            continue
        assert not v.ok
        assert check(v, "COSE signature").ok is False, offset
        signature_failed += 1
    assert malformed and signature_failed > 100


@pytest.mark.parametrize("sample", REAL)
def test_bit_flip_in_the_signature_fails(load: Callable[[str], bytes], sample: str) -> None:
    raw = load(sample)
    for offset in (len(raw) - 96, len(raw) - 49, len(raw) - 48, len(raw) - 1):
        v = verify(flip(raw, offset), ANY_DEBUG)
        assert failed(v) == ["COSE signature"], v.document()
    sig = raw[-96:]
    for other in (sig[48:] + sig[:48], bytes(96), b"\xff" * 96):
        assert failed(verify(raw[:-96] + other, ANY_DEBUG)) == ["COSE signature"]


@pytest.mark.parametrize("sample", (NONCE, PUBKEY, PCR16))
@pytest.mark.parametrize(("which", "fails"), [
    (0, ["root pinned", "certificate chain", "COSE signature"]),
    (1, ["certificate chain", "COSE signature"]),
    (2, ["certificate chain", "COSE signature"]),
    (3, ["certificate chain", "COSE signature"]),
    ("leaf", ["certificate chain", "COSE signature"]),
])
def test_bit_flip_in_a_certificate_fails(load: Callable[[str], bytes], sample: str, which: int | str,
                                         fails: list[str]) -> None:
    raw = load(sample)
    doc = parse_document(raw)
    der = doc.certificate if which == "leaf" else doc.cabundle[int(which)]
    start = raw.find(der)
    assert start > 0
    # the last byte is inside the certificate's own ECDSA signature: the DER still parses
    v = verify(flip(raw, start + len(der) - 1), ANY_DEBUG)
    assert failed(v) == fails, v.document()


@pytest.mark.parametrize("drop", [1, 2, 3])
def test_dropping_an_intermediate_fails(load: Callable[[str], bytes], drop: int) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        del doc["cabundle"][drop]

    v = verify(rebuild(load(PCR16), mutate), ANY_DEBUG)
    assert check(v, "certificate chain").ok is False, v.document()
    assert "not issued by" in check(v, "certificate chain").detail
    assert not v.ok


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(cabundle=d["cabundle"][:1]),  # root only
    lambda d: d.update(cabundle=d["cabundle"][::-1]),  # reversed
    lambda d: d.update(cabundle=d["cabundle"][1:]),  # no root
    lambda d: d.update(cabundle=[*d["cabundle"], d["certificate"]]),  # the leaf as its own issuer
    lambda d: d.update(certificate=d["cabundle"][3]),  # the instance CA as the signer
], ids=["root-only", "reversed", "no-root", "leaf-in-bundle", "ca-as-leaf"])
def test_rearranged_bundle_fails(load: Callable[[str], bytes], mutate: Callable[[dict[str, Any]], None]) -> None:
    v = verify(rebuild(load(PCR16), mutate), ANY_DEBUG)
    assert check(v, "certificate chain").ok is False, v.document()
    assert not v.ok


def test_chain_from_another_document_does_not_sign_this_one(load: Callable[[str], bytes]) -> None:
    """A genuine leaf and bundle from another enclave: chain PASS, COSE signature FAIL."""
    other = parse_document(load(PUBKEY))

    def mutate(doc: dict[str, Any]) -> None:
        doc["certificate"] = other.certificate
        doc["cabundle"] = list(other.cabundle)

    v = verify(rebuild(load(PCR16), mutate), ANY_DEBUG, now=at_ms(TIMESTAMPS[PUBKEY]))
    assert check(v, "certificate chain").ok is True
    assert check(v, "COSE signature").ok is False
    assert check(v, "document timestamp").ok is False  # PCR16's timestamp is months after that leaf expired
    assert not v.ok


def test_mock_root_substituted_into_a_real_bundle_fails(load: Callable[[str], bytes]) -> None:
    mock_root = parse_document(load(MOCK)).cabundle[0]

    def mutate(doc: dict[str, Any]) -> None:
        doc["cabundle"][0] = mock_root

    v = verify(rebuild(load(PCR16), mutate), ANY_DEBUG)
    assert check(v, "root pinned").ok is False
    assert check(v, "certificate chain").ok is False


def test_tagged_cose_sign1_is_accepted(load: Callable[[str], bytes]) -> None:
    raw = load(PCR16)
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(raw)))
    assert tagged[:1] == b"\xd2"
    doc = parse_document(tagged)
    assert doc.tagged and not parse_document(raw).tagged
    assert verify(tagged).ok


# --- malformed documents --------------------------------------------------------------------------------------------


def _outer(raw: bytes, index: int, value: Any) -> bytes:
    items = cbor2.loads(raw)
    items[index] = value
    return bytes(cbor2.dumps(items))


def _payload(**changes: Any) -> Callable[[bytes], bytes]:
    def mutate(raw: bytes) -> bytes:
        def apply(doc: dict[str, Any]) -> None:
            for key, value in changes.items():
                if value is _DELETE:
                    del doc[key]
                else:
                    doc[key] = value

        return rebuild(raw, apply)

    return mutate


def _pcrs(change: Callable[[dict[Any, Any]], None]) -> Callable[[bytes], bytes]:
    def mutate(raw: bytes) -> bytes:
        def apply(doc: dict[str, Any]) -> None:
            change(doc["pcrs"])

        return rebuild(raw, apply)

    return mutate


def _duplicate_key(raw: bytes) -> bytes:
    protected, unprotected, payload, signature = cbor2.loads(raw)
    assert payload[0] == 0xA9  # a map of nine entries
    dup = b"\xaa" + payload[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"\x01")
    return bytes(cbor2.dumps([protected, unprotected, dup, signature]))


def _non_minimal_pcr_index(raw: bytes) -> bytes:
    protected, unprotected, payload, signature = cbor2.loads(raw)
    key = cbor2.dumps("pcrs")
    first = payload.index(key) + len(key) + 1  # past the map header: the first PCR index, 0
    assert payload[first] == 0x00
    bad = payload[:first] + b"\x18\x00" + payload[first + 1:]  # 0 as a one-byte-argument integer
    return bytes(cbor2.dumps([protected, unprotected, bad, signature]))


_DELETE = object()


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r + b"\x00", "minimal"),
    (lambda r: b"\x9f" + r[1:] + b"\xff", "minimal"),  # indefinite-length array
    (lambda r: r[:-1], "not valid CBOR"),
    (lambda r: b"", "0 bytes"),
    (lambda r: cbor2.dumps(cbor2.CBORTag(17, cbor2.loads(r))), "tag 17"),
    (lambda r: cbor2.dumps(cbor2.loads(r)[:3]), "array of 4"),
    (lambda r: cbor2.dumps({"a": 1}), "array of 4"),
    (lambda r: _outer(r, 0, bytes.fromhex("a10126")), "protected header"),  # ES256
    (lambda r: _outer(r, 0, cbor2.dumps({1: -35, 4: b"kid"})), "protected header"),
    (lambda r: _outer(r, 0, b""), "protected header"),
    (lambda r: _outer(r, 1, {4: b"kid"}), "unprotected"),
    (lambda r: _outer(r, 2, b""), "payload"),
    (lambda r: _outer(r, 2, "text"), "payload"),
    (lambda r: _outer(r, 3, bytes(64)), "96 bytes"),
    (lambda r: _outer(r, 2, cbor2.dumps([1, 2])), "must be a map"),
    (_duplicate_key, "minimal"),
    (_non_minimal_pcr_index, "minimal"),
    (_payload(module_id=""), "module_id"),
    (_payload(module_id=b"i-0"), "module_id"),
    (_payload(digest="SHA256"), "digest"),
    (_payload(digest=b"SHA384"), "digest"),
    (_payload(timestamp=0), "timestamp"),
    (_payload(timestamp=-1), "timestamp"),
    (_payload(timestamp=True), "timestamp"),
    (_payload(timestamp=253402300800000), "timestamp"),  # 10000-01-01: not a datetime
    (_payload(timestamp=(1 << 64) - 1), "timestamp"),
    (_payload(timestamp=1.5), "timestamp"),
    (_payload(timestamp=_DELETE), "lacks timestamp"),
    (_payload(certificate=_DELETE), "lacks certificate"),
    (_payload(cabundle=[]), "cabundle"),
    (_payload(cabundle=[b""]), r"cabundle\[0\]"),
    (_payload(cabundle=[b"\x30" * 1025]), r"cabundle\[0\]"),
    (_payload(cabundle=[b"\x30\x00"] * 9), "cabundle"),
    (_payload(certificate=b"not a certificate"), "certificate is not a parsable"),
    (_payload(public_key=b""), "public_key"),
    (_payload(user_data=b"\x00" * 513), "user_data"),
    (_payload(nonce="abc"), "nonce"),
    (_payload(extra=b""), "unknown fields"),
    (_payload(pcrs={}), "pcrs"),
    (_payload(pcrs=[b"\x00" * 48]), "pcrs"),
    (_pcrs(lambda p: p.update({0: bytes(32)})), "PCR0 must be 48"),
    (_pcrs(lambda p: p.update({5: bytes(64)})), "PCR5 must be 48"),
    (_pcrs(lambda p: p.update({32: bytes(48)})), "PCR index"),
    (_pcrs(lambda p: p.update({"17": bytes(48)})), "PCR index"),
    (_pcrs(lambda p: p.pop(1)), "lacks PCR1"),
])
def test_malformed_documents_are_refused(load: Callable[[str], bytes], mutate: Callable[[bytes], bytes],
                                         message: str) -> None:
    bad = mutate(load(PCR16))
    with pytest.raises(EvidenceFormatError, match=message):
        verify(bad)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(EvidenceFormatError, match="must be bytes"):
        parse_document("84")  # type: ignore[arg-type]


def test_optional_fields_may_be_absent_instead_of_null(load: Callable[[str], bytes]) -> None:
    raw = _payload(public_key=_DELETE, user_data=_DELETE, nonce=_DELETE)(load(PUBKEY))
    doc = parse_document(raw)
    assert (doc.public_key, doc.user_data, doc.nonce) == (None, None, None)
    assert failed(verify(raw)) == ["COSE signature"]


# --- policy from TOML -----------------------------------------------------------------------------------------------


def _toml_pcrs(pcrs: dict[int, bytes]) -> str:
    return "{ " + ", ".join(f'{i} = "{p.hex()}"' for i, p in pcrs.items()) + " }"


def test_policy_from_toml_drives_the_verifier(load: Callable[[str], bytes]) -> None:
    text = f"""
        [nitro]
        pcrs = [{_toml_pcrs({0: PCR16_PCR0})}, {_toml_pcrs(PUBKEY_PCRS)}]
        binding_field = "public_key"
    """
    policy = nitro_policy.from_dict(tomllib.loads(text)["nitro"])
    assert policy == NitroPolicy(pcrs=({0: PCR16_PCR0}, PUBKEY_PCRS), binding_field="public_key")
    assert NitroPolicy.from_dict(tomllib.loads(text)["nitro"]) == policy
    raw = load(PUBKEY)
    key = parse_document(raw).public_key
    v = verify(raw, policy, user_data=key)
    assert v.ok, v.document()
    assert check(v, "measurement").detail == "matches entry 1 (PCR0, PCR1, PCR2)"
    wrong = f'[nitro]\npcrs = [{_toml_pcrs({**PUBKEY_PCRS, 2: bytes(48)})}]\nbinding_field = "public_key"'
    assert failed(verify(raw, NitroPolicy.from_dict(tomllib.loads(wrong)["nitro"]), user_data=key)) == [
        "measurement"]
    assert NitroPolicy.from_dict({}) == NitroPolicy()
    assert not verify(raw, NitroPolicy.from_dict({})).ok


@pytest.mark.parametrize(("table", "message"), [
    ({"any_measurement": True}, "unknown keys"),
    ({"pcr": []}, "unknown keys"),
    ({"pcrs": {"0": "00" * 48}}, "array"),
    ({"pcrs": [{}]}, "non-empty"),
    ({"pcrs": [{"1": "00" * 48}]}, "PCR0"),
    ({"pcrs": [{"0": "00" * 47}]}, "96 hex"),
    ({"pcrs": [{"0": "zz" * 48}]}, "96 hex"),
    ({"pcrs": [{"0": 0}]}, "96 hex"),
    ({"pcrs": [{"0": "00" * 48, "32": "00" * 48}]}, "0..31"),
    ({"pcrs": [{"0": "00" * 48, "01": "00" * 48}]}, "0..31"),
    ({"pcrs": [{"0": "00" * 48, "-1": "00" * 48}]}, "0..31"),
    ({"pcrs": [{"0": "00" * 48, "x": "00" * 48}]}, "0..31"),
    ({"allow_debug": "yes"}, "allow_debug"),
    ({"binding_field": "nonce"}, "binding_field"),
])
def test_policy_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        NitroPolicy.from_dict(table)
