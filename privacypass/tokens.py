"""Privacy Pass token type 0x0002 (RFC 9578 §6, publicly verifiable, blind RSA 2048) and the TokenChallenge
(RFC 9577 §2.1.1): wire structs, the client's request and finalize, the issuer's response, the origin's verify.

Sans-I/O: bytes in, bytes out. Imports nothing from ``ohttp``, ``enclave`` or ``proxy``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric import rsa

from . import blindrsa
from .errors import DecodeError, KeyIdError, LocalProtocolError, UnsupportedError, VerifyError

__all__ = [
    "TOKEN_TYPE_BLIND_RSA",
    "NK",
    "MEDIA_TYPE_TOKEN_REQUEST",
    "MEDIA_TYPE_TOKEN_RESPONSE",
    "TokenChallenge",
    "TokenRequest",
    "Token",
    "TokenKey",
    "IssuerKey",
    "ClientIssuance",
    "token_key_id",
    "issue",
    "verify_token",
]

#: Token type 0x0002: Blind RSA (2048-bit), RFC 9578 §6.
TOKEN_TYPE_BLIND_RSA: Final = 0x0002
#: The modulus length in bytes for token type 2.
NK: Final = 256
MEDIA_TYPE_TOKEN_REQUEST: Final = "application/private-token-request"
MEDIA_TYPE_TOKEN_RESPONSE: Final = "application/private-token-response"

_VARIANT: Final = blindrsa.RSABSSA_SHA384_PSS_DETERMINISTIC
_NONCE_LEN: Final = 32
_DIGEST_LEN: Final = 32
_TOKEN_INPUT_LEN: Final = 2 + _NONCE_LEN + _DIGEST_LEN + 32
_TOKEN_LEN: Final = _TOKEN_INPUT_LEN + NK
_REQUEST_LEN: Final = 2 + 1 + NK


def token_key_id(spki: bytes) -> bytes:
    """SHA-256 of the issuer key's SPKI bytes exactly as published (RFC 9578 §6.5)."""
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenChallenge:
    """RFC 9577 §2.1.1::

        struct {
            uint16_t token_type;
            opaque issuer_name<1..2^16-1>;
            opaque redemption_context<0..32>;   /* 0 or 32 bytes */
            opaque origin_info<0..2^16-1>;
        } TokenChallenge;

    ``raw`` keeps the bytes as received: the digest is over them, never over a re-encoding (notes, pitfall 3).
    """

    token_type: int
    issuer_name: str
    redemption_context: bytes = b""
    origin_info: tuple[str, ...] = ()
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.token_type <= 0xFFFF:
            raise LocalProtocolError(f"token type out of range: {self.token_type}")
        if not self.issuer_name or len(self.issuer_name) > 0xFFFF:
            raise LocalProtocolError("issuer name must be 1 to 65535 bytes")
        if len(self.redemption_context) not in (0, 32):
            raise LocalProtocolError(f"redemption context must be 0 or 32 bytes, got {len(self.redemption_context)}")
        if not self.raw:
            object.__setattr__(self, "raw", self._encode())

    def _encode(self) -> bytes:
        issuer = self.issuer_name.encode("ascii")
        origins = ",".join(self.origin_info).encode("ascii")
        return (
            self.token_type.to_bytes(2, "big") + len(issuer).to_bytes(2, "big") + issuer
            + bytes([len(self.redemption_context)]) + self.redemption_context
            + len(origins).to_bytes(2, "big") + origins
        )

    def encode(self) -> bytes:
        """The challenge's bytes (as received when it was decoded)."""
        return self.raw

    def digest(self) -> bytes:
        """SHA-256 of the challenge bytes: the ``challenge_digest`` a token carries."""
        return hashlib.sha256(self.raw).digest()

    @classmethod
    def decode(cls, data: bytes) -> TokenChallenge:
        """Parse a TokenChallenge.

        Raises:
            DecodeError: truncated, trailing bytes, bad lengths, non-ASCII names.
        """
        pos = 0

        def take(n: int, what: str) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise DecodeError(f"token challenge truncated in {what}: {len(data)} bytes")
            out = data[pos:pos + n]
            pos += n
            return out

        token_type = int.from_bytes(take(2, "token_type"), "big")
        issuer = take(int.from_bytes(take(2, "issuer_name length"), "big"), "issuer_name")
        context = take(take(1, "redemption_context length")[0], "redemption_context")
        origins = take(int.from_bytes(take(2, "origin_info length"), "big"), "origin_info")
        if pos != len(data):
            raise DecodeError(f"token challenge has {len(data) - pos} trailing bytes")
        if not issuer:
            raise DecodeError("token challenge has an empty issuer name")
        if len(context) not in (0, 32):
            raise DecodeError(f"redemption context must be 0 or 32 bytes, got {len(context)}")
        try:
            issuer_name = issuer.decode("ascii")
            origin_info = tuple(origins.decode("ascii").split(",")) if origins else ()
        except UnicodeDecodeError:
            raise DecodeError("token challenge names are not ASCII") from None
        return cls(token_type=token_type, issuer_name=issuer_name, redemption_context=context,
                   origin_info=origin_info, raw=bytes(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRequest:
    """RFC 9578 §6.1::

        struct {
            uint16_t token_type = 0x0002;
            uint8_t truncated_token_key_id;   /* the LAST byte of token_key_id */
            uint8_t blinded_msg[Nk];
        } TokenRequest;
    """

    truncated_token_key_id: int
    blinded_msg: bytes
    token_type: int = TOKEN_TYPE_BLIND_RSA

    def encode(self) -> bytes:
        """The request's 259 bytes."""
        return self.token_type.to_bytes(2, "big") + bytes([self.truncated_token_key_id]) + self.blinded_msg

    @classmethod
    def decode(cls, data: bytes) -> TokenRequest:
        """Parse a TokenRequest (issuer side, RFC 9578 §6.2: every failure is a 422).

        Raises:
            UnsupportedError: a token type other than 0x0002.
            DecodeError: not 259 bytes.
        """
        _check_type(data, "token request")
        if len(data) != _REQUEST_LEN:
            error = DecodeError(f"token request must be {_REQUEST_LEN} bytes, got {len(data)}")
            error.status_hint = 422
            raise error
        return cls(truncated_token_key_id=data[2], blinded_msg=bytes(data[3:]))


def _check_type(data: bytes, what: str) -> None:
    """The leading token_type of a token or token request: 0x0002 (blind RSA) or an error naming it."""
    if len(data) < 2:
        raise DecodeError(f"{what} truncated: {len(data)} bytes")
    token_type = int.from_bytes(data[:2], "big")
    if token_type != TOKEN_TYPE_BLIND_RSA:
        raise UnsupportedError(f"token type 0x{token_type:04x} is not supported")


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """RFC 9577 §2.2 / RFC 9578 §6.3::

        struct {
            uint16_t token_type = 0x0002;
            uint8_t nonce[32];
            uint8_t challenge_digest[32];
            uint8_t token_key_id[32];
            uint8_t authenticator[Nk];
        } Token;
    """

    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    authenticator: bytes
    token_type: int = TOKEN_TYPE_BLIND_RSA

    def authenticator_input(self) -> bytes:
        """The first 98 bytes: what the authenticator signs (RFC 9578 §6.1 ``token_input``)."""
        return self.token_type.to_bytes(2, "big") + self.nonce + self.challenge_digest + self.token_key_id

    def encode(self) -> bytes:
        """The token's 354 bytes."""
        return self.authenticator_input() + self.authenticator

    @classmethod
    def decode(cls, data: bytes) -> Token:
        """Parse a type-2 token.

        Raises:
            UnsupportedError: a token type other than 0x0002.
            DecodeError: not 354 bytes.
        """
        _check_type(data, "token")
        if len(data) != _TOKEN_LEN:
            raise DecodeError(f"token must be {_TOKEN_LEN} bytes, got {len(data)}")
        return cls(nonce=bytes(data[2:34]), challenge_digest=bytes(data[34:66]), token_key_id=bytes(data[66:98]),
                   authenticator=bytes(data[98:]))


@dataclass(frozen=True, slots=True)
class TokenKey:
    """An issuer's public key as clients and origins hold it: the SPKI as published, its id and the parsed key.
    Equal (and hashed) by the SPKI bytes."""

    spki: bytes
    key_id: bytes = field(compare=False)
    public_key: rsa.RSAPublicKey = field(compare=False)

    @classmethod
    def from_spki(cls, spki: bytes) -> TokenKey:
        """Load a published token key.

        Raises:
            DecodeError: not an RSASSA-PSS SHA-384 SPKI, or not 2048 bits.
        """
        key = blindrsa.load_spki(spki)
        if (key.key_size + 7) // 8 != NK:
            raise DecodeError(f"token type 2 keys are {NK * 8}-bit RSA, got {key.key_size}")
        return cls(spki=bytes(spki), key_id=token_key_id(spki), public_key=key)

    @property
    def truncated_key_id(self) -> int:
        """The last byte of the key id (RFC 9578 §6.1)."""
        return self.key_id[-1]


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """An issuer's key pair prepared for :func:`issue`; ``public`` is what the directory lists."""

    public: TokenKey
    signing: blindrsa.SigningKey

    @classmethod
    def from_private_key(cls, private_key: rsa.RSAPrivateKey) -> IssuerKey:
        """Wrap a 2048-bit RSA private key.

        Raises:
            LocalProtocolError: not 2048 bits.
        """
        if private_key.key_size != NK * 8:
            raise LocalProtocolError(f"token type 2 keys are {NK * 8}-bit RSA, got {private_key.key_size}")
        return cls(public=TokenKey.from_spki(blindrsa.spki_pss(private_key.public_key())),
                   signing=blindrsa.SigningKey.from_private_key(private_key))

    def __repr__(self) -> str:
        return f"IssuerKey(key_id={self.public.key_id.hex()[:16]}..., private)"


@dataclass(frozen=True, slots=True)
class ClientIssuance:
    """The client's half of one issuance (RFC 9578 §6.1 and §6.3): the request to send and what finalize needs."""

    request: TokenRequest
    key: TokenKey
    nonce: bytes
    challenge_digest: bytes
    state: blindrsa.BlindingState

    @classmethod
    def begin(
        cls,
        key: TokenKey,
        challenge: TokenChallenge | bytes,
        *,
        nonce: bytes | None = None,
        salt: bytes | None = None,
        blind: int | None = None,
    ) -> ClientIssuance:
        """Build a TokenRequest for ``challenge`` under ``key``; ``nonce``, ``salt`` and ``blind`` inject the random
        values (for vectors). ``challenge`` may be the raw bytes, which are hashed as they are."""
        raw = challenge.raw if isinstance(challenge, TokenChallenge) else challenge
        digest = hashlib.sha256(raw).digest()
        nonce = secrets.token_bytes(_NONCE_LEN) if nonce is None else nonce
        if len(nonce) != _NONCE_LEN:
            raise LocalProtocolError(f"nonce must be {_NONCE_LEN} bytes, got {len(nonce)}")
        token_input = TOKEN_TYPE_BLIND_RSA.to_bytes(2, "big") + nonce + digest + key.key_id
        blinded, state = blindrsa.blind(_VARIANT, key.public_key, token_input, salt=salt, r=blind)
        request = TokenRequest(truncated_token_key_id=key.truncated_key_id, blinded_msg=blinded)
        return cls(request=request, key=key, nonce=nonce, challenge_digest=digest, state=state)

    def finalize(self, token_response: bytes) -> Token:
        """Unblind the issuer's TokenResponse into a Token, verified before it is returned.

        Raises:
            DecodeError: the response is not 256 bytes.
            VerifyError: the signature does not verify under the key (a bad or malicious issuer).
        """
        if len(token_response) != NK:
            raise DecodeError(f"token response must be {NK} bytes, got {len(token_response)}")
        sig = blindrsa.finalize(_VARIANT, self.key.public_key, self.state, token_response)
        return Token(nonce=self.nonce, challenge_digest=self.challenge_digest, token_key_id=self.key.key_id,
                     authenticator=sig)


def issue(keys: Iterable[IssuerKey], request: bytes | TokenRequest) -> bytes:
    """The issuer's step (RFC 9578 §6.2): the TokenResponse (``blind_sig``, 256 bytes) for a TokenRequest.

    ``keys`` are the keys the issuer signs with; the request's truncated key id picks one. Two live keys must not
    share a truncated id (the issuer avoids it when it makes keys).

    Raises:
        UnsupportedError, DecodeError: a malformed request (422).
        KeyIdError: no key has that truncated id (422).
    """
    req = request if isinstance(request, TokenRequest) else TokenRequest.decode(request)
    for key in keys:
        if key.public.truncated_key_id == req.truncated_token_key_id:
            try:
                return blindrsa.blind_sign(key.signing, req.blinded_msg)
            except DecodeError as exc:
                exc.status_hint = 422
                raise
    raise KeyIdError(f"no issuer key has truncated key id {req.truncated_token_key_id}")


def verify_token(token: Token | bytes, keys: Iterable[TokenKey], challenge_digests: Iterable[bytes]) -> Token:
    """The origin's check of a token (RFC 9578 §6.4): a type-2 token for an accepted challenge, signed by one of
    ``keys``. Double spending is the caller's to check (it needs state). Returns the parsed token.

    Raises:
        UnsupportedError, DecodeError: not a type-2 token of the right size.
        KeyIdError: its key id is none of ``keys``.
        VerifyError: its challenge digest is not accepted, or the signature does not verify.
    """
    tok = token if isinstance(token, Token) else Token.decode(token)
    key = next((k for k in keys if secrets.compare_digest(k.key_id, tok.token_key_id)), None)
    if key is None:
        raise KeyIdError("token key id is not one of the issuer's keys")
    if not any(secrets.compare_digest(tok.challenge_digest, d) for d in challenge_digests):
        raise VerifyError("token was made for another challenge")
    blindrsa.verify(_VARIANT, key.public_key, tok.authenticator_input(), tok.authenticator)
    return tok
