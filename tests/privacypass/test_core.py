"""The privacypass core beyond the vectors: round trips with fresh keys, every wire struct's bad input, the signer's
fault guard and timing-safe path, and the defensive header parser (any input: a result or a DecodeError)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

import privacypass
from privacypass import (
    ClientIssuance,
    DecodeError,
    Directory,
    DirectoryKey,
    IssuerKey,
    KeyIdError,
    LocalProtocolError,
    Token,
    TokenChallenge,
    TokenRequest,
    UnsupportedError,
    VerifyError,
    blindrsa,
)


@pytest.fixture(scope="module")
def issuer() -> IssuerKey:
    return IssuerKey.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def other_issuer() -> IssuerKey:
    return IssuerKey.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


CHALLENGE = TokenChallenge(token_type=2, issuer_name="issuer.example:8443", origin_info=("relay.example",))


def _token(issuer: IssuerKey, challenge: TokenChallenge = CHALLENGE) -> Token:
    client = ClientIssuance.begin(issuer.public, challenge)
    return client.finalize(privacypass.issue([issuer], client.request.encode()))


def test_round_trip_and_verify(issuer: IssuerKey) -> None:
    token = _token(issuer)
    assert len(token.encode()) == 354
    assert privacypass.verify_token(token.encode(), [issuer.public], [CHALLENGE.digest()]) == token
    header = privacypass.build_authorization(token.encode())
    assert privacypass.parse_authorization(header) == token.encode()


def test_tokens_are_unlinkable_to_requests(issuer: IssuerKey) -> None:
    """Two issuances of the same challenge: different nonces, blinded messages and authenticators."""
    a, b = (ClientIssuance.begin(issuer.public, CHALLENGE) for _ in range(2))
    assert a.request.blinded_msg != b.request.blinded_msg and a.nonce != b.nonce


@pytest.mark.parametrize("variant", [blindrsa.RSABSSA_SHA384_PSS_RANDOMIZED, blindrsa.RSABSSA_SHA384_PSSZERO_RANDOMIZED,
                                     blindrsa.RSABSSA_SHA384_PSS_DETERMINISTIC,
                                     blindrsa.RSABSSA_SHA384_PSSZERO_DETERMINISTIC], ids=lambda v: v.name)
def test_every_variant_round_trips(variant: blindrsa.Variant) -> None:
    sk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    prepared = blindrsa.prepare(variant, b"hello")
    blinded, state = blindrsa.blind(variant, sk.public_key(), prepared)
    sig = blindrsa.finalize(variant, sk.public_key(), state, blindrsa.blind_sign(sk, blinded))
    blindrsa.verify(variant, sk.public_key(), prepared, sig)
    with pytest.raises(VerifyError):
        blindrsa.verify(variant, sk.public_key(), prepared + b"!", sig)


def test_blind_sign_equals_the_textbook_operation(issuer: IssuerKey) -> None:
    """Base blinding and CRT with powmod_sec give exactly m^d mod n."""
    sk = issuer.signing
    n, d = int(sk.n), pow(int(sk.e), -1, (int(sk.p) - 1) * (int(sk.q) - 1))
    for m in (2, 3, n - 1, int.from_bytes(hashlib.sha512(b"x").digest() * 4, "big") % n):
        assert blindrsa.blind_sign(sk, m.to_bytes(256, "big")) == pow(m, d, n).to_bytes(256, "big")


def test_blind_sign_fault_guard(issuer: IssuerKey) -> None:
    """A wrong CRT half (a fault) is caught by the public-key check and nothing is released (RFC 9474 §4.3)."""
    sk = issuer.signing
    faulty = blindrsa.SigningKey(n=sk.n, e=sk.e, p=sk.p, q=sk.q, dmp1=sk.dmp1 + 1, dmq1=sk.dmq1, iqmp=sk.iqmp)
    with pytest.raises(VerifyError):
        blindrsa.blind_sign(faulty, (12345).to_bytes(256, "big"))
    assert "private" in repr(sk) and str(int(sk.p)) not in repr(sk)


def test_blind_sign_refuses_out_of_range(issuer: IssuerKey) -> None:
    with pytest.raises(DecodeError):
        blindrsa.blind_sign(issuer.signing, int(issuer.signing.n).to_bytes(256, "big"))
    with pytest.raises(DecodeError):
        blindrsa.blind_sign(issuer.signing, b"\x01" * 255)


def test_issue_errors(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    request = ClientIssuance.begin(issuer.public, CHALLENGE).request.encode()
    with pytest.raises(KeyIdError) as ki:
        privacypass.issue([other_issuer] if other_issuer.public.truncated_key_id != request[2] else [], request)
    assert ki.value.status_hint == 422
    with pytest.raises(UnsupportedError) as un:
        privacypass.issue([issuer], b"\x00\x01" + request[2:])
    assert un.value.status_hint == 422
    for cut in (0, 1, 2, 100, 258):
        with pytest.raises((DecodeError, UnsupportedError)) as de:
            privacypass.issue([issuer], request[:cut])
        assert de.value.status_hint in (400, 422)
    with pytest.raises(DecodeError) as long:
        TokenRequest.decode(request + b"\x00")
    assert long.value.status_hint == 422


def test_finalize_refuses_a_bad_signer(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    client = ClientIssuance.begin(issuer.public, CHALLENGE)
    wrong = blindrsa.blind_sign(other_issuer.signing, client.request.blinded_msg) if int(
        other_issuer.signing.n) > int.from_bytes(client.request.blinded_msg, "big") else b"\x01" * 256
    with pytest.raises((VerifyError, DecodeError)):
        client.finalize(wrong)
    with pytest.raises(DecodeError):
        client.finalize(b"\x00" * 255)


def test_verify_token_errors(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    token = _token(issuer)
    raw = token.encode()
    with pytest.raises(KeyIdError):
        privacypass.verify_token(raw, [other_issuer.public], [CHALLENGE.digest()])
    with pytest.raises(VerifyError):
        privacypass.verify_token(raw, [issuer.public], [hashlib.sha256(b"another").digest()])
    for bit in (0, 20 * 8, 50 * 8, 120 * 8, 353 * 8 + 7):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises((VerifyError, KeyIdError, UnsupportedError)):
            privacypass.verify_token(bytes(flipped), [issuer.public], [CHALLENGE.digest()])
    for cut in (0, 1, 2, 98, 353):
        with pytest.raises(DecodeError):
            Token.decode(raw[:cut])
    with pytest.raises(DecodeError):
        Token.decode(raw + b"\x00")


def test_challenge_decode_truncation() -> None:
    raw = TokenChallenge(token_type=2, issuer_name="i.example", redemption_context=b"\x01" * 32,
                         origin_info=("a.example", "b.example")).encode()
    assert TokenChallenge.decode(raw).origin_info == ("a.example", "b.example")
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            TokenChallenge.decode(raw[:cut])
    with pytest.raises(DecodeError):
        TokenChallenge.decode(raw + b"\x00")
    bad_context = raw[:2 + 2 + 9] + b"\x05" + b"12345" + raw[2 + 2 + 9 + 33:]
    with pytest.raises(DecodeError):
        TokenChallenge.decode(bad_context)
    with pytest.raises(LocalProtocolError):
        TokenChallenge(token_type=2, issuer_name="i", redemption_context=b"short")


def test_directory_round_trip_and_skips(issuer: IssuerKey, other_issuer: IssuerKey) -> None:
    d = Directory("https://issuer.example/token-request",
                  (DirectoryKey(issuer.public), DirectoryKey(other_issuer.public, not_before=2_000_000_000)))
    back = Directory.decode(d.encode())
    assert back == d
    assert back.usable(1_900_000_000) == [issuer.public]
    assert back.usable(2_000_000_001) == [issuer.public, other_issuer.public]
    lax = (b'{"issuer-request-uri": "/r", "token-keys": [{"token-type": 1, "token-key": "AAAA"}, '
           b'{"token-type": 2, "token-key": "AAAA"}, 7]}')
    assert Directory.decode(lax).keys == ()
    for bad in (b"", b"[]", b"{", b'{"token-keys": []}', b'{"issuer-request-uri": "/r"}'):
        with pytest.raises(DecodeError):
            Directory.decode(bad)


def test_load_spki_refuses_rsa_encryption_form(issuer: IssuerKey) -> None:
    from cryptography.hazmat.primitives import serialization

    plain = issuer.public.public_key.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(DecodeError):
        privacypass.TokenKey.from_spki(plain)
    with pytest.raises(DecodeError):
        privacypass.TokenKey.from_spki(b"\x30\x03garbage")


@pytest.mark.parametrize("header,expected", [
    ('Basic realm="x", PrivateToken challenge="AAIAAWk=", token-key="AA=="',
     [("Basic", {"realm": "x"}), ("PrivateToken", {"challenge": "AAIAAWk=", "token-key": "AA=="})]),
    ("Negotiate abc==, Basic realm=x", [("Negotiate", {}), ("Basic", {"realm": "x"})]),
    ('privatetoken CHALLENGE = "a\\"b" ,, max-age=5', [("privatetoken", {"challenge": 'a"b', "max-age": "5"})]),
    ("", []),
    ("Bearer", [("Bearer", {})]),
])
def test_parse_www_authenticate(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, c.params) for c in privacypass.parse_www_authenticate(header)] == expected


@pytest.mark.parametrize("header", ['Basic realm="x', "=x", 'PrivateToken x, a=@', "Basic @"])
def test_parse_www_authenticate_refuses_garbage(header: str) -> None:
    with pytest.raises(DecodeError):
        privacypass.parse_www_authenticate(header)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", 'PrivateToken nottoken="AA=="', 'PrivateToken token="***"',
                                    'PrivateToken token="AA==", PrivateToken token="AA=="'])
def test_parse_authorization_refuses(header: str) -> None:
    with pytest.raises(DecodeError):
        privacypass.parse_authorization(header)


def test_unpadded_base64url_is_accepted() -> None:
    assert privacypass.b64url_decode("AAE") == b"\x00\x01"
    assert privacypass.b64url_encode(b"\x00\x01") == "AAE="


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(' \t,="\\abcPrivateToken=-_+/0123456789é')), max_size=80))
def test_header_parsers_never_crash(header: str) -> None:
    for parse in (privacypass.parse_www_authenticate, privacypass.parse_private_token_challenges,
                  privacypass.parse_authorization):
        try:
            parse(header)
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_binary_decoders_never_crash(data: bytes) -> None:
    for decode in (TokenChallenge.decode, TokenRequest.decode, Token.decode, Directory.decode):
        try:
            decode(data)
        except (DecodeError, UnsupportedError):
            pass
