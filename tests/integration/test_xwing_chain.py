"""X-Wing end to end as real processes: a default ``veil gateway`` publishes an X-Wing key config first and an X25519
one second, both bound by one evidence bundle; the ``openai`` SDK -> veil proxy -> veil relay -> gateway chat uses
X-Wing, and an X25519-only client still works against the same gateway through the same relay."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from email.utils import formatdate
from pathlib import Path
from typing import Iterator

import openai
import orjson
import pytest

import ohttp
from enclave.attestation import Bundle, Policy
from ohttp import bhttp
from proxy import OhttpClient
from proxy.transport import VeilClientError
from proxy.verify import make_verifier

from .conftest import Chain, free_port, running_chain, start_veil

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with running_chain() as c:
        yield c


def _get(url: str, accept: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=10) as r:
        body: bytes = r.read()
        return body


def test_gateway_publishes_xwing_first_and_x25519_second_under_one_bundle(chain: Chain) -> None:
    # Through the relay: its key cache and size limits take the 1227-byte X-Wing entry.
    body = _get(chain.relay_url, ohttp.MEDIA_TYPE_KEYS)
    configs = ohttp.decode_list(body)
    assert [c.kem for c in configs] == [ohttp.KemId.XWING, ohttp.KemId.X25519_SHA256]
    assert configs[0].key_id != configs[1].key_id
    assert len(configs[0].public_key) == 1216
    assert body == _get(chain.gateway.base + "/.well-known/ohttp-gateway", ohttp.MEDIA_TYPE_KEYS)
    bundle = Bundle.from_json(_get(chain.gateway.base + "/.well-known/veil-attestation", "application/json"))
    assert bundle.key_config == body  # REPORT_DATA binds the whole list: both keys, in this order


def test_sdk_chat_through_the_chain_uses_xwing(chain: Chain) -> None:
    client = openai.OpenAI(base_url=chain.proxy.base + "/v1", api_key="sk-local-unused", max_retries=0)
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "post quantum hello"}])
    assert r.choices[0].message.content == "post quantum hello"
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b c d"}],
                                            stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices).split() == ["a", "b", "c", "d"]
    doc = json.loads(_get(chain.proxy.base + "/v1/veil/attestation", "application/json"))
    assert doc["kem"] == "XWING" and doc["post_quantum"] is True
    assert doc["key_id"] == ohttp.decode_list(_get(chain.relay_url, ohttp.MEDIA_TYPE_KEYS))[0].key_id


def _x25519_only_roundtrip(relay_url: str, content: str, *, chunked: bool) -> bytes:
    # A client that predates X-Wing: it skips the 0x647A config and encapsulates to X25519.
    configs = [c for c in ohttp.decode_list(_get(relay_url, ohttp.MEDIA_TYPE_KEYS)) if not c.kem.post_quantum]
    assert configs and configs[0].kem is ohttp.KemId.X25519_SHA256
    inner = bhttp.encode_request(bhttp.Request(
        method=b"POST", scheme=b"https", authority=b"", path=b"/v1/chat/completions",
        headers=((b"content-type", b"application/json"), (b"date", formatdate(usegmt=True).encode())),
        content=orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": content}]}),
    ))
    if chunked:
        creq = ohttp.ChunkedClientRequest(configs[0])
        wire = creq.encode_chunk(inner, final=True)
        ctype = ohttp.MEDIA_TYPE_CHUNKED_REQUEST
    else:
        wire, ctx = ohttp.ClientRequest(configs[0]).encapsulate(inner)
        ctype = ohttp.MEDIA_TYPE_REQUEST
    req = urllib.request.Request(relay_url, data=wire, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        body = r.read()
    if not chunked:
        return bhttp.decode_response(ctx.decapsulate(body)).content
    dec = creq.response()
    dec.receive_data(body)
    dec.receive_data(b"")
    out = b""
    while (ev := dec.next_event()) is not ohttp.NEED_DATA:
        assert isinstance(ev, ohttp.Chunk)
        out += ev.data
    return bhttp.decode_response(out).content


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
def test_x25519_only_client_still_works(chain: Chain, chunked: bool) -> None:
    content = _x25519_only_roundtrip(chain.relay_url, "classic client", chunked=chunked)
    assert orjson.loads(content)["choices"][0]["message"]["content"] == "classic client"


async def _client_kem(url: str, policy: Policy) -> ohttp.KemId:
    client = OhttpClient(url, verifier=make_verifier(allow_simulated=True, policy=policy))
    try:
        return (await client.refresh_keys()).config.kem
    finally:
        await client.close()


def test_require_post_quantum_policy(chain: Chain) -> None:
    assert asyncio.run(_client_kem(chain.relay_url, Policy(require_post_quantum=True))) is ohttp.KemId.XWING


def test_gateway_with_kem_x25519_offers_only_x25519(tmp_path: Path) -> None:
    port = free_port()
    gw = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--kem", "x25519"], port)
    try:
        configs = ohttp.decode_list(_get(gw.base + "/.well-known/ohttp-gateway", ohttp.MEDIA_TYPE_KEYS))
        assert [c.kem for c in configs] == [ohttp.KemId.X25519_SHA256]
        gw_url = gw.base + "/.well-known/ohttp-gateway"

        async def refused() -> None:
            client = OhttpClient(gw_url, keys_url=gw_url, attestation_url=gw.base + "/.well-known/veil-attestation",
                                 verifier=make_verifier(allow_simulated=True, policy=Policy(require_post_quantum=True)))
            try:
                with pytest.raises(VeilClientError, match="post-quantum"):
                    await client.refresh_keys()
            finally:
                await client.close()

        asyncio.run(refused())
    finally:
        gw.stop()
        gw.log_path.unlink(missing_ok=True)


def test_gateway_key_file_with_both_keys(tmp_path: Path) -> None:
    seed = os.urandom(32)
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"keys": [
        {"key_id": 5, "kem": "xwing", "private_key": seed.hex()},
        {"key_id": 6, "kem": "x25519", "seed": os.urandom(32).hex()},
    ]}))
    port = free_port()
    gw = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--key-file", str(key_file)],
                    port)
    try:
        configs = ohttp.decode_list(_get(gw.base + "/.well-known/ohttp-gateway", ohttp.MEDIA_TYPE_KEYS))
        assert [(c.key_id, c.kem) for c in configs] == [(5, ohttp.KemId.XWING), (6, ohttp.KemId.X25519_SHA256)]
        assert configs[0].public_key == ohttp.GatewayKey.from_private_bytes(5, seed, ohttp.KemId.XWING).config.public_key
    finally:
        gw.stop()
        gw.log_path.unlink(missing_ok=True)
