"""The ``PrivateToken`` HTTP authentication scheme (RFC 9577 §2): WWW-Authenticate challenges and Authorization
credentials, parsed defensively (other schemes, grease token types and unknown attributes are skipped, never fatal)
and built with padded base64url as §2.1 requires.

Sans-I/O: strings in, strings out.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Final

from .errors import DecodeError
from .tokens import TOKEN_TYPE_BLIND_RSA, TokenChallenge

__all__ = [
    "SCHEME",
    "AuthChallenge",
    "PrivateTokenChallenge",
    "b64url_encode",
    "b64url_decode",
    "parse_www_authenticate",
    "parse_private_token_challenges",
    "build_www_authenticate",
    "build_authorization",
    "parse_authorization",
]

SCHEME: Final = "PrivateToken"

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_HEADER: Final = 64 * 1024


def b64url_encode(data: bytes) -> str:
    """base64url with ``=`` padding (RFC 9577 §2.1)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str) -> bytes:
    """base64url, padded or not (RFC 9577 requires padding; unpadded values from lax peers are accepted).

    Raises:
        DecodeError: not base64url.
    """
    stripped = text.strip().rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9\-_]*", stripped):
        raise DecodeError("value is not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError("value is not base64url") from None


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """One challenge of a WWW-Authenticate field: its scheme and its auth-params (names lower-cased)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted-string starting at ``text[pos] == '"'``: its value and the position after it."""
    out = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif ch == '"':
            return "".join(out), pos + 1
        else:
            out.append(ch)
            pos += 1
    raise DecodeError("unterminated quoted string in authentication header")


def parse_www_authenticate(header: str) -> list[AuthChallenge]:
    """Every challenge in a WWW-Authenticate field value (RFC 9110 §11.6.1), in order, whatever its scheme.

    A challenge with a token68 (``Negotiate abc==``) is kept with no params.

    Raises:
        DecodeError: the field is not a challenge list at all (an unterminated quote, a stray character).
    """
    if len(header) > _MAX_HEADER:
        raise DecodeError(f"authentication header too long: {len(header)} characters")
    challenges: list[AuthChallenge] = []
    pos = 0
    while True:
        while pos < len(header) and header[pos] in " \t,":
            pos += 1
        if pos >= len(header):
            return challenges
        m = _TOKEN_RE.match(header, pos)
        if m is None:
            raise DecodeError(f"unexpected character at offset {pos} of the authentication header")
        after = _skip_ows(header, m.end())
        if after < len(header) and header[after] == "=" and challenges:
            # name = value: a parameter of the current challenge
            name = m.group().lower()
            pos = _skip_ows(header, after + 1)
            if pos < len(header) and header[pos] == '"':
                value, pos = _quoted(header, pos)
            else:
                v = _TOKEN_RE.match(header, pos)
                if v is None:
                    raise DecodeError(f"parameter {name!r} has no value")
                value, pos = v.group(), v.end()
            challenges[-1].params.setdefault(name, value)
            continue
        # a new challenge: its scheme, then maybe a token68 (which is skipped)
        challenges.append(AuthChallenge(scheme=m.group()))
        pos = _skip_ows(header, m.end())
        t68 = _TOKEN68_RE.match(header, pos)
        if t68 is not None:
            rest = _skip_ows(header, t68.end())
            if rest >= len(header) or header[rest] == ",":
                pos = rest  # a token68 ("Negotiate abc=="), not a name=value pair


@dataclass(frozen=True, slots=True)
class PrivateTokenChallenge:
    """A ``PrivateToken`` challenge (RFC 9577 §2.1): the TokenChallenge bytes, the issuer's token key, max-age.

    ``token_type`` is read from the first two challenge bytes; :meth:`decode` parses the challenge itself.
    """

    challenge: bytes
    token_key: bytes
    max_age: int | None = None

    @property
    def token_type(self) -> int:
        """The challenge's token type (0x0000 is grease, RFC 9577 §4.1)."""
        return int.from_bytes(self.challenge[:2], "big")

    def decode(self) -> TokenChallenge:
        """The TokenChallenge.

        Raises:
            DecodeError: malformed.
        """
        return TokenChallenge.decode(self.challenge)


def parse_private_token_challenges(
    header: str, *, token_types: frozenset[int] | None = frozenset({TOKEN_TYPE_BLIND_RSA})
) -> list[PrivateTokenChallenge]:
    """The usable PrivateToken challenges of a WWW-Authenticate value, in order: other schemes, challenges without
    a valid ``challenge`` or ``token-key``, token types outside ``token_types`` (None: keep all) and, for supported
    types, challenges that do not decode are skipped. Never raises for a challenge it skips.

    Raises:
        DecodeError: the field is not a challenge list at all.
    """
    out: list[PrivateTokenChallenge] = []
    for ch in parse_www_authenticate(header):
        if ch.scheme.lower() != SCHEME.lower():
            continue
        try:
            raw = b64url_decode(ch.params["challenge"])
            key = b64url_decode(ch.params["token-key"])
        except (KeyError, DecodeError):
            continue
        if len(raw) < 2:
            continue
        max_age: int | None = None
        if (age := ch.params.get("max-age")) is not None and age.isdigit():
            max_age = int(age)
        candidate = PrivateTokenChallenge(challenge=raw, token_key=key, max_age=max_age)
        if token_types is not None:
            if candidate.token_type not in token_types:
                continue
            try:
                candidate.decode()
            except DecodeError:
                continue
        out.append(candidate)
    return out


def _param(name: str, value: str) -> str:
    return f'{name}="{value}"'


def build_www_authenticate(challenges: list[PrivateTokenChallenge]) -> str:
    """A WWW-Authenticate value with one PrivateToken challenge per item, padded base64url, comma-separated."""
    parts = []
    for ch in challenges:
        params = [_param("challenge", b64url_encode(ch.challenge)), _param("token-key", b64url_encode(ch.token_key))]
        if ch.max_age is not None:
            params.append(_param("max-age", str(ch.max_age)))
        parts.append(f"{SCHEME} " + ", ".join(params))
    return ", ".join(parts)


def build_authorization(token: bytes) -> str:
    """An Authorization value carrying one token (RFC 9577 §2.2)."""
    return f"{SCHEME} " + _param("token", b64url_encode(token))


def parse_authorization(header: str) -> bytes:
    """The token bytes of a ``PrivateToken token="..."`` Authorization value.

    Raises:
        DecodeError: another scheme, no ``token`` parameter, or not base64url.
    """
    challenges = parse_www_authenticate(header)  # credentials have the same grammar as one challenge
    if len(challenges) != 1 or challenges[0].scheme.lower() != SCHEME.lower():
        raise DecodeError("authorization is not one PrivateToken credential")
    token = challenges[0].params.get("token")
    if token is None:
        raise DecodeError("PrivateToken credential has no token parameter")
    return b64url_decode(token)
