"""``veil issuer``: options and the server loop."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from aiohttp import web

from veil_cli import Option, add_options

from ..logfilter import setup_logging
from .app import create_app
from .config import IssuerConfig

log = logging.getLogger("veil.issuer")

OPTIONS = [
    Option("listen", "HOST:PORT to listen on", "127.0.0.1:8090"),
    Option("state-path", "SQLite file for the issuer's keys (private: created 0600) and per-key issuance counts; "
           "issuer processes may share it", "veil-issuer.sqlite", metavar="FILE"),
    Option("request-path", "path clients POST token requests to", "/token-request"),
    Option("key-lifetime", "seconds each key is the one clients use", 7 * 24 * 3600.0, type=float),
    Option("key-overlap", "seconds a key stays listed (its tokens accepted) after the next one takes over",
           24 * 3600.0, type=float),
    Option("key-publish-ahead", "seconds a new key is listed before clients may use it (relays learn it first)",
           3600.0, type=float),
    Option("directory-max-age", "Cache-Control max-age of the directory, in seconds", 300.0, type=float),
    Option("tokens-per-key", "tokens one API key may get per --limit-window (0: no limit; a key file line's "
           ":limit overrides it)", 1000, type=int),
    Option("limit-window", "seconds of one issuance-limit window", 3600.0, type=float),
    Option("attester", "who gets tokens: api-key (holders of a key) or MODULE:FACTORY (a plug-in)", "api-key"),
    Option("api-keys-file", "file of [name:]sha256hex[:limit] lines (also plain keys in $VEIL_ISSUER_API_KEYS)",
           metavar="FILE"),
    Option("log-level", "logging level", "info", choices=("debug", "info", "warning", "error")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil issuer`` options."""
    add_options(parser, "issuer", OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run the issuer until interrupted."""
    # No client address, API key or header byte in a log below debug (aiohttp's errors for malformed requests
    # would write them); access lines would carry addresses too.
    setup_logging(args.log_level, "issuer")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"veil issuer: --listen must be HOST:PORT, got {args.listen!r}")
    try:
        config = IssuerConfig(**{f.name: getattr(args, f.name) for f in fields(IssuerConfig) if hasattr(args, f.name)})
        app = create_app(config)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"veil issuer: {exc}") from None
    print(f"veil issuer listening on http://{host}:{port} (directory: /.well-known/private-token-issuer-directory)",
          flush=True)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)
    return 0
