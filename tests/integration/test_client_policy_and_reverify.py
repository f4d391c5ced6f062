"""The Python clients against real gateways (issue 15, items 8 and 13):

* the in-process transports take a policy (object or TOML file path) or a verifier, like ``veil proxy``, so a real
  TEE can be used without ``allow_simulated``; a policy refuses a simulated gateway, the insecure flag accepts it;
* :class:`proxy.transport.OhttpClient` verifies keys and evidence again, before the next request, once the keys'
  ``max-age`` (``veil gateway --keys-max-age``) or the evidence's own expiry (an MAA token's ``exp``) has passed;
* concurrent key rotations on the gateway never pick the same key id.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx2 as httpx
import openai
import pytest
from aiohttp import web

from enclave.attestation import SimulatedProvider
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.policy import Policy
from enclave.engines import EchoEngine
from enclave.gateway import GatewayConfig, create_app
from enclave.gateway.app_state_keys import STATE
from ohttp import GatewayKey, KeyRing
from proxy.client import VeilAsyncTransport, VeilTransport
from proxy.transport import OhttpClient, VeilClientError
from proxy.verify import make_verifier
from tests.attestation.test_maa_forgery import MRENCLAVE, SGX_ISS, Forger

from .conftest import Proc, free_port, sdk_chat_and_stream, start_veil

pytestmark = pytest.mark.integration

KEYS_MAX_AGE = 2  # seconds: veil gateway --keys-max-age


@pytest.fixture(scope="module")
def gateway() -> Iterator[Proc]:
    port = free_port()
    proc = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}",
                       "--keys-max-age", str(KEYS_MAX_AGE)], port)
    try:
        yield proc
    finally:
        proc.stop()
        proc.log_path.unlink(missing_ok=True)


def urls(gw: Proc) -> dict[str, str]:
    """Straight to the gateway (no relay cache in between: its ``max-age`` is what the client sees)."""
    return {"keys_url": gw.base + "/.well-known/ohttp-gateway",
            "attestation_url": gw.base + "/.well-known/veil-attestation"}


def sync_sdk(transport: VeilTransport) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                         http_client=httpx.Client(transport=transport))


# --- item 8: the transports take a policy, like veil proxy ----------------------------------------------------------


def test_transport_with_a_policy_refuses_a_simulated_gateway(gateway: Proc, tmp_path: Path) -> None:
    for policy in (Policy(platforms=("tdx",)), tmp_path / "policy.toml", str(tmp_path / "policy.toml")):
        (tmp_path / "policy.toml").write_text('platforms = ["sev-snp"]\n')
        transport = VeilTransport(gateway.base + "/.well-known/ohttp-gateway", policy=policy, **urls(gateway))
        client = sync_sdk(transport)
        try:
            with pytest.raises(openai.APIConnectionError) as err:
                client.models.list()
            assert "SIMULATED" in str(err.value.__cause__)
        finally:
            client.close()
            transport.close()


def test_transport_with_a_policy_and_allow_simulated_accepts_it(gateway: Proc, tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('platforms = ["sev-snp"]\n')
    transport = VeilTransport(gateway.base + "/.well-known/ohttp-gateway", policy=tmp_path / "policy.toml",
                              allow_simulated=True, **urls(gateway))
    client = sync_sdk(transport)
    try:
        raw = client.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": "p"}])
        assert raw.parse().choices[0].message.content == "p" and raw.headers["x-veil-attestation"] == "simulated"
    finally:
        client.close()
        transport.close()


async def test_async_transport_takes_a_policy_file_and_a_verifier(gateway: Proc, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["tdx"]\n')
    await sdk_chat_and_stream(VeilAsyncTransport(gateway.base + "/.well-known/ohttp-gateway", policy=policy,
                                                 allow_simulated=True, **urls(gateway)), "policy file", "a b")
    calls: list[bytes] = []
    inner = make_verifier(allow_simulated=True, policy=policy)

    def verifier(bundle: bytes, keys: bytes) -> tuple[object, bool]:
        calls.append(keys)
        return inner(bundle, keys)

    await sdk_chat_and_stream(VeilAsyncTransport(gateway.base + "/.well-known/ohttp-gateway", verifier=verifier,
                                                 **urls(gateway)), "own verifier", "c d")
    assert calls
    with pytest.raises(TypeError, match="not both"):
        VeilAsyncTransport("http://relay.invalid/gw", verifier=verifier, policy=policy)


def test_a_bad_policy_file_fails_when_the_transport_is_made(tmp_path: Path) -> None:
    (tmp_path / "typo.toml").write_text('platforms = ["sev-snp"]\n[sev-snp]\nmeasurement = []\n')
    for bad in (tmp_path / "typo.toml", tmp_path / "missing.toml"):
        with pytest.raises(EvidenceFormatError):
            VeilTransport("http://relay.invalid/gw", policy=bad)
        with pytest.raises(EvidenceFormatError):
            VeilAsyncTransport("http://relay.invalid/gw", policy=bad)
    # the MAA rule of item 1 holds here too: accepting MAA tokens without naming their keys is refused up front
    (tmp_path / "maa.toml").write_text(f'platforms = ["maa"]\n[maa]\nissuers = ["{SGX_ISS}"]\n')
    with pytest.raises(EvidenceFormatError, match="names no MAA signing key"):
        VeilTransport("http://relay.invalid/gw", policy=tmp_path / "maa.toml")


# --- item 13: verified again once max-age or the evidence's expiry has passed -----------------------------------------


def counting_verifier(*, refuse_after: int | None = None) -> tuple[Any, list[float]]:
    """The simulated-accepting verifier, noting when it ran; from call ``refuse_after`` on it refuses (as a client
    would once the gateway's new evidence fails its policy)."""
    calls: list[float] = []
    inner = make_verifier(allow_simulated=True)

    def verify(bundle: bytes, keys: bytes) -> tuple[object, bool]:
        calls.append(time.time())
        if refuse_after is not None and len(calls) > refuse_after:
            raise RuntimeError("the new evidence does not pass the policy")
        return inner(bundle, keys)

    return verify, calls


async def chat(client: OhttpClient, text: str) -> bytes:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": text}]}).encode()
    r = await client.request("POST", "/v1/chat/completions", [("content-type", "application/json")], body)
    assert r.status == 200
    return r.body


async def test_client_reverifies_once_the_keys_max_age_has_passed(gateway: Proc) -> None:
    verify, calls = counting_verifier()
    client = OhttpClient(gateway.base + "/.well-known/ohttp-gateway", verifier=verify, **urls(gateway))
    try:
        await chat(client, "one")
        assert len(calls) == 1 and client.keys is not None and client.keys.expires_at is not None
        assert client.keys.expires_at - client.keys.fetched_at == pytest.approx(KEYS_MAX_AGE, abs=0.01)
        await chat(client, "two")  # within max-age: no fetch, no verification
        assert len(calls) == 1
        await asyncio.sleep(KEYS_MAX_AGE + 0.2)
        await chat(client, "three")  # max-age passed: fetched and verified again first
        assert len(calls) == 2
        # Concurrent requests after expiry verify once between them, not once each.
        await asyncio.sleep(KEYS_MAX_AGE + 0.2)
        await asyncio.gather(*(chat(client, str(i)) for i in range(5)))
        assert len(calls) == 3
    finally:
        await client.close()


async def test_nothing_is_sent_once_the_reverification_fails(gateway: Proc) -> None:
    verify, calls = counting_verifier(refuse_after=1)
    client = OhttpClient(gateway.base + "/.well-known/ohttp-gateway", verifier=verify, **urls(gateway))
    metrics = gateway.base + "/metrics"
    try:
        await chat(client, "while it verifies")
        await asyncio.sleep(KEYS_MAX_AGE + 0.2)
        before = httpx.get(metrics).text
        with pytest.raises(VeilClientError, match="attestation refused"):
            await chat(client, "after the keys' max-age")
        assert client.keys is None  # the old verification is dropped, not reused
        assert _requests(httpx.get(metrics).text) == _requests(before) >= 1  # the gateway received nothing more
    finally:
        await client.close()


def _requests(metrics: str) -> float:
    """The gateway's count of encapsulated requests (all framings and outcomes), from its Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("veil_gateway_requests_total{"))


async def test_client_reverifies_when_the_evidence_expires_before_max_age(aiohttp_server: Any) -> None:
    """A gateway whose keys may be cached for an hour but whose MAA token lapses in two seconds: the client
    verifies again at the token's exp (here a token of our own, trusted by the policy, with a near exp)."""
    forger = Forger(exp_in=2)
    served = {"keys": 0, "bundle": 0}

    async def keys(_: web.Request) -> web.Response:
        served["keys"] += 1
        return web.Response(body=forger.keys_body, content_type="application/ohttp-keys",
                            headers={"Cache-Control": "max-age=3600"})

    async def bundle(_: web.Request) -> web.Response:
        served["bundle"] += 1
        return web.Response(body=forger.bundle.to_json(), content_type="application/json",
                            headers={"Cache-Control": "max-age=3600"})

    app = web.Application()
    app.router.add_get("/keys", keys)
    app.router.add_get("/attestation", bundle)
    server = await aiohttp_server(app)
    policy = Policy.from_dict({"platforms": ["maa"], "maa": {"issuers": [SGX_ISS], "measurements": [MRENCLAVE],
                                                             "key_thumbprints": [forger.thumbprint]}})
    client = OhttpClient(str(server.make_url("/gw")), verifier=make_verifier(allow_simulated=False, policy=policy),
                         keys_url=str(server.make_url("/keys")), attestation_url=str(server.make_url("/attestation")))
    try:
        state = await client.refresh_keys()
        assert not state.simulated and state.expires_at == forger.exp  # the token's exp, not the hour
        await asyncio.sleep(max(0.0, forger.exp - time.time()) + 0.1)
        assert state.expired()
        # The next request verifies again first: the served token has lapsed, so it is refused and nothing is sent.
        with pytest.raises(VeilClientError, match="attestation refused"):
            await client.request("GET", "/v1/models")
        assert served == {"keys": 2, "bundle": 2} and client.keys is None
    finally:
        await client.close()


# --- item 13: concurrent rotations pick distinct key ids ----------------------------------------------------------


async def test_concurrent_rotations_pick_distinct_key_ids(aiohttp_client: Any) -> None:
    app = create_app(engine=EchoEngine(), keyring=KeyRing([GatewayKey.generate(0)]), provider=SimulatedProvider(),
                     config=GatewayConfig())
    client = await aiohttp_client(app)
    state = client.server.app[STATE]
    rotated = await asyncio.gather(*(state.rotate_async() for _ in range(4)))
    ids = [k.config.key_id for k in rotated if k is not None]
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    # None replaced another under its id: every rotated key is still the one accepted under its id (grace period).
    for k in rotated:
        assert k is not None and state.keyring.get(k.config.key_id).config == k.config
    assert state.bundle is not None and state.bundle.key_config == state.keys_body
