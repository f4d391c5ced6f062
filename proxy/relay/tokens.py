"""Privacy Pass at the relay (``veil relay --require-token ISSUER_URL``): challenge, verify, refuse double spends.

The relay is the Origin of RFC 9576 (deployment "model B" in the notes): a client spends one token per request in
an outer ``Authorization: PrivateToken token="..."`` header, which the relay checks offline against the issuer's
keys (its directory, cached as its Cache-Control says, refetched when a token names a key the relay has not seen)
before the request takes a concurrency slot or its body is read (so a request without a valid token holds nothing),
and records in a spent-token store right before forwarding (after every other refusal: rate and concurrency limits,
the body's arrival and size; so a refused request keeps its token). The challenge is the relay's fixed one (token
type 2, the issuer's name, an empty redemption context, ``--token-origin`` names or none), so clients fetch tokens
ahead of need and spending adds no round trip (RFC 9577 §2.1.4). Every refusal carries the challenge again with the issuer's
current key.

Spent-token stores (:class:`SqliteSpentStore` by default, :class:`RedisSpentStore` for ``redis://``) key each token
by SHA-256 of its signed input and keep it until the store's retention has passed (longer than an issuer key is
listed, so a token cannot be spent again while its key is accepted). Replicas share a store: a SQLite file on one
host, or one Redis for replicas on several. Nothing here logs a token, a nonce or a client address.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import AsyncIterator, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

import privacypass
from privacypass import Directory, PrivateTokenChallenge, Token, TokenChallenge, TokenKey

from .keycache import read_whole

log = logging.getLogger("veil.relay.tokens")

#: A relay's spent set must outlive every key it accepts: the issuer's default lifetime plus overlap is 8 days.
DEFAULT_RETENTION: Final = 9 * 24 * 3600.0
_MAX_AGE_RE: Final = re.compile(r"max-age=(\d+)")


class _DirectoryTooLarge(Exception):
    """The issuer's directory is larger than ``privacypass.MAX_DIRECTORY_BYTES`` (or shorter than it said)."""


class TokenRejected(Exception):
    """The request carries no acceptable token: ``status`` (401, 403 for a replay, 503 when keys or the store are
    unavailable) and ``reason`` (a fixed metric label)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class SpentStore(Protocol):
    """Where spent tokens are remembered."""

    async def spend(self, key: bytes, expires_at: float) -> bool:
        """Record ``key``; True if it was not recorded before (atomic across every user of the store)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class SqliteSpentStore:
    """Spent tokens in a SQLite file (WAL): survives restarts and is shared by relay processes on one host."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spent_tokens (key BLOB PRIMARY KEY, expires REAL NOT NULL)")
        self._inserts = 0

    async def spend(self, key: bytes, expires_at: float) -> bool:
        """``INSERT OR IGNORE``: one row per token; the insert that made the row wins."""
        cur = self._db.execute("INSERT OR IGNORE INTO spent_tokens VALUES (?, ?)", (key, expires_at))
        self._inserts += 1
        if self._inserts % 4096 == 0:
            self._db.execute("DELETE FROM spent_tokens WHERE expires < ?", (time.time(),))
        return cur.rowcount == 1

    async def close(self) -> None:
        self._db.close()


class RedisSpentStore:
    """Spent tokens in Redis (``SET key 1 NX EXAT expires``): shared by relay replicas on any number of hosts."""

    def __init__(self, url: str, *, prefix: str = "veil:spent:") -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url)
        self._prefix = prefix.encode()

    async def spend(self, key: bytes, expires_at: float) -> bool:
        """``SET NX``: only the first writer of a key gets OK."""
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, exat=int(expires_at) + 1))

    async def close(self) -> None:
        await self._redis.aclose()


def open_spent_store(spec: str) -> SpentStore:
    """``redis://...``/``rediss://...``/``unix://...`` for Redis, else a SQLite file path (``sqlite:PATH`` too)."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisSpentStore(spec)
    return SqliteSpentStore(spec.removeprefix("sqlite:"))


class TokenMetrics:
    """Redeemed, rejected by reason, double spends: fixed labels only, on the relay's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.redeemed = Counter("veil_relay_tokens_redeemed_total", "Tokens accepted and spent", registry=registry)
        self.rejected = Counter("veil_relay_tokens_rejected_total", "Requests refused for their token, by reason",
                                ["reason"], registry=registry)
        self.double_spends = Counter("veil_relay_token_double_spends_total", "Tokens presented again after being "
                                     "spent (at this or another replica sharing the store)", registry=registry)
        self.directory_fetches = Counter("veil_relay_issuer_directory_fetches_total", "Issuer directory fetches, "
                                         "by outcome", ["outcome"], registry=registry)


@dataclass(frozen=True, kw_only=True)
class TokenPolicy:
    """What the relay requires: tokens of ``issuer_url``'s issuer for the relay's fixed challenge."""

    issuer_url: str
    #: origin names in the challenge (empty: tokens any relay trusting this issuer accepts)
    origin_info: tuple[str, ...] = ()
    #: seconds a spent token is remembered; longer than an issuer key's lifetime plus overlap
    retention: float = DEFAULT_RETENTION
    #: at most one directory refetch per this many seconds for tokens under keys the relay does not know
    refresh_interval: float = 2.0
    #: the directory is refetched after this long even if its Cache-Control allows more
    max_directory_age: float = 300.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"issuer URL {self.issuer_url!r} must be http(s)://HOST[:PORT]")

    @property
    def issuer_name(self) -> str:
        """The issuer's name in challenges: its host[:port] (RFC 9577 §2.1.1)."""
        return urlsplit(self.issuer_url).netloc

    @property
    def directory_url(self) -> str:
        """Where the issuer's directory is."""
        parts = urlsplit(self.issuer_url)
        return f"{parts.scheme}://{parts.netloc}{privacypass.WELL_KNOWN_DIRECTORY}"


