"""``GET /.well-known/ohttp-gateway`` (the key configuration) and ``GET /.well-known/veil-attestation``."""

from __future__ import annotations

import os

import orjson

import ohttp
from enclave.attestation import Bundle, report_data

from .conftest import ATTESTATION, WELL_KNOWN, Gateway, GatewayFactory


async def test_the_keys_are_the_keyrings_published_list_with_their_max_age(gateway: Gateway) -> None:
    resp = await gateway.client.get(WELL_KNOWN, headers={"Accept": ohttp.MEDIA_TYPE_KEYS})
    assert resp.status == 200 and resp.content_type == ohttp.MEDIA_TYPE_KEYS
    assert resp.headers["Cache-Control"] == "max-age=3600"
    body = await resp.read()
    assert body == gateway.state.keyring.encode_published()
    (config,) = ohttp.decode_list(body)
    assert config.key_id == 1


async def test_the_keys_max_age_is_configurable(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(keys_max_age=60)
    assert (await gw.client.get(WELL_KNOWN)).headers["Cache-Control"] == "max-age=60"


async def test_keys_are_refused_to_a_client_that_accepts_other_media_types_only(gateway: Gateway) -> None:
    for accept in ("application/ohttp-keys;q=1", "*/*", "application/*", "text/html, application/ohttp-keys"):
        assert (await gateway.client.get(WELL_KNOWN, headers={"Accept": accept})).status == 200, accept
    resp = await gateway.client.get(WELL_KNOWN, headers={"Accept": "text/html"})
    assert resp.status == 406 and resp.content_type == "application/problem+json"
    assert orjson.loads(await resp.read())["status"] == 406


async def test_the_attestation_bundle_binds_the_published_keys_and_the_configuration(gateway: Gateway) -> None:
    keys = await (await gateway.client.get(WELL_KNOWN)).read()
    resp = await gateway.client.get(ATTESTATION)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "max-age=3600"
    bundle = Bundle.from_json(await resp.read())
    assert bundle.platform == "simulated" and bundle.key_config == keys
    assert bundle.config["engine"] == "echo" and bundle.config["pad_to"] == 256
    assert report_data(keys, b"", b"", bundle.config) in bundle.report


async def test_fresh_evidence_binds_the_clients_nonce_and_is_not_cached(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(fresh_evidence_interval=0.0)
    nonce = os.urandom(32)
    resp = await gw.client.get(ATTESTATION, params={"nonce": nonce.hex()})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    bundle = Bundle.from_json(await resp.read())
    assert bundle.nonce == nonce and report_data(bundle.key_config, b"", nonce, bundle.config) in bundle.report


async def test_a_malformed_nonce_is_a_400_problem(gateway: Gateway) -> None:
    for nonce in ("zz", "ab" * 31, "ab" * 33):
        resp = await gateway.client.get(ATTESTATION, params={"nonce": nonce})
        assert resp.status == 400 and resp.content_type == "application/problem+json"
        assert orjson.loads(await resp.read())["title"] == "bad nonce"


async def test_fresh_evidence_is_rate_limited(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(fresh_evidence_interval=30.0)
    assert (await gw.client.get(ATTESTATION, params={"nonce": "00" * 32})).status == 200
    again = await gw.client.get(ATTESTATION, params={"nonce": "11" * 32})
    assert again.status == 429 and again.content_type == "application/problem+json"
