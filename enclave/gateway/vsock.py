"""Serving the gateway on AF_VSOCK, the only transport into an AWS Nitro enclave (no network inside).

``--listen vsock:PORT`` (any CID: the enclave's own) or ``vsock:CID:PORT``. The parent instance forwards TCP to the
enclave (``socat TCP-LISTEN:8081,fork,reuseaddr VSOCK-CONNECT:<enclave CID>:8081``), or a relay connects to
``vsock://CID:PORT`` itself. aiohttp serves the socket as any other: ``web.run_app(app, sock=vsock_socket(...),
loop=vsock_event_loop())``.

The loop must be asyncio's own, not uvloop: uvloop adopts every non-AF_UNIX socket as a libuv TCP handle and sets
TCP_NODELAY on each accepted connection, which vsock refuses (ENOPROTOOPT), so every connection would be dropped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

__all__ = ["VMADDR_CID_ANY", "VMADDR_CID_LOCAL", "VMADDR_PORT_ANY", "VsockListener", "is_vsock", "parse_listen",
           "vsock_event_loop", "vsock_socket"]

VMADDR_CID_ANY: Final = 0xFFFFFFFF  # linux/vm_sockets.h: -1U, "any CID" when binding
#: linux/vm_sockets.h: 1, the local (loopback) CID; needs the vsock_loopback transport. Python has no constant for it.
VMADDR_CID_LOCAL: Final = 1
VMADDR_PORT_ANY: Final = 0xFFFFFFFF  # -1U: let the kernel choose when binding
MAX_PORT: Final = VMADDR_PORT_ANY - 1
PREFIX: Final = "vsock:"
BACKLOG: Final = 128


def is_vsock(spec: str) -> bool:
    """``spec`` names a vsock address (``vsock:...``) rather than ``HOST:PORT``."""
    return spec.startswith(PREFIX)


def parse_listen(spec: str) -> tuple[int, int]:
    """``"vsock:PORT"`` -> ``(VMADDR_CID_ANY, PORT)``; ``"vsock:CID:PORT"`` -> ``(CID, PORT)``.

    Raises:
        ValueError: not ``vsock:[CID:]PORT`` with decimal numbers in range.
    """
    if not is_vsock(spec):
        raise ValueError(f"vsock address must start with {PREFIX!r}, got {spec!r}")
    parts = spec[len(PREFIX):].split(":")
    if len(parts) not in (1, 2) or not all(p.isdecimal() for p in parts):
        raise ValueError(f"vsock address must be vsock:PORT or vsock:CID:PORT (decimal numbers), got {spec!r}")
    cid = int(parts[0]) if len(parts) == 2 else VMADDR_CID_ANY
    port = int(parts[-1])
    if not 0 < port <= MAX_PORT:
        raise ValueError(f"vsock port must be 1..{MAX_PORT}, got {port}")
    if cid > VMADDR_CID_ANY:
        raise ValueError(f"vsock CID must be at most {VMADDR_CID_ANY} (VMADDR_CID_ANY), got {cid}")
    return cid, port


class VsockListener(socket.socket):
    """A listening AF_VSOCK socket whose ``getsockname()`` aiohttp can print.

    ``web.SockSite`` (which ``web.run_app(sock=...)`` uses) names every non-AF_UNIX listener
    ``URL.build(host=getsockname()[0], port=getsockname()[1])``: vsock's integer CID makes that raise TypeError, and
    yarl refuses ports over 65535 (vsock ports are 32 bits). The name is only printed, so the CID is given as text
    and a large port left out; :attr:`address` keeps the real ``(CID, PORT)``. Accepted connections are plain
    sockets with the real vsock peer and local addresses.
    """

    @property
    def address(self) -> tuple[int, int]:
        """The bound ``(CID, PORT)``."""
        cid, port = super().getsockname()
        return int(cid), int(port)

    def getsockname(self) -> tuple[str, int | None]:
        cid, port = self.address
        return f"vsock-cid-{'any' if cid == VMADDR_CID_ANY else cid}", port if port <= 0xFFFF else None


def vsock_socket(cid: int, port: int, backlog: int = BACKLOG) -> VsockListener:
    """A bound, listening, non-blocking AF_VSOCK stream socket for ``web.run_app(app, sock=...)``.

    ``port`` may be ``VMADDR_PORT_ANY`` (0xFFFFFFFF) to let the kernel choose (read it from ``.address``).

    Raises:
        OSError: no vsock support here (``EAFNOSUPPORT``: no vsock transport loaded), the CID is not this machine's
            (``EADDRNOTAVAIL``), or the port is taken (``EADDRINUSE``).
    """
    sock = VsockListener(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def vsock_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio (selector) event loop, whatever loop policy is installed: uvloop cannot serve vsock (above)."""
    return asyncio.SelectorEventLoop()
