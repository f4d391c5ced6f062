#!/usr/bin/env python3
"""Privacy Pass costs, measured in one run against their baselines.

1. Issuance: blind signatures per second in-process (the timing-safe BlindSign: base blinding + CRT powmod_sec +
   check) next to a textbook ``pow(m, d, n)``, and token requests per second at a ``veil issuer`` app over loopback
   HTTP (concurrent clients).
2. The relay's added time per request: the same real chain (an echo gateway process, the relay app, the in-process
   client) with ``setup_tokens`` (verification + SQLite double-spend check; tokens fetched ahead) and without.

    .venv/bin/python scripts/bench/bench_tokens.py [--requests 300] [--issue 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from _bench_env import prepare

prepare(__file__, "aiohttp", "prometheus_client")

from aiohttp.test_utils import TestServer  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import privacypass  # noqa: E402
from proxy.client.httpx_transport import VeilAsyncTransport  # noqa: E402
from proxy.client.tokens import TokenWallet  # noqa: E402
from proxy.issuer import IssuerConfig  # noqa: E402
from proxy.issuer import create_app as issuer_app  # noqa: E402
from proxy.relay import RelayConfig  # noqa: E402
from proxy.relay import create_app as relay_app  # noqa: E402
from proxy.relay.tokens import TokenPolicy, setup_tokens  # noqa: E402
from tests.harness import free_port, start_veil  # noqa: E402

KEY = "sk-bench"


def bench_sign(n: int) -> tuple[float, float]:
    sk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = privacypass.IssuerKey.from_private_key(sk)
    ch = privacypass.TokenChallenge(token_type=2, issuer_name="bench")
    reqs = [privacypass.ClientIssuance.begin(key.public, ch).request for _ in range(n)]
    t = time.perf_counter()
    for r in reqs:
        privacypass.issue([key], r)
    safe = n / (time.perf_counter() - t)
    d, nn = sk.private_numbers().d, sk.public_key().public_numbers().n
    t = time.perf_counter()
    for r in reqs[: max(1, n // 10)]:
        pow(int.from_bytes(r.blinded_msg, "big"), d, nn)
    textbook = max(1, n // 10) / (time.perf_counter() - t)
    return safe, textbook


async def bench_issuer_http(tmp: str, n: int, concurrency: int = 8) -> float:
    os.environ["VEIL_ISSUER_API_KEYS"] = KEY
    server = TestServer(issuer_app(IssuerConfig(state_path=f"{tmp}/issuer.sqlite", tokens_per_key=0)))
    await server.start_server()
    try:
        wallet = TokenWallet(str(server.make_url("")).rstrip("/"), KEY, batch=n, concurrency=concurrency)
        t = time.perf_counter()
        await wallet.prefetch()
        rate = len(wallet) / (time.perf_counter() - t)
        await wallet.close()
        return rate
    finally:
        await server.close()


async def bench_relay(tmp: str, gateway_base: str, n: int, tokens: bool) -> list[float]:
    app = relay_app(RelayConfig(gateways={"gw": gateway_base + "/.well-known/ohttp-gateway"}))
    issuer = None
    wallet = None
    if tokens:
        issuer = TestServer(issuer_app(IssuerConfig(state_path=f"{tmp}/issuer-r.sqlite", tokens_per_key=0)))
        await issuer.start_server()
        setup_tokens(app, TokenPolicy(issuer_url=str(issuer.make_url("")).rstrip("/")), f"{tmp}/spent.sqlite",
                     CollectorRegistry())
    relay = TestServer(app)
    await relay.start_server()
    transport = VeilAsyncTransport(str(relay.make_url("/gw")), allow_simulated=True)
    if tokens:
        assert issuer is not None
        wallet = TokenWallet(str(issuer.make_url("")).rstrip("/"), KEY, batch=n + 20, low_water=0)
        await wallet.prefetch()  # fetched ahead: spending adds no round trip
        transport.client._tokens = wallet  # as VeilAsyncTransport(tokens=wallet) spends them: on its hop.Pool
    body = b'{"model":"echo","messages":[{"role":"user","content":"hi"}]}'
    headers = [("content-type", "application/json")]
    times = []
    try:
        for i in range(n + 10):
            t = time.perf_counter()
            r = await transport.client.request("POST", "/v1/chat/completions", headers, body)
            assert r.status == 200, r.status
            if i >= 10:  # warm-up
                times.append(time.perf_counter() - t)
    finally:
        await transport.aclose()
        if wallet is not None:
            await wallet.close()
        await relay.close()
        if issuer is not None:
            await issuer.close()
    return times


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--issue", type=int, default=400)
    args = ap.parse_args()
    safe, textbook = bench_sign(args.issue)
    print(f"blind signatures/s in-process: timing-safe {safe:.0f}, textbook pow(m, d, n) {textbook:.0f} "
          f"(ratio {safe / textbook:.1f}x)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VEIL_ISSUER_API_KEYS"] = KEY
        print(f"issuer over HTTP (8 concurrent requests): {await bench_issuer_http(tmp, args.issue):.0f} tokens/s")
        port = free_port()
        gw = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}"], port)
        try:
            base = await bench_relay(tmp, gw.base, args.requests, tokens=False)
            tok = await bench_relay(tmp, gw.base, args.requests, tokens=True)
        finally:
            gw.stop()
    mb, mt = statistics.median(base), statistics.median(tok)
    print(f"request through relay+gateway, median of {args.requests}: without tokens {mb * 1e3:.2f} ms, "
          f"with tokens {mt * 1e3:.2f} ms: +{(mt - mb) * 1e3:.2f} ms per request ({mt / mb:.2f}x)")
    print(f"  means: {statistics.mean(base) * 1e3:.2f} ms vs {statistics.mean(tok) * 1e3:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
