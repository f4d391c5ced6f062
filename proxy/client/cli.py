"""``veil proxy``: options and the server loop."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

import hop
from transparency.client import DEFAULT_LOG_STATE
from veil_cli import Option, add_options

from ..transport import OhttpClient
from ..verify import Transparency, make_verifier
from .app import API_KEY_MODES, create_app
from .guard import allowed_hosts
from .tokens import TokenWallet

OPTIONS = [
    Option("listen", "HOST:PORT for the local OpenAI-compatible endpoint (keep it on loopback)", "127.0.0.1:8000"),
    Option("relay", "the relay's URL for one gateway, e.g. http://relay.example/NAME"),
    Option("policy", "attestation policy file (TOML); real-hardware verifiers use it"),
    Option("publisher", "trust releases signed by this publisher key (verifier key name+id+base64; repeatable): "
           "the policy comes from its unexpired releases in the --log, and --policy, if given, narrows it",
           repeat=True, metavar="VKEY"),
    Option("log", "the transparency log's tiles URL (with --publisher and --log-key); a gateway key configuration "
           "not in the log is refused", metavar="URL"),
    Option("log-key", "the transparency log's verifier key (checkpoint signatures)", metavar="VKEY"),
    Option("witness", "a witness cosignature key the log's checkpoints may carry (repeatable)", repeat=True,
           metavar="VKEY"),
    Option("min-witnesses", "witness cosignatures a checkpoint needs", 0, type=int, metavar="N"),
    Option("log-state", "where the last checkpoint seen is kept, to refuse a rolled-back or forked log "
           "(default: ~/.config/veil/log-state.json)", metavar="FILE"),
    Option("insecure-allow-simulated", "accept SIMULATED attestation (development only; no TEE protects you)",
           False, flag=True),
    Option("api-key", "when the SDK's API key travels (inside the encapsulation): auto = only once the gateway "
           "asks for one", "auto", choices=API_KEY_MODES),
    Option("issuer", "Privacy Pass issuer URL, for a relay that requires tokens (veil relay --require-token): "
           "tokens are fetched in batches ahead of need, kept in memory only and spent one per request",
           metavar="URL"),
    Option("issuer-key", "the API key the issuer's attester wants (better in $VEIL_PROXY_ISSUER_KEY than on a "
           "command line others can read); it goes to the issuer only, never to the relay or gateway",
           metavar="KEY"),
    Option("allowed-host", "another host name the proxy answers to (with its port); by default only its listen "
           "address and, on loopback, 127.0.0.1/localhost/[::1]: other Host or Origin headers are refused (DNS "
           "rebinding)", repeat=True, metavar="NAME"),
    Option("log-level", "logging level", "info", choices=("debug", "info", "warning", "error")),
]

#: The browser chat page (``proxy/web``), present in a source checkout; ``veil proxy`` serves it at ``/``.
WEB_DIR = Path(__file__).resolve().parents[1] / "web"

BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  INSECURE: --insecure-allow-simulated is on. A gateway with SIMULATED attestation  !!
!!  is trusted: no TEE protects your prompts. Every response carries                 !!
!!  'x-veil-attestation: simulated'. Use this for development only.                  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil proxy`` options."""
    add_options(parser, "proxy", OPTIONS)


def _transparency(args: argparse.Namespace) -> Transparency | None:
    """``--publisher --log --log-key`` (all three, or none) as a :class:`Transparency`; bad keys exit here."""
    given = [bool(args.publisher), bool(args.log), bool(args.log_key)]
    if not any(given):
        if args.witness or args.log_state or int(args.min_witnesses):
            raise SystemExit("veil proxy: --witness, --min-witnesses and --log-state need --publisher, --log and "
                             "--log-key")
        return None
    if not all(given):
        raise SystemExit("veil proxy: --publisher, --log and --log-key go together")
    from tlog import TlogError

    try:
        return Transparency(list(args.publisher), args.log, args.log_key, list(args.witness or ()),
                            int(args.min_witnesses),
                            Path(args.log_state).expanduser() if args.log_state else DEFAULT_LOG_STATE)
    except (TlogError, ValueError) as exc:
        raise SystemExit(f"veil proxy: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Run the client proxy until interrupted."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.relay:
        raise SystemExit("veil proxy: --relay URL is required (the relay's path for your gateway)")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"veil proxy: --listen must be HOST:PORT, got {args.listen!r}")
    if args.insecure_allow_simulated:
        print(BANNER, file=sys.stderr, flush=True)
    policy = None
    if args.policy:
        from enclave.attestation import AttestationError, Policy

        try:
            policy = Policy.load(args.policy)
        except AttestationError as exc:
            raise SystemExit(f"veil proxy: {exc}") from None
    transparency = _transparency(args)
    wallet = None
    if args.issuer:
        try:
            wallet = TokenWallet(args.issuer, args.issuer_key)
        except ValueError as exc:
            raise SystemExit(f"veil proxy: --issuer: {exc}") from None
    elif args.issuer_key:
        raise SystemExit("veil proxy: --issuer-key is for an issuer: give --issuer URL too")
    verifier = make_verifier(allow_simulated=args.insecure_allow_simulated, policy=policy, transparency=transparency)
    try:
        client = OhttpClient(
            args.relay, verifier=verifier,
            # every request to the relay through hop (each streamed token passes here; see hop.client), spending
            # the wallet's tokens itself
            pool=hop.Pool(connect_timeout=10, read_timeout=600), tokens=wallet,
        )
    except ValueError as exc:  # a relay URL no request could be sent to (OhttpClient checks it once, here)
        raise SystemExit(f"veil proxy: --relay: {exc}") from None
    web_dir = str(WEB_DIR) if (WEB_DIR / "index.html").is_file() else None
    app = create_app(client, api_key_mode=args.api_key, static_dir=web_dir,
                     allow_simulated=args.insecure_allow_simulated,
                     hosts=allowed_hosts(host, int(port), args.allowed_host or ()), tokens=wallet,
                     require_post_quantum=bool(policy is not None and policy.require_post_quantum),
                     transparency=transparency)
    print(f"veil proxy: OpenAI base_url = http://{host}:{port}/v1 (relay {args.relay})", flush=True)
    if transparency is not None:
        print(f"veil proxy: policy from the releases of {len(transparency.publishers)} publisher key(s) in the log "
              f"{args.log}" + (", narrowed by --policy" if policy is not None else ""), flush=True)
    if wallet is not None:
        print(f"veil proxy: spending Privacy Pass tokens of {wallet.issuer_url}", flush=True)
    if web_dir:
        print(f"veil proxy: chat page at http://{host}:{port}/ (encrypts in the browser)", flush=True)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0
