"""X-Wing (KEM 0x647A) and HPKE over it, byte for byte against the shared vectors, and cross-checked with
``cryptography``'s own HPKE in both directions.

Vectors: ``xwing_kem_vectors.json`` (draft-connolly-cfrg-xwing-kem-10: keygen, derandomized encapsulation,
decapsulation) and ``hpke_pq_vectors.json`` (draft-ietf-hpke-pq-04: DeriveKeyPair, the key schedule, 10 sealed
messages and 5 exports each, with HKDF-SHA256 and with SHAKE256).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.bindings._rust import openssl as _rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from ohttp import _xwing
from ohttp._xwing import XWingContext, XWingPrivateKey, XWingPublicKey, setup_base_r, setup_base_s
from ohttp.errors import DecryptError, LocalProtocolError, UnsupportedError
from tests.helpers import flip_bit, h, load_vector

KEM = load_vector("xwing_kem_vectors.json")
HPKE_PQ = load_vector("hpke_pq_vectors.json")


def _ids(vectors: list[dict[str, Any]], key: str) -> list[str]:
    return [f"{key}={v[key]}" for v in vectors]


# ---------------------------------------------------------------------------------------------------------------
# The KEM


def test_kem_constants_match_the_vector_file() -> None:
    k = KEM["kem"]
    assert (k["hpke_kem_id"], k["Nsk"], k["Npk"], k["Nenc"], k["Nsecret"]) == (
        _xwing.KEM_ID,
        _xwing.N_SK,
        _xwing.N_PK,
        _xwing.N_ENC,
        _xwing.N_SECRET,
    )
    assert len(KEM["vectors"]) == 3


@pytest.mark.parametrize("v", KEM["vectors"], ids=[f"kem{i}" for i in range(len(KEM["vectors"]))])
def test_kem_keygen_from_seed(v: dict[str, str]) -> None:
    sk = XWingPrivateKey(h(v["seed"]))
    assert sk.private_bytes() == h(v["sk"])
    assert sk.public_bytes == h(v["pk"])


@pytest.mark.parametrize("v", KEM["vectors"], ids=[f"kem{i}" for i in range(len(KEM["vectors"]))])
def test_kem_encapsulate_derandomized(v: dict[str, str], xwing_derand: None) -> None:
    ss, ct = XWingPublicKey(h(v["pk"])).encapsulate(h(v["eseed"]))
    assert ct == h(v["ct"])
    assert ss == h(v["ss"])


@pytest.mark.parametrize("v", KEM["vectors"], ids=[f"kem{i}" for i in range(len(KEM["vectors"]))])
def test_kem_decapsulate(v: dict[str, str]) -> None:
    assert XWingPrivateKey(h(v["sk"])).decapsulate(h(v["ct"])) == h(v["ss"])


def test_kem_randomized_round_trip() -> None:
    sk = XWingPrivateKey.generate()
    ss, ct = XWingPublicKey(sk.public_bytes).encapsulate()
    assert len(ct) == _xwing.N_ENC and len(sk.public_bytes) == _xwing.N_PK
    assert sk.decapsulate(ct) == ss
    assert XWingPublicKey(sk.public_bytes).encapsulate()[1] != ct


def test_kem_seed_expansion_split() -> None:
    # SHAKE256(seed, 96): [0:64] is ML-KEM's (d, z), [64:96] the X25519 scalar; the wrong split gives another key.
    v = KEM["vectors"][0]
    d_z, x = _xwing.expand_seed(h(v["seed"]))
    pk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(d_z).public_key().public_bytes_raw()
    pk_x = x25519.X25519PrivateKey.from_private_bytes(x).public_key().public_bytes_raw()
    assert pk_m + pk_x == h(v["pk"])


def test_kem_tampered_mlkem_ciphertext_gives_another_secret() -> None:
    # Implicit rejection: no error from the KEM, the failure shows at the AEAD.
    v = KEM["vectors"][0]
    sk = XWingPrivateKey(h(v["sk"]))
    assert sk.decapsulate(flip_bit(h(v["ct"]), 100)) != h(v["ss"])


def test_kem_tampered_x25519_share_gives_another_secret() -> None:
    v = KEM["vectors"][0]
    sk = XWingPrivateKey(h(v["sk"]))
    assert sk.decapsulate(flip_bit(h(v["ct"]), 8 * 1100)) != h(v["ss"])


@pytest.mark.parametrize("n", [0, 1, 1119, 1121, 1216])
def test_kem_decapsulate_wrong_length(n: int) -> None:
    with pytest.raises(DecryptError):
        XWingPrivateKey(bytes(32)).decapsulate(bytes(n))


def test_kem_decapsulate_low_order_point_is_a_decrypt_error() -> None:
    v = KEM["vectors"][0]
    with pytest.raises(DecryptError):
        XWingPrivateKey(h(v["sk"])).decapsulate(h(v["ct"])[:1088] + bytes(32))


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_kem_private_key_must_be_the_32_byte_seed(n: int) -> None:
    with pytest.raises(LocalProtocolError):
        XWingPrivateKey(bytes(n))


@pytest.mark.parametrize("n", [0, 32, 1184, 1215, 1217, 1225])
def test_kem_public_key_wrong_length(n: int) -> None:
    with pytest.raises(UnsupportedError):
        XWingPublicKey(os.urandom(n))


def test_kem_public_key_invalid_mlkem_encapsulation_key() -> None:
    # FIPS 203 modulus check: a coefficient >= q (0xfff in the first 12 bits) is refused (hpke-pq: an EncapError).
    pk = h(KEM["vectors"][0]["pk"])
    with pytest.raises(UnsupportedError):
        XWingPublicKey(b"\xff\xff" + pk[2:])


def test_kem_low_order_recipient_x25519_is_refused() -> None:
    pk = h(KEM["vectors"][0]["pk"])[:1184] + bytes(32)
    with pytest.raises(UnsupportedError):
        XWingPublicKey(pk).encapsulate()


def test_kem_fixed_eseed_needs_the_test_hook() -> None:
    v = KEM["vectors"][0]
    with pytest.raises(LocalProtocolError):
        XWingPublicKey(h(v["pk"])).encapsulate(h(v["eseed"]))


def test_kem_eseed_length(xwing_derand: None) -> None:
    with pytest.raises(LocalProtocolError):
        XWingPublicKey(h(KEM["vectors"][0]["pk"])).encapsulate(bytes(32))


# ---------------------------------------------------------------------------------------------------------------
# HPKE with KEM 0x647A (draft-ietf-hpke-pq-04)


def test_hpke_pq_has_both_entries() -> None:
    assert sorted(v["kdf_id"] for v in HPKE_PQ["vectors"]) == [0x0001, 0x0011]
    for v in HPKE_PQ["vectors"]:
        assert (v["kem_id"], v["mode"], len(v["encryptions"]), len(v["exports"])) == (0x647A, 0, 10, 5)


@pytest.mark.parametrize("v", HPKE_PQ["vectors"], ids=_ids(HPKE_PQ["vectors"], "kdf_id"))
def test_hpke_pq_derive_key_pair(v: dict[str, Any]) -> None:
    # hpke-pq §4 SHAKE256.LabeledDerive, whatever the HPKE KDF; not the xwing draft's SHAKE256(ikm, 32).
    sk = XWingPrivateKey.derive(h(v["ikmR"]))
    assert sk.private_bytes() == h(v["skRm"])
    assert sk.public_bytes == h(v["pkRm"])
    assert XWingPrivateKey(h(v["ikmR"])).private_bytes() != h(v["skRm"])


@pytest.mark.parametrize("v", HPKE_PQ["vectors"], ids=_ids(HPKE_PQ["vectors"], "kdf_id"))
def test_hpke_pq_sender(v: dict[str, Any], xwing_derand: None) -> None:
    assert _xwing.suite_id(v["kdf_id"], v["aead_id"]) == h(v["suite_id"])
    # info and pt are hex of an ASCII hex string: decode once (notes pitfall 5).
    enc, ctx = setup_base_s(h(v["pkRm"]), v["kdf_id"], v["aead_id"], h(v["info"]), h(v["ikmE"]))
    assert enc == h(v["enc"])
    assert (ctx.key, ctx.base_nonce, ctx.exporter_secret) == (h(v["key"]), h(v["base_nonce"]), h(v["exporter_secret"]))
    for e in v["encryptions"]:
        assert ctx.seal(h(e["pt"]), h(e["aad"])) == h(e["ct"])
    for x in v["exports"]:
        assert ctx.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])


@pytest.mark.parametrize("v", HPKE_PQ["vectors"], ids=_ids(HPKE_PQ["vectors"], "kdf_id"))
def test_hpke_pq_recipient(v: dict[str, Any]) -> None:
    sk = XWingPrivateKey(h(v["skRm"]))
    assert sk.decapsulate(h(v["enc"])) == h(v["shared_secret"])
    ctx = setup_base_r(sk, h(v["enc"]), v["kdf_id"], v["aead_id"], h(v["info"]))
    assert (ctx.key, ctx.base_nonce, ctx.exporter_secret) == (h(v["key"]), h(v["base_nonce"]), h(v["exporter_secret"]))
    for e in v["encryptions"]:
        assert ctx.open(h(e["ct"]), h(e["aad"])) == h(e["pt"])
    for x in v["exports"]:
        assert ctx.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])


@pytest.mark.parametrize("v", HPKE_PQ["vectors"], ids=_ids(HPKE_PQ["vectors"], "kdf_id"))
def test_hpke_pq_nonces_follow_the_sequence(v: dict[str, Any]) -> None:
    ctx = XWingContext(v["kdf_id"], v["aead_id"], h(v["shared_secret"]), h(v["info"]))
    for e in v["encryptions"]:
        assert ctx._nonce() == h(e["nonce"])
        ctx.seal(b"")


def test_hpke_failed_open_does_not_advance_the_sequence() -> None:
    v = HPKE_PQ["vectors"][0]
    ctx = setup_base_r(XWingPrivateKey(h(v["skRm"])), h(v["enc"]), v["kdf_id"], v["aead_id"], h(v["info"]))
    first = v["encryptions"][0]
    with pytest.raises(DecryptError):
        ctx.open(flip_bit(h(first["ct"]), 0), h(first["aad"]))
    with pytest.raises(DecryptError):
        ctx.open(h(first["ct"]), b"other aad")
    assert ctx.open(h(first["ct"]), h(first["aad"])) == h(first["pt"])


def test_hpke_unsupported_ids() -> None:
    with pytest.raises(UnsupportedError):
        XWingContext(0x0004, 0x0001, bytes(32), b"")
    with pytest.raises(UnsupportedError):
        XWingContext(0x0001, 0xFFFF, bytes(32), b"")


# ---------------------------------------------------------------------------------------------------------------
# cryptography's own HPKE (single-shot, KEM MLKEM768_X25519) against ours, both directions

_C_KDF = {
    0x0001: hpke.KDF.HKDF_SHA256,
    0x0002: hpke.KDF.HKDF_SHA384,
    0x0003: hpke.KDF.HKDF_SHA512,
    0x0011: hpke.KDF.SHAKE256,
}
_C_AEAD = {0x0001: hpke.AEAD.AES_128_GCM, 0x0002: hpke.AEAD.AES_256_GCM, 0x0003: hpke.AEAD.CHACHA20_POLY1305}
_SUITES = [(k, a) for k in _C_KDF for a in _C_AEAD]


def _their_private_key(seed: bytes) -> hpke.MLKEM768X25519PrivateKey:
    # cryptography wants the ML-KEM (d, z) seed and the X25519 key, not the X-Wing seed (notes pitfall 3).
    d_z, x = _xwing.expand_seed(seed)
    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(d_z), x25519.X25519PrivateKey.from_private_bytes(x)
    )


def _their_public_key(pk: bytes) -> hpke.MLKEM768X25519PublicKey:
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(pk[:1184]), x25519.X25519PublicKey.from_public_bytes(pk[1184:])
    )


@pytest.mark.parametrize(("kdf", "aead"), _SUITES, ids=[f"kdf{k:04x}-aead{a:04x}" for k, a in _SUITES])
def test_cryptography_opens_what_veil_seals(kdf: int, aead: int) -> None:
    sk = XWingPrivateKey.generate()
    info = b"message/bhttp request\x00" + bytes.fromhex("01647a") + kdf.to_bytes(2, "big") + aead.to_bytes(2, "big")
    enc, ctx = setup_base_s(sk.public_bytes, kdf, aead, info)
    ct = ctx.seal(b"what veil sealed", b"")
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, _C_KDF[kdf], _C_AEAD[aead])
    assert suite.decrypt(enc + ct, _their_private_key(sk.private_bytes()), info) == b"what veil sealed"


@pytest.mark.parametrize(("kdf", "aead"), _SUITES, ids=[f"kdf{k:04x}-aead{a:04x}" for k, a in _SUITES])
def test_veil_opens_what_cryptography_seals(kdf: int, aead: int) -> None:
    sk = XWingPrivateKey.generate()
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, _C_KDF[kdf], _C_AEAD[aead])
    sealed = suite.encrypt(b"what cryptography sealed", _their_public_key(sk.public_bytes), b"some info")
    enc, ct = sealed[: _xwing.N_ENC], sealed[_xwing.N_ENC :]
    assert setup_base_r(sk, enc, kdf, aead, b"some info").open(ct) == b"what cryptography sealed"


def test_cryptography_key_from_our_seed_has_our_public_key() -> None:
    # Same key both ways: what cryptography encrypts to our published bytes, our seed opens.
    v = KEM["vectors"][1]
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sealed = suite.encrypt(b"x", _their_public_key(h(v["pk"])), b"")
    assert suite.decrypt(sealed, _their_private_key(h(v["sk"])), b"") == b"x"
    assert setup_base_r(XWingPrivateKey(h(v["sk"])), sealed[:1120], 1, 1, b"").open(sealed[1120:]) == b"x"


@pytest.mark.parametrize("v", HPKE_PQ["vectors"], ids=_ids(HPKE_PQ["vectors"], "kdf_id"))
def test_cryptography_opens_the_hpke_pq_vector(v: dict[str, Any]) -> None:
    # The vector's first message has an AAD, which only the binding's private entry point takes.
    first = v["encryptions"][0]
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, _C_KDF[v["kdf_id"]], _C_AEAD[v["aead_id"]])
    sk = _their_private_key(h(v["skRm"]))
    pt = _rust_openssl.hpke._decrypt_with_aad(suite, h(v["enc"]) + h(first["ct"]), sk, h(v["info"]), h(first["aad"]))
    assert pt == h(first["pt"])
