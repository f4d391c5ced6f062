"""``veil broker``: a key broker (Trustee KBS protocol 0.4.0) that releases sealed secrets to attested gateways."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from veil_cli import Option, add_options

from ..attestation import PROVIDER_KINDS, ProviderError, ProviderOptions, make_provider
from ..operator_input import refuse_operator_input

from .audit import AuditLog
from .config import BrokerConfigError, load_resources
from .protocol import KbsProtocolError, parse_resource_path
from .sealing import KEK_ENV, KEK_EPHEMERAL, KEK_OPERATOR, SealError, broker_sealing_key, load_kek, seal

log = logging.getLogger("veil.broker")

OPTIONS = [
    Option("listen", "HOST:PORT to listen on (HTTPS)", "127.0.0.1:8090"),
    Option("resources", "TOML resource table: [resources.\"repo/type/tag\"] path = sealed file, policy = file"),
    Option("state-dir", "writable directory for the sealed state (generated key sets, imported secrets); relative "
           "'path's of --resources are here (default: beside the resources file)"),
    Option("kek-file", f"key-encryption key of the sealed secrets: 64 hex characters or 32 raw bytes (or ${KEK_ENV}); "
           "--attestation simulated only (with a real provider the broker seals with a key only its TEE has)"),
    Option("audit-log", "append the audit log (JSON lines) to this file (default: the log)"),
    Option("insecure-allow-simulated", "accept SIMULATED gateway evidence (development only; its measurement must "
           "still be in the policy's [simulated] table)", False, flag=True),
    Option("attestation", "the broker's own evidence provider (like veil gateway --attestation)", "simulated",
           choices=PROVIDER_KINDS),
    Option("pccs-url", "PCCS for TDX collateral (default: Intel PCS)"),
    Option("tpm-tcti", "--attestation azure: TPM2TOOLS_TCTI for tpm2-tools (default: the kernel's /dev/tpmrm0)"),
    Option("azure-imds-url", "--attestation azure: Azure instance metadata service", "http://169.254.169.254"),
    Option("nsm-device", "--attestation nitro: the Nitro Security Module device", "/dev/nsm"),
    Option("tls-cert", "TLS certificate (PEM); without it a fresh self-signed one is made in memory"),
    Option("tls-key", "TLS private key (PEM) for --tls-cert"),
    Option("session-timeout", "seconds an RCAR session lives from /auth", 300.0, type=float),
    Option("pending-timeout", "seconds a session may take from /auth to a successful /attest", 60.0, type=float),
    Option("max-pending", "sessions not yet attested, kept at most (a new /auth evicts the oldest)", 1024, type=int),
    Option("max-pending-per-address", "sessions not yet attested per client address (a new /auth from it evicts "
           "its oldest)", 8, type=int),
    Option("evidence-rate", "fresh evidence requests (?nonce=) per second per client address (429 beyond)", 1.0,
           type=float),
    Option("evidence-burst", "fresh evidence requests a client address may make at once", 10.0, type=float),
    Option("body-timeout", "seconds a request body may take to arrive (408 beyond)", 10.0, type=float),
    Option("idle-timeout", "seconds a connection may stay idle, or take to send its request line and headers", 15.0,
           type=float),
    Option("seal", "seal this plaintext file ('-': stdin) with the KEK for --seal-resource, print it, and exit "
           "(development: a broker with real attestation refuses every KEK; give it model keys with "
           "veil broker import)"),
    Option("seal-resource", "repository/type/tag the --seal output is for"),
    Option("log-level", "logging level", "info", choices=("debug", "info", "warning", "error")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil broker`` options, and ``veil broker import`` (run on the operator's machine)."""
    from . import importer

    add_options(parser, "broker", OPTIONS)
    actions = parser.add_subparsers(dest="broker_action", metavar="[import]")
    imp = actions.add_parser("import", help="import a model key into an attested broker (run by the key's owner)",
                             description=(importer.__doc__ or "").split("\n\n", 1)[0])
    importer.add_arguments(imp)


