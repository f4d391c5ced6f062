"""The gateway's KBS client: attest the broker, then auth -> attest -> get resource -> decrypt, over Trustee's wire
shapes (``enclave.broker.protocol``), so the same client speaks to ``veil broker`` and, in principle, to Trustee.

Mutual attestation, in this order, before a single byte of gateway evidence leaves:

1. ``GET /.well-known/veil-attestation?nonce=<fresh>`` without certificate checks; the bundle must carry that nonce,
   bind the broker's TLS certificate (DER, as ``key_config``) and pass the broker policy (simulated evidence only
   with ``allow_simulated``);
2. every later connection is pinned to that certificate (``aiohttp.Fingerprint``): a man in the middle that relays
   the broker's evidence cannot finish a TLS handshake with the pinned key, so it can neither read the released
   secrets nor feed the gateway its own.

Then RCAR: a fresh P-256 key per handshake (the guest-components default, ``ECDH-ES+A256KW``), evidence from the
gateway's :class:`EvidenceProvider` with ``key_config = H(JCS(runtime))`` and no client nonce (see the binding in
``enclave.broker.protocol``), the session cookie sent explicitly, one new handshake on a 401, and the JWE opened
with joserfc only when it is ``A256GCM`` under exactly the algorithm of the key we sent.

Against a real Trustee KBS, skip step 1 and pass ``ssl=`` a context that pins its certificate or CA; its AS needs
Trustee-format evidence (REPORT_DATA = H(JCS(runtime)) itself), which Veil's bundle providers do not produce.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import ssl as ssl_module
import time
from typing import Any, Callable, Final, Self, cast

import aiohttp
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from ohttp import GatewayKey

from .attestation import Bundle, BundleError, EvidenceProvider
from .attestation.errors import AttestationError
from .attestation.result import Verdict
from .broker.policy import AttestationPolicy, check_evidence
from .broker.protocol import (
    ALG_ECDH_ES_A256KW,
    ENC_A256GCM,
    KBS_PREFIX,
    PLATFORM_TEE,
    SESSION_COOKIE,
    Attestation,
    AuthRequest,
    Challenge,
    KbsProtocolError,
    b64url,
    b64url_decode,
    kbs_report_data,
)
from .ohttp_key_set import KeySetError, parse_key_set

log = logging.getLogger("veil.gateway")

DEFAULT_KEYSET_RESOURCE: Final = "default/ohttp/keyset"
_JWE_MEMBERS: Final = {"protected", "encrypted_key", "iv", "ciphertext", "tag"}

SslParam = aiohttp.Fingerprint | ssl_module.SSLContext | bool


#: A broker whose TLS certificate is not the one its evidence binds (the connection is pinned to it).
PINNED_TLS_MISMATCH: Final = ("the key broker's TLS certificate is not the one its evidence binds (a TLS-terminating "
                              "proxy in front of the broker, a restarted broker, or an attack)")


class KbsClientError(Exception):
    """The broker could not be attested, refused us, or answered something we do not accept."""


class TeeKey:
    """The ephemeral TEE key of one handshake (P-256, ``ECDH-ES+A256KW``); the private key never leaves memory."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        nums = self._key.public_key().public_numbers()
        #: the ``tee-pubkey`` JWK, members in kbs-types order
        self.jwk: dict[str, str] = {"kty": "EC", "crv": "P-256", "alg": ALG_ECDH_ES_A256KW,
                                    "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}

    def decrypt(self, body: bytes) -> bytes:
        """Open a resource JWE (flattened JSON) addressed to this key.

        Raises:
            KbsClientError: not a JWE, another ``alg``/``enc``, extra header members, or it does not decrypt.
        """
        try:
            obj: Any = orjson.loads(body)
            if not isinstance(obj, dict) or not _JWE_MEMBERS <= set(obj) or set(obj) - _JWE_MEMBERS - {"aad"}:
                raise KbsClientError("the resource is not a flattened JSON JWE")
            header: Any = orjson.loads(b64url_decode(obj["protected"]))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            raise KbsClientError("the resource JWE is malformed") from None
        if not isinstance(header, dict) or header.get("alg") != ALG_ECDH_ES_A256KW or header.get("enc") != ENC_A256GCM:
            raise KbsClientError(f"the resource JWE must be {ALG_ECDH_ES_A256KW} + {ENC_A256GCM} (the key we sent)")
        if set(header) != {"alg", "enc", "epk"}:
            raise KbsClientError(f"unexpected JWE header members {sorted(set(header) - {'alg', 'enc'})}")
        try:
            result = jwe.decrypt_json(cast(jwe.FlattenedJSONSerialization, obj), ECKey.import_key(self._key),
                                      algorithms=[ALG_ECDH_ES_A256KW, ENC_A256GCM])
        except (JoseError, ValueError) as exc:
            raise KbsClientError(f"the resource JWE does not decrypt: {type(exc).__name__}") from None
        plaintext: bytes = result.plaintext or b""
        return plaintext


def _error_text(status: int, body: bytes) -> str:
    try:
        info = orjson.loads(body)
        if isinstance(info, dict) and isinstance(info.get("type"), str):
            return f"{status} {info['type'].rsplit('/', 1)[-1]}: {info.get('detail', '')}"
    except orjson.JSONDecodeError:
        pass
    return f"{status} {body[:200]!r}"


async def attest_broker(base_url: str, policy: AttestationPolicy, *, allow_simulated: bool = False,
                        timeout: float = 30.0) -> tuple[aiohttp.Fingerprint, Verdict]:
    """Verify the broker's own evidence and return the pin for its TLS certificate (and the verdict).

    Raises:
        KbsClientError: not HTTPS, no or stale evidence, a failing verdict, or a certificate other than the bound one.
    """
    base = base_url.rstrip("/")
    if not base.startswith("https://"):
        raise KbsClientError("the key broker URL must be https://: its attested TLS certificate authenticates it")
    nonce = os.urandom(32)
    try:
        url = f"{base}/.well-known/veil-attestation"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(url, params={"nonce": nonce.hex()}, ssl=False) as r:
            body = await r.read()
            if r.status != 200:
                raise KbsClientError(f"the broker serves no evidence: {r.status}")
    except aiohttp.ClientError as exc:
        raise KbsClientError(f"cannot reach the key broker at {base}: {exc}") from None
    try:
        bundle = Bundle.from_json(body)
        x509.load_der_x509_certificate(bundle.key_config)
    except (BundleError, ValueError) as exc:
        raise KbsClientError(f"the broker's evidence is malformed: {exc}") from None
    if not hmac.compare_digest(bundle.nonce, nonce):
        raise KbsClientError("the broker's evidence does not carry our nonce (stale or replayed)")
    try:
        verdict = await asyncio.to_thread(check_evidence, bundle, None, policy, allow_simulated=allow_simulated)
    except AttestationError as exc:
        raise KbsClientError(f"the broker's evidence cannot be verified: {exc}") from None
    if not verdict.ok:
        raise KbsClientError("the key broker failed attestation:\n" + verdict.document())
    return aiohttp.Fingerprint(hashlib.sha256(bundle.key_config).digest()), verdict


class KbsClient:
    """RCAR against one KBS. Use as ``async with KbsClient(url, provider, ssl=pin) as c: await c.get_resource(p)``."""

    def __init__(self, base_url: str, provider: EvidenceProvider, *, ssl: SslParam = True, timeout: float = 30.0,
                 tee: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.provider = provider
        self.tee = tee or PLATFORM_TEE.get(provider.platform, "")
        if not self.tee:
            raise KbsClientError(f"no KBS tee type for evidence platform {provider.platform!r}")
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._cookie: str | None = None
        self._key: TeeKey | None = None
        #: the attestation token from the last handshake (an EAR JWT; not verified here: TLS authenticates the KBS)
        self.token: str | None = None

    async def __aenter__(self) -> Self:
        # No cookie jar: the one cookie is handled explicitly (aiohttp's jar ignores cookies from IP addresses).
        self._http = aiohttp.ClientSession(timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        self._http, self._key, self._cookie = None, None, None

    async def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, str | None]:
        if self._http is None:
            raise RuntimeError("use KbsClient as an async context manager")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self._cookie}"
        try:
            async with self._http.request(method, self.base + path, data=body, headers=headers, ssl=self._ssl) as r:
                cookie = r.cookies.get(SESSION_COOKIE)
                return r.status, await r.read(), cookie.value if cookie is not None else None
        except aiohttp.ServerFingerprintMismatch:
            raise KbsClientError(PINNED_TLS_MISMATCH) from None
        except aiohttp.ClientError as exc:
            raise KbsClientError(f"key broker request {method} {path} failed: {exc}") from None

    async def handshake(self) -> None:
        """``auth`` then ``attest`` with fresh evidence and a fresh TEE key.

        Raises:
            KbsClientError: any non-200, a malformed challenge, or evidence collection failing.
        """
        self._cookie, self._key, self.token = None, None, None
        status, body, cookie = await self._request("POST", f"{KBS_PREFIX}/auth", AuthRequest(tee=self.tee).encode())
        if status != 200:
            raise KbsClientError(f"KBS auth refused: {_error_text(status, body)}")
        if not cookie:
            raise KbsClientError(f"KBS auth answered without a {SESSION_COOKIE} cookie")
        try:
            challenge = Challenge.decode(body)
            key = TeeKey()
            bound = kbs_report_data(challenge.nonce, key.jwk, challenge.hash_algorithm)
        except KbsProtocolError as exc:
            raise KbsClientError(f"KBS challenge: {exc.detail}") from None
        self._cookie = cookie
        try:
            bundle = await asyncio.to_thread(self.provider.collect, bound)
        except AttestationError as exc:
            raise KbsClientError(f"cannot collect evidence for the key broker: {exc}") from None
        att = Attestation(nonce=challenge.nonce, tee_pubkey=key.jwk, primary_evidence=orjson.loads(bundle.to_json()))
        status, body, cookie = await self._request("POST", f"{KBS_PREFIX}/attest", att.encode())
        if status != 200:
            raise KbsClientError(f"KBS attest refused: {_error_text(status, body)}")
        try:
            token = orjson.loads(body)["token"]
            if not isinstance(token, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise KbsClientError("KBS attest answered without a token") from None
        self._key, self.token = key, token
        if cookie:
            self._cookie = cookie

    async def get_resource(self, path: str) -> bytes:
        """The plaintext of ``repository/type/tag``; handshakes first if needed, and once more on a 401.

        Raises:
            KbsClientError: refused, missing, or a response that does not decrypt to our key.
        """
        for attempt in (1, 2):
            if self._key is None:
                await self.handshake()
            status, body, _ = await self._request("GET", f"{KBS_PREFIX}/resource/{path}")
            if status == 200 and self._key is not None:
                return self._key.decrypt(body)
            if status == 401 and attempt == 1 and "PolicyDeny" not in _error_text(status, body):
                self._key = None  # session gone (expired, broker restarted): one new handshake
                continue
            raise KbsClientError(f"KBS resource {path} refused: {_error_text(status, body)}")
        raise KbsClientError(f"KBS resource {path}: unauthorized after a new handshake")


async def fetch_resources(base_url: str, paths: list[str], provider: EvidenceProvider, *,
                          broker_policy: AttestationPolicy, allow_simulated_broker: bool = False,
                          timeout: float = 30.0) -> dict[str, bytes]:
    """Attest the broker, then fetch each resource in one RCAR session."""
    pin, _ = await attest_broker(base_url, broker_policy, allow_simulated=allow_simulated_broker, timeout=timeout)
    async with KbsClient(base_url, provider, ssl=pin, timeout=timeout) as client:
        return {p: await client.get_resource(p) for p in paths}


def gateway_keys_from_broker(base_url: str, provider: EvidenceProvider, *, resource: str = DEFAULT_KEYSET_RESOURCE,
                             policy_file: str | None = None, allow_simulated_broker: bool = False,
                             timeout: float = 30.0) -> list[GatewayKey]:
    """``veil gateway --key-broker``: the shared OHTTP key set, fetched at start (blocking; before the server loop).

    Raises:
        KbsClientError: the broker failed attestation, refused, or released something that is not a key set.
    """
    try:
        policy = AttestationPolicy.load(policy_file) if policy_file else AttestationPolicy()
    except AttestationError as exc:
        raise KbsClientError(str(exc)) from None
    found = asyncio.run(fetch_resources(base_url, [resource], provider, broker_policy=policy,
                                        allow_simulated_broker=allow_simulated_broker, timeout=timeout))
    try:
        return parse_key_set(found[resource])
    except KeySetError as exc:
        raise KbsClientError(f"resource {resource}: {exc}") from None


def load_broker_keys(args: Any, provider: EvidenceProvider) -> list[GatewayKey]:
    """``veil gateway --key-broker URL``: the key set for the gateway's key ring, or exit with the reason."""
    if args.key_file:
        raise SystemExit("veil gateway: --key-file and --key-broker exclude each other")
    if args.rotation_interval:
        raise SystemExit("veil gateway: --rotation-interval does not combine with --key-broker: replicas rotate "
                         "together through the key set's not_before/not_after")
    try:
        keys = gateway_keys_from_broker(args.key_broker, provider, resource=args.key_broker_resource,
                                        policy_file=args.key_broker_policy,
                                        allow_simulated_broker=args.insecure_allow_simulated_broker)
    except KbsClientError as exc:
        raise SystemExit(f"veil gateway: key broker: {exc}") from None
    if not any(k.published and k.accepts_at(time.time()) for k in keys):
        raise SystemExit("veil gateway: the key set from the key broker has no key valid now")
    if args.insecure_allow_simulated_broker:
        log.warning("--insecure-allow-simulated-broker: a SIMULATED key broker may supply the OHTTP keys")
    log.info("OHTTP key set from the key broker %s (%s): key ids %s", args.key_broker, args.key_broker_resource,
             ", ".join(str(k.config.key_id) for k in keys))
    return keys


def broker_model_key_source(args: Any, provider: EvidenceProvider) -> Callable[[str], bytes]:
    """``--encrypted-model`` with ``--key-broker``: the model key comes from the broker after attestation.

    The resource is ``<--model-key-repo>/model-key/<key id>`` and holds the key file JSON that
    ``veil model keygen`` writes (``{"key_id": ..., "key": "<64 hex>"}``), sealed at the broker.
    """
    def source(key_id: str) -> bytes:
        from .model.model_key import ModelKey

        path = f"{args.model_key_repo}/model-key/{key_id}"
        try:
            policy = AttestationPolicy.load(args.key_broker_policy) if args.key_broker_policy else AttestationPolicy()
            found = asyncio.run(fetch_resources(args.key_broker, [path], provider, broker_policy=policy,
                                                allow_simulated_broker=args.insecure_allow_simulated_broker))
            obj = orjson.loads(found[path])
            key = ModelKey(str(obj["key_id"]), bytes.fromhex(obj["key"]))
        except (AttestationError, KbsClientError, KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise SystemExit(f"veil gateway: model key {key_id} from the key broker: {exc}") from None
        if key.key_id != key_id:
            raise SystemExit(f"veil gateway: the key broker released key {key.key_id!r} for {key_id!r}")
        return key.key

    return source