class TokenVerifier:
    """The relay's token check: keys from the issuer's directory, the fixed challenge, the spent store."""

    def __init__(self, policy: TokenPolicy, store: SpentStore, metrics: TokenMetrics) -> None:
        self.policy, self.store, self.metrics = policy, store, metrics
        self.challenge = TokenChallenge(token_type=privacypass.TOKEN_TYPE_BLIND_RSA, issuer_name=policy.issuer_name,
                                        origin_info=policy.origin_info)
        self._digest = self.challenge.digest()
        self.keys: dict[bytes, TokenKey] = {}
        self._preferred: TokenKey | None = None
        self._retired: set[bytes] = set()
        self._fresh_until = 0.0
        self._last_fetch = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, session: aiohttp.ClientSession, *, force: bool = False) -> None:
        """Fetch the directory if the cached one is stale (or ``force``, at most once per refresh interval); keep the
        last good one when the issuer cannot be reached."""
        async with self._lock:
            now = time.monotonic()
            if not force and now < self._fresh_until:
                return
            if force and now - self._last_fetch < self.policy.refresh_interval:
                return
            self._last_fetch = now
            try:
                # not redirected (the operator named this URL), and bounded: an issuer, or whoever answers for it,
                # must not make the relay hold an arbitrary body in memory
                async with session.get(self.policy.directory_url, timeout=aiohttp.ClientTimeout(total=10),
                                       allow_redirects=False) as r:
                    if r.status != 200:
                        moved = f" to {r.headers.get('Location', '?')} (not followed)" if 300 <= r.status < 400 else ""
                        raise aiohttp.ClientResponseError(r.request_info, (), status=r.status,
                                                          message=f"HTTP {r.status}{moved}")
                    body = await read_whole(r, privacypass.MAX_DIRECTORY_BYTES)
                    if body is None:
                        raise _DirectoryTooLarge(f"larger than {privacypass.MAX_DIRECTORY_BYTES} bytes or incomplete")
                    m = _MAX_AGE_RE.search(r.headers.get("Cache-Control", ""))
                directory = Directory.decode(body)
            except (aiohttp.ClientError, asyncio.TimeoutError, privacypass.DecodeError, _DirectoryTooLarge) as exc:
                self.metrics.directory_fetches.labels("error").inc()
                detail = (f": {exc}" if isinstance(exc, _DirectoryTooLarge) else
                          f": {exc.message}" if isinstance(exc, aiohttp.ClientResponseError) else "")
                log.warning("issuer directory fetch failed (%s%s); keeping %d cached keys", type(exc).__name__, detail,
                            len(self.keys))
                self._fresh_until = now + min(self.policy.refresh_interval, 5.0)
                return
            self.metrics.directory_fetches.labels("ok").inc()
            self._apply(directory)
            max_age = float(m.group(1)) if m else 60.0
            self._fresh_until = now + max(1.0, min(max_age, self.policy.max_directory_age))

    def _apply(self, directory: Directory) -> None:
        keys = {k.key.key_id: k.key for k in directory.keys}
        self._retired |= set(self.keys) - set(keys)
        self._retired -= set(keys)
        self.keys = keys
        usable = directory.usable(time.time())
        self._preferred = usable[0] if usable else (directory.keys[0].key if directory.keys else None)

    def www_authenticate(self) -> str:
        """The challenge every refusal carries, with the issuer's current preferred key."""
        if self._preferred is None:
            return f'{privacypass.SCHEME} challenge="{privacypass.b64url_encode(self.challenge.encode())}"'
        return privacypass.build_www_authenticate(
            [PrivateTokenChallenge(challenge=self.challenge.encode(), token_key=self._preferred.spki)])

    async def verify(self, authorization: str | None, session: aiohttp.ClientSession) -> Token:
        """The token in ``authorization`` if it is one this relay accepts (syntax, a known issuer key, the fixed
        challenge, the signature: one RSA verification), without spending it; the relay asks this before a request
        takes a slot or its body is read, so a request without a valid token is refused at once.

        Raises:
            TokenRejected: 401 for a missing, malformed, unknown-key, expired-key, wrong-challenge or forged token;
                503 when no issuer key is known.
        """
        try:
            return await self._verify(authorization, session)
        except TokenRejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            raise

    async def spend(self, token: Token) -> None:
        """Record ``token`` (verified by :meth:`verify`) as spent: the double-spend check, right before forwarding.

        Raises:
            TokenRejected: 403 for a token already spent; 503 when the store cannot be reached.
        """
        spent_key = hashlib.sha256(token.authenticator_input()).digest()
        try:
            fresh = await self.store.spend(spent_key, time.time() + self.policy.retention)
        except Exception as exc:  # the store is down: refuse rather than accept a possible replay
            log.error("spent-token store unavailable (%s); refusing tokens", type(exc).__name__)
            self.metrics.rejected.labels("store_unavailable").inc()
            raise TokenRejected(503, "store_unavailable") from None
        if not fresh:
            self.metrics.rejected.labels("double_spend").inc()
            self.metrics.double_spends.inc()
            raise TokenRejected(403, "double_spend")
        self.metrics.redeemed.inc()

    async def _verify(self, authorization: str | None, session: aiohttp.ClientSession) -> Token:
        if not authorization:
            raise TokenRejected(401, "missing")
        await self.refresh(session)
        try:
            token = Token.decode(privacypass.parse_authorization(authorization))
        except privacypass.UnsupportedError:
            raise TokenRejected(401, "unsupported_type") from None
        except privacypass.DecodeError:
            raise TokenRejected(401, "malformed") from None
        if token.token_key_id not in self.keys and token.token_key_id not in self._retired:
            await self.refresh(session, force=True)  # a key published since the last fetch
        if token.token_key_id in self._retired and token.token_key_id not in self.keys:
            raise TokenRejected(401, "expired_key")
        if not self.keys:
            raise TokenRejected(503, "no_issuer_keys")
        try:
            privacypass.verify_token(token, self.keys.values(), [self._digest])
        except privacypass.KeyIdError:
            raise TokenRejected(401, "unknown_key") from None
        except privacypass.VerifyError as exc:
            reason = "wrong_challenge" if "challenge" in str(exc) else "bad_signature"
            raise TokenRejected(401, reason) from None
        return token


