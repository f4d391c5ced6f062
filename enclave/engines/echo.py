"""A deterministic engine with no model: it echoes the last user message word by word.

It speaks the same OpenAI API as vLLM (non-stream, SSE streams with ``include_usage``, tool calls, embeddings),
so protocol tests and benchmarks measure Veil's own cost with an engine that costs ~0.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, AsyncIterator, Final

import orjson

from .base import SSE, InnerResponse

MODEL: Final = "echo"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts) if p or i == 0]


def _err(status: int, message: str, typ: str = "invalid_request_error", code: str | None = None) -> InnerResponse:
    body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
    return InnerResponse(status=status, body=orjson.dumps(body))


class EchoEngine:
    """The ``echo`` engine. ``token_delay`` (seconds) spaces streamed tokens, to test streaming and cancellation."""

    kind = "echo"

    def __init__(self, token_delay: float = 0.0) -> None:
        self.token_delay = token_delay
        self._counter = 0
        #: streams that ended early because the client went away (for tests of cancellation)
        self.cancelled_streams = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    async def models(self) -> list[str]:
        return [MODEL]

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-echo{self._counter:08d}"

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        if path == "/v1/models" and method == "GET":
            data = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "veil"}]}
            return InnerResponse(status=200, body=orjson.dumps(data))
        if method != "POST":
            return _err(405, f"method {method} not allowed on {path}")
        req: dict[str, Any] = orjson.loads(body or b"{}")
        if path == "/v1/chat/completions":
            return self._chat(req, stream)
        if path == "/v1/completions":
            return self._completion(req, stream)
        if path == "/v1/embeddings":
            return self._embeddings(req)
        return _err(404, f"the echo engine does not serve {path}", code="not_found")

    # -- chat ----------------------------------------------------------------------------------------------------

    def _chat(self, req: dict[str, Any], stream: bool) -> InnerResponse:
        messages = req.get("messages", [])
        last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text = _text_of(last_user.get("content", ""))
        words = _words(text) if text else []
        prompt_tokens = sum(len(_text_of(m.get("content", "")).split()) for m in messages)
        max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
        finish = "stop"
        if max_tokens is not None and len(words) > int(max_tokens):
            words, finish = words[: int(max_tokens)], "length"
        tool_call = self._tool_call(req, text)
        rid, created = self._next_id("chatcmpl"), int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}
        if tool_call is not None:
            usage["completion_tokens"] = 1
            usage["total_tokens"] = prompt_tokens + 1
        base = {"id": rid, "created": created, "model": req.get("model", MODEL), "system_fingerprint": "veil-echo"}
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(words)}
            if tool_call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
                finish = "tool_calls"
            out = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
            }
            return InnerResponse(status=200, body=orjson.dumps(out))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        return InnerResponse(
            status=200,
            headers=SSE,
            events=self._chat_stream(base, words, finish, tool_call, usage if include_usage else None),
        )

    def _tool_call(self, req: dict[str, Any], text: str) -> dict[str, Any] | None:
        tools = req.get("tools") or []
        choice = req.get("tool_choice")
        if not tools or choice in (None, "none", "auto"):
            return None
        name = tools[0]["function"]["name"]
        if isinstance(choice, dict):
            name = choice.get("function", {}).get("name", name)
        return {
            "id": self._next_id("call"),
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps({"text": text}).decode()},
        }

    async def _chat_stream(
        self,
        base: dict[str, Any],
        words: list[str],
        finish: str,
        tool_call: dict[str, Any] | None,
        usage: dict[str, int] | None,
    ) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": choices, **extra}) + b"\n\n"

        done = False
        try:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            if tool_call is not None:
                yield event([{"index": 0, "delta": {"tool_calls": [{"index": 0, **tool_call}]}, "finish_reason": None}])
                finish = "tool_calls"
            for w in words:
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                yield event([{"index": 0, "delta": {"content": w}, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
            if usage is not None:
                yield event([], usage=usage)
            yield b"data: [DONE]\n\n"
            done = True
        finally:
            if not done:
                self.cancelled_streams += 1

    # -- completions and embeddings ------------------------------------------------------------------------------

    def _completion(self, req: dict[str, Any], stream: bool) -> InnerResponse:
        prompt = req.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        words = _words(text)
        rid, created = self._next_id("cmpl"), int(time.time())
        base = {"id": rid, "created": created, "model": req.get("model", MODEL), "object": "text_completion"}
        n = len(text.split())
        usage = {"prompt_tokens": n, "completion_tokens": len(words), "total_tokens": n + len(words)}
        if not stream:
            out = {**base, "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": usage}
            return InnerResponse(status=200, body=orjson.dumps(out))

        async def events() -> AsyncIterator[bytes]:
            for w in words:
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                choice = {"index": 0, "text": w, "finish_reason": None, "logprobs": None}
                yield b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
            choice = {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
            yield b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return InnerResponse(status=200, headers=SSE, events=events())

    def _embeddings(self, req: dict[str, Any]) -> InnerResponse:
        inputs = req.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append({"object": "embedding", "index": i, "embedding": [b / 255.0 for b in digest[:8]]})
        n = sum(len(str(x).split()) for x in items)
        out = {"object": "list", "data": data, "model": req.get("model", MODEL), "usage": {"prompt_tokens": n, "total_tokens": n}}
        return InnerResponse(status=200, body=orjson.dumps(out))
