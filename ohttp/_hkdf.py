"""RFC 5869 HKDF-Expand by hash name: the one loop both HPKE key schedules (``_hpke`` for the DHKEMs, ``_xwing``
for X-Wing) share. Private: not part of the public API."""

from __future__ import annotations

import hmac

__all__: list[str] = []


def expand(name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand(prk, info, length) with HMAC over the hash ``name`` (``"sha256"``, ...)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), name)
        out += block
        counter += 1
    return out[:length]
