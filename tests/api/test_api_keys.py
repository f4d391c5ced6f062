"""API keys inside the encapsulation: the key table, its file and environment forms, and 401 answers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from enclave.api import Api, ApiKeyTable, hash_key

from .conftest import RecordingEcho, api_request, chat, error_of


def bearer(key: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"content-type", b"application/json"), (b"authorization", b"Bearer " + key.encode()))


@pytest.fixture
def keyed_api(engine: RecordingEcho) -> Api:
    return Api(engine, api_keys=ApiKeyTable({hash_key("sk-alice"): "alice", hash_key("sk-bob"): "bob"}))


def test_hash_key_is_the_hex_sha256_of_the_key() -> None:
    assert hash_key("sk-alice") == hashlib.sha256(b"sk-alice").hexdigest()


def test_check_names_the_holder_of_a_valid_bearer_key_only() -> None:
    table = ApiKeyTable({hash_key("sk-alice"): "alice"})
    assert table.check(b"Bearer sk-alice") == "alice"
    assert table.check(b"bearer   sk-alice  ") == "alice"  # scheme case-insensitive, spaces around the key ignored
    for bad in (None, b"", b"sk-alice", b"Basic sk-alice", b"Bearer sk-alicf", b"Bearer "):
        assert table.check(bad) is None


@pytest.mark.parametrize("headers", [
    ((b"content-type", b"application/json"),),
    bearer("sk-mallory"),
    ((b"content-type", b"application/json"), (b"authorization", b"sk-alice")),
])
async def test_a_missing_or_wrong_key_is_401_before_anything_else(
    keyed_api: Api, engine: RecordingEcho, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    for req in (api_request("POST", "/v1/chat/completions", chat(), headers=headers),
                api_request("GET", "/v1/models", headers=headers),
                api_request("POST", "/v1/nothing", {}, headers=headers)):  # even unknown paths: nothing leaks
        resp = await keyed_api.handle(req)
        assert resp.status == 401
        err = error_of(resp)
        assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"
    assert engine.sent == []


async def test_a_valid_key_is_served(keyed_api: Api) -> None:
    assert (await keyed_api.handle(api_request("POST", "/v1/chat/completions", chat(), headers=bearer("sk-bob")))
            ).status == 200
    assert (await keyed_api.handle(api_request("GET", "/v1/models", headers=bearer("sk-alice")))).status == 200


async def test_without_a_key_table_no_key_is_needed(api: Api) -> None:
    assert (await api.handle(api_request("POST", "/v1/chat/completions", chat(), headers=bearer("anything")))
            ).status == 200


def test_load_reads_named_and_bare_hashes_and_skips_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_GATEWAY_API_KEYS", raising=False)
    path = tmp_path / "keys.txt"
    path.write_text(f"# team keys\n\nalice:{hash_key('sk-alice')}\n  {hash_key('sk-anon').upper()}  \n")
    table = ApiKeyTable.load(str(path))
    assert table is not None
    assert table.check(b"Bearer sk-alice") == "alice"
    assert table.check(b"Bearer sk-anon") == "key4"  # a bare hash is named after its line


def test_load_takes_plain_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_TEST_KEYS", "sk-one, ,sk-two")
    table = ApiKeyTable.load(None, env_var="VEIL_TEST_KEYS")
    assert table is not None
    assert table.check(b"Bearer sk-one") == "env1" and table.check(b"Bearer sk-two") == "env2"


def test_load_without_keys_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_GATEWAY_API_KEYS", raising=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    assert ApiKeyTable.load(None) is None and ApiKeyTable.load(str(empty)) is None


@pytest.mark.parametrize("line", ["alice:abc", "alice:" + "g" * 64, "sk-plain-key-by-mistake"])
def test_load_refuses_a_line_that_is_not_a_hash(tmp_path: Path, line: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"ok:{hash_key('x')}\n{line}\n")
    with pytest.raises(ValueError, match=r"keys.txt:2: expected"):
        ApiKeyTable.load(str(path))
