"""Real processes on loopback: start a ``veil`` subcommand, wait until healthy, stop it afterwards."""

from __future__ import annotations

from typing import Iterator

import pytest

# The process harness lives in tests/harness.py (the benchmarks in scripts/bench use it too); its names stay
# importable from here, as the test modules have always imported them.
from tests.harness import REPO, Proc, free_port, start_veil, stop_all

__all__ = ["REPO", "Proc", "free_port", "start_veil", "veil_process", "sdk_chat_and_stream"]


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
