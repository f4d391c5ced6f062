"""Client-side Privacy Pass: fetch token batches ahead of need, keep them in memory, spend one per relay request.

A :class:`TokenWallet` knows the issuer (``--issuer URL``) and the key the attester wants (``--issuer-key``). Its
challenge is the one a relay requiring that issuer's tokens uses (token type 2, the issuer's host[:port], empty
redemption context, no origin names) until a relay's ``WWW-Authenticate`` says otherwise (:meth:`learn`). It refills
in the background whenever fewer than ``low_water`` tokens are left, so a request only waits for issuance when the
pool is empty (the very first one, or a burst larger than the pool). Tokens are never written to disk or logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.client_middlewares import ClientMiddlewareType as ClientMiddleware

import privacypass
from privacypass import ClientIssuance, Directory, TokenChallenge, TokenKey

log = logging.getLogger("veil.client.tokens")
_MAX_AGE_RE = re.compile(r"max-age=(\d+)")


class TokenUnavailable(aiohttp.ClientError):
    """No token could be obtained (issuer unreachable, API key refused, limit reached); ``status`` is the issuer's.
    A ClientError, so a transport that sends through the wallet's middleware reports it as the relay request failing."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HeldToken:
    """One unspent token: the ``Authorization`` value and the id of the key it was signed under."""

    key_id: bytes
    header: str


