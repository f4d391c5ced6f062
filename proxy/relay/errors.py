"""The relay's own answers: RFC 9457 problem details, never cached, and the outcome each one counts under.

A refusal is always plain HTTP (the relay cannot encapsulate), and says what the client can do about it without
naming the client.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .metrics import RelayMetrics


def problem(status: int, title: str, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An ``application/problem+json`` answer with ``Cache-Control: no-store``."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/problem+json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def refuse(metrics: RelayMetrics, outcome: str, status: int, title: str, detail: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    """:func:`problem`, counted under ``outcome`` in ``veil_relay_requests_total``."""
    metrics.outcome(outcome).inc()
    return problem(status, title, detail, headers)


def forbidden(metrics: RelayMetrics) -> web.Response:
    """A POST to a name that is not on the allow list."""
    return refuse(metrics, "forbidden", 403, "unknown gateway", "this relay forwards only to its configured gateways")


def bad_gateway(detail: str = "the gateway is unreachable") -> web.Response:
    return problem(502, "bad gateway", detail)


def gateway_timeout(detail: str) -> web.Response:
    return problem(504, "gateway timeout", detail)
