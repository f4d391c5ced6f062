"""``create_app``: the key broker's aiohttp application (Trustee KBS protocol 0.4.0 plus its own evidence).

Sessions follow Trustee's state machine (authed -> attested, ``timeout`` from ``auth``), with one deliberate
difference: a session's nonce is single-use. The first ``attest`` on a session consumes it whatever the outcome, so
a replayed Attestation (same cookie, or an old nonce on a new session) is refused, where Trustee answers a repeated
``attest`` on an attested session with the same token.

Evidence is judged against every resource's policy at ``attest``; a session may then read exactly the resources
whose policy its evidence passed. A resource is released as a JWE to the TEE key from the attested runtime data.

Anyone can call ``auth``, so sessions not yet attested ("pending") are bounded: they live ``pending_timeout``
seconds, an address (a keyed digest of it, never logged) holds at most ``max_pending_per_address`` of them, the
table at most ``max_pending``, and a new one evicts the oldest pending session (of its address, else of all) instead
of being refused: no flood of ``auth`` calls can lock a gateway out. Fresh evidence (``?nonce=``) costs a hardware
round trip: a token bucket per address, and a bound on collections waiting, answer 429 with ``Retry-After``.

Imports (``POST /kbs/v0/resource/<repository>/<type>/<tag>``, Trustee's set-resource path; ``veil broker import``):
the body is the secret, ``Authorization: Bearer <import token>`` must hash to the resource's
``import-token-sha256``, and the resource must say ``import = "model-key"``; generated resources (the OHTTP key set)
are never imported. The secret is sealed under the broker's sealing key into its state directory and audit-logged
(resource and time, never the secret). Refused imports are rate limited per address like fresh evidence.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final

import orjson
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from ..attestation import Bundle, BundleError, EvidenceProvider
from ..attestation.errors import AttestationError
from ..attestation.result import Verdict
from .audit import AuditLog
from .config import ImportRefused, Resource, check_import
from .policy import check_evidence
from .protocol import (
    PLATFORM_TEE,
    SESSION_COOKIE,
    Attestation,
    AuthRequest,
    Challenge,
    KbsProtocolError,
    encode_error,
    jwe_encrypt,
    kbs_report_data,
    nonces_equal,
    parse_resource_path,
)
from .sealing import SealError

log = logging.getLogger("veil.broker")

MAX_BODY: Final = 4 * 1024 * 1024
#: the largest secret an import may carry (a model key file is about 100 bytes)
MAX_IMPORT: Final = 64 * 1024
EAR_PROFILE: Final = "tag:github.com,2024:confidential-containers/Trustee"


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Settings besides resources, keys and evidence."""

    #: seconds a session lives from ``auth`` (Trustee's ``timeout``, default 5 minutes)
    session_timeout: float = 300.0
    #: accept simulated evidence (``--insecure-allow-simulated``); its measurement must still be in the policy
    allow_simulated: bool = False
    #: attested sessions kept at most (beyond that ``auth`` is refused until some expire)
    max_sessions: int = 10000
    #: seconds a session may take from ``auth`` to a successful ``attest``
    pending_timeout: float = 60.0
    #: sessions not yet attested, in all and per client address; the oldest is evicted for a new one
    max_pending: int = 1024
    max_pending_per_address: int = 8
    #: fresh evidence (``?nonce=``) per client address: ``evidence_rate`` per second, bursts of ``evidence_burst``
    evidence_rate: float = 1.0
    evidence_burst: float = 10.0
    #: seconds a request body may take to arrive (408 beyond)
    body_timeout: float = 10.0


#: fresh evidence collections queued at once, from all addresses (429 beyond)
MAX_EVIDENCE_WAITING: Final = 16
#: addresses whose token buckets are remembered (least recently used forgotten first)
MAX_BUCKETS: Final = 4096


