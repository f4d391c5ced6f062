"""Privacy Pass for Veil: RSA blind signatures (RFC 9474), token type 0x0002 issuance and tokens (RFC 9578), and
the ``PrivateToken`` HTTP authentication scheme (RFC 9577).

Sans-I/O: bytes and strings in, bytes and strings out. Nothing here opens a socket or imports asyncio, aiohttp,
``ohttp``, ``enclave`` or ``proxy``. The issuer's private-key operation is timing-safe (``blindrsa.blind_sign``).
"""

from . import blindrsa
from .auth import (
    SCHEME,
    AuthChallenge,
    PrivateTokenChallenge,
    b64url_decode,
    b64url_encode,
    build_authorization,
    build_www_authenticate,
    parse_authorization,
    parse_private_token_challenges,
    parse_www_authenticate,
)
from .directory import MAX_DIRECTORY_BYTES, MEDIA_TYPE_DIRECTORY, WELL_KNOWN_DIRECTORY, Directory, DirectoryKey
from .errors import (
    DecodeError,
    KeyIdError,
    LocalProtocolError,
    PrivacyPassError,
    RemoteProtocolError,
    UnsupportedError,
    VerifyError,
)
from .tokens import (
    MEDIA_TYPE_TOKEN_REQUEST,
    MEDIA_TYPE_TOKEN_RESPONSE,
    NK,
    TOKEN_TYPE_BLIND_RSA,
    ClientIssuance,
    IssuerKey,
    Token,
    TokenChallenge,
    TokenKey,
    TokenRequest,
    issue,
    token_key_id,
    verify_token,
)

__all__ = [
    "blindrsa",
    "SCHEME",
    "AuthChallenge",
    "PrivateTokenChallenge",
    "b64url_decode",
    "b64url_encode",
    "build_authorization",
    "build_www_authenticate",
    "parse_authorization",
    "parse_private_token_challenges",
    "parse_www_authenticate",
    "MAX_DIRECTORY_BYTES",
    "MEDIA_TYPE_DIRECTORY",
    "WELL_KNOWN_DIRECTORY",
    "Directory",
    "DirectoryKey",
    "DecodeError",
    "KeyIdError",
    "LocalProtocolError",
    "PrivacyPassError",
    "RemoteProtocolError",
    "UnsupportedError",
    "VerifyError",
    "MEDIA_TYPE_TOKEN_REQUEST",
    "MEDIA_TYPE_TOKEN_RESPONSE",
    "NK",
    "TOKEN_TYPE_BLIND_RSA",
    "ClientIssuance",
    "IssuerKey",
    "Token",
    "TokenChallenge",
    "TokenKey",
    "TokenRequest",
    "issue",
    "token_key_id",
    "verify_token",
]