def _seal(args: argparse.Namespace, kek: bytes) -> int:
    parts = (args.seal_resource or "").split("/")
    try:
        if len(parts) != 3:
            raise KbsProtocolError("--seal needs --seal-resource repository/type/tag")
        resource = parse_resource_path(*parts)
    except KbsProtocolError as exc:
        raise SystemExit(f"veil broker: {exc.detail}") from None
    try:
        plaintext = sys.stdin.buffer.read() if args.seal == "-" else Path(args.seal).read_bytes()
    except OSError as exc:
        raise SystemExit(f"veil broker: cannot read {args.seal}: {exc}") from None
    sys.stdout.buffer.write(seal(kek, resource, plaintext))
    sys.stdout.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the broker until interrupted (or seal one secret with ``--seal``, or ``import`` one into a broker)."""
    if getattr(args, "broker_action", None) == "import":
        from . import importer

        return importer.run(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = "Without --tls-cert/--tls-key the broker makes its certificate in memory, and its evidence binds it"
    kek_why = "The broker seals with a key only its TEE can derive (SEV-SNP), else one made per process"
    refuse_operator_input("broker", args, OPTIONS, {"tls-cert": tls, "tls-key": tls, "kek-file": kek_why})
    if args.attestation != "simulated" and os.environ.get(KEK_ENV):
        raise SystemExit(f"veil broker: ${KEK_ENV} is refused with --attestation {args.attestation}: an operator-"
                         f"supplied KEK lets the operator unseal the broker's secrets offline. {kek_why}. It is "
                         "accepted only with --attestation simulated (development and tests).")
    if args.seal:
        try:
            return _seal(args, load_kek(args.kek_file))
        except SealError as exc:
            raise SystemExit(f"veil broker: {exc}") from None
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"veil broker: --listen must be HOST:PORT, got {args.listen!r}")
    if not args.resources:
        raise SystemExit("veil broker: --resources FILE is required (the table of sealed secrets and policies)")

    from .app import BrokerConfig, create_app
    from .tls import load_identity

    # The broker's own evidence: the gateway's providers, without GPU evidence or an MAA token.
    try:
        provider = make_provider(args.attestation, ProviderOptions(
            pccs_url=args.pccs_url, tpm_tcti=args.tpm_tcti, azure_imds_url=args.azure_imds_url,
            nsm_device=args.nsm_device))
    except ProviderError as exc:
        raise SystemExit(f"veil broker: {exc}") from None
    try:
        kek, how = broker_sealing_key(provider.platform, args.kek_file)
    except SealError as exc:
        raise SystemExit(f"veil broker: {exc}") from None
    if how == KEK_OPERATOR:
        log.warning("sealing under the operator's KEK: the operator can unseal every secret offline (accepted only "
                    "because attestation is simulated)")
    elif how == KEK_EPHEMERAL:
        log.warning("no sealing key survives a restart here (%s): secrets are sealed under a key made for this "
                    "process; a generated key set is made again at each start", provider.platform)
    try:
        if args.state_dir:
            Path(args.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        resources = load_resources(args.resources, kek, ephemeral=how == KEK_EPHEMERAL, state_dir=args.state_dir)
    except OSError as exc:
        raise SystemExit(f"veil broker: --state-dir {args.state_dir}: {exc}") from None
    except BrokerConfigError as exc:
        raise SystemExit(f"veil broker: {exc}") from None
    try:
        identity, ssl_ctx = load_identity(args.tls_cert, args.tls_key, host)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"veil broker: TLS identity: {exc}") from None
    try:
        audit = AuditLog(args.audit_log)
    except OSError as exc:
        raise SystemExit(f"veil broker: cannot open the audit log {args.audit_log}: {exc}") from None
    if args.insecure_allow_simulated:
        log.warning("--insecure-allow-simulated: SIMULATED gateway evidence is accepted; no TEE protects the secrets")
    if provider.platform == "simulated":
        log.warning("the broker's own attestation is SIMULATED: gateways must opt in to trust it")
    app = create_app(resources=resources, kek=kek, provider=provider, identity=identity, audit=audit, sealing=how,
                     config=BrokerConfig(session_timeout=args.session_timeout,
                                         allow_simulated=args.insecure_allow_simulated,
                                         pending_timeout=args.pending_timeout, max_pending=args.max_pending,
                                         max_pending_per_address=args.max_pending_per_address,
                                         evidence_rate=args.evidence_rate, evidence_burst=args.evidence_burst,
                                         body_timeout=args.body_timeout))
    print(f"veil broker listening on https://{host}:{port}/kbs/v0 ({len(resources)} resources)", flush=True)
    # access_log=None: an access log would record gateway addresses.
    web.run_app(app, host=host, port=int(port), ssl_context=ssl_ctx, access_log=None, print=None,
                handle_signals=True, keepalive_timeout=args.idle_timeout)
    return 0
