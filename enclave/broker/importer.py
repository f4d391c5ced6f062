"""``veil broker import``: hand a secret the operator owns (a model key) to an attested broker.

The broker is verified exactly as gateways verify it (:func:`enclave.kbs_client.attest_broker`: fresh nonce, the
broker policy, its TLS certificate bound by the evidence), and the secret is sent only over a connection pinned to
that certificate, so it reaches the attested broker and nothing else (no TLS-terminating proxy, no substituted
broker). The broker checks the import token against the resource's ``import-token-sha256``, seals the secret with
its own sealing key and audit-logs the import. Only ``import = "model-key"`` resources take imports; the OHTTP key
set is generated inside the broker and can be neither imported nor replaced.

The import token is at least :data:`MIN_TOKEN_CHARS` characters of a file (whitespace around it ignored); the
broker's configuration holds only its SHA-256 (``--print-token-hash`` makes a token file when there is none and
prints the line for ``resources.toml``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from veil_cli import Option, add_options

from ..attestation.errors import AttestationError
from ..kbs_client import PINNED_TLS_MISMATCH, KbsClientError, SslParam, _error_text, attest_broker
from .policy import AttestationPolicy
from .protocol import KBS_PREFIX, KbsProtocolError, parse_resource_path

COMMAND: Final = "broker-import"
MIN_TOKEN_CHARS: Final = 32

OPTIONS = [
    Option("broker", "the broker's https:// URL"),
    Option("broker-policy", "policy TOML the broker's own evidence must pass (as for veil gateway "
           "--key-broker-policy)"),
    Option("resource", "repository/type/tag to import into (a resource with import = \"model-key\")"),
    Option("secret-file", "the secret: a model key file {\"key_id\", \"key\"} (veil model keygen) whose key id is "
           "the resource's tag ('-': stdin)"),
    Option("admin-token-file", "file holding the import token whose SHA-256 is the resource's import-token-sha256"),
    Option("print-token-hash", "print the import-token-sha256 line for --admin-token-file (making a new random "
           "token there, mode 0600, if the file does not exist) and exit; contacts no broker", False, flag=True),
    Option("insecure-allow-simulated-broker", "accept a broker with SIMULATED evidence (development only; its "
           "measurement must still be in the policy's [simulated] table)", False, flag=True),
    Option("timeout", "seconds for each step", 30.0, type=float),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil broker import`` options."""
    add_options(parser, COMMAND, OPTIONS)


def token_hash(token: bytes) -> str:
    """What ``import-token-sha256`` holds for ``token``."""
    return hashlib.sha256(token).hexdigest()


def read_token(path: str, *, create: bool = False) -> bytes:
    """The import token in ``path`` (surrounding whitespace stripped); with ``create``, a new one when it is absent.

    Raises:
        ValueError: unreadable, or shorter than :data:`MIN_TOKEN_CHARS`.
    """
    if create:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ValueError(f"cannot create token file {path}: {exc.strerror or exc}") from None
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(32).hex() + "\n")
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c <= 0x20 or c >= 0x7f for c in token):
        raise ValueError(f"the token in {path} must be at least {MIN_TOKEN_CHARS} printable ASCII characters without "
                         "spaces (make one with --print-token-hash)")
    return token


async def upload(base_url: str, resource: str, secret: bytes, token: bytes, *, ssl: SslParam,
                 timeout: float = 30.0) -> dict[str, Any]:
    """``POST`` the secret to the broker over ``ssl`` (the pin :func:`attest_broker` returned); the broker's answer.

    Raises:
        KbsClientError: the certificate is not the pinned one, the broker refused, or it cannot be reached.
    """
    url = f"{base_url.rstrip('/')}{KBS_PREFIX}/resource/{resource}"
    headers = {"Authorization": f"Bearer {token.decode('ascii')}", "Content-Type": "application/octet-stream"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                         cookie_jar=aiohttp.DummyCookieJar()) as s, \
                s.post(url, data=secret, headers=headers, ssl=ssl) as r:
            status, body = r.status, await r.read()
    except aiohttp.ServerFingerprintMismatch:
        raise KbsClientError(f"{PINNED_TLS_MISMATCH}: nothing was sent") from None
    except aiohttp.ClientError as exc:
        raise KbsClientError(f"import to {url} failed: {exc}") from None
    if status != 200:
        raise KbsClientError(f"the broker refused the import: {_error_text(status, body)}")
    try:
        answer: Any = orjson.loads(body)
        if not isinstance(answer, dict):
            raise TypeError
    except (orjson.JSONDecodeError, TypeError):
        raise KbsClientError("the broker answered the import with something other than a JSON object") from None
    return answer


