"""The relay keeps no per-client logs (issue 15, item 7): hostile and malformed requests from a real socket must not
put the client's address or any byte it sent into the relay's log, aiohttp's own loggers included."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

from .conftest import Proc, free_port

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
CLIENT = "127.0.0.9"  # the attacker's source address: any occurrence of it in the log is a leak
CANARY = "hdrcanary-7Q2x"


def send(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)) as s:
        try:
            s.sendall(payload)
            out = b""
            while (chunk := s.recv(65536)) and b"\r\n\r\n" not in out + chunk:
                out += chunk
            return out + chunk
        except (ConnectionError, TimeoutError):
            return b""


def test_malformed_requests_leave_no_address_or_header_bytes_in_the_relay_log(
        veil_process: Callable[..., Proc]) -> None:
    gp, rp = free_port(), free_port()
    veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp)
    relay = veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw=http://127.0.0.1:{gp}{WELL_KNOWN}",
                          "--log-level", "info"], rp)
    c = CANARY.encode()
    cases = [
        b"POST /gw HTTP/1.1\r\nHost: x\r\nX-Bad\x01Name-" + c + b": v\r\n\r\n",  # bad header line
        b"POST /gw HTTP/1.1\r\nHost: x\r\nX-Ok: " + c + b"\x00\x7f\r\n\r\n",  # bad bytes in a value
        b"G" + c + b"@T / HTTP/1.1\r\nHost: x\r\n\r\n",  # invalid method
        b"POST /gw HTTP/1.1\r\nHost: x\r\nX-Big: " + c * 20_000 + b"\r\n\r\n",  # oversize header
        b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Length: " + c + b"\r\n\r\n",  # bad Content-Length
        b"POST /gw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + c + b"\r\n\r\n",  # unknown transfer coding
        b"GET /" + c + b" HTTP/9.9\r\nHost: x\r\n\r\n",  # bad version
        b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz" + c + b"\r\n",  # bad chunk size
        c + b" \x16\x03\x01" + os.urandom(200),  # garbage
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello
        b"POST /gw HTTP/1.1\r\nHost: x\r\nUser-Agent: " + c + b"\r\nContent-Type: message/ohttp-req\r\n"
        b"Content-Length: 10\r\n\r\n" + c[:10],  # well formed: forwarded, the gateway says 4xx
    ]
    replies = [send(relay.port, p) for p in cases * 3]
    assert sum(r[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4") for r in replies) >= len(cases), [r[:40] for r in replies]
    time.sleep(0.5)  # let the last error records reach the log file
    relay.stop()
    log = relay.log()
    # aiohttp did report the bad requests (as before, at ERROR) ...
    assert "aiohttp.server" in log, log[-2000:]
    # ... but no line carries the client's address or the bytes it sent.
    assert CLIENT not in log, [line for line in log.splitlines() if CLIENT in line][:3]
    assert CANARY not in log and CANARY[:8] not in log, [line for line in log.splitlines() if CANARY[:8] in line][:3]
    assert "X-Bad" not in log and "Traceback" not in log


def test_debug_level_warns_that_logs_may_hold_client_addresses(veil_process: Callable[..., Proc]) -> None:
    rp = free_port()
    relay = veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", "gw=http://127.0.0.1:9/x",
                          "--log-level", "debug"], rp)
    relay.stop()
    assert "may contain client ADDRESSES" in relay.log()
