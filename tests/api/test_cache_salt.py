"""Prompt-cache isolation: which ``cache_salt`` the API layer gives the engine, per mode and tenant."""

from __future__ import annotations

import pytest

from enclave.api import Api, ApiKeyTable, hash_key

from .conftest import RecordingEcho, api_request, chat

JSON = (b"content-type", b"application/json")


def tenant(name: str) -> tuple[tuple[bytes, bytes], ...]:
    return (JSON, (b"x-veil-tenant", name.encode()))


def keyed(key: str) -> tuple[tuple[bytes, bytes], ...]:
    return (JSON, (b"authorization", b"Bearer " + key.encode()))


async def salts(api: Api, engine: RecordingEcho, *headers: tuple[tuple[bytes, bytes], ...],
                body: dict[str, object] | None = None) -> list[object]:
    """The ``cache_salt`` the engine received for one chat request per entry of ``headers``."""
    engine.sent.clear()
    for h in headers:
        resp = await api.handle(api_request("POST", "/v1/chat/completions", body or chat(), headers=h))
        assert resp.status == 200
    return [sent.get("cache_salt") for _, sent in engine.sent]


async def test_tenant_mode_salts_per_tenant_header_and_per_request_without_one(api: Api, engine: RecordingEcho) -> None:
    a1, a2, b, none1, none2 = await salts(api, engine, tenant("a"), tenant("a"), tenant("b"), (JSON,), (JSON,))
    assert isinstance(a1, str) and len(a1) == 24  # 18 bytes, URL-safe base64
    assert a1 == a2 and a1 != b
    assert none1 != none2 and none1 not in (a1, b)


async def test_an_api_keys_name_is_the_tenant_and_outranks_the_header(engine: RecordingEcho) -> None:
    api = Api(engine, api_keys=ApiKeyTable({hash_key("sk-a"): "a", hash_key("sk-b"): "b"}))
    a1, a2, b = await salts(api, engine, keyed("sk-a"), keyed("sk-a") + ((b"x-veil-tenant", b"b"),), keyed("sk-b"))
    assert a1 == a2 != b
    # A header naming the same tenant is a different tenant: one cannot claim a key holder's cache by name.
    (hdr,) = await salts(Api(engine), engine, tenant("a"))
    assert hdr != a1


async def test_salts_differ_between_gateways(engine: RecordingEcho) -> None:
    (one,) = await salts(Api(engine), engine, tenant("a"))
    (other,) = await salts(Api(engine), engine, tenant("a"))
    assert one != other  # the salt secret lives in memory only


async def test_request_mode_salts_every_request_afresh(engine: RecordingEcho) -> None:
    api = Api(engine, cache_salt="request")
    first, second = await salts(api, engine, tenant("a"), tenant("a"))
    assert isinstance(first, str) and first != second


async def test_off_mode_forwards_no_salt(engine: RecordingEcho) -> None:
    api = Api(engine, cache_salt="off")
    assert await salts(api, engine, tenant("a"), (JSON,)) == [None, None]


@pytest.mark.parametrize("mode", ["tenant", "request", "off"])
async def test_a_clients_own_cache_salt_never_reaches_the_engine(engine: RecordingEcho, mode: str) -> None:
    api = Api(engine, cache_salt=mode)
    (salt,) = await salts(api, engine, tenant("a"), body=chat(cache_salt="someone-elses-salt"))
    assert salt != "someone-elses-salt"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": "echo", "prompt": "hi"}),
    ("/v1/embeddings", {"model": "echo", "input": "hi"}),
    ("/v1/responses", {"model": "echo", "input": "hi"}),
])
async def test_every_post_route_is_salted(api: Api, engine: RecordingEcho, path: str, body: dict[str, object]) -> None:
    await api.handle(api_request("POST", path, body, headers=tenant("a")))
    (sent_path, sent), = engine.sent
    assert sent_path == path and isinstance(sent.get("cache_salt"), str)
