"""The broker's resource table (TOML): which secrets exist, where they are sealed, and which policy releases each.

::

    [resources."default/ohttp/keyset"]
    path = "keyset.sealed"              # the sealed file; a relative path is in --state-dir (default: beside
                                        # this file)
    policy = "gateway-policy.toml"      # enclave.broker.policy format, relative to this file; required: nothing
                                        # is released without one
    generate = "ohttp-keyset"           # optional: if `path` does not exist, make a fresh key set inside the
                                        # broker's TEE and seal it there (it never exists in plaintext outside)

    [resources."veil/model-key/llama-3.1-8b"]
    path = "llama-3.1-8b.sealed"
    policy = "gateway-policy.toml"
    import = "model-key"                # optional: the owner uploads it (veil broker import) over TLS pinned by
    import-token-sha256 = "<64 hex>"    # the broker's evidence, authenticated by a token with this SHA-256

Only ``import = "model-key"`` exists: an imported secret must be a model key file (``{"key_id", "key"}``) whose
key id is the resource's tag, so no import can ever parse as an OHTTP key set, whatever the resource is called or
whichever resource a gateway is told to fetch. Key sets are only ever generated inside the broker. Whoever sets the
configuration (the operator) can name a token and so import or replace a model key: that lets the operator break or
swap its own model, never learn a secret the broker holds (nothing is exported) or the OHTTP keys.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from ..attestation.errors import EvidenceFormatError
from ..ohttp_key_set import new_key_set
from .policy import AttestationPolicy
from .protocol import KbsProtocolError, parse_resource_path
from .sealing import SealError, seal, unseal

log = logging.getLogger("veil.broker")

GENERATORS: Final = ("ohttp-keyset",)
IMPORTERS: Final = ("model-key",)
_MEMBERS: Final = {"path", "policy", "generate", "import", "import-token-sha256"}


class BrokerConfigError(Exception):
    """The resource table cannot be used; the message says why."""


@dataclass(frozen=True)
class Resource:
    """One releasable secret: its path, its sealed file and the policy a requester must pass."""

    path: str
    sealed_file: Path
    policy: AttestationPolicy
    generate: str | None = None
    #: what an import must be (``model-key``), and the SHA-256 of the token that authorizes one; None: no import
    importer: str | None = None
    import_token_sha256: bytes | None = field(default=None, repr=False)

    def read(self, kek: bytes) -> bytes:
        """Unseal the secret (read from disk on each release, so a re-sealed file takes effect at once)."""
        return unseal(kek, self.path, self.sealed_file.read_bytes())

    def store(self, kek: bytes, plaintext: bytes) -> bool:
        """Seal ``plaintext`` to the sealed file, replacing it atomically; whether one was there before.

        Raises:
            OSError: the state directory is not writable.
        """
        sealed = seal(kek, self.path, plaintext)
        tmp = self.sealed_file.with_name(f".{self.sealed_file.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(sealed)
                fh.flush()
                os.fsync(fh.fileno())
            existed = self.sealed_file.exists()
            os.replace(tmp, self.sealed_file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return existed


class ImportRefused(ValueError):
    """An imported secret that is not what the resource takes; the message says why (never the secret)."""


def check_import(res: Resource, body: bytes) -> bytes:
    """The bytes to seal for an import of ``body`` into ``res`` (a model key file, re-encoded canonically).

    Raises:
        ImportRefused: not a model key file ``{"key_id": <the resource's tag>, "key": "<64 hex>"}``.
    """
    if res.importer != "model-key":
        raise ImportRefused(f"resource {res.path} takes no imports")
    tag = res.path.rsplit("/", 1)[1]
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ImportRefused("not a model key file: not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"key_id", "key"}:
        raise ImportRefused('not a model key file: must be exactly {"key_id": ..., "key": "<64 hex>"}')
    key_id, key = obj["key_id"], obj["key"]
    if not isinstance(key_id, str) or key_id != tag:
        raise ImportRefused(f"the key file's key_id must be {tag!r}, the resource's tag (gateways fetch "
                           f"<repo>/model-key/<key id> and check it)")
    try:
        raw = bytes.fromhex(key) if isinstance(key, str) and len(key) == 64 else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ImportRefused("not a model key file: key must be 64 hex characters (32 bytes)")
    return orjson.dumps({"key_id": key_id, "key": raw.hex()})


def _opens(res: Resource, kek: bytes) -> bool:
    try:
        res.read(kek)
    except (OSError, SealError):
        return False
    return True


def load_resources(config_path: str | Path, kek: bytes, *, ephemeral: bool = False,
                   state_dir: str | Path | None = None) -> dict[str, Resource]:
    """Read the resource table, generate missing generated secrets, and check every secret unseals under ``kek``.

    ``ephemeral``: ``kek`` is random per process (no sealing key on this platform), so a generated secret sealed by
    an earlier process is made again, an imported one is removed (it must be imported again), and a secret sealed
    elsewhere is an error that says why. ``state_dir``: where relative sealed-file paths are (default: beside the
    table); it must be writable when a resource is generated or imported.

    Raises:
        BrokerConfigError: unreadable table, a bad path, member or policy, or a secret that does not unseal.
    """
    base = Path(config_path).resolve().parent
    state = Path(state_dir).resolve() if state_dir else base
    try:
        data = tomllib.loads(Path(config_path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BrokerConfigError(f"cannot read resources file {config_path}: {exc}") from None
    if extra := set(data) - {"resources"}:
        raise BrokerConfigError(f"unknown tables in {config_path}: {sorted(extra)} (only [resources.\"R/T/T\"])")
    table = data.get("resources", {})
    if not isinstance(table, dict) or not table:
        raise BrokerConfigError(f"{config_path} defines no [resources.\"repository/type/tag\"]")
    out: dict[str, Resource] = {}
    for name, spec in table.items():
        try:
            parts = name.split("/")
            if len(parts) != 3:
                raise KbsProtocolError(f"{name!r} is not repository/type/tag")
            path = parse_resource_path(*parts)
        except KbsProtocolError as exc:
            raise BrokerConfigError(f"resource {name!r}: {exc.detail}") from None
        if not isinstance(spec, dict):
            raise BrokerConfigError(f"resource {name!r} must be a table")
        if extra := set(spec) - _MEMBERS:
            raise BrokerConfigError(f"resource {name!r}: unknown members {sorted(extra)}")
        if "path" not in spec or "policy" not in spec:
            raise BrokerConfigError(f"resource {name!r} needs 'path' (sealed file) and 'policy' (attestation policy)")
        generate = spec.get("generate")
        if generate is not None and generate not in GENERATORS:
            raise BrokerConfigError(f"resource {name!r}: generate must be one of {', '.join(GENERATORS)}")
        importer, token_hash = _import_spec(name, spec)
        if importer is not None and generate is not None:
            raise BrokerConfigError(f"resource {name!r}: a generated secret is never imported (generate and import "
                                    "exclude each other)")
        try:
            policy = AttestationPolicy.load(base / spec["policy"])
        except EvidenceFormatError as exc:
            raise BrokerConfigError(f"resource {name!r}: {exc}") from None
        if not policy.has_measurements():
            log.warning("resource %s: policy %s lists no measurement; nothing will be released", path, policy.source)
        res = Resource(path=path, sealed_file=state / spec["path"], policy=policy, generate=generate,
                       importer=importer, import_token_sha256=token_hash)
        if (other := next((r for r in out.values() if r.sealed_file == res.sealed_file), None)) is not None:
            raise BrokerConfigError(f"resource {name!r}: sealed file {res.sealed_file} is {other.path}'s too")
        if importer and not os.access(res.sealed_file.parent, os.W_OK):
            raise BrokerConfigError(f"resource {name!r}: {res.sealed_file.parent} is not writable (imports are "
                                    "sealed there: give a writable --state-dir)")
        if importer is not None:
            _check_imported(res, kek, ephemeral)
            out[path] = res
            continue
        stale = ephemeral and res.sealed_file.exists() and generate is not None and not _opens(res, kek)
        if stale:
            log.warning("resource %s: no sealing key survives a restart on this platform: the key set sealed by an "
                        "earlier broker is replaced by a new one", path)
        if (stale or not res.sealed_file.exists()) and generate == "ohttp-keyset":
            try:
                res.store(kek, new_key_set())
            except OSError as exc:
                raise BrokerConfigError(f"resource {name!r}: cannot write the generated key set to "
                                        f"{res.sealed_file}: {exc} (give a writable --state-dir)") from None
            log.info("resource %s: generated a new OHTTP key set, sealed to %s", path, res.sealed_file)
        try:
            res.read(kek)
        except OSError as exc:
            raise BrokerConfigError(f"resource {name!r}: cannot read {res.sealed_file}: {exc}") from None
        except SealError as exc:
            hint = (" (this broker's sealing key is made per process: only secrets it generates itself can be held, "
                    "and imported ones (veil broker import); secrets sealed with an operator KEK are accepted only "
                    "with --attestation simulated)" if ephemeral else "")
            raise BrokerConfigError(f"resource {name!r}: {res.sealed_file}: {exc}{hint}") from None
        out[path] = res
    return out


def _import_spec(name: str, spec: dict[str, Any]) -> tuple[str | None, bytes | None]:
    importer, token = spec.get("import"), spec.get("import-token-sha256")
    if importer is None:
        if token is not None:
            raise BrokerConfigError(f"resource {name!r}: import-token-sha256 without import = \"model-key\"")
        return None, None
    if importer not in IMPORTERS:
        raise BrokerConfigError(f"resource {name!r}: import must be one of {', '.join(IMPORTERS)} (OHTTP key sets "
                                "are only ever generated inside the broker)")
    try:
        digest = bytes.fromhex(token) if isinstance(token, str) else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise BrokerConfigError(f"resource {name!r}: import needs import-token-sha256, the SHA-256 of the import "
                                "token as 64 hex characters (veil broker import --print-token-hash)")
    return importer, digest


def _check_imported(res: Resource, kek: bytes, ephemeral: bool) -> None:
    """An imported secret need not be there yet; one this broker cannot open must be imported again."""
    if not res.sealed_file.exists():
        log.info("resource %s: not imported yet (veil broker import)", res.path)
        return
    try:
        res.read(kek)
    except (OSError, SealError) as exc:
        if ephemeral:
            res.sealed_file.unlink(missing_ok=True)
            log.warning("resource %s: sealed by an earlier broker process, whose sealing key is gone (no sealing key "
                        "survives a restart on this platform): removed; import it again", res.path)
        else:
            log.warning("resource %s: %s: %s; releases fail until it is imported again", res.path,
                        res.sealed_file, exc)
