"""Byte-for-byte reproduction of the Privacy Pass vectors in ``shared/data/vectors``: RFC 9474 Appendix A (all four
RSABSSA-SHA384 variants, every intermediate value), RFC 9578 Appendix A.2 (token type 0x0002: request, response and
token from the issuer's key and the injected randomness) and RFC 9577 Appendix A (challenges, token inputs, headers).
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import privacypass
from privacypass import (
    ClientIssuance,
    IssuerKey,
    PrivateTokenChallenge,
    Token,
    TokenChallenge,
    TokenKey,
    TokenRequest,
    blindrsa,
)
from tests.helpers import h, load_vector

RSA_VECTORS: list[dict[str, Any]] = load_vector("rfc9474_blind_rsa_vectors.json")["vectors"]
ISSUANCE: list[dict[str, Any]] = load_vector("rfc9578_issuance_vectors.json")["token_type_0x0002_blind_rsa_2048"]
AUTH: dict[str, Any] = load_vector("rfc9577_auth_vectors.json")

VARIANTS = {
    v.name: v
    for v in (
        blindrsa.RSABSSA_SHA384_PSS_RANDOMIZED,
        blindrsa.RSABSSA_SHA384_PSSZERO_RANDOMIZED,
        blindrsa.RSABSSA_SHA384_PSS_DETERMINISTIC,
        blindrsa.RSABSSA_SHA384_PSSZERO_DETERMINISTIC,
    )
}


def _private_key(v: dict[str, Any]) -> rsa.RSAPrivateKey:
    p, q, d, e, n = (int(v[k], 16) for k in ("p", "q", "d", "e", "n"))
    assert p * q == n
    pub = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(
        p=p, q=q, d=d, dmp1=d % (p - 1), dmq1=d % (q - 1), iqmp=pow(q, -1, p), public_numbers=pub
    ).private_key()


def test_every_variant_has_a_vector() -> None:
    assert sorted(v["name"] for v in RSA_VECTORS) == sorted(VARIANTS)
    assert len(RSA_VECTORS) == 4 and len(ISSUANCE) == 5


@pytest.mark.parametrize("v", RSA_VECTORS, ids=[v["name"] for v in RSA_VECTORS])
def test_rfc9474_vector(v: dict[str, Any]) -> None:
    variant = VARIANTS[v["name"]]
    sk = _private_key(v)
    pk = sk.public_key()
    prepared = blindrsa.prepare(variant, h(v["msg"]), msg_prefix=h(v["msg_prefix"]) or None)
    assert prepared == h(v["prepared_msg"])
    assert blindrsa.emsa_pss_encode(prepared, pk.key_size - 1, h(v["salt"])) == h(v["encoded_msg"])
    n = pk.public_numbers().n
    r = pow(int(v["inv"], 16), -1, n)
    blinded, state = blindrsa.blind(variant, pk, prepared, salt=h(v["salt"]), r=r)
    assert blinded == h(v["blinded_msg"])
    assert state.inv == int(v["inv"], 16)
    blind_sig = blindrsa.blind_sign(sk, blinded)
    assert blind_sig == h(v["blind_sig"])
    assert blindrsa.finalize(variant, pk, state, blind_sig) == h(v["sig"])
    blindrsa.verify(variant, pk, prepared, h(v["sig"]))


@pytest.mark.parametrize("i", range(len(ISSUANCE)))
def test_rfc9578_type2_vector(i: int) -> None:
    v = ISSUANCE[i]
    sk = serialization.load_pem_private_key(h(v["skS"]), password=None)
    assert isinstance(sk, rsa.RSAPrivateKey)
    issuer = IssuerKey.from_private_key(sk)
    assert issuer.public.spki == h(v["pkS"])  # the PSS-form SPKI is rebuilt byte for byte from the key
    key = TokenKey.from_spki(h(v["pkS"]))
    challenge = TokenChallenge.decode(h(v["token_challenge"]))
    assert challenge.encode() == h(v["token_challenge"])
    assert TokenChallenge(token_type=challenge.token_type, issuer_name=challenge.issuer_name,
                          redemption_context=challenge.redemption_context,
                          origin_info=challenge.origin_info).encode() == h(v["token_challenge"])
    client = ClientIssuance.begin(key, challenge, nonce=h(v["nonce"]), salt=h(v["salt"]), blind=int(v["blind"], 16))
    assert client.request.encode() == h(v["token_request"])
    assert TokenRequest.decode(h(v["token_request"])) == client.request
    response = privacypass.issue([issuer], h(v["token_request"]))
    assert response == h(v["token_response"])
    token = client.finalize(response)
    assert token.encode() == h(v["token"])
    assert Token.decode(h(v["token"])) == token
    assert privacypass.verify_token(h(v["token"]), [key], [challenge.digest()]) == token


CHALLENGES = AUTH["challenge_redemption"]


@pytest.mark.parametrize("v", CHALLENGES, ids=[c["description"] for c in CHALLENGES])
def test_rfc9577_challenge_and_token_input(v: dict[str, Any]) -> None:
    token_type = int(v["token_type"], 16)
    if token_type == 0:  # a grease token: random bytes, refused as an unsupported type, never parsed further
        with pytest.raises(privacypass.UnsupportedError):
            Token.decode(h(v["token_authenticator_input"]))
        return
    origins = h(v["origin_info"]).decode()
    challenge = TokenChallenge(token_type=token_type, issuer_name=h(v["issuer_name"]).decode(),
                               redemption_context=h(v["redemption_context"]),
                               origin_info=tuple(origins.split(",")) if origins else ())
    assert TokenChallenge.decode(challenge.encode()) == challenge
    token_input = (token_type.to_bytes(2, "big") + h(v["nonce"]) + challenge.digest() + h(v["token_key_id"]))
    assert token_input == h(v["token_authenticator_input"])
    if token_type == 2:
        assert h(v["token_key_id"]) == privacypass.token_key_id(h(ISSUANCE[0]["pkS"]))


HEADERS = AUTH["http_headers"]


@pytest.mark.parametrize("i", range(len(HEADERS)))
def test_rfc9577_www_authenticate(i: int) -> None:
    v = HEADERS[i]
    header = v["www_authenticate"]
    expected = []
    j = 0
    while f"token-type-{j}" in v:
        expected.append((int(v[f"token-type-{j}"], 16), h(v[f"token-challenge-{j}"]), h(v[f"token-key-{j}"]),
                         int(v[f"max-age-{j}"]) if f"max-age-{j}" in v else None))
        j += 1
    every = privacypass.parse_private_token_challenges(header, token_types=None)
    assert [(c.token_type, c.challenge, c.token_key, c.max_age) for c in every] == expected
    # A client keeps only type 2, skipping grease and type 1 without failing (privacypass-ts 0.9.0 throws on #3).
    usable = privacypass.parse_private_token_challenges(header)
    assert [(c.token_type, c.challenge, c.token_key) for c in usable] == [e[:3] for e in expected if e[0] == 2]
    for c in usable:
        assert c.decode().issuer_name == "issuer.example"
        TokenKey.from_spki(c.token_key)
    # Building those challenges again gives a header that parses to the same values.
    rebuilt = privacypass.build_www_authenticate(every)
    again = privacypass.parse_private_token_challenges(rebuilt, token_types=None)
    assert again == every
    if i == 0:
        assert rebuilt == header.replace(',unknownChallengeAttribute="ignore-me"', "")
        assert isinstance(every[0], PrivateTokenChallenge)
