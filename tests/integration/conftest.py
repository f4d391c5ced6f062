"""Real processes on loopback: start a ``veil`` subcommand, wait until healthy, stop it afterwards."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import pytest

# The process harness lives in tests/harness.py (the benchmarks in scripts/bench use it too); its names stay
# importable from here, as the test modules have always imported them.
from tests.harness import REPO, Proc, free_port, start_veil, stop_all

__all__ = ["REPO", "Chain", "Proc", "free_port", "running_chain", "start_veil", "veil_process", "sdk_chat_and_stream"]


@dataclass
class Chain:
    """gateway, relay (one gateway named ``gw``) and proxy, running on loopback."""

    gateway: Proc
    relay: Proc
    proxy: Proc

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` (through the proxy)."""
        return self.proxy.base + "/v1"

    @property
    def relay_url(self) -> str:
        return self.relay.base + "/gw"

    def __iter__(self) -> Iterator[Proc]:  # (gateway, relay, proxy) = chain
        return iter((self.gateway, self.relay, self.proxy))

    def __getitem__(self, i: int) -> Proc:
        return (self.gateway, self.relay, self.proxy)[i]


@contextlib.contextmanager
def running_chain(gateway_args: list[str] | None = None, relay_args: list[str] | None = None, *,
                  gateway_timeout: float = 30.0) -> Iterator[Chain]:
    """``veil gateway`` (the echo engine unless ``gateway_args`` say otherwise), ``veil relay`` and ``veil proxy
    --insecure-allow-simulated`` as real processes on free loopback ports; all stopped (logs removed) on exit."""
    gp, rp, pp = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    try:
        procs.append(start_veil(["gateway", "--listen", f"127.0.0.1:{gp}",
                                 *(gateway_args if gateway_args is not None else ["--engine", "echo"])],
                                gp, timeout=gateway_timeout))
        procs.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway",
                                 f"gw=http://127.0.0.1:{gp}/.well-known/ohttp-gateway", *(relay_args or [])], rp))
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                 "--insecure-allow-simulated"], pp))
        yield Chain(*procs)
    finally:
        stop_all(procs, remove_logs=True)


@pytest.fixture
def veil_process() -> Iterator[object]:
    """Factory fixture: ``veil_process(args, port)``; every process is stopped at teardown."""
    procs: list[Proc] = []

    def factory(args: list[str], port: int, **kw: object) -> Proc:
        p = start_veil(args, port, **kw)  # type: ignore[arg-type]
        procs.append(p)
        return p

    yield factory
    stop_all(procs, remove_logs=True)


async def sdk_chat_and_stream(transport: object, text: str, stream_text: str) -> None:
    """The official async SDK through ``transport`` (Veil's in-process httpx transport): one chat completion and
    one streamed, each echoed back whole by the echo engine."""
    import httpx2 as httpx
    import openai

    client = openai.AsyncOpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                                http_client=httpx.AsyncClient(transport=transport))  # type: ignore[arg-type]
    try:
        r = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
        assert r.choices[0].message.content == text
        parts = []
        async for c in await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": stream_text}], stream=True
        ):
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
        assert "".join(parts) == stream_text
    finally:
        await client.close()
