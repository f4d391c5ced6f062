"""``create_app``: the key broker's aiohttp application (Trustee KBS protocol 0.4.0 plus its own evidence).

Sessions follow Trustee's state machine (authed -> attested, ``timeout`` from ``auth``), with one deliberate
difference: a session's nonce is single-use. The first ``attest`` on a session consumes it whatever the outcome, so
a replayed Attestation (same cookie, or an old nonce on a new session) is refused, where Trustee answers a repeated
``attest`` on an attested session with the same token.

Evidence is judged against every resource's policy at ``attest``; a session may then read exactly the resources
whose policy its evidence passed. A resource is released as a JWE to the TEE key from the attested runtime data.
"""

from __future__ import annotations

import asyncio
import logging
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
from .config import Resource
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
EAR_PROFILE: Final = "tag:github.com,2024:confidential-containers/Trustee"


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Settings besides resources, keys and evidence."""

    #: seconds a session lives from ``auth`` (Trustee's ``timeout``, default 5 minutes)
    session_timeout: float = 300.0
    #: accept simulated evidence (``--insecure-allow-simulated``); its measurement must still be in the policy
    allow_simulated: bool = False
    #: open sessions kept at most (beyond that ``auth`` is refused until some expire)
    max_sessions: int = 10000


@dataclass
class Session:
    """One RCAR session. ``state``: ``authed`` (nonce unused), ``consumed`` (attest failed), ``attested``."""

    id: str
    tee: str
    challenge: Challenge
    expires_at: float
    state: str = "authed"
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
    sessions: dict[str, Session] = field(default_factory=dict)
    token_key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", private=True))
    bundle_json: bytes = b""
    evidence_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def purge(self) -> None:
        for sid in [sid for sid, s in self.sessions.items() if s.expired()]:
            del self.sessions[sid]


STATE: Final = web.AppKey("STATE", BrokerState)


def kbs_error(type_name: str, detail: str, status: int = 401) -> web.Response:
    """A Trustee ``ErrorInformation`` response."""
    return web.Response(status=status, body=encode_error(type_name, detail), content_type="application/json")


def _protocol_error(exc: KbsProtocolError) -> web.Response:
    return kbs_error(exc.type_name, exc.detail, exc.status)


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise KbsProtocolError(f"request body larger than {MAX_BODY} bytes", type_name="SerdeError")
    return await request.read()


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
    if len(state.sessions) >= state.config.max_sessions:
        return kbs_error("AttestationError", "too many open sessions; retry later", 503)
    session = Session(id=uuid.uuid4().hex, tee=req.tee, challenge=Challenge.new(),
                      expires_at=time.time() + state.config.session_timeout)
    state.sessions[session.id] = session
    resp = web.Response(body=session.challenge.encode(), content_type="application/json")
    resp.headers["Set-Cookie"] = session.cookie()
    return resp


def _session(request: web.Request) -> Session | None:
    state = request.app[STATE]
    sid = request.cookies.get(SESSION_COOKIE)
    session = state.sessions.get(sid) if sid else None
    if session is not None and session.expired():
        del state.sessions[session.id]
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
    except (OSError, SealError) as exc:
        log.error("resource %s cannot be unsealed: %s", path, exc)
        state.audit.record(outcome="denied", reason="sealed secret unavailable", **common)
        return kbs_error("PluginInternalError", "Plugin internal error")
    body = jwe_encrypt(tee_pubkey, secret)
    state.audit.record(outcome="released", **common)
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


async def other_kbs_path(request: web.Request) -> web.Response:
    """Everything else under ``/kbs/v0``: Trustee's 404s (admin endpoints are not offered: secrets are sealed on
    disk by the operator, not uploaded)."""
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
    async with state.evidence_lock:  # one collection at a time; callers queue rather than fail
        try:
            bundle = await asyncio.to_thread(state.provider.collect, state.identity, nonce)
        except AttestationError as exc:
            log.error("evidence collection failed: %s", exc)
            return web.Response(status=503, text="evidence unavailable")
    return web.Response(body=bundle.to_json(), content_type="application/json", headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = {"status": "ok", "resources": len(state.resources), "attestation": state.provider.platform}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_app(*, resources: dict[str, Resource], kek: bytes, provider: EvidenceProvider, identity: bytes,
               audit: AuditLog, config: BrokerConfig | None = None) -> web.Application:
    """Build the broker application. ``identity`` is what the broker's evidence binds (its TLS certificate, DER)."""
    state = BrokerState(config=config or BrokerConfig(), resources=resources, kek=kek, provider=provider,
                        identity=identity, audit=audit)
    state.bundle_json = provider.collect(identity).to_json()
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_post("/kbs/v0/auth", post_auth)
    app.router.add_post("/kbs/v0/attest", post_attest)
    app.router.add_get("/kbs/v0/resource/{repository}/{type}/{tag}", get_resource)
    app.router.add_route("*", "/kbs/v0/{tail:.*}", other_kbs_path)
    app.router.add_get("/.well-known/veil-attestation", get_attestation)
    app.router.add_get("/healthz", healthz)

    async def close_audit(app: web.Application) -> None:
        audit.close()

    app.on_cleanup.append(close_audit)
    return app

