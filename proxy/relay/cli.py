"""``veil relay``: options and the server loop."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from veil_cli import Option, add_options

from .app import RelayConfig, create_app
from .pool import split_urls

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
    Option("cors-origin", "browser origin allowed to use the relay, or * (repeatable)", repeat=True, metavar="ORIGIN"),
    Option("shutdown-timeout", "on SIGTERM/SIGINT, seconds in-flight requests and streams may take to finish",
           30.0, type=float),
    Option("log-level", "logging level", "info", choices=("debug", "info", "warning", "error")),
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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.gateway:
        raise SystemExit("veil relay: give at least one --gateway NAME=URL (the allow list)")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"veil relay: --listen must be HOST:PORT, got {args.listen!r}")
    try:
        config = RelayConfig(
            gateways=parse_gateways(args.gateway),
            max_request_bytes=args.max_request_bytes,
            max_response_bytes=args.max_response_bytes,
            max_concurrent=args.max_concurrent,
            rate_per_minute=args.rate_per_minute,
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            client_timeout=args.client_timeout,
            cors_origins=tuple(args.cors_origin or ()),
            health_interval=args.health_interval,
        )
    except ValueError as exc:
        raise SystemExit(f"veil relay: {exc}") from None
    names = ", ".join(f"/{n}" + (f" ({len(u)} replicas)" if len(u) > 1 else "")
                      for n, u in parse_gateways(args.gateway).items())
    print(f"veil relay listening on http://{host}:{port} (gateways: {names})", flush=True)
    # access_log=None: the relay keeps no per-client logs.
    web.run_app(create_app(config), host=host, port=int(port), access_log=None, print=None,
                shutdown_timeout=args.shutdown_timeout)
    return 0
