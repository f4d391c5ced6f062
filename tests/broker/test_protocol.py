"""KBS wire shapes byte for byte against the examples in shared/notes/trustee-kbs.md, the binding, and the JWE."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey

from enclave.attestation import SimulatedProvider
from enclave.broker.protocol import (
    ERROR_TYPE_PREFIX,
    Attestation,
    AuthRequest,
    Challenge,
    KbsProtocolError,
    b64url,
    b64url_decode,
    canonical_tee_pubkey,
    encode_error,
    jcs,
    jwe_encrypt,
    kbs_report_data,
    parse_resource_path,
)
from enclave.kbs_client import KbsClientError, TeeKey
from tests.helpers import shared_data

NOTES = shared_data().parent / "notes" / "trustee-kbs.md"


@cache
def notes() -> str:
    assert NOTES.is_file(), f"{NOTES} is missing (set VEIL_SHARED_DATA)"
    return NOTES.read_text()


def notes_json_block(heading: str) -> str:
    """The first ```json block after ``heading`` in the notes."""
    text = notes()
    m = re.search(r"```json\n(.*?)```", text[text.index(heading):], re.DOTALL)
    assert m, heading
    return m.group(1)


def notes_inline(pattern: str) -> str:
    m = re.search(pattern, notes())
    assert m, pattern
    return m.group(1)


def ec_jwk(key: ec.EllipticCurvePrivateKey, crv: str = "P-256", size: int = 32) -> dict[str, str]:
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "alg": "ECDH-ES+A256KW", "x": b64url(n.x.to_bytes(size, "big")),
            "y": b64url(n.y.to_bytes(size, "big"))}


# -- message shapes ------------------------------------------------------------------------------------------------


def test_request_is_the_notes_example_byte_for_byte() -> None:
    example = json.loads(notes_json_block("### Request (`POST /kbs/v0/auth`)"))
    assert AuthRequest(tee="snp").encode() == orjson.dumps(example)
    assert AuthRequest.decode(orjson.dumps(example)) == AuthRequest(tee="snp", extra_params=example["extra-params"])


@pytest.mark.parametrize("body, why", [
    (b'{"version": "0.3.0", "tee": "snp", "extra-params": ""}', "Version Mismatch"),
    (b'{"version": "0.4.0", "tee": "nitro", "extra-params": ""}', "unknown tee"),
    (b'{"version": "0.4.0", "tee": "snp"}', "extra-params"),
    (b"[1]", "JSON object"),
    (b"{", "not JSON"),
])
def test_request_refused(body: bytes, why: str) -> None:
    with pytest.raises(KbsProtocolError, match=why) as info:
        AuthRequest.decode(body)
    assert info.value.status == 401


def test_challenge_is_the_notes_example_shape() -> None:
    example = json.loads(notes_json_block("### Challenge (response to `auth`)"))
    ch = Challenge.new()
    assert list(example) == ["nonce", "extra-params"] and example["extra-params"] == ""
    assert ch.encode() == orjson.dumps({**example, "nonce": ch.nonce})
    assert len(base64.b64decode(ch.nonce, validate=True)) == 32 and ch.nonce.endswith("=")  # standard, padded
    assert ch.hash_algorithm == "sha384"
    assert Challenge(nonce="n", extra_params={"selected-hash-algorithm": "SHA512"}).hash_algorithm == "sha512"
    with pytest.raises(KbsProtocolError):
        _ = Challenge(nonce="n", extra_params={"selected-hash-algorithm": "md5"}).hash_algorithm


def test_attestation_is_the_notes_example_byte_for_byte() -> None:
    text = re.sub(r"/\*.*?\*/", "", notes_json_block("### Attestation (`POST /kbs/v0/attest`, cookie required)"))
    example: dict[str, Any] = json.loads(text)
    key = TeeKey()
    # Member order and names exactly as the notes show them (kebab-case outside, underscores in tee-evidence).
    assert list(example) == ["init-data", "runtime-data", "tee-evidence"]
    assert list(example["runtime-data"]) == ["nonce", "tee-pubkey"]
    assert list(example["runtime-data"]["tee-pubkey"]) == list(key.jwk) == ["kty", "crv", "alg", "x", "y"]
    assert {k: example["runtime-data"]["tee-pubkey"][k] for k in ("kty", "crv", "alg")} == \
        {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW"}
    assert list(example["tee-evidence"]) == ["primary_evidence", "additional_evidence"]

    nonce = Challenge.new().nonce
    bundle = orjson.loads(SimulatedProvider().collect(kbs_report_data(nonce, key.jwk)).to_json())
    ours = Attestation(nonce=nonce, tee_pubkey=key.jwk, primary_evidence=bundle)
    example["init-data"] = None  # optional; kbs-types serializes an absent one as null, and so do we
    example["runtime-data"]["nonce"] = nonce
    example["runtime-data"]["tee-pubkey"].update(x=key.jwk["x"], y=key.jwk["y"])
    example["tee-evidence"] = {"primary_evidence": bundle, "additional_evidence": ""}
    assert ours.encode() == orjson.dumps(example)
    assert Attestation.decode(ours.encode()) == ours


def test_attestation_decode_keeps_only_known_jwk_members_like_trustee() -> None:
    key = TeeKey()
    body = orjson.dumps({"runtime-data": {"nonce": "n", "tee-pubkey": {**key.jwk, "use": "enc", "kid": "x"}},
                         "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}})
    assert Attestation.decode(body).tee_pubkey == key.jwk
    assert Attestation.decode(body).init_data is None


@pytest.mark.parametrize("jwk, why", [
    ({"kty": "RSA", "alg": "RSA1_5", "n": "AQAB", "e": "AQAB"}, "not supported"),
    ({"kty": "EC", "crv": "P-384", "alg": "ECDH-ES+A256KW", "x": "", "y": ""}, "not supported"),
    ({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES", "x": "", "y": ""}, "not supported"),
    ({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)},
     "malformed"),
    ({"kty": "AKP", "alg": "ML-KEM-768+A192KW", "pub": "x"}, "not supported"),
    ({"kty": "EC", "crv": "P-256"}, "malformed"),
])
def test_tee_pubkey_refused(jwk: dict[str, str], why: str) -> None:
    with pytest.raises(KbsProtocolError, match=why):
        canonical_tee_pubkey(jwk)


def test_small_rsa_key_refused() -> None:
    n = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    with pytest.raises(KbsProtocolError, match="2048"):
        canonical_tee_pubkey({"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64url(n.n.to_bytes(128, "big")),
                              "e": b64url(n.e.to_bytes(3, "big"))})


def test_error_and_token_shapes_are_the_notes() -> None:
    example = json.loads(notes_inline(r"Body \(RFC 7807 style\):\s*`(\{.*?\})`"))
    assert list(example) == ["type", "detail"]
    assert example["type"] == f"{ERROR_TYPE_PREFIX}/<Type>"
    assert encode_error("PolicyDeny", "Access denied by policy") == orjson.dumps(
        {"type": example["type"].replace("<Type>", "PolicyDeny"), "detail": "Access denied by policy"})
    assert list(json.loads(notes_inline(r"### Attestation response\n`(\{.*?\})`"))) == ["token"]


def test_resource_path_checked() -> None:
    assert parse_resource_path("default", "ohttp", "keyset") == "default/ohttp/keyset"
    for bad in (("..", "a", "b"), ("a", "", "b"), ("a", "b", "c%2F")):
        with pytest.raises(KbsProtocolError) as info:
            parse_resource_path(*bad)
        assert info.value.status == 404 and info.value.type_name == "InvalidRequestPath"


# -- binding -------------------------------------------------------------------------------------------------------


def test_report_data_is_hash_of_jcs_runtime_with_additional_evidence_key() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "X", "y": "Y"}
    # Written out by hand: keys sorted (RFC 8785), "additional-evidence" present and empty, no spaces.
    canonical = (b'{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":'
                 b'{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}')
    assert kbs_report_data("bm9uY2U=", jwk) == hashlib.sha384(canonical).digest()
    assert kbs_report_data("bm9uY2U=", jwk, "sha512") == hashlib.sha512(canonical).digest()
    assert len(kbs_report_data("bm9uY2U=", jwk, "sm3")) == 32


def test_jcs_refuses_non_string_leaves() -> None:
    assert jcs({"b": ["é", "\n"], "a": {}}) == '{"a":{},"b":["é","\\n"]}'.encode()
    with pytest.raises(ValueError):
        jcs({"n": 1})


# -- JWE -----------------------------------------------------------------------------------------------------------


def _header_template(pattern: str) -> str:
    return notes_inline(pattern)


def test_jwe_p256_matches_the_notes_and_opens_with_joserfc() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = jwe_encrypt(ec_jwk(key), b"the secret")
    obj = orjson.loads(body)
    example = json.loads(notes_json_block("### Resource response (JWE, flattened JSON serialization)"))
    assert list(obj) == list(example) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    header = b64url_decode(obj["protected"])
    epk = orjson.loads(header)["epk"]
    template = _header_template(r"Header: `(\{\"alg\":\"ECDH-ES\+A256KW\".*?\}\})`")
    assert header.decode() == template.replace('"x":…', f'"x":"{epk["x"]}"').replace('"y":…', f'"y":"{epk["y"]}"')
    assert len(b64url_decode(obj["encrypted_key"])) == 40
    assert len(b64url_decode(obj["iv"])) == 12 and len(b64url_decode(obj["tag"])) == 16
    assert jwe.decrypt_json(obj, ECKey.import_key(key), algorithms=["ECDH-ES+A256KW", "A256GCM"]).plaintext == \
        b"the secret"


def test_jwe_rsa_oaep_256_and_p521() -> None:
    rk = rsa.generate_private_key(65537, 2048)
    n = rk.public_key().public_numbers()
    obj = orjson.loads(jwe_encrypt({"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64url(n.n.to_bytes(256, "big")),
                                    "e": b64url(n.e.to_bytes(3, "big"))}, b"rsa"))
    template = _header_template(r"or `(\{\"alg\":\"RSA-OAEP-256\",\"enc\":\"A256GCM\"\})`")
    assert b64url_decode(obj["protected"]) == template.encode()
    assert jwe.decrypt_json(obj, RSAKey.import_key(rk), algorithms=["RSA-OAEP-256", "A256GCM"]).plaintext == b"rsa"
    k5 = ec.generate_private_key(ec.SECP521R1())
    obj = orjson.loads(jwe_encrypt(ec_jwk(k5, "P-521", 66), b"p521"))
    assert jwe.decrypt_json(obj, ECKey.import_key(k5), algorithms=["ECDH-ES+A256KW", "A256GCM"]).plaintext == b"p521"


def test_client_opens_only_jwe_to_its_own_key() -> None:
    key = TeeKey()
    assert key.decrypt(jwe_encrypt(key.jwk, b"mine")) == b"mine"
    with pytest.raises(KbsClientError, match="does not decrypt"):
        key.decrypt(jwe_encrypt(TeeKey().jwk, b"someone else's"))
    obj = orjson.loads(jwe_encrypt(key.jwk, b"x"))
    tampered = {**obj, "ciphertext": b64url(bytes([b64url_decode(obj["ciphertext"])[0] ^ 1]))}
    with pytest.raises(KbsClientError):
        key.decrypt(orjson.dumps(tampered))
    rk = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    rsa_jwe = jwe_encrypt({"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64url(rk.n.to_bytes(256, "big")),
                           "e": b64url(rk.e.to_bytes(3, "big"))}, b"x")
    with pytest.raises(KbsClientError, match="must be ECDH-ES"):
        key.decrypt(rsa_jwe)
    with pytest.raises(KbsClientError, match="not a flattened"):
        key.decrypt(b'{"ciphertext": "AA"}')
