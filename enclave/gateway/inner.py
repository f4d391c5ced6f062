"""After decapsulation: the inner request's own rules (replay, ``Date``), then the OpenAI API.

The gateway's own answers (a replay, a ``Date`` outside the window, a bug) are built here as :class:`InnerResponse`
like the API's and the engines' answers, so every inner response is encoded the same way. Nothing here logs
request or response content.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import orjson

import ohttp
from ohttp import bhttp

from ..api import ApiRequest, openai_error
from ..engines.base import InnerResponse
from .replay import http_date, parse_http_date
from .state import GatewayState

__all__ = ["MAX_REQUEST_CHUNKS", "PROBLEM_DATE", "date_refused", "replay_refused", "serve_inner"]

log = logging.getLogger("veil.gateway")

PROBLEM_DATE: Final = "https://iana.org/assignments/http-problem-types#date"
#: What one request may cost the gateway to decode, however it is framed: a body of millions of one-byte
#: indeterminate-length chunks (or chunked-OHTTP chunks, one AEAD open each) would hold the event loop for seconds.
#: Honest clients send one chunk; a client streaming a 4 MiB body in 1 KiB pieces still fits.
MAX_REQUEST_CHUNKS: Final = 4096
_REQUEST_LIMITS: Final = bhttp.Limits(
    max_field_section_size=64 * 1024, max_fields=128, max_content_chunks=MAX_REQUEST_CHUNKS
)


def replay_refused() -> InnerResponse:
    """The answer to an ``enc`` seen before within the replay window (RFC 9458 §6.5)."""
    return openai_error(400, "This request was already received (replay).", code="replayed_request")


def date_refused() -> InnerResponse:
    """The answer to a missing or unacceptable ``Date`` (RFC 9458 §6.5.1): a ``date`` problem carrying the
    gateway's own ``Date``, so the client can correct its clock and retry."""
    body = {"type": PROBLEM_DATE, "title": "date not acceptable", "status": 400}
    return InnerResponse(
        status=400,
        headers=((b"content-type", b"application/problem+json"), (b"date", http_date().encode("ascii"))),
        body=orjson.dumps(body),
    )


def _date_acceptable(state: GatewayState, req: bhttp.Request) -> bool:
    date = req.header(b"date")
    if date is None:
        return not state.config.require_date
    t = parse_http_date(date)
    return t is not None and abs(time.time() - t) <= state.config.replay_window


async def serve_inner(state: GatewayState, inner: bytes, enc: bytes) -> tuple[str, InnerResponse]:
    """Decode the inner BHTTP request, apply replay and ``Date`` rules, and call the API; returns the metrics
    outcome and the response. Never raises."""
    if state.replay.seen(enc):
        return "replay", replay_refused()
    try:
        req = bhttp.decode_request(inner, _REQUEST_LIMITS)
    except ohttp.LimitError as exc:
        return "inner_decode_error", openai_error(413, f"Binary HTTP request over a limit: {exc}.",
                                                  code="request_too_complex")
    except ohttp.RemoteProtocolError as exc:
        return "inner_decode_error", openai_error(400, f"Malformed binary HTTP request: {exc}.", code="bad_bhttp")
    if not _date_acceptable(state, req):
        return "date", date_refused()
    api_req = ApiRequest(
        method=req.method.decode("ascii"), path=req.path.decode("latin-1"), headers=req.headers, body=req.content
    )
    try:
        return "ok", await state.api.handle(api_req)
    except Exception as exc:  # a bug must not become a traceback for the client, nor leak content into logs
        log.error("internal error while serving an inner request: %s (content not logged)", type(exc).__name__)
        return "internal_error", openai_error(500, "Internal error in the gateway.", code="internal_error")
