"""The NVIDIA collateral a bundle carries in ``certs`` (RIMs, stapled OCSP responses): each a JSON list of base64
documents, bounded in count and size because the relay, not the gateway, hands them to the client."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import orjson

from ..errors import EvidenceFormatError


def encode_b64_list(key: str, documents: Sequence[bytes], max_items: int) -> str:
    """``certs[key]`` for ``documents`` (order kept)."""
    if len(documents) > max_items:
        raise ValueError(f"{len(documents)} {key} documents (limit {max_items})")
    return orjson.dumps([base64.b64encode(d).decode("ascii") for d in documents]).decode("ascii")


def decode_b64_list(key: str, text: str, max_items: int, max_size: int) -> list[bytes]:
    """The documents of ``certs[key]``.

    Raises:
        EvidenceFormatError: not a JSON list of at most ``max_items`` base64 strings of at most ``max_size`` bytes.
    """
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError(f"{key} is not JSON: {exc}") from None
    if not isinstance(items, list) or len(items) > max_items or not all(isinstance(i, str) for i in items):
        raise EvidenceFormatError(f"{key} must be a list of at most {max_items} base64 strings")
    out: list[bytes] = []
    for i, item in enumerate(items):
        if len(item) > max_size * 4 // 3 + 4:  # before decoding: the bound holds for what is parsed, too
            raise EvidenceFormatError(f"{key}[{i}] is too large")
        try:
            out.append(base64.b64decode(item, validate=True))
        except binascii.Error:
            raise EvidenceFormatError(f"{key}[{i}] is not base64") from None
    return out
