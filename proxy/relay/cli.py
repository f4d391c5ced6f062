"""``veil relay``: options and the server loop."""

from __future__ import annotations

import argparse
import logging
import sqlite3
from dataclasses import fields

from veil_cli import Option, add_options

from ..logfilter import ClientDataFilter, setup_logging
from .app import create_app
from .config import RelayConfig
from .limits import serve
from .pool import split_urls
from .state import STATE

log = logging.getLogger("veil.relay")
__all__ = ["OPTIONS", "ClientDataFilter", "add_arguments", "parse_gateways", "run", "setup_logging"]

OPTIONS = [
    Option("listen", "HOST:PORT to listen on", "127.0.0.1:8080"),
    Option("gateway", "NAME=URL of an allowed gateway's /.well-known/ohttp-gateway (repeatable); NAME=URL1,URL2,... "
           "for replicas of one gateway (least outstanding requests, health-checked); a URL may be "
           "vsock://CID:PORT/.well-known/ohttp-gateway for a gateway in an AWS Nitro enclave", repeat=True,
           metavar="NAME=URL"),
    Option("health-interval", "seconds between /healthz checks of gateway replicas (0: none)", 5.0, type=float),
    Option("max-request-bytes", "largest request body", 4 * 1024 * 1024, type=int),
    Option("max-response-bytes", "largest response body (streams are cut off beyond it)", 64 * 1024 * 1024, type=int),
    Option("max-concurrent", "requests forwarded at once (503 beyond)", 1024, type=int),
    Option("rate-per-minute", "requests per client address per minute (429 beyond; kept in memory only)", 600, type=int),
    Option("connect-timeout", "seconds to connect to a gateway (502 beyond)", 5.0, type=float),
    Option("read-timeout", "seconds a gateway may stay silent (504 / stream cut beyond)", 300.0, type=float),
    Option("client-timeout", "seconds a client may stay silent while sending its body (408 beyond)", 30.0, type=float),
    Option("body-timeout", "seconds a client has to send its whole request body, plus one per --min-rate bytes "
           "received, --max-body-time at most (408 beyond)", 20.0, type=float),
    Option("min-rate", "bytes per second that earn a request body one more second past --body-timeout", 4096.0,
           type=float),
    Option("max-body-time", "seconds any request body may take, however fast it arrives (408 beyond)", 60.0,
           type=float),
    Option("write-timeout", "seconds response bytes may wait unread before the client is dropped (0: never)", 30.0,
           type=float),
    Option("idle-timeout", "seconds a connection may stay idle, or take to send its request line and headers", 15.0,
           type=float),
    Option("max-connections-per-address", "open connections per client address (IPv6: per /64); more are closed "
           "as they open", 128, type=int),
    Option("max-in-flight-per-address", "requests forwarded at once per client address (429 beyond)", 32, type=int),
    Option("trusted-proxy", "address or CIDR of a TLS terminator / load balancer in front of the relay whose "
           "X-Forwarded-For gives the client address (repeatable; never logged). Without it every client behind a "
           "terminator shares the terminator's address: one rate limit and one set of per-address caps",
           repeat=True, metavar="CIDR"),
    Option("key-refresh-interval", "seconds between drops of a gateway's cached keys and evidence after a 422 for a "
           "cached key id (a key rotation); anyone can draw a 422, so no more often than this", 10.0, type=float),
    Option("require-token", "every forwarded request must spend a Privacy Pass token (RFC 9577 PrivateToken, type 2) "
           "of the issuer at this URL: checked offline against its directory's keys (fetched from this URL itself, "
           "redirects not followed, at most 256 KiB), each token once (401/403 with a fresh challenge otherwise); "
           "tokens are never logged", metavar="ISSUER_URL"),
    Option("spent-store", "where spent tokens are remembered (with --require-token): a SQLite FILE that replicas on "
           "one host share, or redis://HOST:PORT/DB for replicas on several", "veil-relay-spent.sqlite",
           metavar="FILE|redis://..."),
    Option("token-origin", "origin name in the relay's token challenge (repeatable; none: tokens any relay trusting "
           "the issuer accepts)", repeat=True, metavar="NAME"),
    Option("cors-origin", "browser origin allowed to use the relay, or * (repeatable)", repeat=True, metavar="ORIGIN"),
    Option("workers", "worker processes, each with its own SO_REUSEPORT socket on --listen (the kernel spreads "
           "connections), under a supervisor that restarts one that dies (back-off 1-30 s) and stops all on "
           "SIGTERM. The per-address caps, --rate-per-minute and --max-concurrent hold for the relay as a whole "
           "(counted in shared memory; an address may be refused early, never late), spent tokens are shared as "
           "--spent-store says, /metrics sums every worker; key caches and health checks are per worker", 1,
           type=int),
    Option("shutdown-timeout", "on SIGTERM/SIGINT, seconds in-flight requests and streams may take to finish",
           30.0, type=float),
    Option("log-level", "logging level (no level but debug logs client addresses or bytes; debug may)", "info",
           choices=("debug", "info", "warning", "error")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil relay`` options."""
    add_options(parser, "relay", OPTIONS)


def parse_gateways(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``["a=http://...", "b=http://1,http://2"]`` -> ``{"a": ("http://...",), "b": ("http://1", "http://2")}``."""
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, urls = item.partition("=")
        if not sep or not name or not split_urls(urls):
            raise SystemExit(f"veil relay: --gateway takes NAME=URL or NAME=URL1,URL2,..., got {item!r}")
        if name in out:
            raise SystemExit(f"veil relay: gateway {name!r} given twice; list its replicas as NAME=URL1,URL2")
        out[name] = split_urls(urls)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the relay until interrupted."""
    setup_logging(args.log_level, "relay")
    if not args.gateway:
        raise SystemExit("veil relay: give at least one --gateway NAME=URL (the allow list)")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"veil relay: --listen must be HOST:PORT, got {args.listen!r}")
    try:
        # Every option named like a RelayConfig field sets it; the four whose values are reshaped are given here.
        same = {f.name: getattr(args, f.name) for f in fields(RelayConfig)
                if hasattr(args, f.name) and f.name != "token_origin"}
        config = RelayConfig(gateways=parse_gateways(args.gateway), trusted_proxies=tuple(args.trusted_proxy or ()),
                             cors_origins=tuple(args.cors_origin or ()), token_origin=tuple(args.token_origin or ()),
                             **same)
    except ValueError as exc:
        raise SystemExit(f"veil relay: {exc}") from None
    names = ", ".join(f"/{n}" + (f" ({len(u)} replicas)" if len(u) > 1 else "")
                      for n, u in parse_gateways(args.gateway).items())
    if config.trusted_proxies:
        log.info("client addresses are taken from X-Forwarded-For of %d trusted proxy network(s)",
                 len(config.trusted_proxies))
    if config.require_token:
        log.info("requests must spend a Privacy Pass token of %s (spent tokens: %s)", config.require_token,
                 "Redis" if config.spent_store.startswith(("redis://", "rediss://", "unix://")) else
                 config.spent_store)
    if args.workers < 1:
        raise SystemExit(f"veil relay: --workers must be 1 or more, got {args.workers}")
    if args.workers > 1:
        from .workers import Supervisor

        try:
            sup = Supervisor(config, host=host, port=int(port), workers=args.workers, log_level=args.log_level,
                             idle_timeout=args.idle_timeout, shutdown_timeout=args.shutdown_timeout)
        except OSError as exc:
            raise SystemExit(f"veil relay: cannot listen on {args.listen}: {exc}") from None
        print(f"veil relay listening on http://{host}:{sup.port} (gateways: {names}; {args.workers} workers)",
              flush=True)
        return sup.run()
    print(f"veil relay listening on http://{host}:{port} (gateways: {names})", flush=True)
    try:
        app = create_app(config)
    except (OSError, sqlite3.Error) as exc:  # the spent-token store's file cannot be opened
        raise SystemExit(f"veil relay: --spent-store {config.spent_store}: {exc}") from None
    serve(app, host, int(port), shutdown_timeout=args.shutdown_timeout, idle_timeout=args.idle_timeout,
          limits=app[STATE].limits)
    return 0
