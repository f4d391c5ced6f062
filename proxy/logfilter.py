"""Logging for the servers that see clients (``veil relay``, ``veil issuer``): no client address or byte in a log.

A relay sees who sends; an issuer sees who asks for tokens. Neither keeps per-client logs below ``--log-level
debug``: aiohttp's own loggers would otherwise write a client's address and the offending header line (which may hold
a token or an API key) when a request is malformed.
"""

from __future__ import annotations

import logging

__all__ = ["ClientDataFilter", "setup_logging"]


class ClientDataFilter(logging.Filter):
    """Below ``--log-level debug``, no log line may carry a client address, header or body byte. Veil's own loggers
    never log them; every other logger (aiohttp.server's "Error handling request from <address>" with the offending
    header line in its traceback, aiohttp.access, aiohttp.web, asyncio's transport errors, warnings) keeps its
    name, level and the kind of error, and loses its message arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "veil" or record.name.startswith("veil."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else "no exception"
        record.msg = "%s (%s; details withheld: they may hold client addresses or bytes)"
        record.args = (record.name, kind)
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def setup_logging(level: str, command: str) -> None:
    """``veil COMMAND``'s logging: ``level``, and the :class:`ClientDataFilter` on every handler unless it is
    debug."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # warnings (e.g. ResourceWarning with a transport) go through the filter too
    if level.lower() == "debug":
        logging.getLogger(f"veil.{command}").warning(
            "!!! --log-level debug: the %s's DEBUG logs (aiohttp's included) may contain client ADDRESSES and request "
            "HEADER bytes. Do not run a production %s at this level. !!!", command, command)
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(ClientDataFilter())