class TokenWallet:
    """A pool of tokens for one issuer and challenge."""

    def __init__(self, issuer_url: str, api_key: str | None, *, batch: int = 16, low_water: int = 8,
                 concurrency: int = 4, origin_info: tuple[str, ...] = ()) -> None:
        parts = urlsplit(issuer_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"issuer URL {issuer_url!r} must be http(s)://HOST[:PORT]")
        self.issuer_url = f"{parts.scheme}://{parts.netloc}"
        self.api_key = api_key
        self.batch, self.low_water, self.concurrency = max(1, batch), max(0, low_water), max(1, concurrency)
        self.challenge = TokenChallenge(token_type=privacypass.TOKEN_TYPE_BLIND_RSA, issuer_name=parts.netloc,
                                        origin_info=origin_info)
        self._pool: deque[HeldToken] = deque()
        self._directory: Directory | None = None
        self._directory_until = 0.0
        self._refill: asyncio.Task[None] | None = None
        self._error: TokenUnavailable | None = None
        self.issued = 0  # tokens obtained, for tests and stats
        self._own_session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The wallet's own session to the issuer (no cookies), made on first use."""
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._own_session

    def middleware(self) -> ClientMiddleware:
        """An aiohttp client middleware for the session that talks to the relay: each OHTTP ``POST`` spends a token
        (outer ``Authorization``); a 401/403 that carries a PrivateToken challenge drops the tokens under the
        refused key, adopts the challenge and is retried once with another token (the relay refused it before
        forwarding, so the gateway never saw it)."""

        async def spend(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
            if req.method != "POST" or not req.headers.get("Content-Type", "").startswith("message/ohttp"):
                return await handler(req)
            resp: aiohttp.ClientResponse | None = None
            for attempt in (1, 2):
                try:
                    held = await self.take()
                except TokenUnavailable:
                    if resp is not None:
                        return resp
                    raise
                req.headers["Authorization"] = held.header
                resp = await handler(req)
                challenge = resp.headers.get("WWW-Authenticate", "")
                if resp.status not in (401, 403) or attempt == 2 or not self.learn(challenge):
                    return resp
                if resp.status == 401:
                    self.drop_key(held.key_id)
                resp.release()
            raise AssertionError("unreachable")

        return spend

    def __len__(self) -> int:
        return len(self._pool)

    def learn(self, www_authenticate: str) -> bool:
        """Adopt a relay's PrivateToken challenge for this issuer (if it differs, pooled tokens for the old one are
        dropped; a challenge naming another key makes the next refill refetch the directory). True if there was
        one for this issuer."""
        for ch in privacypass.parse_private_token_challenges(www_authenticate):
            decoded = ch.decode()
            if decoded.issuer_name != self.challenge.issuer_name:
                continue
            if decoded.raw != self.challenge.raw:
                self.challenge = decoded
                self._pool.clear()
            if self._directory is None or all(k.key.spki != ch.token_key for k in self._directory.keys):
                self._directory_until = 0.0  # a key we do not have yet (a rotation): refetch
            return True
        return False

    def drop_key(self, key_id: bytes) -> None:
        """Forget pooled tokens under ``key_id`` (a relay said they are no longer accepted)."""
        self._pool = deque(t for t in self._pool if t.key_id != key_id)

    async def take(self, session: aiohttp.ClientSession | None = None) -> HeldToken:
        """One unspent token (its ``header`` is the ``Authorization`` value); waits only if the pool is empty.

        Raises:
            TokenUnavailable: the issuer gave none.
        """
        session = session or self.session()
        while not self._pool:
            self._start_refill(session)
            assert self._refill is not None
            await asyncio.shield(self._refill)
            if not self._pool and self._error is not None:
                raise self._error
        held = self._pool.popleft()
        if len(self._pool) < self.low_water:
            self._start_refill(session)
        return held

    async def prefetch(self, session: aiohttp.ClientSession | None = None) -> None:
        """Fill the pool now (at start-up, so the first request does not wait)."""
        session = session or self.session()
        self._start_refill(session)
        assert self._refill is not None
        await asyncio.shield(self._refill)
        if not self._pool and self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Stop a refill in progress and close the wallet's session."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        if self._own_session is not None:
            await self._own_session.close()

    def _start_refill(self, session: aiohttp.ClientSession) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._fill(session))

    async def _directory_now(self, session: aiohttp.ClientSession) -> Directory:
        if self._directory is not None and time.monotonic() < self._directory_until:
            return self._directory
        url = self.issuer_url + privacypass.WELL_KNOWN_DIRECTORY
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=15)) as r:
            if r.status != 200:
                raise TokenUnavailable(f"issuer directory answered {r.status}", 502)
            body = await r.read()
            m = _MAX_AGE_RE.search(r.headers.get("Cache-Control", ""))
        self._directory = Directory.decode(body)
        self._directory_until = time.monotonic() + (min(float(m.group(1)), 3600.0) if m else 60.0)
        return self._directory

    async def _fill(self, session: aiohttp.ClientSession) -> None:
        self._error = None
        try:
            for attempt in range(2):
                directory = await self._directory_now(session)
                usable = directory.usable(time.time())
                if not usable:
                    raise TokenUnavailable("the issuer lists no usable key", 502)
                key = usable[0]
                uri = urljoin(self.issuer_url + "/", directory.issuer_request_uri)
                sem = asyncio.Semaphore(self.concurrency)
                results = await asyncio.gather(*(self._one(session, uri, key, sem) for _ in range(self.batch)),
                                               return_exceptions=True)
                got = [r for r in results if isinstance(r, HeldToken)]
                self._pool.extend(got)
                self.issued += len(got)
                errors = [r for r in results if isinstance(r, BaseException)]
                if got or not errors:
                    return
                first = errors[0]
                if isinstance(first, TokenUnavailable) and first.status == 422 and attempt == 0:
                    self._directory_until = 0.0  # the issuer rotated its keys: refetch and try once more
                    continue
                raise first
        except TokenUnavailable as exc:
            self._error = exc
            log.warning("no tokens from the issuer: %s", exc)
        except (aiohttp.ClientError, asyncio.TimeoutError, privacypass.PrivacyPassError) as exc:
            self._error = TokenUnavailable(f"issuer unreachable or misbehaving ({type(exc).__name__})", 502)
            log.warning("no tokens from the issuer: %s", type(exc).__name__)

    async def _one(self, session: aiohttp.ClientSession, uri: str, key: TokenKey, sem: asyncio.Semaphore) -> HeldToken:
        issuance = ClientIssuance.begin(key, self.challenge)
        headers = {"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST,
                   "Accept": privacypass.MEDIA_TYPE_TOKEN_RESPONSE}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        async with sem:
            async with session.post(uri, data=issuance.request.encode(), headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                body = await r.read()
                if r.status != 200:
                    raise TokenUnavailable(f"issuer answered {r.status}", r.status)
        token = issuance.finalize(body)  # verified under the key before it is kept
        return HeldToken(key.key_id, privacypass.build_authorization(token.encode()))
