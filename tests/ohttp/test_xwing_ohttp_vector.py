"""The derived RFC 9458 exchange with KEM 0x647A (``ohttp_xwing_derived.json``), both directions, every
intermediate value, on the X-Wing HPKE primitives and the RFC 9458 helpers of :mod:`ohttp.encapsulation`."""

from __future__ import annotations

import pytest

from ohttp._hpke import AeadId, KdfId, hkdf_expand, hkdf_extract
from ohttp._xwing import XWingPrivateKey, setup_base_r, setup_base_s
from ohttp.encapsulation import INFO_REQUEST, LABEL_RESPONSE, entropy_len, response_keys
from ohttp.errors import DecryptError
from tests.helpers import flip_bit, h, load_vector

V = load_vector("ohttp_xwing_derived.json")
KDF, AEAD = KdfId(V["suite"]["kdf_id"]), AeadId(V["suite"]["aead_id"])


def test_sizes() -> None:
    s = V["sizes"]
    assert len(h(V["server_public_key"])) == s["Npk"] == 1216
    assert len(h(V["enc"])) == s["Nenc"] == 1120
    assert len(h(V["key_config"])) == s["key_config"] == 1225
    assert len(h(V["ohttp_keys_media"])) == s["ohttp_keys_media"] == 1227
    assert len(h(V["encapsulated_request"])) == s["encapsulated_request"] == 1168
    assert len(h(V["encapsulated_response"])) == s["encapsulated_response"] == 35


def test_server_key() -> None:
    sk = XWingPrivateKey(h(V["server_private_key"]))
    assert sk.public_bytes == h(V["server_public_key"])
    config = h(V["key_config"])
    assert config == bytes((V["key_id"],)) + b"\x64\x7a" + sk.public_bytes + bytes.fromhex("000400010001")
    assert h(V["ohttp_keys_media"]) == len(config).to_bytes(2, "big") + config


def test_client_encapsulates_the_request(xwing_derand: None) -> None:
    hdr = h(V["request_header"])
    info = INFO_REQUEST + b"\x00" + hdr
    assert info == h(V["hpke_info"])
    enc, ctx = setup_base_s(h(V["server_public_key"]), KDF, AEAD, info, h(V["ephemeral_seed"]))
    assert enc == h(V["enc"])
    assert (ctx.key, ctx.base_nonce, ctx.exporter_secret) == (h(V["key"]), h(V["base_nonce"]), h(V["exporter_secret"]))
    ct = ctx.seal(h(V["request_bhttp"]))
    assert ct == h(V["request_ciphertext"])
    assert hdr + enc + ct == h(V["encapsulated_request"])
    # ... and opens the gateway's response.
    assert ctx.export(LABEL_RESPONSE, entropy_len(AEAD)) == h(V["exported_secret"])
    enc_response = h(V["encapsulated_response"])
    nonce = enc_response[: entropy_len(AEAD)]
    assert nonce == h(V["response_nonce"])
    aead, aead_nonce = response_keys(ctx, LABEL_RESPONSE, enc, nonce, KDF, AEAD)
    assert aead.open(aead_nonce, enc_response[len(nonce) :], b"") == h(V["response_bhttp"])


def test_gateway_decapsulates_and_answers() -> None:
    req = h(V["encapsulated_request"])
    hdr, enc, ct = req[:7], req[7:1127], req[1127:]
    sk = XWingPrivateKey(h(V["server_private_key"]))
    assert sk.decapsulate(enc) == h(V["shared_secret"])
    ctx = setup_base_r(sk, enc, KDF, AEAD, INFO_REQUEST + b"\x00" + hdr)
    assert ctx.open(ct) == h(V["request_bhttp"])
    secret = ctx.export(LABEL_RESPONSE, entropy_len(AEAD))
    assert secret == h(V["exported_secret"])
    salt = enc + h(V["response_nonce"])
    assert salt == h(V["salt"])
    prk = hkdf_extract(KDF, salt, secret)
    assert prk == h(V["prk"])
    assert hkdf_expand(KDF, prk, b"key", AEAD.n_k) == h(V["aead_key"])
    assert hkdf_expand(KDF, prk, b"nonce", AEAD.n_n) == h(V["aead_nonce"])
    aead, aead_nonce = response_keys(ctx, LABEL_RESPONSE, enc, h(V["response_nonce"]), KDF, AEAD)
    assert aead_nonce == h(V["aead_nonce"])
    sealed = aead.seal(aead_nonce, h(V["response_bhttp"]), b"")
    assert h(V["response_nonce"]) + sealed == h(V["encapsulated_response"])


@pytest.mark.parametrize("bit", [0, 8 * 500, 8 * 1100, 8 * 1120 + 3])
def test_gateway_refuses_a_tampered_request(bit: int) -> None:
    # A flip in the ML-KEM ciphertext, the X25519 share or the AEAD ciphertext fails at the AEAD.
    req = h(V["encapsulated_request"])
    body = flip_bit(req[7:], bit)
    ctx = setup_base_r(XWingPrivateKey(h(V["server_private_key"])), body[:1120], KDF, AEAD, h(V["hpke_info"]))
    with pytest.raises(DecryptError):
        ctx.open(body[1120:])
