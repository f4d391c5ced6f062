"""OpenAI-format error bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import orjson

from ..engines.base import InnerResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable", 504: "timeout"}


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> InnerResponse:
    """An error response the OpenAI SDK maps to its exception classes (400 BadRequest, 404 NotFound, ...)."""
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}
    return InnerResponse(status=status, body=orjson.dumps(body))