@dataclass
class Session:
    """One RCAR session. ``state``: ``authed`` (nonce unused), ``consumed`` (attest failed), ``attested``."""

    id: str
    tee: str
    challenge: Challenge
    expires_at: float
    state: str = "authed"
    created: float = field(default_factory=time.time)
    addr: bytes = b""  # keyed digest of the client address (pending sessions only are counted per address)
    tee_pubkey: dict[str, str] | None = None
    platform: str | None = None
    measurement: bytes | None = None
    allowed: frozenset[str] = frozenset()

    def expired(self) -> bool:
        return time.time() >= self.expires_at

    def cookie(self) -> str:
        return f"{SESSION_COOKIE}={self.id}; Expires={formatdate(self.expires_at, usegmt=True)}"


@dataclass
class BrokerState:
    """Per-app state."""

    config: BrokerConfig
    resources: dict[str, Resource]
    kek: bytes = field(repr=False)
    provider: EvidenceProvider
    #: DER of the TLS certificate; the broker's evidence binds exactly these bytes
    identity: bytes
    audit: AuditLog
    #: how the sealing key was made (``enclave.broker.sealing.KEK_*``), told to importers
    sealing: str = ""
    sessions: dict[str, Session] = field(default_factory=dict)
    token_key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", private=True))
    bundle_json: bytes = b""
    evidence_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    evidence_waiting: int = 0
    #: sessions not yet attested, oldest first; and the same per address
    pending: dict[str, None] = field(default_factory=dict)
    pending_by_addr: dict[bytes, dict[str, None]] = field(default_factory=dict)
    #: per address: (tokens, when last updated), least recently used first
    buckets: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    addr_secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    purged_at: float = 0.0

    def addr_key(self, request: web.BaseRequest) -> bytes:
        """A keyed digest standing for the client's address (an IPv6 address by its /64); never logged."""
        try:
            ip = ipaddress.ip_address((request.remote or "").split("%", 1)[0])
            raw = ip.packed[:8] if isinstance(ip, ipaddress.IPv6Address) else ip.packed
        except ValueError:
            raw = b""
        return hashlib.blake2b(raw, key=self.addr_secret, digest_size=16).digest()

    def drop(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        self.pending.pop(sid, None)
        if session is not None and (mine := self.pending_by_addr.get(session.addr)) is not None:
            mine.pop(sid, None)
            if not mine:
                del self.pending_by_addr[session.addr]

    def add_pending(self, session: Session) -> None:
        """Keep a new unattested session, evicting the oldest pending one of its address, or of all, if full."""
        mine = self.pending_by_addr.setdefault(session.addr, {})
        if len(mine) >= self.config.max_pending_per_address:
            self.drop(next(iter(mine)))
            mine = self.pending_by_addr.setdefault(session.addr, {})
        if len(self.pending) >= self.config.max_pending:
            self.drop(next(iter(self.pending)))
            mine = self.pending_by_addr.setdefault(session.addr, {})
        self.sessions[session.id] = session
        self.pending[session.id] = None
        mine[session.id] = None

    def attested(self, session: Session) -> None:
        """``session`` passed ``attest``: no longer pending; it lives ``session_timeout`` from its ``auth``."""
        self.pending.pop(session.id, None)
        if (mine := self.pending_by_addr.get(session.addr)) is not None:
            mine.pop(session.id, None)
            if not mine:
                del self.pending_by_addr[session.addr]
        session.expires_at = session.created + self.config.session_timeout

    def purge(self) -> None:
        now = time.time()
        while self.pending:  # oldest first, and all pending sessions live equally long
            sid = next(iter(self.pending))
            if self.sessions[sid].expires_at > now:
                break
            self.drop(sid)
        if now - self.purged_at >= 1.0:  # attested sessions: a full scan, at most once a second
            self.purged_at = now
            for sid in [sid for sid, s in self.sessions.items() if s.expires_at <= now]:
                self.drop(sid)

    def take_token(self, key: bytes) -> float:
        """Spend one token of ``key``'s bucket; 0.0 when there was one, else the seconds until there is."""
        cfg = self.config
        now = time.monotonic()
        tokens, then = self.buckets.pop(key, (cfg.evidence_burst, now))
        tokens = min(cfg.evidence_burst, tokens + (now - then) * cfg.evidence_rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / cfg.evidence_rate if cfg.evidence_rate > 0 else 3600.0
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > MAX_BUCKETS:
            del self.buckets[next(iter(self.buckets))]
        return wait


STATE: Final = web.AppKey("STATE", BrokerState)


def kbs_error(type_name: str, detail: str, status: int = 401) -> web.Response:
    """A Trustee ``ErrorInformation`` response."""
    return web.Response(status=status, body=encode_error(type_name, detail), content_type="application/json")


def _protocol_error(exc: KbsProtocolError) -> web.Response:
    return kbs_error(exc.type_name, exc.detail, exc.status)


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise KbsProtocolError(f"request body larger than {MAX_BODY} bytes", type_name="SerdeError")
    try:
        async with asyncio.timeout(request.app[STATE].config.body_timeout):
            return await request.read()
    except TimeoutError:
        raise KbsProtocolError("the request body arrived too slowly", type_name="SerdeError", status=408) from None


# ------------------------------------------------------------------------------------------------------------------
# RCAR


async def post_auth(request: web.Request) -> web.Response:
    """``POST /kbs/v0/auth``: Request -> Challenge, and a new session cookie."""
    state = request.app[STATE]
    try:
        req = AuthRequest.decode(await _read(request))
    except KbsProtocolError as exc:
        return _protocol_error(exc)
    state.purge()
    cfg = state.config
    if len(state.sessions) - len(state.pending) >= cfg.max_sessions:
        return kbs_error("AttestationError", "too many open sessions; retry later", 503)
    now = time.time()
    session = Session(id=uuid.uuid4().hex, tee=req.tee, challenge=Challenge.new(), created=now,
                      expires_at=now + min(cfg.pending_timeout, cfg.session_timeout), addr=state.addr_key(request))
    state.add_pending(session)
    resp = web.Response(body=session.challenge.encode(), content_type="application/json")
    resp.headers["Set-Cookie"] = session.cookie()
    return resp


def _session(request: web.Request) -> Session | None:
    state = request.app[STATE]
    sid = request.cookies.get(SESSION_COOKIE)
    session = state.sessions.get(sid) if sid else None
    if session is not None and session.expired():
        state.drop(session.id)
        return None
    return session


async def post_attest(request: web.Request) -> web.Response:
    """``POST /kbs/v0/attest``: Attestation -> ``{"token": ...}``; the session's nonce is consumed either way."""
    state = request.app[STATE]
    session = _session(request)
    if session is None:
        return kbs_error("AttestationError", "no live session: POST /kbs/v0/auth first (cookie kbs-session-id)")
    if session.state != "authed":
        state.audit.record(event="attest", outcome="refused", session_id=session.id, reason="nonce already used")
        return kbs_error("AttestationError", "this session's nonce was already used; start again with /auth")
    session.state = "consumed"  # before any await: a concurrent replay finds it used
    try:
        att = Attestation.decode(await _read(request))
        verdicts, bundle = await _judge(state, session, att)
    except KbsProtocolError as exc:
        state.audit.record(event="attest", outcome="refused", session_id=session.id, reason=exc.detail[:200])
        return _protocol_error(exc)
    allowed = frozenset(path for path, v in verdicts.items() if v.ok)
    first = next(iter(verdicts.values()))
    measurement = next((v.measurement for v in verdicts.values() if v.measurement is not None), None)
    if not allowed:
        failed = sorted({c.name for v in verdicts.values() for c in v.failures})
        state.audit.record(event="attest", outcome="refused", session_id=session.id, platform=bundle.platform,
                           measurement=measurement, reason="; ".join(failed))
        return kbs_error("AttestationError", f"evidence passed no resource policy (failed: {'; '.join(failed)})")
    session.state, session.tee_pubkey = "attested", att.tee_pubkey
    state.attested(session)
    session.platform, session.measurement, session.allowed = first.platform, measurement, allowed
    state.audit.record(event="attest", outcome="attested", session_id=session.id, platform=bundle.platform,
                       measurement=measurement, reason="may read " + ", ".join(sorted(allowed)))
    body = orjson.dumps({"token": _token(state, session, att)})
    resp = web.Response(body=body, content_type="application/json")
    resp.headers["Set-Cookie"] = session.cookie()
    return resp


async def _judge(state: BrokerState, session: Session, att: Attestation) -> tuple[dict[str, Verdict], Bundle]:
    """Check nonce, shapes and binding, then the evidence against every resource policy."""
    if not nonces_equal(att.nonce, session.challenge.nonce):
        raise KbsProtocolError("the nonce in the handshake session is different from the client side in KBS "
                               "protocol's Attestation message")
    if att.init_data is not None:
        raise KbsProtocolError("init-data is not supported by this broker (send null)")
    if att.additional_evidence:
        raise KbsProtocolError("additional_evidence must be empty: Veil evidence carries GPU evidence in the bundle")
    if not isinstance(att.primary_evidence, dict):
        raise KbsProtocolError("primary_evidence must be a Veil evidence bundle (JSON object)")
    try:
        bundle = Bundle.from_json(orjson.dumps(att.primary_evidence))
    except BundleError as exc:
        raise KbsProtocolError(f"primary_evidence: {exc}") from None
    if PLATFORM_TEE.get(bundle.platform) != session.tee:
        raise KbsProtocolError(f"evidence platform {bundle.platform!r} does not match tee {session.tee!r} from /auth")
    if bundle.nonce:
        raise KbsProtocolError("a KBS evidence bundle binds the runtime data as key_config; its nonce must be empty")
    bound = kbs_report_data(att.nonce, att.tee_pubkey, session.challenge.hash_algorithm)

    def verify_all() -> dict[str, Verdict]:
        return {path: check_evidence(bundle, bound, res.policy, allow_simulated=state.config.allow_simulated)
                for path, res in state.resources.items()}

    try:
        return await asyncio.to_thread(verify_all), bundle
    except AttestationError as exc:
        raise KbsProtocolError(f"evidence cannot be verified: {exc}") from None


def _token(state: BrokerState, session: Session, att: Attestation) -> str:
    """An EAR-shaped JWT (ES256, broker's in-memory key) describing the attestation; bearer for resource reads."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": now,
        "exp": int(session.expires_at),
        "ear.verifier-id": {"developer": "veil", "build": "veil broker"},
        "submods": {"cpu0": {
            "ear.status": "affirming",
            "ear.appraisal-policy-id": ",".join(sorted(session.allowed)),
            "ear.veraison.annotated-evidence": {
                "platform": session.platform,
                "measurement": session.measurement.hex() if session.measurement else None,
                "runtime_data_claims": {"nonce": att.nonce, "tee-pubkey": att.tee_pubkey},
            },
        }},
        "veil.session": session.id,
    }
    return jwt.encode({"alg": "ES256"}, claims, state.token_key, algorithms=["ES256"])


def _bearer_session(request: web.Request) -> Session | None | web.Response:
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    state = request.app[STATE]
    try:
        token = jwt.decode(auth[7:].strip(), state.token_key, algorithms=["ES256"])
    except (JoseError, ValueError) as exc:
        return kbs_error("TokenVerifierError", f"Token Verifier error: {type(exc).__name__}")
    sid, exp = token.claims.get("veil.session"), token.claims.get("exp")
    if not isinstance(sid, str) or not isinstance(exp, int) or exp <= time.time():
        return kbs_error("TokenVerifierError", "Token Verifier error: expired or not issued by this broker")
    session = state.sessions.get(sid)
    return session if session is not None and not session.expired() else None


async def get_resource(request: web.Request) -> web.Response:
    """``GET /kbs/v0/resource/<repository>/<type>/<tag>``: the secret as a JWE to the attested TEE key."""
    state = request.app[STATE]
    found = _bearer_session(request) if "Authorization" in request.headers else _session(request)
    if isinstance(found, web.Response):
        return found
    if found is None or found.state != "attested" or found.tee_pubkey is None:
        return kbs_error("TokenNotFound", "Attestation Token not found")
    session, tee_pubkey = found, found.tee_pubkey
    m = request.match_info
    try:
        path = parse_resource_path(m["repository"], m["type"], m["tag"])
    except KbsProtocolError as exc:
        return _protocol_error(exc)
    common: dict[str, Any] = {"event": "resource", "session_id": session.id, "resource": path,
                              "platform": session.platform, "measurement": session.measurement}
    resource = state.resources.get(path)
    if resource is None:
        state.audit.record(outcome="not-found", reason="no such resource", **common)
        return kbs_error("InvalidRequestPath", f"Request path resource/{path} is invalid", 404)
    if path not in session.allowed:
        state.audit.record(outcome="denied", reason="evidence did not pass this resource's policy", **common)
        return kbs_error("PolicyDeny", "Access denied by policy")
    try:
        secret = resource.read(state.kek)
    except FileNotFoundError:
        state.audit.record(outcome="not-found", reason="not imported yet", **common)
        return kbs_error("InvalidRequestPath", f"resource {path} has not been imported yet (veil broker import)", 404)
    except (OSError, SealError) as exc:
        log.error("resource %s cannot be unsealed: %s", path, exc)
        state.audit.record(outcome="denied", reason="sealed secret unavailable", **common)
        return kbs_error("PluginInternalError", "Plugin internal error")
    body = jwe_encrypt(tee_pubkey, secret)
    state.audit.record(outcome="released", **common)
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


async def post_resource(request: web.Request) -> web.Response:
    """``POST /kbs/v0/resource/<repository>/<type>/<tag>``: import a secret (``import = "model-key"`` resources
    only), authenticated by the resource's import token, sealed under the broker's sealing key."""
    state = request.app[STATE]
    m = request.match_info
    try:
        path = parse_resource_path(m["repository"], m["type"], m["tag"])
    except KbsProtocolError as exc:
        return _protocol_error(exc)

    def refuse(type_name: str, detail: str, status: int, reason: str) -> web.Response:
        # Refusals are rate limited per address (a bucket of their own, sized like fresh evidence's), so that
        # nobody can flood the audit log; an import with the right token is never held back.
        wait = state.take_token(b"import:" + state.addr_key(request))
        if wait > 0.0:
            return web.Response(status=429, content_type="application/problem+json",
                                headers={"Retry-After": str(max(1, math.ceil(wait))), "Cache-Control": "no-store"},
                                body=orjson.dumps({"type": "about:blank", "title": "import refusals rate limit",
                                                   "status": 429, "detail": "too many refused imports"}))
        state.audit.record(event="import", outcome="refused", session_id=None, resource=path, reason=reason)
        return kbs_error(type_name, detail, status)

    resource = state.resources.get(path)
    if resource is None:
        return refuse("InvalidRequestPath", f"Request path resource/{path} is invalid", 404, "no such resource")
    if resource.generate is not None:
        return refuse("PolicyDeny", f"resource {path} is generated inside the broker and never imported", 403,
                      "generated resource")
    if resource.importer is None or resource.import_token_sha256 is None:
        return refuse("PolicyDeny", f"resource {path} takes no imports (resources.toml: import = \"model-key\" and "
                      "import-token-sha256)", 403, "not importable")
    auth = request.headers.get("Authorization", "")
    presented = auth[7:].strip().encode("utf-8", "replace") if auth.lower().startswith("bearer ") else b""
    if not presented or not hmac.compare_digest(hashlib.sha256(presented).digest(), resource.import_token_sha256):
        return refuse("TokenVerifierError", "Token Verifier error: not this resource's import token", 401,
                      "import token missing or wrong")
    if request.content_length is not None and request.content_length > MAX_IMPORT:
        return refuse("SerdeError", f"an imported secret is at most {MAX_IMPORT} bytes", 413, "too large")
    try:
        body = await _read(request)
    except KbsProtocolError as exc:
        return refuse(exc.type_name, exc.detail, exc.status, "body not received")
    if len(body) > MAX_IMPORT:
        return refuse("SerdeError", f"an imported secret is at most {MAX_IMPORT} bytes", 413, "too large")
    try:
        plaintext = check_import(resource, body)
    except ImportRefused as exc:
        return refuse("SerdeError", str(exc), 400, str(exc)[:200])
    try:
        replaced = await asyncio.to_thread(resource.store, state.kek, plaintext)
    except OSError as exc:
        log.error("resource %s: cannot store the import: %s", path, exc)
        return refuse("PluginInternalError", "Plugin internal error", 500, "state directory not writable")
    state.audit.record(event="import", outcome="imported", session_id=None, resource=path,
                       reason="replaced the earlier secret" if replaced else "new")
    log.info("resource %s: imported (sealed to %s)", path, resource.sealed_file)
    return web.Response(body=orjson.dumps({"resource": path, "replaced": replaced, "sealing": state.sealing}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


async def other_kbs_path(request: web.Request) -> web.Response:
    """Everything else under ``/kbs/v0``: Trustee's 404s (of the admin endpoints only imports are offered)."""
    first = request.match_info["tail"].split("/", 1)[0]
    if first in ("auth", "attest", "resource"):
        return kbs_error("InvalidRequestPath", f"Request path {request.match_info['tail']} is invalid", 404)
    return kbs_error("PluginNotFound", f"Plugin {first} not found", 404)


# ------------------------------------------------------------------------------------------------------------------
# The broker's own evidence, health


async def get_attestation(request: web.Request) -> web.Response:
    """``GET /.well-known/veil-attestation[?nonce=HEX32]``: evidence binding the broker's TLS certificate (DER)."""
    state = request.app[STATE]
    nonce_hex = request.query.get("nonce")
    if nonce_hex is None:
        return web.Response(body=state.bundle_json, content_type="application/json",
                            headers={"Cache-Control": "no-cache"})
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        nonce = b""
    if len(nonce) != 32:
        return web.Response(status=400, content_type="application/problem+json",
                            body=orjson.dumps({"type": "about:blank", "title": "bad nonce", "status": 400,
                                               "detail": "nonce must be 64 hex characters (32 bytes)"}))
    wait = state.take_token(state.addr_key(request))
    if wait == 0.0 and state.evidence_waiting >= MAX_EVIDENCE_WAITING:
        wait = 1.0
    if wait > 0.0:
        return web.Response(status=429, content_type="application/problem+json",
                            headers={"Retry-After": str(max(1, math.ceil(wait))), "Cache-Control": "no-store"},
                            body=orjson.dumps({"type": "about:blank", "title": "fresh evidence rate limit",
                                               "status": 429, "detail": "too many fresh evidence requests"}))
    state.evidence_waiting += 1
    try:
        async with state.evidence_lock:  # one collection at a time; a few callers queue rather than fail
            try:
                bundle = await asyncio.to_thread(state.provider.collect, state.identity, nonce)
            except AttestationError as exc:
                log.error("evidence collection failed: %s", exc)
                return web.Response(status=503, text="evidence unavailable")
    finally:
        state.evidence_waiting -= 1
    return web.Response(body=bundle.to_json(), content_type="application/json", headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = {"status": "ok", "resources": len(state.resources), "attestation": state.provider.platform}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_app(*, resources: dict[str, Resource], kek: bytes, provider: EvidenceProvider, identity: bytes,
               audit: AuditLog, config: BrokerConfig | None = None, sealing: str = "") -> web.Application:
    """Build the broker application. ``identity`` is what the broker's evidence binds (its TLS certificate, DER);
    ``sealing`` says how ``kek`` was made."""
    state = BrokerState(config=config or BrokerConfig(), resources=resources, kek=kek, provider=provider,
                        identity=identity, audit=audit, sealing=sealing)
    state.bundle_json = provider.collect(identity).to_json()
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_post("/kbs/v0/auth", post_auth)
    app.router.add_post("/kbs/v0/attest", post_attest)
    app.router.add_get("/kbs/v0/resource/{repository}/{type}/{tag}", get_resource)
    app.router.add_post("/kbs/v0/resource/{repository}/{type}/{tag}", post_resource)
    app.router.add_route("*", "/kbs/v0/{tail:.*}", other_kbs_path)
    app.router.add_get("/.well-known/veil-attestation", get_attestation)
    app.router.add_get("/healthz", healthz)

    async def close_audit(app: web.Application) -> None:
        audit.close()

    app.on_cleanup.append(close_audit)
    return app

