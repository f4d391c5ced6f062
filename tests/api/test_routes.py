"""Routing, validation and error JSON of the API layer, with the echo engine in-process."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from enclave.api import Api, openai_error
from enclave.engines import EchoEngine, EngineUnavailable, InnerResponse

from .conftest import RecordingEcho, api_request, chat, error_of


async def test_a_chat_completion_is_the_engines_answer_with_bytes_headers(api: Api) -> None:
    resp = await api.handle(api_request("POST", "/v1/chat/completions", chat("hello there")))
    assert resp.status == 200 and resp.events is None
    assert resp.headers == ((b"content-type", b"application/json"),)
    assert orjson.loads(resp.body)["choices"][0]["message"]["content"] == "hello there"


async def test_a_stream_is_sse_events_ending_in_done(api: Api) -> None:
    resp = await api.handle(api_request("POST", "/v1/chat/completions", chat("one two", stream=True)))
    assert resp.status == 200 and resp.header(b"content-type") == b"text/event-stream" and resp.events is not None
    events = [e async for e in resp.events]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    deltas = [orjson.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(deltas) == "one two"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "echo"}, "messages"),
        ("/v1/chat/completions", {"model": "echo", "messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", chat() | {"model": ""}, "model"),
        ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "robot", "content": "x"}]},
         "messages.0.role"),
        ("/v1/chat/completions", chat(temperature=3), "temperature"),
        ("/v1/chat/completions", chat(max_tokens=0), "max_tokens"),
        ("/v1/chat/completions", chat(n=17), "n"),
        ("/v1/chat/completions", chat(top_p=0), "top_p"),
        ("/v1/completions", {"model": "echo"}, "prompt"),
        ("/v1/embeddings", {"model": "echo"}, "input"),
        ("/v1/responses", {"model": "echo"}, "input"),
    ],
)
async def test_invalid_requests_are_400_openai_errors_naming_the_field(
    api: Api, engine: RecordingEcho, path: str, body: dict[str, Any], param: str
) -> None:
    resp = await api.handle(api_request("POST", path, body))
    assert resp.status == 400
    err = error_of(resp)
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_request" and err["param"] == param
    assert param in err["message"]
    assert engine.sent == []  # nothing invalid reaches the engine


@pytest.mark.parametrize(
    ("raw", "headers", "status", "message"),
    [
        (b"{not json", ((b"content-type", b"application/json"),), 400, "not valid JSON"),
        (b"[1, 2]", ((b"content-type", b"application/json"),), 400, "must be a JSON object"),
        (b"{}", ((b"content-type", b"text/plain"),), 415, "Content-Type"),
    ],
)
async def test_bodies_that_are_not_a_json_object_are_refused(
    api: Api, raw: bytes, headers: tuple[tuple[bytes, bytes], ...], status: int, message: str
) -> None:
    resp = await api.handle(api_request("POST", "/v1/chat/completions", headers=headers, raw=raw))
    assert resp.status == status and message in error_of(resp)["message"]


async def test_content_type_parameters_and_a_missing_content_type_are_json(api: Api) -> None:
    with_charset = ((b"content-type", b"Application/JSON; charset=utf-8"),)
    assert (await api.handle(api_request("POST", "/v1/chat/completions", chat(), headers=with_charset))).status == 200
    assert (await api.handle(api_request("POST", "/v1/chat/completions", chat(), headers=()))).status == 200


@pytest.mark.parametrize("path", ["/v1/nothing", "/v2/chat/completions", "/", "/v1/chat/completions/extra"])
async def test_unknown_paths_are_404_unknown_url(api: Api, path: str) -> None:
    resp = await api.handle(api_request("POST", path, chat()))
    assert resp.status == 404
    err = error_of(resp)
    assert err["code"] == "unknown_url" and err["type"] == "not_found_error" and path in err["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/chat/completions"), ("PUT", "/v1/embeddings"), ("POST", "/v1/models"), ("DELETE", "/v1/models/echo")],
)
async def test_wrong_methods_are_405(api: Api, method: str, path: str) -> None:
    resp = await api.handle(api_request(method, path, chat() if method != "GET" else None))
    assert resp.status == 405
    err = error_of(resp)
    assert err["type"] == "invalid_request_error" and method in err["message"]


async def test_the_query_string_does_not_change_the_route(api: Api) -> None:
    assert (await api.handle(api_request("POST", "/v1/chat/completions?x=1", chat()))).status == 200
    assert (await api.handle(api_request("GET", "/v1/models?limit=5"))).status == 200


async def test_models_list_one_model_and_an_unknown_one(api: Api) -> None:
    listed = await api.handle(api_request("GET", "/v1/models"))
    assert listed.status == 200 and [m["id"] for m in orjson.loads(listed.body)["data"]] == ["echo"]
    one = await api.handle(api_request("GET", "/v1/models/echo"))
    assert one.status == 200 and orjson.loads(one.body)["id"] == "echo"
    missing = await api.handle(api_request("GET", "/v1/models/gpt-9"))
    assert missing.status == 404
    err = error_of(missing)
    assert err["code"] == "model_not_found" and err["param"] == "model"


async def test_a_model_the_engine_does_not_serve_is_404_before_the_engine_is_called(
    api: Api, engine: RecordingEcho
) -> None:
    resp = await api.handle(api_request("POST", "/v1/chat/completions", chat() | {"model": "gpt-9"}))
    assert resp.status == 404 and error_of(resp)["code"] == "model_not_found" and engine.sent == []


async def test_the_model_list_is_cached_for_its_ttl(engine: RecordingEcho) -> None:
    api = Api(engine, models_ttl=3600)
    for _ in range(3):
        await api.handle(api_request("POST", "/v1/chat/completions", chat()))
    assert engine.model_lists == 1
    uncached = Api(engine, models_ttl=-1)
    await uncached.handle(api_request("GET", "/v1/models"))
    await uncached.handle(api_request("GET", "/v1/models"))
    assert engine.model_lists == 3


class AnsweringEngine(EchoEngine):
    """An engine that gives one fixed answer to every call, or raises :class:`EngineUnavailable`."""

    def __init__(self, answer: InnerResponse | None) -> None:
        super().__init__()
        self.answer = answer

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        if self.answer is None:
            raise EngineUnavailable("restarting")
        return self.answer


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (InnerResponse(status=404, body=b'{"detail": "Not Found"}'), 404, "unknown_url"),
        (InnerResponse(status=500, headers=((b"content-type", b"text/plain"),), body=b"Internal Server Error"), 500,
         "engine_error"),
        (InnerResponse(status=400, body=b"not json"), 400, "engine_error"),
    ],
)
async def test_engine_errors_that_are_not_openai_json_become_openai_json(
    answer: InnerResponse, status: int, code: str
) -> None:
    resp = await Api(AnsweringEngine(answer)).handle(api_request("POST", "/v1/chat/completions", chat()))
    assert resp.status == status and error_of(resp)["code"] == code


async def test_engine_answers_in_openai_shape_pass_unchanged() -> None:
    own = openai_error(400, "The engine's own words.", code="context_length_exceeded")
    ok = InnerResponse(status=200, headers=((b"content-type", b"application/json"), (b"x-engine", b"1")), body=b"{}")
    for answer in (own, ok):
        assert await Api(AnsweringEngine(answer)).handle(api_request("POST", "/v1/chat/completions", chat())) is answer


async def test_an_unavailable_engine_is_503_engine_unavailable() -> None:
    resp = await Api(AnsweringEngine(None)).handle(api_request("POST", "/v1/chat/completions", chat()))
    assert resp.status == 503
    err = error_of(resp)
    assert err["code"] == "engine_unavailable" and err["type"] == "service_unavailable" and "restarting" in err["message"]


@pytest.mark.parametrize(
    ("status", "type_"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
     (503, "service_unavailable"), (418, "api_error")],
)
def test_openai_error_types_follow_the_status(status: int, type_: str) -> None:
    resp = openai_error(status, "message", code="c", param="p")
    assert resp.status == status and resp.headers == ((b"content-type", b"application/json"),)
    assert orjson.loads(resp.body) == {"error": {"message": "message", "type": type_, "param": "p", "code": "c"}}


def test_an_unknown_cache_salt_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_salt"):
        Api(EchoEngine(), cache_salt="sometimes")