TOKENS: Final = web.AppKey("TOKENS", TokenVerifier)


def setup_tokens(app: web.Application, policy: TokenPolicy, store_spec: str, registry: CollectorRegistry) -> None:
    """Require a token on every forwarded request of the relay ``app`` (made by ``create_app``): the verifier under
    :data:`TOKENS`, a cleanup context for its session and store, :func:`check_token` as the state's ``check_token``
    and :func:`redeem` as its ``redeem``. The forwarding handler checks the token (present, well formed, under a
    known issuer key, correctly signed) before the request takes a slot or its body is read, so a request without a
    valid token holds nothing; and it spends the token only once the request has passed every other check (rate,
    slots, in flight, the body's arrival and size), right before it is forwarded: a request refused for anything
    else keeps its token. Call before the app starts."""
    from .state import STATE  # here: state -> config, which imports this module's policy lazily

    verifier = TokenVerifier(policy, open_spent_store(store_spec), TokenMetrics(registry))
    app[TOKENS] = verifier
    app[STATE].check_token = check_token
    app[STATE].redeem = redeem
    app.cleanup_ctx.append(_tokens_ctx)


_SESSION: Final = web.AppKey("TOKENS_SESSION", aiohttp.ClientSession)
#: the request's verified, not yet spent token, between :func:`check_token` and :func:`redeem`
_TOKEN: Final = web.RequestKey("TOKEN", Token)


async def _tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session for the issuer's directory (fetched once before serving), and the store, closed after."""
    verifier = app[TOKENS]
    app[_SESSION] = session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    await verifier.refresh(session)
    yield
    await session.close()
    await verifier.store.close()


async def check_token(request: web.Request) -> web.Response | None:
    """Verify, without spending, the token of ``request`` (before it is admitted), or the refusal to answer with.
    The token travels in the outer Authorization header, which the relay never forwards."""
    verifier = request.app[TOKENS]
    try:
        request[_TOKEN] = await verifier.verify(request.headers.get("Authorization"), request.app[_SESSION])
    except TokenRejected as exc:
        return _refusal(verifier, exc)
    return None


async def redeem(request: web.Request) -> web.Response | None:
    """Spend the token :func:`check_token` verified for ``request`` (a request about to be forwarded), or the
    refusal to answer with."""
    verifier = request.app[TOKENS]
    token = request.get(_TOKEN)
    try:
        if token is None:  # never: check_token runs first; refuse rather than forward unpaid
            raise TokenRejected(401, "missing")
        await verifier.spend(token)
    except TokenRejected as exc:
        return _refusal(verifier, exc)
    return None


def _refusal(verifier: TokenVerifier, exc: TokenRejected) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if exc.status in (401, 403):
        headers["WWW-Authenticate"] = verifier.www_authenticate()
    if exc.status == 503:
        headers["Retry-After"] = "5"
    # CORS (and exposing WWW-Authenticate to an allowed page) is forward.forward's, as for every refusal it returns
    return web.json_response({"error": f"token {exc.reason.replace('_', ' ')}"}, status=exc.status, headers=headers)
