"""Secrets at rest: AES-256-GCM under a key-encryption key (KEK), bound to the resource path they are for.

A sealed file is JSON text::

    {"format": "veil-sealed-v1", "alg": "A256GCM", "resource": "default/ohttp/keyset",
     "kek": "<hex: first 8 bytes of SHA-256(KEK)>", "iv": "<b64url, 12 B>", "ciphertext": "<b64url: ct || tag>"}

with GCM additional data ``"veil-sealed-v1\\0" || resource``, so a sealed secret moved to another resource's path
does not open.

Where the KEK comes from (:func:`broker_sealing_key`) depends on the broker's own attestation, because a key the
operator supplies is a key the operator can unseal with, offline:

* ``sev-snp``: HKDF-SHA256 of the SNP firmware's derived key (MSG_KEY_REQ, bound to the launch measurement and
  guest policy; :mod:`.snp_key`): the same image on the same chip unseals after a restart, nobody else can.
* ``tdx``, Azure vTPM, AWS Nitro: these platforms give the guest no sealing key. The KEK is random per process, so
  sealed state does not survive a restart: a generated key set is made again (or must come back from a broker
  replica through attestation), secrets sealed outside cannot be loaded, and model keys must be imported
  again (``veil broker import``) after a restart.
* ``simulated`` (development): ``--kek-file`` (64 hex characters, or 32 raw bytes) or ``$VEIL_BROKER_KEK`` (64
  hex) when given, else random per process. With any real provider an operator KEK is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .protocol import b64url, b64url_decode
from .snp_key import DerivedKeySource, SnpKeyError, snp_sealing_key

FORMAT: Final = "veil-sealed-v1"
KEK_ENV: Final = "VEIL_BROKER_KEK"
KEK_BYTES: Final = 32


class SealError(Exception):
    """A KEK or sealed secret that cannot be used; the message says why (never the secret)."""


def _kek_id(kek: bytes) -> str:
    return hashlib.sha256(kek).digest()[:8].hex()


def _aad(resource: str) -> bytes:
    return FORMAT.encode() + b"\x00" + resource.encode("utf-8")


def load_kek(path: str | None, env: dict[str, str] | None = None) -> bytes:
    """The KEK from ``path`` or ``$VEIL_BROKER_KEK``; exactly one must be given.

    Raises:
        SealError: none or both given, unreadable, or not 32 bytes.
    """
    environ = os.environ if env is None else env
    from_env = environ.get(KEK_ENV)
    if path and from_env:
        raise SealError(f"give the KEK once: --kek-file or ${KEK_ENV}, not both")
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise SealError(f"cannot read KEK file {path}: {exc}") from None
        if len(raw) == KEK_BYTES:
            return raw
        text, where = raw.decode("ascii", "replace").strip(), f"KEK file {path}"
    elif from_env:
        text, where = from_env.strip(), f"${KEK_ENV}"
    else:
        raise SealError(f"no key-encryption key: give --kek-file FILE or set ${KEK_ENV} (64 hex characters)")
    try:
        kek = bytes.fromhex(text)
    except ValueError:
        kek = b""
    if len(kek) != KEK_BYTES:
        raise SealError(f"{where} must hold {KEK_BYTES} bytes as {2 * KEK_BYTES} hex characters (or {KEK_BYTES} raw "
                        "bytes in a file)")
    return kek


#: how :func:`broker_sealing_key` got its key
KEK_OPERATOR: Final = "operator"
KEK_SNP: Final = "sev-snp-derived"
KEK_EPHEMERAL: Final = "ephemeral"


def broker_sealing_key(platform: str, kek_file: str | None, env: dict[str, str] | None = None,
                       snp_source: DerivedKeySource | None = None) -> tuple[bytes, str]:
    """(KEK, how it was made: :data:`KEK_OPERATOR`, :data:`KEK_SNP` or :data:`KEK_EPHEMERAL`) for a broker whose
    own evidence is ``platform``.

    Raises:
        SealError: an operator KEK with a real provider, an unusable KEK, or no SNP derived key.
    """
    environ = os.environ if env is None else env
    operator = bool(kek_file) or bool(environ.get(KEK_ENV))
    if platform == "simulated":
        if operator:
            return load_kek(kek_file, env), KEK_OPERATOR
        return os.urandom(KEK_BYTES), KEK_EPHEMERAL
    if operator:
        raise SealError(f"an operator-supplied KEK (--kek-file, ${KEK_ENV}) is refused with {platform} attestation: "
                        "the operator could unseal the broker's secrets offline. It is accepted only with "
                        "--attestation simulated")
    if platform == "sev-snp":
        try:
            derived = snp_sealing_key(snp_source)
        except SnpKeyError as exc:
            raise SealError(f"no SEV-SNP sealing key: {exc}") from None
        return HKDF(hashes.SHA256(), KEK_BYTES, salt=None, info=b"veil-broker sealing key v1").derive(derived), KEK_SNP
    return os.urandom(KEK_BYTES), KEK_EPHEMERAL


def seal(kek: bytes, resource: str, plaintext: bytes) -> bytes:
    """The sealed-file bytes for ``plaintext`` as ``resource``."""
    iv = os.urandom(12)
    ct = AESGCM(kek).encrypt(iv, plaintext, _aad(resource))
    return orjson.dumps({"format": FORMAT, "alg": "A256GCM", "resource": resource, "kek": _kek_id(kek),
                         "iv": b64url(iv), "ciphertext": b64url(ct)}, option=orjson.OPT_APPEND_NEWLINE)


def unseal(kek: bytes, resource: str, sealed: bytes) -> bytes:
    """The plaintext of a sealed file, if it was sealed for ``resource`` under ``kek``.

    Raises:
        SealError: malformed, another KEK, another resource, or tampered.
    """
    try:
        obj: Any = orjson.loads(sealed)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("alg") != "A256GCM":
            raise SealError(f"not a {FORMAT} A256GCM sealed secret")
        if obj.get("kek") != _kek_id(kek):
            raise SealError(f"sealed under another KEK (KEK id {obj.get('kek')}, this KEK is {_kek_id(kek)})")
        if obj.get("resource") != resource:
            raise SealError(f"sealed for resource {obj.get('resource')!r}, not {resource!r}")
        iv, ct = b64url_decode(obj["iv"]), b64url_decode(obj["ciphertext"])
    except SealError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SealError(f"malformed sealed secret: {type(exc).__name__}") from None
    if len(iv) != 12:
        raise SealError("sealed secret has a bad IV")
    try:
        return AESGCM(kek).decrypt(iv, ct, _aad(resource))
    except InvalidTag:
        raise SealError("sealed secret does not authenticate (tampered, or sealed for something else)") from None
