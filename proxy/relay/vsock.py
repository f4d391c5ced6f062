"""Gateways on AF_VSOCK (AWS Nitro Enclaves): ``--gateway NAME=vsock://CID:PORT/.well-known/ohttp-gateway``.

aiohttp's client speaks only TCP and Unix sockets, so for each vsock replica the relay starts a loopback TCP listener
(``127.0.0.1``, a kernel-chosen port) that copies every connection byte for byte to a fresh vsock connection, and
sends that replica's requests to ``http://127.0.0.1:<port>/<path>``. The bridge adds no framing and never parses:
HTTP, keep-alive and half-closes pass through as they are. A vsock connect that fails (refused, timed out, no vsock
here) closes the client side at once, so the relay answers 502 as for any unreachable gateway. To the relay that
failure looks like a request already sent, so it is not retried on another replica; ``/healthz`` checks take such a
replica out of rotation. The listener is on loopback only and carries what the relay would send anyway (ciphertext).

The connect function is injected, so tests drive the bridge with an AF_UNIX upstream on machines without vsock. Works on
asyncio's loop and on uvloop (see :func:`connect_socket` for what that rules out).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("veil.relay")

SCHEME: Final = "vsock://"
MAX_CID: Final = 0xFFFFFFFE  # 0xFFFFFFFF is VMADDR_CID_ANY, which only a listener may use
MAX_PORT: Final = 0xFFFFFFFE  # 0xFFFFFFFF is VMADDR_PORT_ANY
#: One read's worth; the bridge keeps at most this much (plus the transports' write buffers) per direction.
CHUNK: Final = 64 * 1024

#: Opens one upstream connection: a connected, non-blocking stream socket; raises OSError (or TimeoutError) when the
#: gateway cannot be reached.
Connect = Callable[[], Awaitable[socket.socket]]


@dataclass(frozen=True)
class VsockTarget:
    """A parsed ``vsock://CID:PORT/path`` gateway URL."""

    cid: int
    port: int
    path: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.cid}:{self.port}{self.path}"


def is_vsock_url(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_vsock_url(url: str) -> VsockTarget:
    """``vsock://CID:PORT[/path]`` with decimal CID and port.

    Raises:
        ValueError: anything else (user info, a query or fragment, numbers out of range).
    """
    if not is_vsock_url(url):
        raise ValueError(f"gateway URL {url!r} is not {SCHEME}CID:PORT/path")
    rest = url[len(SCHEME):]
    authority, slash, path = rest.partition("/")
    cid_text, colon, port_text = authority.partition(":")
    if not colon or not cid_text.isdecimal() or not port_text.isdecimal() or "?" in path or "#" in path:
        raise ValueError(f"gateway URL {url!r} must be {SCHEME}CID:PORT/path (decimal CID and port, no query)")
    cid, port = int(cid_text), int(port_text)
    if not 0 <= cid <= MAX_CID or not 0 < port <= MAX_PORT:
        raise ValueError(f"gateway URL {url!r}: CID must be 0..{MAX_CID} and port 1..{MAX_PORT}")
    return VsockTarget(cid, port, slash + path)


async def connect_socket(family: int, address: Any) -> socket.socket:
    """A connected non-blocking stream socket, on any event loop.

    Not ``loop.sock_connect``: uvloop resolves every non-AF_UNIX address through getaddrinfo, which refuses vsock's
    integer CID. The upstream is then driven with ``loop.sock_recv``/``sock_sendall`` rather than a transport for the
    same reason: uvloop adopts sockets as TCP handles and sets TCP_NODELAY, which vsock refuses (ENOPROTOOPT).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), _set_result, writable)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:  # cancelled by the connect timeout, too: the socket must not leak
        sock.close()
        raise
    return sock


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def vsock_connector(cid: int, port: int) -> Connect:
    """A :data:`Connect` to AF_VSOCK ``(cid, port)``."""

    async def connect() -> socket.socket:
        return await connect_socket(socket.AF_VSOCK, (cid, port))

    return connect


class VsockBridge:
    """A loopback TCP listener whose connections are each copied to a new upstream connection."""

    def __init__(self, connect: Connect, *, label: str, connect_timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self._connect = connect
        self.label = label  # the upstream, for logs: "gw (vsock://3:8081/.well-known/ohttp-gateway)"
        self.connect_timeout = connect_timeout
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False  # warn once per outage, not once per connection

    def url(self, path: str = "") -> str:
        """``http://127.0.0.1:<port><path>``: where to send what was meant for the upstream."""
        return f"http://{self.host}:{self.port}{path}"

    async def start(self) -> int:
        """Listen; returns the port."""
        self._server = await asyncio.start_server(self._handle, self.host, 0, limit=CHUNK)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every bridged connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._bridge(client_r, client_w)
        except asyncio.CancelledError:
            # close() cancelled us and cleaned up in _bridge; end normally, because asyncio.start_server's done
            # callback calls task.exception(), which raises (and logs a traceback) for a cancelled task on 3.11.
            pass
        finally:
            self._tasks.discard(task)

    async def _bridge(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                up = await self._connect()
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            (log.debug if self._failing else log.warning)("cannot connect to gateway %s: %s", self.label, why)
            self._failing = True
            client_w.transport.abort()  # a reset, at once: the relay's request fails and it answers 502
            return
        except BaseException:
            client_w.transport.abort()
            raise
        if self._failing:
            log.info("gateway %s is reachable again", self.label)
            self._failing = False
        loop = asyncio.get_running_loop()
        pipes = [asyncio.create_task(_to_upstream(loop, client_r, up)),
                 asyncio.create_task(_to_client(loop, up, client_w))]
        clean = False
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            # Both directions ended with EOF; otherwise one side broke (reset) and the other cannot complete either.
            clean = len(done) == len(pipes) and all(t.exception() is None for t in done)
        finally:
            for t in pipes:
                t.cancel()
            try:
                await asyncio.gather(*pipes, return_exceptions=True)  # readers and writers off the socket first
            finally:
                # Also when the bridge is closed (this task cancelled) during the gather: nothing may stay open.
                up.close()
                if clean:
                    client_w.close()
                else:
                    client_w.transport.abort()
            with contextlib.suppress(OSError):
                await client_w.wait_closed()


async def _to_upstream(loop: asyncio.AbstractEventLoop, src: asyncio.StreamReader, up: socket.socket) -> None:
    """Copy until the client's EOF, then half-close the upstream (its answer may still be coming)."""
    while data := await src.read(CHUNK):
        await loop.sock_sendall(up, data)
    up.shutdown(socket.SHUT_WR)


async def _to_client(loop: asyncio.AbstractEventLoop, up: socket.socket, dst: asyncio.StreamWriter) -> None:
    """Copy until the upstream's EOF, then half-close the client (it may still be sending)."""
    while data := await loop.sock_recv(up, CHUNK):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()
