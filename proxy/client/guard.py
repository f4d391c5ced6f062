"""Host and Origin checks for ``veil proxy``: only the user's own programs and its own page may use it.

Why: the proxy is an unauthenticated OpenAI endpoint on loopback that speaks for the user (their verified
gateway, their API key). A web page on another site can make the browser send requests to 127.0.0.1, and with
DNS rebinding (a name of the attacker's that first resolves to their server, then to 127.0.0.1) read the answers
as same-origin. Both carry the attacker's name in ``Host`` or their site in ``Origin``: the proxy answers only
requests whose Host is one of its own names, and whose Origin, when a browser sends one, is its own page.
The OpenAI SDK, curl and other programs send no Origin and the Host they were given (127.0.0.1:PORT).
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable, Final, Iterable

from aiohttp import web

__all__ = ["allowed_hosts", "host_guard"]

_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts(listen_host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values the proxy answers: its listen address, loopback names when it listens on loopback (or
    on every address), and the names the user added (``--allowed-host``), each with the port."""
    names = {listen_host if ":" not in listen_host or listen_host.startswith("[") else f"[{listen_host}]"}
    try:
        ip = ipaddress.ip_address(listen_host.strip("[]"))
        local = ip.is_loopback or ip.is_unspecified
    except ValueError:
        local = listen_host == "localhost"
    if local:
        names.update(_LOOPBACK_NAMES)
    names.update(n.strip().lower() for n in extra if n.strip())
    return frozenset(f"{n.lower()}:{port}" for n in names)


def host_guard(hosts: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: 421 for a foreign ``Host``, 403 for a foreign ``Origin`` (plain errors, before any
    encapsulation: nothing leaves the machine for such a request)."""
    origins = frozenset(f"http://{h}" for h in hosts)

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host = request.headers.get("Host", "").lower()
        if host not in hosts:
            raise web.HTTPMisdirectedRequest(
                text="veil proxy answers only requests addressed to its own host and port (see --allowed-host)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in origins:
            raise web.HTTPForbidden(text="veil proxy: requests from other web origins are refused")
        return await handler(request)

    return guard
