"""The OpenAI API inside the encapsulation: validate, authorize, isolate caches, dispatch to the engine.

Everything here works on decapsulated requests. Errors become OpenAI error JSON with the right status; nothing is
logged that contains request or response content.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import BaseModel, ValidationError

from ..engines.base import Engine, EngineUnavailable, InnerResponse
from .auth import ApiKeyTable
from .errors import openai_error
from .models import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest

_POST_ROUTES: Final[dict[str, type[BaseModel]]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
}
#: Every route this layer forwards reaches vLLM's prefix cache (generation and pooling alike honour
#: ``cache_salt``), so every one is salted by the gateway; a route added to ``_POST_ROUTES`` is salted too.
_SALTED: Final = frozenset(_POST_ROUTES)
TENANT_HEADER: Final = b"x-veil-tenant"
CACHE_SALT_MODES: Final = ("tenant", "request", "off")


@dataclass(frozen=True)
class ApiRequest:
    """A decapsulated HTTP request."""

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


def _openai_shaped(resp: InnerResponse, path: str) -> InnerResponse:
    """Engine errors that are not OpenAI error JSON (vLLM answers unknown routes with ``{"detail": ...}``)."""
    if resp.status < 400 or resp.events is not None:
        return resp
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return resp
    if resp.status == 404:
        return openai_error(404, f"The engine does not serve {path}.", code="unknown_url")
    return openai_error(resp.status, f"The engine rejected the request (HTTP {resp.status}).", code="engine_error")


class Api:
    """Dispatches decapsulated requests to ``engine``.

    ``cache_salt``: ``"tenant"`` (default) salts vLLM's prefix cache per tenant (the API key's name, else the
    ``x-veil-tenant`` header) and per request when there is no tenant; ``"request"`` always per request;
    ``"off"`` salts nothing (every request shares the cache). A client's own ``cache_salt`` never reaches the
    engine: with it, one tenant could send another's salt and time the prefix cache for that tenant's prompts.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        api_keys: ApiKeyTable | None = None,
        cache_salt: str = "tenant",
        models_ttl: float = 30.0,
    ) -> None:
        if cache_salt not in CACHE_SALT_MODES:
            raise ValueError(f"cache_salt must be one of {CACHE_SALT_MODES}")
        self.engine = engine
        self.api_keys = api_keys
        self.cache_salt = cache_salt
        self._salt_secret = os.urandom(32)  # in memory only: salts cannot be predicted from outside the TEE
        self._models: list[str] = []
        self._models_at = 0.0
        self._models_ttl = models_ttl

    async def models(self) -> list[str]:
        """The engine's model ids, cached briefly."""
        now = time.monotonic()
        if not self._models or now - self._models_at > self._models_ttl:
            self._models = await self.engine.models()
            self._models_at = now
        return self._models

    def salt_for(self, tenant: str | None) -> str:
        """The cache salt for a tenant, or a fresh one per request."""
        if tenant is None or self.cache_salt == "request":
            return base64.urlsafe_b64encode(os.urandom(18)).decode()
        mac = hmac.new(self._salt_secret, tenant.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    async def handle(self, req: ApiRequest) -> InnerResponse:
        """Serve one request; never raises for bad input."""
        tenant: str | None = None
        if self.api_keys is not None:
            tenant = self.api_keys.check(req.header(b"authorization"))
            if tenant is None:
                return openai_error(401, "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
                                    code="invalid_api_key")
        path = req.path.split("?", 1)[0]
        try:
            if path == "/v1/models" or path.startswith("/v1/models/"):
                if req.method != "GET":
                    return openai_error(405, f"Method {req.method} is not allowed on {path}.")
                return await self._models_route(path)
            model_cls = _POST_ROUTES.get(path)
            if model_cls is None:
                return openai_error(404, f"Unknown path {path}.", code="unknown_url")
            if req.method != "POST":
                return openai_error(405, f"Method {req.method} is not allowed on {path}.")
            return await self._post(path, model_cls, req, tenant)
        except EngineUnavailable as exc:
            return openai_error(503, f"The inference engine is unavailable ({exc}); retry shortly.",
                                code="engine_unavailable")

    async def _models_route(self, path: str) -> InnerResponse:
        models = await self.models()
        cards = [{"id": m, "object": "model", "created": 0, "owned_by": "veil"} for m in models]
        if path == "/v1/models":
            return InnerResponse(status=200, body=orjson.dumps({"object": "list", "data": cards}))
        wanted = path[len("/v1/models/"):]
        for card in cards:
            if card["id"] == wanted:
                return InnerResponse(status=200, body=orjson.dumps(card))
        return openai_error(404, f"The model `{wanted}` does not exist.", code="model_not_found", param="model")

    async def _post(self, path: str, model_cls: type[BaseModel], req: ApiRequest, tenant: str | None) -> InnerResponse:
        ctype = (req.header(b"content-type") or b"application/json").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return openai_error(415, "Content-Type must be application/json.")
        try:
            raw: Any = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return openai_error(400, "The request body is not valid JSON.")
        if not isinstance(raw, dict):
            return openai_error(400, "The request body must be a JSON object.")
        try:
            parsed = model_cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            return openai_error(400, f"Invalid request: {param}: {err['msg']}", param=param, code="invalid_request")
        model = raw["model"]
        if model not in await self.models():
            return openai_error(404, f"The model `{model}` does not exist.", code="model_not_found", param="model")
        raw.pop("cache_salt", None)
        if path in _SALTED and self.cache_salt != "off":
            if tenant is None and (t := req.header(TENANT_HEADER)):
                tenant = "hdr:" + t.decode("latin-1")
            raw["cache_salt"] = self.salt_for(tenant)
        stream = bool(getattr(parsed, "stream", False))
        return _openai_shaped(await self.engine.call("POST", path, orjson.dumps(raw), stream=stream), path)