async def import_secret(base_url: str, resource: str, secret: bytes, token: bytes, policy: AttestationPolicy, *,
                        allow_simulated_broker: bool = False, timeout: float = 30.0) -> tuple[dict[str, Any], str]:
    """Attest the broker, then upload over the pinned connection: (the broker's answer, its measurement in hex)."""
    pin, verdict = await attest_broker(base_url, policy, allow_simulated=allow_simulated_broker, timeout=timeout)
    answer = await upload(base_url, resource, secret, token, ssl=pin, timeout=timeout)
    return answer, verdict.measurement.hex() if verdict.measurement is not None else "none"


_SEALING_NOTE: Final = {
    "sev-snp-derived": "sealed with the broker's SEV-SNP derived key: it survives broker restarts on this chip and "
                       "image, as long as the state directory does",
    "ephemeral": "sealed with a key the broker made for this process: import it again after every broker restart",
    "operator": "sealed with an operator KEK (simulated attestation only)",
}


def run(args: argparse.Namespace) -> int:
    """``veil broker import``: exit 0 once the broker has sealed the secret, else exit with the reason."""
    if not args.admin_token_file:
        raise SystemExit("veil broker import: --admin-token-file FILE is required")
    try:
        token = read_token(args.admin_token_file, create=bool(args.print_token_hash))
    except ValueError as exc:
        raise SystemExit(f"veil broker import: {exc}") from None
    if args.print_token_hash:
        print(f'import-token-sha256 = "{token_hash(token)}"')
        return 0
    missing = [f"--{o}" for o in ("broker", "broker-policy", "resource", "secret-file")
               if not getattr(args, o.replace("-", "_"))]
    if missing:
        raise SystemExit(f"veil broker import: {', '.join(missing)} required")
    parts = args.resource.split("/")
    try:
        if len(parts) != 3:
            raise KbsProtocolError(f"{args.resource!r} is not repository/type/tag")
        resource = parse_resource_path(*parts)
    except KbsProtocolError as exc:
        raise SystemExit(f"veil broker import: --resource: {exc.detail}") from None
    try:
        secret = sys.stdin.buffer.read() if args.secret_file == "-" else Path(args.secret_file).read_bytes()
        policy = AttestationPolicy.load(args.broker_policy)
    except OSError as exc:
        raise SystemExit(f"veil broker import: cannot read {args.secret_file}: {exc.strerror or exc}") from None
    except AttestationError as exc:
        raise SystemExit(f"veil broker import: {exc}") from None
    try:
        answer, measurement = asyncio.run(import_secret(
            args.broker, resource, secret, token, policy, allow_simulated_broker=args.insecure_allow_simulated_broker,
            timeout=args.timeout))
    except KbsClientError as exc:
        raise SystemExit(f"veil broker import: {exc}") from None
    if args.insecure_allow_simulated_broker:
        print("veil broker import: WARNING: --insecure-allow-simulated-broker: the broker's evidence is SIMULATED",
              file=sys.stderr)
    what = "replaced" if answer.get("replaced") else "imported"
    note = _SEALING_NOTE.get(str(answer.get("sealing")), "")
    print(f"{what} {resource} at {args.broker} (attested broker, measurement {measurement})" +
          (f"; {note}" if note else ""))
    return 0
