#!/usr/bin/env python3
"""What one hop costs per streamed chunk (issue 21), in one run: why ``hop/`` exists.

A source streams ``--streams`` concurrent chunked answers of ``--chunks`` pieces of ``--size`` bytes, one piece every
``--gap`` seconds (as an engine streams tokens); a client reads them through one middle process; the middle's CPU
(utime+stime from /proc over the measured phase) divided by the pieces it forwarded is its cost per chunk. Middles,
interleaved in ``--rounds`` rounds:

* ``aiohttp``: the smallest aiohttp pass-through (server request -> ``ClientSession.post`` -> ``iter_any`` ->
  ``StreamResponse.write``): the baseline, what every hop of the chain was built on;
* ``hop``: the same pass-through with the upstream leg on ``hop.Pool`` and the pieces piped (``Response.pipe`` ->
  ``hop.Downstream``), the server side still aiohttp;
* ``veil-relay``: ``veil relay`` itself (this checkout), with all its checks, in the same place;
* ``veil-relay@DIR`` for each ``--relay-root DIR`` (another checkout, e.g. a worktree of an older commit).

Everything runs under uvloop on 127.0.0.1. A benchmark, not a test: it prints the table and the ratios to the
``aiohttp`` baseline of the same round; the exit status is 0 unless something failed.

Usage::

    scripts/bench/bench_hop.py [--streams 16] [--chunks 100] [--rounds 3] [--relay-root DIR ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bench_env import prepare

ROOT = prepare(__file__, "aiohttp", "httptools", "uvloop")

import httptools  # noqa: E402
import uvloop  # noqa: E402
from aiohttp import web  # noqa: E402

from _common import command_line, cpu_seconds, machine_info  # noqa: E402
from tests.harness import free_port  # noqa: E402

WELL_KNOWN = "/.well-known/ohttp-gateway"


# -- the roles, each run as its own process (``bench_hop.py --role NAME PORT [UPSTREAM_PORT]``) ----------------------


async def source(port: int, chunks: int, size: int, gap: float) -> None:
    piece = b"%x\r\n%b\r\n" % (size, b"s" * size)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if head.startswith(b"GET"):  # a relay's key fetches
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: message/ohttp-chunked-res\r\nIncremental: ?1\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(chunks):
                    writer.write(piece)
                    await asyncio.sleep(gap)
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


async def middle_aiohttp(port: int, up: int) -> None:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(f"http://127.0.0.1:{up}{WELL_KNOWN}", data=body,
                                headers={"Content-Type": "message/ohttp-chunked-req"}) as r:
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers["Content-Type"]})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            async for piece in r.content.iter_any():
                await resp.write(piece)
            await resp.write_eof()
            return resp

    await _serve(forward, port)


async def middle_hop(port: int, up: int) -> None:
    import hop

    pool = hop.Pool()
    origin = hop.Origin.of(f"http://127.0.0.1:{up}")

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        r = await pool.request(origin, "POST", WELL_KNOWN, [("Content-Type", "message/ohttp-chunked-req")], body)
        try:
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers["content-type"]})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(await r.readany())
            if not r.done:
                assert request.transport is not None
                r.pipe(hop.Downstream(r, request.transport, chunked=True).write)  # type: ignore[arg-type]
                await r.finished()
            await resp.write_eof()
            return resp
        finally:
            r.release()

    await _serve(forward, port)


async def _serve(handler: Any, port: int) -> None:
    app = web.Application()
    app.router.add_post("/gw", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# -- the client -------------------------------------------------------------------------------------------------------


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.pieces = 0

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.pieces += 1

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result(None)


async def client(port: int, streams: int, per_stream: int) -> int:
    """``streams`` connections, each asking for ``per_stream`` answers in turn; the pieces received."""
    loop = asyncio.get_running_loop()
    body = b"\x01" + bytes(99)
    request = (b"POST /gw HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: message/ohttp-chunked-req\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    async def one() -> int:
        transport, reader = await loop.create_connection(_Reader, "127.0.0.1", port)
        for _ in range(per_stream):
            reader.done = loop.create_future()
            reader.parser = httptools.HttpResponseParser(reader)
            transport.write(request)
            await asyncio.wait_for(reader.done, 120)
        transport.close()
        return reader.pieces

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


# -- the run ----------------------------------------------------------------------------------------------------------


def _start_middle(name: str, port: int, up: int, root: Path) -> subprocess.Popen[bytes]:
    if name.startswith("veil-relay"):
        env = {**os.environ, "VEIL_RELAY_MAX_IN_FLIGHT_PER_ADDRESS": "1000000",
               "VEIL_RELAY_MAX_CONNECTIONS_PER_ADDRESS": "1000000"}
        return subprocess.Popen([sys.executable, "-c", "import veil_cli, sys; sys.exit(veil_cli.main())", "relay",
                                 "--listen", f"127.0.0.1:{port}", "--gateway", f"gw=http://127.0.0.1:{up}{WELL_KNOWN}",
                                 "--health-interval", "0", "--rate-per-minute", "100000000", "--log-level", "warning"],
                                cwd=root, env={**env, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, __file__, "--role", name, str(port), str(up)], cwd=ROOT)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a middle exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after 30 s")


def measure(name: str, root: Path, src_port: int, args: argparse.Namespace) -> float:
    port = free_port()
    proc = _start_middle(name, port, src_port, root)
    try:
        _wait_port(port, proc)
        time.sleep(0.5)  # a relay's first key fetch
        uvloop.run(client(port, args.streams, 1))  # warm: connections, imports, the first requests
        before = cpu_seconds(proc.pid)
        pieces = uvloop.run(client(port, args.streams, args.per_stream))
        used = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(10)
    expected = args.streams * args.per_stream * args.chunks
    if pieces < expected:  # the client counts what it parsed: fewer means pieces were joined or lost
        print(f"  ({name}: {pieces} pieces reached the client for {expected} sent)")
    return 1e6 * used / expected


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role, port, up = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        uvloop.run({"aiohttp": middle_aiohttp, "hop": middle_hop}[role](port, up))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--source":
        port, chunks, size, gap = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        uvloop.run(source(port, chunks, size, gap))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=16, help="concurrent streams (default 16)")
    ap.add_argument("--per-stream", type=int, default=4, help="answers streamed one after another per stream")
    ap.add_argument("--chunks", type=int, default=100, help="pieces per answer (default 100)")
    ap.add_argument("--size", type=int, default=300, help="bytes per piece (default 300: a padded sealed token)")
    ap.add_argument("--gap", type=float, default=0.01, help="seconds between pieces (default 0.01)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--relay-root", action="append", default=[], metavar="DIR",
                    help="also measure veil relay from this checkout")
    args = ap.parse_args()
    info = machine_info("aiohttp", "uvloop", "httptools")
    print("# One hop's CPU per streamed chunk\n")
    print(f"Machine: {info['cpu']}, {info['usable_cores']} usable cores; {info['python']}; aiohttp "
          f"{info['aiohttp']}, uvloop {info['uvloop']}, httptools {info['httptools']}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"Load: {args.streams} streams x {args.per_stream} answers x {args.chunks} pieces of {args.size} B, one "
          f"every {args.gap * 1000:g} ms; command: {command_line(__file__, sys.argv[1:])}\n")
    src_port = free_port()
    src = subprocess.Popen([sys.executable, __file__, "--source", str(src_port), str(args.chunks), str(args.size),
                            str(args.gap)], cwd=ROOT)
    middles: list[tuple[str, Path]] = [("aiohttp", ROOT), ("hop", ROOT), ("veil-relay", ROOT)]
    middles += [(f"veil-relay@{Path(r).name}", Path(r).resolve()) for r in args.relay_root]
    results: dict[str, list[float]] = {name: [] for name, _ in middles}
    ratios: dict[str, list[float]] = {name: [] for name, _ in middles}
    try:
        _wait_port(src_port, src)
        for rnd in range(args.rounds):
            row = {}
            for name, root in middles:
                row[name] = measure(name, root, src_port, args)
                results[name].append(row[name])
                ratios[name].append(row[name] / row["aiohttp"])
            print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{n} {v:.1f} µs" for n, v in row.items()))
    finally:
        src.terminate()
        src.wait(10)
    print("\n| middle | CPU per chunk (µs), median [min-max] | vs aiohttp pass-through, same round (median) |")
    print("|---|--:|--:|")
    for name, _ in middles:
        v = results[name]
        print(f"| {name} | {statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}] | "
              f"{statistics.median(ratios[name]):.2f}x |")
    print(f"\n(load average at end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
