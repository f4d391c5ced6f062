"""Any OpenAI-compatible server on loopback (for instance a vLLM the operator started)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import orjson

import hop

from .base import SSE, EngineUnavailable, InnerResponse
from .selfcheck import SELF_CHECKS, EngineSelfCheckFailed, SelfCheck, cpu_summary, judge
from .sse import SseStream

log = logging.getLogger("veil.engine")

#: Seconds an engine connection may wait idle in the pool before it is no longer reused: below the engine server's own
#: keep-alive (uvicorn's ``timeout_keep_alive``, 5 s by default, which vLLM keeps), so the gateway never sends a
#: request on a connection the engine is closing at that moment (which would fail the request with a 503 and mark the
#: engine unhealthy). ``hop.Pool``'s default (15 s) and aiohttp's connector's (15 s) are both longer.
IDLE_TIMEOUT: Final = 4.0


def require_loopback(url: str) -> None:
    """Refuse an upstream outside the TEE: plaintext must not leave the machine."""
    host = urlsplit(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise ValueError(f"upstream {url!r} is not on loopback; the gateway only forwards plaintext inside the TEE")


class UpstreamEngine:
    """Forwards to ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    Requests travel over a :class:`hop.Pool`, whose streamed answers can be pushed from the socket's callback
    (:class:`~enclave.engines.sse.SseStream`): every token crosses this hop. The rare control requests (models,
    health, the self-check) keep an aiohttp session, for its whole-request timeouts and JSON helpers.
    """

    kind = "upstream"

    def __init__(self, base_url: str, *, read_timeout: float = 600.0, self_check: bool = False,
                 startup_timeout: float = 600.0) -> None:
        require_loopback(base_url)
        self.base_url = base_url.rstrip("/")
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._pool: hop.Pool | None = None
        self._origin = hop.Origin.of(self.base_url)
        self._prefix = urlsplit(self.base_url).path  # a base URL's own path, kept in front of each request's
        self._models: list[str] | None = None
        self._healthy = False
        #: ask SELF_CHECKS before reporting healthy (see selfcheck.py); until it passed, healthy() is False
        self.self_check = self_check
        self._checked = not self_check
        self.startup_timeout = startup_timeout
        #: what to tell the operator when the self-check fails (the engine's own settings and the fix)
        self.self_check_hint = "check the upstream server's model and numerics"

    def open_session(self) -> None:
        """The pooled connections to the upstream (idempotent)."""
        if self._pool is None:
            # As the aiohttp session's timeouts were: 5 s to connect, then the engine may stay silent for
            # read_timeout (before its head, or between two pieces of a stream), however long it streams.
            self._pool = hop.Pool(connect_timeout=5, read_timeout=self._read_timeout, idle_timeout=IDLE_TIMEOUT)
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self._read_timeout)
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=IDLE_TIMEOUT),  # as above
            )

    async def start(self) -> None:
        self.open_session()
        if not self.self_check:
            await self.probe()
            return
        # The check needs a serving upstream: wait for it (start() runs in the background of the gateway).
        deadline = time.monotonic() + self.startup_timeout
        while not await self.probe():
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"the upstream did not answer within {self.startup_timeout:.0f} s")
            await asyncio.sleep(0.5)
        await self.run_self_check()

    async def run_self_check(self) -> None:
        """Ask every :data:`SELF_CHECKS` question greedily (at once: the engine batches them, so the check costs
        about one short answer); raise :class:`EngineSelfCheckFailed` naming the CPU, the engine's settings and the
        fix at a wrong answer. Logged either way."""
        models = self._models or []
        if not models:
            raise EngineSelfCheckFailed("the engine lists no model to ask the self-check")
        t0 = time.monotonic()
        answers = await asyncio.gather(*(self._ask(models[0], check) for check in SELF_CHECKS))
        for check, answer in zip(SELF_CHECKS, answers):
            if not judge(check, answer):
                log.error("engine self-check FAILED: %r answered %r at temperature 0 (expected %r)",
                          check.question, answer[:120], check.expect)
                raise EngineSelfCheckFailed(
                    f"the model answered {check.question!r} with {answer[:80]!r} at temperature 0 (expected "
                    f"{check.expect!r}): its numerics are wrong on this machine. CPU: {cpu_summary()}. "
                    f"{self.self_check_hint}"
                )
        self._checked = True
        log.info("engine self-check passed in %.2f s (%d greedy questions with known answers)",
                 time.monotonic() - t0, len(SELF_CHECKS))

    async def _ask(self, model: str, check: SelfCheck) -> str:
        assert self._session is not None
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": check.question}],
                             "temperature": 0, "max_tokens": check.max_tokens, "stream": False})
        try:
            async with self._session.post(self.base_url + "/v1/chat/completions", data=body,
                                          headers={"content-type": "application/json"},
                                          timeout=aiohttp.ClientTimeout(total=120)) as r:
                status, raw = r.status, await r.read()
            if status != 200:
                raise EngineSelfCheckFailed(f"the engine answered the self-check question with HTTP {status}")
            answer = orjson.loads(raw)["choices"][0]["message"]["content"]
            return answer if isinstance(answer, str) else ""
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineSelfCheckFailed(
                f"the engine did not answer the self-check question {check.question!r} ({type(exc).__name__})"
            ) from None

    async def probe(self) -> bool:
        """Ask the upstream for its models; records health."""
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + "/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status == 200:
                    data = await r.json()
                    self._models = [m["id"] for m in data.get("data", [])]
                    self._healthy = True
                    return True
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            pass
        self._healthy = False
        return False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self) -> bool:
        return self._healthy and self._checked and self._session is not None

    async def models(self) -> list[str]:
        if self._models is None and self._session is not None:
            await self.probe()
        return list(self._models or [])

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        pool = self._pool
        if pool is None:
            raise EngineUnavailable("engine not started")
        headers = (("content-type", "application/json"),) if body is not None else ()
        try:
            resp = await pool.request(self._origin, method, self._prefix + path, headers, body)
        except hop.HopError as exc:
            self._healthy = False
            raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from None
        # Only the media type travels on: nothing else the engine says about itself reaches the client.
        ctype = resp.headers.get("content-type", "application/json").split(";")[0].strip().encode("latin-1")
        if stream and resp.status == 200 and ctype == b"text/event-stream":
            return InnerResponse(status=200, headers=SSE, events=SseStream(resp))
        try:
            data = await resp.read()
        except hop.HopError as exc:
            raise EngineUnavailable(f"engine failed mid-response: {type(exc).__name__}") from None
        finally:
            resp.release()
        return InnerResponse(status=resp.status, headers=((b"content-type", ctype),), body=data)
